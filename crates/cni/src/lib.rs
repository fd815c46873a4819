//! The CNI specification (0.3.0 … 1.1.0) as podwire speaks it: versions,
//! the error object and its codes, the `CNI_*` environment, the network
//! configuration the runtime pipes in, and the ADD result with its
//! conversion to every supported version.
//!
//! Nothing here touches the kernel or the agent, so all of it is unit-tested
//! without root.

// Issue 6 item 16: an `as` cast that truncates, wraps or drops a sign turned
// an out-of-range value into a valid one; convert with try_from and an error.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod config;
pub mod env;
pub mod error;
pub mod input;
pub mod result;
pub mod version;

#[cfg(test)]
mod proptests;

pub use config::{Attachment, NetConf};
pub use env::{Command, Invocation};
pub use error::{CniError, Code};
pub use result::{CniResult, Interface, IpConfig, RouteEntry};
pub use version::Version;
