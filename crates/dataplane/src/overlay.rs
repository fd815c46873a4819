//! overlay mode, node side: the VXLAN device, a blackhole for each block the
//! node holds, and for every other node's block a route via that node's
//! tunnel address (onlink) with a permanent neighbour entry (tunnel address →
//! VTEP MAC) and a permanent FDB entry (VTEP MAC → node address). No
//! multicast, no learning: everything comes from the datastore.
//!
//! [`converge`] makes the kernel match a [`Desired`] state and touches only
//! what differs; every route it owns carries [`crate::eni::AGENT_ROUTE_PROTO`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podwire_netlink::{
    FdbEntry, Handle, Link, MacAddr, Neighbour, Route, RouteKind, VxlanSpec, TABLE_MAIN,
};

use crate::eni::AGENT_ROUTE_PROTO;
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
pub fn ensure_device(h: &mut Handle, spec: &DeviceSpec) -> Result<Link> {
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

/// Makes routes, neighbours and FDB entries match `d`.
pub fn converge(h: &mut Handle, vxlan: &Link, d: &Desired) -> Result<Changes> {
    let mut c = Changes::default();
    let want: BTreeMap<Ipv4Net, Option<Ipv4Addr>> = d
        .blackholes
        .iter()
        .map(|b| (*b, None))
        .chain(d.routes.iter().map(|(n, via)| (*n, Some(*via))))
        .collect();
    let mut have: BTreeMap<Ipv4Net, Route> = BTreeMap::new();
    for r in h.routes()?.into_iter().filter(owned_route) {
        have.insert(r.dst, r);
    }
    for (dst, r) in &have {
        let keep = match want.get(dst) {
            Some(None) => r.kind == RouteKind::Blackhole,
            Some(Some(via)) => {
                r.kind == RouteKind::Unicast
                    && r.gateway == Some(*via)
                    && r.oif == Some(vxlan.index)
            }
            None => false,
        };
        if !keep {
            h.delete_route(r)?;
            c.removed += 1;
        }
    }
    // Neighbours and FDB first, so a new route never points at an
    // unresolvable next hop.
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
    for p in &d.peers {
        if have_fdb.get(&p.vtep_mac) != Some(&p.underlay_ip) {
            h.replace_fdb(&FdbEntry {
                ifindex: vxlan.index,
                mac: p.vtep_mac,
                dst: p.underlay_ip,
            })?;
            c.added += 1;
        }
        if have_neigh.get(&p.tunnel_ip) != Some(&p.vtep_mac) {
            h.replace_neighbour(&Neighbour {
                ifindex: vxlan.index,
                ip: p.tunnel_ip,
                mac: p.vtep_mac,
            })?;
            c.added += 1;
        }
    }
    for (dst, via) in &want {
        let current = have.get(dst);
        let ok = match (via, current) {
            (None, Some(r)) => r.kind == RouteKind::Blackhole,
            (Some(v), Some(r)) => {
                r.kind == RouteKind::Unicast && r.gateway == Some(*v) && r.oif == Some(vxlan.index)
            }
            _ => false,
        };
        if ok {
            continue;
        }
        let route = match via {
            None => Route::new(*dst).blackhole().protocol(AGENT_ROUTE_PROTO),
            Some(v) => Route::new(*dst)
                .via(*v)
                .dev(vxlan.index)
                .onlink()
                .protocol(AGENT_ROUTE_PROTO),
        };
        h.replace_route(&route)?;
        c.added += 1;
    }
    let want_neigh: BTreeSet<Ipv4Addr> = d.peers.iter().map(|p| p.tunnel_ip).collect();
    let want_fdb: BTreeSet<MacAddr> = d.peers.iter().map(|p| p.vtep_mac).collect();
    for (ip, mac) in have_neigh {
        if !want_neigh.contains(&ip) {
            h.delete_neighbour(&Neighbour {
                ifindex: vxlan.index,
                ip,
                mac,
            })?;
            c.removed += 1;
        }
    }
    for (mac, dst) in have_fdb {
        if !want_fdb.contains(&mac) {
            h.delete_fdb(&FdbEntry {
                ifindex: vxlan.index,
                mac,
                dst,
            })?;
            c.removed += 1;
        }
    }
    Ok(c)
}
