//! Pods are kept away from the node's secrets and the cluster's control
//! plane: the instance metadata service, the EC2 API and the datastore
//! (issue 6 items 6 and 7), in both modes, while the agents themselves keep
//! using all three. `--pod-imds-access` reopens IMDS, as an operator may.

mod common;

use std::process::Command;

use common::{require_root, Lab};

/// What a TCP client inside `netns` gets from `ip:port`: `None` when the
/// connection is refused or times out, else whatever the server answered to
/// an IMDSv2 token request.
fn tcp_from(netns: &str, ip: &str, port: u16) -> Option<String> {
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/{port} || exit 7; \
         printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: {ip}\\r\\nX-aws-ec2-metadata-token-ttl-seconds: 60\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n' >&3; \
         timeout 5 cat <&3"
    );
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "timeout", "10", "bash", "-c", &script,
        ])
        .output()
        .expect("ip netns exec");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pod_ns(lab: &Lab, pod: &str) -> String {
    format!("pw-{}-pod-{pod}", lab.name)
}

#[test]
fn vpc_pods_reach_neither_imds_nor_the_ec2_api_but_pods_still_work() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-guard", &["--nodes", "2"]);
    // The agents got these pods their addresses through IMDS and EC2.
    lab.pod_add("g1", "node-1", false);
    lab.pod_add("web", "node-2", true);
    let ns = pod_ns(&lab, "g1");
    assert_eq!(
        tcp_from(&ns, "169.254.169.254", 80),
        None,
        "pod reached IMDS"
    );
    assert_eq!(
        tcp_from(&ns, "169.254.169.250", 80),
        None,
        "pod reached EC2"
    );
    // The node itself still reaches IMDS (its agent needs it).
    let node = tcp_from(&lab.node_ns(1), "169.254.169.254", 80).expect("node → IMDS");
    assert!(node.starts_with("HTTP/1.1 200"), "{node}");
    // Ordinary pod traffic is untouched.
    assert!(lab
        .ctl_ok(&["lab", "curl", "g1", "web"])
        .contains("Welcome"));
    // The rules outlive their agent and are replaced in place at its start:
    // no window while it is down or restarting.
    lab.ctl_ok(&["lab", "agent", "stop", "node-1"]);
    assert_eq!(
        tcp_from(&ns, "169.254.169.254", 80),
        None,
        "open while the agent is down"
    );
    lab.ctl_ok(&["lab", "agent", "start", "node-1"]);
    assert_eq!(
        tcp_from(&ns, "169.254.169.254", 80),
        None,
        "open after a restart"
    );
}

#[test]
fn an_operator_may_let_pods_reach_imds() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-imdsok", &["--nodes", "1", "--pod-imds-access"]);
    lab.pod_add("g1", "node-1", false);
    let ns = pod_ns(&lab, "g1");
    let answer = tcp_from(&ns, "169.254.169.254", 80).expect("pod → IMDS allowed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The EC2 API stays closed to pods whatever the IMDS setting.
    assert_eq!(tcp_from(&ns, "169.254.169.250", 80), None);
}

#[test]
fn overlay_pods_reach_neither_the_datastore_nor_imds() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-guardov", &["--mode", "overlay", "--datastore", "etcd"]);
    lab.pod_add("g1", "node-1", false);
    lab.pod_add("web", "node-2", true);
    let ns = pod_ns(&lab, "g1");
    assert_eq!(
        tcp_from(&ns, "169.254.169.251", 2379),
        None,
        "pod reached etcd"
    );
    assert_eq!(
        tcp_from(&ns, "169.254.169.254", 80),
        None,
        "pod reached IMDS"
    );
    // The node reaches etcd (its agent's datastore).
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node_ns(1),
            "timeout",
            "5",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/169.254.169.251/2379",
        ])
        .status()
        .expect("node → etcd");
    assert!(out.success(), "the node must still reach its datastore");
    assert!(lab
        .ctl_ok(&["lab", "curl", "g1", "web"])
        .contains("Welcome"));
}

/// Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// A VXLAN payload (VNI 4096, the agents' default) carrying an Ethernet
/// frame to `vtep_mac` with a TCP SYN from `src` to `dst:port`.
fn vxlan_syn(
    vtep_mac: [u8; 6],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    port: u16,
) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let c = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&vtep_mac);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    let mut vx = vec![0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0x00];
    vx.extend_from_slice(&frame);
    vx
}

fn vtep_mac(node_ns: &str) -> [u8; 6] {
    let out = common::ip(&["-n", node_ns, "-o", "link", "show", "vxlan.podwire"]);
    let mac = out
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("vxlan mac");
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

/// An overlay pod sends a VXLAN packet to a node (its own, and another),
/// carrying a SYN to IMDS: the inner packet would enter the node through
/// the tunnel, past a guard that only looks at pod interfaces. Pods may not
/// send VXLAN, and what comes out of the tunnel is guarded too.
#[test]
fn overlay_pods_cannot_tunnel_past_the_guard() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-vxinj", &["--mode", "overlay"]);
    lab.pod_add("evil", "node-1", false);
    let ns = pod_ns(&lab, "evil");
    let pod_ip: std::net::Ipv4Addr = lab.pod_ip("evil").parse().expect("ip");
    let imds: std::net::Ipv4Addr = "169.254.169.254".parse().expect("ip");
    for (i, node) in [(1usize, "node-1"), (2, "node-2")] {
        let node_ns = lab.node_ns(i);
        let target = lab.node_ip(node);
        let payload = vxlan_syn(vtep_mac(&node_ns), pod_ip, imds, 80);
        // Sent from inside the pod, with an ordinary UDP socket.
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("pod netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
            for _ in 0..3 {
                let _ = s.send_to(&payload, format!("{target}:4789"));
            }
        })
        .join()
        .expect("sender");
        // Give a forwarded SYN time to be tracked, then look.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            Lab::conntrack_entries(&node_ns, "169.254.169.254"),
            0,
            "a pod tunnelled a SYN to IMDS through {node}"
        );
    }
}

/// A conflist's `vethPrefix` renames the host veths; the guard still holds
/// (pods are known by their veths' interface group, not their names).
#[test]
fn a_custom_veth_prefix_does_not_open_the_guard() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-vprefix", &["--nodes", "1"]);
    let socket = lab.status()["nodes"][0]["agent_socket"]
        .as_str()
        .expect("socket")
        .to_string();
    let ns = common::Netns::new("pw-t-vprefix-x1");
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "podwire", "type": "podwire", "mode": "vpc", "agentSocket": socket, "vethPrefix": "cali"});
    let env = |cmd: &'static str| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "vp1"),
            ("CNI_IFNAME", "eth0"),
        ]
    };
    let path = ns.path();
    let mut add_env = env("ADD");
    add_env.push(("CNI_NETNS", path.as_str()));
    let add = common::run_plugin(&lab.node_ns(1), &add_env, &conf.to_string());
    assert!(add.ok, "{} {}", add.stdout, add.stderr);
    let veth = add.json["interfaces"][0]["name"].as_str().expect("veth");
    assert!(veth.starts_with("cali"), "{veth}");
    assert_eq!(
        tcp_from(&ns.name, "169.254.169.254", 80),
        None,
        "a cali… pod reached IMDS"
    );
    let mut del_env = env("DEL");
    del_env.push(("CNI_NETNS", path.as_str()));
    let del = common::run_plugin(&lab.node_ns(1), &del_env, &conf.to_string());
    assert!(del.ok, "{}", del.stdout);
}

/// Sends `payload` to `to:4789` from inside `netns`.
fn send_vxlan(netns: &str, to: &str, payload: Vec<u8>) {
    let path = format!("/run/netns/{netns}");
    let to = format!("{to}:4789");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        for _ in 0..3 {
            let _ = s.send_to(&payload, &to);
        }
    })
    .join()
    .expect("sender");
}

/// A node takes VXLAN only from the cluster's nodes: a host elsewhere in
/// the VPC cannot tunnel forged packets to pods. The same packet from a
/// known node gets through (so the check can see a delivery).
#[test]
fn vxlan_from_outside_the_cluster_is_dropped() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-vxext", &["--mode", "overlay"]);
    lab.pod_add("victim", "node-1", true);
    // Inner packets carry a real remote pod's address (anything else would
    // fail the guard's reverse-path check whoever sent the VXLAN).
    lab.pod_add("peer", "node-2", false);
    let peer = lab.pod_ip("peer");
    let victim: std::net::Ipv4Addr = lab.pod_ip("victim").parse().expect("ip");
    let node1 = lab.node_ns(1);
    let target = lab.node_ip("node-1");
    let mac = vtep_mac(&node1);
    // The node security group admits the external host (as a VPC-wide
    // group would): only podwire's rule stands between it and the tunnel.
    lab.ctl_ok(&["lab", "allow-external", "on"]);
    let forged: std::net::Ipv4Addr = peer.parse().expect("ip");
    let victim_s = victim.to_string();
    send_vxlan(
        &format!("pw-{}-external", lab.name),
        &target,
        vxlan_syn(mac, forged, victim, 80),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        common::flows_between(&node1, &peer, &victim_s),
        0,
        "a host outside the cluster tunnelled a packet to a pod"
    );
    // The control: from node-2 (a peer) the same packet is delivered.
    send_vxlan(&lab.node_ns(2), &target, vxlan_syn(mac, forged, victim, 80));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while common::flows_between(&node1, &peer, &victim_s) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a packet from a known node was not delivered: the check above proves nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Connects from inside `netns` to `to:80` with `src` as source address;
/// true when the connection is established within a second.
fn connect_from_in(netns: &str, src: &str, to: &str) -> bool {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let path = format!("/run/netns/{netns}");
    let src: std::net::SocketAddrV4 = format!("{src}:0").parse().expect("src");
    let to: std::net::SocketAddrV4 = format!("{to}:80").parse().expect("to");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        setsockopt(
            &fd,
            sockopt::SendTimeout,
            &nix::sys::time::TimeVal::new(1, 0),
        )
        .expect("timeout");
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(src)).expect("bind");
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).is_ok()
    })
    .join()
    .expect("connector")
}

/// A pod that puts another pod's address (or the node's) on its interface
/// cannot send with it: its packets do not leave its veth. In both modes.
#[test]
fn pods_send_only_from_their_own_address() {
    if !require_root() {
        return;
    }
    for (mode, lab_name) in [("vpc", "t-spoofv"), ("overlay", "t-spoofo")] {
        let lab = Lab::up(lab_name, &["--mode", mode]);
        let node = lab.node_ns(1);
        common::track_connections(&node);
        lab.pod_add("liar", "node-1", false);
        lab.pod_add("victim", "node-1", false);
        lab.pod_add("web", "node-2", true);
        let ns = pod_ns(&lab, "liar");
        let own = lab.pod_ip("liar");
        let web = lab.pod_ip("web");
        assert!(
            connect_from_in(&ns, &own, &web),
            "{mode}: the control failed"
        );
        assert!(
            common::flows_between(&node, &own, &web) > 0,
            "{mode}: no flow seen"
        );
        for stolen in [lab.pod_ip("victim"), lab.node_ip("node-1")] {
            let addr = format!("{stolen}/32");
            common::ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            assert!(!connect_from_in(&ns, &stolen, &web));
            assert_eq!(
                common::flows_between(&node, &stolen, &web),
                0,
                "{mode}: a pod's packet passed the node as {stolen}"
            );
        }
    }
}
