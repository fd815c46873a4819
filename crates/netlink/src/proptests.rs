//! Property tests for decoding what the kernel sends: arbitrary datagrams
//! and messages with arbitrary header fields and attribute values give an
//! error or a value (None for a message that is malformed), never a panic
//! and never a different object; what podwire encodes decodes unchanged.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::addr::{add_address_op, address_from_message};
use crate::handle::Messages;
use crate::neigh::{fdb_from_message, neighbour_from_message};
use crate::{FdbEntry, Link, MacAddr, Neighbour, Route, RouteKind, RouteScope, Rule};

/// Runs every decoder on whatever the datagram holds.
fn decode_datagram(buf: &[u8]) {
    for msg in Messages::new(buf) {
        let Ok(msg) = msg else { break };
        if let NetlinkPayload::Error(e) = &msg.payload {
            let _ = e.code.map(crate::handle::errno_of);
        }
        if let NetlinkPayload::InnerMessage(inner) = msg.payload {
            match inner {
                RouteNetlinkMessage::NewRoute(r) => {
                    if let Some(route) = Route::from_message(&r) {
                        assert!(route.dst.prefix_len() <= 32);
                    }
                }
                RouteNetlinkMessage::NewRule(r) => {
                    let _ = Rule::from_message(&r);
                }
                RouteNetlinkMessage::NewLink(l) => {
                    let _ = Link::from_message(&l);
                }
                RouteNetlinkMessage::NewAddress(a) => {
                    if let Some((_, net)) = address_from_message(&a) {
                        assert!(net.prefix_len() <= 32);
                    }
                }
                RouteNetlinkMessage::NewNeighbour(n) => {
                    let _ = fdb_from_message(&n);
                    let _ = neighbour_from_message(&n);
                }
                _ => {}
            }
        }
    }
}

fn serialize(msg: RouteNetlinkMessage) -> Vec<u8> {
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// Encodes and decodes `msg` as the kernel's answer would be.
fn through_bytes(msg: RouteNetlinkMessage) -> RouteNetlinkMessage {
    let buf = serialize(msg);
    let got = Messages::new(&buf)
        .next()
        .expect("one message")
        .expect("decodes");
    match got.payload {
        NetlinkPayload::InnerMessage(inner) => inner,
        other => panic!("not a route message: {other:?}"),
    }
}

/// The RTM_NEW* message types of links, addresses, routes, neighbours
/// and rules, and NLMSG_ERROR.
fn rtm_type() -> impl Strategy<Value = u16> {
    // NLMSG_ERROR (2) too: its code is read as an errno.
    prop::sample::select(vec![2u16, 16, 20, 24, 28, 32])
}

/// One attribute: a type the decoders know (or not) and any value.
fn attribute() -> impl Strategy<Value = Vec<u8>> {
    (0u16..40, vec(any::<u8>(), 0..24)).prop_map(|(kind, value)| {
        let len = u16::try_from(4 + value.len()).expect("short");
        let mut a = Vec::new();
        a.extend_from_slice(&len.to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(&value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    })
}

/// A message with a correct netlink header, a family header of arbitrary
/// bytes (its first byte mostly AF_INET or AF_BRIDGE) and attributes of
/// arbitrary values.
fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        rtm_type(),
        prop_oneof![Just(2u8), Just(7u8), any::<u8>()],
        vec(any::<u8>(), 11),
        vec(attribute(), 0..6),
    )
        .prop_map(|(kind, family, header, attrs)| {
            let mut payload = vec![family];
            payload.extend_from_slice(&header);
            for a in attrs {
                payload.extend_from_slice(&a);
            }
            let len = u32::try_from(16 + payload.len()).expect("short");
            let mut m = Vec::new();
            m.extend_from_slice(&len.to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
            m.extend_from_slice(&payload);
            m
        })
}

fn net() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Ipv4Net::new(Ipv4Addr::from(a), p).expect("prefix"))
}

fn ip() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn route() -> impl Strategy<Value = Route> {
    (
        net(),
        proptest::option::of(ip()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(ip()),
        any::<u32>(),
        any::<u8>(),
        prop::sample::select(vec![
            RouteScope::Universe,
            RouteScope::Link,
            RouteScope::Host,
        ]),
        prop::sample::select(vec![RouteKind::Unicast, RouteKind::Blackhole]),
        any::<bool>(),
    )
        .prop_map(
            |(dst, gateway, oif, src, table, protocol, scope, kind, onlink)| Route {
                dst,
                gateway,
                oif,
                src,
                table,
                protocol,
                scope,
                kind,
                onlink,
            },
        )
}

fn mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_datagrams_never_panic(buf in vec(any::<u8>(), 0..512)) {
        decode_datagram(&buf);
    }

    #[test]
    fn messages_with_arbitrary_attributes_never_panic(
        msgs in vec(message_bytes(), 1..4),
        tail in vec(any::<u8>(), 0..8),
    ) {
        let mut buf: Vec<u8> = msgs.concat();
        buf.extend_from_slice(&tail);
        decode_datagram(&buf);
    }

    #[test]
    fn routes_round_trip(r in route()) {
        let RouteNetlinkMessage::NewRoute(m) = through_bytes(RouteNetlinkMessage::NewRoute(r.to_message(true))) else {
            panic!("not a route")
        };
        let expected = Route { dst: r.dst.trunc(), ..r };
        prop_assert_eq!(Route::from_message(&m), Some(expected));
    }

    #[test]
    fn rules_round_trip(
        priority in any::<u32>(),
        src in proptest::option::of(net()),
        dst in proptest::option::of(net()),
        table in any::<u32>(),
    ) {
        let rule = Rule { priority, src, dst, table };
        let RouteNetlinkMessage::NewRule(m) = through_bytes(RouteNetlinkMessage::NewRule(rule.to_message())) else {
            panic!("not a rule")
        };
        // A /0 selector is "all", as the kernel reports it.
        let norm = |n: Option<Ipv4Net>| n.map(|n| n.trunc()).filter(|n| n.prefix_len() > 0);
        let got = Rule::from_message(&m).map(|r| Rule { src: norm(r.src), dst: norm(r.dst), ..r });
        prop_assert_eq!(got, Some(Rule { src: norm(src), dst: norm(dst), ..rule }));
    }

    #[test]
    fn addresses_round_trip(index in any::<u32>(), addr in net()) {
        let RouteNetlinkMessage::NewAddress(m) = through_bytes(add_address_op(index, addr).msg) else {
            panic!("not an address")
        };
        prop_assert_eq!(address_from_message(&m), Some((index, addr)));
    }

    #[test]
    fn neighbours_round_trip(ifindex in any::<u32>(), ip in ip(), mac in mac(), dst in ip()) {
        let n = Neighbour { ifindex, ip, mac };
        let RouteNetlinkMessage::NewNeighbour(m) = through_bytes(RouteNetlinkMessage::NewNeighbour(n.to_message())) else {
            panic!("not a neighbour")
        };
        prop_assert_eq!(neighbour_from_message(&m), Some(n));
        let f = FdbEntry { ifindex, mac, dst };
        let RouteNetlinkMessage::NewNeighbour(m) = through_bytes(RouteNetlinkMessage::NewNeighbour(f.to_message())) else {
            panic!("not a neighbour")
        };
        prop_assert_eq!(fdb_from_message(&m), Some(f));
    }

    /// A link's address is a MAC only when it has six bytes.
    #[test]
    fn link_addresses_of_any_length(name in "[a-z0-9]{1,15}", addr in vec(any::<u8>(), 0..10), mtu in any::<u32>()) {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.clone()));
        msg.attributes.push(LinkAttribute::Address(addr.clone()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        let RouteNetlinkMessage::NewLink(m) = through_bytes(RouteNetlinkMessage::NewLink(msg)) else {
            panic!("not a link")
        };
        let l = Link::from_message(&m);
        prop_assert_eq!(l.name, name);
        prop_assert_eq!(l.mtu, mtu);
        prop_assert_eq!(l.mac, <[u8; 6]>::try_from(addr.as_slice()).ok().map(MacAddr));
    }

    /// Rule selectors: a source or destination that cannot be read makes
    /// the rule unreadable, never a rule "from all".
    #[test]
    fn rule_selectors_are_exact_or_refused(
        src_len in any::<u8>(),
        with_src in any::<bool>(),
        a in ip(),
    ) {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.src_len = src_len;
        m.attributes.push(RuleAttribute::Table(10));
        if with_src {
            m.attributes.push(RuleAttribute::Source(std::net::IpAddr::V4(a)));
        }
        match Rule::from_message(&m) {
            Some(r) if src_len == 0 => prop_assert!(r.src.is_none_or(|n| n.prefix_len() == 0)),
            Some(r) => prop_assert_eq!(r.src, Ipv4Net::new(a, src_len).ok().filter(|_| with_src)),
            None => prop_assert!(src_len > 32 || (src_len > 0 && !with_src)),
        }
        if let Some(r) = Rule::from_message(&m) {
            prop_assert!(src_len == 0 || r.src.is_some(), "a /{} rule read as from all", src_len);
        }
    }
}

/// The kernel sends -errno; whatever arrives there, no overflow.
#[test]
fn any_error_code_gives_an_errno() {
    use std::num::NonZeroI32;
    for code in [i32::MIN, i32::MIN + 1, -1, 1, i32::MAX] {
        let code = NonZeroI32::new(code).expect("non-zero");
        let _ = crate::handle::errno_of(code);
    }
    let eexist = NonZeroI32::new(-17).expect("non-zero");
    assert_eq!(crate::handle::errno_of(eexist), nix::errno::Errno::EEXIST);
}

/// NLMSG_ALIGN: the next message starts after the padding.
#[test]
fn a_message_of_unaligned_length_is_followed_by_padding() {
    let mut buf = Vec::new();
    // NLMSG_NOOP with one byte of payload: length 17, then 3 bytes padding.
    buf.extend_from_slice(&17u32.to_ne_bytes());
    buf.extend_from_slice(&1u16.to_ne_bytes());
    buf.extend_from_slice(&[0u8; 10]);
    buf.extend_from_slice(&[0xaa, 0, 0, 0]);
    // NLMSG_DONE.
    buf.extend_from_slice(&20u32.to_ne_bytes());
    buf.extend_from_slice(&3u16.to_ne_bytes());
    buf.extend_from_slice(&[0u8; 10]);
    buf.extend_from_slice(&0i32.to_ne_bytes());
    let got: Vec<_> = Messages::new(&buf).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(matches!(
        got[1].as_ref().map(|m| &m.payload),
        Ok(NetlinkPayload::Done(_))
    ));
}

#[test]
fn a_rule_with_an_impossible_source_prefix_is_refused() {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.src_len = 40;
    m.attributes.push(RuleAttribute::Table(10));
    m.attributes
        .push(RuleAttribute::Source(std::net::IpAddr::V4(Ipv4Addr::new(
            10, 0, 0, 1,
        ))));
    assert_eq!(Rule::from_message(&m), None);
}

#[test]
fn a_rule_whose_source_is_missing_is_refused() {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.dst_len = 24;
    m.attributes.push(RuleAttribute::Table(10));
    assert_eq!(Rule::from_message(&m), None);
}

#[test]
fn a_route_whose_destination_is_missing_is_refused() {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = 24;
    m.attributes.push(RouteAttribute::Table(254));
    m.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
            10, 0, 0, 1,
        ))));
    assert_eq!(Route::from_message(&m), None);
}
