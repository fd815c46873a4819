//! Kernel round-trips in a private network namespace per test (needs root:
//! each test `unshare`s its own thread into a fresh netns, which vanishes when
//! the thread ends, so nothing can leak onto the host).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podwire_netlink::{
    Batch, Handle, MacAddr, Neighbour, Route, RouteKind, RouteScope, Rule, VethSpec,
};

fn private_netns() -> Option<Handle> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
    Some(Handle::new().expect("netlink handle"))
}

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("cidr")
}

#[test]
fn veth_address_route_rule_neighbour_round_trip() {
    let Some(mut h) = private_netns() else { return };
    let mac: MacAddr = "0e:11:22:33:44:55".parse().expect("mac");
    h.add_veth(&VethSpec {
        name: "pwt-a",
        peer_name: "pwt-b",
        mtu: Some(9001),
        mac: Some(mac),
        peer_mac: None,
        peer_netns: None,
    })
    .expect("veth");
    let a = h.link("pwt-a").expect("link a");
    assert_eq!(a.mtu, 9001);
    assert_eq!(a.mac, Some(mac));
    assert_eq!(a.kind.as_deref(), Some("veth"));
    assert!(!a.up);
    h.set_up(a.index).expect("up");
    assert!(h.link("pwt-a").expect("a").up);

    // Creating it again is EEXIST, which callers rely on.
    let again = h.add_veth(&VethSpec {
        name: "pwt-a",
        peer_name: "pwt-c",
        mtu: None,
        mac: None,
        peer_mac: None,
        peer_netns: None,
    });
    assert!(again.expect_err("duplicate").is_exists());

    h.add_address(a.index, net("10.9.0.1/24")).expect("addr");
    assert!(h
        .addresses(Some(a.index))
        .expect("addrs")
        .contains(&(a.index, net("10.9.0.1/24"))));

    let host = Route::new(net("10.9.1.5/32"))
        .dev(a.index)
        .scope(RouteScope::Link)
        .protocol(99);
    h.add_route(&host).expect("route");
    let onlink = Route::new(net("10.9.2.0/26"))
        .via(Ipv4Addr::new(10, 9, 2, 0))
        .dev(a.index)
        .onlink()
        .table(7);
    h.add_route(&onlink).expect("onlink route");
    let bh = Route::new(net("10.9.3.0/26")).blackhole().protocol(80);
    h.add_route(&bh).expect("blackhole");
    let routes = h.routes().expect("routes");
    let found = routes
        .iter()
        .find(|r| r.dst == net("10.9.1.5/32"))
        .expect("host route");
    assert_eq!(
        (found.protocol, found.scope, found.oif),
        (99, RouteScope::Link, Some(a.index))
    );
    let found = routes
        .iter()
        .find(|r| r.dst == net("10.9.2.0/26"))
        .expect("onlink");
    assert!(found.onlink && found.table == 7);
    let found = routes
        .iter()
        .find(|r| r.dst == net("10.9.3.0/26"))
        .expect("bh");
    assert_eq!(found.kind, RouteKind::Blackhole);
    h.delete_route(&host).expect("del route");
    assert!(h.delete_route(&host).expect_err("gone").is_not_found());

    let rule = Rule {
        priority: 1536,
        src: Some(net("10.9.1.5/32")),
        dst: None,
        table: 7,
    };
    h.add_rule(&rule).expect("rule");
    assert!(h.rules().expect("rules").contains(&rule));
    h.delete_rule(&rule).expect("del rule");
    assert!(!h.rules().expect("rules").contains(&rule));

    let n = Neighbour {
        ifindex: a.index,
        ip: Ipv4Addr::new(169, 254, 1, 1),
        mac,
    };
    h.replace_neighbour(&n).expect("neigh");
    assert!(h.permanent_neighbours().expect("neighs").contains(&n));

    assert!(h.delete_link_by_name("pwt-a").expect("del"));
    assert!(h.link_by_name("pwt-b").expect("peer").is_none());
    assert!(!h.delete_link_by_name("pwt-a").expect("del twice"));
}

#[test]
fn a_batch_applies_in_order_and_reports_the_failing_request() {
    let Some(mut h) = private_netns() else { return };
    h.add_veth(&VethSpec {
        name: "pwt-x",
        peer_name: "pwt-y",
        mtu: None,
        mac: None,
        peer_mac: None,
        peer_netns: None,
    })
    .expect("veth");
    let x = h.link("pwt-x").expect("x");
    h.commit(
        Batch::new()
            .add_address(x.index, net("10.8.0.1/32"))
            .set_up(x.index)
            .add_route(
                &Route::new(net("10.8.1.0/24"))
                    .dev(x.index)
                    .scope(RouteScope::Link),
            ),
    )
    .expect("batch");
    assert!(h.link("pwt-x").expect("x").up);
    assert!(h
        .routes()
        .expect("routes")
        .iter()
        .any(|r| r.dst == net("10.8.1.0/24")));
    // The same address again fails; the error names that request.
    let err = h
        .commit(
            Batch::new()
                .add_route(
                    &Route::new(net("10.8.2.0/24"))
                        .dev(x.index)
                        .scope(RouteScope::Link),
                )
                .add_address(x.index, net("10.8.0.1/32")),
        )
        .expect_err("duplicate address");
    assert!(
        err.is_exists() && err.to_string().contains("add address 10.8.0.1/32"),
        "{err}"
    );
    assert!(
        h.routes()
            .expect("routes")
            .iter()
            .any(|r| r.dst == net("10.8.2.0/24")),
        "earlier requests of the batch still applied"
    );
}
