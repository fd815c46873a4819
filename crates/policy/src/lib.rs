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
//!
//! # For the agent (integration)
//!
//! The policy part lives in podwire-dataplane's table `ip podwire`: the
//! `network-policy` chain (jumped to from `forward` after the guard and the
//! posture) plus helper chains and sets whose names start with `np-`.
//! podwire-dataplane's `NodeRules::script()` flushes `network-policy`, so
//! whenever it is applied, the policy script must follow in the SAME
//! transaction (`base.script()? + &policy.script(Some(&known))`), or the
//! chain is empty (open) in between:
//!
//! 1. At start, before any pod traffic: `let known =
//!    NftPolicy::existing_from_listing(&listing)` where `listing` is the
//!    output of `nft list table ip podwire` (empty if the table is absent);
//!    then apply `base.script()? + &policy.script(Some(&known))` as ONE
//!    transaction (`podwire_dataplane::nft::apply`): the chain is never
//!    seen empty, so no window of openness.
//! 2. On any change of policies, pods, namespaces or endpoints:
//!    `let next = render_nft(&compile(&view, node));
//!    apply(&next.script(Some(&last)))`, then `last = next`. Only new
//!    helper objects are written and the gone ones deleted, in the same
//!    transaction.
//! 3. Write the endpoint record (and recompile) before the pod's traffic
//!    should flow: until its address is in `np-local`, a pod interface
//!    (group 0x7077) neither sends nor receives forwarded traffic
//!    ([`NodeRules::closed_until_known`]; clear it to turn this off).
//! 4. Fill [`ClusterView::node_addresses`] with every node's addresses:
//!    evaluation needs them (own-node traffic is always allowed; the node's
//!    own traffic goes through `output`/`input`, which the policy chain does
//!    not see).
//!
//! A pod reaching itself through its own address never leaves its network
//! namespace, so no node rule sees it; [`evaluate`] still answers by the
//! policies (as upstream's tables do for the diagonal).

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
pub use eval::{evaluate, Evaluator, Peer, Verdict};
pub use model::{LabelSelector, Operator, PolicyPeer, PolicyPort, PolicyType, PortRef, Rule};
pub use nft::{render_nft, NftObject, NftPolicy, POLICY_CHAIN};
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
