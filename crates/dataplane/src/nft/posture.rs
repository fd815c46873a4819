//! The external posture: who from outside the cluster may open connections
//! to this node's pods. With [`ExternalPodAccess::Deny`] only the cluster
//! (its nodes' and pods' addresses and the operator's allow-list, kept by the
//! agent in the set [`CLUSTER_NETS`]) may; replies to what pods opened and
//! traffic kube-proxy DNATed to a pod pass. Traffic to the node itself never
//! enters this chain (it is jumped to from `forward`, and only matters for
//! packets leaving towards a pod's veth).

use std::fmt::Write as _;

use ipnet::Ipv4Net;

use super::{apply, TABLE};

/// The set of the cluster's addresses and networks (interval set): every
/// node's, every pod's, and `--external-allow-cidrs`. Created by the node's
/// ruleset and never flushed by it: an agent restart keeps the last
/// contents until the agent replaces them.
pub const CLUSTER_NETS: &str = "cluster-nets";

/// `--external-pod-access`: one type for the flag, the records and this
/// chain (podwire-cluster).
pub use podwire_cluster::ExternalPodAccess;

/// The posture chain's rules. `pods` is the quoted host-veth name pattern,
/// `tunnel` the overlay's VXLAN device (what arrives through it comes from
/// another node or its pods: VXLAN is only accepted from known nodes, and
/// the guard's reverse-path check holds the inner source to the pod routes).
pub(super) fn rules(access: ExternalPodAccess, pods: &str, tunnel: Option<&str>) -> String {
    let mut r = String::new();
    if access == ExternalPodAccess::Allow {
        return r;
    }
    let g = super::POD_IFGROUP;
    let _ = writeln!(
        r,
        "oifgroup != {g} oifname != {pods} return comment \"not towards a pod of this node\""
    );
    let _ = writeln!(
        r,
        "ct state established,related return comment \"replies to connections pods opened\""
    );
    let _ = writeln!(
        r,
        "ct status dnat return comment \"DNATed to the pod on this node (NodePort, instance-mode load balancers)\""
    );
    let _ = writeln!(r, "iifgroup {g} return comment \"from a pod of this node\"");
    let _ = writeln!(
        r,
        "iifname {pods} return comment \"from a pod of this node\""
    );
    if let Some(t) = tunnel {
        let _ = writeln!(
            r,
            "iifname \"{t}\" return comment \"through the tunnel, from the cluster's nodes\""
        );
    }
    let _ = writeln!(
        r,
        "ip saddr @{CLUSTER_NETS} return comment \"from the cluster's nodes and pods, or the allow-list\""
    );
    let _ = writeln!(
        r,
        "counter drop comment \"from outside the cluster to a pod (external-pod-access deny)\""
    );
    r
}

/// The statement that makes [`CLUSTER_NETS`] exactly `nets` (overlapping
/// and adjacent networks merged: an interval set refuses overlaps).
pub fn cluster_nets_script(nets: &[Ipv4Net]) -> String {
    let merged = Ipv4Net::aggregate(&nets.iter().map(|n| n.trunc()).collect::<Vec<_>>());
    let mut s = format!("flush set ip {TABLE} {CLUSTER_NETS}\n");
    if !merged.is_empty() {
        let list: Vec<String> = merged.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "add element ip {TABLE} {CLUSTER_NETS} {{ {} }}",
            list.join(", ")
        );
    }
    s
}

/// Makes [`CLUSTER_NETS`] exactly `nets`, in one transaction (a packet sees
/// the old contents or the new, never an empty set in between).
pub fn set_cluster_nets(nets: &[Ipv4Net]) -> crate::Result<()> {
    apply(&cluster_nets_script(nets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_has_no_rules_and_deny_ends_in_a_drop() {
        assert!(rules(ExternalPodAccess::Allow, "\"eni*\"", None).is_empty());
        let r = rules(ExternalPodAccess::Deny, "\"eni*\"", Some("vxlan.calico"));
        let last = r.lines().last().expect("rules");
        assert!(last.contains("drop"), "{r}");
        // Every exemption comes before the drop, and none accepts (an accept
        // would skip the network-policy chain after this one).
        assert!(!r.contains("accept"), "{r}");
        for needed in ["established,related", "ct status dnat", "@cluster-nets"] {
            assert!(r.contains(needed), "{needed} missing:\n{r}");
        }
    }

    #[test]
    fn overlapping_networks_are_merged_and_an_empty_set_is_just_flushed() {
        let nets: Vec<Ipv4Net> = [
            "10.0.0.5/32",
            "10.0.0.0/24",
            "10.0.1.0/24",
            "192.168.0.9/16",
        ]
        .iter()
        .map(|s| s.parse().expect("net"))
        .collect();
        let s = cluster_nets_script(&nets);
        assert!(s.contains("{ 10.0.0.0/23, 192.168.0.0/16 }"), "{s}");
        let s = cluster_nets_script(&[]);
        assert_eq!(s.lines().count(), 1, "{s}");
        assert!(s.starts_with("flush set"), "{s}");
        assert_eq!("deny".parse(), Ok(ExternalPodAccess::Deny));
        assert!("open".parse::<ExternalPodAccess>().is_err());
    }
}
