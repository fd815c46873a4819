//! [`NodeRules`] as nftables text inside podwire's table (`ip podwire`,
//! owned by podwire-dataplane's `nft` module).
//!
//! Shape, for a node's policy chain (`network-policy`, jumped to from the
//! `forward` base chain after the guard and the posture):
//!
//! ```text
//! ct state established,related accept          replies of allowed connections
//! iifgroup 0x7077 ip saddr != @np-local drop   a pod not known yet sends nothing
//! oifgroup 0x7077 ip daddr != @np-local drop   ... and receives nothing
//! iifgroup 0x7077 ip saddr vmap @np-egress     local pod's egress chain (isolated pods)
//! oifgroup 0x7077 ip daddr vmap @np-ingress    local pod's ingress chain (isolated pods)
//! ```
//!
//! Each per-class chain (`np-eg-N`, `np-in-N`) `return`s on an allow rule
//! and ends in `drop`: an `accept` in the egress part would skip the
//! ingress part for traffic between two pods of the node. Pods with the
//! same checks share a chain; rules match named address sets (`np-aN`,
//! interval sets) and, for egress to named ports, address . port sets
//! (`np-pN`), so 250 pods and 200 policies stay a few hundred lines.
//! Traffic the node itself sends to its pods goes through `output`, not
//! `forward`, so it is never checked (kubelet probes pass).

use std::fmt::Write as _;

use podwire_cluster::Protocol;

use crate::compile::{AddrRange, ChainRules, NodeRules, PeerMatch, PortMatch};

const TABLE: &str = "podwire";
/// podwire-dataplane's `Concern::NetworkPolicy.chain()`.
pub const POLICY_CHAIN: &str = "network-policy";
/// podwire-dataplane's `POD_IFGROUP`.
const POD_IFGROUP: u32 = 0x7077;
const LOCAL_SET: &str = "np-local";
const INGRESS_MAP: &str = "np-ingress";
const EGRESS_MAP: &str = "np-egress";
/// nft refuses comments longer than 128 bytes.
const COMMENT_MAX: usize = 120;

/// The rendered policy: objects and the rules of the policy chain. Use
/// [`NftPolicy::script`] to get one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NftPolicy {
    /// Helper sets, by name, with their declaration and elements.
    pub sets: Vec<(String, String, Vec<String>)>,
    /// Helper chains, by name, with their rules.
    pub chains: Vec<(String, Vec<String>)>,
    /// Verdict-map elements: (map, elements).
    pub maps: Vec<(String, Vec<String>)>,
    /// The rules of the `network-policy` chain.
    pub chain_body: Vec<String>,
}

fn comment(s: &str) -> String {
    // Names are validated (no quotes); cut on a char boundary anyway.
    let mut c: String = s.chars().filter(|c| *c != '"' && *c != '\\').collect();
    while c.len() > COMMENT_MAX {
        c.pop();
    }
    format!("comment \"{c}\"")
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::TCP => "tcp",
        Protocol::UDP => "udp",
        Protocol::SCTP => "sctp",
    }
}

fn range(r: &AddrRange) -> String {
    if r.first == r.last {
        r.first.to_string()
    } else {
        format!("{}-{}", r.first, r.last)
    }
}

/// Renders a node's rules.
pub fn render_nft(rules: &NodeRules) -> NftPolicy {
    let mut out = NftPolicy::default();
    for (i, set) in rules.addr_sets.iter().enumerate() {
        out.sets.push((
            format!("np-a{i}"),
            "type ipv4_addr; flags interval;".to_string(),
            set.iter().map(range).collect(),
        ));
    }
    for (i, set) in rules.pair_sets.iter().enumerate() {
        out.sets.push((
            format!("np-p{i}"),
            "type ipv4_addr . inet_service;".to_string(),
            set.iter().map(|(ip, p)| format!("{ip} . {p}")).collect(),
        ));
    }
    out.sets.push((
        LOCAL_SET.to_string(),
        "type ipv4_addr;".to_string(),
        rules.local.iter().map(ToString::to_string).collect(),
    ));
    for (i, c) in rules.ingress_chains.iter().enumerate() {
        out.chains
            .push((format!("np-in-{i}"), chain_rules(c, "saddr", "ingress")));
    }
    for (i, c) in rules.egress_chains.iter().enumerate() {
        out.chains
            .push((format!("np-eg-{i}"), chain_rules(c, "daddr", "egress")));
    }
    out.maps.push((
        INGRESS_MAP.to_string(),
        rules
            .ingress
            .iter()
            .map(|(ip, c)| format!("{ip} : jump np-in-{c}"))
            .collect(),
    ));
    out.maps.push((
        EGRESS_MAP.to_string(),
        rules
            .egress
            .iter()
            .map(|(ip, c)| format!("{ip} : jump np-eg-{c}"))
            .collect(),
    ));
    let b = &mut out.chain_body;
    b.push(format!(
        "ct state established,related accept {}",
        comment("replies of allowed connections")
    ));
    if rules.closed_until_known {
        b.push(format!(
            "iifgroup {POD_IFGROUP:#x} ip saddr != @{LOCAL_SET} counter drop {}",
            comment("pod not known to policy yet")
        ));
        b.push(format!(
            "oifgroup {POD_IFGROUP:#x} ip daddr != @{LOCAL_SET} counter drop {}",
            comment("pod not known to policy yet")
        ));
    }
    b.push(format!(
        "iifgroup {POD_IFGROUP:#x} ip saddr vmap @{EGRESS_MAP}"
    ));
    b.push(format!(
        "oifgroup {POD_IFGROUP:#x} ip daddr vmap @{INGRESS_MAP}"
    ));
    out
}

/// `far` is the far end's address field: `saddr` for ingress, `daddr` for
/// egress.
fn chain_rules(c: &ChainRules, far: &str, dir: &str) -> Vec<String> {
    let mut v = Vec::new();
    for r in &c.rules {
        let peer = match r.peer {
            PeerMatch::Any => String::new(),
            PeerMatch::Set(i) => format!("ip {far} @np-a{i} "),
        };
        match &r.ports {
            PortMatch::Any => v.push(format!("{peer}return {}", comment(&r.comment))),
            PortMatch::Ports(list) => {
                for proto in [Protocol::TCP, Protocol::UDP, Protocol::SCTP] {
                    let mine: Vec<_> = list.iter().filter(|(p, _)| *p == proto).collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let pn = proto_name(proto);
                    if mine.iter().any(|(_, r)| r.is_none()) {
                        v.push(format!(
                            "{peer}meta l4proto {pn} return {}",
                            comment(&r.comment)
                        ));
                        continue;
                    }
                    let ports: Vec<String> = mine
                        .iter()
                        .filter_map(|(_, r)| *r)
                        .map(|(a, b)| {
                            if a == b {
                                a.to_string()
                            } else {
                                format!("{a}-{b}")
                            }
                        })
                        .collect();
                    v.push(format!(
                        "{peer}{pn} dport {{ {} }} return {}",
                        ports.join(", "),
                        comment(&r.comment)
                    ));
                }
            }
            PortMatch::Pairs(proto, i) => {
                // The pairs hold only addresses the peers match.
                v.push(format!(
                    "meta l4proto {} ip daddr . th dport @np-p{i} return {}",
                    proto_name(*proto),
                    comment(&r.comment)
                ));
            }
        }
    }
    v.push(format!(
        "counter drop {}",
        comment(&format!("{dir}: isolated by {}", c.isolated_by.join(", ")))
    ));
    v
}

impl NftPolicy {
    /// Every object name this policy uses (chains and sets).
    fn names(&self) -> (Vec<&str>, Vec<&str>) {
        (
            self.chains.iter().map(|c| c.0.as_str()).collect(),
            self.sets.iter().map(|s| s.0.as_str()).collect(),
        )
    }

    /// One transaction that makes the table's policy part exactly this,
    /// creating what is missing and deleting the helper chains and sets of
    /// `previous` (what was applied before, if known) that this one no
    /// longer has. The table and the `network-policy` chain must exist (the
    /// dataplane's ruleset creates them; the two may be one transaction).
    pub fn script(&self, previous: Option<&NftPolicy>) -> String {
        let mut s = String::new();
        let t = TABLE;
        let _ = writeln!(s, "add chain ip {t} {POLICY_CHAIN}");
        let _ = writeln!(s, "flush chain ip {t} {POLICY_CHAIN}");
        for m in [INGRESS_MAP, EGRESS_MAP] {
            let _ = writeln!(s, "add map ip {t} {m} {{ type ipv4_addr : verdict; }}");
            let _ = writeln!(s, "flush map ip {t} {m}");
        }
        for (name, decl, _) in &self.sets {
            let _ = writeln!(s, "add set ip {t} {name} {{ {decl} }}");
            let _ = writeln!(s, "flush set ip {t} {name}");
        }
        for (name, _) in &self.chains {
            let _ = writeln!(s, "add chain ip {t} {name}");
            let _ = writeln!(s, "flush chain ip {t} {name}");
        }
        if let Some(prev) = previous {
            // Nothing refers to them any more: the maps and chains that did
            // were flushed above. Chains first, they refer to sets.
            let (chains, sets) = self.names();
            let (old_chains, old_sets) = prev.names();
            for c in old_chains.iter().filter(|c| !chains.contains(c)) {
                let _ = writeln!(s, "flush chain ip {t} {c}");
                let _ = writeln!(s, "delete chain ip {t} {c}");
            }
            for x in old_sets.iter().filter(|x| !sets.contains(x)) {
                let _ = writeln!(s, "delete set ip {t} {x}");
            }
        }
        for (name, _, elems) in &self.sets {
            for chunk in elems.chunks(1000) {
                let _ = writeln!(s, "add element ip {t} {name} {{ {} }}", chunk.join(", "));
            }
        }
        for (name, rules) in &self.chains {
            for r in rules {
                let _ = writeln!(s, "add rule ip {t} {name} {r}");
            }
        }
        for (name, elems) in &self.maps {
            for chunk in elems.chunks(1000) {
                let _ = writeln!(s, "add element ip {t} {name} {{ {} }}", chunk.join(", "));
            }
        }
        for r in &self.chain_body {
            let _ = writeln!(s, "add rule ip {t} {POLICY_CHAIN} {r}");
        }
        s
    }
}
