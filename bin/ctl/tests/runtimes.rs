//! Real container runtimes drive podwire (issue 7 §1): podman (CNI
//! backend) and containerd (`ctr run --cni`), each in a vpc lab and in an
//! overlay lab. The scenario is in rt/mod.rs.

mod common;
mod rt;

use common::*;
use rt::containerd::Containerd;
use rt::podman::Podman;

/// node-1's agent socket, from `lab status`.
fn agent_socket(lab: &Lab) -> String {
    lab.status()["nodes"][0]["agent_socket"]
        .as_str()
        .expect("agent_socket")
        .to_string()
}

fn podman(lab_name: &str, mode: &str) {
    if !require_root() {
        return;
    }
    let lab = Lab::up(lab_name, &["--mode", mode, "--nodes", "2"]);
    let pm = Podman::new(&lab.node_ns(1), mode, &agent_socket(&lab));
    let name = format!("pwt-{lab_name}");
    rt::exercise(&lab, mode, |script| Box::new(pm.run(&name, script)));
    assert_eq!(pm.containers().trim(), "", "podman still lists containers");
}

fn containerd(lab_name: &str, mode: &str) {
    if !require_root() {
        return;
    }
    rt::containerd::ensure_etc_cni();
    let lab = Lab::up(lab_name, &["--mode", mode, "--nodes", "2"]);
    let ctd = Containerd::start(&lab.node_ns(1), mode, &agent_socket(&lab));
    let id = format!("pwt-{lab_name}");
    rt::exercise(&lab, mode, |script| Box::new(ctd.run(&id, script)));
    let left = ctd.ok(&["container", "ls", "-q"]);
    assert_eq!(left.trim(), "", "containerd still lists containers");
}

#[test]
fn podman_vpc() {
    podman("t-pmvpc", "vpc");
}

#[test]
fn podman_overlay() {
    podman("t-pmov", "overlay");
}

#[test]
fn containerd_vpc() {
    containerd("t-ctdvpc", "vpc");
}

#[test]
fn containerd_overlay() {
    containerd("t-ctdov", "overlay");
}
