//! The fake kernel keeps the rules the dataplane relies on (no root needed).

use std::path::Path;

use nix::errno::Errno;
use podwire_netlink::fake::{FakeKernel, HOST_NS};
use podwire_netlink::{Batch, BatchOp, MacAddr, Netlink, Route, RouteScope, VethSpec};

fn veth<'a>(name: &'a str, peer: &'a str) -> VethSpec<'a> {
    VethSpec {
        name,
        peer_name: peer,
        mtu: Some(1400),
        mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
        peer_mac: None,
        peer_netns: None,
    }
}

#[test]
fn veth_ends_die_together_and_take_what_is_on_them() {
    let k = FakeKernel::new();
    let ns = Path::new("/run/netns/pwt-a");
    let pod_ns = k.add_netns(ns);
    let mut h = k.host();
    let target = h.open_netns(ns).expect("open");
    h.add_veth_into(&veth("pwt-h", "eth0"), Some(&target))
        .expect("veth");
    let mut pod = h.handle_in(&target).expect("handle");
    let c = pod.link("eth0").expect("peer in pod");
    assert_eq!(c.mtu, 1400);
    let e = h
        .add_veth_into(&veth("pwt-h", "x"), None)
        .expect_err("same name");
    assert!(e.is_exists(), "{e}");
    pod.commit(
        Batch::new()
            .add_address(c.index, "10.0.0.5/32".parse().expect("net"))
            .set_up(c.index)
            .add_route(
                &Route::new("169.254.1.1/32".parse().expect("net"))
                    .dev(c.index)
                    .scope(RouteScope::Link),
            ),
    )
    .expect("batch");
    let hl = h.link("pwt-h").expect("host end");
    h.delete_link(hl.index).expect("delete");
    let st = k.state(&pod_ns);
    assert!(st.link("eth0").is_none());
    assert!(st.addresses.is_empty() && st.routes.is_empty(), "{st:?}");
    assert!(k.state(HOST_NS).link("pwt-h").is_none());
}

#[test]
fn kernel_rules_rename_needs_down_route_needs_up_and_gateway() {
    let k = FakeKernel::new();
    let mut h = k.host();
    h.add_veth_into(&veth("pwt-a", "pwt-b"), None)
        .expect("veth");
    let a = h.link("pwt-a").expect("a");
    let gw = Route::new("0.0.0.0/0".parse().expect("net"))
        .via("169.254.1.1".parse().expect("ip"))
        .dev(a.index);
    assert_eq!(
        h.add_route(&gw).expect_err("down").errno(),
        Some(Errno::ENETDOWN)
    );
    h.set_up(a.index).expect("up");
    assert_eq!(
        h.add_route(&gw).expect_err("no way to gw").errno(),
        Some(Errno::ENETUNREACH)
    );
    let e = h
        .rename_with_alias(a.index, "pwt-c", "x", 0)
        .expect_err("up");
    assert_eq!(e.errno(), Some(Errno::EBUSY));
    let b = h.link("pwt-b").expect("b");
    assert!(h
        .rename_with_alias(b.index, "pwt-a", "x", 0)
        .expect_err("taken")
        .is_exists());
}

#[test]
fn the_nth_operation_fails_and_batches_try_every_request() {
    let k = FakeKernel::new();
    let mut h = k.host();
    h.add_veth_into(&veth("pwt-a", "pwt-b"), None)
        .expect("veth");
    let a = h.link("pwt-a").expect("a");
    let b = Batch::new()
        .set_up(a.index)
        .add_address(a.index, "10.0.0.1/32".parse().expect("net"))
        .add_address(a.index, "10.0.0.2/32".parse().expect("net"));
    assert!(matches!(b.ops()[0], BatchOp::SetUp(i) if i == a.index));
    k.take_calls();
    k.fail_nth(2, Errno::EIO);
    let e = h.commit(b).expect_err("second fails");
    assert_eq!(e.errno(), Some(Errno::EIO));
    assert!(k.failure_consumed());
    let calls = k.take_calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[1].failed, Some(Errno::EIO));
    // The third request was still tried, as the kernel does.
    let st = k.state(HOST_NS);
    assert_eq!(st.addresses.len(), 1);
    assert!(st.link("pwt-a").expect("a").up);
}
