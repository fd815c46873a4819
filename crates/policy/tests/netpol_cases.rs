//! Every case of tests/netpol/cases.json (upstream Kubernetes' NetworkPolicy
//! e2e tables): all 81 pairs on each probed port, the diagonal included,
//! through `evaluate` and through the compiled per-node rules.

mod common;

use std::collections::BTreeMap;

use podwire_cluster::Protocol;
use podwire_policy::{compile, evaluate, parse_documents, Peer};

fn cases() -> Vec<serde_json::Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/netpol/cases.json");
    let text = std::fs::read_to_string(path).expect("tests/netpol/cases.json");
    serde_json::from_str(&text).expect("cases.json is a JSON list")
}

fn policies_of(case: &serde_json::Value) -> Vec<podwire_policy::NetworkPolicy> {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": case["policies"]});
    let text = common::fill_placeholders(list.to_string());
    parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", case["name"]))
}

#[test]
fn all_36_upstream_cases_hold_in_evaluate_and_in_the_compiled_rules() {
    let cases = cases();
    assert_eq!(cases.len(), 36);
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        let name = case["name"].as_str().unwrap_or("?");
        let mut view = common::view(&case["extraLabels"]);
        view.policies = policies_of(case);
        let rules: BTreeMap<&str, _> = common::NODES
            .iter()
            .map(|n| (*n, compile(&view, n)))
            .collect();
        for port in case["ports"].as_array().expect("ports") {
            let port = u16::try_from(port.as_u64().expect("port")).expect("port");
            for src in common::all_pods() {
                for dst in common::all_pods() {
                    let want = case["expect"][src.to_string()][dst.to_string()]
                        .as_bool()
                        .expect("every pair is present");
                    let v = evaluate(
                        &view,
                        &Peer::Pod(src.clone()),
                        &Peer::Pod(dst.clone()),
                        port,
                        Protocol::TCP,
                    );
                    if v.allowed != want {
                        failures.push(format!(
                            "{name}: evaluate {src} -> {dst}:{port} = {}, want {want}: {:?}",
                            v.allowed, v.reasons
                        ));
                    }
                    // The same pair by address must decide the same.
                    let by_ip = evaluate(
                        &view,
                        &Peer::Ip(common::ip_of(&src)),
                        &Peer::Ip(common::ip_of(&dst)),
                        port,
                        Protocol::TCP,
                    );
                    if by_ip.allowed != want {
                        failures.push(format!("{name}: evaluate by address {src} -> {dst}:{port}"));
                    }
                    let (s, d) = (common::ip_of(&src), common::ip_of(&dst));
                    let compiled = common::node_allows(
                        &rules[common::node_of(&src)],
                        s,
                        d,
                        port,
                        Protocol::TCP,
                    ) && common::node_allows(
                        &rules[common::node_of(&dst)],
                        s,
                        d,
                        port,
                        Protocol::TCP,
                    );
                    if compiled != want {
                        failures.push(format!(
                            "{name}: compiled rules {src} -> {dst}:{port} = {compiled}, want {want}"
                        ));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, 37 * 81, "36 cases, one with two ports");
}
