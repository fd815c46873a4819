//! Route convergence at scale (issue 3 §6): N remote nodes' blocks in the
//! datastore (fake peers: only their records), one real `podwire-agent` in
//! overlay mode in a namespace of this program's own. Measures how long the
//! agent takes from its start to having every route, neighbour and FDB entry
//! in the kernel, then how long one added or removed node takes to show.
//!
//! Run as root: `overlay-converge --peers 5000 --agent target/release/podwire-agent
//! [--datastore sqlite|etcd]`. With etcd, this program moves into its
//! namespace first and starts etcd there on loopback, so the agent (which
//! runs in the namespace) and the program reach the same server; nothing
//! listens outside the namespace.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ipnet::Ipv4Net;
use podwire_ipam::block::{blocks_of, Block, Holder};
use podwire_ipam::block_store::{BlockIpam, PoolConfig};
use podwire_ipam::nodes::{self, NodeRecord};
use podwire_ipam::Handle as IpamHandle;
use podwire_netlink::{Handle, VethSpec};
use podwire_store::{Datastore, SqliteStore};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 5000)]
    peers: usize,
    #[arg(long, default_value = "target/release/podwire-agent")]
    agent: PathBuf,
    /// Single changes to time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// `sqlite` or `etcd`.
    #[arg(long, default_value = "sqlite")]
    datastore: String,
}

const NS: &str = "pw-bench-conv";
const POOL: &str = "172.16.0.0/12";

struct Guard {
    agent: Option<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.agent {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

fn fake_node(
    store: &dyn Datastore,
    ipam: &BlockIpam,
    k: usize,
    cidr: Ipv4Net,
) -> anyhow::Result<()> {
    // Peers' underlay addresses are 10.200.0.2 up, inside 10.200.0.0/16:
    // a larger index would leave it (or wrap), so it is refused before
    // anything is written.
    let name = format!("fake-{k}");
    let k = u32::try_from(k)
        .ok()
        .filter(|k| *k <= 0xfffd)
        .context("at most 65534 fake peers (their addresses are in 10.200.0.0/16)")?;
    let mut b = Block::new(cidr, &name);
    b.assign(&Holder::new(IpamHandle::tunnel(&name), &name))
        .context("tunnel address")?;
    ipam.insert_block(&b)?;
    let rec = NodeRecord {
        name,
        underlay_ip: Ipv4Addr::from(0x0ac8_0000 + k + 2), // 10.200.x.y
        vtep_mac: format!(
            "02:00:00:{:02x}:{:02x}:{:02x}",
            (k >> 16) & 0xff,
            (k >> 8) & 0xff,
            k & 0xff
        ),
        tunnel_ip: cidr.network(),
    };
    nodes::register(store, &rec)?;
    Ok(())
}

fn remove_fake(
    store: &dyn Datastore,
    ipam: &BlockIpam,
    k: usize,
    cidr: Ipv4Net,
) -> anyhow::Result<()> {
    let key = nodes::node_key(&format!("fake-{k}"));
    if let Some(e) = store.get(&key)? {
        store.delete(&key, e.mod_revision)?;
    }
    ipam.delete_block(cidr)?;
    Ok(())
}

/// Routes via the VXLAN device, neighbours and FDB entries on it.
fn counts(h: &mut Handle) -> anyhow::Result<(usize, usize, usize)> {
    let Some(v) = h.link_by_name("vxlan.podwire")? else {
        return Ok((0, 0, 0));
    };
    let routes = h
        .routes()?
        .iter()
        .filter(|r| r.protocol == 80 && r.oif == Some(v.index))
        .count();
    let neigh = h
        .permanent_neighbours()?
        .iter()
        .filter(|n| n.ifindex == v.index)
        .count();
    let fdb = h.fdb(v.index)?.len();
    Ok((routes, neigh, fdb))
}

fn has_route(h: &mut Handle, dst: Ipv4Net) -> anyhow::Result<bool> {
    Ok(h.routes()?.iter().any(|r| r.dst == dst && r.protocol == 80))
}

fn wait(
    limit: Duration,
    mut f: impl FnMut() -> anyhow::Result<bool>,
    step: Duration,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        if f()? {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!("not converged within {limit:?}");
        }
        std::thread::sleep(step);
    }
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if Path::new("/run/netns").join(NS).exists() {
        bail!("netns {NS} exists; remove it first");
    }
    let agent_bin =
        std::fs::canonicalize(&a.agent).with_context(|| format!("{}", a.agent.display()))?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("store.db");
    let mut guard = Guard { agent: None };
    Command::new("ip").args(["netns", "add", NS]).status()?;
    let ns_path = Path::new("/run/netns").join(NS);
    // Everything from here runs in the bench namespace (this thread, the
    // processes it starts, the datastore client's threads).
    podwire_netlink::netns::enter(&ns_path)?;
    let mut h = Handle::new()?;
    let lo = h.link("lo")?;
    h.set_up(lo.index)?;
    let (store, spec, _etcd): (
        Arc<dyn Datastore>,
        String,
        Option<podwire_store::testing::Etcd>,
    ) = match a.datastore.as_str() {
        "sqlite" => (
            Arc::new(SqliteStore::open(&db)?),
            format!("sqlite:{}", db.display()),
            None,
        ),
        "etcd" => {
            // Started from this thread, so inside the bench namespace.
            let e = podwire_store::testing::Etcd::start();
            let s = podwire_store::EtcdStore::connect(&e.endpoint())?;
            let spec = format!("etcd://{}", e.host_port());
            (Arc::new(s), spec, Some(e))
        }
        other => bail!("--datastore {other:?}: sqlite or etcd"),
    };
    let pool: Ipv4Net = POOL.parse()?;
    let ipam = BlockIpam::open(
        Arc::clone(&store),
        PoolConfig {
            pool,
            block_prefix: 26,
            strict_affinity: false,
        },
    )?;
    let blocks: Vec<Ipv4Net> = blocks_of(pool, 26).collect();
    let t = Instant::now();
    for k in 0..a.peers {
        fake_node(store.as_ref(), &ipam, k, blocks[blocks.len() - 1 - k])?;
    }
    eprintln!("seeded {} fake nodes in {:?}", a.peers, t.elapsed());

    h.add_veth(&VethSpec {
        name: "eth0",
        peer_name: "peer0",
        mtu: Some(9001),
        mac: None,
        peer_mac: None,
        peer_netns: None,
    })?;
    let eth0 = h.link("eth0")?;
    h.add_address(eth0.index, "10.200.0.1/16".parse()?)?;
    h.set_up(eth0.index)?;
    let peer0 = h.link("peer0")?;
    h.set_up(peer0.index)?;

    let log = std::fs::File::create(dir.path().join("agent.log"))?;
    let started = Instant::now();
    guard.agent = Some(
        Command::new(&agent_bin)
            .args([
                "--mode",
                "overlay",
                "--node-name",
                "bench-node",
                "--pod-cidr",
                POOL,
                "--underlay-dev",
                "eth0",
            ])
            .arg("--datastore")
            .arg(&spec)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("agent.sock"))
            .env("PODWIRE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let n = a.peers;
    let startup = wait(
        Duration::from_secs(30),
        || Ok(counts(&mut h)? == (n, n, n)),
        Duration::from_millis(10),
    )?;
    let _ = started;
    println!("datastore: {}", a.datastore);
    println!("start-up: agent started → {n} routes + {n} neighbours + {n} FDB entries in the kernel: {:.0} ms", startup.as_secs_f64() * 1e3);

    let mut adds = Vec::new();
    let mut dels = Vec::new();
    for c in 0..a.changes {
        let k = n + c;
        let cidr = blocks[blocks.len() - 1 - k];
        let t = Instant::now();
        fake_node(store.as_ref(), &ipam, k, cidr)?;
        let _ = wait(
            Duration::from_secs(5),
            || has_route(&mut h, cidr),
            Duration::from_micros(500),
        )?;
        adds.push(t.elapsed());
        let t = Instant::now();
        remove_fake(store.as_ref(), &ipam, k, cidr)?;
        let _ = wait(
            Duration::from_secs(5),
            || Ok(!has_route(&mut h, cidr)?),
            Duration::from_micros(500),
        )?;
        dels.push(t.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "one node added (datastore write → its route in the kernel), {} runs: p50 {:.1} ms, max {:.1} ms",
        adds.len(),
        ms(pct(&mut adds, 50)),
        ms(*adds.iter().max().context("runs")?)
    );
    println!(
        "one node removed (datastore delete → route gone), {} runs: p50 {:.1} ms, max {:.1} ms",
        dels.len(),
        ms(pct(&mut dels, 50)),
        ms(*dels.iter().max().context("runs")?)
    );
    let rss: BTreeMap<String, String> = std::fs::read_to_string(format!(
        "/proc/{}/status",
        guard.agent.as_ref().map(|c| c.id()).unwrap_or(0)
    ))
    .unwrap_or_default()
    .lines()
    .filter_map(|l| {
        l.split_once(':')
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
    })
    .collect();
    println!(
        "agent process VmRSS with {n} peers: {}",
        rss.get("VmRSS").cloned().unwrap_or_default()
    );
    drop(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index 65534 would be 10.201.0.0 (and a large one wrap): refused,
    /// with nothing written.
    #[test]
    fn fake_peers_stay_inside_their_underlay_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Datastore> =
            Arc::new(SqliteStore::open(&dir.path().join("db")).expect("store"));
        let cidr: Ipv4Net = "172.20.0.0/26".parse().expect("cidr");
        let ipam = BlockIpam::open(
            Arc::clone(&store),
            PoolConfig {
                pool: "172.20.0.0/16".parse().expect("pool"),
                block_prefix: 26,
                strict_affinity: false,
            },
        )
        .expect("ipam");
        let before = store.list("/podwire/nodes/").expect("list").entries.len();
        let blocks_before = ipam.blocks().expect("blocks").len();
        for k in [0xfffe, usize::MAX] {
            assert!(fake_node(store.as_ref(), &ipam, k, cidr).is_err(), "{k}");
        }
        assert_eq!(
            store.list("/podwire/nodes/").expect("list").entries.len(),
            before
        );
        assert_eq!(ipam.blocks().expect("blocks").len(), blocks_before);
        fake_node(store.as_ref(), &ipam, 0xfffd, cidr).expect("last one that fits");
    }
}
