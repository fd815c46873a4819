//! Issue 10 §4 end to end: the external posture in both modes, and an
//! agent restart that opens nothing. The external host's connections are
//! made from a thread that entered the lab's `pw-<lab>-external` namespace;
//! every address probed belongs to a namespace the lab created.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{require_root, Lab};

/// A port no lab process uses: the test's own listener on a node.
const NODE_PORT: u16 = 18080;

fn enter(netns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{netns}")).expect("netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Whether a TCP connection from inside `netns` to `to` is established
/// within `wait`.
fn connects(netns: &str, to: &str, port: u16, wait: Duration) -> bool {
    let netns = netns.to_string();
    let addr: SocketAddr = format!("{to}:{port}").parse().expect("addr");
    std::thread::spawn(move || {
        enter(&netns);
        TcpStream::connect_timeout(&addr, wait).is_ok()
    })
    .join()
    .expect("connector")
}

/// Polls until `connects` gives `want`, or panics after `deadline`.
fn until(netns: &str, to: &str, port: u16, want: bool, deadline: Duration, what: &str) {
    let started = Instant::now();
    while connects(netns, to, port, Duration::from_millis(700)) != want {
        assert!(started.elapsed() < deadline, "{what}: still {}", !want);
    }
}

/// A TCP listener in a node's namespace (the node itself, not a pod),
/// accepting until the process ends.
fn listen_on_node(node_ns: &str) {
    let ns = node_ns.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind(("0.0.0.0", NODE_PORT)).expect("bind");
        tx.send(()).expect("ready");
        for s in l.incoming() {
            drop(s);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("node listener");
}

fn external(lab: &Lab) -> String {
    format!("pw-{}-external", lab.name)
}

/// vpc mode, the node security group open to the external host: by default
/// the external host reaches the node but not its pods; `allow` gives the
/// article's result; `deny` closes it again. Nodes and pods keep reaching
/// the pod throughout.
#[test]
fn vpc_default_posture_keeps_the_external_host_off_pods_and_allow_opens_them() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-expo-vpc", &["--allow-external"]);
    let web = lab.pod_add("web", "node-1", true);
    lab.pod_add("peer", "node-2", false);
    let ext = external(&lab);
    listen_on_node(&lab.node_ns(1));
    let node1 = lab.node_ip("node-1");
    assert!(
        connects(&ext, &node1, NODE_PORT, Duration::from_secs(2)),
        "the external host must reach the node itself (its security group is open)"
    );
    assert!(
        !connects(&ext, &web, 80, Duration::from_secs(2)),
        "the default posture let the external host reach a pod"
    );
    assert!(lab
        .ctl_ok(&["lab", "curl", "node-2", "web"])
        .contains("Welcome to podwire"));
    assert!(lab
        .ctl_ok(&["lab", "curl", "peer", "web"])
        .contains("Welcome to podwire"));

    lab.ctl_ok(&["lab", "external-pod-access", "allow"]);
    until(&ext, &web, 80, true, Duration::from_secs(10), "allow");
    assert!(lab
        .ctl_ok(&["lab", "curl", "external", "web"])
        .contains("Welcome to podwire"));

    lab.ctl_ok(&["lab", "external-pod-access", "deny"]);
    until(&ext, &web, 80, false, Duration::from_secs(10), "deny again");
    assert!(lab
        .ctl_ok(&["lab", "curl", "peer", "web"])
        .contains("Welcome to podwire"));
}

/// overlay mode: the external host never reaches pods, whatever the
/// posture, while it does reach the node.
#[test]
fn overlay_pods_are_never_reached_from_outside() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-expo-ovl", &["--mode", "overlay", "--allow-external"]);
    let web = lab.pod_add("web", "node-1", true);
    let ext = external(&lab);
    listen_on_node(&lab.node_ns(1));
    let node1 = lab.node_ip("node-1");
    assert!(connects(&ext, &node1, NODE_PORT, Duration::from_secs(2)));
    for posture in ["deny", "allow"] {
        lab.ctl_ok(&["lab", "external-pod-access", posture]);
        for _ in 0..3 {
            assert!(
                !connects(&ext, &web, 80, Duration::from_secs(1)),
                "{posture}: the external host reached an overlay pod"
            );
        }
        assert!(lab
            .ctl_ok(&["lab", "curl", "node-2", "web"])
            .contains("Welcome to podwire"));
    }
}

const ONLY_C_TO_A: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: only-c-to-a}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: c}}
"#;

/// Connects from `netns` to `to:80` over and over until `stop`; counts
/// (attempts, established).
fn probe_loop(
    netns: String,
    to: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        enter(&netns);
        let addr: SocketAddr = format!("{to}:80").parse().expect("addr");
        let (tries, ok) = (AtomicUsize::new(0), AtomicUsize::new(0));
        while !stop.load(Ordering::Acquire) {
            tries.fetch_add(1, Ordering::Relaxed);
            // On a lab's veths an answer takes well under a millisecond; a
            // dropped SYN gets none.
            if TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok() {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (tries.into_inner(), ok.into_inner())
    })
}

/// Policies and posture survive agent restarts with no window of openness:
/// probe loops run through three restarts of the agent of x/a's node, and
/// neither the external host nor x/b ever gets a connection to x/a, while
/// x/c (allowed) keeps getting them.
#[test]
fn an_agent_restart_opens_nothing() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-expo-rst", &["--allow-external"]);
    lab.ctl_ok(&["lab", "namespace", "add", "x"]);
    let mut ips = std::collections::BTreeMap::new();
    for (p, node) in [("a", "node-1"), ("b", "node-2"), ("c", "node-1")] {
        let ip = lab.ctl_ok(&[
            "lab",
            "pod",
            "add",
            &format!("x/{p}"),
            "--node",
            node,
            "--labels",
            &format!("pod={p}"),
            "--port",
            "http=80/tcp",
        ]);
        ips.insert(p, ip.trim().to_string());
    }
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, ONLY_C_TO_A).expect("policy file");
    common::ctl_ok(&[
        "policy",
        "apply",
        "-f",
        &file.display().to_string(),
        "--lab",
        &lab.name,
    ]);
    let pod_ns = |p: &str| format!("pw-{}-pod-x-{p}", lab.name);
    let a = ips["a"].clone();
    until(
        &pod_ns("b"),
        &a,
        80,
        false,
        Duration::from_secs(10),
        "policy",
    );
    until(
        &pod_ns("c"),
        &a,
        80,
        true,
        Duration::from_secs(10),
        "allowed",
    );

    let stop = Arc::new(AtomicBool::new(false));
    let outsider = probe_loop(external(&lab), a.clone(), Arc::clone(&stop));
    let denied = probe_loop(pod_ns("b"), a.clone(), Arc::clone(&stop));
    let allowed = probe_loop(pod_ns("c"), a.clone(), Arc::clone(&stop));
    for _ in 0..3 {
        lab.ctl_ok(&["lab", "agent", "start", "node-1"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Release);
    let (o_tries, o_ok) = outsider.join().expect("outsider");
    let (d_tries, d_ok) = denied.join().expect("denied");
    let (a_tries, a_ok) = allowed.join().expect("allowed");
    eprintln!(
        "probes during restarts: external {o_ok}/{o_tries}, x/b {d_ok}/{d_tries}, x/c {a_ok}/{a_tries}"
    );
    assert!(o_tries > 10 && d_tries > 10, "the loops probed too little");
    assert_eq!(
        o_ok, 0,
        "the external host got {o_ok} connections during restarts"
    );
    assert_eq!(d_ok, 0, "x/b got {d_ok} connections during restarts");
    assert!(
        a_ok > 0,
        "x/c got none of {a_tries}: the probe proves nothing"
    );
}
