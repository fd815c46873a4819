//! The upstream NetworkPolicy e2e model (tests/netpol/README.md): namespaces
//! x, y, z (labels kubernetes.io/metadata.name and ns), pods a, b, c in each
//! (label pod=<name>, TCP ports serve-80-tcp/80 and serve-81-tcp/81), spread
//! over three nodes, with made-up 10.x addresses.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use podwire_cluster::records::Labels;
use podwire_cluster::{
    ContainerPort, EndpointRecord, NamespaceRecord, PodRecord, PodRef, Protocol,
};
use podwire_policy::{ClusterView, NodeRules, PeerMatch, PortMatch};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

pub fn all_pods() -> Vec<PodRef> {
    let mut v = Vec::new();
    for ns in NAMESPACES {
        for p in PODS {
            v.push(PodRef {
                namespace: ns.into(),
                name: p.into(),
            });
        }
    }
    v
}

/// `x/a` → 10.1.1.10, `y/b` → 10.1.2.11 ...
pub fn ip_of(r: &PodRef) -> Ipv4Addr {
    let ns = NAMESPACES
        .iter()
        .position(|n| *n == r.namespace)
        .unwrap_or(0);
    let p = PODS.iter().position(|n| *n == r.name).unwrap_or(0);
    let small = |i: usize| u8::try_from(i).expect("a few pods");
    Ipv4Addr::new(10, 1, 1 + small(ns), 10 + small(p))
}

/// Pods spread over the nodes so that every node has one of each namespace.
pub fn node_of(r: &PodRef) -> &'static str {
    let ns = NAMESPACES
        .iter()
        .position(|n| *n == r.namespace)
        .unwrap_or(0);
    let p = PODS.iter().position(|n| *n == r.name).unwrap_or(0);
    NODES[(ns + p) % 3]
}

pub fn node_ip(node: &str) -> Ipv4Addr {
    let i = NODES.iter().position(|n| *n == node).unwrap_or(0);
    Ipv4Addr::new(192, 168, 0, 10 + u8::try_from(i).expect("three nodes"))
}

/// The 9-pod view, with `extra` labels on top (the case's extraLabels).
pub fn view(extra: &serde_json::Value) -> ClusterView {
    let extra_of = |kind: &str, key: &str| -> Labels {
        extra
            .get(kind)
            .and_then(|m| m.get(key))
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut v = ClusterView::default();
    for ns in NAMESPACES {
        let mut labels = Labels::from([("ns".to_string(), ns.to_string())]);
        labels.extend(extra_of("namespaces", ns));
        v.namespaces
            .push(NamespaceRecord::new(ns, labels).expect("valid namespace"));
    }
    for r in all_pods() {
        let mut labels = Labels::from([("pod".to_string(), r.name.clone())]);
        labels.extend(extra_of("pods", &r.to_string()));
        v.pods.push(PodRecord {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            labels,
            ports: [80u16, 81]
                .iter()
                .map(|p| ContainerPort {
                    name: Some(format!("serve-{p}-tcp")),
                    port: *p,
                    protocol: Protocol::TCP,
                })
                .collect(),
        });
        v.endpoints.push(EndpointRecord {
            node: node_of(&r).into(),
            container_id: format!("c-{}-{}", r.namespace, r.name),
            ifname: "eth0".into(),
            ip: ip_of(&r),
            pod: Some(r.clone()),
        });
    }
    v.node_addresses = NODES
        .iter()
        .map(|n| (n.to_string(), vec![node_ip(n)]))
        .collect::<BTreeMap<_, _>>();
    v
}

/// Replaces `{{ip NS/POD}}` and `{{hostmask NS/POD}}`.
pub fn fill_placeholders(mut text: String) -> String {
    for r in all_pods() {
        text = text.replace(&format!("{{{{ip {r}}}}}"), &ip_of(&r).to_string());
        text = text.replace(&format!("{{{{hostmask {r}}}}}"), "32");
    }
    text
}

/// What a node's compiled rules do with a forwarded packet (the chain
/// semantics of the rendered nft, interpreted): `Some(verdict)` for the
/// egress part when `src` is local and for the ingress part when `dst` is.
pub fn node_allows(
    rules: &NodeRules,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    proto: Protocol,
) -> bool {
    let chain_ok = |chains: &[podwire_policy::ChainRules], idx: Option<&usize>, far: Ipv4Addr| {
        let Some(c) = idx.and_then(|i| chains.get(*i)) else {
            return true; // not isolated
        };
        c.rules.iter().any(|r| {
            let peer_ok = match r.peer {
                PeerMatch::Any => true,
                PeerMatch::Set(i) => rules.addr_sets[i]
                    .iter()
                    .any(|a| a.first <= far && far <= a.last),
            };
            let port_ok = match &r.ports {
                PortMatch::Any => true,
                PortMatch::Ports(list) => list.iter().any(|(p, range)| {
                    *p == proto && range.is_none_or(|(a, b)| a <= port && port <= b)
                }),
                PortMatch::Pairs(p, i) => *p == proto && rules.pair_sets[*i].contains(&(dst, port)),
            };
            peer_ok && port_ok
        })
    };
    let mut ok = true;
    if rules.local.contains(&src) {
        ok &= chain_ok(&rules.egress_chains, rules.egress.get(&src), dst);
    }
    if rules.local.contains(&dst) {
        ok &= chain_ok(&rules.ingress_chains, rules.ingress.get(&dst), src);
    }
    ok
}
