//! The vpc agent's address pool end to end in the lab (issue 9 §1-§3):
//! replies that list the primary, addresses unassigned out of band,
//! leftover and foreign ENIs, convergence to the warm targets after a
//! burst, EC2 faults, and prefix delegation. Two lab bring-ups: one for
//! the pool's truth and targets (faults injected on the running lab), one
//! for prefixes.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use common::{eventually, hop_ips, ping, require_root, Lab};
use ipnet::Ipv4Net;
use serde_json::Value;

const ENDPOINT: &str = "http://127.0.0.1:61678";

/// GETs the agent's `/v1/state` from inside the node's namespace.
fn agent_state(netns: &str) -> Value {
    let ns = std::path::PathBuf::from("/run/netns").join(netns);
    let a = podwire_netlink::netns::run_in(&ns, move || {
        podwire_lab::ops::http_get(ENDPOINT, "/v1/state", Duration::from_secs(5))
    })
    .expect("enter the node's namespace")
    .expect("the agent's endpoint answers");
    serde_json::from_str(&a.body).expect("/v1/state is JSON")
}

fn agent_metrics(netns: &str) -> String {
    let ns = std::path::PathBuf::from("/run/netns").join(netns);
    podwire_netlink::netns::run_in(&ns, move || {
        podwire_lab::ops::http_get(ENDPOINT, "/metrics", Duration::from_secs(5))
    })
    .expect("enter the node's namespace")
    .expect("the agent's endpoint answers")
    .body
}

/// The node's ENIs as the lab cloud has them (`lab status`).
fn cloud_enis(lab: &Lab, node: &str) -> Vec<Value> {
    lab.status()["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == node)
        .expect("node")["enis"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn instance_id(lab: &Lab, node: &str) -> String {
    lab.status()["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == node)
        .expect("node")["instance_id"]
        .as_str()
        .expect("id")
        .to_string()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every primary address of every ENI in the lab.
fn primaries(lab: &Lab) -> BTreeSet<String> {
    let st = lab.status();
    let mut out = BTreeSet::new();
    for n in st["nodes"].as_array().expect("nodes") {
        out.insert(n["primary_ip"].as_str().expect("ip").to_string());
        for e in n["enis"].as_array().into_iter().flatten() {
            if let Some(p) = e["primary_ip"].as_str() {
                out.insert(p.to_string());
            }
        }
    }
    out
}

/// Addresses the cloud lists for the node (secondaries and every address
/// of its prefixes).
fn cloud_addresses(lab: &Lab, node: &str) -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::new();
    for e in cloud_enis(lab, node) {
        for s in strs(&e["secondary_ips"]) {
            out.insert(s.parse().expect("ip"));
        }
        for p in strs(&e["prefixes"]) {
            let net: Ipv4Net = p.parse().expect("prefix");
            let (a, b) = (u32::from(net.network()), u32::from(net.broadcast()));
            out.extend((a..=b).map(Ipv4Addr::from));
        }
    }
    out
}

/// Addresses in the agent's pool (any state).
fn pool_addresses(netns: &str) -> BTreeSet<Ipv4Addr> {
    agent_state(netns)["enis"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["ip"].as_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// Unattached ENIs in the whole lab cloud (their ids).
fn available_enis(lab: &Lab) -> Vec<String> {
    let xml = lab.ctl_ok(&[
        "lab",
        "ec2",
        "DescribeNetworkInterfaces",
        "Filter.1.Name=status",
        "Filter.1.Value.1=available",
    ]);
    xml.split("<networkInterfaceId>")
        .skip(1)
        .filter_map(|s| s.split('<').next())
        .map(str::to_string)
        .collect()
}

/// The agents' `--eni-gc-grace` in the pool lab.
const GC_GRACE_SECS: u64 = 25;

/// Now plus `secs`, as the created-at tag spells it.
fn rfc3339_from_now(secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    podwire_ipam::eni_gc::format_rfc3339(now + secs)
}

/// A node's agent's command line, from its process.
fn agent_cmdline(lab: &Lab, node: &str) -> Vec<String> {
    let pid = lab.status()["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == node)
        .expect("node")["agent_pid"]
        .as_i64()
        .expect("the agent runs");
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .expect("the agent's cmdline")
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn created_eni_id(xml: &str) -> String {
    xml.split("<networkInterfaceId>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("an ENI id in the reply")
        .to_string()
}

/// (a), (b), (c), (d) and (f) on one lab.
#[test]
fn the_pool_stays_true_meets_its_targets_and_survives_ec2_faults() {
    if !require_root() {
        return;
    }
    // Short pool timers instead of the agents' 60 s / 300 s: the grace
    // stays above one EC2 call's budget (20 s), so under the faults of (f)
    // no ENI of the agent's own is swept between its create and attach.
    let lab = Lab::up(
        "t-vpool",
        &[
            "--ec2-assign-reply",
            "all",
            "--reconcile-interval",
            "2",
            "--eni-gc-grace",
            &GC_GRACE_SECS.to_string(),
        ],
    );
    let ns1 = lab.node_ns(1);
    let id1 = instance_id(&lab, "node-1");
    for node in ["node-1", "node-2"] {
        let args = agent_cmdline(&lab, node);
        for (flag, want) in [
            ("--reconcile-interval", "2".to_string()),
            ("--eni-gc-grace", GC_GRACE_SECS.to_string()),
        ] {
            let got = args.windows(2).find(|w| w[0] == flag).map(|w| &w[1]);
            assert_eq!(got, Some(&want), "{node}'s agent: {args:?}");
        }
    }
    lab.pod_add("far", "node-2", true);

    // (c) A leftover ENI with the agent's tags, created now (as a crash
    // between create and attach leaves it), one whose created-at tag says
    // it is an hour younger than it is, and a foreign one; the sweep runs
    // in the background while the rest of the test goes on.
    let subnets = lab.ctl_ok(&["lab", "ec2", "DescribeSubnets"]);
    let subnet_id = subnets
        .split("<subnetId>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("a subnet")
        .to_string();
    let tagged_eni = |created_at: &str| {
        created_eni_id(&lab.ctl_ok(&[
            "lab",
            "ec2",
            "CreateNetworkInterface",
            &format!("SubnetId={subnet_id}"),
            "Description=left by a crash",
            "TagSpecification.1.ResourceType=network-interface",
            "TagSpecification.1.Tag.1.Key=podwire.io/instance-id",
            &format!("TagSpecification.1.Tag.1.Value={id1}"),
            "TagSpecification.1.Tag.2.Key=podwire.io/created-at",
            &format!("TagSpecification.1.Tag.2.Value={created_at}"),
        ]))
    };
    let leftover = tagged_eni(&rfc3339_from_now(0));
    let young_by_tag = tagged_eni(&rfc3339_from_now(3600));
    let foreign = created_eni_id(&lab.ctl_ok(&[
        "lab",
        "ec2",
        "CreateNetworkInterface",
        &format!("SubnetId={subnet_id}"),
        "Description=someone else's",
    ]));

    // (a) With Assign replies listing every address of the ENI, the
    // primary included: a burst of pods over two ENIs, none on a primary.
    let mut pods = Vec::new();
    for i in 0..14 {
        let name = format!("a{i}");
        let ip = lab.pod_add(&name, "node-1", false);
        pods.push((name, ip));
    }
    let prim = primaries(&lab);
    for (name, ip) in &pods {
        assert!(!prim.contains(ip), "pod {name} got a primary address {ip}");
    }
    assert!(cloud_enis(&lab, "node-1").len() >= 2, "a second ENI came");

    // (b) Out of band: a free address (the next a pod would get) and a
    // held one are unassigned. Both leave the pool; the held one is
    // reported; the next pods all answer.
    let state = agent_state(&ns1);
    let mut free = None;
    let mut held = None;
    for e in state["enis"].as_array().expect("enis") {
        for a in e["addresses"].as_array().expect("addresses") {
            let ip = a["ip"].as_str().expect("ip").to_string();
            let eni = e["id"].as_str().expect("id").to_string();
            match a["state"].as_str() {
                Some("free") if free.is_none() => free = Some((eni, ip)),
                Some("assigned") if held.is_none() => held = Some((eni, ip)),
                _ => {}
            }
        }
    }
    let (free_eni, free_ip) = free.expect("a free address");
    let (held_eni, held_ip) = held.expect("a held address");
    for (eni, ip) in [(&free_eni, &free_ip), (&held_eni, &held_ip)] {
        lab.ctl_ok(&[
            "lab",
            "ec2",
            "UnassignPrivateIpAddresses",
            &format!("NetworkInterfaceId={eni}"),
            &format!("PrivateIpAddress.1={ip}"),
        ]);
    }
    let gone: BTreeSet<Ipv4Addr> = [&free_ip, &held_ip]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
    // Within a few 2 s reconcile passes, not the default 60 s.
    eventually(
        20,
        "the unassigned addresses leave the agent's pool",
        || pool_addresses(&ns1).is_disjoint(&gone),
    );
    let m = agent_metrics(&ns1);
    assert!(m.contains("podwire_pool_lost_addresses_total 1"), "{m}");
    for i in 0..4 {
        let name = format!("b{i}");
        let ip = lab.pod_add(&name, "node-1", true);
        assert!(!gone.contains(&ip.parse().expect("ip")), "{name} got {ip}");
        assert!(
            lab.ctl_ok(&["lab", "curl", "far", &name])
                .contains("Welcome"),
            "{name} ({ip}) does not answer"
        );
    }

    // (c) The leftover is gone once its grace is over (the sweep looks
    // every 30 s); the foreign one stays, and so does the one whose
    // created-at tag is younger than the grace although the ENI itself is
    // older: the tag's age decides. The same sweep saw both.
    eventually(
        GC_GRACE_SECS + 45,
        "the leftover podwire ENI is deleted",
        || !available_enis(&lab).contains(&leftover),
    );
    let avail = available_enis(&lab);
    assert!(avail.contains(&foreign), "a foreign ENI was touched");
    assert!(
        avail.contains(&young_by_tag),
        "an ENI younger than the grace by its created-at tag was deleted"
    );
    lab.ctl_ok(&[
        "lab",
        "ec2",
        "DeleteNetworkInterface",
        &format!("NetworkInterfaceId={young_by_tag}"),
    ]);

    // (d) The burst leaves: ENIs and addresses converge to what
    // WARM_ENI_TARGET=1 says for no pods (the primary ENI, filled), idle
    // ENIs detached and deleted, not left behind.
    for (name, _) in &pods {
        lab.ctl_ok(&["lab", "pod", "del", name]);
    }
    for i in 0..4 {
        lab.ctl_ok(&["lab", "pod", "del", &format!("b{i}")]);
    }
    eventually(120, "node-1 is back to one ENI with 9 addresses", || {
        let enis = cloud_enis(&lab, "node-1");
        enis.len() == 1 && strs(&enis[0]["secondary_ips"]).len() == 9
    });
    let left: Vec<String> = available_enis(&lab)
        .into_iter()
        .filter(|e| e != &foreign)
        .collect();
    assert!(left.is_empty(), "detached ENIs left behind: {left:?}");
    assert_eq!(cloud_addresses(&lab, "node-1"), pool_addresses(&ns1));

    // (f) EC2 throttles 20 % and fails 5 %: a burst of ADDs all succeed,
    // and once the faults end nothing leaks (the cloud and the pool agree,
    // no ENI is left unattached).
    lab.ctl_ok(&[
        "lab",
        "faults",
        "--throttle-rate",
        "0.2",
        "--error-rate",
        "0.05",
    ]);
    let mut burst = Vec::new();
    for i in 0..20 {
        let name = format!("f{i}");
        burst.push(lab.pod_add(&name, "node-1", false));
    }
    let distinct: BTreeSet<&String> = burst.iter().collect();
    assert_eq!(distinct.len(), burst.len(), "an address handed out twice");
    for i in 0..20 {
        lab.ctl_ok(&["lab", "pod", "del", &format!("f{i}")]);
    }
    lab.ctl_ok(&["lab", "faults", "--throttle-rate", "0", "--error-rate", "0"]);
    eventually(120, "the pool converges and agrees with the cloud", || {
        let enis = cloud_enis(&lab, "node-1");
        enis.len() == 1 && cloud_addresses(&lab, "node-1") == pool_addresses(&ns1)
    });
    let left: Vec<String> = available_enis(&lab)
        .into_iter()
        .filter(|e| e != &foreign)
        .collect();
    assert!(left.is_empty(), "ENIs leaked under faults: {left:?}");
}

/// (e) Prefix delegation on an m5.large: 60 pods (more than the 27
/// secondary addresses allow), every address inside a /28 the cloud
/// delegated to the node, reachable from the other node, the traces as
/// the article shows them.
#[test]
fn prefix_delegation_runs_60_pods_on_an_m5_large() {
    if !require_root() {
        return;
    }
    let lab = Lab::up(
        "t-vpd",
        &["--prefix-delegation", "--instance-type", "m5.large"],
    );
    let ns1 = lab.node_ns(1);
    lab.pod_add("far", "node-2", true);
    let mut ips = Vec::new();
    for i in 0..60 {
        let http = i % 15 == 0;
        ips.push((
            format!("p{i}"),
            lab.pod_add(&format!("p{i}"), "node-1", http),
        ));
    }
    let prefixes: Vec<Ipv4Net> = cloud_enis(&lab, "node-1")
        .iter()
        .flat_map(|e| strs(&e["prefixes"]))
        .map(|p| p.parse().expect("prefix"))
        .collect();
    assert!(
        prefixes.iter().all(|p| p.prefix_len() == 28),
        "{prefixes:?}"
    );
    for (name, ip) in &ips {
        let a: Ipv4Addr = ip.parse().expect("ip");
        assert!(
            prefixes.iter().any(|p| p.contains(&a)),
            "{name}'s {ip} is in no /28 of node-1: {prefixes:?}"
        );
    }
    let distinct: BTreeSet<&String> = ips.iter().map(|(_, ip)| ip).collect();
    assert_eq!(distinct.len(), 60);
    for (name, ip) in &ips {
        assert!(
            ping(&lab, "far", ip),
            "{name} ({ip}) unreachable from node-2"
        );
    }
    for i in (0..60).step_by(15) {
        assert!(lab
            .ctl_ok(&["lab", "curl", "far", &format!("p{i}")])
            .contains("Welcome"));
    }
    // The article's trace: node-2 pod -> node-2 -> node-1 -> the pod.
    let n1 = lab.node_ip("node-1");
    let n2 = lab.node_ip("node-2");
    assert_eq!(
        hop_ips(&lab.trace("far", "p0")),
        vec![n2, n1, ips[0].1.clone()]
    );
    // The agent's capacity figures say prefixes.
    let cap = &agent_state(&ns1)["capacity"];
    assert_eq!(cap["prefix_delegation"], true);
    assert_eq!(cap["max_pods"], 110);
    assert_eq!(cap["ips_in_use"], 60);
    assert_eq!(
        cap["prefixes"].as_u64(),
        Some(u64::try_from(prefixes.len()).expect("count"))
    );
}

/// (f) `--prefix-delegation` on a type EC2 assigns no prefixes to (Xen):
/// the agent used to start, say ready, and fail every ADD after retrying
/// AssignPrivateIpAddresses. Now the lab does not come up, and the error
/// names the type and the way out; nothing is left behind.
#[test]
fn prefix_delegation_on_a_non_nitro_type_is_refused_at_start() {
    if !require_root() {
        return;
    }
    let name = "t-vnn";
    let o = common::ctl(&[
        "lab",
        "up",
        "--name",
        name,
        "--mode",
        "vpc",
        "--nodes",
        "1",
        "--instance-type",
        "t2.medium",
        "--prefix-delegation",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if o.status.success() {
        let _ = common::ctl(&["lab", "down", "--name", name]);
        panic!("a t2.medium lab with prefix delegation came up");
    }
    assert!(
        err.contains("t2.medium is not a Nitro instance type"),
        "{err}"
    );
    assert!(err.contains("--prefix-fallback-to-secondary-ips"), "{err}");
    let prefix = format!("pw-{name}-");
    let netns = common::ip(&["netns", "list"]);
    let left: Vec<&str> = netns
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "a refused lab left {left:?}");
}
