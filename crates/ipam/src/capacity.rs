//! How many pods a node can hold (issue 9 §3, the Amazon VPC CNI's rule):
//! without prefixes `ENIs × (IPv4 per ENI − 1) + 2`; with /28 prefixes
//! `ENIs × (IPv4 per ENI − 1) × 16 + 2`, capped at 110 for instance types
//! of at most 30 vCPUs and at 250 above. The `+ 2` are the host-network
//! pods (kube-proxy, the CNI's own agent) that need no pod address.
//!
//! The cap needs the vCPU count; when it is unknown the lower cap (110)
//! applies: an operator gets a figure the node can surely hold.

use crate::eni_pool::{PoolLimits, PREFIX_ADDRESSES};

/// The kubelet's limit the VPC CNI recommends below 30 vCPUs.
pub const MAX_PODS_SMALL: u32 = 110;
/// ... and above.
pub const MAX_PODS_LARGE: u32 = 250;

/// Max pods of an instance type (see the module comment).
pub fn max_pods(limits: PoolLimits, prefix_delegation: bool, vcpus: Option<u32>) -> u32 {
    if !prefix_delegation {
        return limits.max_pod_ips().saturating_add(2);
    }
    let raw = limits
        .max_pod_ips()
        .saturating_mul(PREFIX_ADDRESSES)
        .saturating_add(2);
    let cap = match vcpus {
        Some(v) if v > 30 => MAX_PODS_LARGE,
        _ => MAX_PODS_SMALL,
    };
    raw.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(max_enis: u32, ipv4: u32) -> PoolLimits {
        PoolLimits {
            max_enis,
            secondary_per_eni: ipv4 - 1,
        }
    }

    /// Figures from data/eni-max-pods.txt (secondary IPs) and the VPC CNI's
    /// max-pods calculator (prefixes).
    #[test]
    fn max_pods_follows_the_formula_and_the_caps() {
        // m5.large: 3 ENIs x 10, 2 vCPUs.
        assert_eq!(max_pods(l(3, 10), false, Some(2)), 29);
        assert_eq!(max_pods(l(3, 10), true, Some(2)), 110);
        // t3.small: 3 x 4.
        assert_eq!(max_pods(l(3, 4), false, Some(2)), 11);
        assert_eq!(max_pods(l(3, 4), true, Some(2)), 110);
        // t3.nano: 2 x 2: 2 slots x 16 + 2 = 34, under the cap.
        assert_eq!(max_pods(l(2, 2), true, Some(2)), 34);
        // m5.24xlarge: 15 x 50, 96 vCPUs.
        assert_eq!(max_pods(l(15, 50), false, Some(96)), 737);
        assert_eq!(max_pods(l(15, 50), true, Some(96)), 250);
        // vCPUs unknown: the lower cap.
        assert_eq!(max_pods(l(15, 50), true, None), 110);
        // Exactly 30 vCPUs is "at most 30".
        assert_eq!(max_pods(l(8, 30), true, Some(30)), 110);
    }
}
