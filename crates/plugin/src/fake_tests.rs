//! The verbs end to end without root: the fake kernel
//! (`podwire_netlink::fake`) in place of netlink, and a fake agent — a
//! thread serving podwire_proto on a Unix socket in a temp dir, answering
//! from a script and recording what it was asked.

use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use podwire_dataplane::names::{fallback_veth_name, host_veth_name, owner_alias};
use podwire_netlink::fake::{FakeKernel, FakeNetlink, HOST_NS};
use podwire_netlink::{Netlink, Route};
use podwire_proto::{
    read_request, write_response, Allocation, AttachmentKey, Egress, ErrorKind, Request, Response,
};
use serde_json::Value;

use crate::{run_with, Outcome};

/// A namespace path that passes the plugin's statfs check without root
/// (the test's own); the fake kernel knows it as the pod's sandbox.
const NETNS: &str = "/proc/self/ns/net";
const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 32, 7);

type Script = Box<dyn Fn(&Request) -> Response + Send>;

/// A scripted agent on a Unix socket. Stops (and removes its socket) when
/// dropped.
struct FakeAgent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAgent {
    fn start(script: impl Fn(&Request) -> Response + Send + 'static) -> FakeAgent {
        let dir = tempfile::Builder::new()
            .prefix("pwt-agent")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Script = Box::new(script);
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let deadline = Instant::now() + Duration::from_secs(5);
                    let Ok(incoming) = read_request(&stream, deadline) else {
                        continue;
                    };
                    let answer = script(&incoming.request);
                    seen.lock().expect("seen").push(incoming.request);
                    let _ = write_response(&stream, &answer, deadline);
                }
            })
        };
        FakeAgent {
            _dir: dir,
            socket,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Request> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn key() -> AttachmentKey {
    AttachmentKey {
        network: "pw".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
    }
}

fn allocation(table: u32) -> Allocation {
    Allocation {
        key: key(),
        ip: IP,
        egress: if table == podwire_proto::TABLE_MAIN {
            Egress::Main
        } else {
            Egress::EniTable {
                eni_id: "eni-1".into(),
                device_number: table - 1,
                table,
            }
        },
        pod_namespace: Some("default".into()),
        pod_name: Some("web".into()),
        mtu: None,
    }
}

/// An agent that holds one attachment (10.0.32.7, ENI table 3) once asked
/// for it, and releases it on DEL.
fn good_agent() -> FakeAgent {
    let held = Mutex::new(None::<Allocation>);
    FakeAgent::start(move |req| {
        let mut held = held.lock().expect("held");
        match req {
            Request::Add(_) => {
                *held = Some(allocation(3));
                Response::Allocated {
                    allocation: allocation(3),
                }
            }
            Request::Get { .. } => Response::Found {
                allocation: held.clone(),
            },
            Request::Del { .. } => Response::Released {
                allocations: held.take().into_iter().collect(),
            },
            Request::Gc { .. } => Response::Released {
                allocations: held.take().into_iter().collect(),
            },
            Request::Status => Response::Error {
                kind: ErrorKind::Internal,
                message: "not scripted".into(),
            },
        }
    })
}

fn conf(socket: &Path, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.1.0","name":"pw","type":"podwire","mode":"vpc","agentSocket":"{}"{extra}}}"#,
        socket.display()
    )
}

fn env(verb: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", verb),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", NETNS),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"),
    ]
}

fn node() -> FakeKernel {
    let k = FakeKernel::new();
    k.add_link(HOST_NS, "eth0", None);
    k.add_netns(Path::new(NETNS));
    k
}

fn call(k: &FakeKernel, verb: &str, conf: &str) -> Outcome {
    let k = k.clone();
    let open = move || -> podwire_netlink::Result<FakeNetlink> { Ok(k.host()) };
    run_with(env(verb), conf.as_bytes(), &open)
}

fn code(o: &Outcome) -> u64 {
    let v: Value = serde_json::from_str(&o.stdout).unwrap_or(Value::Null);
    v["code"].as_u64().unwrap_or(0)
}

fn usual_name() -> String {
    host_veth_name("eni", Some("default"), Some("web"), "c1")
}

fn prev_result(o: &Outcome) -> String {
    format!(r#","prevResult":{}"#, o.stdout)
}

#[test]
fn add_asks_once_wires_the_pod_and_prints_the_result() {
    let k = node();
    let agent = good_agent();
    let o = call(&k, "ADD", &conf(&agent.socket, ""));
    assert_eq!(o.exit_code, 0, "{}", o.stdout);
    let v: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["ips"][0]["address"], "10.0.32.7/32");
    assert_eq!(v["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(v["interfaces"][0]["name"], usual_name().as_str());
    assert_eq!(v["interfaces"][1]["sandbox"], NETNS);
    assert!(matches!(agent.seen().as_slice(), [Request::Add(a)] if a.key == key()));

    let host = k.state(HOST_NS);
    let veth = host.link(&usual_name()).expect("host veth");
    assert_eq!(veth.alias, Some(owner_alias("pw", "c1", "eth0")));
    assert!(host.rules.iter().any(|r| r.table == 3));
    let pod = k.state(NETNS);
    assert_eq!(pod.addresses.len(), 1);
}

#[test]
fn exhausted_is_code_100_and_wires_nothing() {
    let k = node();
    let agent = FakeAgent::start(|_| Response::Error {
        kind: ErrorKind::Exhausted,
        message: "node n has no IP address left".into(),
    });
    let before = k.snapshot();
    let o = call(&k, "ADD", &conf(&agent.socket, ""));
    assert_eq!(code(&o), 100, "{}", o.stdout);
    assert!(o.stdout.contains("no IP address left"), "{}", o.stdout);
    assert_eq!(k.snapshot(), before);
    assert!(k.take_calls().iter().all(|c| !c.mutates));
    assert_eq!(agent.seen().len(), 1);
}

#[test]
fn failed_wiring_gives_the_address_back() {
    // The pod already has an eth0: code 102, DEL sent, nothing left.
    let k = node();
    k.add_link(NETNS, "eth0", None);
    let agent = good_agent();
    let before = k.snapshot();
    let o = call(&k, "ADD", &conf(&agent.socket, ""));
    assert_eq!(code(&o), 102, "{}", o.stdout);
    assert_eq!(k.snapshot(), before);
    assert!(
        matches!(agent.seen().as_slice(), [Request::Add(_), Request::Del { key: k }] if *k == key()),
        "{:?}",
        agent.seen()
    );

    // A kernel failure half-way (the pod's routes): code 103, DEL sent,
    // nothing left.
    let k = node();
    let agent = good_agent();
    let before = k.snapshot();
    let clean_run = {
        let k2 = node();
        let a2 = good_agent();
        let n0 = k2.op_count();
        assert_eq!(call(&k2, "ADD", &conf(&a2.socket, "")).exit_code, 0);
        k2.op_count() - n0
    };
    k.fail_nth(clean_run / 2, nix::errno::Errno::ENOBUFS);
    let o = call(&k, "ADD", &conf(&agent.socket, ""));
    assert_eq!(code(&o), 103, "{}", o.stdout);
    assert!(k.failure_consumed());
    assert_eq!(k.snapshot(), before);
    assert!(matches!(
        agent.seen().as_slice(),
        [Request::Add(_), Request::Del { .. }]
    ));
}

#[test]
fn del_with_the_agent_down_removes_the_kernel_side_from_prev_result() {
    let k = node();
    let agent = good_agent();
    let c = conf(&agent.socket, "");
    let added = call(&k, "ADD", &c);
    assert_eq!(added.exit_code, 0, "{}", added.stdout);
    drop(agent);

    let o = call(
        &k,
        "DEL",
        &conf(Path::new("/nonexistent/pwt.sock"), &prev_result(&added)),
    );
    assert_eq!(code(&o), 11, "{}", o.stdout);
    let host = k.state(HOST_NS);
    assert!(host.link(&usual_name()).is_none(), "veth removed");
    assert!(host.rules.is_empty(), "rules removed: {:?}", host.rules);
    assert!(host.routes.is_empty());
    assert!(k.state(NETNS).link("eth0").is_none());
}

#[test]
fn del_releases_after_unwiring_and_a_repeated_del_only_cleans() {
    let k = node();
    let agent = good_agent();
    let c = conf(&agent.socket, "");
    assert_eq!(call(&k, "ADD", &c).exit_code, 0);
    let o = call(&k, "DEL", &c);
    assert_eq!(o.exit_code, 0, "{}", o.stdout);
    assert_eq!(
        k.snapshot(),
        node().snapshot(),
        "everything ADD made is gone"
    );
    assert!(matches!(
        agent.seen().as_slice(),
        [Request::Add(_), Request::Get { .. }, Request::Del { .. }]
    ));

    // Nothing held any more; a leftover veth of this attachment goes, the
    // link of another sandbox of the pod stays.
    let theirs = k.add_link(
        HOST_NS,
        &usual_name(),
        Some(&owner_alias("pw", "c0", "eth0")),
    );
    let fallback = fallback_veth_name("eni", "c1", "eth0");
    k.add_link(HOST_NS, &fallback, Some(&owner_alias("pw", "c1", "eth0")));
    let o = call(&k, "DEL", &c);
    assert_eq!(o.exit_code, 0, "{}", o.stdout);
    let host = k.state(HOST_NS);
    assert!(host.link(&fallback).is_none());
    assert_eq!(host.link(&usual_name()), Some(theirs));
    assert_eq!(
        agent.seen().len(),
        4,
        "no second release: {:?}",
        agent.seen()
    );
}

#[test]
fn check_passes_on_an_intact_pod_and_reports_breakage() {
    let k = node();
    let agent = good_agent();
    let c = conf(&agent.socket, "");
    let added = call(&k, "ADD", &c);
    let with_prev = conf(&agent.socket, &prev_result(&added));
    let o = call(&k, "CHECK", &with_prev);
    assert_eq!(o.exit_code, 0, "{}", o.stdout);

    // prevResult naming another address.
    let other = prev_result(&added).replace("10.0.32.7", "10.0.32.8");
    let o = call(&k, "CHECK", &conf(&agent.socket, &other));
    assert_eq!(code(&o), 104, "{}", o.stdout);

    // The pod lost its default route.
    k.connect(NETNS)
        .delete_route(&Route::new(Ipv4Net::default()).via(podwire_dataplane::pod::GATEWAY))
        .expect("delete");
    let o = call(&k, "CHECK", &with_prev);
    assert_eq!(code(&o), 104, "{}", o.stdout);
    assert!(o.stdout.contains("default route"), "{}", o.stdout);
}

#[test]
fn check_of_an_unknown_attachment_is_code_3_and_reads_no_kernel() {
    let k = node();
    let agent = FakeAgent::start(|_| Response::Found { allocation: None });
    let o = call(&k, "CHECK", &conf(&agent.socket, ""));
    assert_eq!(code(&o), 3, "{}", o.stdout);
    assert!(k.take_calls().is_empty());
}

#[test]
fn gc_removes_the_host_side_of_what_the_agent_released() {
    let k = node();
    let agent = good_agent();
    assert_eq!(call(&k, "ADD", &conf(&agent.socket, "")).exit_code, 0);
    let o = call(
        &k,
        "GC",
        &conf(
            &agent.socket,
            r#","cni.dev/valid-attachments":[{"containerID":"c2","ifname":"eth0"}]"#,
        ),
    );
    assert_eq!(o.exit_code, 0, "{}", o.stdout);
    match agent.seen().last() {
        Some(Request::Gc { network, valid }) => {
            assert_eq!(network, "pw");
            assert_eq!(valid.len(), 1);
            assert_eq!(valid[0].container_id, "c2");
        }
        other => panic!("expected GC, got {other:?}"),
    }
    let host = k.state(HOST_NS);
    assert!(host.link(&usual_name()).is_none());
    assert!(host.rules.is_empty());
}
