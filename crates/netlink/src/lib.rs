//! A small, synchronous, typed wrapper over rtnetlink (`netlink-packet-route`
//! on a blocking `netlink-sys` socket).
//!
//! Why our own: the CNI plugin runs once per pod and must stay synchronous and
//! small (no async runtime), and the agent drives several network namespaces
//! from plain threads. A [`Handle`] is bound to the network namespace it was
//! opened in (the "two-socket trick": open one inside the target netns, then
//! drive it from any thread).

// What the kernel sends is never narrowed or wrapped silently.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod addr;
mod error;
#[cfg(feature = "test-util")]
pub mod fake;
mod handle;
mod link;
mod neigh;
pub mod netns;
mod ops;
mod route;
mod rule;
pub mod sysctl;

#[cfg(test)]
mod proptests;

pub use error::{Error, Result};
pub use handle::{Batch, BatchOp, Handle};
pub use link::{Link, MacAddr, VethSpec, VxlanSpec};
pub use neigh::{FdbEntry, Neighbour};
pub use ops::Netlink;
pub use route::{Route, RouteKind, RouteScope};
pub use rule::Rule;

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;
