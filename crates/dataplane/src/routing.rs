//! The node's routing facts, in one place: which route protocol marks the
//! agent's routes, the policy-rule priorities, which table an ENI's traffic
//! uses and where a subnet's gateway is. Pod wiring (plugin), ENI set-up
//! (agent), overlay convergence (agent) and the lab all read them here.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
pub use podwire_netlink::TABLE_MAIN;

/// Route protocol number on every route the agent owns, so it can find its
/// own routes again after a restart (`ip route show proto 80`).
pub const AGENT_ROUTE_PROTO: u8 = 80;

/// `to <pod ip> lookup main`: traffic to a pod always uses the main table
/// (before any `from` rule can send it out of an ENI).
pub const RULE_TO_POD_PRIORITY: u32 = 512;
/// `from <pod ip> lookup <eni table>`: pods on secondary ENIs leave by them.
pub const RULE_FROM_POD_PRIORITY: u32 = 1536;
/// `from <ENI primary ip> lookup <ENI table>`.
pub const RULE_ENI_PRIMARY_PRIORITY: u32 = 32765;

/// The route table of the ENI at `device_number`: main for the primary ENI,
/// `device + 1` for the others (the VPC CNI's numbering, so operators find
/// the same tables).
pub fn route_table_for(device_number: u32) -> u32 {
    if device_number == 0 {
        TABLE_MAIN
    } else {
        device_number.saturating_add(1)
    }
}

/// The VPC router's address in a subnet: its network address + 1 (AWS
/// reserves it for the router).
pub fn subnet_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

/// `ip/32`.
pub fn host_route(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::from(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_gateways() {
        assert_eq!(route_table_for(0), TABLE_MAIN);
        assert_eq!(route_table_for(1), 2);
        assert_eq!(route_table_for(u32::MAX), u32::MAX);
        let subnet: Ipv4Net = "10.0.16.0/20".parse().expect("net");
        assert_eq!(subnet_gateway(subnet), Ipv4Addr::new(10, 0, 16, 1));
        assert_eq!(
            host_route(Ipv4Addr::new(10, 0, 0, 9)).to_string(),
            "10.0.0.9/32"
        );
    }
}
