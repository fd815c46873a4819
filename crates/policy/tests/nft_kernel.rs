//! The rendered nftables text against the kernel (needs root): `nft -c`
//! accepts it inside podwire's table, and real TCP connections between
//! "pods" (network namespaces on veths, host side in group 0x7077, routed
//! by a "node" namespace) succeed or fail as `evaluate` and the upstream
//! tables say. Every namespace is `pwt-pol-<pid>-…`, removed by name.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podwire_cluster::{PodRef, Protocol};
use podwire_policy::{
    compile, evaluate, parse_documents, render_nft, ClusterView, NftPolicy, Peer,
};

const NODE: &str = "node-1";
/// The node's address towards its pods (the pods' gateway).
const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("PODWIRE_SKIP_ROOT_TESTS").is_some(),
        "kernel tests need root (PODWIRE_SKIP_ROOT_TESTS=1 skips them)"
    );
    false
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `nft -f -` (with `extra` args, e.g. `-c`) inside `ns`.
fn nft_in(ns: &str, extra: &[&str], script: &str) -> Result<(), String> {
    let mut args = vec!["netns", "exec", ns, "nft"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-f", "-"]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write script");
    let out = child.wait_with_output().expect("nft");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Network namespaces created by this test, deleted by exact name on drop.
struct Netns(Vec<String>);

impl Netns {
    fn add(&mut self, name: String) -> String {
        // A leftover of a crashed run of this very process id: ours by name.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        self.0.push(name.clone());
        name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Runs `f` on a thread that has entered `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// The base ruleset of podwire's table, as the dataplane writes it.
fn base_ruleset() -> String {
    podwire_dataplane::nft::NodeRules {
        pod_iface_prefix: "pwtv".into(),
        tunnel: None,
        guard: Default::default(),
        snat: None,
        // The posture has its own kernel tests (dataplane); here only the
        // policy decides.
        external_pod_access: podwire_dataplane::nft::ExternalPodAccess::Allow,
        policy: None,
    }
    .script()
    .expect("base script")
}

/// `tag` keeps the tests of one process apart.
fn node_ns(nets: &mut Netns, tag: &str) -> String {
    let ns = nets.add(format!("pwt-pol-{}-{tag}", std::process::id()));
    nft_in(&ns, &[], &base_ruleset()).expect("base ruleset");
    ns
}

#[test]
fn rendered_policy_of_every_case_passes_nft_check_and_updates_in_place() {
    if !root() {
        return;
    }
    let mut nets = Netns(Vec::new());
    let ns = node_ns(&mut nets, "chk");
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/netpol/cases.json"
        ))
        .expect("cases.json"),
    )
    .expect("json");
    let mut previous: Option<NftPolicy> = None;
    for (n, case) in cases.iter().enumerate() {
        let list =
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": case["policies"]});
        let mut view = common::view(&case["extraLabels"]);
        view.policies =
            parse_documents(&common::fill_placeholders(list.to_string())).expect("policies");
        for node in common::NODES {
            let p = render_nft(&compile(&view, node));
            // Every other update as after an agent restart: what was there
            // is known only from the table's listing.
            let known = if n % 2 == 0 {
                previous.clone()
            } else {
                Some(NftPolicy::existing_from_listing(&list_table(&ns)))
            };
            let script = p.script(known.as_ref());
            nft_in(&ns, &["-c"], &script)
                .unwrap_or_else(|e| panic!("{}: nft -c: {e}\n{script}", case["name"]));
            nft_in(&ns, &[], &script)
                .unwrap_or_else(|e| panic!("{}: nft: {e}\n{script}", case["name"]));
            assert_helpers_are_exactly(&list_table(&ns), &p);
            previous = Some(p);
        }
    }
    // Back to no policy: every helper chain and set of the last one is gone.
    let empty = render_nft(&compile(&ClusterView::default(), NODE));
    nft_in(&ns, &[], &empty.script(previous.as_ref())).expect("to empty");
    let listed = list_table(&ns);
    assert!(
        !listed.contains("np-c") && !listed.contains("np-s"),
        "{listed}"
    );
    assert!(listed.contains("chain network-policy"), "{listed}");
    // An agent restart: the dataplane's ruleset and the policy part, in one
    // transaction, over what the table holds; the policy is in force after
    // it (and, the transaction being atomic, at every moment of it).
    let case = cases
        .iter()
        .find(|c| c["name"] == "ingress-and-egress-same-policy-probe-80")
        .expect("case");
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": case["policies"]});
    let mut view = common::view(&serde_json::Value::Null);
    view.policies = parse_documents(&list.to_string()).expect("policies");
    let p = render_nft(&compile(&view, NODE));
    nft_in(&ns, &[], &p.script(None)).expect("before the restart");
    let known = NftPolicy::existing_from_listing(&list_table(&ns));
    let restart = format!("{}{}", base_ruleset(), p.script(Some(&known)));
    assert!(
        !restart.contains("add chain ip podwire np-c"),
        "the table already has them"
    );
    nft_in(&ns, &[], &restart).expect("restart transaction");
    let listed = list_table(&ns);
    assert_helpers_are_exactly(&listed, &p);
    assert!(
        listed.contains("vmap @np-ingress") && listed.contains(" : jump np-c"),
        "{listed}"
    );
}

fn list_table(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "ip", "podwire"])
        .output()
        .expect("list");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The table holds the helper chains and sets of `p` and no others.
fn assert_helpers_are_exactly(listing: &str, p: &NftPolicy) {
    let mut listed: Vec<String> = NftPolicy::existing_from_listing(listing)
        .objects
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    let mut want: Vec<String> = p.objects.iter().map(|o| o.name().to_string()).collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want, "{listing}");
}

struct Lab {
    nets: Netns,
    node: String,
    pod_ns: std::collections::BTreeMap<PodRef, String>,
}

/// One node namespace routing for the 9 pods of the upstream model, each in
/// its own namespace on a veth whose host side is in the pods' group.
fn lab() -> Lab {
    let mut nets = Netns(Vec::new());
    let node = node_ns(&mut nets, "node");
    run(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let mut pod_ns = std::collections::BTreeMap::new();
    for (i, r) in common::all_pods().into_iter().enumerate() {
        let ns = nets.add(format!(
            "pwt-pol-{}-{}{}",
            std::process::id(),
            r.namespace,
            r.name
        ));
        let host = format!("pwtv{i}");
        let ip = common::ip_of(&r).to_string();
        run(&[
            "ip", "-n", &node, "link", "add", &host, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        run(&[
            "ip", "-n", &node, "link", "set", &host, "group", "0x7077", "up",
        ]);
        run(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{GATEWAY}/32"),
            "dev",
            &host,
        ]);
        run(&[
            "ip",
            "-n",
            &node,
            "route",
            "add",
            &format!("{ip}/32"),
            "dev",
            &host,
        ]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            &format!("{GATEWAY}/32"),
            "dev",
            "eth0",
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY.to_string(),
            "dev",
            "eth0",
        ]);
        for port in [80u16, 81] {
            let addr = SocketAddr::from((common::ip_of(&r), port));
            let (tx, rx) = std::sync::mpsc::channel();
            // Each listener lives until the process ends; it only accepts.
            in_netns(&ns, move || {
                let l = TcpListener::bind(addr).expect("bind");
                tx.send(()).expect("ready");
                for c in l.incoming() {
                    drop(c);
                }
            });
            rx.recv_timeout(Duration::from_secs(10))
                .expect("listener up");
        }
        pod_ns.insert(r, ns);
    }
    Lab { nets, node, pod_ns }
}

/// Connects from `ns` to `to`: true when the handshake completes within
/// the deadline (a dropped SYN never completes).
fn connects(ns: &str, to: SocketAddr) -> std::thread::JoinHandle<bool> {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(1500)).is_ok()
    })
}

#[test]
fn real_connections_follow_the_policies() {
    if !root() {
        return;
    }
    let lab = lab();
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/netpol/cases.json"
        ))
        .expect("cases.json"),
    )
    .expect("json");
    let chosen = [
        "ingress-and-egress-same-policy-probe-80",
        "egress-named-port-80-probe-80",
        "egress-ipblock-with-except",
        "ingress-podselector-AND-namespaceselector-matchlabels",
        "ingress-named-port-81-probe-80",
        "egress-port-80-plus-allow-all-probe-81",
    ];
    let mut runs: Vec<serde_json::Value> = chosen
        .iter()
        .map(|n| {
            cases
                .iter()
                .find(|c| c["name"] == *n)
                .expect("case exists")
                .clone()
        })
        .collect();
    // Ours: x's pods may send anywhere (an allow in the egress part), y's
    // pods receive only from y on 80. Between two pods of one node the
    // egress allow must not skip the ingress check.
    runs.push(serde_json::json!({
        "name": "egress-allow-must-not-skip-ingress",
        "ports": [80],
        "policies": [
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "out-all", "namespace": "x"},
             "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "in-y", "namespace": "y"},
             "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "serve-80-tcp"}]}]}}
        ]
    }));
    let mut previous: Option<NftPolicy> = None;
    let mut failures = Vec::new();
    for case in &runs {
        let name = case["name"].as_str().expect("name");
        let list =
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": case["policies"]});
        let mut view = common::view(&case["extraLabels"]);
        view.policies =
            parse_documents(&common::fill_placeholders(list.to_string())).expect("policies");
        // All nine pods on this one node: pod-to-pod traffic passes both the
        // egress and the ingress part of the same node's chain.
        for e in &mut view.endpoints {
            e.node = NODE.into();
        }
        view.node_addresses = [(NODE.to_string(), vec![GATEWAY])].into();
        let p = render_nft(&compile(&view, NODE));
        nft_in(&lab.node, &[], &p.script(previous.as_ref())).expect("apply policy");
        previous = Some(p);
        let port = u16::try_from(case["ports"][0].as_u64().expect("port")).expect("port");
        let mut probes = Vec::new();
        for (src, sns) in &lab.pod_ns {
            for dst in lab.pod_ns.keys() {
                if src == dst {
                    continue; // a pod reaching itself never leaves its namespace
                }
                let v = evaluate(
                    &view,
                    &Peer::Pod(src.clone()),
                    &Peer::Pod(dst.clone()),
                    port,
                    Protocol::TCP,
                );
                let want = v.allowed;
                if let Some(table) = case["expect"][src.to_string()][dst.to_string()].as_bool() {
                    assert_eq!(want, table, "{name}: evaluate {src} -> {dst}");
                }
                let h = connects(sns, SocketAddr::from((common::ip_of(dst), port)));
                probes.push((src.clone(), dst.clone(), want, h));
            }
            // The node itself always reaches its pods (kubelet probes).
        }
        for dst in lab.pod_ns.keys() {
            let h = connects(&lab.node, SocketAddr::from((common::ip_of(dst), port)));
            let v = evaluate(
                &view,
                &Peer::Ip(GATEWAY),
                &Peer::Pod(dst.clone()),
                port,
                Protocol::TCP,
            );
            assert!(v.allowed, "{:?}", v.reasons);
            probes.push((
                PodRef {
                    namespace: "node".into(),
                    name: NODE.into(),
                },
                dst.clone(),
                true,
                h,
            ));
        }
        let started = Instant::now();
        for (src, dst, want, h) in probes {
            let got = h.join().expect("probe thread");
            if got != want {
                failures.push(format!(
                    "{name}: {src} -> {dst}:{port} connected={got}, want {want}"
                ));
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A pod whose endpoint the node does not know yet (its rules do not
    // exist) neither sends nor receives; the others are unaffected.
    let mut view = common::view(&serde_json::Value::Null);
    view.endpoints
        .retain(|e| e.pod.as_ref().is_none_or(|p| p.to_string() != "x/c"));
    for e in &mut view.endpoints {
        e.node = NODE.into();
    }
    let p = render_nft(&compile(&view, NODE));
    nft_in(&lab.node, &[], &p.script(previous.as_ref())).expect("apply policy");
    let pod = |s: &str| PodRef::parse(s).expect("ref");
    for (src, dst, want) in [
        ("x/a", "x/c", false),
        ("x/c", "x/a", false),
        ("x/a", "x/b", true),
    ] {
        let got = connects(
            &lab.pod_ns[&pod(src)],
            SocketAddr::from((common::ip_of(&pod(dst)), 80)),
        )
        .join()
        .expect("probe");
        assert_eq!(got, want, "unknown pod: {src} -> {dst}");
    }
    drop(lab.nets);
}
