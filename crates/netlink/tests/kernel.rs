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
        // Not being root is a failure, not a silent pass, unless asked for.
        assert!(
            std::env::var_os("PODWIRE_SKIP_ROOT_TESTS").is_some(),
            "kernel tests need root (PODWIRE_SKIP_ROOT_TESTS=1 skips them)"
        );
        eprintln!("skipped: not root and PODWIRE_SKIP_ROOT_TESTS is set");
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

#[test]
fn vxlan_with_static_fdb_and_neighbours() {
    use podwire_netlink::{FdbEntry, VxlanSpec};
    let Some(mut h) = private_netns() else { return };
    h.add_veth(&VethSpec {
        name: "pwt-u0",
        peer_name: "pwt-u1",
        mtu: Some(9001),
        mac: None,
        peer_mac: None,
        peer_netns: None,
    })
    .expect("underlay");
    let u = h.link("pwt-u0").expect("u0");
    h.add_address(u.index, net("10.0.13.10/20")).expect("addr");
    h.set_up(u.index).expect("up");
    let mac: MacAddr = "66:0a:00:00:00:01".parse().expect("mac");
    h.add_vxlan(&VxlanSpec {
        name: "vxlan.pwt",
        vni: 4096,
        port: 4789,
        local: Ipv4Addr::new(10, 0, 13, 10),
        underlay_index: u.index,
        mtu: 8951,
        mac: Some(mac),
    })
    .expect("vxlan");
    let v = h.link("vxlan.pwt").expect("vxlan link");
    assert_eq!(
        (v.kind.as_deref(), v.mtu, v.mac),
        (Some("vxlan"), 8951, Some(mac))
    );
    h.set_up(v.index).expect("up");
    let remote_mac: MacAddr = "66:0a:00:00:00:02".parse().expect("mac");
    let fdb = FdbEntry {
        ifindex: v.index,
        mac: remote_mac,
        dst: Ipv4Addr::new(10, 0, 12, 177),
    };
    h.replace_fdb(&fdb).expect("fdb");
    h.replace_fdb(&fdb).expect("fdb again (replace)");
    assert_eq!(h.fdb(v.index).expect("list"), vec![fdb.clone()]);
    h.replace_neighbour(&Neighbour {
        ifindex: v.index,
        ip: Ipv4Addr::new(172, 16, 72, 64),
        mac: remote_mac,
    })
    .expect("neigh");
    h.add_route(
        &Route::new(net("172.16.72.64/26"))
            .via(Ipv4Addr::new(172, 16, 72, 64))
            .dev(v.index)
            .onlink()
            .protocol(80),
    )
    .expect("onlink route");
    h.delete_fdb(&fdb).expect("del fdb");
    assert!(h.fdb(v.index).expect("list").is_empty());
}
