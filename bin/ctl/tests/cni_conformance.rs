//! The plugin binary driven as a runtime drives it (env + stdin, inside the
//! node's namespace) across the spec-version matrix, against a real agent in
//! a lab. Pod namespaces are made and removed by each test.

mod common;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

struct Call<'a> {
    node_ns: &'a str,
    socket: String,
}

impl Call<'_> {
    fn conf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "podwire", "type": "podwire", "mode": "vpc", "agentSocket": self.socket})
    }

    fn run(&self, cmd: &str, id: &str, netns: &str, conf: &Value, pod: &str) -> PluginRun {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=conf;K8S_POD_NAME={pod}");
        let mut env = vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", args.as_str()),
        ];
        if !netns.is_empty() {
            env.push(("CNI_NETNS", netns));
        }
        run_plugin(self.node_ns, &env, &conf.to_string())
    }
}

fn agent_assigned(lab: &Lab) -> u64 {
    // Ask the agent directly: the plugin's STATUS does not print counts.
    let st = lab.status();
    let sock = st["nodes"][0]["agent_socket"]
        .as_str()
        .expect("socket")
        .to_string();
    match podwire_proto::call(
        std::path::Path::new(&sock),
        &podwire_proto::Request::Status,
        std::time::Instant::now() + std::time::Duration::from_secs(5),
    ) {
        Ok(podwire_proto::Response::Status { status }) => {
            u64::try_from(status.assigned_ips).expect("fits")
        }
        other => panic!("status: {other:?}"),
    }
}

fn lab_call(lab: &Lab) -> (String, String) {
    let st = lab.status();
    (
        lab.node_ns(1),
        st["nodes"][0]["agent_socket"]
            .as_str()
            .expect("socket")
            .to_string(),
    )
}

#[test]
fn every_version_add_check_del_and_result_shapes() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-conf", &["--nodes", "1"]);
    let (node_ns, socket) = lab_call(&lab);
    let call = Call {
        node_ns: &node_ns,
        socket,
    };

    let v = call.run("VERSION", "", "", &json!({"cniVersion": "1.1.0"}), "x");
    assert!(v.ok, "{v:?}");
    assert_eq!(v.json["cniVersion"], "1.1.0");
    assert_eq!(v.json["supportedVersions"], json!(VERSIONS));

    for (i, ver) in VERSIONS.iter().enumerate() {
        let ns = Netns::new(&format!("pw-t-conf-c{i}"));
        let id = format!("conf{i}");
        let pod = format!("pod{i}");
        let conf = call.conf(ver);
        let before = pod_wiring_snapshot(&node_ns);
        let add = call.run("ADD", &id, &ns.path(), &conf, &pod);
        assert!(add.ok, "ADD {ver}: {} {}", add.stdout, add.stderr);
        let r = &add.json;
        assert_eq!(r["cniVersion"], *ver);
        assert_eq!(r["interfaces"].as_array().expect("ifs").len(), 2);
        assert_eq!(r["interfaces"][1]["sandbox"], ns.path());
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        assert!(r["ips"][0]["address"]
            .as_str()
            .expect("addr")
            .ends_with("/32"));
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            ver.starts_with("0."),
            "{ver}: {r}"
        );
        assert_eq!(
            r["interfaces"][0].get("mtu").is_some(),
            *ver == "1.1.0",
            "{ver}: {r}"
        );
        assert!(
            add.stderr.lines().all(|l| !l.contains('{')),
            "logs must not carry the result"
        );

        // ADD again for the same (id, ifname): refused, nothing changes.
        let mid = pod_wiring_snapshot(&node_ns);
        let again = call.run("ADD", &id, &ns.path(), &conf, &pod);
        assert!(!again.ok);
        assert_eq!(again.json["code"], 102, "{}", again.stdout);
        assert_eq!(pod_wiring_snapshot(&node_ns), mid);

        let mut with_prev = conf.clone();
        with_prev["prevResult"] = r.clone();
        if ver.starts_with("0.3") {
            let c = call.run("CHECK", &id, &ns.path(), &with_prev, &pod);
            assert_eq!(c.json["code"], 1, "CHECK needs 0.4.0: {}", c.stdout);
        } else {
            let c = call.run("CHECK", &id, &ns.path(), &with_prev, &pod);
            assert!(c.ok, "CHECK {ver}: {}", c.stdout);
            // Break the pod: CHECK must notice.
            ip(&["-n", &ns.name, "route", "del", "default"]);
            let c = call.run("CHECK", &id, &ns.path(), &with_prev, &pod);
            assert!(
                !c.ok && c.json["code"] == 104,
                "CHECK on a broken pod: {}",
                c.stdout
            );
        }
        let del = call.run("DEL", &id, &ns.path(), &with_prev, &pod);
        assert!(del.ok, "DEL {ver}: {}", del.stdout);
        assert_eq!(del.stdout, "");
        let del2 = call.run("DEL", &id, &ns.path(), &with_prev, &pod);
        assert!(del2.ok, "second DEL {ver}: {}", del2.stdout);
        assert_eq!(
            pod_wiring_snapshot(&node_ns),
            before,
            "{ver}: DEL left something behind"
        );
    }
    assert_eq!(agent_assigned(&lab), 0);
}

#[test]
fn del_without_netns_gc_both_keys_chaining_and_half_way_failures() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-conf2", &["--nodes", "1"]);
    let (node_ns, socket) = lab_call(&lab);
    let call = Call {
        node_ns: &node_ns,
        socket,
    };
    let conf = call.conf("1.1.0");
    let before = pod_wiring_snapshot(&node_ns);

    // DEL after the netns is gone still releases the address.
    let gone = Netns::new("pw-t-conf2-gone");
    assert!(call.run("ADD", "gone1", &gone.path(), &conf, "gone").ok);
    assert_eq!(agent_assigned(&lab), 1);
    drop(gone);
    let del = call.run("DEL", "gone1", "", &conf, "gone");
    assert!(del.ok, "{}", del.stdout);
    assert_eq!(agent_assigned(&lab), 0);
    assert_eq!(pod_wiring_snapshot(&node_ns), before);

    // DEL with a FIFO as CNI_NETNS and the host veth already gone (so DEL
    // would look into the pod): the path is ignored, the address released.
    let pod = Netns::new("pw-t-conf2-fifo");
    let add = call.run("ADD", "fifo1", &pod.path(), &conf, "fifo");
    assert!(add.ok, "{}", add.stdout);
    let veth = add.json["interfaces"][0]["name"]
        .as_str()
        .expect("veth")
        .to_string();
    ip(&["-n", &node_ns, "link", "del", &veth]);
    let dir = tempfile::Builder::new()
        .prefix("pwt-conf2-netns")
        .tempdir()
        .expect("tempdir");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let args = os("IgnoreUnknown=1;K8S_POD_NAMESPACE=conf;K8S_POD_NAME=fifo");
    let r = run_raw(
        Some(&node_ns),
        &[
            (os("CNI_COMMAND"), os("DEL")),
            (os("CNI_CONTAINERID"), os("fifo1")),
            (os("CNI_IFNAME"), os("eth0")),
            (os("CNI_NETNS"), fifo.as_os_str().to_owned()),
            (os("CNI_ARGS"), args),
        ],
        conf.to_string().into_bytes(),
    );
    assert!(!r.timed_out && r.exit == Some(0), "DEL with a FIFO: {r:?}");
    assert_eq!(agent_assigned(&lab), 0);
    drop(pod);
    assert_eq!(pod_wiring_snapshot(&node_ns), before);

    // GC keeps the valid attachment and releases the other, with either key.
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let a = Netns::new("pw-t-conf2-a");
        let b = Netns::new("pw-t-conf2-b");
        assert!(call.run("ADD", "keep", &a.path(), &conf, "keep").ok);
        let add_b = call.run("ADD", "stale", &b.path(), &conf, "stale");
        assert!(add_b.ok);
        drop(b);
        let mut gc = conf.clone();
        gc[key] = json!([{"containerID": "keep", "ifname": "eth0"}]);
        let r = call.run("GC", "", "", &gc, "");
        assert!(r.ok, "GC with {key}: {}", r.stdout);
        assert_eq!(agent_assigned(&lab), 1, "GC with {key}");
        let stale_ip = add_b.json["ips"][0]["address"]
            .as_str()
            .expect("ip")
            .trim_end_matches("/32")
            .to_string();
        assert!(!ip(&["-n", &node_ns, "rule"]).contains(&format!("{stale_ip} ")));
        assert!(call.run("DEL", "keep", &a.path(), &conf, "keep").ok);
    }
    assert_eq!(pod_wiring_snapshot(&node_ns), before);

    // GC without the key: code 7 naming it, nothing released (it used to
    // unwire every pod). `null` (libcni's nil list): nothing is valid.
    let n = Netns::new("pw-t-conf2-gcnull");
    assert!(call.run("ADD", "gcnull", &n.path(), &conf, "gcnull").ok);
    let r = call.run("GC", "", "", &conf, "");
    assert_eq!(r.json["code"], 7, "GC without the key: {}", r.stdout);
    assert!(
        r.stdout.contains("cni.dev/valid-attachments"),
        "{}",
        r.stdout
    );
    assert_eq!(agent_assigned(&lab), 1, "GC without the key released");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = Value::Null;
    let r = call.run("GC", "", "", &gc, "");
    assert!(r.ok, "GC with null: {}", r.stdout);
    assert_eq!(agent_assigned(&lab), 0, "GC with null kept something");
    drop(n);
    assert_eq!(pod_wiring_snapshot(&node_ns), before);

    // Chained after another plugin: its result is kept, ours appended.
    let c = Netns::new("pw-t-conf2-c");
    let mut chained = conf.clone();
    chained["prevResult"] = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "other0"}], "ips": [], "routes": [], "dns": {"nameservers": ["10.0.0.2"]}});
    let r = call.run("ADD", "chain", &c.path(), &chained, "chain");
    assert!(r.ok, "{}", r.stdout);
    assert_eq!(r.json["interfaces"][0]["name"], "other0");
    assert_eq!(r.json["ips"][0]["interface"], 2);
    assert_eq!(r.json["dns"]["nameservers"][0], "10.0.0.2");
    assert!(call.run("DEL", "chain", &c.path(), &conf, "chain").ok);

    // An interface of that name already in the pod: ADD fails half-way,
    // undoes itself and gives the address back.
    let d = Netns::new("pw-t-conf2-d");
    ip(&[
        "-n", &d.name, "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let r = call.run("ADD", "clash", &d.path(), &conf, "clash");
    assert!(!r.ok && r.json["code"] == 102, "{}", r.stdout);
    assert_eq!(agent_assigned(&lab), 0);
    assert_eq!(pod_wiring_snapshot(&node_ns), before);
}

#[test]
fn bad_input_gets_the_spec_code_and_changes_nothing() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-bad", &["--nodes", "1"]);
    let (node_ns, socket) = lab_call(&lab);
    let call = Call {
        node_ns: &node_ns,
        socket: socket.clone(),
    };
    let pod = Netns::new("pw-t-bad-pod");
    let node_before = pod_wiring_snapshot(&node_ns);
    let pod_before = kernel_snapshot(&pod.name);
    let good = call.conf("1.0.0").to_string();
    let env =
        |cmd: &'static str, ifname: &'static str, netns: String| -> Vec<(&'static str, String)> {
            vec![
                ("CNI_COMMAND", cmd.into()),
                ("CNI_CONTAINERID", "bad1".into()),
                ("CNI_IFNAME", ifname.into()),
                ("CNI_NETNS", netns),
            ]
        };
    // (what, env, stdin, expected code, text the message must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, String, u64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            env("ADD", "eth0", pod.path()),
            "{\"cniVersion\": ".into(),
            6,
            "",
        ),
        (
            "missing name",
            env("ADD", "eth0", pod.path()),
            json!({"cniVersion": "1.0.0", "type": "podwire"}).to_string(),
            7,
            "name",
        ),
        (
            "unknown key",
            env("ADD", "eth0", pod.path()),
            json!({"cniVersion": "1.0.0", "name": "n", "type": "podwire", "vlan": 3}).to_string(),
            2,
            "vlan",
        ),
        (
            "bad ifname",
            env("ADD", "eth0:1", pod.path()),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "no netns",
            vec![
                ("CNI_COMMAND", "ADD".into()),
                ("CNI_CONTAINERID", "bad1".into()),
                ("CNI_IFNAME", "eth0".into()),
            ],
            good.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "bad container id",
            vec![
                ("CNI_COMMAND", "ADD".into()),
                ("CNI_CONTAINERID", "../x".into()),
                ("CNI_IFNAME", "eth0".into()),
                ("CNI_NETNS", pod.path()),
            ],
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "unsupported version",
            env("ADD", "eth0", pod.path()),
            json!({"cniVersion": "0.2.0", "name": "n", "type": "podwire"}).to_string(),
            1,
            "",
        ),
        (
            "netns does not exist",
            env("ADD", "eth0", "/run/netns/pw-t-bad-nope".into()),
            good.clone(),
            3,
            "does not exist",
        ),
        (
            "GC on 1.0.0",
            vec![
                ("CNI_COMMAND", "GC".into()),
                ("CNI_PATH", "/opt/cni/bin".into()),
            ],
            good.clone(),
            1,
            "",
        ),
    ];
    for (what, env, stdin, code, named) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = run_plugin(&node_ns, &env, &stdin);
        assert!(!r.ok, "{what}: succeeded");
        assert_eq!(r.json["code"], code, "{what}: {}", r.stdout);
        assert!(
            r.json["msg"].as_str().expect("msg").contains(named),
            "{what}: {}",
            r.stdout
        );
        assert_eq!(
            pod_wiring_snapshot(&node_ns),
            node_before,
            "{what} changed the node"
        );
        assert_eq!(
            kernel_snapshot(&pod.name),
            pod_before,
            "{what} changed the pod"
        );
    }

    // CNI_NETNS that is no namespace: a FIFO (the plugin hung forever after
    // the agent allocated), a file, a directory. Code 3, before the agent is
    // asked, within a deadline; DEL ignores such a path.
    let dir = tempfile::Builder::new()
        .prefix("pwt-conf-netns")
        .tempdir()
        .expect("tempdir");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let file = dir.path().join("file");
    std::fs::write(&file, b"").expect("file");
    for (verb, path) in [
        ("ADD", &fifo),
        ("ADD", &file),
        ("ADD", &dir.path().to_path_buf()),
        ("CHECK", &fifo),
    ] {
        let env = [
            (os("CNI_COMMAND"), os(verb)),
            (os("CNI_CONTAINERID"), os("bad3")),
            (os("CNI_IFNAME"), os("eth0")),
            (os("CNI_NETNS"), path.as_os_str().to_owned()),
        ];
        let r = run_raw(Some(&node_ns), &env, good.clone().into_bytes());
        assert!(!r.timed_out, "{verb} {path:?} hung: {r:?}");
        assert_eq!(r.json["code"], 3, "{verb} {path:?}: {r:?}");
        assert!(
            r.json["msg"]
                .as_str()
                .unwrap_or("")
                .contains("not a network namespace"),
            "{r:?}"
        );
        assert_eq!(agent_assigned(&lab), 0, "{verb} {path:?} allocated");
        assert_eq!(pod_wiring_snapshot(&node_ns), node_before);
    }

    // Agent not running: STATUS 50, ADD 11 with a clear message, nothing made.
    let dead = json!({"cniVersion": "1.1.0", "name": "podwire", "type": "podwire", "agentSocket": "/run/podwire/lab/t-bad/none.sock"});
    let st = run_plugin(&node_ns, &[("CNI_COMMAND", "STATUS")], &dead.to_string());
    assert_eq!(st.json["code"], 50, "{}", st.stdout);
    let ok = run_plugin(
        &node_ns,
        &[("CNI_COMMAND", "STATUS")],
        &call.conf("1.1.0").to_string(),
    );
    assert!(ok.ok, "STATUS with the agent up: {}", ok.stdout);
    let add = call.run("ADD", "bad2", &pod.path(), &dead, "p");
    assert_eq!(add.json["code"], 11, "{}", add.stdout);
    assert!(add.json["msg"]
        .as_str()
        .expect("msg")
        .contains("podwire-agent is not reachable"));
    assert_eq!(pod_wiring_snapshot(&node_ns), node_before);
    assert_eq!(kernel_snapshot(&pod.name), pod_before);
    assert_eq!(agent_assigned(&lab), 0);
}

/// One plugin run with raw (possibly non-UTF-8) environment and stdin, and a
/// deadline: a plugin that hangs is killed (by its PID) and reported as such.
#[derive(Debug)]
struct RawRun {
    timed_out: bool,
    /// `None` when killed by a signal (a panic with `panic = "abort"`).
    exit: Option<i32>,
    stdout: String,
    stderr: String,
    json: Value,
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn run_raw(node_ns: Option<&str>, env: &[(OsString, OsString)], stdin: Vec<u8>) -> RawRun {
    let mut cmd = match node_ns {
        // `ip netns exec` execs the plugin: the PID we kill is the plugin's.
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, plugin().as_str()]);
            c
        }
        None => Command::new(plugin()),
    };
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn plugin");
    let mut input = child.stdin.take().expect("stdin");
    // The plugin may stop reading (stdin cap): a failed write is not an error.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let reader_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&reader_out.join().expect("stdout")).into_owned();
    let stderr = String::from_utf8_lossy(&reader_err.join().expect("stderr")).into_owned();
    RawRun {
        timed_out,
        exit: status.code(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr,
    }
}

/// Runtimes pass their whole environment; a variable that is not UTF-8 and
/// not a CNI_ one is none of the plugin's business.
#[test]
fn non_utf8_environment_is_ignored_unless_it_is_a_cni_variable() {
    let junk = (os("PWT_JUNK"), OsString::from_vec(vec![0x66, 0xff, 0xfe]));
    let junk_key = (OsString::from_vec(vec![0xff, b'X']), os("1"));
    let r = run_raw(
        None,
        &[
            (os("CNI_COMMAND"), os("VERSION")),
            junk.clone(),
            junk_key.clone(),
        ],
        br#"{"cniVersion":"1.0.0"}"#.to_vec(),
    );
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert_eq!(r.json["supportedVersions"], json!(VERSIONS), "{r:?}");

    // A CNI_ variable the verb needs that is not UTF-8: code 4, named.
    let r = run_raw(
        None,
        &[
            (os("CNI_COMMAND"), os("ADD")),
            (os("CNI_CONTAINERID"), os("pwt1")),
            (os("CNI_NETNS"), os("/run/netns/pwt-none")),
            (os("CNI_IFNAME"), OsString::from_vec(vec![b'e', 0xff])),
            junk,
        ],
        br#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","agentSocket":"/run/podwire/pwt-none.sock"}"#
            .to_vec(),
    );
    assert_eq!(r.exit, Some(1), "{r:?}");
    assert_eq!(r.json["code"], 4, "{r:?}");
    assert!(
        r.json["msg"].as_str().unwrap_or("").contains("CNI_IFNAME"),
        "{r:?}"
    );
}

/// libcni validates a conflist by calling VERSION with placeholders in the
/// other CNI_ variables (podman 4 refused the network over `CNI_NETNS
/// "dummy"`). VERSION needs only CNI_COMMAND.
#[test]
fn version_probe_with_libcni_placeholders() {
    for stdin in [r#"{"cniVersion":"1.0.0"}"#, r#"{"cniVersion":"1.1.0"}"#] {
        let r = run_raw(
            None,
            &[
                (os("CNI_COMMAND"), os("VERSION")),
                (os("CNI_CONTAINERID"), os("")),
                (os("CNI_NETNS"), os("dummy")),
                (os("CNI_IFNAME"), os("dummy")),
                (os("CNI_ARGS"), os("")),
                (os("CNI_PATH"), os("dummy")),
            ],
            stdin.as_bytes().to_vec(),
        );
        assert_eq!(r.exit, Some(0), "{r:?}");
        let asked: Value = serde_json::from_str(stdin).expect("json");
        assert_eq!(r.json["cniVersion"], asked["cniVersion"], "{r:?}");
        assert_eq!(r.json["supportedVersions"], json!(VERSIONS), "{r:?}");
    }
}

/// stdin is capped at 1 MiB (a 200 MB `args` value made the plugin hold
/// 412 MB): larger is code 7 before anything is parsed, logs on stderr only.
#[test]
fn oversized_stdin_is_refused() {
    let mut big = br#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","args":{"x":""#.to_vec();
    big.resize(big.len() + 2 * 1024 * 1024, b'a');
    big.extend_from_slice(br#""}}"#);
    let r = run_raw(None, &[(os("CNI_COMMAND"), os("VERSION"))], big);
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(r.exit, Some(1), "{}", r.stderr);
    assert_eq!(r.json["code"], 7, "{}", r.stdout);
    assert!(
        r.json["msg"].as_str().unwrap_or("").contains("1 MiB"),
        "{}",
        r.stdout
    );
}

/// Kubelet recreates sandboxes: the same pod (same namespace/name, so the
/// same usual `eni…` name) under a new container id, sometimes before the
/// old sandbox is removed. DEL, CHECK and GC act only on their own
/// attachment's interface; ADD never destroys another's (issue 6 item 4).
#[test]
fn sandboxes_of_one_pod_never_unwire_each_other() {
    if !require_root() {
        return;
    }
    sandboxes_in("vpc");
}

#[test]
fn sandboxes_of_one_pod_never_unwire_each_other_in_overlay_mode() {
    if !require_root() {
        return;
    }
    sandboxes_in("overlay");
}

fn sandboxes_in(mode: &str) {
    let name = format!("t-sbx-{}", &mode[..2]);
    let lab = Lab::up(&name, &["--nodes", "1", "--mode", mode]);
    let (node_ns, socket) = lab_call(&lab);
    let call = Call {
        node_ns: &node_ns,
        socket,
    };
    let mut conf = call.conf("1.1.0");
    conf["mode"] = json!(mode);
    let before = pod_wiring_snapshot(&node_ns);
    let ns: Vec<Netns> = (0..3)
        .map(|i| Netns::new(&format!("pw-{name}-s{i}")))
        .collect();
    let ok = |r: PluginRun, what: &str| {
        assert!(r.ok, "{what}: {} {}", r.stdout, r.stderr);
        r
    };
    let check = |id: &str, n: &Netns| call.run("CHECK", id, &n.path(), &conf, "web");

    // CRI: StopPodSandbox(0), RunPodSandbox(1), RemovePodSandbox(0).
    ok(
        call.run("ADD", "sbx0", &ns[0].path(), &conf, "web"),
        "ADD 0",
    );
    ok(
        call.run("DEL", "sbx0", &ns[0].path(), &conf, "web"),
        "stop 0",
    );
    let add1 = ok(
        call.run("ADD", "sbx1", &ns[1].path(), &conf, "web"),
        "ADD 1",
    );
    let usual = add1.json["interfaces"][0]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    ok(
        call.run("DEL", "sbx0", &ns[0].path(), &conf, "web"),
        "remove 0",
    );
    ok(
        check("sbx1", &ns[1]),
        "attempt 1 keeps its network after attempt 0 is removed",
    );
    assert!(
        ip(&["-n", &node_ns, "link", "show", &usual]).contains(&usual),
        "the remove of attempt 0 deleted attempt 1's {usual}"
    );

    // A second live sandbox: ADD takes the fallback name, the first keeps
    // its interface.
    let add2 = ok(
        call.run("ADD", "sbx2", &ns[2].path(), &conf, "web"),
        "ADD 2",
    );
    let other = add2.json["interfaces"][0]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    assert_ne!(other, usual, "a live attachment's name was taken over");
    ok(check("sbx1", &ns[1]), "attempt 1 after attempt 2's ADD");
    ok(check("sbx2", &ns[2]), "attempt 2");
    let alias = ip(&["-n", &node_ns, "-d", "link", "show", &usual]);
    assert!(alias.contains("podwire podwire sbx1 eth0"), "{alias}");
    assert!(
        alias.contains("group 28791") || alias.contains("group 0x7077"),
        "{alias}"
    );

    // GC that keeps only attempt 2 removes attempt 1's interface, not 2's.
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "sbx2", "ifname": "eth0"}]);
    ok(call.run("GC", "", "", &gc_conf, "web"), "GC");
    ok(check("sbx2", &ns[2]), "attempt 2 after GC");
    assert!(!ip(&["-n", &node_ns, "-o", "link"]).contains(&usual));
    ok(
        call.run("DEL", "sbx1", &ns[1].path(), &conf, "web"),
        "DEL 1 (already GC'd)",
    );
    ok(check("sbx2", &ns[2]), "attempt 2 after DEL 1");
    ok(
        call.run("DEL", "sbx2", &ns[2].path(), &conf, "web"),
        "DEL 2",
    );
    assert_eq!(pod_wiring_snapshot(&node_ns), before, "nothing left behind");
    assert_eq!(agent_assigned(&lab), 0, "no address held");
}

/// Runs the plugin binary directly (no node namespace) with a deadline for
/// the test itself.
fn plugin_direct(cmd: &str, netns: &str, conf: &Value) -> (PluginRun, Duration) {
    let started = Instant::now();
    let mut c = Command::new(plugin());
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "slow1")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let run = PluginRun {
        ok: out.status.success(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (run, started.elapsed())
}

/// One deadline per call, from `timeoutSeconds`: an agent that accepts and
/// never answers holds no verb longer (issue 6 item 11).
#[test]
fn a_silent_agent_holds_no_call_past_its_deadline() {
    if !require_root() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("pwt-silent")
        .tempdir()
        .expect("dir");
    let sock = dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    // Accepts and keeps every connection open without a word.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let conf = json!({"cniVersion": "1.1.0", "name": "podwire", "type": "podwire", "agentSocket": sock, "timeoutSeconds": 2});
    let ns = Netns::new("pw-t-silent");
    for (cmd, code) in [("STATUS", 50), ("ADD", 11)] {
        let (r, took) = plugin_direct(cmd, &ns.path(), &conf);
        assert!(!r.ok, "{cmd}: {}", r.stdout);
        assert_eq!(r.json["code"], code, "{cmd}: {}", r.stdout);
        assert!(
            took < Duration::from_secs(6),
            "{cmd} waited {took:?} with timeoutSeconds 2"
        );
    }
}

/// An ADD the plugin gave up on (agent paused past the deadline, then
/// resumed) leaves no address held: the agent cannot deliver the answer and
/// releases it (issue 6 item 12).
#[test]
fn an_add_given_up_on_leaves_no_address_held() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-giveup", &["--nodes", "1"]);
    let (node_ns, socket) = lab_call(&lab);
    let pid = lab.status()["nodes"][0]["agent_pid"]
        .as_i64()
        .expect("agent pid");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    let call = Call {
        node_ns: &node_ns,
        socket,
    };
    let mut conf = call.conf("1.1.0");
    conf["timeoutSeconds"] = json!(1);
    let ns = Netns::new("pw-t-giveup-p");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop");
    let add = call.run("ADD", "gone1", &ns.path(), &conf, "gone");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("cont");
    assert!(!add.ok, "the ADD should have timed out: {}", add.stdout);
    assert_eq!(add.json["code"], 11, "{}", add.stdout);
    // The agent wakes up, serves the queued ADD, finds nobody listening and
    // gives the address back; its log says so.
    let log_path = format!("/run/podwire/lab/{}/node-1/agent.log", lab.name);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("did not take the ADD answer") {
            break;
        }
        assert!(Instant::now() < deadline, "no release logged:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        agent_assigned(&lab),
        0,
        "an address is held for an ADD nobody took"
    );
    // And the attachment is unknown: a GC finds nothing of it.
    let lookup = podwire_proto::call(
        std::path::Path::new(
            &lab.status()["nodes"][0]["agent_socket"]
                .as_str()
                .expect("sock"),
        ),
        &podwire_proto::Request::Get {
            key: podwire_proto::AttachmentKey {
                network: "podwire".into(),
                container_id: "gone1".into(),
                ifname: "eth0".into(),
            },
        },
        Instant::now() + Duration::from_secs(5),
    );
    assert!(
        matches!(
            lookup,
            Ok(podwire_proto::Response::Found { allocation: None })
        ),
        "{lookup:?}"
    );
}
