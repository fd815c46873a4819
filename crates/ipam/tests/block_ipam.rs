//! Block IPAM against both datastore backends (SQLite and a real etcd).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use podwire_ipam::block_store::{BlockIpam, IpamError, PoolConfig};
use podwire_store::testing::Etcd;
use podwire_store::{Datastore, EtcdStore, SqliteStore};

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
        let t1 = ipam.allocate("node-1", "tunnel.node-1").expect("t1");
        let t2 = ipam.allocate("node-2", "tunnel.node-2").expect("t2");
        assert_ne!(t1.block, t2.block);
        assert_eq!(t1.ip, t1.block.network());
        assert_eq!(t2.ip, t2.block.network());
        // Pods follow in the node's own block, then a new block.
        let mut ips = BTreeSet::new();
        for i in 0..63 {
            let a = ipam.allocate("node-1", &format!("pw.c{i}")).expect("alloc");
            assert_eq!(a.block, t1.block);
            assert!(!a.borrowed);
            ips.insert(a.ip);
        }
        assert_eq!(ips.len(), 63);
        let next = ipam.allocate("node-1", "pw.c63").expect("alloc");
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
            ipam.allocate(n, &format!("tunnel.{n}")).expect("tunnel");
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
                    ipam.allocate(node, &format!("pw.c{i}")).expect("alloc").ip
                })
            })
            .collect();
        let ips: Vec<Ipv4Addr> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let uniq: BTreeSet<_> = ips.iter().collect();
        assert_eq!(uniq.len(), 64, "an address was handed out twice");
        let recorded = ipam.allocations("pw.").expect("allocations");
        assert_eq!(recorded.len(), 64, "a handle was lost");
        for (h, ip) in &recorded {
            let i: usize = h.trim_start_matches("pw.c").parse().expect("index");
            assert_eq!(ips[i], *ip, "{h} recorded with another address");
        }
        let threads: Vec<_> = (0..64)
            .map(|i| {
                let ipam = Arc::clone(&ipam);
                std::thread::spawn(move || {
                    ipam.release(&format!("pw.c{i}")).expect("release").len()
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
            ipam.release("pw.c0").expect("again"),
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
        ipam.allocate("node-1", "tunnel.node-1").expect("n1");
        ipam.allocate("node-2", "tunnel.node-2").expect("n2");
        let b = ipam.allocate("node-3", "pw.x").expect("borrow");
        assert!(b.borrowed, "node-3 has no block: it must borrow");
        for i in 0..125 {
            ipam.allocate("node-3", &format!("pw.f{i}")).expect("fill");
        }
        match ipam.allocate("node-1", "pw.last") {
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
        ipam.allocate("node-1", "tunnel.node-1").expect("n1");
        ipam.allocate("node-2", "tunnel.node-2").expect("n2");
        match ipam.allocate("node-3", "pw.x") {
            Err(IpamError::Exhausted { detail, .. }) => assert!(detail.contains("strict affinity")),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn empty_blocks_are_released_after_the_grace_period_only() {
    both(|s| {
        let ipam = BlockIpam::open(s, cfg("172.16.0.0/16", false)).expect("open");
        let a = ipam.allocate("node-1", "pw.a").expect("a");
        assert!(
            ipam.release_empty_blocks("node-1", 0)
                .expect("gc")
                .is_empty(),
            "a block in use stays"
        );
        ipam.release("pw.a").expect("release");
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
    });
}
