//! What the cluster knows about its pods, as records in the datastore: the
//! namespaces and pods with their labels and named ports (written by the
//! operator CLI, or by a Kubernetes watcher feeding the same records), and
//! the endpoints (which address a pod attachment has, on which node; written
//! by the agent at ADD, removed at DEL).
//!
//! ```text
//! /podwire/namespaces/<ns>                         NamespaceRecord (JSON)
//! /podwire/pods/<ns>/<name>                        PodRecord (JSON)
//! /podwire/endpoints/<node>/<container>/<ifname>   EndpointRecord (JSON)
//! /podwire/policies/<ns>/<name>                    a NetworkPolicy (podwire-policy)
//! /podwire/node-addresses/<node>                   NodeAddressesRecord (JSON)
//! ```
//!
//! Every name is validated as Kubernetes validates it before it becomes part
//! of a key, so no name can move a key into another's place; container ids
//! and interface names are checked to the CNI spec's character set.

pub mod keys;
pub mod names;
pub mod posture;
pub mod records;

pub use posture::{ExternalPodAccess, ParseAccessError};
pub use records::{
    ContainerPort, EndpointRecord, NamespaceRecord, NodeAddressesRecord, PodRecord, PodRef,
    Protocol,
};

/// A record or a name that is not valid, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RecordError {
    /// Where the bad value is, e.g. `metadata.labels["app"]` or `ports[0].name`.
    pub field: String,
    pub reason: String,
}

impl RecordError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> RecordError {
        RecordError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
