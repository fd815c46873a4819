//! How long a NetworkPolicy change takes from the datastore write to the
//! kernel: run inside a client pod's network namespace (`ip netns exec`),
//! it writes a policy that lets this pod reach the target on one of two
//! ports, then the same policy with the other port, and so on; after each
//! write it connects to the newly allowed port, a fresh socket every
//! `--attempt-ms`, until one connects. The time from just before the
//! write to that connect is the change's end-to-end latency (the agent's
//! watch, compile, `nft` transaction, and the first packet through it).
//! The resolution is one attempt (a dropped SYN is only known by its
//! timeout), so figures are upper bounds by at most `--attempt-ms`.
//!
//!   ip netns exec pw-LAB-pod-NS-client policy-flip --datastore sqlite:/…/datastore.db \
//!       --namespace NS --target-label role=flip-target --target 172.16.0.9 --changes 100

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use podwire_store::{Datastore, Expect};

#[derive(Debug, Parser)]
struct Args {
    /// The datastore the agents follow (`sqlite:/path` or `etcd://…`).
    #[arg(long)]
    datastore: String,
    /// Namespace of the target pod and of this (client) pod.
    #[arg(long)]
    namespace: String,
    /// The target's label, `k=v`, the policy's podSelector.
    #[arg(long)]
    target_label: String,
    /// The target pod's address.
    #[arg(long)]
    target: Ipv4Addr,
    #[arg(long, default_value_t = 80)]
    port_a: u16,
    #[arg(long, default_value_t = 81)]
    port_b: u16,
    /// How many changes to time.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Each connect attempt's deadline.
    #[arg(long, default_value_t = 2)]
    attempt_ms: u64,
    /// Give up on a change after this long.
    #[arg(long, default_value_t = 5000)]
    deadline_ms: u64,
    /// Pause between changes (lets the agent settle).
    #[arg(long, default_value_t = 50)]
    gap_ms: u64,
    /// Remove the policy at the end.
    #[arg(long)]
    cleanup: bool,
}

const NAME: &str = "bench-flip";

fn policy_json(ns: &str, label: &str, port: u16) -> anyhow::Result<String> {
    let (k, v) = label
        .split_once('=')
        .context("--target-label must be k=v")?;
    // Any pod of the namespace may reach the target on `port` only.
    Ok(format!(
        r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
"metadata":{{"namespace":"{ns}","name":"{NAME}"}},
"spec":{{"podSelector":{{"matchLabels":{{"{k}":"{v}"}}}},"policyTypes":["Ingress"],
"ingress":[{{"from":[{{"podSelector":{{}}}}],"ports":[{{"protocol":"TCP","port":{port}}}]}}]}}}}"#
    ))
}

fn write(store: &dyn Datastore, a: &Args, port: u16) -> anyhow::Result<()> {
    let text = policy_json(&a.namespace, &a.target_label, port)?;
    let mut ps = podwire_policy::parse_documents(&text)?;
    let p = ps.pop().context("no policy")?;
    store.put(
        &podwire_cluster::keys::policy(&p.namespace, &p.name),
        &p.to_record(),
        Expect::Any,
    )?;
    Ok(())
}

/// Connects to `addr` with a fresh socket per attempt until one succeeds.
fn wait_open(addr: SocketAddr, attempt: Duration, deadline: Instant) -> anyhow::Result<u32> {
    let mut tries = 0;
    loop {
        tries += 1;
        if TcpStream::connect_timeout(&addr, attempt).is_ok() {
            return Ok(tries);
        }
        if Instant::now() > deadline {
            bail!("{addr} did not open in time");
        }
    }
}

/// The nearest-rank percentile `p` (0..=100) of a sorted, non-empty list.
fn pct(sorted: &[f64], p: usize) -> f64 {
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let store = podwire_store::open(&a.datastore).context("opening the datastore")?;
    let attempt = Duration::from_millis(a.attempt_ms.max(1));
    let deadline = Duration::from_millis(a.deadline_ms);
    // Start from port A open.
    write(store.as_ref(), &a, a.port_a)?;
    wait_open(
        SocketAddr::from((a.target, a.port_a)),
        attempt,
        Instant::now() + Duration::from_secs(10),
    )?;
    let mut ms = Vec::with_capacity(a.changes);
    for i in 0..a.changes {
        std::thread::sleep(Duration::from_millis(a.gap_ms));
        let port = if i % 2 == 0 { a.port_b } else { a.port_a };
        let t0 = Instant::now();
        write(store.as_ref(), &a, port)?;
        let wrote = t0.elapsed();
        let tries = wait_open(SocketAddr::from((a.target, port)), attempt, t0 + deadline)?;
        let took = t0.elapsed();
        ms.push(took.as_secs_f64() * 1e3);
        println!(
            "change {i}: port {port} open after {:.1} ms (write {:.1} ms, {tries} attempts)",
            took.as_secs_f64() * 1e3,
            wrote.as_secs_f64() * 1e3
        );
    }
    if a.cleanup {
        let key = podwire_cluster::keys::policy(&a.namespace, NAME);
        store.commit(&[podwire_store::Write::delete(key, Expect::Any)])?;
    }
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return Ok(());
    }
    println!(
        "SUMMARY changes={} p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1} attempt_ms={}",
        ms.len(),
        pct(&ms, 50),
        pct(&ms, 90),
        pct(&ms, 99),
        pct(&ms, 100),
        a.attempt_ms
    );
    Ok(())
}
