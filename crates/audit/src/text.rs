//! The report for people: each pod port with who reaches it, flagged when
//! outside hosts do; `--json` has every claim with its reasons.

use std::fmt::Write as _;

use crate::model::{Report, SourceKind};

pub fn format_report(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mode {}, external pod access {}{}, security groups {}",
        match r.mode {
            crate::Mode::Vpc => "vpc",
            crate::Mode::Overlay => "overlay",
        },
        r.external_pod_access,
        if r.external_allow_cidrs.is_empty() {
            String::new()
        } else {
            let c: Vec<String> = r
                .external_allow_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect();
            format!(" (allowed: {})", c.join(","))
        },
        if r.security_groups_known {
            "known"
        } else {
            "not known"
        }
    );
    for p in &r.pods {
        let flag = if p.exposed { "  ** EXPOSED **" } else { "" };
        let _ = writeln!(out, "\npod {} ({} on {}){flag}", p.pod, p.ip, p.node);
        if !p.ingress_policies.is_empty() {
            let _ = writeln!(out, "  ingress policies: {}", p.ingress_policies.join(", "));
        }
        if p.ports.is_empty() {
            let _ = writeln!(out, "  no container ports known");
        }
        for port in &p.ports {
            let name = port
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let total = |k: SourceKind| port.claims.iter().filter(|c| c.from.kind == k).count();
            let list = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            let _ = writeln!(
                out,
                "  {}/{}{name}{}",
                port.port,
                port.protocol,
                if port.exposed { "  EXPOSED" } else { "" }
            );
            let f = &port.reachable_from;
            let _ = writeln!(
                out,
                "    outside: {} of {}: {}",
                f.external.len(),
                total(SourceKind::External),
                list(&f.external)
            );
            let _ = writeln!(
                out,
                "    nodes:   {} of {}: {}",
                f.nodes.len(),
                total(SourceKind::Node),
                list(&f.nodes)
            );
            let _ = writeln!(
                out,
                "    pods:    {} of {}: {}",
                f.pods.len(),
                total(SourceKind::Pod),
                list(&f.pods)
            );
            // Why outside hosts do or do not get in: the first claim's reasons.
            if let Some(c) = port
                .claims
                .iter()
                .find(|c| c.from.kind == SourceKind::External)
            {
                for reason in &c.reasons {
                    let _ = writeln!(out, "      {}: {reason}", c.from.name);
                }
            }
        }
    }
    let _ = writeln!(out);
    if r.exposed.is_empty() {
        let _ = writeln!(out, "nothing is reachable from outside the cluster");
    } else {
        let _ = writeln!(
            out,
            "{} pod ports reachable from outside the cluster:",
            r.exposed.len()
        );
        for e in &r.exposed {
            let _ = writeln!(out, "  {} {}/{} from {}", e.pod, e.port, e.protocol, e.from);
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(out, "{} of {} connections reachable", r.reachable, r.claims);
    out
}
