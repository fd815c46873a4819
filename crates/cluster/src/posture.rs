//! The external posture, `--external-pod-access`: the one type the agent's
//! flag, the nftables chain (podwire-dataplane), the node records, the lab's
//! state and the audit all speak.

use serde::{Deserialize, Serialize};

/// Who from outside the cluster may open connections to pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExternalPodAccess {
    /// Only the cluster (its nodes' and pods' addresses) and the allow-list
    /// open connections to pods: podwire's default.
    #[default]
    Deny,
    /// Whoever reaches the node reaches its pods (the Amazon VPC CNI's
    /// behaviour, the article's exposure).
    Allow,
}

impl ExternalPodAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalPodAccess::Deny => "deny",
            ExternalPodAccess::Allow => "allow",
        }
    }
}

impl std::fmt::Display for ExternalPodAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is neither `deny` nor `allow`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("external pod access {0:?} is neither deny nor allow")]
pub struct ParseAccessError(pub String);

impl std::str::FromStr for ExternalPodAccess {
    type Err = ParseAccessError;

    fn from_str(s: &str) -> Result<Self, ParseAccessError> {
        match s {
            "deny" => Ok(ExternalPodAccess::Deny),
            "allow" => Ok(ExternalPodAccess::Allow),
            _ => Err(ParseAccessError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_json_agree() {
        for a in [ExternalPodAccess::Deny, ExternalPodAccess::Allow] {
            assert_eq!(a.to_string().parse::<ExternalPodAccess>(), Ok(a));
            let json = serde_json::to_string(&a).expect("json");
            assert_eq!(json, format!("\"{a}\""));
            assert_eq!(
                serde_json::from_str::<ExternalPodAccess>(&json).expect("back"),
                a
            );
        }
        assert_eq!(ExternalPodAccess::default(), ExternalPodAccess::Deny);
        for bad in ["open", "Allow", "", "deny "] {
            assert!(bad.parse::<ExternalPodAccess>().is_err(), "{bad:?}");
        }
    }
}
