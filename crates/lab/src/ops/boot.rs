//! What an instance's operating system does when it starts.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podwire_netlink::{Handle, Route};

use crate::state::NodeRec;
use crate::{procs, LabError};

fn gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    podwire_dataplane::routing::subnet_gateway(*subnet)
}

/// What an instance's OS does at boot (DHCP, in AWS): lo and eth0 up,
/// eth0's address, the default route via the subnet's router.
pub(super) fn boot(r: &NodeRec) -> Result<(), LabError> {
    let subnet = r
        .subnet
        .ok_or_else(|| LabError::State(format!("{} has no subnet", r.name)))?;
    let mut h = Handle::in_netns(&procs::netns_path(&r.netns))?;
    let lo = h.link("lo")?;
    h.set_up(lo.index)?;
    let eth0 = h.link("eth0")?;
    h.add_address(
        eth0.index,
        Ipv4Net::new(r.primary_ip, subnet.prefix_len())
            .map_err(|e| LabError::State(e.to_string()))?,
    )?;
    h.set_up(eth0.index)?;
    h.add_route(
        &Route::new(Ipv4Net::default())
            .via(gateway(&subnet))
            .dev(eth0.index),
    )?;
    Ok(())
}
