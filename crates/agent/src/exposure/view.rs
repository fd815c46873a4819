//! The cluster as the datastore says it, kept by key: namespaces, pods,
//! endpoints, policies and node addresses. Every record is decoded and
//! validated (a record is input like any other); one that does not decode
//! is left out and reported. A policy record that does not decode fails
//! closed: until it is fixed or deleted, its namespace is isolated in both
//! directions (leaving it out would open the pods it meant to protect).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podwire_cluster::records::decode;
use podwire_cluster::{keys, EndpointRecord, NamespaceRecord, NodeAddressesRecord, PodRecord};
use podwire_policy::{ClusterView, NetworkPolicy};

/// Every prefix the agent follows for posture and policy.
pub(crate) const FOLLOWED: [&str; 5] = [
    keys::NAMESPACES,
    keys::PODS,
    keys::ENDPOINTS,
    keys::POLICIES,
    keys::NODE_ADDRESSES,
];

#[derive(Debug, Default, Clone)]
pub(crate) struct View {
    namespaces: BTreeMap<String, NamespaceRecord>,
    pods: BTreeMap<String, PodRecord>,
    endpoints: BTreeMap<String, EndpointRecord>,
    policies: BTreeMap<String, NetworkPolicy>,
    /// Policy records that do not decode: key → the isolation standing in
    /// for them.
    broken: BTreeMap<String, NetworkPolicy>,
    nodes: BTreeMap<String, NodeAddressesRecord>,
}

/// What stands in for a policy record at `key` that does not decode: every
/// pod of its namespace isolated, ingress and egress. `None` when the key
/// does not even name a namespace (no policy can have been meant for one).
fn isolation_for(key: &str) -> Option<NetworkPolicy> {
    let rest = key.strip_prefix(keys::POLICIES)?;
    let (ns, _) = rest.split_once('/')?;
    podwire_cluster::names::dns1123_label("namespace", ns).ok()?;
    let doc = format!(
        "{{\"apiVersion\":\"networking.k8s.io/v1\",\"kind\":\"NetworkPolicy\",\
         \"metadata\":{{\"namespace\":\"{ns}\",\"name\":\"unreadable-policy-record\"}},\
         \"spec\":{{\"podSelector\":{{}},\"policyTypes\":[\"Ingress\",\"Egress\"]}}}}"
    );
    podwire_policy::parse_documents(&doc)
        .ok()?
        .into_iter()
        .next()
}

/// A record that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    pub key: String,
    pub reason: String,
}

impl View {
    pub fn clear(&mut self) {
        *self = View::default();
    }

    /// Applies one key's new value (`None`: deleted). `Ok(false)`: the view
    /// already held exactly this (the watch's echo of the agent's own
    /// endpoint write or delete, or a rewrite of the same record), so
    /// nothing needs compiling again. A rejected record has changed the
    /// view (the old one is gone, a bad policy isolates its namespace).
    pub fn update(&mut self, key: &str, value: Option<&[u8]>) -> Result<bool, Rejected> {
        let reject = |reason: String| Rejected {
            key: key.to_string(),
            reason,
        };
        macro_rules! put {
            ($map:expr, $decode:expr) => {{
                match value {
                    None => Ok($map.remove(key).is_some()),
                    Some(v) => match $decode(v) {
                        Ok(rec) if $map.get(key) == Some(&rec) => Ok(false),
                        Ok(rec) => {
                            $map.insert(key.to_string(), rec);
                            Ok(true)
                        }
                        Err(e) => {
                            $map.remove(key);
                            Err(reject(e.to_string()))
                        }
                    },
                }
            }};
        }
        if key.starts_with(keys::NAMESPACES) {
            put!(self.namespaces, |v| decode(v, NamespaceRecord::validate))
        } else if key.starts_with(keys::PODS) {
            put!(self.pods, |v| decode(v, PodRecord::validate))
        } else if key.starts_with(keys::ENDPOINTS) {
            put!(self.endpoints, |v| {
                let e: EndpointRecord = decode(v, EndpointRecord::validate)?;
                // The key is where the record claims to be; anything else is
                // a forgery or a bug, and must not move an address.
                if keys::endpoint(&e) != key {
                    return Err(podwire_cluster::RecordError::new(
                        "record",
                        format!("an endpoint of {} stored under another key", e.node),
                    ));
                }
                Ok(e)
            })
        } else if key.starts_with(keys::POLICIES) {
            let was_broken = self.broken.remove(key).is_some();
            let Some(v) = value else {
                return Ok(self.policies.remove(key).is_some() || was_broken);
            };
            match NetworkPolicy::from_record(v) {
                Ok(p) if !was_broken && self.policies.get(key) == Some(&p) => Ok(false),
                Ok(p) => {
                    self.policies.insert(key.to_string(), p);
                    Ok(true)
                }
                Err(e) => {
                    self.policies.remove(key);
                    if let Some(iso) = isolation_for(key) {
                        self.broken.insert(key.to_string(), iso);
                    }
                    Err(reject(e.to_string()))
                }
            }
        } else if key.starts_with(keys::NODE_ADDRESSES) {
            put!(self.nodes, |v| decode(v, NodeAddressesRecord::validate))
        } else {
            Ok(false)
        }
    }

    pub fn put_endpoint(&mut self, e: EndpointRecord) {
        self.endpoints.insert(keys::endpoint(&e), e);
    }

    pub fn remove_endpoint(&mut self, key: &str) -> Option<EndpointRecord> {
        self.endpoints.remove(key)
    }

    pub fn endpoints_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a EndpointRecord> {
        self.endpoints.values().filter(move |e| e.node == node)
    }

    /// The cluster's addresses for the posture: every node's and every
    /// pod's, plus `extra` (the allow-list and this node's own).
    pub fn cluster_nets(&self, extra: &[Ipv4Net]) -> Vec<Ipv4Net> {
        let mut v: Vec<Ipv4Net> = extra.to_vec();
        let host = |ip: Ipv4Addr| Ipv4Net::from(ip);
        v.extend(self.endpoints.values().map(|e| host(e.ip)));
        v.extend(
            self.nodes
                .values()
                .flat_map(|n| n.addresses.iter().copied().map(host)),
        );
        v.sort();
        v.dedup();
        v
    }

    /// What podwire-policy decides from; `own` are this node's addresses
    /// (known before its record is back from the datastore).
    pub fn cluster_view(&self, node: &str, own: &[Ipv4Addr]) -> ClusterView {
        let mut node_addresses: BTreeMap<String, Vec<Ipv4Addr>> = self
            .nodes
            .values()
            .map(|n| (n.node.clone(), n.addresses.clone()))
            .collect();
        node_addresses.insert(node.to_string(), own.to_vec());
        ClusterView {
            namespaces: self.namespaces.values().cloned().collect(),
            pods: self.pods.values().cloned().collect(),
            endpoints: self.endpoints.values().cloned().collect(),
            policies: self
                .policies
                .values()
                .chain(self.broken.values())
                .cloned()
                .collect(),
            node_addresses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(node: &str, c: &str, ip: [u8; 4]) -> EndpointRecord {
        EndpointRecord {
            node: node.into(),
            container_id: c.into(),
            ifname: "eth0".into(),
            ip: Ipv4Addr::from(ip),
            pod: None,
        }
    }

    #[test]
    fn records_come_and_go_by_key_and_bad_ones_are_left_out() {
        let mut v = View::default();
        let e = endpoint("n1", "c1", [10, 0, 0, 5]);
        let key = keys::endpoint(&e);
        let bytes = serde_json::to_vec(&e).expect("json");
        v.update(&key, Some(&bytes)).expect("valid");
        let n = NodeAddressesRecord {
            node: "n2".into(),
            mode: "vpc".into(),
            addresses: vec![Ipv4Addr::new(10, 0, 1, 9)],
            ..NodeAddressesRecord::default()
        };
        let nk = keys::node_addresses("n2");
        v.update(&nk, Some(&serde_json::to_vec(&n).expect("json")))
            .expect("valid");
        let allow: Ipv4Net = "192.0.2.0/24".parse().expect("net");
        let nets = v.cluster_nets(&[allow]);
        for want in ["10.0.0.5/32", "10.0.1.9/32", "192.0.2.0/24"] {
            assert!(
                nets.contains(&want.parse().expect("net")),
                "{want}: {nets:?}"
            );
        }
        v.update(&key, None).expect("delete");
        assert!(!v
            .cluster_nets(&[])
            .contains(&"10.0.0.5/32".parse().expect("net")));

        // Junk, and a record under another endpoint's key: refused, and the
        // key holds nothing afterwards.
        v.update(&key, Some(&bytes)).expect("valid");
        let r = v.update(&key, Some(b"{\"node\":1}")).expect_err("junk");
        assert_eq!(r.key, key);
        assert!(v.cluster_nets(&[]).len() == 1, "only the node is left");
        let other = keys::endpoint_of("n1", "c2", "eth0");
        assert!(v.update(&other, Some(&bytes)).is_err());
    }

    #[test]
    fn an_unreadable_policy_record_isolates_its_namespace_until_fixed() {
        let mut v = View::default();
        let key = keys::policy("x", "web");
        assert!(v.update(&key, Some(b"{\"kind\":")).is_err());
        let cv = v.cluster_view("n1", &[]);
        assert_eq!(cv.policies.len(), 1, "{:?}", cv.policies);
        let p = &cv.policies[0];
        assert_eq!(p.namespace, "x");
        assert!(p.applies_to(podwire_policy::PolicyType::Ingress));
        assert!(p.applies_to(podwire_policy::PolicyType::Egress));
        assert!(p.ingress.is_empty() && p.egress.is_empty());
        // Deleted (or replaced by a good record): the isolation goes.
        v.update(&key, None).expect("delete");
        assert!(v.cluster_view("n1", &[]).policies.is_empty());
    }

    #[test]
    fn the_policy_view_always_knows_this_node_s_addresses() {
        let v = View::default();
        let own = [Ipv4Addr::new(10, 0, 0, 10)];
        let cv = v.cluster_view("n1", &own);
        assert_eq!(cv.node_addresses.get("n1"), Some(&own.to_vec()));
    }

    /// The watch's echo of this agent's own endpoint write or delete, or
    /// the same record written again, changes nothing (no second compile
    /// per ADD); anything else is a change.
    #[test]
    fn an_update_says_whether_it_changed_the_view() {
        let e = EndpointRecord {
            node: "n1".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            ip: Ipv4Addr::new(10, 0, 0, 5),
            pod: None,
        };
        let key = keys::endpoint(&e);
        let bytes = serde_json::to_vec(&e).expect("json");
        let mut v = View::default();
        assert_eq!(
            v.update(&key, None),
            Ok(false),
            "a delete of what is not there"
        );
        v.put_endpoint(e.clone());
        assert_eq!(
            v.update(&key, Some(&bytes)),
            Ok(false),
            "the echo of the ADD"
        );
        let moved = EndpointRecord {
            ip: Ipv4Addr::new(10, 0, 0, 6),
            ..e
        };
        let moved = serde_json::to_vec(&moved).expect("json");
        assert_eq!(v.update(&key, Some(&moved)), Ok(true), "another address");
        assert!(v.update(&key, Some(b"not json")).is_err(), "garbage");
        assert_eq!(
            v.update(&key, None),
            Ok(false),
            "the garbage took the old one out"
        );
        let ns = NamespaceRecord::new("x", Default::default()).expect("ns");
        let ns_key = keys::namespace("x");
        let ns_bytes = serde_json::to_vec(&ns).expect("json");
        assert_eq!(v.update(&ns_key, Some(&ns_bytes)), Ok(true));
        assert_eq!(
            v.update(&ns_key, Some(&ns_bytes)),
            Ok(false),
            "rewritten the same"
        );
        assert_eq!(v.update(&ns_key, None), Ok(true));
        let pk = "/podwire/policies/x/p";
        let doc = br#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"namespace":"x","name":"p"},"spec":{"podSelector":{}}}"#;
        let pol = podwire_policy::parse_documents(std::str::from_utf8(doc).expect("utf8"))
            .expect("policy")
            .remove(0)
            .to_record();
        assert!(v.update(pk, Some(b"{")).is_err(), "broken: isolates");
        assert_eq!(v.update(pk, Some(&pol)), Ok(true), "fixed: a change");
        assert_eq!(v.update(pk, Some(&pol)), Ok(false));
    }
}
