//! The podwire CNI plugin binary. Logs go to stderr (`PODWIRE_LOG`, default
//! `warn`); stdout carries only the CNI result or error.

use std::io::{Read, Write};

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PODWIRE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        tracing::warn!("reading stdin: {e}");
    }
    let env = std::env::vars().collect();
    let outcome = podwire_plugin::run(&env, &stdin);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
