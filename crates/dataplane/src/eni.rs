//! vpc mode, node side: bringing a secondary ENI up with its own route
//! table, the way the VPC CNI does, so pods whose addresses live on it leave
//! through it.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use podwire_netlink::{sysctl, Handle, Link, MacAddr, Route, RouteScope, Rule};

use crate::routing::{
    host_route, route_table_for, subnet_gateway, AGENT_ROUTE_PROTO, RULE_ENI_PRIMARY_PRIORITY,
};

use crate::{DataplaneError, Result};

/// An attached ENI as the kernel should show it.
#[derive(Debug, Clone)]
pub struct EniSpec {
    pub mac: MacAddr,
    pub device_number: u32,
    pub primary_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub mtu: u32,
}

/// Waits for the link with `mac` to appear (the cloud attaches it
/// asynchronously), up to `timeout`.
pub fn wait_for_link(h: &mut Handle, mac: MacAddr, timeout: Duration) -> Result<Link> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = h.links()?.into_iter().find(|l| l.mac == Some(mac)) {
            return Ok(l);
        }
        if Instant::now() >= deadline {
            return Err(DataplaneError::LinkTimeout {
                mac,
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Loose reverse-path filtering: replies to pods on a secondary ENI arrive
/// there while the main table points back out of eth0.
pub fn set_loose_rp_filter(ifname: &str) -> Result<()> {
    sysctl::write(&format!("net/ipv4/conf/{ifname}/rp_filter"), "2")?;
    Ok(())
}

/// Configures a secondary ENI (idempotent): MTU, up, its primary address,
/// no subnet route in main, a table with the subnet gateway and a default
/// route out of this ENI, and the rule for its own primary address.
pub fn configure_secondary(h: &mut Handle, spec: &EniSpec, link: &Link) -> Result<()> {
    let table = route_table_for(spec.device_number);
    let gw = subnet_gateway(spec.subnet);
    if link.mtu != spec.mtu {
        h.set_mtu(link.index, spec.mtu)?;
    }
    set_loose_rp_filter(&link.name)?;
    let addr = Ipv4Net::new(spec.primary_ip, spec.subnet.prefix_len())?;
    if let Err(e) = h.add_address(link.index, addr) {
        if !e.is_exists() {
            return Err(e.into());
        }
    }
    h.set_up(link.index)?;
    // The kernel adds `<subnet> dev ethN proto kernel` to main; only eth0
    // should own the subnet there.
    let connected = Route::new(spec.subnet)
        .dev(link.index)
        .scope(RouteScope::Link)
        .protocol(2);
    if let Err(e) = h.delete_route(&connected) {
        if !e.is_not_found() {
            return Err(e.into());
        }
    }
    h.replace_route(
        &Route::new(host_route(gw))
            .dev(link.index)
            .scope(RouteScope::Link)
            .table(table)
            .protocol(AGENT_ROUTE_PROTO),
    )?;
    h.replace_route(
        &Route::new(Ipv4Net::default())
            .via(gw)
            .dev(link.index)
            .table(table)
            .protocol(AGENT_ROUTE_PROTO),
    )?;
    let rule = Rule {
        priority: RULE_ENI_PRIMARY_PRIORITY,
        src: Some(host_route(spec.primary_ip)),
        dst: None,
        table,
    };
    if let Err(e) = h.add_rule(&rule) {
        if !e.is_exists() {
            return Err(e.into());
        }
    }
    Ok(())
}
