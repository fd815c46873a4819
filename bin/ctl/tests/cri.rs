//! containerd's CRI plugin drives podwire the way a kubelet does (issue 7
//! §1), in a vpc lab and in an overlay lab: a pod sandbox gets podwire's
//! address and is reached from a lab pod on the other node; a second
//! attempt of the same pod starts while the first is stopped but not yet
//! removed, and removing the first leaves the second wired and owned by its
//! own sandbox; once both are gone nothing of them is left.

mod common;
mod crirt;
#[allow(dead_code)]
mod rt;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use crirt::client::{pb::PodSandboxState, Cri};
use crirt::{CriContainerd, NETWORK};
use rt::{assigned, check_address, eventually};

/// node-1's agent socket, from `lab status`.
fn agent_socket(lab: &Lab) -> String {
    lab.status()["nodes"][0]["agent_socket"]
        .as_str()
        .expect("agent_socket")
        .to_string()
}

/// The sandbox's address from PodSandboxStatus; it must be ready.
fn sandbox_ip(cri: &Cri, id: &str) -> Ipv4Addr {
    let st = cri.status(id);
    assert_eq!(st.state(), PodSandboxState::SandboxReady, "{id}: {st:?}");
    let ip = st.network.as_ref().map(|n| n.ip.as_str()).unwrap_or("");
    ip.parse()
        .unwrap_or_else(|_| panic!("sandbox {id} reports no IPv4 address: {st:?}"))
}

/// Polls until the lab pod `from` gets an answer to a ping of `addr`.
fn reachable(lab: &Lab, from: &str, addr: Ipv4Addr, deadline: Instant) {
    let a = addr.to_string();
    let mut last = String::new();
    let ok = eventually(deadline, || {
        let o = lab.ctl(&["lab", "exec", from, "--", "ping", "-c", "1", "-W", "1", &a]);
        last = format!(
            "{}: {}{}",
            o.status,
            text(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        o.status.success()
    });
    assert!(ok, "{from} does not reach the sandbox at {addr}: {last}");
}

/// The alias of the host link that node `ns` routes `addr` through: the
/// attachment that owns it (what podwire's CHECK verifies).
fn host_link_alias(ns: &str, addr: Ipv4Addr) -> (String, String) {
    let routes: serde_json::Value = serde_json::from_str(&ip(&[
        "-j",
        "-n",
        ns,
        "-4",
        "route",
        "get",
        &addr.to_string(),
    ]))
    .expect("route json");
    let dev = routes[0]["dev"]
        .as_str()
        .unwrap_or_else(|| panic!("no route to {addr} on {ns}: {routes}"))
        .to_string();
    let links: serde_json::Value =
        serde_json::from_str(&ip(&["-j", "-n", ns, "link", "show", "dev", &dev]))
            .expect("link json");
    let alias = links[0]["ifalias"].as_str().unwrap_or("").to_string();
    (dev, alias)
}

/// When a test fails half-way, its sandboxes go through the runtime
/// (dropped before containerd and the lab).
struct RemoveAll<'a>(&'a Cri);

impl Drop for RemoveAll<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.remove_all();
        }
    }
}

/// From the sandbox's own network namespace (the pod's): TCP to the web pod
/// on the other node (which sees the pod's own address), TCP back from it,
/// and a trace from the web pod shaped like one to a lab pod on node-1.
fn talks_like_a_pod(lab: &Lab, pid: &i32, addr: Ipv4Addr, deadline: Instant) {
    let netns = format!("--net=/proc/{pid}/ns/net");
    let web = lab.pod_ip("web");
    let out = std::process::Command::new("nsenter")
        .args([&netns, "sh", "-c"])
        .arg(format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 10 {web} 80"
        ))
        .output()
        .expect("nc out");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(&format!("from {addr}")),
        "the web pod did not answer the sandbox {addr} directly: {page}"
    );
    // In: a listener in the sandbox, reached from the web pod.
    let mut listener = std::process::Command::new("nsenter")
        .args([&netns, "busybox", "nc", "-l", "-p", "7777"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("listener");
    let send = format!("echo pwt-hello | busybox nc -w 3 {addr} 7777");
    let reached = eventually(deadline, || {
        lab.ctl(&["lab", "exec", "web", "--", "sh", "-c", &send])
            .status
            .success()
    });
    let _ = listener.kill();
    let got = listener.wait_with_output().expect("listener output");
    assert!(
        reached && String::from_utf8_lossy(&got.stdout).contains("pwt-hello"),
        "the sandbox {addr} was not reached from the web pod"
    );
    // Traced like a lab pod on the same node.
    let peer = lab.pod_ip("peer");
    let to_peer = hop_ips(&lab.trace("web", &peer));
    let to_sandbox = hop_ips(&lab.trace("web", &addr.to_string()));
    assert_eq!(to_sandbox.last(), Some(&addr.to_string()), "{to_sandbox:?}");
    assert_eq!(
        to_sandbox[..to_sandbox.len() - 1],
        to_peer[..to_peer.len() - 1],
        "the sandbox traces unlike the lab pod"
    );
}

fn cri(lab_name: &str, mode: &str) {
    if !require_root() {
        return;
    }
    let lab = Lab::up(lab_name, &["--mode", mode, "--nodes", "2"]);
    lab.pod_add("web", "node-2", true);
    lab.pod_add("peer", "node-1", false);
    let node = lab.node_ns(1);
    let wiring_before = pod_wiring_snapshot(&node);
    let assigned_before = assigned(&lab, "node-1");
    let ctd = CriContainerd::start(&node, mode, &agent_socket(&lab));
    let deadline = Instant::now() + Duration::from_secs(120);
    let cri = Cri::connect(&ctd.sock(), Instant::now() + Duration::from_secs(30));
    let _cleanup = RemoveAll(&cri);
    let (name, ns, uid) = ("pwt-web", "pwt-ns", format!("pwt-uid-{lab_name}"));

    // Attempt 0: podwire's address, reached from the other node.
    let id0 = cri.run_pod_sandbox(name, ns, &uid, 0);
    let ip0 = sandbox_ip(&cri, &id0);
    check_address(&lab, mode, ip0);
    reachable(&lab, "web", ip0, deadline);
    assert!(
        eventually(deadline, || assigned(&lab, "node-1") == assigned_before + 1),
        "the agent does not count {ip0} as assigned"
    );

    // Attempt 1 while attempt 0 is stopped but not yet removed.
    // StopPodSandbox reclaims the network (the CNI DEL) before removal.
    cri.stop(&id0);
    assert!(
        eventually(deadline, || assigned(&lab, "node-1") == assigned_before),
        "StopPodSandbox left {ip0} assigned (before: {assigned_before}, now: {})",
        assigned(&lab, "node-1")
    );
    let id1 = cri.run_pod_sandbox(name, ns, &uid, 1);
    let listed = cri.list();
    assert!(
        listed.iter().any(|(id, _)| *id == id0) && listed.iter().any(|(id, _)| *id == id1),
        "both attempts should be listed: {listed:?}"
    );
    cri.remove(&id0);
    let ip1 = sandbox_ip(&cri, &id1);
    check_address(&lab, mode, ip1);
    reachable(&lab, "web", ip1, deadline);
    talks_like_a_pod(&lab, &ctd.sandbox_pid(&id1), ip1, deadline);
    let (dev, alias) = host_link_alias(&node, ip1);
    assert_eq!(
        alias,
        format!("podwire {NETWORK} {id1} eth0"),
        "{dev}, the host link to attempt 1 ({ip1}), is not owned by its sandbox"
    );
    assert!(
        eventually(deadline, || assigned(&lab, "node-1") == assigned_before + 1),
        "the agent should hold exactly attempt 1's address, holds {} (before: {assigned_before})",
        assigned(&lab, "node-1")
    );

    // Gone: nothing of either attempt is left.
    cri.stop(&id1);
    cri.remove(&id1);
    assert_eq!(cri.list(), vec![], "the runtime still lists sandboxes");
    let settled = eventually(deadline, || {
        pod_wiring_snapshot(&node) == wiring_before && assigned(&lab, "node-1") == assigned_before
    });
    assert!(
        settled,
        "left behind:\nbefore: {wiring_before}\nafter:  {}\nassigned before {assigned_before}, now {}\ncontainerd log:\n{}",
        pod_wiring_snapshot(&node),
        assigned(&lab, "node-1"),
        ctd.log()
    );
    eprintln!("attempt 0 {id0} at {ip0}, attempt 1 {id1} at {ip1} via {dev}");
}

#[test]
fn cri_vpc() {
    cri("t-crivpc", "vpc");
}

#[test]
fn cri_overlay() {
    cri("t-criov", "overlay");
}
