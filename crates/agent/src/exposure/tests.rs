//! The watch → compile → apply loop and the ADD/DEL records, over a real
//! SQLite datastore in a temporary directory and a recording firewall.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podwire_cluster::{keys, EndpointRecord, NodeAddressesRecord};
use podwire_proto::{Allocation, AttachmentKey, Egress, ErrorKind, Request, Response};
use podwire_store::{Datastore, Expect, SqliteStore};

use super::backend::Enforced;
use super::firewall::fake::Recorder;
use super::{Exposure, Settings};
use crate::Backend;

fn store(dir: &tempfile::TempDir) -> Arc<dyn Datastore> {
    Arc::new(SqliteStore::open(&dir.path().join("ds.db")).expect("sqlite"))
}

fn exposure(store: Option<Arc<dyn Datastore>>, fw: &Arc<Recorder>) -> Arc<Exposure> {
    let x = Exposure::new(
        Settings {
            node: "node-1".into(),
            mode: podwire_cni::config::Mode::Vpc,
            allow: vec!["192.0.2.0/24".parse().expect("net")],
            access: podwire_cluster::ExternalPodAccess::Deny,
            primary: Some(Ipv4Addr::new(10, 0, 0, 10)),
        },
        store,
        Box::new(Arc::clone(fw)),
        Arc::new(crate::metrics::Metrics::new()),
    );
    x.set_own_addresses(vec![Ipv4Addr::new(10, 0, 0, 10)])
        .expect("own");
    Arc::new(x)
}

fn key(c: &str) -> AttachmentKey {
    AttachmentKey {
        network: "pw".into(),
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}

/// A mode's backend: hands out 10.0.1.N for container cN, and notes what
/// the datastore held for the endpoint whenever it releases one.
#[derive(Default)]
struct FakeMode {
    store: Option<Arc<dyn Datastore>>,
    released: Mutex<Vec<(String, bool)>>,
}

impl Backend for FakeMode {
    fn handle(&self, req: Request, _deadline: Instant) -> Response {
        match req {
            Request::Add(a) => {
                let n: u8 = a.key.container_id[1..].parse().expect("cN");
                Response::Allocated {
                    allocation: Allocation {
                        key: a.key,
                        ip: Ipv4Addr::new(10, 0, 1, n),
                        egress: Egress::Main,
                        pod_namespace: a.pod_namespace,
                        pod_name: a.pod_name,
                        mtu: None,
                    },
                }
            }
            Request::Del { key } => {
                let ek = keys::endpoint_of("node-1", &key.container_id, &key.ifname);
                let recorded = self
                    .store
                    .as_ref()
                    .map(|s| s.get(&ek).expect("get").is_some())
                    .unwrap_or(false);
                self.released
                    .lock()
                    .expect("lock")
                    .push((key.container_id.clone(), recorded));
                Response::Released {
                    allocations: Vec::new(),
                }
            }
            _ => Response::Found { allocation: None },
        }
    }

    fn state(&self) -> crate::introspect::NodeState {
        unimplemented!("not used")
    }
}

fn add(b: &Enforced<FakeMode>, c: &str, ns: &str, name: &str) -> Response {
    b.handle(
        Request::Add(podwire_proto::AddRequest {
            key: key(c),
            netns: "/run/netns/pwt".into(),
            pod_namespace: Some(ns.into()),
            pod_name: Some(name.into()),
        }),
        Instant::now() + Duration::from_secs(5),
    )
}

/// Whether the last applied policy knows `ip` as a local endpoint.
fn policy_knows(fw: &Recorder, ip: &str) -> bool {
    fw.last_policy().is_some_and(|p| {
        p.sets
            .iter()
            .any(|s| s.name == "np-local" && s.elements.iter().any(|e| e == ip))
    })
}

const DENY_X_A: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: deny-all}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

fn put_policy(store: &dyn Datastore, yaml: &str) {
    for p in podwire_policy::parse_documents(yaml).expect("policy") {
        store
            .put(
                &keys::policy(&p.namespace, &p.name),
                &p.to_record(),
                Expect::Absent,
            )
            .expect("put");
    }
}

/// `podwirectl audit --datastore` reads the posture and the primary address
/// from here: the node record carries what the agent enforces.
#[test]
fn the_node_record_says_the_primary_address_and_the_posture() {
    let dir = tempfile::tempdir().expect("dir");
    let s = store(&dir);
    let fw = Arc::new(Recorder::default());
    let _x = exposure(Some(Arc::clone(&s)), &fw);
    let e = s
        .get(&keys::node_addresses("node-1"))
        .expect("get")
        .expect("published");
    let r: NodeAddressesRecord =
        podwire_cluster::records::decode(&e.value, NodeAddressesRecord::validate).expect("valid");
    assert_eq!(r.addresses, vec![Ipv4Addr::new(10, 0, 0, 10)]);
    assert_eq!(r.primary, Some(Ipv4Addr::new(10, 0, 0, 10)));
    assert_eq!(
        r.external_pod_access,
        Some(podwire_cluster::ExternalPodAccess::Deny)
    );
    assert_eq!(
        r.external_allow_cidrs,
        Some(vec!["192.0.2.0/24".parse().expect("net")])
    );
}

#[test]
fn an_add_is_recorded_and_enforced_before_it_is_answered() {
    let dir = tempfile::tempdir().expect("dir");
    let s = store(&dir);
    let fw = Arc::new(Recorder::default());
    let x = exposure(Some(Arc::clone(&s)), &fw);
    x.reload().expect("reload");
    let b = Enforced {
        inner: Arc::new(FakeMode {
            store: Some(Arc::clone(&s)),
            ..FakeMode::default()
        }),
        exposure: Arc::clone(&x),
    };
    let r = add(&b, "c5", "x", "a");
    assert!(matches!(r, Response::Allocated { .. }), "{r:?}");
    // The record is in the datastore, with the pod's identity.
    let e = s
        .get(&keys::endpoint_of("node-1", "c5", "eth0"))
        .expect("get")
        .expect("endpoint record written at ADD");
    let rec: EndpointRecord = serde_json::from_slice(&e.value).expect("json");
    assert_eq!(rec.ip, Ipv4Addr::new(10, 0, 1, 5));
    assert_eq!(rec.pod.map(|p| p.to_string()).as_deref(), Some("x/a"));
    // And the kernel knew the pod before the answer.
    assert!(policy_knows(&fw, "10.0.1.5"), "{:?}", fw.last_policy());
    let nets = fw.last_nets().expect("nets");
    for want in ["10.0.1.5/32", "10.0.0.10/32", "192.0.2.0/24"] {
        assert!(
            nets.contains(&want.parse().expect("net")),
            "{want}: {nets:?}"
        );
    }

    // DEL: the record goes before the address is released.
    let r = b.handle(
        Request::Del { key: key("c5") },
        Instant::now() + Duration::from_secs(5),
    );
    assert!(matches!(r, Response::Released { .. }), "{r:?}");
    assert_eq!(
        *b.inner.released.lock().expect("lock"),
        vec![("c5".to_string(), false)],
        "the endpoint record must be gone when the address is released"
    );
    assert!(!policy_knows(&fw, "10.0.1.5"));
}

#[test]
fn an_add_whose_rules_cannot_be_installed_is_undone() {
    let dir = tempfile::tempdir().expect("dir");
    let s = store(&dir);
    let fw = Arc::new(Recorder::default());
    let x = exposure(Some(Arc::clone(&s)), &fw);
    x.reload().expect("reload");
    let b = Enforced {
        inner: Arc::new(FakeMode::default()),
        exposure: x,
    };
    fw.fail.store(true, Ordering::SeqCst);
    let r = add(&b, "c6", "x", "a");
    match r {
        Response::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::TryAgain);
            assert!(message.contains("10.0.1.6"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(b.inner.released.lock().expect("lock").len(), 1, "released");
    assert!(
        s.get(&keys::endpoint_of("node-1", "c6", "eth0"))
            .expect("get")
            .is_none(),
        "no record of a pod that does not exist"
    );
}

#[test]
fn policies_and_peers_follow_the_datastore_within_a_second() {
    let dir = tempfile::tempdir().expect("dir");
    let s = store(&dir);
    let fw = Arc::new(Recorder::default());
    let x = exposure(Some(Arc::clone(&s)), &fw);
    x.reload().expect("reload");
    let b = Enforced {
        inner: Arc::new(FakeMode::default()),
        exposure: Arc::clone(&x),
    };
    assert!(matches!(
        add(&b, "c7", "x", "a"),
        Response::Allocated { .. }
    ));
    let before = fw.last_policy().expect("policy");
    {
        let x = Arc::clone(&x);
        crate::spawn("pwt-follow", move || x.follow_forever()).expect("spawn");
    }
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !f() {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{what} not applied within a second"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // A policy isolating x/a: its ingress chain appears.
    put_policy(s.as_ref(), DENY_X_A);
    wait_for("the policy", &|| {
        fw.last_policy()
            .is_some_and(|p| p != before && !p.chains.is_empty())
    });
    // Another node's address and a pod on it join the cluster set.
    let n = NodeAddressesRecord {
        node: "node-2".into(),
        mode: "vpc".into(),
        addresses: vec![Ipv4Addr::new(10, 0, 0, 20)],
        ..NodeAddressesRecord::default()
    };
    s.put(
        &keys::node_addresses("node-2"),
        &serde_json::to_vec(&n).expect("json"),
        Expect::Absent,
    )
    .expect("put");
    let e = EndpointRecord {
        node: "node-2".into(),
        container_id: "r1".into(),
        ifname: "eth0".into(),
        ip: Ipv4Addr::new(10, 0, 2, 1),
        pod: None,
    };
    s.put(
        &keys::endpoint(&e),
        &serde_json::to_vec(&e).expect("json"),
        Expect::Absent,
    )
    .expect("put");
    let has = |n: &str| {
        fw.last_nets()
            .is_some_and(|v| v.contains(&n.parse().expect("net")))
    };
    wait_for("the peer's addresses", &|| {
        has("10.0.0.20/32") && has("10.0.2.1/32")
    });
    // A record that does not decode is left out; the rest still follows.
    s.put(
        &keys::policy("x", "junk"),
        b"{\"kind\":\"NetworkPolicy\"",
        Expect::Absent,
    )
    .expect("put");
    let gone = s
        .get(&keys::endpoint(&e))
        .expect("get")
        .expect("entry")
        .mod_revision;
    s.delete(&keys::endpoint(&e), gone).expect("delete");
    wait_for("the peer pod's removal", &|| !has("10.0.2.1/32"));
    assert!(has("10.0.0.20/32"));
}

#[test]
fn a_restart_rebuilds_everything_before_its_first_rules() {
    let dir = tempfile::tempdir().expect("dir");
    let s = store(&dir);
    put_policy(s.as_ref(), DENY_X_A);
    let fw = Arc::new(Recorder::default());
    let first = exposure(Some(Arc::clone(&s)), &fw);
    first.reload().expect("reload");
    let b = Enforced {
        inner: Arc::new(FakeMode::default()),
        exposure: first,
    };
    assert!(matches!(
        add(&b, "c8", "x", "a"),
        Response::Allocated { .. }
    ));
    let applied = fw.last_policy().expect("policy");
    assert!(!applied.chains.is_empty(), "x/a is isolated: {applied:?}");

    // A new agent over the same datastore: its first ruleset (applied with
    // the node's rules, before any ADD) is the same, never an open one.
    let fw2 = Arc::new(Recorder::default());
    let second = exposure(Some(Arc::clone(&s)), &fw2);
    second.reload().expect("reload");
    let live = [Allocation {
        key: key("c8"),
        ip: Ipv4Addr::new(10, 0, 1, 8),
        egress: Egress::Main,
        pod_namespace: Some("x".into()),
        pod_name: Some("a".into()),
        mtu: None,
    }];
    second.adopt(&live).expect("adopt");
    assert_eq!(second.desired_now().policy, Some(applied));
}

#[test]
fn adopt_records_live_pods_and_drops_records_of_pods_gone() {
    let dir = tempfile::tempdir().expect("dir");
    let s = store(&dir);
    let stale = EndpointRecord {
        node: "node-1".into(),
        container_id: "old".into(),
        ifname: "eth0".into(),
        ip: Ipv4Addr::new(10, 0, 1, 99),
        pod: None,
    };
    s.put(
        &keys::endpoint(&stale),
        &serde_json::to_vec(&stale).expect("json"),
        Expect::Absent,
    )
    .expect("put");
    let fw = Arc::new(Recorder::default());
    let x = exposure(Some(Arc::clone(&s)), &fw);
    x.reload().expect("reload");
    let live = [Allocation {
        key: key("c3"),
        ip: Ipv4Addr::new(10, 0, 1, 3),
        egress: Egress::Main,
        pod_namespace: None,
        pod_name: None,
        mtu: None,
    }];
    x.adopt(&live).expect("adopt");
    assert!(s.get(&keys::endpoint(&stale)).expect("get").is_none());
    assert!(s
        .get(&keys::endpoint_of("node-1", "c3", "eth0"))
        .expect("get")
        .is_some());
    let nets = x.desired_now().cluster_nets.expect("nets");
    assert!(nets.contains(&"10.0.1.3/32".parse().expect("net")));
    assert!(!nets.contains(&"10.0.1.99/32".parse().expect("net")));
}

#[test]
fn without_a_datastore_the_policy_chain_is_left_alone() {
    let fw = Arc::new(Recorder::default());
    let x = exposure(None, &fw);
    assert_eq!(x.desired_now().policy, None);
    let b = Enforced {
        inner: Arc::new(FakeMode::default()),
        exposure: x,
    };
    assert!(matches!(
        add(&b, "c4", "x", "a"),
        Response::Allocated { .. }
    ));
    assert_eq!(fw.last_policy(), None);
    assert!(fw
        .last_nets()
        .is_some_and(|n| n.contains(&"10.0.1.4/32".parse().expect("net"))));
}
