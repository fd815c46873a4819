//! The one place the cluster records' keys are spelled. Every name in a
//! key has been validated (see [`crate::names`]): none contains '/'.

use crate::records::{EndpointRecord, PodRef};

pub const NAMESPACES: &str = "/podwire/namespaces/";
pub const PODS: &str = "/podwire/pods/";
pub const ENDPOINTS: &str = "/podwire/endpoints/";
pub const POLICIES: &str = "/podwire/policies/";
/// Every node's addresses (both modes); not under `/podwire/nodes/`, which
/// overlay agents watch and parse as their own records.
pub const NODE_ADDRESSES: &str = "/podwire/node-addresses/";

pub fn node_addresses(node: &str) -> String {
    format!("{NODE_ADDRESSES}{node}")
}

pub fn namespace(name: &str) -> String {
    format!("{NAMESPACES}{name}")
}

pub fn pod(r: &PodRef) -> String {
    format!("{PODS}{}/{}", r.namespace, r.name)
}

/// Every endpoint of one node (for its agent's start-up and GC).
pub fn endpoints_of_node(node: &str) -> String {
    format!("{ENDPOINTS}{node}/")
}

pub fn endpoint(e: &EndpointRecord) -> String {
    endpoint_of(&e.node, &e.container_id, &e.ifname)
}

pub fn endpoint_of(node: &str, container_id: &str, ifname: &str) -> String {
    format!("{ENDPOINTS}{node}/{container_id}/{ifname}")
}

pub fn policy(namespace: &str, name: &str) -> String {
    format!("{POLICIES}{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_disjoint_from_ipam_and_nodes() {
        for k in [NAMESPACES, PODS, ENDPOINTS, POLICIES, NODE_ADDRESSES] {
            assert!(k.starts_with("/podwire/"));
            assert!(!k.starts_with("/podwire/ipam/") && !k.starts_with("/podwire/nodes/"));
        }
        let r = PodRef::new("x", "a").expect("valid");
        assert_eq!(pod(&r), "/podwire/pods/x/a");
        assert_eq!(
            endpoint_of("n1", "c1", "eth0"),
            "/podwire/endpoints/n1/c1/eth0"
        );
    }
}
