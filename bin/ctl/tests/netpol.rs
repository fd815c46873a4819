//! The upstream Kubernetes NetworkPolicy e2e cases (tests/netpol/cases.json,
//! README beside it) hold in the lab, in both modes: namespaces x, y, z
//! (labels `kubernetes.io/metadata.name` and `ns`), pods a, b, c in each
//! (label `pod`), each serving TCP 80 and 81 on ports named serve-80-tcp and
//! serve-81-tcp, the 9 pods spread over 3 nodes. One lab per mode; between
//! cases the previous policies are deleted and the lab waits until every
//! pair connects again, then the case's policies are applied through
//! `podwirectl policy apply` and `lab probe` is polled until its matrix
//! equals the case's table or a deadline passes. Every mismatching cell of
//! every case is reported, not only the first.
//!
//! The diagonal (a pod to its own address) is skipped, as upstream skips
//! it (`ignoreLoopback`): that connection never leaves the pod's own
//! namespace, so no node sees it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// Agents apply a change within 1 s; probing a matrix with dropped cells
/// takes a second or two more.
const CONVERGE: Duration = Duration::from_secs(15);

fn cases() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/netpol/cases.json");
    let text = std::fs::read_to_string(path).expect("tests/netpol/cases.json");
    let v: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    v.as_array().expect("a list of cases").clone()
}

/// `x/a` etc., in the order of the tables.
fn pod_keys() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// The 9 pods over 3 nodes, so that every namespace and every pod name
/// spans all nodes (same-node and cross-node pairs in every case).
fn build(lab: &Lab) -> BTreeMap<String, String> {
    for ns in NAMESPACES {
        lab.ctl_ok(&[
            "lab",
            "namespace",
            "add",
            ns,
            "--labels",
            &format!("ns={ns}"),
        ]);
    }
    let mut ips = BTreeMap::new();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        for (j, p) in PODS.iter().enumerate() {
            let node = format!("node-{}", (i + j) % 3 + 1);
            let key = format!("{ns}/{p}");
            let ip = lab.ctl_ok(&[
                "lab",
                "pod",
                "add",
                &key,
                "--node",
                &node,
                "--labels",
                &format!("pod={p}"),
                "--port",
                "serve-80-tcp=80/tcp",
                "--port",
                "serve-81-tcp=81/tcp",
            ]);
            ips.insert(key, ip.trim().to_string());
        }
    }
    ips
}

/// The case's policies as one List, placeholders replaced (README §5).
fn policy_file(case: &Value, ips: &BTreeMap<String, String>) -> String {
    let mut text = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": case["policies"],
    })
    .to_string();
    for (pod, ip) in ips {
        text = text
            .replace(&format!("{{{{ip {pod}}}}}"), ip)
            .replace(&format!("{{{{hostmask {pod}}}}}"), "32");
    }
    assert!(!text.contains("{{"), "a placeholder is left: {text}");
    text
}

fn probe(lab: &Lab, port: u16) -> Value {
    let out = lab.ctl_ok(&["lab", "probe", "--json", "--port", &port.to_string()]);
    serde_json::from_str(&out).expect("probe json")
}

/// Cells (off the diagonal) where `got` differs from `want`:
/// `from -> to: want W, got G (outcome)`.
fn mismatches(got: &Value, want: &dyn Fn(&str, &str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for from in pod_keys() {
        for to in pod_keys() {
            if from == to {
                continue;
            }
            let g = got["matrix"][&from][&to].as_bool();
            let w = want(&from, &to);
            if g != Some(w) {
                let outcome = got["results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["from"] == from.as_str() && c["to"] == to.as_str())
                    .map(|c| c["outcome"].as_str().unwrap_or("?").to_string())
                    .unwrap_or_else(|| "not probed".into());
                out.push(format!(
                    "{from} -> {to}: want {w}, got {} ({outcome})",
                    g.map_or("nothing".into(), |b| b.to_string())
                ));
            }
        }
    }
    out
}

/// Probes until the matrix has no mismatch or the deadline passes; the
/// last mismatches (empty: it holds).
fn converge(lab: &Lab, port: u16, want: &dyn Fn(&str, &str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let m = mismatches(&probe(lab, port), want);
        if m.is_empty() || Instant::now() >= deadline {
            return m;
        }
    }
}

/// Label changes a case needs, and how to undo them.
fn extra_labels(lab: &Lab, case: &Value, undo: bool) {
    let extra = &case["extraLabels"];
    for (ns, labels) in extra["namespaces"].as_object().into_iter().flatten() {
        for (k, v) in labels.as_object().into_iter().flatten() {
            let change = if undo {
                format!("{k}-")
            } else {
                format!("{k}={}", v.as_str().expect("label value"))
            };
            lab.ctl_ok(&["lab", "namespace", "label", ns, &change]);
        }
    }
    for (pod, labels) in extra["pods"].as_object().into_iter().flatten() {
        for (k, v) in labels.as_object().into_iter().flatten() {
            let change = if undo {
                format!("{k}-")
            } else {
                format!("{k}={}", v.as_str().expect("label value"))
            };
            lab.ctl_ok(&["lab", "pod", "label", pod, &change]);
        }
    }
}

fn policy_names(case: &Value) -> Vec<String> {
    case["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().expect("namespace"),
                p["metadata"]["name"].as_str().expect("name")
            )
        })
        .collect()
}

fn run_mode(lab_name: &str, mode: &str) {
    if !require_root() {
        return;
    }
    let lab = Lab::up(lab_name, &["--mode", mode, "--nodes", "3"]);
    let ips = build(&lab);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures: Vec<String> = Vec::new();
    for case in cases() {
        let name = case["name"].as_str().expect("case name").to_string();
        // From a clean slate: no policy, every pair connects.
        let open = converge(&lab, 80, &|_, _| true);
        assert!(
            open.is_empty(),
            "before case {name}, with no policy, pairs do not connect:\n{}",
            open.join("\n")
        );
        extra_labels(&lab, &case, false);
        let names = policy_names(&case);
        if !names.is_empty() {
            let file = dir.path().join(format!("{name}.json"));
            std::fs::write(&file, policy_file(&case, &ips)).expect("write policies");
            lab_policy(
                &lab,
                &["policy", "apply", "-f", file.to_str().expect("utf-8")],
            );
        }
        for port in case["ports"].as_array().expect("ports") {
            let port = u16::try_from(port.as_u64().expect("port")).expect("port");
            let want = |from: &str, to: &str| {
                case["expect"][from][to]
                    .as_bool()
                    .unwrap_or_else(|| panic!("case {name}: no expectation {from} -> {to}"))
            };
            for m in converge(&lab, port, &want) {
                failures.push(format!("{mode} {name} port {port}: {m}"));
            }
        }
        if !names.is_empty() {
            let mut args = vec!["policy", "delete"];
            args.extend(names.iter().map(String::as_str));
            lab_policy(&lab, &args);
        }
        extra_labels(&lab, &case, true);
    }
    assert!(
        failures.is_empty(),
        "{} cells differ from the upstream tables:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `podwirectl policy …` against the lab's datastore.
fn lab_policy(lab: &Lab, args: &[&str]) {
    let mut a = args.to_vec();
    a.extend(["--lab", lab.name.as_str()]);
    ctl_ok(&a);
}

#[test]
fn netpol_cases_hold_in_vpc_mode() {
    run_mode("t-npvpc", "vpc");
}

#[test]
fn netpol_cases_hold_in_overlay_mode() {
    run_mode("t-npovl", "overlay");
}

#[test]
fn the_cases_are_the_upstream_set_with_every_table_complete() {
    // What the tests above rely on, checked without a lab.
    let cases = cases();
    assert_eq!(cases.len(), 36);
    for c in &cases {
        for from in pod_keys() {
            for to in pod_keys() {
                assert!(
                    c["expect"][&from][&to].is_boolean(),
                    "{}: {from} -> {to}",
                    c["name"]
                );
            }
        }
    }
    let ips: BTreeMap<String, String> = pod_keys()
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, format!("10.0.0.{}", i + 10)))
        .collect();
    for c in &cases {
        let text = policy_file(c, &ips);
        assert!(serde_json::from_str::<Value>(&text).is_ok());
    }
}
