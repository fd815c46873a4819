//! Block IPAM against both datastore backends (SQLite and a real etcd).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use podwire_ipam::block_store::{BlockIpam, IpamError, PoolConfig};
use podwire_ipam::Handle;
use podwire_store::testing::Etcd;
use podwire_store::{Datastore, EtcdStore, SqliteStore};

mod common;
use common::{assert_consistent, Counting};

fn pod(c: &str) -> Handle {
    Handle::attachment("pw", c, "eth0")
}

fn tunnel(n: &str) -> Handle {
    Handle::tunnel(n)
}

fn cfg(pool: &str, strict: bool) -> PoolConfig {
    PoolConfig {
        pool: pool.parse().expect("pool"),
        block_prefix: 26,
        strict_affinity: strict,
    }
}

/// Runs `test` on a fresh SQLite store and on a fresh etcd.
fn both(test: impl Fn(Arc<dyn Datastore>)) {
    let dir = tempfile::tempdir().expect("tempdir");
    test(Arc::new(
        SqliteStore::open(&dir.path().join("ipam.db")).expect("sqlite"),
    ));
    let etcd = Etcd::start();
    test(Arc::new(
        EtcdStore::connect(&etcd.endpoint()).expect("etcd"),
    ));
}

#[test]
fn nodes_claim_distinct_blocks_and_the_tunnel_gets_the_first_address() {
    both(|s| {
        let ipam = BlockIpam::open(s, cfg("172.16.0.0/16", false)).expect("open");
        let t1 = ipam.allocate("node-1", tunnel("node-1")).expect("t1");
        let t2 = ipam.allocate("node-2", tunnel("node-2")).expect("t2");
        assert_ne!(t1.block, t2.block);
        assert_eq!(t1.ip, t1.block.network());
        assert_eq!(t2.ip, t2.block.network());
        // Pods follow in the node's own block, then a new block.
        let mut ips = BTreeSet::new();
        for i in 0..63 {
            let a = ipam
                .allocate("node-1", pod(&format!("c{i}")))
                .expect("alloc");
            assert_eq!(a.block, t1.block);
            assert!(!a.borrowed);
            ips.insert(a.ip);
        }
        assert_eq!(ips.len(), 63);
        let next = ipam.allocate("node-1", pod("c63")).expect("alloc");
        assert_ne!(next.block, t1.block);
        assert_eq!(
            ipam.blocks()
                .expect("blocks")
                .iter()
                .filter(|(b, _)| b.affinity.as_deref() == Some("node-1"))
                .count(),
            2
        );
    });
}

#[test]
fn sixty_four_concurrent_allocations_then_releases_leave_the_pool_as_before() {
    both(|s| {
        let ipam = Arc::new(BlockIpam::open(s, cfg("172.16.0.0/16", false)).expect("open"));
        for n in ["node-1", "node-2"] {
            ipam.allocate(n, tunnel(n)).expect("tunnel");
        }
        let before: Vec<_> = ipam
            .blocks()
            .expect("blocks")
            .into_iter()
            .map(|(b, _)| b)
            .collect();
        let threads: Vec<_> = (0..64)
            .map(|i| {
                let ipam = Arc::clone(&ipam);
                std::thread::spawn(move || {
                    let node = if i % 2 == 0 { "node-1" } else { "node-2" };
                    ipam.allocate(node, pod(&format!("c{i}")))
                        .expect("alloc")
                        .ip
                })
            })
            .collect();
        let ips: Vec<Ipv4Addr> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let uniq: BTreeSet<_> = ips.iter().collect();
        assert_eq!(uniq.len(), 64, "an address was handed out twice");
        let mut recorded = ipam.allocations_on("node-1", "pw").expect("allocations");
        recorded.extend(ipam.allocations_on("node-2", "pw").expect("allocations"));
        assert_eq!(recorded.len(), 64, "a handle was lost");
        for a in &recorded {
            let Handle::Attachment { container_id, .. } = &a.holder.handle else {
                panic!("{:?}", a.holder.handle)
            };
            let i: usize = container_id.trim_start_matches('c').parse().expect("index");
            assert_eq!(ips[i], a.ip, "{container_id} recorded with another address");
        }
        assert_consistent(ipam.as_ref());
        let threads: Vec<_> = (0..64)
            .map(|i| {
                let ipam = Arc::clone(&ipam);
                std::thread::spawn(move || {
                    ipam.release(&pod(&format!("c{i}"))).expect("release").len()
                })
            })
            .collect();
        let freed: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(freed, 64);
        let mut after: Vec<_> = ipam
            .blocks()
            .expect("blocks")
            .into_iter()
            .map(|(b, _)| b)
            .collect();
        // Blocks claimed during the run are empty now; the original ones are
        // exactly as they were.
        after.retain(|b| !b.allocations.is_empty() || before.iter().any(|x| x.cidr == b.cidr));
        let strip = |v: &Vec<podwire_ipam::block::Block>| {
            v.iter()
                .map(|b| (b.cidr, b.affinity.clone(), b.allocations.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&after), strip(&before));
        assert_eq!(
            ipam.release(&pod("c0")).expect("again"),
            Vec::<Ipv4Addr>::new(),
            "releasing twice frees nothing"
        );
    });
}

#[test]
fn borrowing_strict_affinity_and_exhaustion() {
    both(|s| {
        // Two /26 blocks in the pool.
        let ipam = BlockIpam::open(Arc::clone(&s), cfg("172.16.0.0/25", false)).expect("open");
        ipam.allocate("node-1", tunnel("node-1")).expect("n1");
        ipam.allocate("node-2", tunnel("node-2")).expect("n2");
        let b = ipam.allocate("node-3", pod("x")).expect("borrow");
        assert!(b.borrowed, "node-3 has no block: it must borrow");
        for i in 0..125 {
            ipam.allocate("node-3", pod(&format!("f{i}")))
                .expect("fill");
        }
        match ipam.allocate("node-1", pod("last")) {
            Err(IpamError::Exhausted { detail, .. }) => assert!(detail.contains("every address")),
            other => panic!("{other:?}"),
        }
        // The same pool with another setting is refused.
        assert!(matches!(
            BlockIpam::open(Arc::clone(&s), cfg("172.16.0.0/25", true)),
            Err(IpamError::ConfigMismatch { .. })
        ));
    });
    both(|s| {
        let ipam = BlockIpam::open(s, cfg("172.16.0.0/25", true)).expect("open");
        ipam.allocate("node-1", tunnel("node-1")).expect("n1");
        ipam.allocate("node-2", tunnel("node-2")).expect("n2");
        match ipam.allocate("node-3", pod("x")) {
            Err(IpamError::Exhausted { detail, .. }) => assert!(detail.contains("strict affinity")),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn empty_blocks_are_released_after_the_grace_period_only() {
    both(|s| {
        let ipam = BlockIpam::open(s, cfg("172.16.0.0/16", false)).expect("open");
        let a = ipam.allocate("node-1", pod("a")).expect("a");
        assert!(
            ipam.release_empty_blocks("node-1", 0)
                .expect("gc")
                .is_empty(),
            "a block in use stays"
        );
        ipam.release(&pod("a")).expect("release");
        assert!(
            ipam.release_empty_blocks("node-1", 3600)
                .expect("gc")
                .is_empty(),
            "grace not over"
        );
        assert_eq!(
            ipam.release_empty_blocks("node-1", 0).expect("gc"),
            vec![a.block]
        );
        assert!(ipam.blocks().expect("blocks").is_empty());
        assert_consistent(&ipam);
    });
}

/// Issue 6 item 1: a /27 pool in /28 blocks; node-1 fills its block and
/// borrows from node-2's; node-2 is removed. The borrowed address stays
/// held (its block stays, without affinity) and nobody gets it again until
/// it is released; then the emptied block goes.
#[test]
fn removing_a_node_keeps_addresses_others_borrowed_from_its_blocks() {
    both(|s| {
        let ipam = BlockIpam::open(
            Arc::clone(&s),
            PoolConfig {
                pool: "172.20.0.0/27".parse().expect("pool"),
                block_prefix: 28,
                strict_affinity: false,
            },
        )
        .expect("open");
        let t1 = ipam.allocate("node-1", tunnel("node-1")).expect("t1");
        let t2 = ipam.allocate("node-2", tunnel("node-2")).expect("t2");
        let mut borrowed = Vec::new();
        for i in 0..16 {
            let a = ipam
                .allocate("node-1", pod(&format!("c{i}")))
                .expect("alloc");
            if a.borrowed {
                assert_eq!(a.block, t2.block);
                borrowed.push((i, a.ip));
            }
        }
        let [(bi, held)] = borrowed[..] else {
            panic!("expected one borrowed address, got {borrowed:?}")
        };
        podwire_ipam::nodes::remove(Arc::clone(&s), &ipam, "node-2").expect("remove");
        let (b2, _) = ipam
            .blocks()
            .expect("blocks")
            .into_iter()
            .find(|(b, _)| b.cidr == t2.block)
            .expect("node-2's block stays while node-1 holds an address in it");
        assert_eq!(b2.affinity, None);
        assert_eq!(b2.allocations.len(), 1);
        assert_consistent(&ipam);
        // A new node takes everything else there is, never the held one.
        let mut got = Vec::new();
        for i in 0..15 {
            let a = ipam
                .allocate("node-3", pod(&format!("n{i}")))
                .expect("node-3");
            assert_ne!(a.ip, held, "an address node-1 holds was handed out again");
            got.push(a.ip);
        }
        assert!(got.contains(&t2.ip), "node-2's tunnel address was released");
        assert!(matches!(
            ipam.allocate("node-3", pod("full")),
            Err(IpamError::Exhausted { .. })
        ));
        // The borrowed address is still node-1's, and findable.
        let (ip, _) = ipam
            .find(&pod(&format!("c{bi}")))
            .expect("find")
            .expect("held");
        assert_eq!(ip, held);
        assert!(ipam
            .release_empty_blocks("node-3", 0)
            .expect("gc")
            .is_empty());
        // Released: the block has no affinity and goes when empty.
        for i in 0..15 {
            ipam.release(&pod(&format!("n{i}"))).expect("release");
        }
        assert_eq!(
            ipam.release(&pod(&format!("c{bi}"))).expect("release"),
            vec![held]
        );
        assert!(
            ipam.blocks()
                .expect("blocks")
                .iter()
                .all(|(b, _)| b.cidr != t2.block),
            "an empty block without affinity is deleted"
        );
        assert!(ipam
            .blocks()
            .expect("blocks")
            .iter()
            .any(|(b, _)| b.cidr == t1.block));
        assert_consistent(&ipam);
    });
}

/// Issue 6 item 3: handles are matched field by field, never as strings.
#[test]
fn handles_with_dots_are_matched_exactly() {
    both(|s| {
        let ipam = BlockIpam::open(s, cfg("172.16.0.0/16", false)).expect("open");
        // "pw" + "x.c1" and "pw.x" + "c1" were both "pw.x.c1".
        let a = ipam
            .allocate("node-1", Handle::attachment("pw", "x.c1", "eth0"))
            .expect("pw");
        let b = ipam
            .allocate("node-1", Handle::attachment("pw.x", "c1", "eth0"))
            .expect("pw.x");
        assert_ne!(a.ip, b.ip);
        let eth1 = ipam
            .allocate("node-1", Handle::attachment("pw", "cX", "eth1"))
            .expect("cX eth1");
        ipam.allocate("node-2", Handle::attachment("pw", "other", "eth0"))
            .expect("other node");
        // GC of network pw on node-1 sees pw's addresses only, on node-1 only.
        let mut of_pw: Vec<Ipv4Addr> = ipam
            .allocations_on("node-1", "pw")
            .expect("allocations")
            .into_iter()
            .map(|a| a.ip)
            .collect();
        of_pw.sort();
        assert_eq!(of_pw, vec![a.ip, eth1.ip]);
        let of_pwx = ipam.allocations_on("node-1", "pw.x").expect("allocations");
        assert_eq!(of_pwx.len(), 1);
        assert_eq!(
            of_pwx[0].holder.handle,
            Handle::attachment("pw.x", "c1", "eth0")
        );
        // DEL of (pw, "cX.eth1", eth0) — never allocated — frees nothing.
        assert!(ipam
            .release(&Handle::attachment("pw", "cX.eth1", "eth0"))
            .expect("release")
            .is_empty());
        assert_eq!(
            ipam.find(&Handle::attachment("pw", "cX", "eth1"))
                .expect("find")
                .map(|(ip, _)| ip),
            Some(eth1.ip)
        );
        // The same attachment twice is refused, wherever it is asked.
        assert!(matches!(
            ipam.allocate("node-2", Handle::attachment("pw", "x.c1", "eth0")),
            Err(IpamError::HandleInUse { ip, .. }) if ip == a.ip
        ));
        assert_consistent(&ipam);
    });
}

/// Issue 8 item 8: an ADD reads its own node's blocks, not the cluster's.
#[test]
fn an_add_reads_only_its_own_nodes_blocks() {
    both(|s| {
        let counting = Arc::new(Counting::new(s));
        let ipam = BlockIpam::open(
            Arc::clone(&counting) as Arc<dyn Datastore>,
            cfg("172.16.0.0/16", false),
        )
        .expect("open");
        for n in 0..40 {
            ipam.allocate(&format!("other-{n}"), tunnel(&format!("other-{n}")))
                .expect("other node");
        }
        ipam.allocate("me", tunnel("me")).expect("me");
        counting.reset();
        for i in 0..10 {
            ipam.allocate("me", pod(&format!("c{i}"))).expect("add");
        }
        let reads = counting.reads();
        assert!(
            reads
                .iter()
                .all(|k| !k.ends_with("/blocks/") && !k.contains("other")),
            "an ADD read other nodes' data: {reads:?}"
        );
        assert!(
            reads.len() <= 10 * 4,
            "{} reads for 10 ADDs: {reads:?}",
            reads.len()
        );
    });
}
