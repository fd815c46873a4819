//! The `podwire-agent` binary as an operator runs it: settings from flags
//! and environment, install-cni / uninstall-cni on temporary directories,
//! and the status probe against a stand-in agent. No root needed.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use podwire_proto::{Response, StatusInfo};

const AGENT: &str = env!("CARGO_BIN_EXE_podwire-agent");

/// The binary with none of the variables it reads inherited from the
/// developer's or CI's environment.
fn agent() -> Command {
    let mut c = Command::new(AGENT);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let ours = [
            "PODWIRE_", "CALICO_", "FELIX_", "ETCD_", "AWS_", "WARM_", "MINIMUM_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || k == "MY_NODE_NAME"
            || k == "IP_COOLDOWN_PERIOD";
        if ours {
            c.env_remove(&k);
        }
    }
    c
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run podwire-agent")
}

/// `--print-config` output with the whitespace taken out, so checks do not
/// depend on how Debug indents.
fn config(o: &Output) -> String {
    stdout(o).split_whitespace().collect()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_flag_beats_its_env_var_which_beats_the_default() {
    let defaults = config(&run(agent().args(["--mode", "overlay", "--print-config"])));
    assert!(defaults.contains("block_prefix:26"), "{defaults}");
    assert!(defaults.contains("vni:4096"), "{defaults}");

    let from_env = config(&run(agent()
        .args(["--mode", "overlay", "--print-config"])
        .env("CALICO_IPV4POOL_BLOCK_SIZE", "24")
        .env("CALICO_IPV4POOL_CIDR", "10.244.0.0/16")
        .env("FELIX_VXLANVNI", "7")
        .env("PODWIRE_STRICT_AFFINITY", "true")
        .env("MY_NODE_NAME", "pwt-node-a")));
    for want in [
        "block_prefix:24",
        "pool:10.244.0.0/16",
        "vni:7",
        "strict_affinity:true",
        "node_name:\"pwt-node-a\"",
    ] {
        assert!(from_env.contains(want), "{want} missing: {from_env}");
    }

    let flag_wins = config(&run(agent()
        .args(["--mode", "overlay", "--block-size", "28", "--print-config"])
        .env("CALICO_IPV4POOL_BLOCK_SIZE", "24")));
    assert!(flag_wins.contains("block_prefix:28"), "{flag_wins}");

    let vpc = config(&run(agent()
        .args(["--print-config"])
        .env("PODWIRE_MODE", "vpc")
        .env("WARM_IP_TARGET", "5")
        .env("MINIMUM_IP_TARGET", "10")
        .env("IP_COOLDOWN_PERIOD", "45")
        .env("AWS_VPC_ENI_MTU", "1500")));
    for want in [
        "warm_ip_target:Some(5,)",
        "minimum_ip_target:10",
        "ip_cooldown:45s",
        "eni_mtu:1500",
    ] {
        assert!(vpc.contains(want), "{want} missing: {vpc}");
    }
}

#[test]
fn a_bad_env_value_is_refused_with_the_flag_named() {
    let o = run(agent()
        .args(["--print-config"])
        .env("WARM_IP_TARGET", "many"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--warm-ip-target"), "{err}");
}

#[test]
fn install_and_uninstall_through_the_binary() {
    let root = tempfile::tempdir().expect("tempdir");
    let plugin = root.path().join("podwire");
    std::fs::write(&plugin, b"plugin bytes").expect("plugin");
    let conf = root.path().join("net.d");
    let bins = root.path().join("bin");
    let state = root.path().join("state");
    let o = run(agent()
        .arg("install-cni")
        .arg("--plugin")
        .arg(&plugin)
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--state-dir")
        .arg(&state)
        .args(["--mode", "overlay"])
        // The conf dir from the environment.
        .env("PODWIRE_CNI_CONF_DIR", &conf));
    stdout(&o);
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(conf.join("10-podwire.conflist")).expect("conflist"))
            .expect("json");
    assert_eq!(written["plugins"][0]["mode"], "overlay");
    assert_eq!(
        std::fs::read(bins.join("podwire")).expect("bin"),
        b"plugin bytes"
    );

    // Someone else's conflist: refused, non-zero, --force named.
    std::fs::write(conf.join("10-podwire.conflist"), b"{}").expect("foreign");
    let o = run(agent()
        .arg("install-cni")
        .arg("--plugin")
        .arg(&plugin)
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--conf-dir")
        .arg(&conf)
        .arg("--state-dir")
        .arg(&state));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));

    let out = stdout(&run(agent()
        .arg("uninstall-cni")
        .arg("--state-dir")
        .arg(&state)));
    assert!(
        out.contains("removed:") && out.contains("left in place"),
        "{out}"
    );
    assert!(!bins.join("podwire").exists());
    assert_eq!(
        std::fs::read(conf.join("10-podwire.conflist")).expect("kept"),
        b"{}"
    );
}

/// A stand-in agent that answers one status request.
fn fake_agent(sock: &Path, ready: bool) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(sock).expect("bind");
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let deadline = Instant::now() + Duration::from_secs(10);
        podwire_proto::read_request(&stream, deadline).expect("request");
        let status = StatusInfo {
            node: "pwt-node".into(),
            ready,
            free_ips: 3,
            assigned_ips: 1,
            message: if ready {
                String::new()
            } else {
                "warming up".into()
            },
        };
        podwire_proto::write_response(&stream, &Response::Status { status }, deadline)
            .expect("answer");
    })
}

#[test]
fn status_exits_zero_only_for_a_ready_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ready in [true, false] {
        let sock = dir.path().join(format!("agent-{ready}.sock"));
        let server = fake_agent(&sock, ready);
        let o = run(agent().arg("status").arg("--socket").arg(&sock));
        server.join().expect("fake agent");
        assert_eq!(o.status.success(), ready, "{o:?}");
    }
    // No agent at all: fails within the timeout, says which socket.
    let o = run(agent()
        .arg("status")
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .args(["--timeout-secs", "1"]));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("none.sock"));
}
