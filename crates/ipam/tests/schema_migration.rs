//! The v1 → v2 datastore migration, on SQLite and a real etcd: a store
//! written as the v1 agent wrote it (string handles, no indexes, no schema
//! key) is converted once even when several agents open it at the same time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use podwire_ipam::block_store::{BlockIpam, IpamError, PoolConfig};
use podwire_ipam::schema::SCHEMA_VERSION;
use podwire_ipam::Handle;
use podwire_store::testing::Etcd;
use podwire_store::{Datastore, EtcdStore, Event, Expect, SqliteStore};

mod common;
use common::assert_consistent;

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

fn cfg() -> PoolConfig {
    PoolConfig {
        pool: "172.16.0.0/16".parse().expect("pool"),
        block_prefix: 26,
        strict_affinity: false,
    }
}

/// Blocks exactly as the v1 code serialized them.
fn write_v1(s: &dyn Datastore) {
    let put = |k: &str, v: &str| {
        s.put(k, v.as_bytes(), Expect::Absent).expect("put");
    };
    put(
        "/podwire/ipam/config",
        r#"{"pool":"172.16.0.0/16","block_prefix":26,"strict_affinity":false}"#,
    );
    put(
        "/podwire/ipam/blocks/172.16.0.0-26",
        r#"{"cidr":"172.16.0.0/26","affinity":"node-1","allocations":{"0":{"handle":"tunnel.node-1","node":"node-1"},"1":{"handle":"pw.x.abc","node":"node-1","attrs":{"ifname":"eth0","pod_name":"p1"}},"2":{"handle":"pw.abc.net1","node":"node-1","attrs":{"ifname":"net1"}},"3":{"handle":"pw.def","node":"node-2","attrs":{"ifname":"eth0"}}}}"#,
    );
    // A full block of node-2's (no free-index entry), and an empty one.
    let mut allocs = vec![r#""0":{"handle":"tunnel.node-2","node":"node-2"}"#.to_string()];
    for i in 1..64 {
        allocs.push(format!(
            r#""{i}":{{"handle":"pw.c{i}","node":"node-2","attrs":{{"ifname":"eth0"}}}}"#
        ));
    }
    put(
        "/podwire/ipam/blocks/172.16.0.64-26",
        &format!(
            r#"{{"cidr":"172.16.0.64/26","affinity":"node-2","allocations":{{{}}}}}"#,
            allocs.join(",")
        ),
    );
    put(
        "/podwire/ipam/blocks/172.16.0.128-26",
        r#"{"cidr":"172.16.0.128/26","affinity":"node-1","allocations":{},"empty_since":5}"#,
    );
}

#[test]
fn a_v1_store_is_migrated_once_even_by_concurrent_agents() {
    both(|s| {
        write_v1(s.as_ref());
        let from = s.list("/podwire/").expect("list").revision;
        let rx = s.watch("/podwire/ipam/", from).expect("watch");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || BlockIpam::open(s, cfg()).map(|_| ()))
            })
            .collect();
        for t in threads {
            t.join().expect("thread").expect("open migrates");
        }
        // Exactly once: each block and the version key written one time.
        s.put("/podwire/ipam/zz-end", b"1", Expect::Absent)
            .expect("sentinel");
        let mut puts: std::collections::BTreeMap<String, usize> = Default::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "events did not arrive: {puts:?}");
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(Event::Put(e))) if e.key == "/podwire/ipam/zz-end" => break,
                Ok(Ok(Event::Put(e))) => *puts.entry(e.key).or_default() += 1,
                Ok(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        for k in [
            "/podwire/ipam/schema",
            "/podwire/ipam/blocks/172.16.0.0-26",
            "/podwire/ipam/blocks/172.16.0.64-26",
            "/podwire/ipam/blocks/172.16.0.128-26",
        ] {
            assert_eq!(puts.get(k), Some(&1), "{k} written {:?} times", puts.get(k));
        }
        let v = s.get("/podwire/ipam/schema").expect("get").expect("schema");
        assert_eq!(v.value, SCHEMA_VERSION.to_string().as_bytes());

        let ipam = BlockIpam::open(Arc::clone(&s), cfg()).expect("reopen");
        assert_consistent(&ipam);
        let ip = |h: Handle| ipam.find(&h).expect("find").map(|(ip, _)| ip.to_string());
        assert_eq!(ip(Handle::tunnel("node-1")).as_deref(), Some("172.16.0.0"));
        assert_eq!(
            ip(Handle::attachment("pw.x", "abc", "eth0")).as_deref(),
            Some("172.16.0.1")
        );
        assert_eq!(
            ip(Handle::attachment("pw", "abc", "net1")).as_deref(),
            Some("172.16.0.2")
        );
        assert_eq!(
            ip(Handle::attachment("pw", "c63", "eth0")).as_deref(),
            Some("172.16.0.127")
        );
        let (_, b) = ipam
            .find(&Handle::attachment("pw.x", "abc", "eth0"))
            .expect("find")
            .expect("held");
        let (_, h) = b
            .find(&Handle::attachment("pw.x", "abc", "eth0"))
            .expect("holder");
        assert_eq!(h.attrs.get("pod_name").map(String::as_str), Some("p1"));
        // The indexes work: node-1 gets its next address in its own block,
        // network pw on node-2 is exactly its 64 addresses (pw.x is apart).
        let a = ipam
            .allocate("node-1", Handle::attachment("pw", "new", "eth0"))
            .expect("add");
        assert_eq!(a.ip.to_string(), "172.16.0.4");
        assert_eq!(ipam.allocations_on("node-2", "pw").expect("gc").len(), 64);
        assert_eq!(ipam.allocations_on("node-1", "pw").expect("gc").len(), 2);
        assert_eq!(ipam.node_blocks("node-2").expect("blocks").len(), 1);
        assert_consistent(&ipam);
    });
}

#[test]
fn a_store_from_a_newer_podwire_is_refused_untouched() {
    both(|s| {
        write_v1(s.as_ref());
        s.put("/podwire/ipam/schema", b"3", Expect::Absent)
            .expect("put");
        let before = s.list("/podwire/").expect("list");
        match BlockIpam::open(Arc::clone(&s), cfg()) {
            Err(e @ IpamError::SchemaTooNew { found: 3, known: 2 }) => {
                assert!(e.to_string().contains("version 3"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.list("/podwire/").expect("list").entries, before.entries);
    });
}
