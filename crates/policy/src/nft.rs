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
//! Each per-class chain `return`s on an allow rule and ends in `drop`: an
//! `accept` in the egress part would skip the ingress part for traffic
//! between two pods of the node. Pods with the same checks share a chain;
//! rules match named address sets and, for egress to named ports, address
//! . port sets.
//!
//! Helper chains are named by a hash of their content (`np-c<hash>`): a
//! chain of that name already in the table is this very chain. Helper sets
//! are named by a hash of what they stand for (`np-s<hash>` of the peers,
//! [`NodeRules::addr_set_keys`]), not of their elements, and their elements
//! are rewritten on every update: a pod that comes or goes changes set
//! elements, never the chains that refer to the sets (with content-named
//! sets every such ADD renamed the sets and rewrote the chains, half the
//! ruleset at 250 pods and 200 policies). So an update adds only the chains
//! that are new, deletes only what is gone and rewrites the sets, the two
//! verdict maps and the five rules of `network-policy` — all in one
//! transaction (see [`NftPolicy::script`]).
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

/// A helper object of the policy part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftObject {
    /// Named by what it stands for: its elements are rewritten whenever
    /// they differ from the previous policy's.
    Set {
        name: String,
        /// `type ...; flags ...;`
        decl: String,
        elements: Vec<String>,
    },
    Chain {
        name: String,
        rules: Vec<String>,
    },
}

impl NftObject {
    pub fn name(&self) -> &str {
        match self {
            NftObject::Set { name, .. } | NftObject::Chain { name, .. } => name,
        }
    }
}

/// The rendered policy part of podwire's table. Use [`NftPolicy::script`]
/// to get one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NftPolicy {
    /// Content-named helper sets and chains, sets first.
    pub objects: Vec<NftObject>,
    /// Elements of `np-local` (every known local endpoint).
    pub local: Vec<String>,
    /// Elements of the verdict maps `np-ingress` and `np-egress`.
    pub ingress_map: Vec<String>,
    pub egress_map: Vec<String>,
    /// The rules of the `network-policy` chain.
    pub chain_body: Vec<String>,
}

fn comment(s: &str) -> String {
    // Names are validated, so this changes nothing today; it keeps a
    // comment from ever ending the string or the line.
    let mut c: String = s
        .chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ') && *c != '"' && *c != '\\')
        .collect();
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

/// A name for an object from its content: a SHA-1 prefix (128 bits), so
/// an object of that name in the table is this very object, whichever
/// agent wrote it. Within one rendering a clash (never seen) gets a
/// suffix rather than a wrong rule.
fn content_name(
    objects: &[NftObject],
    prefix: &str,
    parts: &[&str],
    same: impl Fn(&NftObject) -> bool,
) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let base = format!("{prefix}{hex}");
    let mut name = base.clone();
    let mut n = 0;
    while objects.iter().any(|o| o.name() == name && !same(o)) {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}

/// Renders a node's rules.
pub fn render_nft(rules: &NodeRules) -> NftPolicy {
    let mut out = NftPolicy::default();
    // `what` is unique within a rendering (compile interns sets by it).
    let set = |decl: String, what: &str, elements: Vec<String>, out: &mut NftPolicy| -> String {
        let name = content_name(
            &out.objects,
            "np-s",
            &["set", decl.as_str(), what],
            |o| matches!(o, NftObject::Set { decl: d, elements: e, .. } if *d == decl && *e == elements),
        );
        if !out.objects.iter().any(|o| o.name() == name) {
            out.objects.push(NftObject::Set {
                name: name.clone(),
                decl,
                elements,
            });
        }
        name
    };
    let mut addr_names = Vec::new();
    for (i, s) in rules.addr_sets.iter().enumerate() {
        let what = rules.addr_set_keys.get(i).map_or("", String::as_str);
        let interval = s.iter().any(|r| r.first != r.last);
        let decl = if interval {
            "type ipv4_addr; flags interval;"
        } else {
            "type ipv4_addr;"
        };
        addr_names.push(set(
            decl.to_string(),
            what,
            s.iter().map(range).collect(),
            &mut out,
        ));
    }
    let mut pair_names = Vec::new();
    for (i, s) in rules.pair_sets.iter().enumerate() {
        pair_names.push(set(
            "type ipv4_addr . inet_service;".to_string(),
            rules.pair_set_keys.get(i).map_or("", String::as_str),
            s.iter().map(|(ip, p)| format!("{ip} . {p}")).collect(),
            &mut out,
        ));
    }
    let names = SetNames {
        addr: &addr_names,
        pairs: &pair_names,
    };
    let chain = |rules: Vec<String>, out: &mut NftPolicy| -> String {
        let mut parts = vec!["chain"];
        parts.extend(rules.iter().map(String::as_str));
        let name = content_name(
            &out.objects,
            "np-c",
            &parts,
            |o| matches!(o, NftObject::Chain { rules: r, .. } if *r == rules),
        );
        if !out.objects.iter().any(|o| o.name() == name) {
            out.objects.push(NftObject::Chain {
                name: name.clone(),
                rules,
            });
        }
        name
    };
    let ingress: Vec<String> = rules
        .ingress_chains
        .iter()
        .map(|c| chain(chain_rules(c, "saddr", "ingress", &names), &mut out))
        .collect();
    let egress: Vec<String> = rules
        .egress_chains
        .iter()
        .map(|c| chain(chain_rules(c, "daddr", "egress", &names), &mut out))
        .collect();
    out.local = rules.local.iter().map(ToString::to_string).collect();
    out.ingress_map = rules
        .ingress
        .iter()
        .filter_map(|(ip, c)| ingress.get(*c).map(|n| format!("{ip} : jump {n}")))
        .collect();
    out.egress_map = rules
        .egress
        .iter()
        .filter_map(|(ip, c)| egress.get(*c).map(|n| format!("{ip} : jump {n}")))
        .collect();
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

struct SetNames<'a> {
    addr: &'a [String],
    pairs: &'a [String],
}

/// `far` is the far end's address field: `saddr` for ingress, `daddr` for
/// egress.
fn chain_rules(c: &ChainRules, far: &str, dir: &str, names: &SetNames) -> Vec<String> {
    let mut v = Vec::new();
    for r in &c.rules {
        let peer = match r.peer {
            PeerMatch::Any => String::new(),
            PeerMatch::Set(i) => match names.addr.get(i) {
                Some(n) => format!("ip {far} @{n} "),
                None => continue,
            },
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
                if let Some(n) = names.pairs.get(*i) {
                    v.push(format!(
                        "meta l4proto {} ip daddr . th dport @{n} return {}",
                        proto_name(*proto),
                        comment(&r.comment)
                    ));
                }
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
    /// What a table listing (`nft list table ip podwire`) shows of a policy
    /// part applied before (say, by the agent before a restart): its helper
    /// objects by name. Content naming makes that enough for
    /// [`NftPolicy::script`] to keep what is the same and delete the rest.
    pub fn existing_from_listing(listing: &str) -> NftPolicy {
        let mut out = NftPolicy::default();
        for line in listing.lines() {
            let mut w = line.split_whitespace();
            match (w.next(), w.next()) {
                (Some("chain"), Some(n)) if n.starts_with("np-c") => {
                    out.objects.push(NftObject::Chain {
                        name: n.to_string(),
                        rules: Vec::new(),
                    })
                }
                (Some("set"), Some(n)) if n.starts_with("np-s") => {
                    out.objects.push(NftObject::Set {
                        name: n.to_string(),
                        decl: String::new(),
                        elements: Vec::new(),
                    })
                }
                _ => {}
            }
        }
        out
    }

    /// One transaction that makes the table's policy part exactly this.
    /// `previous`: what is in the table now, if known (the last applied
    /// policy, or [`NftPolicy::existing_from_listing`]); its objects of the
    /// same name are kept as they are, the others are deleted. With `None`,
    /// every object is (re)written and nothing is deleted. The table and
    /// the `network-policy` chain must exist — podwire-dataplane's ruleset
    /// creates them, and may be the start of the same transaction.
    pub fn script(&self, previous: Option<&NftPolicy>) -> String {
        let mut s = String::new();
        let t = TABLE;
        let had = |name: &str| previous.is_some_and(|p| p.objects.iter().any(|o| o.name() == name));
        let _ = writeln!(s, "add chain ip {t} {POLICY_CHAIN}");
        for m in [INGRESS_MAP, EGRESS_MAP] {
            let _ = writeln!(s, "add map ip {t} {m} {{ type ipv4_addr : verdict; }}");
        }
        let _ = writeln!(s, "add set ip {t} {LOCAL_SET} {{ type ipv4_addr; }}");
        // New chains, and sets that are new or whose elements changed
        // (named by what they stand for, their elements follow the pods; a
        // previous policy from a listing has no elements, so they are all
        // rewritten), sets before the chains that refer to them.
        let same_in_previous =
            |o: &NftObject| previous.is_some_and(|p| p.objects.iter().any(|q| q == o));
        let write = |o: &&NftObject| match o {
            NftObject::Set { .. } => !same_in_previous(o),
            NftObject::Chain { .. } => !had(o.name()),
        };
        for o in self.objects.iter().filter(write) {
            match o {
                NftObject::Set {
                    name,
                    decl,
                    elements,
                } => {
                    let _ = writeln!(s, "add set ip {t} {name} {{ {decl} }}");
                    let _ = writeln!(s, "flush set ip {t} {name}");
                    for chunk in elements.chunks(1000) {
                        let _ = writeln!(s, "add element ip {t} {name} {{ {} }}", chunk.join(", "));
                    }
                }
                NftObject::Chain { name, rules } => {
                    let _ = writeln!(s, "add chain ip {t} {name}");
                    let _ = writeln!(s, "flush chain ip {t} {name}");
                    for r in rules {
                        let _ = writeln!(s, "add rule ip {t} {name} {r}");
                    }
                }
            }
        }
        // The entry points, rewritten whole.
        let _ = writeln!(s, "flush chain ip {t} {POLICY_CHAIN}");
        for (m, elems) in [
            (INGRESS_MAP, &self.ingress_map),
            (EGRESS_MAP, &self.egress_map),
            (LOCAL_SET, &self.local),
        ] {
            let kind = if m == LOCAL_SET { "set" } else { "map" };
            let _ = writeln!(s, "flush {kind} ip {t} {m}");
            for chunk in elems.chunks(1000) {
                let _ = writeln!(s, "add element ip {t} {m} {{ {} }}", chunk.join(", "));
            }
        }
        for r in &self.chain_body {
            let _ = writeln!(s, "add rule ip {t} {POLICY_CHAIN} {r}");
        }
        // What is gone: nothing refers to it any more (the maps were
        // rewritten); chains first, they refer to sets.
        if let Some(prev) = previous {
            let mine = |name: &str| self.objects.iter().any(|o| o.name() == name);
            for o in prev.objects.iter().filter(|o| !mine(o.name())) {
                if let NftObject::Chain { name, .. } = o {
                    let _ = writeln!(s, "flush chain ip {t} {name}");
                    let _ = writeln!(s, "delete chain ip {t} {name}");
                }
            }
            for o in prev.objects.iter().filter(|o| !mine(o.name())) {
                if let NftObject::Set { name, .. } = o {
                    let _ = writeln!(s, "delete set ip {t} {name}");
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_bounded_and_unquotable() {
        let c = comment(&format!("a\"b\\c\n;é{}", "x".repeat(300)));
        assert!(c.len() <= COMMENT_MAX + 10, "{c}");
        assert!(c.starts_with("comment \"abc;x"), "{c}");
        assert_eq!(c.matches('"').count(), 2);
    }

    #[test]
    fn names_follow_content_and_listings_give_them_back() {
        let objects = Vec::new();
        let a = content_name(
            &objects,
            "np-s",
            &["set", "type ipv4_addr;", "10.0.0.1"],
            |_| true,
        );
        let b = content_name(
            &objects,
            "np-s",
            &["set", "type ipv4_addr;", "10.0.0.2"],
            |_| true,
        );
        let a2 = content_name(
            &objects,
            "np-s",
            &["set", "type ipv4_addr;", "10.0.0.1"],
            |_| true,
        );
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(a.len(), "np-s".len() + 32);
        // A different object already holding the name: a suffix, never a
        // shared name.
        let clash = vec![NftObject::Chain {
            name: a.clone(),
            rules: vec!["drop".into()],
        }];
        let c = content_name(
            &clash,
            "np-s",
            &["set", "type ipv4_addr;", "10.0.0.1"],
            |_| false,
        );
        assert_eq!(c, format!("{a}-1"));
        let listing = format!(
            "table ip podwire {{\n\tset {a} {{\n\t\ttype ipv4_addr\n\t}}\n\tchain np-cabc {{\n\t}}\n\tchain network-policy {{\n\t}}\n\tset np-local {{\n\t}}\n}}\n"
        );
        let names: Vec<String> = NftPolicy::existing_from_listing(&listing)
            .objects
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        assert_eq!(names, vec![a, "np-cabc".to_string()]);
    }
}
