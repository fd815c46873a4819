use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::handle::{Batch, BatchOp, Op};
use crate::{Handle, MacAddr, Result};

/// A permanent IPv4 neighbour entry (`ip neigh ... nud permanent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

/// A static forwarding entry of a VXLAN device: frames for `mac` go to the
/// VTEP at `dst` (`bridge fdb ... dst <ip> self permanent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: MacAddr,
    pub dst: Ipv4Addr,
}

impl FdbEntry {
    pub(crate) fn to_message(&self) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = self.ifindex;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(self.mac.0.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                self.dst,
            )));
        msg
    }
}

impl Neighbour {
    pub(crate) fn to_message(&self) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = self.ifindex;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                self.ip,
            )));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(self.mac.0.to_vec()));
        msg
    }
}

impl Handle {
    /// Adds or replaces a permanent neighbour entry.
    pub fn replace_neighbour(&mut self, n: &Neighbour) -> Result<()> {
        self.apply(vec![replace_neighbour_op(n)])
    }

    /// Deletes a neighbour entry.
    pub fn delete_neighbour(&mut self, n: &Neighbour) -> Result<()> {
        self.apply(vec![delete_neighbour_op(n)])
    }

    /// Adds or replaces a static FDB entry.
    pub fn replace_fdb(&mut self, e: &FdbEntry) -> Result<()> {
        self.apply(vec![replace_fdb_op(e)])
    }

    /// Deletes a static FDB entry.
    pub fn delete_fdb(&mut self, e: &FdbEntry) -> Result<()> {
        self.apply(vec![delete_fdb_op(e)])
    }

    /// Static FDB entries of device `ifindex` that point at a remote VTEP.
    pub fn fdb(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let msgs = self.dump("list fdb", RouteNetlinkMessage::GetNeighbour(req))?;
        let mut out = Vec::new();
        for m in msgs {
            if let RouteNetlinkMessage::NewNeighbour(n) = m {
                if n.header.ifindex != ifindex {
                    continue;
                }
                if let Some(e) = fdb_from_message(&n) {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// Permanent IPv4 neighbour entries.
    pub fn permanent_neighbours(&mut self) -> Result<Vec<Neighbour>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Inet;
        let msgs = self.dump("list neighbours", RouteNetlinkMessage::GetNeighbour(req))?;
        let mut out = Vec::new();
        for m in msgs {
            if let RouteNetlinkMessage::NewNeighbour(n) = m {
                if n.header.state != NeighbourState::Permanent {
                    continue;
                }
                if let Some(e) = neighbour_from_message(&n) {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
}

fn link_layer_address(n: &NeighbourMessage) -> Option<MacAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(v) => {
            <[u8; 6]>::try_from(v.as_slice()).ok().map(MacAddr)
        }
        _ => None,
    })
}

/// Decodes a static FDB entry of a VXLAN device (None: no IPv4 VTEP or no
/// Ethernet address).
pub(crate) fn fdb_from_message(n: &NeighbourMessage) -> Option<FdbEntry> {
    // In a bridge-family message the library does not decode the
    // destination as IPv4; take the four bytes ourselves.
    let dst = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(v)) => {
            <[u8; 4]>::try_from(v.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })?;
    Some(FdbEntry {
        ifindex: n.header.ifindex,
        mac: link_layer_address(n)?,
        dst,
    })
}

/// Decodes a permanent IPv4 neighbour entry (None: another state, or no
/// IPv4 address or Ethernet address).
pub(crate) fn neighbour_from_message(n: &NeighbourMessage) -> Option<Neighbour> {
    if n.header.state != NeighbourState::Permanent {
        return None;
    }
    let ip = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })?;
    Some(Neighbour {
        ifindex: n.header.ifindex,
        ip,
        mac: link_layer_address(n)?,
    })
}

pub(crate) fn replace_neighbour_op(n: &Neighbour) -> Op {
    Op {
        name: format!("add neighbour {} lladdr {}", n.ip, n.mac),
        msg: RouteNetlinkMessage::NewNeighbour(n.to_message()),
        flags: NLM_F_CREATE | NLM_F_REPLACE,
    }
}

pub(crate) fn delete_neighbour_op(n: &Neighbour) -> Op {
    Op {
        name: format!("delete neighbour {}", n.ip),
        msg: RouteNetlinkMessage::DelNeighbour(n.to_message()),
        flags: 0,
    }
}

pub(crate) fn replace_fdb_op(e: &FdbEntry) -> Op {
    Op {
        name: format!("add fdb {} dst {}", e.mac, e.dst),
        msg: RouteNetlinkMessage::NewNeighbour(e.to_message()),
        flags: NLM_F_CREATE | NLM_F_REPLACE,
    }
}

pub(crate) fn delete_fdb_op(e: &FdbEntry) -> Op {
    Op {
        name: format!("delete fdb {}", e.mac),
        msg: RouteNetlinkMessage::DelNeighbour(e.to_message()),
        flags: 0,
    }
}

impl Batch {
    /// See [`Handle::replace_fdb`].
    pub fn replace_fdb(mut self, e: &FdbEntry) -> Self {
        self.ops.push(BatchOp::ReplaceFdb(e.clone()));
        self
    }

    /// See [`Handle::delete_fdb`].
    pub fn delete_fdb(mut self, e: &FdbEntry) -> Self {
        self.ops.push(BatchOp::DeleteFdb(e.clone()));
        self
    }

    /// See [`Handle::delete_neighbour`].
    pub fn delete_neighbour(mut self, n: &Neighbour) -> Self {
        self.ops.push(BatchOp::DeleteNeighbour(n.clone()));
        self
    }

    /// See [`Handle::replace_neighbour`].
    pub fn replace_neighbour(mut self, n: &Neighbour) -> Self {
        self.ops.push(BatchOp::ReplaceNeighbour(n.clone()));
        self
    }
}
