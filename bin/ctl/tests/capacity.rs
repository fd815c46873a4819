//! `podwirectl capacity`, driven as an operator drives it: max pods for
//! every instance type against the VPC CNI's published list, the planner's
//! JSON, unknown types, `--live` against a stand-in agent on loopback and
//! against a lab's agents.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ctl, ctl_ok, require_root, text, Lab};
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ctl_ok(args)).expect("JSON")
}

/// data/eni-max-pods.txt: type -> max pods.
fn published() -> BTreeMap<String, u64> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/eni-max-pods.txt");
    std::fs::read_to_string(path)
        .expect("eni-max-pods.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split_whitespace();
            let ty = it.next().expect("type").to_string();
            (ty, it.next().expect("pods").parse().expect("number"))
        })
        .collect()
}

/// Every one of the 1391 types through the CLI: `max_pods` equals the
/// published list; `max_pods_prefix_delegation` is always present, and
/// either a number within the 110/250 cap or null with a reason.
#[test]
fn max_pods_of_every_type_match_the_published_list() {
    let list = published();
    assert_eq!(list.len(), 1391);
    for (ty, want) in &list {
        let v = json(&["capacity", "--instance-type", ty, "--json"]);
        assert_eq!(v["instance_type"], ty.as_str());
        assert_eq!(v["max_pods"].as_u64(), Some(*want), "{ty}");
        assert_eq!(v["kubelet_max_pods"].as_u64(), Some(*want), "{ty}");
        let pd = v.get("max_pods_prefix_delegation").expect("field present");
        match pd.as_u64() {
            Some(n) => {
                let cap = if v["vcpus"].as_u64().expect("vCPUs known") > 30 {
                    250
                } else {
                    110
                };
                let uncapped = v["max_pods_prefix_delegation_uncapped"]
                    .as_u64()
                    .expect("uncapped");
                assert_eq!(n, uncapped.min(cap), "{ty}");
            }
            None => assert!(v["max_pods_prefix_delegation_note"].is_string(), "{ty}"),
        }
    }
}

#[test]
fn prefix_delegation_sets_the_kubelet_figure() {
    let v = json(&[
        "capacity",
        "--instance-type",
        "m5.large",
        "--prefix-delegation",
        "--json",
    ]);
    assert_eq!(
        (
            v["max_pods"].as_u64(),
            v["max_pods_prefix_delegation"].as_u64(),
            v["kubelet_max_pods"].as_u64()
        ),
        (Some(29), Some(110), Some(110))
    );
    let human = ctl_ok(&[
        "capacity",
        "--instance-type",
        "m5.large",
        "--prefix-delegation",
    ]);
    assert!(human.contains("--max-pods=110"), "{human}");
    // A Xen type takes no prefixes: non-zero, and why.
    let o = ctl(&[
        "capacity",
        "--instance-type",
        "c4.large",
        "--prefix-delegation",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a Nitro"));
}

#[test]
fn an_unknown_type_fails_and_names_the_nearest() {
    let o = ctl(&["capacity", "--instance-type", "m5.larg", "--json"]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "no half answer on stdout");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown instance type \"m5.larg\""), "{err}");
    assert!(err.contains("did you mean m5.large"), "{err}");
}

/// The planner's JSON, figures worked by hand in docs/CAPACITY.md.
#[test]
fn the_planner_answers_in_json() {
    let v = json(&[
        "capacity",
        "--subnet",
        "10.0.0.0/20",
        "--instance-type",
        "m5.large",
        "--nodes",
        "40",
        "--json",
    ]);
    assert_eq!(v["group"]["pods_fit"], 1080);
    assert_eq!(v["group"]["limited_by"], "instance_limit");
    assert_eq!(v["group"]["idle"]["warm_addresses"], 360);
    let v = json(&[
        "capacity",
        "--subnet",
        "10.0.0.0/20",
        "--instance-type",
        "m5.large",
        "--nodes",
        "40",
        "--prefix-delegation",
        "--warm-prefix-target",
        "1",
        "--json",
    ]);
    assert_eq!(v["group"]["pods_fit"], 2574);
    assert_eq!(v["group"]["pods_at_exhaustion"], 2575);
    assert_eq!(v["group"]["limited_by"], "prefix_fragmentation");
    // Mutually exclusive targets are refused by the parser.
    let o = ctl(&[
        "capacity",
        "--subnet",
        "10.0.0.0/20",
        "--instance-type",
        "m5.large",
        "--nodes",
        "4",
        "--warm-eni-target",
        "1",
        "--warm-ip-target",
        "2",
    ]);
    assert!(!o.status.success());
    // A subnet EC2 cannot have.
    let o = ctl(&[
        "capacity",
        "--subnet",
        "10.0.0.0/30",
        "--instance-type",
        "m5.large",
        "--nodes",
        "4",
    ]);
    assert!(!o.status.success());
}

/// Newuser F10: a plan whose idle node does not fit the subnet exited 0;
/// now it exits 1 and still prints the whole answer.
#[test]
fn a_plan_that_cannot_start_exits_1() {
    let args = [
        "capacity",
        "--subnet",
        "10.0.0.0/28",
        "--instance-type",
        "m5.large",
        "--nodes",
        "1",
        "--prefix-delegation",
    ];
    let o = ctl(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("DOES NOT FIT"), "{}", text(&o));
    let o = ctl(&[&args[..], &["--json"]].concat());
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["group"]["idle_fits"], false);
    // A subnet that only limits the pods is a figure: exit 0.
    ctl_ok(&[
        "capacity",
        "--subnet",
        "10.0.0.0/24",
        "--instance-type",
        "m5.large",
        "--nodes",
        "4",
    ]);
}

/// A stand-in agent on loopback serving one /v1/state document per
/// connection, `answers` times.
fn stand_in_agent(body: &'static str, answers: usize) -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        for _ in 0..answers {
            let (mut c, _) = l.accept().expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (format!("http://{addr}"), h)
}

#[test]
fn live_reads_the_capacity_object_of_each_agent() {
    let (a, ha) = stand_in_agent(
        include_str!("../../../crates/capacity/tests/fixtures/state-vpc-roomy.json"),
        1,
    );
    let (b, hb) = stand_in_agent(
        include_str!("../../../crates/capacity/tests/fixtures/state-vpc-nearly-full.json"),
        1,
    );
    let o = ctl(&["capacity", "--live", "--agent", &a, "--agent", &b, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["totals"]["ips_in_use"], 3 + 25);
    assert_eq!(v["nodes"][1]["node"], "node-2");
    assert!(v["nodes"][1]["warning"].is_string(), "25 of 27 in use");
    assert_eq!(v["subnets"][0]["available"], 3990);
    ha.join().expect("agent a");
    hb.join().expect("agent b");
    // A silent endpoint: the report says so and the exit is non-zero.
    let o = ctl(&["capacity", "--live", "--agent", "http://127.0.0.1:1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no answer"), "{}", text(&o));
}

/// `--live --lab` reaches every node's agent inside its namespace, and
/// `--live` run inside a node asks that node's agent.
#[test]
fn live_reaches_a_labs_agents() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-cap", &["--nodes", "2"]);
    let v: Value = serde_json::from_str(&ctl_ok(&[
        "capacity", "--live", "--lab", &lab.name, "--json",
    ]))
    .expect("JSON");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["node"], format!("node-{}", i + 1));
        assert!(n["error"].is_null(), "{n}");
        // Figures, or (before the agents report them) a note saying so.
        assert!(n["capacity"].is_object() || n["note"].is_string(), "{n}");
    }
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node_ns(1),
            common::podwirectl(),
            "capacity",
            "--live",
            "--json",
        ])
        .output()
        .expect("podwirectl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["nodes"][0]["node"], "node-1");
}

/// The live figures follow the pods, from the agents' `capacity` object.
#[test]
fn live_figures_match_the_pods_of_a_lab() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-caplive", &["--nodes", "2"]);
    for (pod, node) in [
        ("c1", "node-1"),
        ("c2", "node-1"),
        ("c3", "node-1"),
        ("c4", "node-2"),
        ("c5", "node-2"),
    ] {
        lab.pod_add(pod, node, false);
    }
    let live = || -> Value {
        serde_json::from_str(&ctl_ok(&[
            "capacity", "--live", "--lab", &lab.name, "--json",
        ]))
        .expect("JSON")
    };
    // The agents count a pod once its ADD answered; poll with a deadline
    // rather than assume the figures are already there.
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let v = live();
        if v["totals"]["ips_in_use"] == 5 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "live figures never showed 5 pods: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let per_node: Vec<u64> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["capacity"]["ips_in_use"].as_u64().expect("in use"))
        .collect();
    assert_eq!(per_node, [3, 2]);
    for n in v["nodes"].as_array().expect("nodes") {
        let c = &n["capacity"];
        assert!(c["enis_used"].as_u64() <= c["enis_allowed"].as_u64(), "{n}");
        // The lab's default type, m5.large: 29 max pods.
        assert_eq!(c["max_pods"], 29, "{n}");
        assert!(c["subnet"]["available"].as_u64().is_some(), "{n}");
    }
    lab.ctl_ok(&["lab", "pod", "del", "c5"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while live()["totals"]["ips_in_use"] != 4 {
        assert!(
            Instant::now() < deadline,
            "live figures never dropped to 4 pods"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
