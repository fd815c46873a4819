//! overlay mode's node programming against the in-memory kernel (no root):
//! the VXLAN device, full convergence, delta application, and peers whose
//! VTEP MAC or underlay address changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podwire_dataplane::overlay::{self, Changes, Desired, DeviceSpec, Peer, VXLAN_DEV};
use podwire_dataplane::routing::AGENT_ROUTE_PROTO;
use podwire_netlink::fake::{FakeKernel, NsState, HOST_NS};
use podwire_netlink::{FdbEntry, Link, MacAddr, Neighbour, Netlink, Route, RouteKind};

const TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("cidr")
}

fn mac(last: u8) -> MacAddr {
    MacAddr([0x66, 0, 0, 0, 0, last])
}

fn peer(n: u8, m: u8, underlay: u8) -> Peer {
    Peer {
        tunnel_ip: Ipv4Addr::new(10, 244, n, 1),
        vtep_mac: mac(m),
        underlay_ip: Ipv4Addr::new(192, 168, 0, underlay),
    }
}

/// A node with its underlay NIC and the VXLAN device.
fn node() -> (FakeKernel, Link) {
    let k = FakeKernel::new();
    let eth0 = k.add_link(HOST_NS, "eth0", None);
    let spec = DeviceSpec {
        vni: 4096,
        port: 4789,
        underlay_ip: Ipv4Addr::new(192, 168, 0, 10),
        underlay_index: eth0.index,
        mtu: 1450,
        tunnel_ip: TUNNEL,
    };
    let vxlan = overlay::ensure_device(&mut k.host(), &spec).expect("device");
    (k, vxlan)
}

/// The kernel's overlay state as [`Desired`] says it: owned routes,
/// neighbours and FDB entries of the device.
fn kernel_view(
    st: &NsState,
    vxlan: &Link,
) -> (BTreeMap<Ipv4Net, Option<Ipv4Addr>>, BTreeSet<Peer>) {
    let routes = st
        .routes
        .iter()
        .filter(|r| r.protocol == AGENT_ROUTE_PROTO)
        .map(|r| {
            let via = match r.kind {
                RouteKind::Blackhole => None,
                _ => {
                    assert_eq!(r.oif, Some(vxlan.index), "{r:?}");
                    assert!(r.onlink, "{r:?}");
                    r.gateway
                }
            };
            (r.dst, via)
        })
        .collect();
    let fdb: BTreeMap<MacAddr, Ipv4Addr> = st
        .fdb
        .iter()
        .filter(|e| e.ifindex == vxlan.index)
        .map(|e| (e.mac, e.dst))
        .collect();
    assert_eq!(fdb.len(), st.fdb.len(), "one FDB entry per MAC");
    let peers = st
        .neighbours
        .iter()
        .filter(|n| n.ifindex == vxlan.index)
        .map(|n| Peer {
            tunnel_ip: n.ip,
            vtep_mac: n.mac,
            underlay_ip: fdb.get(&n.mac).copied().unwrap_or(Ipv4Addr::UNSPECIFIED),
        })
        .collect::<BTreeSet<_>>();
    assert_eq!(
        peers.len(),
        fdb.len(),
        "every FDB entry belongs to a neighbour: {st:?}"
    );
    (routes, peers)
}

fn want_view(d: &Desired) -> (BTreeMap<Ipv4Net, Option<Ipv4Addr>>, BTreeSet<Peer>) {
    let routes = d
        .blackholes
        .iter()
        .map(|b| (*b, None))
        .chain(d.routes.iter().map(|(n, v)| (*n, Some(*v))))
        .collect();
    (routes, d.peers.clone())
}

fn desired(blackholes: &[&str], routes: &[(&str, Ipv4Addr)], peers: &[Peer]) -> Desired {
    Desired {
        blackholes: blackholes.iter().map(|b| net(b)).collect(),
        routes: routes.iter().map(|(n, v)| (net(n), *v)).collect(),
        peers: peers.iter().cloned().collect(),
    }
}

#[test]
fn the_device_is_created_once_and_repaired() {
    let (k, vxlan) = node();
    assert_eq!(vxlan.name, VXLAN_DEV);
    assert!(vxlan.up);
    assert_eq!(vxlan.mtu, 1450);
    let st = k.state(HOST_NS);
    assert_eq!(st.addresses, vec![(vxlan.index, net("10.244.0.1/32"))]);

    // Wrong MTU and a stray address are corrected; the device is kept.
    let mut h = k.host();
    h.set_mtu(vxlan.index, 1300).expect("mtu");
    h.add_address(vxlan.index, net("10.9.9.9/32"))
        .expect("addr");
    let eth0 = k.state(HOST_NS).link("eth0").expect("eth0");
    let again = overlay::ensure_device(
        &mut h,
        &DeviceSpec {
            vni: 4096,
            port: 4789,
            underlay_ip: Ipv4Addr::new(192, 168, 0, 10),
            underlay_index: eth0.index,
            mtu: 1450,
            tunnel_ip: TUNNEL,
        },
    )
    .expect("again");
    assert_eq!(again.index, vxlan.index);
    assert_eq!(again.mtu, 1450);
    assert_eq!(
        k.state(HOST_NS).addresses,
        vec![(vxlan.index, net("10.244.0.1/32"))]
    );
}

#[test]
fn converge_programs_everything_then_changes_nothing() {
    let (k, vxlan) = node();
    let b = peer(1, 1, 11);
    let c = peer(2, 2, 12);
    let d = desired(
        &["10.244.0.0/26"],
        &[
            ("10.244.1.0/26", b.tunnel_ip),
            ("10.244.2.0/26", c.tunnel_ip),
        ],
        &[b.clone(), c.clone()],
    );
    let ch = overlay::converge(&mut k.host(), &vxlan, &d).expect("converge");
    // 2 peers x (FDB + neighbour) + 3 routes.
    assert_eq!(
        ch,
        Changes {
            added: 7,
            removed: 0
        }
    );
    let st = k.state(HOST_NS);
    assert_eq!(kernel_view(&st, &vxlan), want_view(&d));
    assert!(st.routes.iter().all(|r| r.protocol == AGENT_ROUTE_PROTO));

    k.take_calls();
    let ch = overlay::converge(&mut k.host(), &vxlan, &d).expect("again");
    assert_eq!(ch, Changes::default());
    let calls = k.take_calls();
    assert!(calls.iter().all(|c| !c.mutates), "{calls:?}");
}

#[test]
fn converge_removes_only_what_it_owns() {
    let (k, vxlan) = node();
    let b = peer(1, 1, 11);
    let d = desired(
        &[],
        &[("10.244.1.0/26", b.tunnel_ip)],
        std::slice::from_ref(&b),
    );
    overlay::converge(&mut k.host(), &vxlan, &d).expect("converge");
    // Someone else's route (protocol boot) and a stale one of ours.
    let mut h = k.host();
    let theirs = Route::new(net("172.16.0.0/16")).blackhole();
    h.add_route(&theirs).expect("theirs");
    let stale = Route::new(net("10.244.9.0/26"))
        .blackhole()
        .protocol(AGENT_ROUTE_PROTO);
    h.add_route(&stale).expect("stale");
    let old = peer(9, 9, 19);
    h.replace_fdb(&FdbEntry {
        ifindex: vxlan.index,
        mac: old.vtep_mac,
        dst: old.underlay_ip,
    })
    .expect("fdb");
    h.replace_neighbour(&Neighbour {
        ifindex: vxlan.index,
        ip: old.tunnel_ip,
        mac: old.vtep_mac,
    })
    .expect("neigh");
    let ch = overlay::converge(&mut h, &vxlan, &d).expect("converge");
    assert_eq!(
        ch,
        Changes {
            added: 0,
            removed: 3
        }
    );
    let st = k.state(HOST_NS);
    assert_eq!(kernel_view(&st, &vxlan), want_view(&d));
    assert!(st.routes.contains(&theirs));
}

#[test]
fn converge_replaces_a_peer_whose_mac_or_underlay_changed() {
    let (k, vxlan) = node();
    let before = peer(1, 1, 11);
    let routes = [("10.244.1.0/26", before.tunnel_ip)];
    overlay::converge(
        &mut k.host(),
        &vxlan,
        &desired(&[], &routes, std::slice::from_ref(&before)),
    )
    .expect("converge");
    // The node came back with a new VXLAN device (new MAC) …
    let new_mac = peer(1, 5, 11);
    let d = desired(&[], &routes, &[new_mac]);
    overlay::converge(&mut k.host(), &vxlan, &d).expect("converge");
    assert_eq!(kernel_view(&k.state(HOST_NS), &vxlan), want_view(&d));
    // … then moved to another underlay address.
    let moved = peer(1, 5, 21);
    let d = desired(&[], &routes, &[moved]);
    overlay::converge(&mut k.host(), &vxlan, &d).expect("converge");
    assert_eq!(kernel_view(&k.state(HOST_NS), &vxlan), want_view(&d));
}

#[test]
fn apply_delta_replaces_a_peer_whose_mac_or_underlay_changed() {
    let (k, vxlan) = node();
    let routes = [("10.244.1.0/26", Ipv4Addr::new(10, 244, 1, 1))];
    let steps = [
        desired(&["10.244.0.0/26"], &routes, &[peer(1, 1, 11)]),
        // New VTEP MAC, same underlay.
        desired(&["10.244.0.0/26"], &routes, &[peer(1, 2, 11)]),
        // Same MAC, new underlay.
        desired(&["10.244.0.0/26"], &routes, &[peer(1, 2, 12)]),
        // Both at once.
        desired(&["10.244.0.0/26"], &routes, &[peer(1, 3, 13)]),
        // Another node takes over the departed node's MAC.
        desired(
            &["10.244.0.0/26"],
            &[("10.244.2.0/26", Ipv4Addr::new(10, 244, 2, 1))],
            &[peer(2, 3, 14)],
        ),
        Desired::default(),
    ];
    let mut old = Desired::default();
    for (i, d) in steps.iter().enumerate() {
        overlay::apply_delta(&mut k.host(), &vxlan, &old, d).expect("delta");
        assert_eq!(
            kernel_view(&k.state(HOST_NS), &vxlan),
            want_view(d),
            "step {i}"
        );
        old = d.clone();
    }
}

/// A small deterministic generator (no dependency): states drawn from a
/// few peers, MACs, underlays and blocks, so changes collide often.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }

    fn desired(&mut self) -> Desired {
        let mut d = Desired::default();
        let mut macs = BTreeSet::new();
        for n in 1..=4u8 {
            if self.next(3) == 0 {
                continue;
            }
            // MACs are unique per state (each is one node's device).
            let m = u8::try_from(self.next(6)).unwrap_or(0);
            if !macs.insert(m) {
                continue;
            }
            let p = peer(n, m, u8::try_from(10 + self.next(3)).unwrap_or(10));
            for b in 0..2u8 {
                if self.next(2) == 0 {
                    d.routes.insert(
                        Ipv4Net::new(Ipv4Addr::new(10, 244, n, b * 64), 26).expect("net"),
                        p.tunnel_ip,
                    );
                }
            }
            d.peers.insert(p);
        }
        for b in 0..3u8 {
            if self.next(2) == 0 {
                d.blackholes
                    .insert(Ipv4Net::new(Ipv4Addr::new(10, 244, 0, b * 64), 26).expect("net"));
            }
        }
        d
    }
}

#[test]
fn deltas_keep_the_kernel_exactly_as_a_full_converge_would() {
    let (k, vxlan) = node();
    let mut rng = Lcg(42);
    let mut old = Desired::default();
    for i in 0..300 {
        let d = rng.desired();
        overlay::apply_delta(&mut k.host(), &vxlan, &old, &d).expect("delta");
        assert_eq!(
            kernel_view(&k.state(HOST_NS), &vxlan),
            want_view(&d),
            "step {i}: {old:?} -> {d:?}"
        );
        let ch = overlay::converge(&mut k.host(), &vxlan, &d).expect("converge");
        assert_eq!(ch, Changes::default(), "step {i}: converge found work");
        old = d;
    }
}
