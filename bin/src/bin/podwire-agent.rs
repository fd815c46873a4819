//! `podwire-agent`: the per-node daemon (vpc mode). Logs to stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "podwire-agent",
    version,
    about = "podwire node agent: warm pool of pod addresses, ENI plumbing, plugin socket"
)]
struct Args {
    /// Dataplane mode (only `vpc` in this release).
    #[arg(long, default_value = "vpc")]
    mode: String,
    /// Name this node reports in messages (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Unix socket the plugin talks to.
    #[arg(long, default_value = "/run/podwire/agent.sock")]
    socket: PathBuf,
    /// Where allocations are checkpointed (a tmpfs: pods do not outlive a boot).
    #[arg(long, default_value = "/run/podwire")]
    state_dir: PathBuf,
    /// Instance metadata service.
    #[arg(long, default_value = podwire_cloud::imds::DEFAULT_ENDPOINT)]
    imds_endpoint: String,
    /// EC2 API endpoint (default: https://ec2.<region>.amazonaws.com).
    #[arg(long)]
    ec2_endpoint: Option<String>,
    /// Free addresses to keep ready (default: one ENI's worth).
    #[arg(long)]
    warm_ip_target: Option<u32>,
    /// Addresses to hold in all, free or assigned (with no --warm-ip-target:
    /// no warm margin beyond it).
    #[arg(long, default_value_t = 0)]
    minimum_ip_target: u32,
    /// Seconds a released address rests before reuse.
    #[arg(long, default_value_t = 30)]
    ip_cooldown_secs: u64,
    /// MTU of secondary ENIs.
    #[arg(long, default_value_t = 9001)]
    eni_mtu: u32,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PODWIRE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.mode != "vpc" {
        anyhow::bail!(
            "mode {:?} is not available in this release (only \"vpc\")",
            args.mode
        );
    }
    let node_name = match args.node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("reading the host name")?
            .to_string_lossy()
            .into_owned(),
    };
    podwire_agent_core::run(podwire_agent_core::AgentConfig {
        node_name,
        socket: args.socket,
        state_dir: args.state_dir,
        imds_endpoint: args.imds_endpoint,
        ec2_endpoint: args.ec2_endpoint,
        warm_ip_target: args.warm_ip_target,
        minimum_ip_target: args.minimum_ip_target,
        ip_cooldown: Duration::from_secs(args.ip_cooldown_secs),
        eni_mtu: args.eni_mtu,
        add_wait: Duration::from_secs(30),
    })?;
    Ok(())
}
