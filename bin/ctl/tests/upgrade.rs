//! A rolling upgrade: for a while a node may run a new agent with the old
//! plugin binary, or the reverse. The protocol version says so on both
//! sides: the call fails with the protocol-mismatch code (105) and a
//! message that says what to do, and changes nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use common::{require_root, run_plugin, Lab, Netns};
use serde_json::{json, Value};

/// What a v1 plugin sends: the v1 envelope (no `time_left_ms`).
#[test]
fn an_old_plugin_meets_a_new_agent() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-upg1", &["--nodes", "1"]);
    let sock = lab.status()["nodes"][0]["agent_socket"]
        .as_str()
        .expect("socket")
        .to_string();
    let before = lab.status()["nodes"][0]["agent"]["assigned_ips"].clone();
    let mut s = UnixStream::connect(&sock).expect("connect");
    let add = json!({"v": 1, "op": "add", "key": {"network": "podwire", "container_id": "old1", "ifname": "eth0"}, "netns": "/run/netns/x"});
    s.write_all(format!("{add}\n").as_bytes()).expect("write");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("answer");
    let answer: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(answer["result"], "error", "{answer}");
    assert_eq!(answer["kind"], "protocol", "{answer}");
    let msg = answer["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("v1") && msg.contains("install-cni"),
        "the answer must say which versions meet and what to do: {msg}"
    );
    // The v1 plugin reads this answer's own version (2) and stops with its
    // protocol error; nothing was allocated.
    assert_eq!(answer["v"], 2);
    assert_eq!(lab.status()["nodes"][0]["agent"]["assigned_ips"], before);
}

/// The new plugin against an agent that still speaks v1.
#[test]
fn a_new_plugin_meets_an_old_agent() {
    if !require_root() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("pwt-oldagent")
        .tempdir()
        .expect("dir");
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    // A v1 agent: reads a line, answers in its own version.
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let mut line = String::new();
            let _ = BufReader::new(&c).read_line(&mut line);
            let answer = json!({"v": 1, "result": "error", "kind": "protocol", "message": "agent speaks protocol v1"});
            let _ = c.write_all(format!("{answer}\n").as_bytes());
        }
    });
    let ns = Netns::new("pw-t-upg2");
    let node = Netns::new("pw-t-upg2-node");
    let conf =
        json!({"cniVersion": "1.0.0", "name": "podwire", "type": "podwire", "agentSocket": sock});
    let before = common::pod_wiring_snapshot(&node.name);
    let path = ns.path();
    let r = run_plugin(
        &node.name,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "new1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", &path),
        ],
        &conf.to_string(),
    );
    assert!(!r.ok);
    assert_eq!(r.json["code"], 105, "{}", r.stdout);
    let msg = r.json["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("v1") && msg.contains("install-cni"),
        "the error must say which versions meet and what to do: {msg}"
    );
    assert_eq!(
        common::pod_wiring_snapshot(&node.name),
        before,
        "ADD changed the node"
    );
}
