//! vpc mode end to end in the lab: the article's observables (SEED-NOTES
//! §2 and §4), checked on the kernel state and traffic the real binaries make.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use common::*;
use ipnet::Ipv4Net;

fn sha1_prefix(s: &str) -> String {
    // An oracle independent of podwire's code: coreutils' sha1sum.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s '{s}' | sha1sum"))
        .output()
        .expect("sha1sum");
    String::from_utf8_lossy(&o.stdout)[..11].to_string()
}

fn describe_secondaries(lab: &Lab, instance_id: &str) -> BTreeSet<Ipv4Addr> {
    let xml = lab.ctl_ok(&[
        "lab",
        "ec2",
        "DescribeNetworkInterfaces",
        "Filter.1.Name=attachment.instance-id",
        &format!("Filter.1.Value.1={instance_id}"),
    ]);
    let mut out = BTreeSet::new();
    // <item><privateIpAddress>A</privateIpAddress><privateDnsName>..</privateDnsName><primary>false</primary></item>
    for item in xml.split("<item><privateIpAddress>").skip(1) {
        let ip = item.split('<').next().unwrap_or_default();
        if item.contains("<primary>false</primary>")
            && item.find("<primary>false</primary>") < item.find("</item>")
        {
            out.insert(ip.parse().expect("ip"));
        }
    }
    out
}

#[test]
fn article_shapes_addresses_routes_veths_and_traces() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-shape", &[]);
    let a: Ipv4Addr = lab.pod_add("web-a", "node-1", true).parse().expect("ip a");
    let b: Ipv4Addr = lab.pod_add("web-b", "node-1", true).parse().expect("ip b");
    let c: Ipv4Addr = lab.pod_add("web-c", "node-2", true).parse().expect("ip c");
    let subnet: Ipv4Net = "10.0.0.0/20".parse().expect("subnet");
    let st = lab.status();
    let nodes = st["nodes"].as_array().expect("nodes");
    let n1 = &nodes[0];
    let n2 = &nodes[1];
    let n1_ip: Ipv4Addr = n1["primary_ip"].as_str().expect("ip").parse().expect("ip");
    let n2_ip: Ipv4Addr = n2["primary_ip"].as_str().expect("ip").parse().expect("ip");

    // Pod IPs are in the node subnet and are secondary IPs of the node's
    // ENIs, as the cloud's DescribeNetworkInterfaces says.
    for ip in [a, b, c, n1_ip, n2_ip] {
        assert!(subnet.contains(&ip), "{ip} outside {subnet}");
    }
    let sec1 = describe_secondaries(&lab, n1["instance_id"].as_str().expect("id"));
    let sec2 = describe_secondaries(&lab, n2["instance_id"].as_str().expect("id"));
    assert!(
        sec1.contains(&a) && sec1.contains(&b) && !sec1.contains(&c),
        "{sec1:?}"
    );
    assert!(sec2.contains(&c) && !sec2.contains(&a), "{sec2:?}");

    // Node routes (SEED-NOTES §2).
    let ns1 = lab.node_ns(1);
    let routes = ip(&["-n", &ns1, "route"]);
    assert!(routes.contains("default via 10.0.0.1 dev eth0"), "{routes}");
    assert!(
        routes.contains(&format!(
            "10.0.0.0/20 dev eth0 proto kernel scope link src {n1_ip}"
        )),
        "{routes}"
    );
    let veth_a = format!("eni{}", sha1_prefix("default.web-a"));
    let veth_b = format!("eni{}", sha1_prefix("default.web-b"));
    assert!(
        routes.contains(&format!("{a} dev {veth_a} scope link")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("{b} dev {veth_b} scope link")),
        "{routes}"
    );
    assert!(
        !routes.lines().any(|l| l.starts_with(&format!("{c} "))),
        "remote pod must not have a host route: {routes}"
    );

    // Host veths: eni<11 hex>, MTU 9001, peer in the pod netns, no IPv4.
    let link = ip(&["-n", &ns1, "-d", "link", "show", &veth_a]);
    assert!(
        link.contains("mtu 9001")
            && link.contains("veth")
            && link.contains("link-netns pw-t-shape-pod-web-a"),
        "{link}"
    );
    assert_eq!(
        ip(&["-n", &ns1, "-4", "addr", "show", "dev", &veth_a]).trim(),
        ""
    );
    let eth0 = ip(&["-n", &ns1, "addr", "show", "eth0"]);
    assert!(
        eth0.contains(&format!("inet {n1_ip}/20")) && eth0.contains("mtu 9001"),
        "{eth0}"
    );

    // Pod side: /32, default via 169.254.1.1, permanent neighbour = host veth MAC.
    let pod_ns = "pw-t-shape-pod-web-a";
    assert!(ip(&["-n", pod_ns, "addr", "show", "eth0"]).contains(&format!("inet {a}/32")));
    let proutes = ip(&["-n", pod_ns, "route"]);
    assert!(
        proutes.contains("default via 169.254.1.1 dev eth0")
            && proutes.contains("169.254.1.1 dev eth0 scope link"),
        "{proutes}"
    );
    let host_mac = ip(&["-n", &ns1, "-br", "link", "show", &veth_a])
        .split_whitespace()
        .nth(2)
        .expect("mac")
        .to_string();
    let neigh = ip(&["-n", pod_ns, "neigh", "show", "169.254.1.1"]);
    assert!(
        neigh.contains(&host_mac) && neigh.contains("PERMANENT"),
        "{neigh} vs {host_mac}"
    );

    // Traces: same node 2 hops, across nodes 3 hops via the other node's
    // primary IP; the fabric is never a hop.
    let t = lab.trace("web-a", "web-b");
    assert_eq!(hop_ips(&t), vec![n1_ip.to_string(), b.to_string()], "{t}");
    let t = lab.trace("web-a", "web-c");
    assert_eq!(
        hop_ips(&t),
        vec![n1_ip.to_string(), n2_ip.to_string(), c.to_string()],
        "{t}"
    );
    assert_eq!(
        t["hops"][1]["name"],
        format!("ip-{}.ec2.internal", n2_ip.to_string().replace('.', "-"))
    );
    assert!(lab
        .ctl_ok(&["lab", "curl", "web-c", "web-a"])
        .contains("Welcome to podwire"));
}

#[test]
fn external_host_reaches_pods_only_when_the_node_security_group_lets_it() {
    if !require_root() {
        return;
    }
    // The article's exposure is the VPC CNI's behaviour: podwire shows it
    // only with `--external-pod-access allow` (its default, deny, is tested
    // in tests/exposure.rs).
    let closed = Lab::up("t-closed", &["--external-pod-access", "allow"]);
    closed.pod_add("web", "node-1", true);
    let o = closed.ctl(&["lab", "curl", "external", "web"]);
    assert!(
        !o.status.success(),
        "external reached a pod through a closed node SG"
    );
    // Nodes still reach it (same security group).
    assert!(closed
        .ctl_ok(&["lab", "curl", "node-2", "web"])
        .contains("Welcome to podwire"));
    // Opening the node SG to the external host exposes the pod (the article's warning 2).
    closed.ctl_ok(&["lab", "allow-external", "on"]);
    assert!(closed
        .ctl_ok(&["lab", "curl", "external", "web"])
        .contains("Welcome to podwire"));
    closed.ctl_ok(&["lab", "allow-external", "off"]);
    assert!(!closed
        .ctl(&["lab", "curl", "external", "web"])
        .status
        .success());
    drop(closed);

    let open = Lab::up(
        "t-open",
        &["--allow-external", "--external-pod-access", "allow"],
    );
    let ip = open.pod_add("web", "node-2", true);
    let page = open.ctl_ok(&["lab", "curl", "external", "web"]);
    assert!(page.contains("Welcome to podwire"), "{page}");
    let t = open.trace("external", "web");
    assert_eq!(hop_ips(&t).last(), Some(&ip), "{t}");
}

#[test]
fn enis_fill_in_order_secondary_eni_pods_route_right_and_the_28th_pod_fails() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-eni", &[]);
    lab.pod_add("far", "node-2", true);
    let mut ips = BTreeSet::new();
    for i in 0..27 {
        let ip = lab.pod_add(&format!("p{i}"), "node-1", i == 10 || i == 20);
        assert!(ips.insert(ip.clone()), "{ip} handed out twice");
    }
    let st = lab.status();
    let dev = |name: &str| -> u64 {
        st["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["name"] == name)
            .expect("pod")["device_index"]
            .as_u64()
            .expect("device")
    };
    // eth0 holds the first 9, eth1 the next 9, eth2 the rest.
    assert_eq!(
        (
            dev("p0"),
            dev("p8"),
            dev("p9"),
            dev("p17"),
            dev("p18"),
            dev("p26")
        ),
        (0, 0, 1, 1, 2, 2)
    );

    // Pods on secondary ENIs reach the other node's pod and the external host,
    // so their traffic left through the ENI that owns their address (the
    // fabric enforces source/dest check).
    for p in ["p10", "p20"] {
        assert!(
            lab.ctl_ok(&["lab", "curl", p, "far"]).contains("Welcome"),
            "{p} -> far"
        );
        assert!(
            lab.ctl_ok(&["lab", "curl", "far", p]).contains("Welcome"),
            "far -> {p}"
        );
        let ext = lab.status()["external"]["ip"]
            .as_str()
            .expect("ext")
            .to_string();
        let o = lab.ctl(&["lab", "exec", p, "--", "ping", "-c", "1", "-W", "2", &ext]);
        assert!(o.status.success(), "{p} -> external: {}", text(&o));
    }
    let rules = ip(&["-n", &lab.node_ns(1), "rule"]);
    let p10 = lab.status()["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "p10")
        .expect("p10")["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    assert!(
        rules.contains(&format!("from {p10} lookup 2"))
            && rules.contains(&format!("from all to {p10} lookup main")),
        "{rules}"
    );

    // The 28th pod: exhaustion error naming node, type and limit; no trace.
    let before_ns = lab.namespaces();
    let before_kernel = pod_wiring_snapshot(&lab.node_ns(1));
    let o = lab.ctl(&["lab", "pod", "add", "p27", "--node", "node-1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        "CNI error 100",
        "node-1",
        "m5.large",
        "3 ENIs x 9",
        "27 pod IPs",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    assert_eq!(lab.namespaces(), before_ns);
    assert_eq!(pod_wiring_snapshot(&lab.node_ns(1)), before_kernel);

    // Deleting a pod frees its address for the next one.
    let freed = lab.status()["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "p3")
        .expect("p3")["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    lab.ctl_ok(&["lab", "pod", "del", "p3"]);
    assert_eq!(lab.pod_add("p27", "node-1", false), freed);
}

#[test]
fn agent_restart_keeps_pods_working_and_never_hands_an_address_out_twice() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-restart", &[]);
    let a = lab.pod_add("a", "node-1", true);
    let b = lab.pod_add("b", "node-1", true);
    lab.pod_add("c", "node-2", true);
    lab.ctl_ok(&["lab", "agent", "stop", "node-1"]);
    // Running pods do not notice.
    assert!(lab.ctl_ok(&["lab", "curl", "c", "a"]).contains("Welcome"));
    // ADD without an agent fails clearly (try again later) and leaves nothing.
    let before = pod_wiring_snapshot(&lab.node_ns(1));
    let o = lab.ctl(&["lab", "pod", "add", "d", "--node", "node-1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("CNI error 11") && err.contains("not reachable"),
        "{err}"
    );
    assert_eq!(pod_wiring_snapshot(&lab.node_ns(1)), before);
    lab.ctl_ok(&["lab", "agent", "start", "node-1"]);
    assert!(lab.ctl_ok(&["lab", "curl", "c", "b"]).contains("Welcome"));
    let d = lab.pod_add("d", "node-1", false);
    let e = lab.pod_add("e", "node-1", false);
    let all: BTreeSet<&String> = [&a, &b, &d, &e].into_iter().collect();
    assert_eq!(
        all.len(),
        4,
        "duplicate address after restart: {a} {b} {d} {e}"
    );
    for p in ["a", "b", "d", "e"] {
        lab.ctl_ok(&["lab", "pod", "del", p]);
    }
    // Every DEL removed its veth and rules.
    let links = ip(&["-n", &lab.node_ns(1), "-o", "link"]);
    assert!(!links.contains(": eni"), "{links}");
}

fn lab_processes(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(marker) {
                out.push(c);
            }
        }
    }
    out
}

#[test]
fn a_failed_lab_up_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    // The agent binary is missing: `up` fails after the fabric, its cloud and
    // the nodes exist, and must take all of them down again.
    let o = Command::new(podwirectl())
        .env("PODWIRE_BIN_DIR", "/nonexistent/podwire-bin")
        .args(["lab", "up", "--name", "t-fail", "--mode", "vpc"])
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("podwire-agent"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ns: Vec<String> = ip(&["netns", "list"])
        .lines()
        .filter(|l| l.starts_with("pw-t-fail-"))
        .map(str::to_string)
        .collect();
    assert!(ns.is_empty(), "namespaces left: {ns:?}");
    assert!(!std::path::Path::new("/run/podwire/lab/t-fail").exists());
    assert!(lab_processes("/run/podwire/lab/t-fail").is_empty());

    // Bad options change nothing at all.
    let o = ctl(&[
        "lab",
        "up",
        "--name",
        "t-fail",
        "--mode",
        "vpc",
        "--instance-type",
        "m5.gigantic",
    ]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unknown instance type")
    );
    assert!(!std::path::Path::new("/run/podwire/lab/t-fail").exists());
}

#[test]
fn nodes_in_two_subnets_give_pods_addresses_of_their_own_subnet() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-2sub", &["--subnets", "10.0.0.0/20,10.0.16.0/20"]);
    let a: Ipv4Addr = lab.pod_add("a", "node-1", true).parse().expect("a");
    let b: Ipv4Addr = lab.pod_add("b", "node-2", true).parse().expect("b");
    let s1: Ipv4Net = "10.0.0.0/20".parse().expect("s1");
    let s2: Ipv4Net = "10.0.16.0/20".parse().expect("s2");
    let n1: Ipv4Addr = lab.node_ip("node-1").parse().expect("n1");
    let n2: Ipv4Addr = lab.node_ip("node-2").parse().expect("n2");
    assert!(s1.contains(&n1) && s1.contains(&a), "{n1} {a}");
    assert!(s2.contains(&n2) && s2.contains(&b), "{n2} {b}");
    assert_eq!(
        hop_ips(&lab.trace("a", "b")),
        vec![n1.to_string(), n2.to_string(), b.to_string()]
    );
    assert!(lab.ctl_ok(&["lab", "curl", "b", "a"]).contains("Welcome"));
    // A third node goes to the first subnet again, takes pods, and leaves
    // with its pods, its ENIs and its namespace.
    lab.ctl_ok(&["lab", "node", "add"]);
    assert!(s1.contains(&lab.node_ip("node-3").parse::<Ipv4Addr>().expect("n3")));
    lab.pod_add("c", "node-3", true);
    assert!(lab.ctl_ok(&["lab", "curl", "c", "b"]).contains("Welcome"));
    let id3 = lab.status()["nodes"][2]["instance_id"]
        .as_str()
        .expect("id")
        .to_string();
    lab.ctl_ok(&["lab", "node", "del", "node-3"]);
    let enis = lab.ctl_ok(&["lab", "ec2", "DescribeNetworkInterfaces"]);
    assert!(!enis.contains(&id3), "node-3's ENIs outlived it");
    assert!(!lab
        .namespaces()
        .iter()
        .any(|n| n.ends_with("node-3") || n.ends_with("pod-c")));
    assert!(lab.status()["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .all(|p| p["name"] != "c"));
}

#[test]
fn the_demo_runs_both_experiments_and_cleans_up() {
    if !require_root() {
        return;
    }
    let out = ctl_ok(&["lab", "demo", "--name", "t-dm"]);
    for want in [
        "Welcome to podwire!",
        "CNI error 100",
        "vxlan.podwire",
        "blackhole",
        "Side by side",
        // The article's exposure with the posture open, then podwire's
        // default closing it.
        "exposed with allow, closed by deny",
        "8951",
    ] {
        assert!(out.contains(want), "demo output lacks {want:?}:\n{out}");
    }
    let left: Vec<String> = ip(&["netns", "list"])
        .lines()
        .filter(|l| l.starts_with("pw-t-dm-"))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn with_a_warm_ip_target_the_agent_returns_surplus_addresses() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-warm", &["--nodes", "1", "--warm-ip-target", "2"]);
    let held = |lab: &Lab| -> usize {
        lab.status()["nodes"][0]["enis"]
            .as_array()
            .expect("enis")
            .iter()
            .map(|e| e["secondary_ips"].as_array().map_or(0, Vec::len))
            .sum()
    };
    let settle = |lab: &Lab, want: usize| {
        let t = std::time::Instant::now();
        while held(lab) != want && t.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(
            held(lab),
            want,
            "the node should hold its pods' addresses plus 2"
        );
    };
    settle(&lab, 2);
    for i in 0..5 {
        lab.pod_add(&format!("p{i}"), "node-1", false);
    }
    settle(&lab, 7);
    for i in 0..4 {
        lab.ctl_ok(&["lab", "pod", "del", &format!("p{i}")]);
    }
    settle(&lab, 3);
    // What was returned is gone from the VPC too, and the remaining pod works.
    let xml = lab.ctl_ok(&["lab", "ec2", "DescribeNetworkInterfaces"]);
    assert_eq!(xml.matches("<primary>false</primary>").count(), 3);
    lab.pod_add("q", "node-1", true);
    assert!(lab
        .ctl_ok(&["lab", "curl", "node-1", "q"])
        .contains("Welcome"));
}
