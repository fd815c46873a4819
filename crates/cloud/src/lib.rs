//! The cloud side of a node: the EC2 Query API (SigV4-signed, form-encoded
//! POSTs, XML answers) and IMDSv2, plus the instance-type network limits.
//!
//! The same client runs on AWS and in the lab; only the endpoints differ.

// Numbers from the cloud are never narrowed or wrapped silently.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod ec2;
pub mod ec2_reply;
pub mod http;
pub mod imds;
pub mod imds_answer;
pub mod limits;
pub mod sigv4;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use ec2::{Ec2Client, Ec2Error, NetworkInterface};
pub use imds::{Imds, ImdsError};
pub use limits::{InstanceLimits, LimitsTable};

/// Access key, secret and optional session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}
