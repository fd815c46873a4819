//! `podwirectl capacity --live`: the figures the running agents report in
//! their `/v1/state` `capacity` object (the issue 9 contract), per node and
//! per subnet, with a warning within 10 % of exhaustion.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use podwire_cloud::limits::HOST_NETWORK_PODS;
use serde::{Deserialize, Serialize};

use crate::subnet::RESERVED;
use crate::CapacityError;

/// Names and ids longer than this are refused (a Kubernetes node name is
/// at most 253 characters; EC2 ids are ~24).
const MAX_NAME: usize = 253;

/// Warn when what is left is at most this share of the whole (10 %).
const WARN_PERCENT: u64 = 10;

/// The agent's `capacity` object, as the contract has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub prefix_delegation: bool,
    pub max_pods: u32,
    pub ips_in_use: u32,
    pub ips_warm: u32,
    pub ips_possible: u32,
    pub enis_used: u32,
    pub enis_allowed: u32,
    pub prefixes: u32,
    pub subnet: Option<SubnetFigures>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetFigures {
    pub id: String,
    pub cidr: Ipv4Net,
    pub available: u32,
}

/// What the report needs of a `/v1/state` document; the rest is ignored.
#[derive(Debug, Deserialize)]
struct StateDoc {
    node: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    capacity: Option<Figures>,
}

/// One agent's answer, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAnswer {
    pub node: String,
    pub mode: Option<String>,
    pub figures: Option<Figures>,
}

/// Parses a `/v1/state` body. A document without `capacity` is an answer
/// (an overlay agent, or one older than the contract), not an error; a
/// `capacity` that breaks the contract is.
pub fn parse_state(body: &str) -> Result<NodeAnswer, CapacityError> {
    let doc: StateDoc = serde_json::from_str(body)
        .map_err(|e| CapacityError::Invalid(format!("/v1/state: {e}")))?;
    if doc.node.len() > MAX_NAME {
        return Err(CapacityError::Invalid(format!(
            "/v1/state: node name longer than {MAX_NAME} bytes"
        )));
    }
    if let Some(s) = doc.capacity.as_ref().and_then(|c| c.subnet.as_ref()) {
        if s.id.is_empty() || s.id.len() > MAX_NAME {
            return Err(CapacityError::Invalid(format!(
                "/v1/state: capacity.subnet.id must be 1 to {MAX_NAME} bytes"
            )));
        }
    }
    Ok(NodeAnswer {
        node: doc.node,
        mode: doc.mode,
        figures: doc.capacity,
    })
}

/// One node in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveNode {
    /// Where the figures came from (a lab node or an agent URL).
    pub source: String,
    /// The agent's node name (null when it did not answer).
    pub node: Option<String>,
    /// The agent's figures as reported (null: none, see `error`/`note`).
    pub capacity: Option<Figures>,
    /// Pods with an address the node can hold: in use + warm + possible,
    /// at most its max pods minus the 2 host-network pods.
    pub pod_capacity: Option<u64>,
    /// `pod_capacity − ips_in_use`: warm plus possible, within max pods.
    pub ips_free: Option<u64>,
    pub warning: Option<String>,
    /// Why there are no figures although the agent answered.
    pub note: Option<String>,
    /// Why there is no answer.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveSubnet {
    pub id: String,
    pub cidr: Ipv4Net,
    /// Addresses in the subnet minus EC2's 5 reserved.
    pub usable: u64,
    /// The lowest `available` any node reported (each is its last
    /// DescribeSubnets; the lowest is the safe one).
    pub available: u32,
    pub reported_by: Vec<String>,
    pub warning: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub nodes: u64,
    pub ips_in_use: u64,
    pub ips_warm: u64,
    pub ips_possible: u64,
    pub ips_free: u64,
    pub enis_used: u64,
    pub enis_allowed: u64,
    pub prefixes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveReport {
    pub nodes: Vec<LiveNode>,
    pub subnets: Vec<LiveSubnet>,
    pub totals: Totals,
    /// Every node and subnet warning, and every node that did not answer.
    pub warnings: Vec<String>,
}

impl LiveReport {
    /// Some node gave no answer.
    pub fn has_errors(&self) -> bool {
        self.nodes.iter().any(|n| n.error.is_some())
    }
}

/// `left` of `whole` is within 10 % of exhaustion.
fn near_exhaustion(left: u64, whole: u64) -> bool {
    left.saturating_mul(100) <= whole.saturating_mul(WARN_PERCENT)
}

fn node_entry(source: String, answer: Result<NodeAnswer, String>) -> LiveNode {
    let mut n = LiveNode {
        source,
        node: None,
        capacity: None,
        pod_capacity: None,
        ips_free: None,
        warning: None,
        note: None,
        error: None,
    };
    let a = match answer {
        Ok(a) => a,
        Err(e) => {
            n.error = Some(e);
            return n;
        }
    };
    n.node = Some(a.node.clone());
    let Some(f) = a.figures else {
        n.note = Some(match a.mode.as_deref() {
            Some("overlay") => "overlay mode: addresses come from the pod CIDR, not the VPC".into(),
            _ => "the agent reports no capacity figures (older than issue 9?)".into(),
        });
        return n;
    };
    let addresses = u64::from(f.ips_in_use) + u64::from(f.ips_warm) + u64::from(f.ips_possible);
    let cap = match f.max_pods.checked_sub(HOST_NETWORK_PODS) {
        Some(limit) if limit > 0 => addresses.min(u64::from(limit)),
        _ => addresses,
    };
    let free = cap.saturating_sub(u64::from(f.ips_in_use));
    if near_exhaustion(free, cap) {
        n.warning = Some(format!(
            "node {}: {} of {} pod addresses in use, {} free: within {WARN_PERCENT} % of exhaustion",
            a.node, f.ips_in_use, cap, free
        ));
    }
    n.pod_capacity = Some(cap);
    n.ips_free = Some(free);
    n.capacity = Some(f);
    n
}

/// The report from each source's answer: the body of its `/v1/state`, or
/// why there is none.
pub fn report(answers: Vec<(String, Result<String, String>)>) -> LiveReport {
    let nodes: Vec<LiveNode> = answers
        .into_iter()
        .map(|(source, body)| {
            let parsed = body.and_then(|b| parse_state(&b).map_err(|e| e.to_string()));
            node_entry(source, parsed)
        })
        .collect();
    let mut subnets: BTreeMap<String, LiveSubnet> = BTreeMap::new();
    let mut totals = Totals::default();
    let mut warnings = Vec::new();
    for n in &nodes {
        if let Some(e) = &n.error {
            warnings.push(format!("{}: no answer: {e}", n.source));
        }
        if let Some(w) = &n.warning {
            warnings.push(w.clone());
        }
        let Some(f) = &n.capacity else { continue };
        totals.nodes += 1;
        totals.ips_in_use += u64::from(f.ips_in_use);
        totals.ips_warm += u64::from(f.ips_warm);
        totals.ips_possible += u64::from(f.ips_possible);
        totals.ips_free += n.ips_free.unwrap_or(0);
        totals.enis_used += u64::from(f.enis_used);
        totals.enis_allowed += u64::from(f.enis_allowed);
        totals.prefixes += u64::from(f.prefixes);
        if let Some(s) = &f.subnet {
            let who = n.node.clone().unwrap_or_else(|| n.source.clone());
            let e = subnets.entry(s.id.clone()).or_insert_with(|| LiveSubnet {
                id: s.id.clone(),
                cidr: s.cidr,
                usable: (1u64 << (32 - u32::from(s.cidr.prefix_len()))).saturating_sub(RESERVED),
                available: s.available,
                reported_by: Vec::new(),
                warning: None,
            });
            e.available = e.available.min(s.available);
            e.reported_by.push(who);
        }
    }
    let mut subnets: Vec<LiveSubnet> = subnets.into_values().collect();
    for s in &mut subnets {
        if near_exhaustion(u64::from(s.available), s.usable) {
            let w = format!(
                "subnet {} ({}): {} of {} usable addresses available: within {WARN_PERCENT} % of exhaustion",
                s.id, s.cidr, s.available, s.usable
            );
            warnings.push(w.clone());
            s.warning = Some(w);
        }
    }
    LiveReport {
        nodes,
        subnets,
        totals,
        warnings,
    }
}

/// The human form: one line per node and subnet, then the warnings.
pub fn render(r: &LiveReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<24} {:>6} {:>6} {:>16} {:>8} {:>7} {:>8}  SUBNET",
        "NODE", "IN USE", "WARM", "FREE (POSSIBLE)", "CAPACITY", "ENIS", "PREFIXES"
    );
    for n in &r.nodes {
        let name = n.node.clone().unwrap_or_else(|| n.source.clone());
        match (&n.capacity, &n.error, &n.note) {
            (Some(f), _, _) => {
                let _ = writeln!(
                    o,
                    "{:<24} {:>6} {:>6} {:>16} {:>8} {:>7} {:>8}  {}",
                    name,
                    f.ips_in_use,
                    f.ips_warm,
                    format!("{} ({})", n.ips_free.unwrap_or(0), f.ips_possible),
                    n.pod_capacity.unwrap_or(0),
                    format!("{}/{}", f.enis_used, f.enis_allowed),
                    f.prefixes,
                    f.subnet.as_ref().map_or("-", |s| s.id.as_str())
                );
            }
            (None, Some(e), _) => {
                let _ = writeln!(o, "{name:<24} no answer: {e}");
            }
            (None, None, note) => {
                let _ = writeln!(o, "{name:<24} {}", note.as_deref().unwrap_or("no figures"));
            }
        }
    }
    for s in &r.subnets {
        let _ = writeln!(
            o,
            "subnet {} {}: {} of {} usable addresses available (reported by {})",
            s.id,
            s.cidr,
            s.available,
            s.usable,
            s.reported_by.join(", ")
        );
    }
    let t = &r.totals;
    let _ = writeln!(
        o,
        "total: {} nodes, {} addresses in use, {} warm, {} free; {} of {} ENIs; {} prefixes",
        t.nodes, t.ips_in_use, t.ips_warm, t.ips_free, t.enis_used, t.enis_allowed, t.prefixes
    );
    for w in &r.warnings {
        let _ = writeln!(o, "WARNING: {w}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: &str = include_str!("../tests/fixtures/state-vpc-roomy.json");
    const NEARLY_FULL: &str = include_str!("../tests/fixtures/state-vpc-nearly-full.json");
    const PREFIXES: &str = include_str!("../tests/fixtures/state-vpc-prefixes-small-subnet.json");
    const OVERLAY: &str = include_str!("../tests/fixtures/state-overlay.json");
    const BAD: &str = include_str!("../tests/fixtures/state-vpc-bad-capacity.json");

    fn ok(source: &str, body: &str) -> (String, Result<String, String>) {
        (source.into(), Ok(body.into()))
    }

    #[test]
    fn the_contract_object_is_read_whole() {
        let a = parse_state(ROOMY).expect("parse");
        assert_eq!(a.node, "node-1");
        let f = a.figures.expect("capacity");
        assert_eq!(
            (
                f.max_pods,
                f.ips_in_use,
                f.ips_warm,
                f.ips_possible,
                f.enis_used,
                f.enis_allowed,
                f.prefixes
            ),
            (29, 3, 6, 18, 1, 3, 0)
        );
        let s = f.subnet.expect("subnet");
        assert_eq!(
            (s.id.as_str(), s.cidr.to_string(), s.available),
            ("subnet-0a1b2c", "10.0.0.0/20".into(), 4000)
        );
        // No capacity object: an answer without figures.
        assert_eq!(parse_state(OVERLAY).expect("parse").figures, None);
    }

    #[test]
    fn contract_breaches_are_errors_that_name_the_field() {
        let e = parse_state(BAD).expect_err("negative count").to_string();
        assert!(e.contains("/v1/state"), "{e}");
        let missing = ROOMY.replace("\"ips_warm\": 6,", "");
        let e = parse_state(&missing).expect_err("missing").to_string();
        assert!(e.contains("ips_warm"), "{e}");
        let bad_cidr = ROOMY.replace("10.0.0.0/20", "10.0.0.0/99");
        assert!(parse_state(&bad_cidr).is_err());
        let long = ROOMY.replace("subnet-0a1b2c", &"s".repeat(300));
        assert!(parse_state(&long).is_err());
        assert!(parse_state("not json").is_err());
        assert!(parse_state("{}").is_err(), "no node");
    }

    #[test]
    fn nodes_subnets_totals_and_warnings() {
        let r = report(vec![
            ok("node-1", ROOMY),
            ok("node-2", NEARLY_FULL),
            ok("node-3", PREFIXES),
            ok("node-4", OVERLAY),
            (
                "node-5".into(),
                Err("GET http://127.0.0.1:61678/v1/state: refused".into()),
            ),
        ]);
        let n = |i: usize| &r.nodes[i];
        // node-1: 3 + 6 + 18 = 27 addresses, max pods 29 - 2 = 27: 24 free,
        // no warning.
        assert_eq!(
            (n(0).pod_capacity, n(0).ips_free, &n(0).warning),
            (Some(27), Some(24), &None)
        );
        // node-2: 25 + 2 + 0 = 27, 2 free; 2 <= 10 % of 27: warning.
        assert_eq!((n(1).pod_capacity, n(1).ips_free), (Some(27), Some(2)));
        assert!(n(1)
            .warning
            .as_deref()
            .is_some_and(|w| w.contains("25 of 27")));
        // node-3 (prefixes): 100 + 12 + 320 = 432 addresses, but max pods
        // 110 - 2 = 108: 8 free; 8 <= 10.8: warning.
        assert_eq!((n(2).pod_capacity, n(2).ips_free), (Some(108), Some(8)));
        assert!(n(2).warning.is_some());
        // node-4: overlay, a note, no figures; node-5: an error.
        assert!(n(3).note.as_deref().is_some_and(|x| x.contains("overlay")));
        assert!(n(4).error.is_some());
        assert!(r.has_errors());
        // Subnets: the /20 reported by two nodes keeps the lower figure
        // (3990 of 4096 - 5 = 4091: no warning); the /24 has 20 of 251
        // left, 20 <= 25.1: warning.
        assert_eq!(r.subnets.len(), 2);
        let big = &r.subnets[0];
        assert_eq!(
            (big.id.as_str(), big.usable, big.available),
            ("subnet-0a1b2c", 4091, 3990)
        );
        assert_eq!(big.reported_by, ["node-1", "node-2"]);
        assert!(big.warning.is_none());
        let small = &r.subnets[1];
        assert_eq!((small.usable, small.available), (251, 20));
        assert!(small.warning.is_some());
        // Totals over the three nodes with figures.
        let t = r.totals;
        assert_eq!(
            (
                t.nodes,
                t.ips_in_use,
                t.ips_warm,
                t.ips_possible,
                t.ips_free,
                t.enis_used,
                t.enis_allowed,
                t.prefixes
            ),
            (3, 128, 20, 338, 34, 5, 9, 7)
        );
        // node-2, node-3, the /24, and node-5's missing answer.
        assert_eq!(r.warnings.len(), 4, "{:?}", r.warnings);
        let text = render(&r);
        assert!(text.contains("WARNING: subnet subnet-0d4e5f"), "{text}");
        assert!(text.contains("no answer"), "{text}");
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["nodes"][0]["capacity"]["ips_in_use"], 3);
        assert_eq!(v["totals"]["ips_in_use"], 128);
    }

    #[test]
    fn the_ten_percent_line() {
        // 3 left of 30 is exactly 10 %: warned; 4 is not.
        assert!(near_exhaustion(3, 30));
        assert!(!near_exhaustion(4, 30));
        // Nothing at all is exhausted.
        assert!(near_exhaustion(0, 0));
    }
}
