//! `podwire-agent`: the per-node daemon, in vpc or overlay mode, and the
//! commands that install it on a node. Logs to stderr.

mod atomic;
mod cli;
mod daemon;
mod install;
mod status;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PODWIRE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => daemon::run(cli.daemon),
        Some(Command::InstallCni(a)) => {
            let plugin = match a.plugin {
                Some(p) => p,
                None => std::env::current_exe()
                    .context("locating this binary (give the plugin with --plugin)")?
                    .with_file_name(install::PLUGIN_NAME),
            };
            let conf_dir = (!a.skip_conflist).then_some(a.conf_dir);
            let plan = install::Install {
                mode: a.mode,
                plugin: Some(plugin),
                bin_dir: a.bin_dir,
                conf_dir,
                agent_socket: a.agent_socket,
                state_dir: a.state_dir,
                force: a.force,
            };
            for (path, outcome) in install::install(&plan)? {
                println!("{outcome:?}: {}", path.display());
            }
            Ok(())
        }
        Some(Command::UninstallCni(a)) => {
            let out = install::uninstall(&a.state_dir)?;
            for p in &out.removed {
                println!("removed: {}", p.display());
            }
            for p in &out.missing {
                println!("already gone: {}", p.display());
            }
            for p in &out.changed {
                println!(
                    "left in place, changed since install-cni wrote it: {}",
                    p.display()
                );
            }
            Ok(())
        }
        Some(Command::Status(a)) => {
            let s = status::query(&a)?;
            println!(
                "node {}: {} ({} free, {} assigned){}",
                s.node,
                if s.ready { "ready" } else { "not ready" },
                s.free_ips,
                s.assigned_ips,
                if s.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.message)
                }
            );
            if !s.ready {
                anyhow::bail!("the agent is not ready");
            }
            Ok(())
        }
    }
}
