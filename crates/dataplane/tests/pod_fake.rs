//! Pod wiring against the in-memory kernel (no root): what ADD builds, that
//! a failure at any step leaves nothing behind, what CHECK reports, and
//! which host interfaces an attachment may touch.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use nix::errno::Errno;
use podwire_dataplane::names::owner_alias;
use podwire_dataplane::pod::{self, HostVeth, PodSpec, GATEWAY};
use podwire_dataplane::routing::{RULE_FROM_POD_PRIORITY, RULE_TO_POD_PRIORITY};
use podwire_dataplane::DataplaneError;
use podwire_netlink::fake::{FakeKernel, HOST_NS};
use podwire_netlink::{Link, Netlink, Route, RouteScope, Rule, TABLE_MAIN};

const NETNS: &str = "/run/netns/pwt-pod-a";
const NAME: &str = "eni0123456789a";
const FALLBACK: &str = "enifffffffffff";
const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 32, 7);
const TABLE: u32 = 3;

fn owner() -> String {
    owner_alias("pw", "c1", "eth0")
}

fn spec<'a>(owner: &'a str, table: u32) -> PodSpec<'a> {
    PodSpec {
        netns: Path::new(NETNS),
        ifname: "eth0",
        host_veth: HostVeth {
            name: NAME,
            fallback: FALLBACK,
            owner,
        },
        ip: IP,
        mtu: 9001,
        route_table: table,
        host_mac: None,
    }
}

fn host32(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::from(ip)
}

/// A node with a NIC and a pod sandbox.
fn node() -> (FakeKernel, String) {
    let k = FakeKernel::new();
    k.add_link(HOST_NS, "eth0", None);
    let ns = k.add_netns(Path::new(NETNS));
    (k, ns)
}

fn host_link(k: &FakeKernel, name: &str) -> Link {
    k.state(HOST_NS)
        .link(name)
        .unwrap_or_else(|| panic!("no host link {name}"))
}

#[test]
fn add_builds_the_documented_wiring_on_both_sides() {
    let (k, ns) = node();
    let o = owner();
    let links = pod::add_pod(&mut k.host(), &spec(&o, TABLE)).expect("add");
    assert_eq!(links.host.name, NAME);
    assert_eq!(links.container.name, "eth0");

    let host = k.state(HOST_NS);
    let hv = host_link(&k, NAME);
    assert_eq!(hv.alias.as_deref(), Some(o.as_str()), "owner recorded");
    assert!(hv.up);
    assert_eq!(hv.mtu, 9001);
    assert_eq!(hv.mac, Some(pod::veth_mac("host", NAME, "eth0")));
    assert!(
        host.addresses.iter().all(|(i, _)| *i != hv.index),
        "the host end has no address"
    );
    assert_eq!(
        host.routes,
        vec![Route::new(host32(IP)).dev(hv.index).scope(RouteScope::Link)],
    );
    assert_eq!(
        host.rules,
        vec![
            Rule {
                priority: RULE_TO_POD_PRIORITY,
                src: None,
                dst: Some(host32(IP)),
                table: TABLE_MAIN,
            },
            Rule {
                priority: RULE_FROM_POD_PRIORITY,
                src: Some(host32(IP)),
                dst: None,
                table: TABLE,
            },
        ]
    );
    // No temporary name is left anywhere.
    assert!(host.links().iter().all(|l| !l.name.starts_with("pwtmp")));

    let pod = k.state(&ns);
    let c = pod.link("eth0").expect("eth0 in the pod");
    assert!(c.up);
    assert_eq!(c.mac, Some(pod::veth_mac("pod", NAME, "eth0")));
    assert_eq!(pod.addresses, vec![(c.index, host32(IP))]);
    assert_eq!(
        pod.routes,
        vec![
            Route::new(host32(GATEWAY))
                .dev(c.index)
                .scope(RouteScope::Link),
            Route::new(Ipv4Net::default()).via(GATEWAY).dev(c.index),
        ]
    );
    assert_eq!(pod.neighbours.len(), 1);
    assert_eq!(pod.neighbours[0].ip, GATEWAY);
    assert_eq!(
        Some(pod.neighbours[0].mac),
        hv.mac,
        "gateway answers with the host end's MAC"
    );

    // On the primary ENI: no policy rules.
    let (k, _) = node();
    pod::add_pod(&mut k.host(), &spec(&o, TABLE_MAIN)).expect("add");
    assert!(k.state(HOST_NS).rules.is_empty());
}

/// Fails every operation of ADD in turn, the first one to the last, and
/// checks that each failure leaves both namespaces exactly as they were.
fn sweep_failures(setup: impl Fn(&FakeKernel), table: u32) -> usize {
    let o = owner();
    let mut n = 1;
    loop {
        let (k, _) = node();
        setup(&k);
        let before = k.snapshot();
        k.fail_nth(n, Errno::EIO);
        let res = pod::add_pod(&mut k.host(), &spec(&o, table));
        if !k.failure_consumed() {
            res.expect("add without a failure");
            return n - 1;
        }
        let err = res.expect_err("a failed step fails ADD");
        assert!(err.to_string().contains("EIO"), "step {n}: {err}");
        assert_eq!(
            k.snapshot(),
            before,
            "step {n} failed ({err}) and left something behind"
        );
        n += 1;
        assert!(n < 500, "ADD never finished");
    }
}

#[test]
fn a_failure_at_any_step_of_add_leaves_nothing() {
    let steps = sweep_failures(|_| {}, TABLE);
    assert!(steps >= 10, "only {steps} operations?");
    sweep_failures(|_| {}, TABLE_MAIN);
    // The fallback path too: another sandbox of the pod holds the usual name.
    sweep_failures(
        |k| {
            k.add_link(HOST_NS, NAME, Some(&owner_alias("pw", "c0", "eth0")));
        },
        TABLE,
    );
}

#[test]
fn an_existing_ifname_in_the_pod_is_reported_and_nothing_is_left() {
    let (k, ns) = node();
    k.add_link(&ns, "eth0", None);
    let before = k.snapshot();
    let o = owner();
    let e = pod::add_pod(&mut k.host(), &spec(&o, TABLE)).expect_err("eth0 taken");
    assert!(matches!(e, DataplaneError::IfnameExists { .. }), "{e}");
    assert_eq!(k.snapshot(), before);
}

/// Wires a pod, breaks one thing, and returns what CHECK says.
fn check_after(break_it: impl Fn(&FakeKernel, &str)) -> String {
    let (k, ns) = node();
    let o = owner();
    pod::add_pod(&mut k.host(), &spec(&o, TABLE)).expect("add");
    pod::check_pod(&mut k.host(), &spec(&o, TABLE)).expect("intact pod passes CHECK");
    break_it(&k, &ns);
    match pod::check_pod(&mut k.host(), &spec(&o, TABLE)) {
        Err(DataplaneError::Mismatch(m)) => m,
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[test]
fn check_reports_each_mismatch() {
    let m = check_after(|k, _| {
        let l = host_link(k, NAME);
        k.host().delete_link(l.index).expect("delete");
    });
    assert!(m.contains("host veth") && m.contains("missing"), "{m}");

    let m = check_after(|k, _| {
        let l = host_link(k, NAME);
        let r = Route::new(host32(IP)).dev(l.index);
        k.host().delete_route(&r).expect("delete");
    });
    assert!(
        m.contains("route 10.0.32.7") && m.contains("missing"),
        "{m}"
    );

    let m = check_after(|k, _| {
        let r = k.state(HOST_NS).rules[1].clone();
        k.host().delete_rule(&r).expect("delete");
    });
    assert!(m.contains("policy rule") && m.contains("1536"), "{m}");

    let m = check_after(|k, ns| {
        let c = k.state(ns).link("eth0").expect("eth0");
        k.connect(ns)
            .delete_address(c.index, host32(IP))
            .expect("delete");
    });
    assert!(m.contains("lacks 10.0.32.7/32"), "{m}");

    let m = check_after(|k, ns| {
        let r = Route::new(Ipv4Net::default()).via(GATEWAY);
        k.connect(ns).delete_route(&r).expect("delete");
    });
    assert!(m.contains("default route"), "{m}");

    // A host link under the usual name that is another attachment's is not
    // this one's.
    let m = check_after(|k, _| {
        let l = host_link(k, NAME);
        let mut h = k.host();
        h.delete_link(l.index).expect("delete");
        k.add_link(HOST_NS, NAME, Some(&owner_alias("pw", "c9", "eth0")));
    });
    assert!(m.contains("missing"), "{m}");

    // The sandbox is gone.
    let (k, _) = node();
    let o = owner();
    pod::add_pod(&mut k.host(), &spec(&o, TABLE)).expect("add");
    k.remove_netns(Path::new(NETNS));
    assert!(pod::check_pod(&mut k.host(), &spec(&o, TABLE)).is_err());
}

#[test]
fn add_takes_the_fallback_name_and_never_touches_another_attachment() {
    let (k, _) = node();
    let other_owner = owner_alias("pw", "c0", "eth0");
    let other = k.add_link(HOST_NS, NAME, Some(&other_owner));
    let o = owner();
    let links = pod::add_pod(&mut k.host(), &spec(&o, TABLE)).expect("add");
    assert_eq!(links.host.name, FALLBACK);
    assert_eq!(host_link(&k, FALLBACK).alias.as_deref(), Some(o.as_str()));
    assert_eq!(
        host_link(&k, NAME),
        other,
        "the other sandbox's link is intact"
    );

    // CHECK and DEL find ours under the fallback name and leave the other.
    pod::check_pod(&mut k.host(), &spec(&o, TABLE)).expect("check");
    pod::del_pod(
        &mut k.host(),
        Some(Path::new(NETNS)),
        "eth0",
        &spec(&o, TABLE).host_veth,
        IP,
        TABLE,
    )
    .expect("del");
    assert!(k.state(HOST_NS).link(FALLBACK).is_none());
    assert_eq!(host_link(&k, NAME), other);
    assert!(k.state(HOST_NS).rules.is_empty());
}

#[test]
fn both_names_held_by_others_is_an_error_that_leaves_nothing() {
    let (k, _) = node();
    k.add_link(HOST_NS, NAME, Some(&owner_alias("pw", "c0", "eth0")));
    k.add_link(HOST_NS, FALLBACK, Some(&owner_alias("pw", "c8", "eth0")));
    let before = k.snapshot();
    let o = owner();
    let e = pod::add_pod(&mut k.host(), &spec(&o, TABLE)).expect_err("no name left");
    assert!(matches!(e, DataplaneError::OwnedByOther { .. }), "{e}");
    assert_eq!(k.snapshot(), before);
}

#[test]
fn a_leftover_of_the_same_attachment_is_replaced() {
    let (k, _) = node();
    let o = owner();
    let old = k.add_link(HOST_NS, NAME, Some(&o));
    let links = pod::add_pod(&mut k.host(), &spec(&o, TABLE)).expect("add");
    assert_eq!(links.host.name, NAME);
    assert_ne!(links.host.index, old.index, "the leftover was replaced");
    assert_eq!(
        k.state(HOST_NS)
            .links()
            .iter()
            .filter(|l| l.name == NAME)
            .count(),
        1
    );
}

#[test]
fn a_legacy_link_without_alias_is_owned_only_under_the_usual_name() {
    let o = owner();
    let hv = spec(&o, TABLE).host_veth;

    // Under the usual name: taken as this attachment's (as the plugin that
    // made it did) by CHECK/DEL…
    let (k, _) = node();
    let legacy = k.add_link(HOST_NS, NAME, None);
    assert_eq!(hv.find(&mut k.host()).expect("find"), Some(legacy.clone()));
    assert!(hv.delete(&mut k.host()).expect("delete"));
    assert!(k.state(HOST_NS).link(NAME).is_none());

    // …but ADD never destroys it: it takes the fallback name.
    let (k, _) = node();
    let legacy = k.add_link(HOST_NS, NAME, None);
    let links = pod::add_pod(&mut k.host(), &spec(&o, TABLE)).expect("add");
    assert_eq!(links.host.name, FALLBACK);
    assert_eq!(host_link(&k, NAME), legacy);

    // Under the fallback name, a link without alias is nobody's we know.
    let (k, _) = node();
    let stray = k.add_link(HOST_NS, FALLBACK, None);
    assert_eq!(hv.find(&mut k.host()).expect("find"), None);
    assert!(!hv.delete(&mut k.host()).expect("delete"));
    assert_eq!(host_link(&k, FALLBACK), stray);
}

#[test]
fn del_leaves_another_attachments_link_and_is_idempotent() {
    let (k, _) = node();
    let o = owner();
    pod::add_pod(&mut k.host(), &spec(&o, TABLE)).expect("add");
    // Another sandbox's DEL (same pod, so same usual name) removes nothing
    // of ours.
    let theirs = owner_alias("pw", "c0", "eth0");
    let mut their_spec = spec(&theirs, TABLE);
    their_spec.host_veth.fallback = "eni00000000000";
    let before = k.snapshot();
    pod::remove_host_side(
        &mut k.host(),
        &their_spec.host_veth,
        Ipv4Addr::new(10, 0, 32, 99),
        TABLE,
    )
    .expect("their DEL");
    assert_eq!(k.snapshot(), before);

    let del = |k: &FakeKernel| {
        pod::del_pod(
            &mut k.host(),
            Some(Path::new(NETNS)),
            "eth0",
            &spec(&o, TABLE).host_veth,
            IP,
            TABLE,
        )
    };
    del(&k).expect("del");
    let (clean, _) = node();
    assert_eq!(
        k.snapshot(),
        clean.snapshot(),
        "DEL removed everything ADD made"
    );
    del(&k).expect("second del");
}

#[test]
fn del_by_ip_removes_the_rules_whatever_their_table() {
    let (k, _) = node();
    let o = owner();
    pod::add_pod(&mut k.host(), &spec(&o, 7)).expect("add");
    let unrelated = Rule {
        priority: RULE_FROM_POD_PRIORITY,
        src: Some(host32(Ipv4Addr::new(10, 0, 32, 8))),
        dst: None,
        table: 7,
    };
    k.host().add_rule(&unrelated).expect("rule");
    pod::del_pod_by_ip(&mut k.host(), None, "eth0", &spec(&o, 7).host_veth, IP).expect("del");
    let host = k.state(HOST_NS);
    assert_eq!(host.rules, vec![unrelated]);
    assert!(host.link(NAME).is_none());
}
