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
