//! overlay mode, node side: the VXLAN device, a blackhole for each block the
//! node holds, and for every other node's block a route via that node's
//! tunnel address (onlink) with a permanent neighbour entry (tunnel address →
//! VTEP MAC) and a permanent FDB entry (VTEP MAC → node address). No
//! multicast, no learning: everything comes from the datastore.
//!
//! [`converge`] makes the kernel match a [`Desired`] state and touches only
//! what differs; every route it owns carries [`crate::routing::AGENT_ROUTE_PROTO`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podwire_netlink::{
    Batch, FdbEntry, Link, MacAddr, Neighbour, Netlink, Route, RouteKind, VxlanSpec, TABLE_MAIN,
};

use crate::routing::AGENT_ROUTE_PROTO;
use crate::Result;

pub const VXLAN_DEV: &str = "vxlan.podwire";
/// Outer IPv4 + UDP + VXLAN + inner Ethernet headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The node's own tunnel endpoint.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub vni: u32,
    pub port: u16,
    pub underlay_ip: Ipv4Addr,
    pub underlay_index: u32,
    pub mtu: u32,
    pub tunnel_ip: Ipv4Addr,
}

/// Another node, as this node must reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub tunnel_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    pub underlay_ip: Ipv4Addr,
}

/// What the node's routing should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Blocks this node holds.
    pub blackholes: BTreeSet<Ipv4Net>,
    /// Remote blocks (and borrowed /32s) → the tunnel address to send them to.
    pub routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    pub peers: BTreeSet<Peer>,
}

/// How much [`converge`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

/// Creates the VXLAN device if needed, with its MTU, the tunnel address as
/// a /32, and up. Returns the link.
pub fn ensure_device<N: Netlink>(h: &mut N, spec: &DeviceSpec) -> Result<Link> {
    let link = match h.link_by_name(VXLAN_DEV)? {
        Some(l) => l,
        None => {
            h.add_vxlan(&VxlanSpec {
                name: VXLAN_DEV,
                vni: spec.vni,
                port: spec.port,
                local: spec.underlay_ip,
                underlay_index: spec.underlay_index,
                mtu: spec.mtu,
                mac: None,
            })?;
            h.link(VXLAN_DEV)?
        }
    };
    if link.mtu != spec.mtu {
        h.set_mtu(link.index, spec.mtu)?;
    }
    let tunnel = Ipv4Net::new(spec.tunnel_ip, 32).unwrap_or_default();
    let addrs = h.addresses(Some(link.index))?;
    for (_, a) in &addrs {
        if *a != tunnel {
            h.delete_address(link.index, *a)?;
        }
    }
    if !addrs.iter().any(|(_, a)| *a == tunnel) {
        h.add_address(link.index, tunnel)?;
    }
    h.set_up(link.index)?;
    h.link(VXLAN_DEV).map_err(Into::into)
}

fn owned_route(r: &Route) -> bool {
    r.protocol == AGENT_ROUTE_PROTO && r.table == TABLE_MAIN
}

fn route_for(vxlan: &Link, dst: Ipv4Net, via: Option<Ipv4Addr>) -> Route {
    match via {
        None => Route::new(dst).blackhole().protocol(AGENT_ROUTE_PROTO),
        Some(v) => Route::new(dst)
            .via(v)
            .dev(vxlan.index)
            .onlink()
            .protocol(AGENT_ROUTE_PROTO),
    }
}

fn wanted_routes(d: &Desired) -> BTreeMap<Ipv4Net, Option<Ipv4Addr>> {
    d.blackholes
        .iter()
        .map(|b| (*b, None))
        .chain(d.routes.iter().map(|(n, via)| (*n, Some(*via))))
        .collect()
}

fn peer_ops(b: Batch, vxlan: &Link, p: &Peer) -> Batch {
    b.replace_fdb(&FdbEntry {
        ifindex: vxlan.index,
        mac: p.vtep_mac,
        dst: p.underlay_ip,
    })
    .replace_neighbour(&Neighbour {
        ifindex: vxlan.index,
        ip: p.tunnel_ip,
        mac: p.vtep_mac,
    })
}

/// Makes routes, neighbours and FDB entries match `d`, reading the kernel
/// first (start-up and periodic resync). Changes go out in batches.
pub fn converge<N: Netlink>(h: &mut N, vxlan: &Link, d: &Desired) -> Result<Changes> {
    let mut c = Changes::default();
    let want = wanted_routes(d);
    let have: BTreeMap<Ipv4Net, Route> = h
        .routes()?
        .into_iter()
        .filter(owned_route)
        .map(|r| (r.dst, r))
        .collect();
    let matches = |r: &Route, via: &Option<Ipv4Addr>| match via {
        None => r.kind == RouteKind::Blackhole,
        Some(v) => {
            r.kind == RouteKind::Unicast && r.gateway == Some(*v) && r.oif == Some(vxlan.index)
        }
    };
    let have_neigh: BTreeMap<Ipv4Addr, MacAddr> = h
        .permanent_neighbours()?
        .into_iter()
        .filter(|n| n.ifindex == vxlan.index)
        .map(|n| (n.ip, n.mac))
        .collect();
    let have_fdb: BTreeMap<MacAddr, Ipv4Addr> = h
        .fdb(vxlan.index)?
        .into_iter()
        .map(|f| (f.mac, f.dst))
        .collect();

    // Peers first, so a new route never points at an unresolvable next hop.
    let mut b = Batch::new();
    for p in &d.peers {
        if have_fdb.get(&p.vtep_mac) != Some(&p.underlay_ip)
            || have_neigh.get(&p.tunnel_ip) != Some(&p.vtep_mac)
        {
            b = peer_ops(b, vxlan, p);
        }
    }
    for (dst, via) in &want {
        if !have.get(dst).is_some_and(|r| matches(r, via)) {
            b = b.replace_route(&route_for(vxlan, *dst, *via));
        }
    }
    c.added = b.len();
    h.commit(b)?;

    let mut b = Batch::new();
    for (dst, r) in &have {
        if !want.contains_key(dst) {
            b = b.delete_route(r);
        }
    }
    let want_neigh: BTreeSet<Ipv4Addr> = d.peers.iter().map(|p| p.tunnel_ip).collect();
    let want_fdb: BTreeSet<MacAddr> = d.peers.iter().map(|p| p.vtep_mac).collect();
    for (ip, mac) in have_neigh {
        if !want_neigh.contains(&ip) {
            b = b.delete_neighbour(&Neighbour {
                ifindex: vxlan.index,
                ip,
                mac,
            });
        }
    }
    for (mac, dst) in have_fdb {
        if !want_fdb.contains(&mac) {
            b = b.delete_fdb(&FdbEntry {
                ifindex: vxlan.index,
                mac,
                dst,
            });
        }
    }
    c.removed = b.len();
    h.commit(b)?;
    Ok(c)
}

/// Applies the difference between two desired states without reading the
/// kernel (one change in the datastore costs only its own requests).
pub fn apply_delta<N: Netlink>(
    h: &mut N,
    vxlan: &Link,
    old: &Desired,
    new: &Desired,
) -> Result<Changes> {
    let mut c = Changes::default();
    let (was, now) = (wanted_routes(old), wanted_routes(new));
    let mut b = Batch::new();
    for p in new.peers.difference(&old.peers) {
        b = peer_ops(b, vxlan, p);
    }
    for (dst, via) in &now {
        if was.get(dst) != Some(via) {
            b = b.replace_route(&route_for(vxlan, *dst, *via));
        }
    }
    c.added = b.len();
    h.commit(b)?;
    let mut b = Batch::new();
    for (dst, via) in &was {
        if !now.contains_key(dst) {
            b = b.delete_route(&route_for(vxlan, *dst, *via));
        }
    }
    for p in old.peers.difference(&new.peers) {
        // A peer that changed only its address keeps its MAC: its FDB entry
        // was replaced above; remove only what no peer uses any more.
        if !new.peers.iter().any(|n| n.tunnel_ip == p.tunnel_ip) {
            b = b.delete_neighbour(&Neighbour {
                ifindex: vxlan.index,
                ip: p.tunnel_ip,
                mac: p.vtep_mac,
            });
        }
        if !new.peers.iter().any(|n| n.vtep_mac == p.vtep_mac) {
            b = b.delete_fdb(&FdbEntry {
                ifindex: vxlan.index,
                mac: p.vtep_mac,
                dst: p.underlay_ip,
            });
        }
    }
    c.removed = b.len();
    // Deleting what is already gone is not an error here.
    match h.commit(b) {
        Err(e) if !e.is_not_found() => return Err(e.into()),
        _ => {}
    }
    Ok(c)
}
