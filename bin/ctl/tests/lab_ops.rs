//! Operator mistakes with the lab's node operations get a clear error and
//! change nothing; a deleted node leaves nothing of its own behind.

mod common;

use common::{require_root, Lab};

#[test]
fn deleting_a_node_whose_agent_is_stopped_says_what_to_do() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-nodedel", &["--nodes", "2"]);
    lab.pod_add("c", "node-2", false);
    lab.ctl_ok(&["lab", "agent", "stop", "node-2"]);
    let o = lab.ctl(&["lab", "node", "del", "node-2"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("lab agent start node-2"), "{err}");
    // Nothing changed: the node and its pod are still there.
    let st = lab.status();
    assert!(st["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .any(|n| n["name"] == "node-2"));
    assert!(st["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .any(|p| p["name"] == "c"));
    // Done as told, the node goes, with its directory.
    lab.ctl_ok(&["lab", "agent", "start", "node-2"]);
    lab.ctl_ok(&["lab", "node", "del", "node-2"]);
    let dir = std::path::Path::new("/run/podwire/lab")
        .join(&lab.name)
        .join("node-2");
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

/// A pod CIDR inside the VPC would shadow nodes: the lab refuses it before
/// creating anything, and so does an agent told to use one.
#[test]
fn a_pod_cidr_overlapping_the_node_network_is_refused() {
    if !require_root() {
        return;
    }
    let o = common::ctl(&[
        "lab",
        "up",
        "--name",
        "t-overlap",
        "--mode",
        "overlay",
        "--pod-cidr",
        "10.0.0.0/16",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("overlaps the node subnet"), "{err}");
    assert!(
        !std::path::Path::new("/run/podwire/lab/t-overlap").exists(),
        "a refused lab left state behind"
    );

    // The agent's own check, on a node of a good lab.
    let lab = Lab::up("t-overlap2", &["--mode", "overlay", "--nodes", "1"]);
    let dir = tempfile::Builder::new()
        .prefix("pwt-overlap")
        .tempdir()
        .expect("dir");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(1)])
        .arg(common::sibling("podwire-agent"))
        .args([
            "--mode",
            "overlay",
            "--node-name",
            "intruder",
            "--pod-cidr",
            "10.0.0.0/8",
        ])
        .arg("--datastore")
        .arg(format!("sqlite:{}", dir.path().join("db").display()))
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overlaps the node network"), "{err}");
}

/// A datastore spec that is a typo is refused, not taken for a SQLite file.
#[test]
fn a_datastore_typo_is_refused() {
    if !require_root() {
        return;
    }
    // In a namespace of the test's own: whatever the agent does before it
    // fails stays there.
    let ns = common::Netns::new("pw-t-typo");
    let dir = tempfile::Builder::new()
        .prefix("pwt-typo")
        .tempdir()
        .expect("dir");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(common::sibling("podwire-agent"))
        .current_dir(dir.path())
        .args([
            "--mode",
            "overlay",
            "--node-name",
            "n",
            "--datastore",
            "etcd:10.0.0.10:2379",
        ])
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not understood"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).expect("dir").all(|e| {
            let n = e.expect("entry").file_name();
            n == "state" || n == "agent.sock"
        }),
        "a file was created for the typo"
    );
}

/// A setting of the other mode is refused, not silently ignored.
#[test]
fn settings_of_the_other_mode_are_refused() {
    for (mode, flag, value) in [
        // (--datastore applies to both modes since issue 10.)
        ("vpc", "--block-size", "26"),
        ("vpc", "--pod-cidr", "172.20.0.0/16"),
        ("overlay", "--warm-ip-target", "3"),
    ] {
        let o = common::ctl(&[
            "lab",
            "up",
            "--name",
            "t-wrongmode",
            "--mode",
            mode,
            flag,
            value,
        ]);
        assert!(!o.status.success(), "{mode} {flag}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(flag) && err.contains("not apply to --mode"),
            "{err}"
        );
        assert!(!std::path::Path::new("/run/podwire/lab/t-wrongmode").exists());
    }
}

/// Newuser F4, F6, F9, F11 in one lab: `lab pod del NAME --namespace NS`;
/// `lab namespace del` refused while a pod is in it, then done; the status
/// text shows prefixes; a timed-out curl points at the audit; allow-external
/// and down say what they did.
#[test]
fn namespaces_pods_and_confirmations_as_a_new_user_met_them() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-polish", &["--nodes", "1", "--prefix-delegation"]);
    lab.ctl_ok(&["lab", "namespace", "add", "x"]);
    lab.ctl_ok(&[
        "lab",
        "pod",
        "add",
        "a",
        "--namespace",
        "x",
        "--node",
        "node-1",
    ]);
    // Prefix delegation: the text names the /28s, not only `secondary []`.
    let text = lab.ctl_ok(&["lab", "status"]);
    assert!(text.contains("prefixes ["), "{text}");
    // The security group is closed: the request times out, and the
    // message says where to look.
    let o = lab.ctl(&["lab", "curl", "external", "x/a"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains(&format!("podwirectl audit --lab {} --pod x/a", lab.name)),
        "{err}"
    );
    let o = lab.ctl(&["lab", "namespace", "del", "x"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("still has a pod (a)"), "{err}");
    lab.ctl_ok(&["lab", "pod", "del", "a", "--namespace", "x"]);
    let out = lab.ctl_ok(&["lab", "namespace", "del", "x"]);
    assert!(out.contains("namespace x deleted"), "{out}");
    assert!(!lab.status()["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .any(|n| n["name"] == "x"));
    let out = lab.ctl_ok(&["lab", "allow-external", "on"]);
    assert!(out.contains("open to the external host"), "{out}");
    let out = lab.ctl_ok(&["lab", "allow-external", "off"]);
    assert!(out.contains("closed to the external host"), "{out}");
    let out = lab.ctl_ok(&["lab", "down"]);
    assert!(out.contains(&format!("lab {} is down", lab.name)), "{out}");
}
