//! The agents' metrics endpoint in a lab, in both modes: `/metrics` is
//! scraped from inside the node's namespace and read with a Prometheus
//! exposition-format parser; its counters and gauges must move as pods
//! come and go. `/healthz`, `/v1/state` and `podwirectl node status` are
//! read from the same live agent.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{require_root, Lab};
use prometheus_parse::{Scrape, Value};

const ENDPOINT: &str = "http://127.0.0.1:61678";

/// GETs `path` from the agent of the node in `netns` (from inside it).
fn get(netns: &str, path: &str) -> podwire_lab::ops::HttpAnswer {
    let ns = std::path::PathBuf::from("/run/netns").join(netns);
    let path = path.to_string();
    podwire_netlink::netns::run_in(&ns, move || {
        podwire_lab::ops::http_get(ENDPOINT, &path, Duration::from_secs(5))
    })
    .expect("enter the node's namespace")
    .expect("the agent's endpoint answers")
}

fn scrape(netns: &str) -> Scrape {
    let a = get(netns, "/metrics");
    assert_eq!(a.status, 200, "{}", a.body);
    Scrape::parse(a.body.lines().map(|l| Ok(l.to_string()))).expect("exposition format")
}

/// The sum of the samples named `metric` whose labels include `labels`
/// (a histogram counts its observations).
fn sum(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b
                .iter()
                .find(|c| c.less_than.is_infinite())
                .map_or(0.0, |c| c.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// What the test follows, read from one scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    adds: f64,
    add_latency_count: f64,
    dels: f64,
    assigned: f64,
}

fn seen(s: &Scrape) -> Seen {
    Seen {
        adds: sum(
            s,
            "podwire_cni_requests_total",
            &[("verb", "add"), ("result", "ok")],
        ),
        add_latency_count: sum(
            s,
            "podwire_cni_request_duration_seconds",
            &[("verb", "add"), ("result", "ok")],
        ),
        dels: sum(
            s,
            "podwire_cni_requests_total",
            &[("verb", "del"), ("result", "ok")],
        ),
        assigned: sum(s, "podwire_addresses", &[("state", "assigned")]),
    }
}

/// Scrapes until `want` holds (the plugin's answer and the next scrape
/// race nothing, but a deadline beats an assumption).
fn until(netns: &str, what: &str, want: impl Fn(&Seen) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(netns);
        let now = seen(&s);
        if want(&now) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: metrics show {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `podwirectl node status` run inside the node's namespace.
fn node_status(netns: &str, args: &[&str]) -> serde_json::Value {
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            common::podwirectl(),
            "node",
            "status",
        ])
        .args(args)
        .arg("--json")
        .output()
        .expect("podwirectl");
    assert!(o.status.success(), "{}", common::text(&o));
    serde_json::from_slice(&o.stdout).expect("json")
}

/// A pod comes and goes on node-1: ADD +1, assigned +1, then DEL +1 and
/// assigned back. Returns the scrape taken while the pod lived and its IP.
fn pods_move_the_metrics(lab: &Lab) {
    let ns = lab.node_ns(1);
    let before = seen(&scrape(&ns));
    lab.pod_add("m1", "node-1", false);
    let ip = lab.pod_ip("m1");
    let live = until(&ns, "after ADD", |s| {
        s.adds == before.adds + 1.0
            && s.add_latency_count == before.add_latency_count + 1.0
            && s.assigned == before.assigned + 1.0
    });

    // The pod's address, with its holder, in /v1/state.
    let state = get(&ns, "/v1/state");
    assert_eq!(state.status, 200);
    let v: serde_json::Value = serde_json::from_str(&state.body).expect("state json");
    let holders: Vec<&serde_json::Value> = v["enis"]
        .as_array()
        .into_iter()
        .chain(v["blocks"].as_array())
        .flatten()
        .flat_map(|g| g["addresses"].as_array().into_iter().flatten())
        .filter(|a| a["ip"] == ip.as_str())
        .collect();
    assert_eq!(holders.len(), 1, "{ip} in {v:#}");
    assert!(
        holders[0]["holder"].as_str().is_some_and(|h| !h.is_empty()),
        "{:#}",
        holders[0]
    );
    assert_eq!(v["node"], "node-1");
    assert!(v["last_errors"].is_array());

    // /healthz and the ready gauge agree with STATUS.
    let h = get(&ns, "/healthz");
    assert_eq!(h.status, 200, "{}", h.body);
    assert!(h.body.starts_with("ready"), "{}", h.body);
    assert_eq!(sum(&live, "podwire_agent_ready", &[]), 1.0);

    // podwirectl node status, over HTTP and over the socket.
    let over_http = node_status(&ns, &["--endpoint", ENDPOINT]);
    assert_eq!(over_http["ready"], true);
    assert_eq!(over_http["assigned_ips"], v["assigned_ips"]);
    let st = lab.status();
    let node = &st["nodes"][0];
    let socket = node["agent_socket"].as_str().expect("agent_socket");
    let over_socket = node_status(&ns, &["--socket", socket]);
    assert_eq!(over_socket["ready"], true);
    assert_eq!(over_socket["assigned_ips"], over_http["assigned_ips"]);
    // lab status keeps its fields.
    for f in ["ready", "free_ips", "assigned_ips", "message"] {
        assert!(!node["agent"][f].is_null(), "lab status nodes[0].agent.{f}");
    }

    lab.ctl_ok(&["lab", "pod", "del", "m1"]);
    until(&ns, "after DEL", |s| {
        s.dels == before.dels + 1.0 && s.assigned == before.assigned
    });
}

#[test]
fn vpc_metrics_follow_pods() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-mvpc", &["--nodes", "1"]);
    pods_move_the_metrics(&lab);
    let s = scrape(&lab.node_ns(1));
    // m5.large: 3 ENIs allowed; the primary is attached at least.
    assert_eq!(sum(&s, "podwire_enis_allowed", &[]), 3.0);
    assert!(sum(&s, "podwire_enis_attached", &[]) >= 1.0);
    // The agent's EC2 calls, counted by action (start-up describes its ENIs).
    assert!(
        sum(
            &s,
            "podwire_ec2_requests_total",
            &[("action", "DescribeNetworkInterfaces"), ("result", "ok")]
        ) >= 1.0
    );
    assert!(
        sum(
            &s,
            "podwire_ec2_request_duration_seconds",
            &[("action", "DescribeNetworkInterfaces")]
        ) >= 1.0
    );
    // Per-ENI address gauges add up: total = assigned + free + cooling.
    let total = sum(&s, "podwire_addresses", &[("state", "total")]);
    let parts = ["assigned", "free", "cooling"]
        .iter()
        .map(|st| sum(&s, "podwire_addresses", &[("state", st)]))
        .sum::<f64>();
    assert!(total > 0.0);
    assert_eq!(total, parts);
}

#[test]
fn overlay_metrics_follow_pods() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-mover", &["--mode", "overlay", "--nodes", "2"]);
    let ns = lab.node_ns(1);
    let before = scrape(&ns);
    let allocs = |s: &Scrape| {
        sum(
            s,
            "podwire_datastore_operation_duration_seconds",
            &[("op", "allocate")],
        )
    };
    let a0 = allocs(&before);
    pods_move_the_metrics(&lab);
    let s = scrape(&ns);
    assert_eq!(allocs(&s), a0 + 1.0, "one datastore allocate per ADD");
    // The other node is programmed into the VXLAN device.
    assert_eq!(sum(&s, "podwire_overlay_peers", &[]), 1.0);
    assert!(sum(&s, "podwire_reconcile_runs_total", &[("loop", "resync")]) >= 1.0);
    assert!(
        sum(
            &s,
            "podwire_addresses",
            &[("scope", "block"), ("state", "total")]
        ) > 0.0
    );
}
