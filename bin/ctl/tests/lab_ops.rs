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
