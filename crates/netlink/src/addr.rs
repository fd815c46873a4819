use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::handle::{Batch, BatchOp, Op};
use crate::{Handle, Result};

impl Handle {
    /// Adds an IPv4 address to a link.
    pub fn add_address(&mut self, index: u32, addr: Ipv4Net) -> Result<()> {
        self.apply(vec![add_address_op(index, addr)])
    }

    /// Removes an IPv4 address from a link.
    pub fn delete_address(&mut self, index: u32, addr: Ipv4Net) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
        self.request(
            &format!("delete address {addr}"),
            RouteNetlinkMessage::DelAddress(msg),
            0,
        )
    }

    /// IPv4 addresses of a link (all links when `index` is None), with the
    /// index of the link that holds each.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Net)>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let msgs = self.dump("list addresses", RouteNetlinkMessage::GetAddress(req))?;
        let mut out = Vec::new();
        for m in msgs {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if index.is_some_and(|i| i != a.header.index) {
                    continue;
                }
                if let Some(found) = address_from_message(&a) {
                    out.push(found);
                }
            }
        }
        Ok(out)
    }
}

/// Decodes a kernel address: the link's index and the IPv4 address with
/// its prefix (None: not IPv4, or malformed).
pub(crate) fn address_from_message(a: &AddressMessage) -> Option<(u32, Ipv4Net)> {
    let local = a.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let address = a.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let ip: Ipv4Addr = local.or(address)?;
    let net = Ipv4Net::new(ip, a.header.prefix_len).ok()?;
    Some((a.header.index, net))
}

pub(crate) fn add_address_op(index: u32, addr: Ipv4Net) -> Op {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    let ip = IpAddr::V4(addr.addr());
    msg.attributes.push(AddressAttribute::Local(ip));
    msg.attributes.push(AddressAttribute::Address(ip));
    if addr.prefix_len() < 31 {
        msg.attributes
            .push(AddressAttribute::Broadcast(addr.broadcast()));
    }
    Op {
        name: format!("add address {addr}"),
        msg: RouteNetlinkMessage::NewAddress(msg),
        flags: NLM_F_CREATE | NLM_F_EXCL,
    }
}

impl Batch {
    /// See [`Handle::add_address`].
    pub fn add_address(mut self, index: u32, addr: Ipv4Net) -> Self {
        self.ops.push(BatchOp::AddAddress(index, addr));
        self
    }
}
