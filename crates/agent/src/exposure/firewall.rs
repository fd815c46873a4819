//! Where the posture's set and the policies go: the node's nftables (one
//! `nft -f` transaction per change, both concerns together), or a recorder
//! in tests.

use ipnet::Ipv4Net;
use podwire_dataplane::nft::{self, HelperChain, HelperSet, PolicyRuleset};
use podwire_dataplane::DataplaneError;
use podwire_policy::{NftObject, NftPolicy};

/// One change to the node's firewall; `None` leaves that part as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Change {
    pub cluster_nets: Option<Vec<Ipv4Net>>,
    pub policy: Option<PolicyRuleset>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.cluster_nets.is_none() && self.policy.is_none()
    }
}

pub(crate) trait Firewall: Send + Sync + std::fmt::Debug {
    /// Applies `change` in one transaction: all of it or nothing.
    fn apply(&self, change: &Change) -> Result<(), DataplaneError>;
}

/// The node's nftables. Remembers which policy helpers it left in the
/// table and the policy it applied last (the agent is the table's one
/// owner), so only the first change after start, or after a failure, lists
/// them from the kernel, and a set or map that is exactly as last applied
/// is left as it is.
#[derive(Debug, Default)]
pub(crate) struct Nft {
    last: std::sync::Mutex<Option<(nft::Helpers, PolicyRuleset)>>,
}

/// `next` with every set and map that `last` applied exactly so marked
/// `fixed` (kept as the table has it): a pod that comes or goes rewrites
/// the sets that hold it, not all of them.
pub(crate) fn keep_unchanged(next: &PolicyRuleset, last: &PolicyRuleset) -> PolicyRuleset {
    let mut p = next.clone();
    for s in p.sets.iter_mut().filter(|s| !s.fixed) {
        s.fixed = last.sets.contains(s);
    }
    p
}

#[cfg(test)]
mod keep_tests {
    use super::*;

    fn set(name: &str, elements: &[&str]) -> HelperSet {
        HelperSet {
            name: name.into(),
            map: false,
            fixed: false,
            decl: "type ipv4_addr;".into(),
            elements: elements.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn only_sets_that_changed_since_the_last_apply_are_rewritten() {
        let last = PolicyRuleset {
            rules: vec!["counter".into()],
            chains: Vec::new(),
            sets: vec![set("np-sa", &["10.0.0.1"]), set("np-sb", &["10.0.0.2"])],
        };
        let mut next = last.clone();
        next.sets[1].elements.push("10.0.0.3".into());
        let kept = keep_unchanged(&next, &last);
        let script = kept.script(&last.helpers()).expect("script");
        assert!(!script.contains("flush set ip podwire np-sa"), "{script}");
        assert!(!script.contains("10.0.0.1"), "{script}");
        assert!(script.contains("flush set ip podwire np-sb"), "{script}");
        assert!(script.contains("10.0.0.2, 10.0.0.3"), "{script}");
        // Not in the table (a failure or a restart lost track): written.
        let script = kept.script(&nft::Helpers::default()).expect("script");
        assert!(script.contains("10.0.0.1"), "{script}");
    }
}

impl Firewall for Nft {
    fn apply(&self, change: &Change) -> Result<(), DataplaneError> {
        let mut known = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::new();
        if let Some(nets) = &change.cluster_nets {
            s.push_str(&nft::cluster_nets_script(nets));
        }
        if let Some(p) = &change.policy {
            let script = match known.take() {
                Some((h, last)) => keep_unchanged(p, &last).script_since(&h, Some(&last))?,
                None => p.script(&nft::existing_helpers()?)?,
            };
            s.push_str(&script);
        }
        if s.is_empty() {
            return Ok(());
        }
        nft::apply(&s)?;
        if let Some(p) = &change.policy {
            *known = Some((p.helpers(), p.clone()));
        }
        Ok(())
    }
}

/// podwire-policy's rendering as the dataplane's network-policy concern:
/// its chains are named by content, so `fixed` (kept when the table has
/// them); its sets are named by what they stand for and, like `np-local`
/// and the two verdict maps, rewritten each time (their elements follow
/// the pods).
pub(crate) fn ruleset(p: NftPolicy) -> PolicyRuleset {
    let mut sets = Vec::new();
    let mut chains = Vec::new();
    for o in p.objects {
        match o {
            NftObject::Set {
                name,
                decl,
                elements,
            } => sets.push(HelperSet {
                name,
                map: false,
                fixed: false,
                decl,
                elements,
            }),
            NftObject::Chain { name, rules } => chains.push(HelperChain {
                name,
                fixed: true,
                rules,
            }),
        }
    }
    sets.push(HelperSet {
        name: LOCAL_SET.into(),
        map: false,
        fixed: false,
        decl: "type ipv4_addr;".into(),
        elements: p.local,
    });
    for (name, elements) in [(INGRESS_MAP, p.ingress_map), (EGRESS_MAP, p.egress_map)] {
        sets.push(HelperSet {
            name: name.into(),
            map: true,
            fixed: false,
            decl: "type ipv4_addr : verdict;".into(),
            elements,
        });
    }
    PolicyRuleset {
        rules: p.chain_body,
        chains,
        sets,
    }
}

/// podwire-policy's fixed object names (its rules refer to them).
const LOCAL_SET: &str = "np-local";
const INGRESS_MAP: &str = "np-ingress";
const EGRESS_MAP: &str = "np-egress";

#[cfg(test)]
pub(crate) mod fake {
    //! A firewall that records what it was asked to apply, and can be made
    //! to fail.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    pub struct Recorder {
        pub applied: Mutex<Vec<Change>>,
        pub fail: AtomicBool,
    }

    impl Recorder {
        pub fn changes(&self) -> Vec<Change> {
            self.applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        }

        /// The last policy applied.
        pub fn last_policy(&self) -> Option<PolicyRuleset> {
            self.changes().into_iter().rev().find_map(|c| c.policy)
        }

        pub fn last_nets(&self) -> Option<Vec<Ipv4Net>> {
            self.changes()
                .into_iter()
                .rev()
                .find_map(|c| c.cluster_nets)
        }
    }

    impl Firewall for std::sync::Arc<Recorder> {
        fn apply(&self, change: &Change) -> Result<(), DataplaneError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(DataplaneError::Nft("the fake kernel refuses".into()));
            }
            // What the real one would be given must pass the dataplane's
            // checks.
            if let Some(p) = &change.policy {
                p.script(&nft::Helpers::default())?;
            }
            self.applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(change.clone());
            Ok(())
        }
    }
}
