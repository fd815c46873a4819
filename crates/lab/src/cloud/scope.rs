//! What the lab made, as far as the cloud may rely on it. Names that arrive
//! in API requests (an instance's `Name` and `podwire:netns` tags) become
//! interface names, nftables rules and namespace paths, so they are checked
//! against the lab's own naming scheme and against the namespaces the lab
//! recorded in lab.json — never taken as given.

use std::collections::BTreeSet;
use std::path::Path;

use super::faults::CloudFaults;
use super::model::{api_err, ApiError};
use crate::names;
use crate::state::LabState;
use crate::LabError;

#[derive(Debug, Clone, Default)]
pub struct LabScope {
    pub lab: String,
    /// Every namespace the lab recorded (recorded before it is created).
    pub namespaces: BTreeSet<String>,
    /// The EC2 failures to inject, as lab.json says now.
    pub faults: CloudFaults,
}

impl LabScope {
    /// Reads lab.json of the lab in `dir`.
    pub fn load(dir: &Path) -> Result<LabScope, LabError> {
        let st = LabState::load_from(dir)?;
        Ok(LabScope {
            lab: st.name,
            namespaces: st.namespaces.into_iter().collect(),
            faults: st.cloud_faults,
        })
    }

    /// May the fabric link into `netns`? Only an instance namespace this
    /// lab named and recorded: never a path, never the fabric itself.
    pub fn allows_netns(&self, netns: &str) -> bool {
        self.namespaces.contains(netns) && self.host_of(netns).is_some()
    }

    /// The host name (`node-N`, `external`) the lab's naming gives `netns`.
    fn host_of(&self, netns: &str) -> Option<String> {
        if netns == names::ns_external(&self.lab) {
            return Some(names::EXTERNAL.to_string());
        }
        let n: usize = netns
            .strip_prefix(&format!("pw-{}-node-", self.lab))?
            .parse()
            .ok()?;
        // `parse` takes "+1" and "01": only the canonical spelling is ours.
        (names::ns_node(&self.lab, n) == netns && n > 0).then(|| names::node_name(n))
    }

    /// Checks RunInstances' tags: `netns` is a namespace the lab recorded
    /// and `host` the name the lab's scheme gives it.
    pub fn check_instance(&self, host: &str, netns: &str) -> Result<(), ApiError> {
        if !self.allows_netns(netns) {
            return Err(api_err(
                "InvalidParameterValue",
                format!(
                    "Value ({}) for tag podwire:netns is invalid: not a namespace of lab {}",
                    netns.escape_debug(),
                    self.lab
                ),
            ));
        }
        if self.host_of(netns).as_deref() != Some(host) {
            return Err(api_err(
                "InvalidParameterValue",
                format!(
                    "Value ({}) for tag Name is invalid: namespace {netns} is the lab's {}",
                    host.escape_debug(),
                    self.host_of(netns).unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> LabScope {
        LabScope {
            lab: "t".into(),
            namespaces: ["pw-t-fabric", "pw-t-node-1", "pw-t-node-3", "pw-t-external"]
                .into_iter()
                .map(String::from)
                .collect(),
            faults: CloudFaults::default(),
        }
    }

    #[test]
    fn only_recorded_instance_namespaces_with_their_own_names_pass() {
        let s = scope();
        assert!(s.check_instance("node-3", "pw-t-node-3").is_ok());
        assert!(s.check_instance("external", "pw-t-external").is_ok());
        for (host, netns) in [
            ("node-9", "../../proc/1/ns/net"),
            ("node-2", "pw-t-node-2"),     // not recorded
            ("fabric", "pw-t-fabric"),     // recorded, but not an instance
            ("node-1", "pw-t-node-3"),     // a name that is not its namespace's
            ("x\" accept", "pw-t-node-1"), // would land in nftables
            ("node-1", "pw-t-node-01"),
            ("node-1", "/run/netns/pw-t-node-1"),
        ] {
            assert_eq!(
                s.check_instance(host, netns).expect_err(netns).code,
                "InvalidParameterValue",
                "{host} {netns}"
            );
        }
        assert!(!s.allows_netns("pw-t-fabric"));
        assert!(!s.allows_netns("pw-other-node-1"));
    }
}
