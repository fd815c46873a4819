//! The network-policy concern's content: the chain's rules plus the helper
//! chains, sets and verdict maps they use (rendered by podwire-policy),
//! replaced in one transaction. Helpers are named `np-…`; the ones a new
//! ruleset no longer has are deleted in the same transaction, once nothing
//! refers to them. A helper marked `fixed` is named by its content (an
//! object of that name in the table is this very object): it is written
//! only if missing, so a change rewrites only what changed.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::{Command, Stdio};

use super::{apply, Concern, TABLE};
use crate::{DataplaneError, Result};

/// Every helper chain and set of the network-policy concern starts so.
pub const HELPER_PREFIX: &str = "np-";

/// What the network-policy chain holds, with its helpers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyRuleset {
    /// The network-policy chain's rules, one per entry (nft syntax, without
    /// `add rule …`). They must `return` what they allow, never `accept`,
    /// unless nothing after them may look at the packet.
    pub rules: Vec<String>,
    pub chains: Vec<HelperChain>,
    pub sets: Vec<HelperSet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperChain {
    /// `np-…`
    pub name: String,
    /// Named by its content: kept as it is when the table has it.
    pub fixed: bool,
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperSet {
    /// `np-…`
    pub name: String,
    /// A verdict map rather than a set.
    pub map: bool,
    /// Named by its content: kept as it is when the table has it.
    pub fixed: bool,
    /// What goes between the declaration's braces, e.g. `type ipv4_addr;
    /// flags interval;` or `type ipv4_addr : verdict;`.
    pub decl: String,
    /// Elements in nft syntax (`10.0.0.5`, `10.1.0.0/16`, `10.0.0.5 . 80`,
    /// `10.0.0.5 : jump np-in-0`).
    pub elements: Vec<String>,
}

impl HelperSet {
    fn keyword(&self) -> &'static str {
        if self.map {
            "map"
        } else {
            "set"
        }
    }
}

/// The existing helpers of the table, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Helpers {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
    pub maps: BTreeSet<String>,
}

fn bad(what: &str, v: &str) -> DataplaneError {
    DataplaneError::Nft(format!("network policy: {what} {v:?} is not allowed"))
}

fn check_name(n: &str) -> Result<()> {
    let ok = n.starts_with(HELPER_PREFIX)
        && n.len() <= 200
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(bad("helper name", n))
    }
}

/// One statement per line: a rule may not smuggle a second one in (no
/// line break, and outside its quoted strings no `;` or `#`; a quoted
/// string, a comment's text, cannot escape its quotes).
fn check_rule(r: &str) -> Result<()> {
    if r.trim().is_empty() || r.contains(['\n', '\r', '\\']) {
        return Err(bad("rule", r));
    }
    let mut quoted = false;
    for c in r.chars() {
        match c {
            '"' => quoted = !quoted,
            ';' | '#' if !quoted => return Err(bad("rule", r)),
            _ => {}
        }
    }
    if quoted {
        return Err(bad("rule", r));
    }
    Ok(())
}

fn check_element(e: &str) -> Result<()> {
    let ok = !e.is_empty()
        && e.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | ':' | ' '));
    if ok {
        Ok(())
    } else {
        Err(bad("set element", e))
    }
}

/// Inside the declaration's braces: no brace, so nothing can close them.
fn check_decl(k: &str) -> Result<()> {
    let ok = k.contains("type ")
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ' ' | ';' | ':'));
    if ok {
        Ok(())
    } else {
        Err(bad("set declaration", k))
    }
}

impl PolicyRuleset {
    fn validate(&self) -> Result<()> {
        let mut names = BTreeSet::new();
        for c in &self.chains {
            check_name(&c.name)?;
            if !names.insert(c.name.as_str()) {
                return Err(bad("duplicate helper", &c.name));
            }
            c.rules.iter().try_for_each(|r| check_rule(r))?;
        }
        for s in &self.sets {
            check_name(&s.name)?;
            if !names.insert(s.name.as_str()) {
                return Err(bad("duplicate helper", &s.name));
            }
            check_decl(&s.decl)?;
            s.elements.iter().try_for_each(|e| check_element(e))?;
        }
        self.rules.iter().try_for_each(|r| check_rule(r))
    }

    /// The transaction that makes the concern exactly this, given the
    /// helpers the table holds now (`existing`).
    pub fn script(&self, existing: &Helpers) -> Result<String> {
        self.script_since(existing, None)
    }

    /// As [`PolicyRuleset::script`], where `last` is what the table holds
    /// (the ruleset this process applied last, and nothing changed it
    /// since): a set or map both have is changed by its elements' difference
    /// instead of flushed and refilled, so a pod that comes or goes costs
    /// the kernel a few elements, not every pod's.
    pub fn script_since(&self, existing: &Helpers, last: Option<&PolicyRuleset>) -> Result<String> {
        self.validate()?;
        // name → (elements to delete, by key; elements to add), for the
        // sets both rulesets have with the same declaration.
        let diffs: std::collections::BTreeMap<&str, (Vec<&str>, Vec<&str>)> = self
            .sets
            .iter()
            .filter_map(|x| {
                let before = last?
                    .sets
                    .iter()
                    .find(|l| l.name == x.name && l.map == x.map && l.decl == x.decl)?;
                let in_table = if x.map {
                    existing.maps.contains(&x.name)
                } else {
                    existing.sets.contains(&x.name)
                };
                if !in_table {
                    return None;
                }
                let old: BTreeSet<&str> = before.elements.iter().map(String::as_str).collect();
                let new: BTreeSet<&str> = x.elements.iter().map(String::as_str).collect();
                // A map element is deleted by its key.
                let del = old
                    .difference(&new)
                    .map(|e| e.split(" : ").next().unwrap_or(e))
                    .collect();
                let add = new.difference(&old).copied().collect();
                Some((x.name.as_str(), (del, add)))
            })
            .collect();
        let chain = Concern::NetworkPolicy.chain();
        let kept_chain = |c: &HelperChain| c.fixed && existing.chains.contains(&c.name);
        let kept_set = |x: &HelperSet| {
            x.fixed
                && if x.map {
                    existing.maps.contains(&x.name)
                } else {
                    existing.sets.contains(&x.name)
                }
        };
        let new_chains: BTreeSet<&str> = self.chains.iter().map(|c| c.name.as_str()).collect();
        let new_sets: BTreeSet<(bool, &str)> =
            self.sets.iter().map(|c| (c.map, c.name.as_str())).collect();
        let mut s = String::new();
        let _ = writeln!(s, "add chain ip {TABLE} {chain}");
        let _ = writeln!(s, "flush chain ip {TABLE} {chain}");
        // Old helper chains and maps that go are emptied first: nothing
        // refers to a helper that goes once these have run (the chain above
        // and every map and chain that stays are rewritten or hold only
        // what stays), so deleting them at the end cannot fail.
        for c in existing
            .chains
            .iter()
            .filter(|c| !new_chains.contains(c.as_str()))
        {
            let _ = writeln!(s, "flush chain ip {TABLE} {c}");
        }
        for m in existing
            .maps
            .iter()
            .filter(|m| !new_sets.contains(&(true, m.as_str())))
        {
            let _ = writeln!(s, "flush map ip {TABLE} {m}");
        }
        for set in self.sets.iter().filter(|x| !kept_set(x)) {
            let kw = set.keyword();
            if let Some((del, _)) = diffs.get(set.name.as_str()) {
                for chunk in del.chunks(1000) {
                    let _ = writeln!(
                        s,
                        "delete element ip {TABLE} {} {{ {} }}",
                        set.name,
                        chunk.join(", ")
                    );
                }
                continue;
            }
            let _ = writeln!(s, "add {kw} ip {TABLE} {} {{ {} }}", set.name, set.decl);
            let _ = writeln!(s, "flush {kw} ip {TABLE} {}", set.name);
        }
        let elements = |x: &'_ HelperSet| -> Vec<String> {
            match diffs.get(x.name.as_str()) {
                Some((_, add)) => add.iter().map(ToString::to_string).collect(),
                None => x.elements.clone(),
            }
        };
        // All chains exist before any rule or map element jumps to one.
        for c in self.chains.iter().filter(|c| !kept_chain(c)) {
            let _ = writeln!(s, "add chain ip {TABLE} {}", c.name);
            let _ = writeln!(s, "flush chain ip {TABLE} {}", c.name);
        }
        for set in self.sets.iter().filter(|x| !x.map && !kept_set(x)) {
            for chunk in elements(set).chunks(1000) {
                let _ = writeln!(
                    s,
                    "add element ip {TABLE} {} {{ {} }}",
                    set.name,
                    chunk.join(", ")
                );
            }
        }
        for c in self.chains.iter().filter(|c| !kept_chain(c)) {
            for r in &c.rules {
                let _ = writeln!(s, "add rule ip {TABLE} {} {r}", c.name);
            }
        }
        for set in self.sets.iter().filter(|x| x.map && !kept_set(x)) {
            for chunk in elements(set).chunks(1000) {
                let _ = writeln!(
                    s,
                    "add element ip {TABLE} {} {{ {} }}",
                    set.name,
                    chunk.join(", ")
                );
            }
        }
        for r in &self.rules {
            let _ = writeln!(s, "add rule ip {TABLE} {chain} {r}");
        }
        for c in existing
            .chains
            .iter()
            .filter(|c| !new_chains.contains(c.as_str()))
        {
            let _ = writeln!(s, "delete chain ip {TABLE} {c}");
        }
        for m in existing
            .maps
            .iter()
            .filter(|m| !new_sets.contains(&(true, m.as_str())))
        {
            let _ = writeln!(s, "delete map ip {TABLE} {m}");
        }
        for c in existing
            .sets
            .iter()
            .filter(|c| !new_sets.contains(&(false, c.as_str())))
        {
            let _ = writeln!(s, "delete set ip {TABLE} {c}");
        }
        Ok(s)
    }

    /// The helpers the table holds once this ruleset is applied.
    pub fn helpers(&self) -> Helpers {
        let mut h = Helpers::default();
        for c in &self.chains {
            h.chains.insert(c.name.clone());
        }
        for x in &self.sets {
            if x.map {
                h.maps.insert(x.name.clone());
            } else {
                h.sets.insert(x.name.clone());
            }
        }
        h
    }
}

/// The helper chains and sets in podwire's table now (none if there is no
/// table yet).
pub fn existing_helpers() -> Result<Helpers> {
    // Terse: names without the sets' elements (a large policy's listing
    // would otherwise cost more than applying it).
    let out = Command::new("nft")
        .args(["-t", "list", "table", "ip", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DataplaneError::Nft(format!("running nft: {e} (is nftables installed?)")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(Helpers::default());
        }
        return Err(DataplaneError::Nft(format!("listing the table: {err}")));
    }
    Ok(parse_helpers(&String::from_utf8_lossy(&out.stdout)))
}

/// The `np-` chains and sets of an `nft list table` output.
pub fn parse_helpers(listing: &str) -> Helpers {
    let mut h = Helpers::default();
    for line in listing.lines() {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(name), Some("{")) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if !name.starts_with(HELPER_PREFIX) {
            continue;
        }
        match kind {
            "chain" => {
                h.chains.insert(name.to_string());
            }
            "set" => {
                h.sets.insert(name.to_string());
            }
            "map" => {
                h.maps.insert(name.to_string());
            }
            _ => {}
        }
    }
    h
}

/// Replaces the network-policy concern with `p` in one transaction.
pub fn apply_policy(p: &PolicyRuleset) -> Result<()> {
    let existing = existing_helpers()?;
    apply(&p.script(&existing)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset() -> PolicyRuleset {
        PolicyRuleset {
            rules: vec!["ip daddr 10.0.0.5 jump np-in-x-a".into()],
            chains: vec![HelperChain {
                name: "np-in-x-a".into(),
                fixed: false,
                rules: vec![
                    "ip saddr @np-src-1 tcp dport 80 return".into(),
                    "counter drop".into(),
                ],
            }],
            sets: vec![HelperSet {
                name: "np-src-1".into(),
                map: false,
                fixed: false,
                decl: "type ipv4_addr; flags interval;".into(),
                elements: vec!["10.0.0.0/24".into()],
            }],
        }
    }

    #[test]
    fn sets_and_chains_exist_before_they_are_used_and_old_helpers_go_last() {
        let existing = Helpers {
            chains: ["np-in-x-a".to_string(), "np-old".to_string()].into(),
            sets: ["np-gone".to_string()].into(),
            maps: ["np-map".to_string()].into(),
        };
        let s = ruleset().script(&existing).expect("script");
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle}:\n{s}"));
        assert!(pos("flush chain ip podwire np-old") < pos("add set ip podwire np-src-1"));
        assert!(pos("add set ip podwire np-src-1") < pos("add rule ip podwire np-in-x-a"));
        assert!(pos("add chain ip podwire np-in-x-a") < pos("add rule ip podwire network-policy"));
        assert!(pos("add rule ip podwire network-policy") < pos("delete chain ip podwire np-old"));
        assert!(s.contains("delete set ip podwire np-gone"), "{s}");
        assert!(pos("flush map ip podwire np-map") < pos("delete chain ip podwire np-old"));
        assert!(s.contains("delete map ip podwire np-map"), "{s}");
        assert!(!s.contains("delete chain ip podwire np-in-x-a"), "{s}");
        assert!(!s.contains("delete table"), "{s}");
    }

    #[test]
    fn content_named_helpers_in_the_table_are_kept_as_they_are() {
        let mut r = ruleset();
        r.chains[0].fixed = true;
        r.sets[0].fixed = true;
        let existing = Helpers {
            chains: ["np-in-x-a".to_string(), "np-old".to_string()].into(),
            sets: ["np-src-1".to_string()].into(),
            maps: Default::default(),
        };
        let s = r.script(&existing).expect("script");
        assert!(
            !s.contains("add rule ip podwire np-in-x-a"),
            "kept chain rewritten:\n{s}"
        );
        assert!(!s.contains("flush chain ip podwire np-in-x-a"), "{s}");
        assert!(!s.contains("flush set ip podwire np-src-1"), "{s}");
        assert!(s.contains("delete chain ip podwire np-old"), "{s}");
        assert!(s.contains("add rule ip podwire network-policy"), "{s}");
        // Missing from the table: written.
        let s = r.script(&Helpers::default()).expect("script");
        assert!(s.contains("add rule ip podwire np-in-x-a"), "{s}");
        assert_eq!(r.helpers().chains, ["np-in-x-a".to_string()].into());
    }

    #[test]
    fn sets_and_maps_the_table_holds_change_by_their_difference() {
        let mut last = ruleset();
        last.sets.push(HelperSet {
            name: "np-ingress".into(),
            map: true,
            fixed: false,
            decl: "type ipv4_addr : verdict;".into(),
            elements: vec![
                "10.0.0.5 : jump np-in-x-a".into(),
                "10.0.0.6 : jump np-in-x-a".into(),
            ],
        });
        let mut next = last.clone();
        next.sets[0].elements = vec!["10.0.0.0/24".into(), "10.0.1.0/24".into()];
        next.sets[1].elements = vec![
            "10.0.0.5 : jump np-in-x-a".into(),
            "10.0.0.7 : jump np-in-x-a".into(),
        ];
        let s = next
            .script_since(&last.helpers(), Some(&last))
            .expect("script");
        assert!(!s.contains("flush set ip podwire np-src-1"), "{s}");
        assert!(!s.contains("flush map ip podwire np-ingress"), "{s}");
        assert!(
            s.contains("add element ip podwire np-src-1 { 10.0.1.0/24 }"),
            "{s}"
        );
        assert!(!s.contains("10.0.0.0/24"), "{s}");
        assert!(
            s.contains("delete element ip podwire np-ingress { 10.0.0.6 }"),
            "{s}"
        );
        assert!(
            s.contains("add element ip podwire np-ingress { 10.0.0.7 : jump np-in-x-a }"),
            "{s}"
        );
        assert!(!s.contains("10.0.0.5 : jump"), "{s}");
        // The map's deletions come before any chain goes.
        let pos = |n: &str| s.find(n).unwrap_or_else(|| panic!("{n}:\n{s}"));
        assert!(
            pos("delete element ip podwire np-ingress") < pos("add rule ip podwire network-policy")
        );
        // Not in the table (after a failure the agent forgets `last`):
        // written whole.
        let s = next
            .script_since(&Helpers::default(), Some(&last))
            .expect("script");
        assert!(s.contains("flush set ip podwire np-src-1"), "{s}");
        assert!(s.contains("10.0.0.0/24, 10.0.1.0/24"), "{s}");
    }

    #[test]
    fn injected_rules_names_and_elements_are_refused() {
        let mut r = ruleset();
        r.rules.push("accept\nflush ruleset".into());
        assert!(r.script(&Helpers::default()).is_err());
        let mut r = ruleset();
        r.chains[0].name = "forward".into();
        assert!(r.script(&Helpers::default()).is_err());
        let mut r = ruleset();
        r.sets[0].elements.push("1.2.3.4 } ; flush ruleset".into());
        assert!(r.script(&Helpers::default()).is_err());
        let mut r = ruleset();
        r.sets[0].decl = "type ipv4_addr; } ; flush ruleset ; add set ip podwire x {".into();
        assert!(r.script(&Helpers::default()).is_err());
        let mut r = ruleset();
        r.rules.push("counter; flush ruleset".into());
        assert!(r.script(&Helpers::default()).is_err());
        let mut r = ruleset();
        r.rules
            .push("counter comment \"open\" ; flush ruleset".into());
        assert!(r.script(&Helpers::default()).is_err());
        let mut r = ruleset();
        r.rules.push("counter comment \"unterminated".into());
        assert!(r.script(&Helpers::default()).is_err());
        // Inside a comment's quotes, ';' and '#' are text.
        let mut r = ruleset();
        r.rules.push("counter comment \"x/a; see #3\"".into());
        assert!(r.script(&Helpers::default()).is_ok());
    }

    #[test]
    fn helpers_are_read_from_a_listing() {
        let listing = "table ip podwire {\n\tmap np-m {\n\t}\n\tset np-a {\n\t\ttype ipv4_addr\n\t}\n\tset cluster-nets {\n\t}\n\tchain np-b {\n\t}\n\tchain forward {\n\t}\n}\n";
        let h = parse_helpers(listing);
        assert_eq!(h.sets, ["np-a".to_string()].into());
        assert_eq!(h.chains, ["np-b".to_string()].into());
        assert_eq!(h.maps, ["np-m".to_string()].into());
    }
}
