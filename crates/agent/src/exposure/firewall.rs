//! Where the posture's set and the policies go: the node's nftables (one
//! `nft -f` transaction per change, both concerns together), or a recorder
//! in tests.

use ipnet::Ipv4Net;
use podwire_dataplane::nft::{self, HelperChain, HelperSet, PolicyRuleset};
use podwire_dataplane::DataplaneError;
use podwire_policy::NftPolicy;

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

/// The node's nftables.
#[derive(Debug)]
pub(crate) struct Nft;

impl Firewall for Nft {
    fn apply(&self, change: &Change) -> Result<(), DataplaneError> {
        let mut s = String::new();
        if let Some(nets) = &change.cluster_nets {
            s.push_str(&nft::cluster_nets_script(nets));
        }
        if let Some(p) = &change.policy {
            s.push_str(&p.script(&nft::existing_helpers()?)?);
        }
        if s.is_empty() {
            return Ok(());
        }
        nft::apply(&s)
    }
}

/// podwire-policy's rendering as the dataplane's network-policy concern.
pub(crate) fn ruleset(p: NftPolicy) -> PolicyRuleset {
    let mut sets: Vec<HelperSet> = p
        .sets
        .into_iter()
        .map(|(name, decl, elements)| HelperSet {
            name,
            map: false,
            decl,
            elements,
        })
        .collect();
    sets.extend(p.maps.into_iter().map(|(name, elements)| HelperSet {
        name,
        map: true,
        decl: "type ipv4_addr : verdict;".into(),
        elements,
    }));
    PolicyRuleset {
        rules: p.chain_body,
        chains: p
            .chains
            .into_iter()
            .map(|(name, rules)| HelperChain { name, rules })
            .collect(),
        sets,
    }
}

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
            self.applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(change.clone());
            Ok(())
        }
    }
}
