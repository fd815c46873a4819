//! The audit's reasoning on a small cluster: two nodes, three pods, an
//! outside host, a node group open to it on TCP 80 only, one policy.

use std::net::Ipv4Addr;

use podwire_cluster::records::Labels;
use podwire_cluster::{
    ContainerPort, EndpointRecord, NamespaceRecord, PodRecord, PodRef, Protocol,
};
use podwire_policy::{parse_documents, ClusterView};

use crate::model::{
    AuditInput, ExternalPodAccess, ExternalSource, Mode, NodeInfo, Report, SourceKind,
};
use crate::sg::{Eni, SecurityGroup, SecurityGroups, SgProtocol, SgRule, SgSource};
use crate::{audit, VXLAN_PORT};

const EXT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);

fn pod(ns: &str, name: &str, app: &str, node: &str, ip: [u8; 4]) -> (PodRecord, EndpointRecord) {
    let ports = vec![
        ContainerPort {
            name: Some("web".into()),
            port: 80,
            protocol: Protocol::TCP,
        },
        ContainerPort {
            name: Some("alt".into()),
            port: 81,
            protocol: Protocol::TCP,
        },
    ];
    (
        PodRecord {
            namespace: ns.into(),
            name: name.into(),
            labels: Labels::from([("app".to_string(), app.to_string())]),
            ports,
        },
        EndpointRecord {
            node: node.into(),
            container_id: format!("c-{name}"),
            ifname: "eth0".into(),
            ip: Ipv4Addr::from(ip),
            pod: Some(PodRef::new(ns, name).expect("ref")),
        },
    )
}

/// x/a on node-1 (isolated: only app=b and 10.0.1.0/24 on 80), x/b on
/// node-2, y/c on node-1.
fn input(mode: Mode, posture: ExternalPodAccess) -> AuditInput {
    let pods = [
        pod("x", "a", "a", "node-1", [10, 0, 1, 20]),
        pod("x", "b", "b", "node-2", [10, 0, 2, 20]),
        pod("y", "c", "c", "node-1", [10, 0, 1, 21]),
    ];
    let policies = parse_documents(
        r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"namespace":"x","name":"a-web"},
            "spec":{"podSelector":{"matchLabels":{"app":"a"}},"ingress":[
              {"from":[{"podSelector":{"matchLabels":{"app":"b"}}}]},
              {"from":[{"ipBlock":{"cidr":"10.0.1.0/24","except":["10.0.1.128/25"]}}],"ports":[{"port":"web"}]}]}}"#,
    )
    .expect("policy");
    let view = ClusterView {
        namespaces: vec![
            NamespaceRecord::new("x", Labels::new()).expect("ns"),
            NamespaceRecord::new("y", Labels::new()).expect("ns"),
        ],
        pods: pods.iter().map(|p| p.0.clone()).collect(),
        endpoints: pods.iter().map(|p| p.1.clone()).collect(),
        policies,
        node_addresses: Default::default(),
    };
    let node = |name: &str, ip: [u8; 4], tunnel: [u8; 4]| NodeInfo {
        name: name.into(),
        addresses: vec![Ipv4Addr::from(ip)],
        primary: Ipv4Addr::from(ip),
        tunnel: (mode == Mode::Overlay).then(|| Ipv4Addr::from(tunnel)),
    };
    let rule = |protocol, from_port, to_port, g: &str| SgRule {
        protocol,
        from_port,
        to_port,
        source: SgSource::Group(g.into()),
    };
    let sgs = SecurityGroups::new(
        vec![
            SecurityGroup {
                id: "sg-node".into(),
                name: "nodes".into(),
                rules: vec![
                    rule(SgProtocol::All, -1, -1, "sg-node"),
                    rule(SgProtocol::Tcp, 80, 80, "sg-ext"),
                ],
            },
            SecurityGroup {
                id: "sg-ext".into(),
                name: "ext".into(),
                rules: vec![],
            },
        ],
        vec![
            Eni {
                id: "eni-1".into(),
                groups: vec!["sg-node".into()],
                addresses: vec![
                    Ipv4Addr::new(10, 0, 1, 10),
                    Ipv4Addr::new(10, 0, 1, 20),
                    Ipv4Addr::new(10, 0, 1, 21),
                ],
                prefixes: vec![],
            },
            Eni {
                id: "eni-2".into(),
                groups: vec!["sg-node".into()],
                addresses: vec![Ipv4Addr::new(10, 0, 2, 10), Ipv4Addr::new(10, 0, 2, 20)],
                prefixes: vec![],
            },
            Eni {
                id: "eni-3".into(),
                groups: vec!["sg-ext".into()],
                addresses: vec![EXT],
                prefixes: vec![],
            },
        ],
    );
    AuditInput {
        mode,
        view,
        nodes: vec![
            node("node-1", [10, 0, 1, 10], [172, 16, 0, 1]),
            node("node-2", [10, 0, 2, 10], [172, 16, 1, 1]),
        ],
        posture,
        external_allow_cidrs: vec![],
        external: vec![ExternalSource {
            name: "external".into(),
            cidr: "10.0.1.5/32".parse().expect("net"),
        }],
        security_groups: Some(sgs),
        vxlan_port: VXLAN_PORT,
        only_pods: Vec::new(),
    }
}

fn reach(r: &Report, to: &str, port: u16, from: &str) -> (bool, Vec<String>) {
    let c = r
        .flat_claims()
        .into_iter()
        .find(|c| c.to == to && c.port == port && c.from.name == from)
        .unwrap_or_else(|| panic!("no claim {from} -> {to}:{port}"));
    (c.reachable, c.reasons)
}

#[test]
fn vpc_outside_host_passes_the_group_on_80_only_and_only_with_allow() {
    let r = audit(&input(Mode::Vpc, ExternalPodAccess::Allow));
    // y/c has no policy: the group decides (80 yes, 81 no).
    let (ok, why) = reach(&r, "y/c", 80, "external");
    assert!(ok, "{why:?}");
    assert!(
        why.iter()
            .any(|w| w.contains("sg-node") && w.contains("TCP 80 from group sg-ext")),
        "{why:?}"
    );
    let (ok, why) = reach(&r, "y/c", 81, "external");
    assert!(
        !ok && why
            .iter()
            .any(|w| w.starts_with("security groups: no rule")),
        "{why:?}"
    );
    // x/a: the ipBlock admits 10.0.1.5 on its named port web (80).
    assert!(reach(&r, "x/a", 80, "external").0);
    assert!(r.exposed.iter().any(|e| e.pod == "x/a" && e.port == 80));
    assert!(r
        .pods
        .iter()
        .find(|p| p.pod == "y/c")
        .is_some_and(|p| p.exposed));
    // With deny the posture drops it, whatever the group says.
    let r = audit(&input(Mode::Vpc, ExternalPodAccess::Deny));
    let (ok, why) = reach(&r, "y/c", 80, "external");
    assert!(
        !ok && why
            .iter()
            .any(|w| w.starts_with("posture: node node-1 has --external-pod-access deny")),
        "{why:?}"
    );
    assert!(r.exposed.is_empty());
    // ... unless the host is allow-listed.
    let mut i = input(Mode::Vpc, ExternalPodAccess::Deny);
    i.external_allow_cidrs = vec!["10.0.1.0/28".parse().expect("net")];
    assert!(reach(&audit(&i), "y/c", 80, "external").0);
}

#[test]
fn policies_decide_between_pods_and_nodes() {
    for mode in [Mode::Vpc, Mode::Overlay] {
        let r = audit(&input(mode, ExternalPodAccess::Deny));
        // x/a admits app=b on every port, not y/c (same node, not selected).
        assert!(reach(&r, "x/a", 81, "x/b").0, "{mode:?}");
        let (ok, why) = reach(&r, "x/a", 81, "y/c");
        assert!(
            !ok && why.iter().any(|w| w.contains("isolated by x/a-web")),
            "{why:?}"
        );
        // A pod always reaches itself.
        assert!(reach(&r, "x/a", 81, "x/a").0);
        // Its own node always; the other node only through the ipBlock:
        // in vpc mode node-2 sends from 10.0.2.10 (outside the block), in
        // overlay mode from its tunnel address (outside too).
        assert!(reach(&r, "x/a", 81, "node-1").0);
        assert!(!reach(&r, "x/a", 80, "node-2").0, "{mode:?}");
        // Unselected pods are open to every pod and node.
        assert!(reach(&r, "y/c", 81, "node-2").0);
        assert!(reach(&r, "x/b", 81, "y/c").0);
    }
}

#[test]
fn overlay_pods_are_never_reached_from_outside() {
    let r = audit(&input(Mode::Overlay, ExternalPodAccess::Allow));
    let (ok, why) = reach(&r, "y/c", 80, "external");
    assert!(!ok && why[0].contains("has no route"), "{why:?}");
    assert!(r.exposed.is_empty());
    // Cross-node pod traffic goes through the tunnel between the nodes.
    let (_, why) = reach(&r, "x/b", 80, "x/a");
    assert!(why.iter().any(|w| w.contains("VXLAN")), "{why:?}");
}

#[test]
fn outside_ranges_are_split_where_answers_differ() {
    let mut i = input(Mode::Vpc, ExternalPodAccess::Allow);
    i.security_groups = None;
    i.external = vec![ExternalSource {
        name: "internet".into(),
        cidr: "0.0.0.0/0".parse().expect("net"),
    }];
    let r = audit(&i);
    let a80: Vec<_> = r
        .flat_claims()
        .into_iter()
        .filter(|c| c.to == "x/a" && c.port == 80 && c.from.kind == SourceKind::External)
        .collect();
    // Inside 10.0.1.0/25 (minus the cluster) the ipBlock admits; the
    // exception and everything else not.
    let inside: Vec<_> = a80.iter().filter(|c| c.reachable).collect();
    assert!(!inside.is_empty());
    for c in &inside {
        let n = c.from.cidr.expect("cidr");
        assert!(
            "10.0.1.0/25"
                .parse::<ipnet::Ipv4Net>()
                .expect("net")
                .contains(&n),
            "{n}"
        );
        assert!(![
            Ipv4Addr::new(10, 0, 1, 20),
            Ipv4Addr::new(10, 0, 1, 21),
            Ipv4Addr::new(10, 0, 1, 10)
        ]
        .contains(&c.from.ip));
    }
    assert!(a80
        .iter()
        .any(|c| !c.reachable && c.from.cidr == Some("10.0.1.128/25".parse().expect("net"))));
    assert!(r
        .notes
        .iter()
        .any(|n| n.contains("security groups not given")));
}

#[test]
fn only_the_pods_asked_about_are_audited() {
    let mut i = input(Mode::Vpc, ExternalPodAccess::Allow);
    i.only_pods = vec![PodRef::new("x", "b").expect("ref")];
    let r = audit(&i);
    let pods: Vec<&str> = r.pods.iter().map(|p| p.pod.as_str()).collect();
    assert_eq!(pods, ["x/b"]);
    // Every source is still asked: 1 outside, 2 nodes, 3 pods, 2 ports.
    assert_eq!(r.claims, 12);
}
