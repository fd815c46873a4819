//! What the cluster knows, as the records say it, and the look-ups that
//! evaluation and compilation share (one place decides who a pod is).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use podwire_cluster::records::{Labels, NAMESPACE_NAME_LABEL};
use podwire_cluster::{EndpointRecord, NamespaceRecord, PodRecord, PodRef, Protocol};

use crate::model::{IpBlock, PolicyPeer, PolicyPort, PortRef};
use crate::validate::cidr;
use crate::NetworkPolicy;

/// The records a decision is made from. Pods without a [`PodRecord`] have
/// labels `{}` in their namespace; namespaces without a record have only
/// `kubernetes.io/metadata.name`; endpoints without `pod` (no Kubernetes
/// identity) are selected by no policy and match only ipBlock peers.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub namespaces: Vec<NamespaceRecord>,
    pub pods: Vec<PodRecord>,
    pub endpoints: Vec<EndpointRecord>,
    pub policies: Vec<NetworkPolicy>,
    /// Each node's own addresses, by node name. Traffic between a pod and
    /// its own node is not subject to policy (kubelet probes; Kubernetes
    /// documents this), so both [`crate::evaluate`] and the node's rules
    /// need to know them.
    pub node_addresses: BTreeMap<String, Vec<Ipv4Addr>>,
}

/// A pod as policies see it.
#[derive(Debug, Clone)]
pub(crate) struct PodInfo {
    pub r: PodRef,
    pub labels: Labels,
    pub ports: Vec<podwire_cluster::ContainerPort>,
    /// (address, node) of each attachment.
    pub addrs: Vec<(Ipv4Addr, String)>,
}

impl PodInfo {
    pub fn named_port(&self, name: &str, proto: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == proto)
            .map(|p| p.port)
    }
}

/// One end of a connection: an address, a pod, or both.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Party<'a> {
    pub ip: Option<Ipv4Addr>,
    pub pod: Option<&'a PodInfo>,
    /// The node the address is attached on (pods only).
    pub node: Option<&'a str>,
}

#[derive(Debug)]
pub(crate) struct Index<'a> {
    pub view: &'a ClusterView,
    pub ns_labels: HashMap<String, Labels>,
    pub pods: Vec<PodInfo>,
    pub by_ref: HashMap<PodRef, usize>,
    /// Namespace → its pods (indexes into `pods`).
    pub by_ns: HashMap<String, Vec<usize>>,
    /// Endpoint address → (pod index if it has an identity, node).
    pub by_ip: HashMap<Ipv4Addr, (Option<usize>, &'a str)>,
}

impl<'a> Index<'a> {
    pub fn new(view: &'a ClusterView) -> Index<'a> {
        let mut ns_labels: HashMap<String, Labels> = view
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), n.labels.clone()))
            .collect();
        let mut pods: Vec<PodInfo> = Vec::new();
        let mut by_ref: HashMap<PodRef, usize> = HashMap::new();
        for p in &view.pods {
            let r = p.pod_ref();
            if by_ref.contains_key(&r) {
                continue; // records are keyed by name: a duplicate is a second copy
            }
            by_ref.insert(r.clone(), pods.len());
            pods.push(PodInfo {
                r,
                labels: p.labels.clone(),
                ports: p.ports.clone(),
                addrs: Vec::new(),
            });
        }
        let mut by_ip = HashMap::new();
        for e in &view.endpoints {
            let idx = e.pod.as_ref().map(|r| {
                *by_ref.entry(r.clone()).or_insert_with(|| {
                    pods.push(PodInfo {
                        r: r.clone(),
                        labels: Labels::new(),
                        ports: Vec::new(),
                        addrs: Vec::new(),
                    });
                    pods.len() - 1
                })
            });
            if let Some(i) = idx {
                if let Some(p) = pods.get_mut(i) {
                    p.addrs.push((e.ip, e.node.clone()));
                }
            }
            by_ip.entry(e.ip).or_insert((idx, e.node.as_str()));
        }
        let mut by_ns: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            by_ns.entry(p.r.namespace.clone()).or_default().push(i);
        }
        for p in &pods {
            ns_labels.entry(p.r.namespace.clone()).or_insert_with(|| {
                Labels::from([(NAMESPACE_NAME_LABEL.to_string(), p.r.namespace.clone())])
            });
        }
        Index {
            view,
            ns_labels,
            pods,
            by_ref,
            by_ns,
            by_ip,
        }
    }

    pub fn pod(&self, i: usize) -> Option<&PodInfo> {
        self.pods.get(i)
    }

    /// The party at an address: a pod when an endpoint with an identity has
    /// it, else just the address (a node, an external host, a pod without
    /// identity).
    pub fn party_at(&self, ip: Ipv4Addr) -> Party<'_> {
        match self.by_ip.get(&ip) {
            Some((Some(i), node)) => Party {
                ip: Some(ip),
                pod: self.pods.get(*i),
                node: Some(node),
            },
            Some((None, node)) => Party {
                ip: Some(ip),
                pod: None,
                node: Some(node),
            },
            None => Party {
                ip: Some(ip),
                pod: None,
                node: None,
            },
        }
    }

    /// Does `ip` belong to `node` itself?
    pub fn is_node_address(&self, node: &str, ip: Ipv4Addr) -> bool {
        self.view
            .node_addresses
            .get(node)
            .is_some_and(|a| a.contains(&ip))
    }

    /// Policies of `ns` that select `pod` and apply to `t`.
    pub fn selecting<'s>(
        &'s self,
        pod: &'s PodInfo,
        t: crate::PolicyType,
    ) -> impl Iterator<Item = &'a NetworkPolicy> + 's {
        self.view.policies.iter().filter(move |p| {
            p.namespace == pod.r.namespace && p.applies_to(t) && p.pod_selector.matches(&pod.labels)
        })
    }

    /// Every pod one selector peer of a rule of `policy` matches: the
    /// namespaces first, then the pods in them (the same decision as
    /// [`Index::peer_matches`], in bulk).
    pub fn selected_pods(&self, policy: &NetworkPolicy, peer: &PolicyPeer) -> Vec<&PodInfo> {
        if peer.ip_block.is_some() {
            return Vec::new();
        }
        let namespaces: Vec<&str> = match &peer.namespace_selector {
            None => vec![policy.namespace.as_str()],
            Some(sel) => self
                .ns_labels
                .iter()
                .filter(|(_, l)| sel.matches(l))
                .map(|(n, _)| n.as_str())
                .collect(),
        };
        let mut out = Vec::new();
        for ns in namespaces {
            for i in self.by_ns.get(ns).into_iter().flatten() {
                if let Some(pod) = self.pods.get(*i) {
                    if peer
                        .pod_selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&pod.labels))
                    {
                        out.push(pod);
                    }
                }
            }
        }
        out
    }

    /// Does one peer of a rule of `policy` match `party`?
    pub fn peer_matches(&self, policy: &NetworkPolicy, peer: &PolicyPeer, party: &Party) -> bool {
        if let Some(b) = &peer.ip_block {
            return party.ip.is_some_and(|ip| block_contains(b, ip));
        }
        let Some(pod) = party.pod else {
            return false;
        };
        let pod_ok = |sel: &crate::LabelSelector| sel.matches(&pod.labels);
        let ns_ok = |sel: &crate::LabelSelector| {
            self.ns_labels
                .get(&pod.r.namespace)
                .is_some_and(|l| sel.matches(l))
        };
        match (&peer.pod_selector, &peer.namespace_selector) {
            (Some(ps), None) => pod.r.namespace == policy.namespace && pod_ok(ps),
            (None, Some(ns)) => ns_ok(ns),
            (Some(ps), Some(ns)) => ns_ok(ns) && pod_ok(ps),
            (None, None) => false, // validation refuses an empty peer
        }
    }
}

/// Is `ip` inside the block and outside each of its exceptions?
pub(crate) fn block_contains(b: &IpBlock, ip: Ipv4Addr) -> bool {
    let in_v4 = |s: &str| match cidr(s) {
        Some(ipnet::IpNet::V4(n)) => n.trunc().contains(&ip),
        _ => false, // IPv6 blocks match no IPv4 address
    };
    in_v4(&b.cidr) && !b.except.iter().any(|e| in_v4(e))
}

/// Does a rule's port entry allow (`proto`, `port`) towards `dst` (whose
/// container ports name ports)?
pub(crate) fn port_matches(
    p: &PolicyPort,
    dst: Option<&PodInfo>,
    port: u16,
    proto: Protocol,
) -> bool {
    if p.protocol != proto {
        return false;
    }
    match &p.port {
        None => true,
        Some(PortRef::Number(n)) => (*n..=p.end_port.unwrap_or(*n)).contains(&port),
        Some(PortRef::Name(name)) => dst.and_then(|d| d.named_port(name, proto)) == Some(port),
    }
}
