//! Prediction against probe: every claim must have been probed and come
//! out as predicted; anything else is a mismatch, reported with the claim's
//! reasons so the wrong layer can be found.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use podwire_cluster::Protocol;
use serde::Serialize;

use crate::model::{FlatClaim, Source};

/// What one probe of a claim saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// The claim's source name, destination pod and port.
    pub from: String,
    pub to: String,
    pub port: u16,
    pub reachable: bool,
    /// `connected`, `refused`, `timeout`, `error: …`.
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub to: String,
    pub to_ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub from: Source,
    /// What the audit predicted: reachable or not.
    pub expected: bool,
    /// What the probe saw (`not probed` when no probe was made).
    pub observed: String,
    pub reasons: Vec<String>,
}

/// Each claim whose observation differs from it, or has none.
pub fn compare(claims: &[FlatClaim], observations: &[Observation]) -> Vec<Mismatch> {
    let seen: BTreeMap<(&str, &str, u16), &Observation> = observations
        .iter()
        .map(|o| ((o.from.as_str(), o.to.as_str(), o.port), o))
        .collect();
    claims
        .iter()
        .filter_map(|c| {
            let observed = match seen.get(&(c.from.name.as_str(), c.to.as_str(), c.port)) {
                Some(o) if o.reachable == c.reachable => return None,
                Some(o) => o.outcome.clone(),
                None => "not probed".to_string(),
            };
            Some(Mismatch {
                to: c.to.clone(),
                to_ip: c.to_ip,
                port: c.port,
                protocol: c.protocol,
                from: c.from.clone(),
                expected: c.reachable,
                observed,
                reasons: c.reasons.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SourceKind;

    fn claim(from: &str, to: &str, port: u16, reachable: bool) -> FlatClaim {
        FlatClaim {
            to: to.into(),
            to_ip: Ipv4Addr::new(10, 0, 1, 20),
            port,
            protocol: Protocol::TCP,
            from: Source {
                kind: SourceKind::Pod,
                name: from.into(),
                ip: Ipv4Addr::new(10, 0, 1, 21),
                cidr: None,
                namespace: None,
                labels: None,
                node: None,
            },
            reachable,
            reasons: vec![format!("because {from}")],
        }
    }

    fn obs(from: &str, to: &str, port: u16, reachable: bool) -> Observation {
        Observation {
            from: from.into(),
            to: to.into(),
            port,
            reachable,
            outcome: if reachable { "connected" } else { "timeout" }.into(),
        }
    }

    #[test]
    fn agreeing_probes_give_no_mismatch() {
        let claims = [
            claim("x/a", "x/b", 80, true),
            claim("x/c", "x/b", 80, false),
        ];
        let seen = [obs("x/a", "x/b", 80, true), obs("x/c", "x/b", 80, false)];
        assert!(compare(&claims, &seen).is_empty());
    }

    #[test]
    fn a_wrong_prediction_or_a_missing_probe_is_a_mismatch() {
        // Deliberately wrong predictions, both ways.
        let claims = [
            claim("x/a", "x/b", 80, false),
            claim("x/c", "x/b", 81, true),
            claim("node-1", "x/b", 80, true),
        ];
        let seen = [
            obs("x/a", "x/b", 80, true),
            obs("x/c", "x/b", 81, false),
            // The same pair on another port does not count.
            obs("node-1", "x/b", 81, true),
        ];
        let m = compare(&claims, &seen);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(!m[0].expected && m[0].observed == "connected");
        assert!(m[1].expected && m[1].observed == "timeout");
        assert_eq!(m[1].reasons, vec!["because x/c".to_string()]);
        assert_eq!(m[2].observed, "not probed");
    }
}
