//! `podwirectl audit`: for every pod, which sources reach it (hosts outside
//! the cluster, nodes, pods) on which of its ports, and why — the mode, the
//! VPC's security groups, the node's external posture and the
//! NetworkPolicies (podwire-policy's [`podwire_policy::Evaluator`] and its
//! reasons). Anything reachable from outside the cluster is flagged.
//!
//! ```text
//! records (datastore: store::load) ─┐
//! security groups (EC2 replies: sg) ├─> AuditInput ─> audit() ─> Report ─> text / JSON (docs/AUDIT.md)
//! posture, mode, outside CIDRs ─────┘                              │
//!                  a probe of every claim (lab) ─> compare() ─> mismatches
//! ```
//!
//! Nothing here touches a network: the reasoning works on a real cluster's
//! datastore and EC2 replies as on the lab's; the probing lives with the
//! lab (`podwirectl audit --verify`).

mod analyze;
mod atoms;
mod compare;
mod model;
pub mod sg;
pub mod store;
mod text;

pub use analyze::audit;
pub use compare::{compare, Mismatch, Observation};
pub use model::{
    AuditInput, Claim, ExternalPodAccess, ExternalSource, FlatClaim, Mode, NodeInfo, PodReport,
    PortReport, Reach, Report, Source, SourceKind, VXLAN_PORT,
};
pub use text::format_report;

/// What the audit cannot do with its input.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{action}: {msg}")]
    Ec2Reply { action: String, msg: String },
    #[error("datastore: {0}")]
    Store(String),
    #[error("{0}")]
    Input(String),
}
