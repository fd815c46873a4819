//! Real container runtimes driving podwire in a lab: the same scenario for
//! each runtime and mode. A container on node-1 gets its address, reaches a
//! lab pod on node-2 over TCP, is reached back from it, traces like a lab
//! pod on its node, and once the runtime has removed it nothing of it is
//! left on the node or in the agent.

pub mod containerd;
pub mod image;
pub mod podman;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::common::{hop_ips, ip, pod_wiring_snapshot, Lab};

/// A container started by a runtime, running [`script`].
pub trait Container {
    /// All the container printed so far.
    fn output(&mut self) -> String;
    /// Waits (until `deadline`) for the container to end, and for the
    /// runtime to remove it, its network with it.
    fn remove(&mut self, deadline: Instant);
}

/// The TCP port the container listens on.
const PORT: u16 = 7777;
/// What the lab pod sends the container.
const HELLO: &str = "pwt-hello-from-web";

/// The container's program (busybox sh). The runtime may wire the network
/// after the process starts (`ctr run --cni` does), so it first waits for
/// its address; then an HTTP GET to the web pod, then one connection in.
/// The listener's stdin is a FIFO the shell holds open: the runtime's stdin
/// is at EOF, and busybox nc answers EOF on stdin by closing its side of
/// the connection, which let the client quit before it had sent a byte.
pub fn script(web_ip: &str) -> String {
    format!(
        r#"i=0
until ip -4 -o addr show dev eth0 2>/dev/null | grep -q inet; do
  i=$((i+1)); [ $i -lt 300 ] || {{ echo NOADDR; exit 3; }}; sleep 0.1
done
echo "ADDR $(ip -4 -o addr show dev eth0)"
printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 10 {web_ip} 80 | grep answered | sed 's/^/OUT /'
mkfifo /tmp/hold
nc -l -p {PORT} < /tmp/hold | sed 's/^/IN /' &
exec 3> /tmp/hold
echo LISTEN
wait
echo DONE
"#
    )
}

/// The first line of `out` that starts with `tag`, without it.
fn line_with(out: &str, tag: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(tag))
        .map(|l| l.trim().to_string())
}

/// Polls the container's output for a `tag` line until `deadline`.
fn wait_line(c: &mut dyn Container, tag: &str, deadline: Instant) -> String {
    loop {
        let out = c.output();
        if let Some(l) = line_with(&out, tag) {
            return l;
        }
        assert!(
            !out.contains("NOADDR"),
            "the container got no address:\n{out}"
        );
        assert!(
            Instant::now() < deadline,
            "no {tag:?} line from the container in time:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent's count of assigned addresses on `node`, from `lab status`.
pub fn assigned(lab: &Lab, node: &str) -> u64 {
    let st = lab.status();
    let n = st["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == node)
        .expect("node");
    n["agent"]["assigned_ips"]
        .as_u64()
        .unwrap_or_else(|| panic!("no assigned_ips for {node}: {}", n["agent"]))
}

/// Polls until `f` holds or `deadline` passes; returns whether it held.
pub fn eventually(deadline: Instant, mut f: impl FnMut() -> bool) -> bool {
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The container's address is podwire's: a secondary address of node-1's
/// ENIs (vpc), or an address of node-1's block inside the pod CIDR
/// (overlay).
pub fn check_address(lab: &Lab, mode: &str, addr: Ipv4Addr) {
    let st = lab.status();
    let node = st["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == "node-1")
        .expect("node-1");
    if mode == "vpc" {
        let secondaries: Vec<String> = node["enis"]
            .as_array()
            .expect("enis")
            .iter()
            .flat_map(|e| e["secondary_ips"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        assert!(
            secondaries.contains(&addr.to_string()),
            "{addr} is not a secondary address of node-1's ENIs: {secondaries:?}"
        );
    } else {
        let cidr: Ipv4Net = st["pod_cidr"]
            .as_str()
            .expect("pod_cidr")
            .parse()
            .expect("cidr");
        assert!(
            cidr.contains(&addr),
            "{addr} is outside the pod CIDR {cidr}"
        );
        // The node's block: its blackhole route.
        let routes = ip(&["-n", &lab.node_ns(1), "route"]);
        let blocks: Vec<Ipv4Net> = routes
            .lines()
            .filter_map(|l| l.strip_prefix("blackhole "))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert!(
            blocks.iter().any(|b| b.contains(&addr)),
            "{addr} is in none of node-1's blocks {blocks:?}"
        );
    }
}

/// The scenario, for a container that `start` launches with the given
/// script on node-1 of `lab` (two nodes, `mode`).
pub fn exercise(lab: &Lab, mode: &str, start: impl FnOnce(&str) -> Box<dyn Container>) {
    let web = lab.pod_add("web", "node-2", true);
    // A lab pod beside the container, to compare traces with.
    let peer = lab.pod_add("peer", "node-1", false);
    let node_ns = lab.node_ns(1);
    let wiring_before = pod_wiring_snapshot(&node_ns);
    let assigned_before = assigned(lab, "node-1");

    let deadline = Instant::now() + Duration::from_secs(60);
    let program = script(&web);
    let mut c = start(&program);
    let addr_line = wait_line(c.as_mut(), "ADDR ", deadline);
    // "2: eth0    inet 10.0.1.23/32 scope global eth0 ..."
    let addr: Ipv4Addr = addr_line
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {addr_line:?}"));
    check_address(lab, mode, addr);
    // The node's side of the container's wiring, which must go again.
    let wiring_during = pod_wiring_snapshot(&node_ns);
    assert!(
        wiring_during != wiring_before && wiring_during.contains(&addr.to_string()),
        "no route to {addr} on node-1:\n{wiring_during}"
    );
    assert!(
        eventually(deadline, || assigned(lab, "node-1") == assigned_before + 1),
        "the agent does not count {addr} as assigned (before: {assigned_before}, now: {})",
        assigned(lab, "node-1")
    );

    // The container traces like a lab pod on the same node: the same hops
    // from the web pod, up to the destination itself.
    let to_peer = hop_ips(&lab.trace("web", &peer));
    let to_container = hop_ips(&lab.trace("web", &addr.to_string()));
    assert_eq!(to_peer.last(), Some(&peer), "web -> peer: {to_peer:?}");
    assert_eq!(
        to_container.last(),
        Some(&addr.to_string()),
        "web -> container: {to_container:?}"
    );
    assert_eq!(
        to_container[..to_container.len() - 1],
        to_peer[..to_peer.len() - 1],
        "the container traces unlike the lab pod {peer}"
    );

    // Out: the web pod saw the container's own address (no NAT on the way).
    let answer = wait_line(c.as_mut(), "OUT ", deadline);
    assert!(
        answer.contains(&format!("from {addr}")),
        "the web pod answered {answer:?}, not to {addr}"
    );

    // In: a connection from the web pod (retried until the container's
    // listener is up).
    wait_line(c.as_mut(), "LISTEN", deadline);
    let send = format!("echo {HELLO} | busybox nc -w 3 {addr} {PORT}");
    let mut attempts = Vec::new();
    let got = eventually(deadline, || {
        let o = lab.ctl(&["lab", "exec", "web", "--", "sh", "-c", &send]);
        attempts.push(format!(
            "{} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
        line_with(&c.output(), "IN ").is_some_and(|l| l == HELLO)
    });
    assert!(
        got,
        "the container was not reached from the web pod:\n{}\nattempts: {attempts:#?}",
        c.output()
    );
    wait_line(c.as_mut(), "DONE", deadline);
    eprintln!(
        "container {addr} on node-1, traced from web via {to_container:?}:\n{}",
        c.output()
    );

    // Gone: the runtime removed it; nothing of it stays on the node or in
    // the agent.
    c.remove(deadline);
    let settled = eventually(deadline, || {
        pod_wiring_snapshot(&node_ns) == wiring_before && assigned(lab, "node-1") == assigned_before
    });
    assert!(
        settled,
        "left behind after removal:\nbefore: {wiring_before}\nafter:  {}\nassigned before {assigned_before}, now {}",
        pod_wiring_snapshot(&node_ns),
        assigned(lab, "node-1")
    );
}
