//! IPAM ADD at cluster scale (issue 8 item 8): a /12 pool, N other nodes
//! with one /26 block each seeded straight into the datastore (as
//! overlay-converge seeds them), then the time of one IPAM ADD — allocate
//! for a new attachment on one node whose block has room — p50/p99 over
//! many ADDs; the same with no other node; on SQLite and on an etcd this
//! program starts on loopback. The target: p50 with N nodes ≤ 1.2 × p50
//! alone. Needs no root.
//!
//! `cargo run --release -p podwire-bench --bin overlay-add-scale -- --nodes 5000 --adds 200`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ipnet::Ipv4Net;
use podwire_ipam::block::{blocks_of, Block, Holder};
use podwire_ipam::block_store::{BlockIpam, PoolConfig};
use podwire_ipam::nodes::{self, NodeRecord};
use podwire_ipam::Handle;
use podwire_store::testing::Etcd;
use podwire_store::{Datastore, EtcdStore, SqliteStore};

#[derive(Debug, Parser)]
struct Args {
    /// Other nodes, one block each.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Timed ADDs per run.
    #[arg(long, default_value_t = 200)]
    adds: usize,
    /// Skip the etcd runs.
    #[arg(long)]
    no_etcd: bool,
}

const POOL: &str = "172.16.0.0/12";
const NODE: &str = "bench-node";

/// N other nodes as overlay-converge seeds them: a record and a block with
/// the tunnel address, from the top of the pool down.
fn seed(store: &dyn Datastore, ipam: &BlockIpam, n: usize) -> anyhow::Result<()> {
    let pool: Ipv4Net = POOL.parse()?;
    let blocks: Vec<Ipv4Net> = blocks_of(pool, 26).collect();
    for k in 0..n {
        let name = format!("fake-{k}");
        let cidr = blocks[blocks.len() - 1 - k];
        let mut b = Block::new(cidr, &name);
        b.assign(&Holder::new(Handle::tunnel(&name), &name))
            .context("tunnel address")?;
        ipam.insert_block(&b)?;
        let k = u32::try_from(k)?;
        nodes::register(
            store,
            &NodeRecord {
                name,
                underlay_ip: (0x0ac8_0000 + k + 2).into(),
                vtep_mac: format!(
                    "02:00:00:{:02x}:{:02x}:{:02x}",
                    (k >> 16) & 0xff,
                    (k >> 8) & 0xff,
                    k & 0xff
                ),
                tunnel_ip: cidr.network(),
            },
        )?;
    }
    Ok(())
}

fn pct(v: &[Duration], p: usize) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Seeds `others` nodes, gives the bench node its block, then times ADDs
/// (released again after each run of 50 so the node keeps one block).
fn run(
    store: Arc<dyn Datastore>,
    others: usize,
    adds: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let ipam = BlockIpam::open(
        Arc::clone(&store),
        PoolConfig {
            pool: POOL.parse()?,
            block_prefix: 26,
            strict_affinity: false,
        },
    )?;
    let t = Instant::now();
    seed(store.as_ref(), &ipam, others)?;
    if others > 0 {
        eprintln!(
            "  seeded {others} nodes in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    ipam.allocate(NODE, Handle::tunnel(NODE))?;
    let mut times = Vec::with_capacity(adds);
    let mut held = Vec::new();
    for i in 0..adds {
        let h = Handle::attachment("pw", &format!("{i:064x}"), "eth0");
        let t = Instant::now();
        let a = ipam.allocate(NODE, h.clone())?;
        times.push(t.elapsed());
        if a.borrowed {
            bail!("ADD {i} borrowed: the node's block should have had room");
        }
        held.push(h);
        if held.len() == 50 {
            for h in held.drain(..) {
                ipam.release(&h)?;
            }
        }
    }
    Ok((pct(&times, 50), pct(&times, 99)))
}

fn report(backend: &str, alone: (Duration, Duration), crowd: (Duration, Duration), n: usize) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{backend}: ADD alone p50 {:.0} µs p99 {:.0} µs; with {n} other nodes p50 {:.0} µs p99 {:.0} µs; p50 ratio {:.2}",
        us(alone.0),
        us(alone.1),
        us(crowd.0),
        us(crowd.1),
        crowd.0.as_secs_f64() / alone.0.as_secs_f64()
    );
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let dir = tempfile::tempdir()?;
    let sqlite = |name: &str| -> anyhow::Result<Arc<dyn Datastore>> {
        Ok(Arc::new(SqliteStore::open(&dir.path().join(name))?))
    };
    let alone = run(sqlite("alone.db")?, 0, a.adds)?;
    let crowd = run(sqlite("crowd.db")?, a.nodes, a.adds)?;
    report("SQLite", alone, crowd, a.nodes);
    if !a.no_etcd {
        let alone = {
            let e = Etcd::start();
            run(Arc::new(EtcdStore::connect(&e.endpoint())?), 0, a.adds)?
        };
        let crowd = {
            let e = Etcd::start();
            run(
                Arc::new(EtcdStore::connect(&e.endpoint())?),
                a.nodes,
                a.adds,
            )?
        };
        report("etcd", alone, crowd, a.nodes);
    }
    Ok(())
}
