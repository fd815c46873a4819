//! Kubernetes' semantics feature by feature, each checked through
//! `evaluate` and through the compiled per-node rules (which must agree).

mod common;

use std::net::Ipv4Addr;

use podwire_cluster::{ContainerPort, EndpointRecord, PodRef, Protocol};
use podwire_policy::{compile, evaluate, parse_documents, ClusterView, Peer};

fn pod(s: &str) -> Peer {
    Peer::Pod(PodRef::parse(s).expect("pod ref"))
}

fn with(yaml: &str) -> ClusterView {
    let mut v = common::view(&serde_json::Value::Null);
    v.policies = parse_documents(yaml).expect("valid policies");
    v
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n")
}

fn addr_of(view: &ClusterView, p: &Peer) -> (Ipv4Addr, Option<String>) {
    match p {
        Peer::Ip(ip) => (
            *ip,
            view.endpoints
                .iter()
                .find(|e| e.ip == *ip)
                .map(|e| e.node.clone()),
        ),
        Peer::Pod(r) => {
            let e = view
                .endpoints
                .iter()
                .find(|e| e.pod.as_ref() == Some(r))
                .expect("pod has an endpoint");
            (e.ip, Some(e.node.clone()))
        }
    }
}

/// Asserts the verdict, and that the compiled rules of the nodes involved
/// decide the same (unless the node itself sends: that is not forwarded).
fn check(
    view: &ClusterView,
    src: Peer,
    dst: Peer,
    port: u16,
    proto: Protocol,
    want: bool,
) -> Vec<String> {
    let v = evaluate(view, &src, &dst, port, proto);
    assert_eq!(
        v.allowed, want,
        "{src:?} -> {dst:?} {port}/{proto}: {:?}",
        v.reasons
    );
    let (s, sn) = addr_of(view, &src);
    let (d, dn) = addr_of(view, &dst);
    let own_node = dn
        .as_ref()
        .is_some_and(|n| view.node_addresses.get(n).is_some_and(|a| a.contains(&s)));
    if !own_node {
        let mut ok = true;
        for n in [sn, dn].into_iter().flatten() {
            ok &= common::node_allows(&compile(view, &n), s, d, port, proto);
        }
        assert_eq!(
            ok, want,
            "compiled rules disagree: {src:?} -> {dst:?} {port}/{proto}"
        );
    }
    v.reasons
}

#[test]
fn unselected_pods_are_open_and_reasons_say_so() {
    let v = with(&policy(
        "x",
        "deny",
        "  podSelector: {matchLabels: {pod: a}}",
    ));
    let r = check(&v, pod("y/a"), pod("x/b"), 80, Protocol::TCP, true);
    assert!(
        r.iter()
            .any(|r| r.contains("x/b is selected by no ingress policy")),
        "{r:?}"
    );
    let r = check(&v, pod("y/a"), pod("x/a"), 80, Protocol::TCP, false);
    assert!(
        r.iter().any(|r| r.contains("x/a is isolated by x/deny")),
        "{r:?}"
    );
}

#[test]
fn policies_stack_and_reasons_name_the_rule() {
    let v = with(&format!(
        "{}{}",
        policy("x", "deny", "  podSelector: {}"),
        policy("x", "allow-y", "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 81}]")
    ));
    let r = check(&v, pod("y/a"), pod("x/a"), 81, Protocol::TCP, true);
    assert!(
        r.iter()
            .any(|r| r.contains("allowed on 81/TCP by x/allow-y ingress[1]")),
        "{r:?}"
    );
    check(&v, pod("y/a"), pod("x/a"), 80, Protocol::TCP, false);
    check(&v, pod("z/c"), pod("x/a"), 80, Protocol::TCP, true);
    check(&v, pod("x/b"), pod("x/a"), 80, Protocol::TCP, false);
}

#[test]
fn port_ranges_and_protocols() {
    let v = with(&policy(
        "x",
        "range",
        "  podSelector: {}\n  ingress:\n  - ports: [{port: 8000, endPort: 8080}, {protocol: UDP, port: 53}, {protocol: SCTP}]",
    ));
    for (port, proto, want) in [
        (8000, Protocol::TCP, true),
        (8080, Protocol::TCP, true),
        (8081, Protocol::TCP, false),
        (7999, Protocol::TCP, false),
        (53, Protocol::UDP, true),
        (53, Protocol::TCP, false),
        (8000, Protocol::UDP, false),
        (9, Protocol::SCTP, true),
    ] {
        check(&v, pod("y/a"), pod("x/a"), port, proto, want);
    }
}

#[test]
fn named_ports_resolve_on_the_destination_pod() {
    let mut v = with(&format!(
        "{}{}",
        policy(
            "x",
            "in",
            "  podSelector: {}\n  ingress:\n  - ports: [{port: web}]"
        ),
        policy(
            "y",
            "out",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: web}]"
        ),
    ));
    // x/a serves "web" on 8080, x/b on 9090; x/c does not name it.
    for (name, port) in [("a", 8080), ("b", 9090)] {
        let p = v
            .pods
            .iter_mut()
            .find(|p| p.namespace == "x" && p.name == name)
            .expect("pod");
        p.ports.push(ContainerPort {
            name: Some("web".into()),
            port,
            protocol: Protocol::TCP,
        });
    }
    check(&v, pod("z/a"), pod("x/a"), 8080, Protocol::TCP, true);
    check(&v, pod("z/a"), pod("x/a"), 9090, Protocol::TCP, false);
    check(&v, pod("z/a"), pod("x/b"), 9090, Protocol::TCP, true);
    check(&v, pod("z/a"), pod("x/c"), 8080, Protocol::TCP, false);
    // Egress from y: resolved against each destination pod.
    check(&v, pod("y/a"), pod("x/b"), 9090, Protocol::TCP, true);
    check(&v, pod("y/a"), pod("x/b"), 8080, Protocol::TCP, false);
    check(&v, pod("y/a"), pod("z/a"), 8080, Protocol::TCP, false);
    // A named port never matches an address that is no pod.
    check(
        &v,
        pod("y/a"),
        Peer::Ip(Ipv4Addr::new(203, 0, 113, 5)),
        8080,
        Protocol::TCP,
        false,
    );
}

#[test]
fn ip_blocks_match_addresses_pods_included_minus_except() {
    let x_b = common::ip_of(&PodRef::parse("x/b").expect("ref"));
    let v = with(&policy(
        "y",
        "cidr",
        &format!("  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{x_b}/32]}}}}, {{ipBlock: {{cidr: 198.51.100.0/24}}}}]\n  policyTypes: [Ingress, Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}}}]"),
    ));
    check(&v, pod("x/a"), pod("y/a"), 80, Protocol::TCP, true);
    check(&v, pod("x/b"), pod("y/a"), 80, Protocol::TCP, false);
    check(
        &v,
        Peer::Ip(Ipv4Addr::new(198, 51, 100, 7)),
        pod("y/a"),
        80,
        Protocol::TCP,
        true,
    );
    check(
        &v,
        Peer::Ip(Ipv4Addr::new(192, 0, 2, 1)),
        pod("y/a"),
        80,
        Protocol::TCP,
        false,
    );
    check(
        &v,
        pod("y/a"),
        Peer::Ip(Ipv4Addr::new(203, 0, 113, 9)),
        443,
        Protocol::TCP,
        true,
    );
    check(
        &v,
        pod("y/a"),
        Peer::Ip(Ipv4Addr::new(203, 0, 113, 200)),
        443,
        Protocol::TCP,
        false,
    );
    check(&v, pod("y/a"), pod("x/a"), 80, Protocol::TCP, false);
}

#[test]
fn the_pods_own_node_always_reaches_it_other_nodes_do_not() {
    let v = with(&policy(
        "x",
        "deny",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
    ));
    let xa = PodRef::parse("x/a").expect("ref");
    let own = common::node_ip(common::node_of(&xa));
    let other = common::NODES
        .iter()
        .map(|n| common::node_ip(n))
        .find(|ip| *ip != own)
        .expect("another node");
    let r = check(&v, Peer::Ip(own), pod("x/a"), 80, Protocol::TCP, true);
    assert!(r.iter().any(|r| r.contains("from its own node")), "{r:?}");
    check(&v, Peer::Ip(other), pod("x/a"), 80, Protocol::TCP, false);
    // Egress to the pod's own node is not policed (the node's input path).
    let e = evaluate(&v, &pod("x/a"), &Peer::Ip(own), 10250, Protocol::TCP);
    assert!(e.allowed, "{:?}", e.reasons);
    check(&v, pod("x/a"), Peer::Ip(other), 10250, Protocol::TCP, false);
}

#[test]
fn pods_without_identity_or_records() {
    let mut v = with(&format!(
        "{}{}",
        policy(
            "x",
            "from-all-pods",
            "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}}]"
        ),
        policy("w", "deny", "  podSelector: {}"),
    ));
    // An endpoint with no Kubernetes identity: selected by nothing, matched
    // by no selector.
    let anon = Ipv4Addr::new(10, 1, 9, 9);
    v.endpoints.push(EndpointRecord {
        node: "node-1".into(),
        container_id: "anon".into(),
        ifname: "eth0".into(),
        ip: anon,
        pod: None,
    });
    // A pod with an endpoint but no PodRecord and no namespace record.
    let ghost = Ipv4Addr::new(10, 1, 9, 10);
    v.endpoints.push(EndpointRecord {
        node: "node-2".into(),
        container_id: "ghost".into(),
        ifname: "eth0".into(),
        ip: ghost,
        pod: Some(PodRef::parse("w/ghost").expect("ref")),
    });
    check(&v, Peer::Ip(anon), pod("x/a"), 80, Protocol::TCP, false);
    check(&v, pod("x/a"), Peer::Ip(anon), 80, Protocol::TCP, true);
    check(&v, Peer::Ip(ghost), pod("x/a"), 80, Protocol::TCP, true);
    check(&v, pod("x/a"), Peer::Ip(ghost), 80, Protocol::TCP, false);
    // Its namespace has only the name label.
    let v2 = {
        let mut v2 = v.clone();
        v2.policies = parse_documents(&format!(
            "{}{}",
            policy("x", "only-w", "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: w}}}]"),
            policy("x", "never-w", "  podSelector: {matchLabels: {pod: zzz}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: w}}}]"),
        ))
        .expect("valid");
        v2
    };
    check(&v2, Peer::Ip(ghost), pod("x/a"), 80, Protocol::TCP, true);
    check(&v2, pod("y/a"), pod("x/a"), 80, Protocol::TCP, false);
}

#[test]
fn match_expressions_notin_and_doesnotexist_hold_for_missing_keys() {
    let v = with(&policy(
        "x",
        "expr",
        "  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}, {key: tier, operator: DoesNotExist}]}\n  ingress: []\n  policyTypes: [Ingress]",
    ));
    check(&v, pod("y/a"), pod("x/a"), 80, Protocol::TCP, true);
    check(&v, pod("y/a"), pod("x/b"), 80, Protocol::TCP, false);
    let v = with(&policy(
        "x",
        "expr",
        "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {matchExpressions: [{key: colour, operator: NotIn, values: [red]}]}, namespaceSelector: {matchExpressions: [{key: ns, operator: Exists}]}}]",
    ));
    // No pod has "colour": NotIn holds for all of them, in every namespace.
    check(&v, pod("z/c"), pod("x/a"), 80, Protocol::TCP, true);
}
