//! Kubernetes' semantics for one connection: may `src` open a connection
//! to `dst` on `port`/`proto`? Egress of the source and ingress of the
//! destination must both allow it; a pod selected by no policy of a
//! direction is open in that direction; policies are a union.

use std::net::Ipv4Addr;

use podwire_cluster::{PodRef, Protocol};
use serde::Serialize;

use crate::view::{port_matches, Index, Party, PodInfo};
use crate::{ClusterView, PolicyType};

/// One end of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Peer {
    Pod(PodRef),
    /// A node, an external host, a pod without Kubernetes identity; an
    /// address of a pod with identity counts as that pod.
    Ip(Ipv4Addr),
}

/// The decision and why: which policy and rule allowed each direction, or
/// which policies isolate the pod and that none allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    pub reasons: Vec<String>,
}

/// Evaluates one connection attempt, both directions. For many questions
/// about one view, [`Evaluator`] indexes the view once.
pub fn evaluate(view: &ClusterView, src: &Peer, dst: &Peer, port: u16, proto: Protocol) -> Verdict {
    Evaluator::new(view).evaluate(src, dst, port, proto)
}

/// [`evaluate`] with the view indexed once (the audit asks for every pair).
#[derive(Debug)]
pub struct Evaluator<'a> {
    idx: Index<'a>,
}

impl<'a> Evaluator<'a> {
    pub fn new(view: &'a ClusterView) -> Evaluator<'a> {
        Evaluator {
            idx: Index::new(view),
        }
    }

    pub fn evaluate(&self, src: &Peer, dst: &Peer, port: u16, proto: Protocol) -> Verdict {
        evaluate_in(&self.idx, src, dst, port, proto)
    }
}

fn resolve<'a>(idx: &'a Index<'a>, p: &Peer, holder: &'a mut Option<PodInfo>) -> Party<'a> {
    match p {
        Peer::Ip(ip) => idx.party_at(*ip),
        Peer::Pod(r) => match idx.by_ref.get(r).and_then(|i| idx.pod(*i)) {
            Some(info) => Party {
                ip: info.addrs.first().map(|a| a.0),
                node: info.addrs.first().map(|a| a.1.as_str()),
                pod: Some(info),
            },
            None => {
                // Known to nobody: labels {} in its namespace, no address.
                let info = holder.insert(PodInfo {
                    r: r.clone(),
                    labels: Default::default(),
                    ports: Vec::new(),
                    addrs: Vec::new(),
                });
                Party {
                    ip: None,
                    node: None,
                    pod: Some(info),
                }
            }
        },
    }
}

pub(crate) fn evaluate_in(
    idx: &Index,
    src: &Peer,
    dst: &Peer,
    port: u16,
    proto: Protocol,
) -> Verdict {
    let (mut hs, mut hd) = (None, None);
    let s = resolve(idx, src, &mut hs);
    let d = resolve(idx, dst, &mut hd);
    let mut reasons = Vec::new();
    let what = format!("{port}/{proto}");
    let egress_ok = match s.pod {
        None => {
            reasons.push(
                "egress: the source is not a pod with Kubernetes identity: no policy applies"
                    .to_string(),
            );
            true
        }
        Some(sp) => {
            let own_node = s
                .node
                .zip(d.ip)
                .is_some_and(|(n, ip)| idx.is_node_address(n, ip));
            if own_node {
                reasons.push(format!(
                    "egress: {} to its own node is not subject to policy",
                    sp.r
                ));
                true
            } else {
                direction(
                    idx,
                    sp,
                    &s,
                    &d,
                    d.pod,
                    PolicyType::Egress,
                    port,
                    proto,
                    &what,
                    &mut reasons,
                )
            }
        }
    };
    let ingress_ok = match d.pod {
        None => {
            reasons.push(
                "ingress: the destination is not a pod with Kubernetes identity: no policy applies"
                    .to_string(),
            );
            true
        }
        Some(dp) => {
            let own_node = d
                .node
                .zip(s.ip)
                .is_some_and(|(n, ip)| idx.is_node_address(n, ip));
            if own_node {
                reasons.push(format!(
                    "ingress: {} from its own node is always allowed",
                    dp.r
                ));
                true
            } else {
                direction(
                    idx,
                    dp,
                    &d,
                    &s,
                    Some(dp),
                    PolicyType::Ingress,
                    port,
                    proto,
                    &what,
                    &mut reasons,
                )
            }
        }
    };
    Verdict {
        allowed: egress_ok && ingress_ok,
        reasons,
    }
}

/// One direction for the pod `subject`: `other` is the far end, `dst_pod`
/// the pod whose container ports name the port.
#[allow(clippy::too_many_arguments)]
fn direction(
    idx: &Index,
    subject: &PodInfo,
    _me: &Party,
    other: &Party,
    dst_pod: Option<&PodInfo>,
    t: PolicyType,
    port: u16,
    proto: Protocol,
    what: &str,
    reasons: &mut Vec<String>,
) -> bool {
    let dir = match t {
        PolicyType::Ingress => "ingress",
        PolicyType::Egress => "egress",
    };
    let mut isolating = Vec::new();
    for p in idx.selecting(subject, t) {
        isolating.push(p.key());
        let rules = match t {
            PolicyType::Ingress => &p.ingress,
            PolicyType::Egress => &p.egress,
        };
        for (i, r) in rules.iter().enumerate() {
            let peer_ok =
                r.peers.is_empty() || r.peers.iter().any(|pe| idx.peer_matches(p, pe, other));
            let port_ok = r.ports.is_empty()
                || r.ports
                    .iter()
                    .any(|pp| port_matches(pp, dst_pod, port, proto));
            if peer_ok && port_ok {
                reasons.push(format!(
                    "{dir}: {} allowed on {what} by {} {dir}[{i}]",
                    subject.r,
                    p.key()
                ));
                return true;
            }
        }
    }
    if isolating.is_empty() {
        reasons.push(format!(
            "{dir}: {} is selected by no {dir} policy: open",
            subject.r
        ));
        true
    } else {
        reasons.push(format!(
            "{dir}: {} is isolated by {}; no rule allows {what}",
            subject.r,
            isolating.join(", ")
        ));
        false
    }
}
