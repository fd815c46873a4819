//! What the audit is asked about (its input) and what it answers (the
//! report, whose JSON docs/AUDIT.md documents).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podwire_cluster::records::Labels;
use podwire_cluster::Protocol;
use podwire_policy::ClusterView;
use serde::Serialize;

use crate::sg::SecurityGroups;

/// The overlay's VXLAN port (podwire's default, as Calico's and Linux's).
pub const VXLAN_PORT: u16 = 4789;

/// The cluster's mode: the project's one mode type.
pub use podwire_cni::config::Mode;

/// The agents' `--external-pod-access` (one type with the agent's flag and
/// the node records).
pub use podwire_cluster::ExternalPodAccess;

/// A node: its name, every address it has, the address it sends from
/// towards the VPC (`primary`) and, in overlay mode, its tunnel address
/// (what it sends from towards pods of other nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub addresses: Vec<Ipv4Addr>,
    pub primary: Ipv4Addr,
    pub tunnel: Option<Ipv4Addr>,
}

/// Where outside hosts may be: the lab's external host, or in general
/// `0.0.0.0/0` (the cluster's own addresses are taken out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalSource {
    pub name: String,
    pub cidr: Ipv4Net,
}

#[derive(Debug, Clone)]
pub struct AuditInput {
    pub mode: Mode,
    /// The cluster's records: namespaces, pods, endpoints, policies, node
    /// addresses.
    pub view: ClusterView,
    pub nodes: Vec<NodeInfo>,
    pub posture: ExternalPodAccess,
    pub external_allow_cidrs: Vec<Ipv4Net>,
    pub external: Vec<ExternalSource>,
    /// The VPC's groups and ENIs; `None`: not known (assumed to admit
    /// everything, the worst case, and said so).
    pub security_groups: Option<SecurityGroups>,
    pub vxlan_port: u16,
    /// Audit only these destination pods (empty: every pod); every source
    /// is still asked about them.
    pub only_pods: Vec<podwire_cluster::PodRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    External,
    Node,
    Pod,
}

/// Who opens the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    pub kind: SourceKind,
    /// `external` (or `NAME CIDR` for a part of a wider outside range), a
    /// node's name, a pod's `namespace/name` (`ip A.B.C.D` for a pod
    /// without Kubernetes identity).
    pub name: String,
    /// The address its packets carry (for an outside range: one address
    /// standing for all of `cidr`, which all get the same answer).
    pub ip: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Ipv4Net>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// The node a pod runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One prediction: does `from` reach the port, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claim {
    pub from: Source,
    pub reachable: bool,
    pub reasons: Vec<String>,
}

/// Names of the sources that reach a port, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reach {
    pub external: Vec<String>,
    pub nodes: Vec<String>,
    pub pods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortReport {
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub protocol: Protocol,
    /// Reachable from outside the cluster.
    pub exposed: bool,
    pub reachable_from: Reach,
    /// Every source asked about, reachable or not.
    pub claims: Vec<Claim>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodReport {
    /// `namespace/name`.
    pub pod: String,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node: String,
    pub ip: Ipv4Addr,
    pub exposed: bool,
    /// The policies that select it, per direction (`namespace/name`).
    pub ingress_policies: Vec<String>,
    pub egress_policies: Vec<String>,
    pub ports: Vec<PortReport>,
}

/// A port reachable from outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exposure {
    pub pod: String,
    pub port: u16,
    pub protocol: Protocol,
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub external_pod_access: ExternalPodAccess,
    pub external_allow_cidrs: Vec<Ipv4Net>,
    pub external_sources: Vec<ExternalSource>,
    pub security_groups_known: bool,
    /// What the audit does not model, and what it assumed.
    pub notes: Vec<String>,
    pub pods: Vec<PodReport>,
    /// Everything flagged: pod ports reachable from outside the cluster.
    pub exposed: Vec<Exposure>,
    /// Totals over every claim.
    pub claims: usize,
    pub reachable: usize,
}

/// A claim with where it goes, as a verifier walks them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlatClaim {
    pub to: String,
    pub to_ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub from: Source,
    pub reachable: bool,
    pub reasons: Vec<String>,
}

impl Report {
    /// Every claim of every pod and port.
    pub fn flat_claims(&self) -> Vec<FlatClaim> {
        let mut out = Vec::new();
        for p in &self.pods {
            for port in &p.ports {
                for c in &port.claims {
                    out.push(FlatClaim {
                        to: p.pod.clone(),
                        to_ip: p.ip,
                        port: port.port,
                        protocol: port.protocol,
                        from: c.from.clone(),
                        reachable: c.reachable,
                        reasons: c.reasons.clone(),
                    });
                }
            }
        }
        out
    }
}
