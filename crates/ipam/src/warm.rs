//! The warm pool's targets, with the Amazon VPC CNI's names, meanings and
//! precedence (aws/amazon-vpc-cni-k8s docs/eni-and-ip-target.md and
//! docs/prefix-and-ip-target.md):
//!
//! - `WARM_IP_TARGET` / `MINIMUM_IP_TARGET`, when either is set, win over
//!   the ENI and prefix targets: hold `max(in use + warm, minimum)`
//!   addresses, growing by what is short (with prefixes: by the /28s that
//!   cover it).
//! - With prefix delegation, otherwise `WARM_PREFIX_TARGET` (default 1):
//!   keep that many /28 prefixes with no address in use.
//! - Otherwise `WARM_ENI_TARGET` (default 1): keep that many ENIs' worth of
//!   free addresses, growing by whole ENIs.
//!
//! An IP target of 0 is "not set", as in the VPC CNI: both at 0 fall back
//! to the ENI target (or, with prefix delegation, where the VPC CNI calls
//! them "not supported", to the prefix target).

/// Which rule sizes the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmTarget {
    /// WARM_ENI_TARGET: this many ENIs' worth of free addresses.
    Enis(u32),
    /// WARM_IP_TARGET and MINIMUM_IP_TARGET.
    Ips { warm: u32, minimum: u32 },
    /// WARM_PREFIX_TARGET: this many /28 prefixes wholly free.
    Prefixes(u32),
}

/// The targets and whether the pool grows by /28 prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTargets {
    pub target: WarmTarget,
    /// ENABLE_PREFIX_DELEGATION: ask for /28 prefixes, not single addresses.
    pub prefixes: bool,
}

/// The operator's settings, as the flags (and the VPC CNI's variables)
/// give them: `None` is "not set".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WarmSettings {
    pub warm_eni_target: Option<u32>,
    pub warm_ip_target: Option<u32>,
    pub minimum_ip_target: Option<u32>,
    pub warm_prefix_target: Option<u32>,
    pub prefix_delegation: bool,
}

impl PoolTargets {
    /// WARM_IP_TARGET alone (no minimum), single addresses.
    pub fn warm(warm: u32) -> Self {
        PoolTargets {
            target: WarmTarget::Ips { warm, minimum: 0 },
            prefixes: false,
        }
    }

    /// The VPC CNI's precedence (see the module comment). The one
    /// resolution: the agent's pool and `podwirectl capacity` both use it.
    pub fn from_settings(s: WarmSettings) -> Self {
        // An IP target of 0 is "not set" (the VPC CNI's warmIPTargetsDefined
        // tests `!= 0`): held as a target, it would keep only what is in use
        // and nothing would grow the pool for the next ADD.
        let warm = s.warm_ip_target.unwrap_or(0);
        let minimum = s.minimum_ip_target.unwrap_or(0);
        let target = if warm > 0 || minimum > 0 {
            WarmTarget::Ips { warm, minimum }
        } else if s.prefix_delegation {
            WarmTarget::Prefixes(s.warm_prefix_target.unwrap_or(1))
        } else {
            WarmTarget::Enis(s.warm_eni_target.unwrap_or(1))
        };
        PoolTargets {
            target,
            prefixes: s.prefix_delegation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(
        eni: Option<u32>,
        ip: Option<u32>,
        min: Option<u32>,
        prefix: Option<u32>,
        pd: bool,
    ) -> PoolTargets {
        PoolTargets::from_settings(WarmSettings {
            warm_eni_target: eni,
            warm_ip_target: ip,
            minimum_ip_target: min,
            warm_prefix_target: prefix,
            prefix_delegation: pd,
        })
    }

    #[test]
    fn precedence_is_the_vpc_cni_s() {
        use WarmTarget::*;
        // Nothing set: WARM_ENI_TARGET=1.
        assert_eq!(s(None, None, None, None, false).target, Enis(1));
        assert_eq!(s(Some(2), None, None, None, false).target, Enis(2));
        // An IP target wins over the ENI target.
        assert_eq!(
            s(Some(2), Some(5), None, None, false).target,
            Ips {
                warm: 5,
                minimum: 0
            }
        );
        assert_eq!(
            s(None, None, Some(10), None, false).target,
            Ips {
                warm: 0,
                minimum: 10
            }
        );
        // With prefixes: the prefix target (default 1) wins over the ENI
        // target, the IP targets win over the prefix target.
        assert_eq!(s(Some(3), None, None, None, true).target, Prefixes(1));
        assert_eq!(s(None, None, None, Some(2), true).target, Prefixes(2));
        assert_eq!(
            s(None, Some(7), Some(20), Some(2), true).target,
            Ips {
                warm: 7,
                minimum: 20
            }
        );
        // Both IP targets zero with prefixes is unsupported: the prefix target.
        assert_eq!(s(None, Some(0), Some(0), None, true).target, Prefixes(1));
        // An IP target of 0 is "not set", as the VPC CNI reads it
        // (warmIPTargetsDefined: `!= 0`); as a target it would hold only
        // what is in use, and nothing would ever grow the pool for an ADD.
        assert_eq!(s(None, Some(0), None, None, false).target, Enis(1));
        assert_eq!(s(Some(2), Some(0), Some(0), None, false).target, Enis(2));
        assert_eq!(
            s(None, Some(0), Some(4), None, false).target,
            Ips {
                warm: 0,
                minimum: 4
            }
        );
        assert!(s(None, None, None, None, true).prefixes);
    }
}
