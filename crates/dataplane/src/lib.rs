//! Kernel programming for pods and nodes: what a pod's attachment looks like
//! on the node and inside the pod, in each mode.

pub mod eni;
pub mod names;
pub mod nft;
pub mod overlay;
pub mod vpc;

/// Errors from programming the kernel for a pod or node.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Netlink(#[from] podwire_netlink::Error),
    #[error("interface {ifname} already exists in {netns}")]
    IfnameExists { ifname: String, netns: String },
    #[error("network namespace {path} cannot be opened: {source}")]
    Netns {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Mismatch(String),
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;
