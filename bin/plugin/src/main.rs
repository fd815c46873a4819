//! The podwire CNI plugin binary. Logs go to stderr (`PODWIRE_LOG`, default
//! `warn`); stdout carries only the CNI result or error.

use std::io::Write;

fn main() {
    // A plain level (PODWIRE_LOG=debug, …), not an EnvFilter: the plugin
    // runs once per pod and directive parsing would cost more than its work.
    let level = std::env::var("PODWIRE_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::level_filters::LevelFilter>().ok())
        .unwrap_or(tracing::level_filters::LevelFilter::WARN);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(level)
        .init();
    // OS strings: a non-UTF-8 variable the runtime passes on must not abort us.
    // stdin is read (bounded) inside `run`, which answers a CNI error for it.
    let outcome = podwire_plugin::run(std::env::vars_os(), std::io::stdin().lock());
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
