//! The cluster as its datastore records it (any podwire datastore: the
//! lab's or a real cluster's): namespaces, pods, endpoints, policies and
//! node addresses, each decoded and validated like any input. A record that
//! does not decode is left out and reported, never guessed at.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use podwire_cluster::records::decode;
use podwire_cluster::{keys, EndpointRecord, NamespaceRecord, NodeAddressesRecord, PodRecord};
use podwire_policy::{ClusterView, NetworkPolicy};
use podwire_store::{Datastore, Revision};

use ipnet::Ipv4Net;

use crate::model::{ExternalPodAccess, Mode, NodeInfo};
use crate::AuditError;

/// What the records say, and what could not be read.
#[derive(Debug, Clone)]
pub struct Records {
    pub view: ClusterView,
    pub nodes: Vec<NodeInfo>,
    /// The mode the nodes published (`None`: no node record, or mixed).
    pub mode: Option<Mode>,
    /// The posture the nodes published.
    pub posture: PublishedPosture,
    /// `key: why` of every record left out.
    pub problems: Vec<String>,
    /// The store's revision before the first record was read: a later
    /// [`revision`] above it means the records changed since (a verify that
    /// probed meanwhile may report the change, not a wrong prediction).
    pub revision: Revision,
}

/// The store's revision now (compare with [`Records::revision`]).
pub fn revision(store: &dyn Datastore) -> Result<Revision, AuditError> {
    // Any list answers with the store-wide revision; namespaces are few.
    Ok(store
        .list(keys::NAMESPACES)
        .map_err(|e| AuditError::Store(format!("{}: {e}", keys::NAMESPACES)))?
        .revision)
}

fn list(store: &dyn Datastore, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, AuditError> {
    Ok(store
        .list(prefix)
        .map_err(|e| AuditError::Store(format!("{prefix}: {e}")))?
        .entries
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect())
}

/// What the agents enforce in place of a policy record at `key` that does
/// not decode: every pod of its namespace isolated, ingress and egress
/// (podwire-agent's `exposure::view`). `None` when the key names no
/// namespace.
fn isolation_for(key: &str) -> Option<NetworkPolicy> {
    let (ns, _) = key.strip_prefix(keys::POLICIES)?.split_once('/')?;
    podwire_cluster::names::dns1123_label("namespace", ns).ok()?;
    let doc = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": "unreadable-policy-record"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    });
    podwire_policy::parse_documents(&doc.to_string())
        .ok()?
        .into_iter()
        .next()
}

/// What the node records say of the agents' `--external-pod-access` and
/// `--external-allow-cidrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishedPosture {
    /// No record says (agents older than the field).
    Unstated,
    /// Every record that says agrees.
    Same {
        access: ExternalPodAccess,
        allow_cidrs: Vec<Ipv4Net>,
    },
    /// The nodes disagree: `node: access [cidrs]` for each.
    Mixed(Vec<String>),
}

fn published_posture(records: &[NodeAddressesRecord]) -> PublishedPosture {
    let stated: Vec<(&str, ExternalPodAccess, Vec<Ipv4Net>)> = records
        .iter()
        .filter_map(|r| {
            let access = r.external_pod_access?;
            let mut cidrs = r.external_allow_cidrs.clone().unwrap_or_default();
            cidrs.sort();
            cidrs.dedup();
            Some((r.node.as_str(), access, cidrs))
        })
        .collect();
    let Some((_, access, allow_cidrs)) = stated.first().cloned() else {
        return PublishedPosture::Unstated;
    };
    if stated
        .iter()
        .all(|(_, a, c)| *a == access && *c == allow_cidrs)
    {
        return PublishedPosture::Same {
            access,
            allow_cidrs,
        };
    }
    PublishedPosture::Mixed(
        stated
            .iter()
            .map(|(n, a, c)| format!("{n}: {a} {c:?}"))
            .collect(),
    )
}

/// Reads every record the audit needs.
pub fn load(store: &dyn Datastore) -> Result<Records, AuditError> {
    let start = revision(store)?;
    let mut problems = Vec::new();
    let mut view = ClusterView::default();
    for (k, v) in list(store, keys::NAMESPACES)? {
        match decode::<NamespaceRecord>(&v, NamespaceRecord::validate) {
            Ok(r) => view.namespaces.push(r),
            Err(e) => problems.push(format!("{k}: {e}")),
        }
    }
    for (k, v) in list(store, keys::PODS)? {
        match decode::<PodRecord>(&v, PodRecord::validate) {
            Ok(r) => view.pods.push(r),
            Err(e) => problems.push(format!("{k}: {e}")),
        }
    }
    for (k, v) in list(store, keys::ENDPOINTS)? {
        match decode::<EndpointRecord>(&v, EndpointRecord::validate) {
            Ok(r) => view.endpoints.push(r),
            Err(e) => problems.push(format!("{k}: {e}")),
        }
    }
    for (k, v) in list(store, keys::POLICIES)? {
        match NetworkPolicy::from_record(&v) {
            Ok(p) => view.policies.push(p),
            Err(e) => {
                // The agents fail closed on it: so does the prediction.
                view.policies.extend(isolation_for(&k));
                problems.push(format!(
                    "{k}: {e} (its namespace counted as isolated both ways, as the agents do)"
                ));
            }
        }
    }
    let mut modes = Vec::new();
    let mut published: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    let mut node_records: Vec<NodeAddressesRecord> = Vec::new();
    for (k, v) in list(store, keys::NODE_ADDRESSES)? {
        match decode::<NodeAddressesRecord>(&v, NodeAddressesRecord::validate) {
            Ok(r) => {
                modes.push(r.mode.clone());
                published.insert(r.node.clone(), r.addresses.clone());
                node_records.push(r);
            }
            Err(e) => problems.push(format!("{k}: {e}")),
        }
    }
    // Overlay nodes also have a record with their tunnel and underlay.
    let tunnels = match podwire_ipam::nodes::list(store) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("/podwire/nodes/: {e}"));
            Vec::new()
        }
    };
    let mut nodes = Vec::new();
    for (name, addresses) in &published {
        let overlay = tunnels.iter().find(|t| &t.name == name);
        // The agent says its primary; an older agent's record does not:
        // then the overlay's underlay, or (vpc: the addresses are sorted,
        // without EC2's word) the first address stands for it.
        let stated = node_records
            .iter()
            .find(|r| &r.node == name)
            .and_then(|r| r.primary);
        let primary = stated
            .or_else(|| overlay.map(|t| t.underlay_ip))
            .or_else(|| addresses.first().copied());
        let Some(primary) = primary else {
            problems.push(format!("{}{name}: no address", keys::NODE_ADDRESSES));
            continue;
        };
        nodes.push(NodeInfo {
            name: name.clone(),
            addresses: addresses.clone(),
            primary,
            tunnel: overlay.map(|t| t.tunnel_ip),
        });
    }
    view.node_addresses = published;
    modes.sort();
    modes.dedup();
    let mode = match modes.as_slice() {
        [m] => m.parse::<Mode>().ok(),
        _ => None,
    };
    Ok(Records {
        view,
        nodes,
        mode,
        posture: published_posture(&node_records),
        problems,
        revision: start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_store::{Expect, SqliteStore};

    #[test]
    fn records_load_and_bad_ones_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("d.db")).expect("open");
        let put = |k: &str, v: &str| {
            s.put(k, v.as_bytes(), Expect::Absent).expect("put");
        };
        put(
            "/podwire/namespaces/x",
            r#"{"name":"x","labels":{"kubernetes.io/metadata.name":"x"}}"#,
        );
        put(
            "/podwire/pods/x/a",
            r#"{"namespace":"x","name":"a","labels":{"pod":"a"},"ports":[{"name":"web","port":80}]}"#,
        );
        put(
            "/podwire/endpoints/node-1/c1/eth0",
            r#"{"node":"node-1","container_id":"c1","ifname":"eth0","ip":"10.0.1.20","pod":{"namespace":"x","name":"a"}}"#,
        );
        put(
            "/podwire/node-addresses/node-1",
            r#"{"node":"node-1","mode":"vpc","addresses":["10.0.1.10"]}"#,
        );
        put(
            "/podwire/pods/x/b",
            r#"{"namespace":"x","name":"b","colour":"red"}"#,
        );
        let r = load(&s).expect("load");
        assert_eq!(r.view.pods.len(), 1);
        assert_eq!(r.view.endpoints.len(), 1);
        assert_eq!(r.mode, Some(Mode::Vpc));
        assert_eq!(r.nodes.len(), 1);
        assert_eq!(r.nodes[0].primary, Ipv4Addr::new(10, 0, 1, 10));
        assert_eq!(
            r.posture,
            PublishedPosture::Unstated,
            "an older agent's record"
        );
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].starts_with("/podwire/pods/x/b"));
    }

    /// Records of agents that publish their primary and posture: the
    /// audit takes them as stated (no flags needed); nodes that disagree
    /// are reported as such, not averaged.
    #[test]
    fn stated_primaries_and_postures_are_taken_from_the_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("d.db")).expect("open");
        let put = |k: &str, v: &str| {
            s.put(k, v.as_bytes(), Expect::Absent).expect("put");
        };
        put(
            "/podwire/node-addresses/node-1",
            r#"{"node":"node-1","mode":"vpc","addresses":["10.0.1.9","10.0.1.10"],"primary":"10.0.1.10","external_pod_access":"allow","external_allow_cidrs":["192.0.2.0/24"]}"#,
        );
        put(
            "/podwire/node-addresses/node-2",
            r#"{"node":"node-2","mode":"vpc","addresses":["10.0.1.20"],"primary":"10.0.1.20","external_pod_access":"allow","external_allow_cidrs":["192.0.2.0/24"]}"#,
        );
        let r = load(&s).expect("load");
        assert_eq!(
            r.nodes[0].primary,
            Ipv4Addr::new(10, 0, 1, 10),
            "not the first"
        );
        assert_eq!(
            r.posture,
            PublishedPosture::Same {
                access: ExternalPodAccess::Allow,
                allow_cidrs: vec!["192.0.2.0/24".parse().expect("net")],
            }
        );
        put(
            "/podwire/node-addresses/node-3",
            r#"{"node":"node-3","mode":"vpc","addresses":["10.0.1.30"],"external_pod_access":"deny"}"#,
        );
        let r = load(&s).expect("load");
        assert!(
            matches!(&r.posture, PublishedPosture::Mixed(v) if v.len() == 3),
            "{:?}",
            r.posture
        );
    }

    #[test]
    fn a_change_after_the_load_moves_the_revision_and_a_quiet_store_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("d.db")).expect("open");
        s.put(
            "/podwire/namespaces/x",
            br#"{"name":"x","labels":{"kubernetes.io/metadata.name":"x"}}"#,
            Expect::Absent,
        )
        .expect("put");
        let r = load(&s).expect("load");
        assert_eq!(
            revision(&s).expect("revision"),
            r.revision,
            "nothing changed"
        );
        // `audit --verify` mid-change: a policy lands while the probes run.
        s.put(
            "/podwire/policies/x/deny",
            br#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny","namespace":"x"},"spec":{"podSelector":{}}}"#,
            Expect::Absent,
        )
        .expect("put");
        assert!(revision(&s).expect("revision") > r.revision);
    }

    #[test]
    fn an_unreadable_policy_record_isolates_its_namespace_as_the_agents_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("d.db")).expect("open");
        s.put("/podwire/policies/x/web", b"{\"kind\":", Expect::Absent)
            .expect("put");
        let r = load(&s).expect("load");
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(
            r.view.policies.len(),
            1,
            "the agents isolate x: so must the audit"
        );
        let p = &r.view.policies[0];
        assert_eq!(p.namespace, "x");
        assert!(p.applies_to(podwire_policy::PolicyType::Ingress));
        assert!(p.applies_to(podwire_policy::PolicyType::Egress));
        assert!(p.ingress.is_empty() && p.egress.is_empty());
    }
}
