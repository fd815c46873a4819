//! `lab probe`: every pod to every pod (itself included) on one TCP port,
//! connections made from inside the source pod's namespace to the
//! destination pod's address, in parallel, each with a short deadline. The
//! result is a reachability matrix like the truth tables of the upstream
//! Kubernetes NetworkPolicy tests (docs/LAB.md documents its JSON).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::state::LabState;
use crate::{procs, LabError};

/// How a probe is made.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    pub port: u16,
    /// Each connection's deadline (upstream's probes use 1 s).
    pub timeout: Duration,
    /// Connections in flight at once.
    pub parallel: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            port: 80,
            timeout: Duration::from_secs(1),
            parallel: 81,
        }
    }
}

/// The most connections in flight, whatever is asked.
pub const MAX_PARALLEL: usize = 128;

/// What one connection attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The handshake completed.
    Connected,
    /// Answered with a reset: nothing listens there, or a reject.
    Refused,
    /// No answer before the deadline (dropped on the way).
    Timeout,
    /// ICMP unreachable, no route, or a local error (see `error`).
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub from: String,
    pub to: String,
    pub to_ip: Ipv4Addr,
    pub reachable: bool,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub millis: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub lab: String,
    pub port: u16,
    pub timeout_ms: u64,
    /// `ns/name` of every pod, in order (rows and columns).
    pub pods: Vec<String>,
    /// `matrix[from][to]`: the connection was made.
    pub matrix: BTreeMap<String, BTreeMap<String, bool>>,
    /// Every attempt, row by row.
    pub results: Vec<Cell>,
    pub reachable: usize,
    pub total: usize,
}

struct Pod {
    key: String,
    netns: PathBuf,
    ip: Ipv4Addr,
}

/// Probes every ordered pair of the lab's pods.
pub fn probe_all(st: &LabState, opts: ProbeOptions) -> Result<Matrix, LabError> {
    if opts.port == 0 {
        return Err(LabError::Usage("--port must be 1-65535".into()));
    }
    let mut pods: Vec<Pod> = st
        .pods
        .values()
        .map(|p| Pod {
            key: p.key(),
            netns: procs::netns_path(&p.netns),
            ip: p.ip,
        })
        .collect();
    pods.sort_by(|a, b| a.key.cmp(&b.key));
    let pairs: Vec<(usize, usize)> = (0..pods.len())
        .flat_map(|i| (0..pods.len()).map(move |j| (i, j)))
        .collect();
    let cells: Mutex<Vec<Option<Cell>>> = Mutex::new(vec![None; pairs.len()]);
    let next = AtomicUsize::new(0);
    let workers = opts.parallel.clamp(1, MAX_PARALLEL).min(pairs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(i, j)) = pairs.get(k) else { break };
                let cell = connect(&pods[i], &pods[j], opts);
                if let Ok(mut c) = cells.lock() {
                    c[k] = Some(cell);
                }
            });
        }
    });
    let results: Vec<Cell> = cells
        .into_inner()
        .map_err(|_| LabError::State("a probe thread panicked".into()))?
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| LabError::State("a probe was not made".into()))?;
    let mut matrix: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
    for c in &results {
        matrix
            .entry(c.from.clone())
            .or_default()
            .insert(c.to.clone(), c.reachable);
    }
    Ok(Matrix {
        lab: st.name.clone(),
        port: opts.port,
        timeout_ms: u64::try_from(opts.timeout.as_millis()).unwrap_or(u64::MAX),
        pods: pods.iter().map(|p| p.key.clone()).collect(),
        reachable: results.iter().filter(|c| c.reachable).count(),
        total: results.len(),
        matrix,
        results,
    })
}

fn connect(from: &Pod, to: &Pod, opts: ProbeOptions) -> Cell {
    let addr = SocketAddr::from((to.ip, opts.port));
    let started = Instant::now();
    let attempt = podwire_netlink::netns::run_in(&from.netns, move || {
        TcpStream::connect_timeout(&addr, opts.timeout)
    });
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (outcome, error) = match attempt {
        Ok(Ok(_stream)) => (Outcome::Connected, None),
        Ok(Err(e)) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused => (Outcome::Refused, None),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                (Outcome::Timeout, None)
            }
            _ => (Outcome::Error, Some(e.to_string())),
        },
        Err(e) => (Outcome::Error, Some(e.to_string())),
    };
    Cell {
        from: from.key.clone(),
        to: to.key.clone(),
        to_ip: to.ip,
        reachable: outcome == Outcome::Connected,
        outcome,
        error,
        millis,
    }
}

/// The matrix for people, as upstream prints its truth tables: `.` the
/// connection was made, `X` it was not.
pub fn format_matrix(m: &Matrix) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "TCP port {} from every pod (rows) to every pod (columns): . connected, X not ({} ms deadline)",
        m.port, m.timeout_ms
    );
    let _ = write!(out, "-");
    for p in &m.pods {
        let _ = write!(out, "\t{p}");
    }
    let _ = writeln!(out);
    for from in &m.pods {
        let _ = write!(out, "{from}");
        for to in &m.pods {
            let ok = m
                .matrix
                .get(from)
                .and_then(|r| r.get(to))
                .copied()
                .unwrap_or(false);
            let _ = write!(out, "\t{}", if ok { "." } else { "X" });
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "{} of {} connections made", m.reachable, m.total);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_prints_as_a_truth_table() {
        let cell = |from: &str, to: &str, ok: bool| Cell {
            from: from.into(),
            to: to.into(),
            to_ip: Ipv4Addr::LOCALHOST,
            reachable: ok,
            outcome: if ok {
                Outcome::Connected
            } else {
                Outcome::Timeout
            },
            error: None,
            millis: 1,
        };
        let results = vec![
            cell("x/a", "x/a", true),
            cell("x/a", "x/b", false),
            cell("x/b", "x/a", true),
            cell("x/b", "x/b", true),
        ];
        let mut matrix: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
        for c in &results {
            matrix
                .entry(c.from.clone())
                .or_default()
                .insert(c.to.clone(), c.reachable);
        }
        let m = Matrix {
            lab: "t".into(),
            port: 80,
            timeout_ms: 1000,
            pods: vec!["x/a".into(), "x/b".into()],
            matrix,
            results,
            reachable: 3,
            total: 4,
        };
        let text = format_matrix(&m);
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows[0], "-\tx/a\tx/b");
        assert_eq!(rows[1], "x/a\t.\tX");
        assert_eq!(rows[2], "x/b\t.\t.");
        let v = serde_json::to_value(&m).expect("json");
        assert_eq!(v["matrix"]["x/a"]["x/b"], false);
        assert_eq!(v["results"][1]["outcome"], "timeout");
    }

    #[test]
    fn probes_connect_inside_the_source_namespace() {
        // Entering a namespace (even our own) needs root, like the lab.
        if !nix::unistd::Uid::effective().is_root() {
            assert!(
                std::env::var_os("PODWIRE_SKIP_ROOT_TESTS").is_some(),
                "needs root (set PODWIRE_SKIP_ROOT_TESTS=1 to skip)"
            );
            return;
        }
        // In this process's own namespace (no lab needed): a listener on
        // loopback is connected, a closed port refused.
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = l.local_addr().expect("addr").port();
        let me = Pod {
            key: "t/self".into(),
            netns: PathBuf::from("/proc/self/ns/net"),
            ip: Ipv4Addr::LOCALHOST,
        };
        let opts = ProbeOptions {
            port,
            ..Default::default()
        };
        let c = connect(&me, &me, opts);
        assert_eq!(c.outcome, Outcome::Connected, "{c:?}");
        drop(l);
        let c = connect(&me, &me, opts);
        assert_eq!(c.outcome, Outcome::Refused, "{c:?}");
        assert!(!c.reachable);
    }
}
