//! The lab: an emulated VPC on one Linux box, built from network namespaces
//! this crate creates and names `pw-<lab>-…`. Nodes run the real
//! `podwire-agent`; pods are wired by the real `podwire` plugin, executed the
//! way a runtime executes it; the cloud speaks the real EC2 Query API and
//! IMDSv2 wire formats.
//!
//! Sealed: the fabric namespace is never linked to the host's namespace and
//! holds no route out, so lab traffic only ever reaches lab namespaces.

pub mod cloud;
pub mod datastore;
pub mod demo;
pub mod kube;
pub mod names;
pub mod ops;
pub mod probe;
pub mod procs;
pub mod reach;
pub mod state;

pub use podwire_cni::config::Mode;

/// Lab failures. Messages say what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab state: {0}")]
    State(String),
    #[error("fabric: {0}")]
    Fabric(String),
    #[error(transparent)]
    Netlink(#[from] podwire_netlink::Error),
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {msg}")]
    Command { what: String, msg: String },
    #[error("EC2: {0}")]
    Ec2(#[from] podwire_cloud::Ec2Error),
    /// The lab's datastore failed; `unavailable`: it could not be reached
    /// (retrying later may work), as opposed to a refused or lost write.
    #[error("datastore, {msg}")]
    Datastore { unavailable: bool, msg: String },
}
