//! The reasoning: for each pod port and each source, the layers a
//! connection crosses, in the order the packet meets them — the VPC
//! (route, security groups), the destination node's posture, the
//! NetworkPolicies — each with its reason. A claim is "reachable" only
//! when every layer lets the connection's first packet through.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podwire_cluster::{PodRef, Protocol};
use podwire_policy::{Evaluator, Peer, PolicyType};

use crate::atoms;
use crate::model::{
    AuditInput, Claim, Exposure, ExternalPodAccess, Mode, NodeInfo, PodReport, PortReport, Reach,
    Report, Source, SourceKind,
};
use crate::sg::Transport;

/// A pod as a destination.
struct Dest<'a> {
    r: &'a PodRef,
    ip: Ipv4Addr,
    node: &'a str,
}

/// What the layers said about one connection.
struct Layers {
    ok: bool,
    reasons: Vec<String>,
}

impl Layers {
    fn new() -> Layers {
        Layers {
            ok: true,
            reasons: Vec::new(),
        }
    }

    fn add(&mut self, allowed: bool, reason: String) {
        self.ok &= allowed;
        self.reasons.push(reason);
    }
}

struct Ctx<'a> {
    input: &'a AuditInput,
    ev: Evaluator<'a>,
    nodes: BTreeMap<&'a str, &'a NodeInfo>,
}

/// Audits every pod with an address and a Kubernetes identity, on each of
/// its container ports.
pub fn audit(input: &AuditInput) -> Report {
    // Own-node traffic is decided by the nodes' addresses: the evaluator
    // must know every node's, whatever the records held.
    let mut view = input.view.clone();
    for n in &input.nodes {
        let a = view.node_addresses.entry(n.name.clone()).or_default();
        for ip in n
            .addresses
            .iter()
            .chain(std::iter::once(&n.primary))
            .chain(n.tunnel.iter())
        {
            if !a.contains(ip) {
                a.push(*ip);
            }
        }
    }
    let ev = Evaluator::new(&view);
    let nodes: BTreeMap<&str, &NodeInfo> =
        input.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let cx = Ctx { input, ev, nodes };
    let mut notes = vec![
        "kube-proxy's DNAT (NodePort, Services, instance-mode load balancers: `ct status dnat`) passes the posture; the audit asks about connections to pod addresses only and does not model it".to_string(),
        "ports are the pods' container ports; a port nothing listens on is not asked about".to_string(),
    ];
    if input.security_groups.is_none() && input.mode == Mode::Vpc {
        notes.push(
            "security groups not given: assumed to admit every source (the worst case)".into(),
        );
    }
    let cluster = cluster_addresses(input);
    let mut externals: Vec<Source> = Vec::new();
    // A cluster address is left out anyway: splitting around it would only
    // multiply the parts.
    let bounds: Vec<Ipv4Net> = boundaries(input)
        .into_iter()
        .filter(|b| !(b.prefix_len() == 32 && cluster.contains(&b.network())))
        .collect();
    for e in &input.external {
        match atoms::split(e.cidr, &bounds, &cluster) {
            Some(parts) => {
                for (cidr, ip) in parts {
                    let name = if cidr == e.cidr && cidr.prefix_len() == 32 {
                        e.name.clone()
                    } else {
                        format!("{} {cidr}", e.name)
                    };
                    externals.push(Source {
                        kind: SourceKind::External,
                        name,
                        ip,
                        cidr: Some(cidr),
                        namespace: None,
                        labels: None,
                        node: None,
                    });
                }
            }
            None => notes.push(format!(
                "{} ({}): too many distinct parts to audit (over {}); give a narrower --external",
                e.name,
                e.cidr,
                atoms::MAX_ATOMS
            )),
        }
    }
    let node_sources: Vec<Source> = input
        .nodes
        .iter()
        .map(|n| Source {
            kind: SourceKind::Node,
            name: n.name.clone(),
            ip: n.primary,
            cidr: None,
            namespace: None,
            labels: None,
            node: Some(n.name.clone()),
        })
        .collect();
    let labels_of = |r: &PodRef| {
        input
            .view
            .pods
            .iter()
            .find(|p| p.namespace == r.namespace && p.name == r.name)
            .map(|p| p.labels.clone())
            .unwrap_or_default()
    };
    let mut pod_sources: Vec<Source> = Vec::new();
    let mut dests: Vec<Dest> = Vec::new();
    let mut seen: BTreeSet<&PodRef> = BTreeSet::new();
    for e in &input.view.endpoints {
        match &e.pod {
            Some(r) => {
                pod_sources.push(Source {
                    kind: SourceKind::Pod,
                    name: r.to_string(),
                    ip: e.ip,
                    cidr: None,
                    namespace: Some(r.namespace.clone()),
                    labels: Some(labels_of(r)),
                    node: Some(e.node.clone()),
                });
                let asked = input.only_pods.is_empty() || input.only_pods.contains(r);
                if asked && seen.insert(r) {
                    dests.push(Dest {
                        r,
                        ip: e.ip,
                        node: &e.node,
                    });
                }
            }
            None => pod_sources.push(Source {
                kind: SourceKind::Pod,
                name: format!("ip {}", e.ip),
                ip: e.ip,
                cidr: None,
                namespace: None,
                labels: None,
                node: Some(e.node.clone()),
            }),
        }
    }
    pod_sources.sort_by(|a, b| a.name.cmp(&b.name));
    dests.sort_by(|a, b| a.r.cmp(b.r));

    let mut pods = Vec::new();
    let mut exposed = Vec::new();
    let (mut claims, mut reachable) = (0, 0);
    for d in &dests {
        let rec = input
            .view
            .pods
            .iter()
            .find(|p| p.namespace == d.r.namespace && p.name == d.r.name);
        let labels = rec.map(|p| p.labels.clone()).unwrap_or_default();
        let selecting = |t: PolicyType| -> Vec<String> {
            input
                .view
                .policies
                .iter()
                .filter(|p| {
                    p.namespace == d.r.namespace
                        && p.applies_to(t)
                        && p.pod_selector.matches(&labels)
                })
                .map(|p| p.key())
                .collect()
        };
        let mut ports = Vec::new();
        for cp in rec.map(|p| p.ports.as_slice()).unwrap_or_default() {
            let mut port_claims = Vec::new();
            let mut reach = Reach::default();
            let sources = externals
                .iter()
                .chain(node_sources.iter())
                .chain(pod_sources.iter());
            for s in sources {
                let l = cx.connection(s, d, cp.port, cp.protocol);
                if l.ok {
                    match s.kind {
                        SourceKind::External => {
                            reach.external.push(s.name.clone());
                            exposed.push(Exposure {
                                pod: d.r.to_string(),
                                port: cp.port,
                                protocol: cp.protocol,
                                from: s.name.clone(),
                            });
                        }
                        SourceKind::Node => reach.nodes.push(s.name.clone()),
                        SourceKind::Pod => reach.pods.push(s.name.clone()),
                    }
                    reachable += 1;
                }
                claims += 1;
                port_claims.push(Claim {
                    from: s.clone(),
                    reachable: l.ok,
                    reasons: l.reasons,
                });
            }
            ports.push(PortReport {
                port: cp.port,
                name: cp.name.clone(),
                protocol: cp.protocol,
                exposed: !reach.external.is_empty(),
                reachable_from: reach,
                claims: port_claims,
            });
        }
        let (ingress_policies, egress_policies) = (
            selecting(PolicyType::Ingress),
            selecting(PolicyType::Egress),
        );
        pods.push(PodReport {
            pod: d.r.to_string(),
            namespace: d.r.namespace.clone(),
            name: d.r.name.clone(),
            labels,
            node: d.node.to_string(),
            ip: d.ip,
            exposed: ports.iter().any(|p| p.exposed),
            ingress_policies,
            egress_policies,
            ports,
        });
    }
    Report {
        mode: input.mode,
        external_pod_access: input.posture,
        external_allow_cidrs: input.external_allow_cidrs.clone(),
        external_sources: input.external.clone(),
        security_groups_known: input.security_groups.is_some(),
        notes,
        pods,
        exposed,
        claims,
        reachable,
    }
}

/// Every address of the cluster: nodes' and pods'.
fn cluster_addresses(input: &AuditInput) -> BTreeSet<Ipv4Addr> {
    let mut s: BTreeSet<Ipv4Addr> = input.view.endpoints.iter().map(|e| e.ip).collect();
    for n in &input.nodes {
        s.extend(n.addresses.iter().copied());
        s.insert(n.primary);
        s.extend(n.tunnel);
    }
    for a in input.view.node_addresses.values() {
        s.extend(a.iter().copied());
    }
    s
}

/// Every CIDR inside which an outside address's answer could change.
fn boundaries(input: &AuditInput) -> Vec<Ipv4Net> {
    let mut v: Vec<Ipv4Net> = input.external_allow_cidrs.clone();
    if let Some(sg) = &input.security_groups {
        v.extend(sg.boundaries());
    }
    for p in &input.view.policies {
        for r in p.ingress.iter().chain(p.egress.iter()) {
            for peer in &r.peers {
                if let Some(b) = &peer.ip_block {
                    for c in std::iter::once(&b.cidr).chain(b.except.iter()) {
                        if let Ok(n) = c.parse::<Ipv4Net>() {
                            v.push(n.trunc());
                        }
                    }
                }
            }
        }
    }
    v
}

fn transport(p: Protocol) -> Option<Transport> {
    match p {
        Protocol::TCP => Some(Transport::Tcp),
        Protocol::UDP => Some(Transport::Udp),
        Protocol::SCTP => None,
    }
}

impl Ctx<'_> {
    /// The layers a connection from `s` to `d`'s `port` crosses.
    fn connection(&self, s: &Source, d: &Dest, port: u16, proto: Protocol) -> Layers {
        let mut l = Layers::new();
        let what = format!("{port}/{proto}");
        match s.kind {
            SourceKind::External => self.outside_host(&mut l, s.ip, d, port, proto),
            SourceKind::Node => {
                if s.name == d.node {
                    l.add(true, format!(
                        "route: from its own node {}: delivered on the node (no security group; the posture passes the node's own traffic)",
                        s.name
                    ));
                    self.policy(&mut l, s.ip, d, port, proto);
                } else {
                    let src = self.node_source(&s.name, s.ip);
                    self.between_nodes(&mut l, &s.name, s.ip, src, d, port, proto);
                    l.add(
                        true,
                        format!(
                            "posture: {src} is an address of node {} (a cluster address): passes",
                            s.name
                        ),
                    );
                    self.policy(&mut l, src, d, port, proto);
                }
            }
            SourceKind::Pod => {
                if s.ip == d.ip {
                    l.add(true, format!(
                        "route: {} reaching its own address never leaves its network namespace: no node rule sees it ({what})",
                        d.r
                    ));
                    return l;
                }
                let src_node = s.node.as_deref().unwrap_or_default();
                if src_node == d.node {
                    l.add(
                        true,
                        format!(
                            "route: both pods on node {}: routed by the node, no security group",
                            d.node
                        ),
                    );
                    l.add(true, "posture: from a pod of the same node: passes".into());
                } else {
                    let underlay = self.nodes.get(src_node).map_or(s.ip, |n| n.primary);
                    self.between_nodes(&mut l, src_node, underlay, s.ip, d, port, proto);
                    l.add(
                        true,
                        format!(
                        "posture: {} is a pod address of the cluster (its endpoint record): passes",
                        s.ip
                    ),
                    );
                }
                self.policy(&mut l, s.ip, d, port, proto);
            }
        }
        l
    }

    /// The address a node sends from towards a pod of another node: its
    /// primary in vpc mode, its tunnel address in overlay mode.
    fn node_source(&self, node: &str, primary: Ipv4Addr) -> Ipv4Addr {
        match self.input.mode {
            Mode::Vpc => primary,
            Mode::Overlay => self
                .nodes
                .get(node)
                .and_then(|n| n.tunnel)
                .unwrap_or(primary),
        }
    }

    /// The VPC part of a connection between nodes: to the pod's address
    /// (vpc) or, encapsulated, to the node's (overlay).
    #[allow(clippy::too_many_arguments)]
    fn between_nodes(
        &self,
        l: &mut Layers,
        src_node: &str,
        underlay: Ipv4Addr,
        src: Ipv4Addr,
        d: &Dest,
        port: u16,
        proto: Protocol,
    ) {
        match self.input.mode {
            Mode::Vpc => match transport(proto) {
                Some(t) => self.sg(l, d.ip, src, t, port),
                None => l.add(true, format!("security groups: {proto} is not modelled")),
            },
            Mode::Overlay => {
                let Some(dst_node) = self.nodes.get(d.node) else {
                    l.add(
                        false,
                        format!(
                            "route: node {} of {} is unknown: no tunnel to it",
                            d.node, d.r
                        ),
                    );
                    return;
                };
                l.add(true, format!(
                    "route: overlay: from node {src_node} through the VXLAN tunnel (UDP {}) to node {} ({})",
                    self.input.vxlan_port, dst_node.name, dst_node.primary
                ));
                self.sg(
                    l,
                    dst_node.primary,
                    underlay,
                    Transport::Udp,
                    self.input.vxlan_port,
                );
            }
        }
    }

    fn sg(&self, l: &mut Layers, dst: Ipv4Addr, src: Ipv4Addr, t: Transport, port: u16) {
        match &self.input.security_groups {
            Some(sgs) => {
                let d = sgs.admits(dst, src, t, port);
                l.add(d.allowed, format!("security groups: {}", d.reason));
            }
            None => l.add(
                true,
                "security groups: not known: assumed to admit (the worst case)".into(),
            ),
        }
    }

    fn outside_host(&self, l: &mut Layers, src: Ipv4Addr, d: &Dest, port: u16, proto: Protocol) {
        if self.input.mode == Mode::Overlay {
            l.add(false, format!(
                "route: overlay mode: {} is a pod-CIDR address the VPC does not route; a host outside the cluster has no route to it",
                d.ip
            ));
            return;
        }
        l.add(
            true,
            format!(
                "route: vpc mode: {} is a VPC address of {}'s ENI; the VPC routes to it",
                d.ip, d.node
            ),
        );
        match transport(proto) {
            Some(t) => self.sg(l, d.ip, src, t, port),
            None => l.add(true, format!("security groups: {proto} is not modelled")),
        }
        match self.input.posture {
            ExternalPodAccess::Allow => l.add(true, format!(
                "posture: node {} has --external-pod-access allow: whoever reaches the node reaches its pods",
                d.node
            )),
            ExternalPodAccess::Deny => match self.input.external_allow_cidrs.iter().find(|c| c.contains(&src)) {
                Some(c) => l.add(true, format!(
                    "posture: deny, but {src} is in --external-allow-cidrs {c}: passes"
                )),
                None => l.add(false, format!(
                    "posture: node {} has --external-pod-access deny: {src} is outside the cluster, dropped before any pod (kube-proxy DNAT is not modelled here)",
                    d.node
                )),
            },
        }
        self.policy(l, src, d, port, proto);
    }

    fn policy(&self, l: &mut Layers, src: Ipv4Addr, d: &Dest, port: u16, proto: Protocol) {
        let v = self
            .ev
            .evaluate(&Peer::Ip(src), &Peer::Ip(d.ip), port, proto);
        // The evaluator's reasons (one per direction) carry the verdict.
        l.ok &= v.allowed;
        l.reasons
            .extend(v.reasons.into_iter().map(|r| format!("policy: {r}")));
    }
}

#[cfg(test)]
#[path = "analyze_tests.rs"]
mod tests;
