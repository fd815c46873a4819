use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
    RouteScope as NlScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::handle::{Batch, BatchOp, Op};
use crate::{Handle, Result, TABLE_MAIN};

/// Route scope, as `ip route` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteScope {
    Universe,
    Link,
    Host,
}

/// What a route does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Unicast,
    Blackhole,
    /// Local, broadcast and other kernel-owned kinds (listed, never created).
    Other,
}

/// An IPv4 route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub src: Option<Ipv4Addr>,
    pub table: u32,
    /// Route protocol number (`proto` in `ip route`); lets an owner find its
    /// routes again after a restart.
    pub protocol: u8,
    pub scope: RouteScope,
    pub kind: RouteKind,
    pub onlink: bool,
}

impl Route {
    /// A unicast route in the main table with protocol `boot`, as `ip route
    /// add` makes it.
    pub fn new(dst: Ipv4Net) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            src: None,
            table: TABLE_MAIN,
            protocol: 3,
            scope: RouteScope::Universe,
            kind: RouteKind::Unicast,
            onlink: false,
        }
    }

    pub fn dev(mut self, oif: u32) -> Self {
        self.oif = Some(oif);
        self
    }
    pub fn via(mut self, gw: Ipv4Addr) -> Self {
        self.gateway = Some(gw);
        self
    }
    pub fn scope(mut self, scope: RouteScope) -> Self {
        self.scope = scope;
        self
    }
    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = protocol;
        self
    }
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }
    pub fn blackhole(mut self) -> Self {
        self.kind = RouteKind::Blackhole;
        self
    }

    pub(crate) fn to_message(&self, full: bool) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = self.dst.prefix_len();
        // Tables above 255 do not fit the header: it then says
        // RT_TABLE_COMPAT (252) and the table attribute carries the number.
        msg.header.table = u8::try_from(self.table).unwrap_or(252);
        msg.header.protocol = RouteProtocol::from(self.protocol);
        msg.header.scope = match self.scope {
            RouteScope::Universe => NlScope::Universe,
            RouteScope::Link => NlScope::Link,
            RouteScope::Host => NlScope::Host,
        };
        msg.header.kind = match self.kind {
            RouteKind::Blackhole => RouteType::BlackHole,
            _ => RouteType::Unicast,
        };
        if self.onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        if self.dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    self.dst.network(),
                )));
        }
        msg.attributes.push(RouteAttribute::Table(self.table));
        if let Some(gw) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if full {
            if let Some(src) = self.src {
                msg.attributes
                    .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
            }
        }
        msg
    }

    /// Decodes a kernel route (None: not IPv4, or malformed).
    pub(crate) fn from_message(msg: &RouteMessage) -> Option<Route> {
        if msg.header.address_family != AddressFamily::Inet {
            return None;
        }
        let mut dst = None;
        let mut route = Route::new(Ipv4Net::default());
        route.table = u32::from(msg.header.table);
        route.protocol = u8::from(msg.header.protocol);
        route.scope = match msg.header.scope {
            NlScope::Link => RouteScope::Link,
            NlScope::Host => RouteScope::Host,
            _ => RouteScope::Universe,
        };
        route.kind = match msg.header.kind {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            _ => RouteKind::Other,
        };
        route.onlink = msg.header.flags.contains(RouteFlags::Onlink);
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some(*a),
                RouteAttribute::PrefSource(RouteAddress::Inet(a)) => route.src = Some(*a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Table(t) => route.table = *t,
                _ => {}
            }
        }
        // No destination is the default route (/0); a prefix without its
        // address is malformed, not 0.0.0.0/len.
        let len = msg.header.destination_prefix_length;
        let dst = match dst {
            Some(a) => a,
            None if len == 0 => Ipv4Addr::UNSPECIFIED,
            None => return None,
        };
        route.dst = Ipv4Net::new(dst, len).ok()?;
        Some(route)
    }
}

impl Handle {
    /// Adds a route; fails with EEXIST if one with the same key exists.
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        self.apply(vec![add_route_op(route)])
    }

    /// Adds or replaces a route.
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.request(
            &format!("replace route {}", route.dst),
            RouteNetlinkMessage::NewRoute(route.to_message(true)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Deletes a route (matched on destination, table, and the gateway and
    /// device when set).
    pub fn delete_route(&mut self, route: &Route) -> Result<()> {
        let mut msg = route.to_message(false);
        // Let the kernel match any protocol/scope for this key.
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = NlScope::NoWhere;
        self.request(
            &format!("delete route {}", route.dst),
            RouteNetlinkMessage::DelRoute(msg),
            0,
        )
    }

    /// IPv4 routes of every table.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        req.header.table = RouteHeader::RT_TABLE_UNSPEC;
        let msgs = self.dump("list routes", RouteNetlinkMessage::GetRoute(req))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .collect())
    }
}

pub(crate) fn add_route_op(route: &Route) -> Op {
    Op {
        name: format!("add route {}", route.dst),
        msg: RouteNetlinkMessage::NewRoute(route.to_message(true)),
        flags: NLM_F_CREATE | NLM_F_EXCL,
    }
}

pub(crate) fn replace_route_op(route: &Route) -> Op {
    Op {
        name: format!("replace route {}", route.dst),
        msg: RouteNetlinkMessage::NewRoute(route.to_message(true)),
        flags: NLM_F_CREATE | NLM_F_REPLACE,
    }
}

pub(crate) fn delete_route_op(route: &Route) -> Op {
    let mut msg = route.to_message(false);
    msg.header.protocol = RouteProtocol::Unspec;
    msg.header.scope = NlScope::NoWhere;
    Op {
        name: format!("delete route {}", route.dst),
        msg: RouteNetlinkMessage::DelRoute(msg),
        flags: 0,
    }
}

impl Batch {
    /// See [`Handle::replace_route`].
    pub fn replace_route(mut self, route: &Route) -> Self {
        self.ops.push(BatchOp::ReplaceRoute(route.clone()));
        self
    }

    /// See [`Handle::delete_route`].
    pub fn delete_route(mut self, route: &Route) -> Self {
        self.ops.push(BatchOp::DeleteRoute(route.clone()));
        self
    }

    /// See [`Handle::add_route`].
    pub fn add_route(mut self, route: &Route) -> Self {
        self.ops.push(BatchOp::AddRoute(route.clone()));
        self
    }
}
