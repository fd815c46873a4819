//! The scale-up benchmark of issue 9 §4: a fresh vpc node of a running lab
//! receives N pods at once, as a kubelet starting a ReplicaSet's pods does
//! (N CNI ADDs in parallel, each with its own pod namespace). Per pod: the
//! time until its ADD answered (it has its address) and until it answers a
//! TCP connect from another node. Then the pods are deleted and the run
//! checks that nothing leaked: the node's addresses in the lab cloud equal
//! the agent's pool, and no ENI is left unattached.
//!
//! `lab pod add` is not used: it holds the lab's lock through the ADD, so
//! N of them run one after the other, which no kubelet does.
//!
//! Prints one JSON object (the run) on stdout. Run as root against a lab
//! made by `podwirectl lab up --mode vpc`; see bench/scaleup.sh.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use podwire_lab::ops::{self, http_get, run_plugin};
use podwire_lab::state::{LabState, NodeRec, PodRec};
use podwire_lab::{names, procs};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    /// The lab (vpc mode), made by `podwirectl lab up`.
    #[arg(long)]
    lab: String,
    /// The fresh node that receives the pods.
    #[arg(long, default_value = "node-1")]
    node: String,
    /// The node the pods must answer.
    #[arg(long, default_value = "node-2")]
    from: String,
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Port each pod listens on (bound before its ADD, as a container
    /// would once started; the probe needs only the kernel's SYN-ACK).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Deadline for each pod to answer, from the burst's start.
    #[arg(long, default_value_t = 120)]
    answer_deadline_secs: u64,
    /// Deadline for the cloud and the pool to agree (after the burst, and
    /// after the DELs).
    #[arg(long, default_value_t = 180)]
    settle_deadline_secs: u64,
}

/// The Kubernetes namespace of the benchmark's pods (their netns names
/// are `pw-<lab>-pod-bench-s<i>`).
const POD_NAMESPACE: &str = "bench";

/// One pod of the burst.
struct Pod {
    rec: PodRec,
    /// Bound inside the pod's namespace; kept open until the pod goes.
    _listener: Option<TcpListener>,
}

/// The pods made so far: on every exit, each gets its DEL and its namespace
/// is removed by its exact name.
struct Pods {
    mode: podwire_lab::Mode,
    node: NodeRec,
    pods: Vec<Pod>,
}

impl Pods {
    fn remove_all(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for p in self.pods.drain(..) {
            if !p.rec.result.is_null() {
                if let Err(e) =
                    run_plugin(self.mode, &self.node, "DEL", &p.rec, Some(&p.rec.result))
                {
                    errors.push(format!("DEL {}: {e}", p.rec.name));
                }
            }
            if let Err(e) = procs::netns_del(&p.rec.netns) {
                errors.push(format!("netns {}: {e}", p.rec.netns));
            }
        }
        errors
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for e in self.remove_all() {
            eprintln!("cleanup: {e}");
        }
    }
}

/// What one pod saw, in milliseconds from the burst's start.
#[derive(Debug, Clone)]
enum Outcome {
    Up {
        ip: Ipv4Addr,
        addr_ms: f64,
        answer_ms: f64,
    },
    Failed(String),
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted samples (p99 of 30 is the largest).
fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let r = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "p50": r(percentile(&v, 50)),
        "p99": r(percentile(&v, 99)),
        "max": r(v.last().copied().unwrap_or(f64::NAN)),
    })
}

fn sorted_ms(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v.into_iter().map(|x| x.round()).collect()
}

/// A TCP connect from inside `from` to `ip:port`: the pod answered when
/// its kernel sent a SYN-ACK.
fn answers(from: &Path, ip: Ipv4Addr, port: u16) -> bool {
    let addr = SocketAddr::from((ip, port));
    matches!(
        podwire_netlink::netns::run_in(from, move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        }),
        Ok(Ok(_))
    )
}

/// One pod's ADD, then connects until it answers or the deadline passes.
fn start_pod(
    mode: podwire_lab::Mode,
    node: &NodeRec,
    from: &Path,
    rec: &PodRec,
    port: u16,
    t0: Instant,
    deadline: Instant,
) -> (Outcome, Value) {
    let out = match run_plugin(mode, node, "ADD", rec, None) {
        Ok(o) => o,
        Err(e) => return (Outcome::Failed(e.to_string()), Value::Null),
    };
    let addr_ms = ms(t0.elapsed());
    let result: Value = match serde_json::from_str(&out) {
        Ok(v) => v,
        Err(e) => return (Outcome::Failed(format!("ADD result: {e}")), Value::Null),
    };
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok());
    let Some(ip) = ip else {
        return (Outcome::Failed(format!("no address in {out}")), result);
    };
    loop {
        if answers(from, ip, port) {
            let answer_ms = ms(t0.elapsed());
            return (
                Outcome::Up {
                    ip,
                    addr_ms,
                    answer_ms,
                },
                result,
            );
        }
        if Instant::now() >= deadline {
            return (Outcome::Failed(format!("{ip} never answered")), result);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The node's addresses as the lab cloud lists them (secondary addresses
/// and every address of its /28 prefixes), and as the agent's pool has
/// them.
fn cloud_and_pool(
    lab: &str,
    node: &NodeRec,
) -> anyhow::Result<(Vec<Ipv4Addr>, Vec<Ipv4Addr>, usize)> {
    let st = ops::status_json(lab)?;
    let n = st["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == node.name.as_str()))
        .context("node not in lab status")?;
    let mut cloud = Vec::new();
    let enis = n["enis"].as_array().cloned().unwrap_or_default();
    for e in &enis {
        for s in e["secondary_ips"].as_array().into_iter().flatten() {
            cloud.extend(s.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()));
        }
        for p in e["prefixes"].as_array().into_iter().flatten() {
            let net: ipnet::Ipv4Net = p.as_str().context("prefix")?.parse()?;
            cloud.extend(
                (u32::from(net.network())..=u32::from(net.broadcast())).map(Ipv4Addr::from),
            );
        }
    }
    let ns = procs::netns_path(&node.netns);
    let body = podwire_netlink::netns::run_in(&ns, || {
        let endpoint = format!("http://{}", ops::AGENT_METRICS_ADDRESS);
        http_get(&endpoint, "/v1/state", Duration::from_secs(5))
    })??
    .body;
    let state: Value = serde_json::from_str(&body)?;
    let mut pool: Vec<Ipv4Addr> = state["enis"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["ip"].as_str().and_then(|s| s.parse().ok()))
        .collect();
    cloud.sort();
    pool.sort();
    Ok((cloud, pool, enis.len()))
}

/// ENIs of the whole lab cloud that are not attached (a leak, if ours).
fn unattached_enis(lab: &str) -> anyhow::Result<usize> {
    let xml = ops::ec2_call(
        lab,
        "DescribeNetworkInterfaces",
        &[
            ("Filter.1.Name".into(), "status".into()),
            ("Filter.1.Value.1".into(), "available".into()),
        ],
    )?;
    Ok(xml.matches("<networkInterfaceId>").count())
}

/// Polls until the cloud and the pool agree (and, with `no_unattached`,
/// no ENI is left unattached); returns how long that took, or None.
fn settle(
    lab: &str,
    node: &NodeRec,
    deadline: Duration,
    no_unattached: bool,
) -> (Option<f64>, Value) {
    let t = Instant::now();
    let mut last = Value::Null;
    while t.elapsed() < deadline {
        // The lab cloud may be throttling these calls too: an error is
        // "not yet", not a verdict.
        if let Ok((cloud, pool, enis)) = cloud_and_pool(lab, node) {
            let unattached = if no_unattached {
                unattached_enis(lab).ok()
            } else {
                Some(0)
            };
            last = json!({"cloud_addresses": cloud.len(), "pool_addresses": pool.len(), "enis": enis, "unattached_enis": unattached});
            if cloud == pool && unattached == Some(0) {
                return (Some(ms(t.elapsed())), last);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    (None, last)
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let st = LabState::load(&a.lab)?;
    if st.mode != podwire_lab::Mode::Vpc {
        bail!("lab {} is not in vpc mode", a.lab);
    }
    let node = st.node(&a.node)?.clone();
    let from_ns: PathBuf = procs::netns_path(&st.node(&a.from)?.netns);
    let mut pods = Pods {
        mode: st.mode,
        node: node.clone(),
        pods: Vec::new(),
    };
    // The pods' sandboxes exist before the burst (the runtime makes them
    // before it calls the CNI), each listening on its port.
    for i in 0..a.pods {
        let name = format!("s{i}");
        let rec = PodRec {
            name: name.clone(),
            namespace: POD_NAMESPACE.into(),
            node: node.name.clone(),
            netns: names::ns_pod(&a.lab, POD_NAMESPACE, &name),
            container_id: names::container_id(&a.lab, POD_NAMESPACE, &name),
            ip: Ipv4Addr::UNSPECIFIED,
            result: Value::Null,
            http_pid: None,
            labels: Default::default(),
            ports: Vec::new(),
        };
        procs::netns_add(&rec.netns)?;
        pods.pods.push(Pod {
            rec: rec.clone(),
            _listener: None,
        });
        let path = procs::netns_path(&rec.netns);
        let mut h = podwire_netlink::Handle::in_netns(&path)?;
        let lo = h.link("lo")?;
        h.set_up(lo.index)?;
        let port = a.port;
        let l =
            podwire_netlink::netns::run_in(&path, move || TcpListener::bind(("0.0.0.0", port)))??;
        if let Some(p) = pods.pods.last_mut() {
            p._listener = Some(l);
        }
    }
    let before = cloud_and_pool(&a.lab, &node)?;
    let load_before = load1();

    let start = Barrier::new(a.pods + 1);
    let mut t0 = Instant::now();
    let outcomes: Vec<(Outcome, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .pods
            .iter()
            .map(|p| {
                let (node, from, rec, start) = (&node, &from_ns, &p.rec, &start);
                let (mode, port, dl) = (st.mode, a.port, a.answer_deadline_secs);
                s.spawn(move || {
                    start.wait();
                    let t0 = Instant::now();
                    start_pod(
                        mode,
                        node,
                        from,
                        rec,
                        port,
                        t0,
                        t0 + Duration::from_secs(dl),
                    )
                })
            })
            .collect();
        start.wait();
        t0 = Instant::now();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (Outcome::Failed("thread panicked".into()), Value::Null))
            })
            .collect()
    });
    let burst_ms = ms(t0.elapsed());
    for (p, (_, result)) in pods.pods.iter_mut().zip(&outcomes) {
        p.rec.result = result.clone();
    }
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|(o, _)| match o {
            Outcome::Failed(e) => Some(e.clone()),
            Outcome::Up { .. } => None,
        })
        .collect();
    let ups: Vec<(Ipv4Addr, f64, f64)> = outcomes
        .iter()
        .filter_map(|(o, _)| match o {
            Outcome::Up {
                ip,
                addr_ms,
                answer_ms,
            } => Some((*ip, *addr_ms, *answer_ms)),
            Outcome::Failed(_) => None,
        })
        .collect();
    let mut ips: Vec<Ipv4Addr> = ups.iter().map(|u| u.0).collect();
    ips.sort();
    ips.dedup();
    let duplicates = ups.len() - ips.len();

    let settle_dl = Duration::from_secs(a.settle_deadline_secs);
    let (agree_with_pods_ms, with_pods) = settle(&a.lab, &node, settle_dl, false);
    let del_errors = pods.remove_all();
    let (agree_after_del_ms, after_del) = settle(&a.lab, &node, settle_dl, true);

    let run = json!({
        "lab": a.lab,
        "instance_type": st.instance_type,
        "prefix_delegation": st.prefix_delegation,
        "faults": serde_json::to_value(st.cloud_faults)?,
        "pods": a.pods,
        "failed": failures.len(),
        "failures": failures,
        "duplicate_addresses": duplicates,
        "addr_ms": stats(ups.iter().map(|u| u.1).collect()),
        // Every pod's figures, fastest first: the pods served from the warm
        // pool and those that waited for the cloud show apart.
        "addr_ms_sorted": sorted_ms(ups.iter().map(|u| u.1).collect()),
        "answer_ms_sorted": sorted_ms(ups.iter().map(|u| u.2).collect()),
        "answer_ms": stats(ups.iter().map(|u| u.2).collect()),
        "burst_ms": (burst_ms * 10.0).round() / 10.0,
        "before": {"cloud_addresses": before.0.len(), "pool_addresses": before.1.len(), "enis": before.2},
        "with_pods": with_pods,
        "agree_with_pods_ms": agree_with_pods_ms,
        "del_errors": del_errors,
        "after_del": after_del,
        "agree_after_del_ms": agree_after_del_ms,
        "load1_before": load_before,
        "load1_after": load1(),
    });
    println!("{run}");
    let leaked = agree_with_pods_ms.is_none() || agree_after_del_ms.is_none();
    if !run["failures"].as_array().is_none_or(Vec::is_empty) || duplicates > 0 || leaked {
        bail!("the run failed: pods failed, an address was handed out twice, or the cloud and the pool never agreed");
    }
    Ok(())
}
