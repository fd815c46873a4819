//! Kernel programming for pods and nodes: what a pod's attachment looks like
//! on the node and inside the pod, in each mode.

pub mod conntrack;
pub mod eni;
pub mod names;
pub mod nft;
pub mod overlay;
pub mod pod;
pub mod routing;

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
    /// CHECK: the kernel no longer looks as ADD left it.
    #[error("{0}")]
    Mismatch(String),
    /// `conntrack` could not be run or failed.
    #[error("conntrack: {0}")]
    Conntrack(String),
    /// `nft` could not be run or refused a ruleset.
    #[error("nftables: {0}")]
    Nft(String),
    /// An attached ENI's interface did not show up in the node.
    #[error("no interface with MAC {mac} appeared within {waited:?}")]
    LinkTimeout {
        mac: podwire_netlink::MacAddr,
        waited: std::time::Duration,
    },
    /// An address and prefix length that do not make a network.
    #[error(transparent)]
    Prefix(#[from] ipnet::PrefixLenError),
    /// The host interface a pod's attachment should own belongs to another
    /// attachment (another sandbox of the same pod).
    #[error("host interface {ifname} belongs to container {owner}, not {container_id}")]
    OwnedByOther {
        ifname: String,
        owner: String,
        container_id: String,
    },
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;
