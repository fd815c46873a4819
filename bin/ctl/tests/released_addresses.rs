//! A released address keeps no connection tracking entries, so the next
//! pod that gets it inherits no flows (issue 6 item 18), in both modes.

mod common;

use common::{require_root, Lab};

fn released_address_forgets_its_flows(lab: &Lab) {
    common::track_connections(&lab.node_ns(1));
    lab.pod_add("web", "node-1", true);
    lab.pod_add("c", "node-1", false);
    let ip = lab.pod_ip("c");
    assert!(lab.ctl_ok(&["lab", "curl", "c", "web"]).contains("Welcome"));
    let node = lab.node_ns(1);
    // The flow passed through the node: it is tracked there (TIME_WAIT).
    assert!(
        Lab::conntrack_entries(&node, &ip) > 0,
        "no flow of {ip} tracked on {node}"
    );
    lab.ctl_ok(&["lab", "pod", "del", "c"]);
    assert_eq!(
        Lab::conntrack_entries(&node, &ip),
        0,
        "flows of released {ip} remain"
    );
    // Only the released address's flows go: the node's own flow to web
    // stays tracked.
    assert!(lab
        .ctl_ok(&["lab", "curl", "node-1", "web"])
        .contains("Welcome"));
}

#[test]
fn vpc_released_address_forgets_its_flows() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-ctvpc", &["--nodes", "1"]);
    released_address_forgets_its_flows(&lab);
}

#[test]
fn overlay_released_address_forgets_its_flows() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-ctov", &["--mode", "overlay", "--nodes", "1"]);
    released_address_forgets_its_flows(&lab);
}
