//! The external posture with real packets (needs root): a node namespace
//! routing between a pod, an external host and a cluster peer, each in its
//! own `pwt-` namespace, removed by exact name when the test ends.

use std::io::Write;
use std::process::{Command, Stdio};

use podwire_dataplane::nft::{
    cluster_nets_script, ExternalPodAccess, Helpers, NodeRules, PodEgressGuard, POD_IFGROUP,
};

struct Lab {
    names: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "delete", n]).status();
        }
    }
}

fn root() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var_os("PODWIRE_SKIP_ROOT_TESTS").is_some(),
            "kernel tests need root (PODWIRE_SKIP_ROOT_TESTS=1 skips them)"
        );
        return false;
    }
    true
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all);
}

fn nft_in(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether one ping from `ns` to `dst` is answered within a second.
fn pings(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q", dst])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// node ⇄ pod (10.20.0.0/24, host veth in the pod group), node ⇄ external
/// host (192.0.2.0/24), node ⇄ cluster peer (198.51.100.0/24).
fn lab() -> (Lab, [String; 4]) {
    let p = format!("pwt-pos{}", std::process::id());
    let [node, pod, ext, peer] = ["n", "p", "x", "c"].map(|s| format!("{p}{s}"));
    let lab = Lab {
        names: vec![node.clone(), pod.clone(), ext.clone(), peer.clone()],
    };
    for n in &lab.names {
        run(&["ip", "netns", "add", n]);
        in_ns(n, &["ip", "link", "set", "lo", "up"]);
    }
    let link = |host: &str, other: &str, host_ip: &str, other_ip: &str| {
        run(&[
            "ip", "-n", &node, "link", "add", host, "type", "veth", "peer", "name", "eth0",
            "netns", other,
        ]);
        run(&["ip", "-n", &node, "addr", "add", host_ip, "dev", host]);
        run(&["ip", "-n", &node, "link", "set", host, "up"]);
        run(&["ip", "-n", other, "addr", "add", other_ip, "dev", "eth0"]);
        run(&["ip", "-n", other, "link", "set", "eth0", "up"]);
        let gw = host_ip.split('/').next().expect("gw");
        run(&["ip", "-n", other, "route", "add", "default", "via", gw]);
    };
    link("pwtp0", &pod, "10.20.0.1/24", "10.20.0.2/24");
    link("pwtx0", &ext, "192.0.2.1/24", "192.0.2.2/24");
    link("pwtc0", &peer, "198.51.100.1/24", "198.51.100.2/24");
    run(&[
        "ip",
        "-n",
        &node,
        "link",
        "set",
        "pwtp0",
        "group",
        &POD_IFGROUP.to_string(),
    ]);
    in_ns(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    (lab, [node, pod, ext, peer])
}

fn rules(access: ExternalPodAccess) -> NodeRules {
    NodeRules {
        pod_iface_prefix: "pwtp".into(),
        tunnel: None,
        guard: PodEgressGuard::default(),
        snat: None,
        external_pod_access: access,
        policy: None,
    }
}

#[test]
fn deny_drops_outsiders_and_keeps_node_pod_peer_replies_and_dnat() {
    if !root() {
        return;
    }
    let (_lab, [node, pod, ext, peer]) = lab();
    // Before podwire's rules: the article's exposure.
    assert!(pings(&ext, "10.20.0.2"), "the lab itself must route");

    nft_in(
        &node,
        &rules(ExternalPodAccess::Deny)
            .script_with(&Helpers::default())
            .expect("script"),
    );
    nft_in(
        &node,
        &cluster_nets_script(&["198.51.100.2/32".parse().expect("net")]),
    );
    assert!(
        !pings(&ext, "10.20.0.2"),
        "an external host reached the pod"
    );
    assert!(
        pings(&ext, "192.0.2.1"),
        "the node itself must stay reachable"
    );
    assert!(pings(&node, "10.20.0.2"), "node -> pod");
    assert!(pings(&peer, "10.20.0.2"), "a cluster address -> pod");
    assert!(
        pings(&pod, "192.0.2.2"),
        "replies to a connection the pod opened"
    );

    // What kube-proxy DNATs to the pod is not "from outside".
    nft_in(
        &node,
        "table ip pwt-kp {\n chain pre {\n type nat hook prerouting priority dstnat; policy accept;\n ip daddr 192.0.2.1 icmp type echo-request dnat to 10.20.0.2\n }\n}\n",
    );
    assert!(pings(&ext, "192.0.2.1"), "DNATed to the pod");
    nft_in(&node, "delete table ip pwt-kp\n");

    // The allow-list: the external host's network becomes part of the
    // cluster, in place.
    nft_in(
        &node,
        &cluster_nets_script(&[
            "198.51.100.2/32".parse().expect("net"),
            "192.0.2.0/24".parse().expect("net"),
        ]),
    );
    assert!(pings(&ext, "10.20.0.2"), "allow-listed");

    // Taken off the list again, and a re-apply of the node's rules (an
    // agent restart) keeps the set as the agent left it.
    nft_in(
        &node,
        &cluster_nets_script(&["198.51.100.2/32".parse().expect("net")]),
    );
    nft_in(
        &node,
        &rules(ExternalPodAccess::Deny)
            .script_with(&Helpers::default())
            .expect("script"),
    );
    assert!(!pings(&ext, "10.20.0.2"), "closed again");
    assert!(
        pings(&peer, "10.20.0.2"),
        "the restart kept the cluster set"
    );

    // allow: the VPC CNI's behaviour.
    nft_in(
        &node,
        &rules(ExternalPodAccess::Allow)
            .script_with(&Helpers::default())
            .expect("script"),
    );
    assert!(pings(&ext, "10.20.0.2"), "allow opens the pods");
}
