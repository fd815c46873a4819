//! One behaviour, two backends: every test runs against SQLite and against
//! a real etcd server that the test starts on loopback and stops afterwards,
//! once plain and once over TLS with a client certificate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use podwire_store::testing::{free_port, Etcd};
use podwire_store::{Datastore, EtcdStore, Event, Expect, SqliteStore, StoreError, Write};

fn sqlite() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(&dir.path().join("store.db")).expect("open");
    (dir, s)
}

fn both(test: impl Fn(Arc<dyn Datastore>)) {
    let (_dir, s) = sqlite();
    test(Arc::new(s));
    let etcd = Etcd::start();
    test(Arc::new(
        EtcdStore::connect(&etcd.endpoint()).expect("connect"),
    ));
    let etcd = Etcd::start_tls();
    test(Arc::new(
        EtcdStore::connect_with(&etcd.endpoint(), &etcd.client_tls()).expect("connect tls"),
    ));
}

#[test]
fn compare_and_swap_semantics() {
    both(|s| {
        let r1 = s.put("pw/a", b"1", Expect::Absent).expect("create");
        assert!(matches!(
            s.put("pw/a", b"x", Expect::Absent),
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.put("pw/a", b"x", Expect::Revision(r1 + 100)),
            Err(StoreError::Conflict { .. })
        ));
        let r2 = s.put("pw/a", b"2", Expect::Revision(r1)).expect("update");
        assert!(r2 > r1);
        let e = s.get("pw/a").expect("get").expect("present");
        assert_eq!((e.value.as_slice(), e.mod_revision), (&b"2"[..], r2));
        assert!(matches!(
            s.delete("pw/a", r1),
            Err(StoreError::Conflict { .. })
        ));
        s.delete("pw/a", r2).expect("delete");
        assert_eq!(s.get("pw/a").expect("get"), None);
        assert!(matches!(
            s.put("pw/a", b"3", Expect::Revision(r2)),
            Err(StoreError::Conflict { .. })
        ));
    });
}

#[test]
fn list_is_by_prefix_with_a_consistent_revision() {
    both(|s| {
        for k in ["pw/blocks/1", "pw/blocks/2", "pw/nodes/a", "pw/blocksX"] {
            s.put(k, k.as_bytes(), Expect::Absent).expect("put");
        }
        let snap = s.list("pw/blocks/").expect("list");
        let keys: Vec<&str> = snap.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["pw/blocks/1", "pw/blocks/2"]);
        assert!(snap.entries.iter().all(|e| e.mod_revision <= snap.revision));
        // `_` and `%` are not wildcards.
        s.put("pw/a_b", b"1", Expect::Absent).expect("put");
        s.put("pw/axb", b"1", Expect::Absent).expect("put");
        assert_eq!(s.list("pw/a_").expect("list").entries.len(), 1);
    });
}

#[test]
fn list_and_watch_match_the_prefix_exactly_and_case_sensitively() {
    both(|s| {
        for k in ["pw/Nodes/a", "pw/nodes/b", "pw/nodez", "pw/node\u{10FFFF}"] {
            s.put(k, k.as_bytes(), Expect::Absent).expect("put");
        }
        let keys = |p: &str| -> Vec<String> {
            s.list(p)
                .expect("list")
                .entries
                .into_iter()
                .map(|e| e.key)
                .collect()
        };
        assert_eq!(keys("pw/nodes/"), vec!["pw/nodes/b"]);
        assert_eq!(keys("pw/Nodes/"), vec!["pw/Nodes/a"]);
        assert_eq!(keys("pw/node\u{10FFFF}"), vec!["pw/node\u{10FFFF}"]);
        assert_eq!(keys("").len(), 4);
        let rev = s.list("pw/").expect("list").revision;
        let rx = s.watch("pw/Nodes/", rev).expect("watch");
        s.put("pw/nodes/c", b"1", Expect::Absent).expect("put");
        s.put("pw/Nodes/d", b"1", Expect::Absent).expect("put");
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(Event::Put(e))) => assert_eq!(e.key, "pw/Nodes/d"),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn commit_applies_every_write_or_none() {
    both(|s| {
        let ra = s.put("pw/t/a", b"1", Expect::Absent).expect("put");
        s.put("pw/t/gone", b"1", Expect::Absent).expect("put");
        // One expectation fails: nothing is written, the conflict names it.
        let err = s
            .commit(&[
                Write::put("pw/t/a", b"2".to_vec(), Expect::Revision(ra)),
                Write::put("pw/t/b", b"2".to_vec(), Expect::Revision(ra)),
                Write::delete("pw/t/gone", Expect::Any),
            ])
            .expect_err("b does not exist");
        assert!(
            matches!(&err, StoreError::Conflict { key } if key == "pw/t/b"),
            "{err:?}"
        );
        assert_eq!(s.get("pw/t/a").expect("get").expect("a").value, b"1");
        assert!(s.get("pw/t/gone").expect("get").is_some());
        let rev = s.list("pw/").expect("list").revision;
        let rx = s.watch("pw/t/", rev).expect("watch");
        // All hold: every write lands, unconditional ones included.
        let last = s
            .commit(&[
                Write::put("pw/t/a", b"2".to_vec(), Expect::Revision(ra)),
                Write::put("pw/t/b", b"2".to_vec(), Expect::Absent),
                Write::delete("pw/t/gone", Expect::Any),
                Write::delete("pw/t/never", Expect::Any),
            ])
            .expect("commit");
        let a = s.get("pw/t/a").expect("get").expect("a");
        assert_eq!(a.value, b"2");
        assert!(a.mod_revision <= last);
        assert!(s.get("pw/t/b").expect("get").expect("b").mod_revision <= last);
        assert!(s.get("pw/t/gone").expect("get").is_none());
        let mut keys = Vec::new();
        while keys.len() < 3 {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(Event::Put(e))) => keys.push(e.key),
                Ok(Ok(Event::Delete { key, .. })) => keys.push(key),
                Ok(Ok(Event::Progress(_))) => {}
                other => panic!("{other:?}"),
            }
        }
        keys.sort();
        assert_eq!(keys, vec!["pw/t/a", "pw/t/b", "pw/t/gone"]);
        // What neither backend could apply atomically is refused up front.
        for bad in [
            vec![],
            vec![
                Write::delete("pw/t/a", Expect::Any),
                Write::delete("pw/t/a", Expect::Any),
            ],
            (0..65)
                .map(|i| Write::delete(format!("pw/t/{i}"), Expect::Any))
                .collect(),
        ] {
            assert!(matches!(s.commit(&bad), Err(StoreError::Backend(_))));
        }
    });
}

#[test]
fn watch_delivers_every_change_after_a_revision_in_order() {
    both(|s| {
        s.put("pw/w/old", b"0", Expect::Absent).expect("put");
        let snap = s.list("pw/w/").expect("list");
        let rx = s.watch("pw/w/", snap.revision).expect("watch");
        let r1 = s.put("pw/w/x", b"1", Expect::Absent).expect("put");
        s.put("pw/other", b"1", Expect::Absent).expect("put");
        let r2 = s.put("pw/w/x", b"2", Expect::Revision(r1)).expect("put");
        s.delete("pw/w/x", r2).expect("delete");
        let mut got = Vec::new();
        while got.len() < 3 {
            let ev = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("event in time")
                .expect("no error");
            got.push(ev);
        }
        assert!(matches!(&got[0], Event::Put(e) if e.key == "pw/w/x" && e.value == b"1"));
        assert!(matches!(&got[1], Event::Put(e) if e.value == b"2" && e.mod_revision == r2));
        assert!(matches!(&got[2], Event::Delete { key, .. } if key == "pw/w/x"));
        assert!(got.windows(2).all(|w| w[0].revision() < w[1].revision()));
    });
}

#[test]
fn concurrent_writers_never_lose_an_update() {
    both(|s| {
        s.put("pw/counter", b"0", Expect::Absent).expect("init");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        loop {
                            let e = s.get("pw/counter").expect("get").expect("present");
                            let n: u64 = String::from_utf8_lossy(&e.value).parse().expect("number");
                            match s.put(
                                "pw/counter",
                                (n + 1).to_string().as_bytes(),
                                Expect::Revision(e.mod_revision),
                            ) {
                                Ok(_) => break,
                                Err(StoreError::Conflict { .. }) => continue,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(
            s.get("pw/counter").expect("get").expect("present").value,
            b"200"
        );
    });
}

#[test]
fn sqlite_is_shared_between_openers_of_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = SqliteStore::open(&dir.path().join("s.db")).expect("a");
    let b = SqliteStore::open(&dir.path().join("s.db")).expect("b");
    let r = a.put("k", b"v", Expect::Absent).expect("put");
    assert_eq!(b.get("k").expect("get").map(|e| e.mod_revision), Some(r));
    assert!(matches!(
        b.put("k", b"w", Expect::Absent),
        Err(StoreError::Conflict { .. })
    ));
}

#[test]
fn an_unreachable_store_is_unavailable_and_recovers() {
    // SQLite: the file's directory disappears.
    let (dir, s) = sqlite();
    s.put("k", b"v", Expect::Absent).expect("put");
    drop(dir);
    assert!(matches!(
        s.put("k2", b"v", Expect::Absent),
        Err(StoreError::Unavailable(_))
    ));

    // etcd: nothing listening.
    let t = Instant::now();
    let dead = EtcdStore::connect(&[format!("http://127.0.0.1:{}", free_port())]);
    assert!(matches!(dead, Err(StoreError::Unavailable(_))), "{dead:?}");
    assert!(t.elapsed() < Duration::from_secs(10));

    // etcd: the server goes away, then comes back with its data.
    let etcd = Etcd::start();
    let s = EtcdStore::connect(&etcd.endpoint()).expect("connect");
    let r = s.put("k", b"v", Expect::Absent).expect("put");
    let (data, cport, pport) = etcd.stop();
    assert!(matches!(
        s.put("k2", b"v", Expect::Absent),
        Err(StoreError::Unavailable(_))
    ));
    let _etcd = Etcd::start_in(data, cport, pport);
    let deadline = Instant::now() + Duration::from_secs(20);
    let back = loop {
        match s.get("k") {
            Ok(v) => break v,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(back.map(|e| e.mod_revision), Some(r));
}
