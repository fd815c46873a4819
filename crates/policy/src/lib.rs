//! Kubernetes NetworkPolicy (networking.k8s.io/v1): parsing with the API
//! server's validation, the semantics Kubernetes defines ([`evaluate`]), and
//! what one node enforces ([`compile`]) as nftables text ([`render_nft`]).
//!
//! ```text
//! parse_documents(yaml|json) -> Vec<NetworkPolicy>  (to_record / from_record for the datastore)
//! ClusterView { namespaces, pods, endpoints, policies, node_addresses }
//!   evaluate(view, src, dst, port, proto) -> Verdict   (the audit, tests)
//!   compile(view, node) -> NodeRules -> render_nft -> NftPolicy (the agent)
//! ```

mod compile;
mod eval;
pub mod model;
mod nft;
mod parse;
mod selector;
mod validate;
mod view;

use std::collections::BTreeMap;

pub use compile::{compile, AddrRange, ChainRules, NodeRules, PeerMatch, PortMatch, RuleMatch};
pub use eval::{evaluate, Peer, Verdict};
pub use model::{LabelSelector, Operator, PolicyPeer, PolicyPort, PolicyType, PortRef, Rule};
pub use nft::{render_nft, NftPolicy};
pub use parse::{parse_documents, MAX_DOCUMENTS, MAX_INPUT_BYTES};
pub use podwire_cluster::Protocol;
pub use view::ClusterView;

/// Input that is not a valid NetworkPolicy: which document, which field,
/// and why. Nothing of an input that produced one is used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{field}: {reason}", location.as_deref().map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct PolicyError {
    /// The document (and object) when the input had several, e.g.
    /// `document 2 (x/allow-web)`.
    pub location: Option<String>,
    /// The field path, e.g. `spec.ingress[0].ports[1].port`.
    pub field: String,
    pub reason: String,
}

impl PolicyError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
        PolicyError {
            location: None,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A validated NetworkPolicy. `policy_types` is always explicit (defaulted
/// as the API server does); `ingress`/`egress` rules keep their order, so
/// `ingress[0]` in a reason is the object's first ingress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub pod_selector: LabelSelector,
    pub policy_types: Vec<PolicyType>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl NetworkPolicy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn applies_to(&self, t: PolicyType) -> bool {
        self.policy_types.contains(&t)
    }

    /// The datastore record: the object's JSON as Kubernetes would serve it
    /// (policyTypes explicit).
    pub fn to_record(&self) -> Vec<u8> {
        parse::to_json(self)
    }

    /// Decodes and validates a record (it is input like any other).
    pub fn from_record(bytes: &[u8]) -> Result<NetworkPolicy, PolicyError> {
        parse::from_json_record(bytes)
    }
}
