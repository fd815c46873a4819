//! IP capacity of vpc mode, as arithmetic an operator can check by hand
//! (docs/CAPACITY.md works two examples):
//!
//! - [`instance`]: max pods per instance type, with secondary IPs and with
//!   prefix delegation, and the kubelet `--max-pods` to set;
//! - [`warm`]: what a node holds for a given pod count under the Amazon VPC
//!   CNI's warm-pool targets;
//! - [`subnet`]: the address space of an EC2 subnet (5 reserved addresses,
//!   aligned /28s that are never the first or last of the subnet);
//! - [`plan`]: a node group in a subnet — pods that fit, idle addresses,
//!   where the subnet runs out and why;
//! - [`live`]: the figures the running agents report (`/v1/state`
//!   `capacity`), with warnings near exhaustion.
//!
//! Pure functions over data: no I/O, so `podwirectl capacity` does the
//! fetching and every figure here is unit-tested.

pub mod instance;
pub mod live;
pub mod plan;
pub mod subnet;
pub mod suggest;
pub mod warm;

/// Everything that can be wrong with a capacity question.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapacityError {
    #[error("unknown instance type {name:?}{}", suggestion_text(.suggestions))]
    UnknownInstanceType {
        name: String,
        suggestions: Vec<String>,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("instance data: {0}")]
    Data(String),
}

fn suggestion_text(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", s.join(", "))
    }
}
