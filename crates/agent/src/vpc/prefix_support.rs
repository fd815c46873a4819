//! Whether this node may delegate prefixes: EC2 assigns /28 prefixes to
//! Nitro types only (hypervisor `nitro`, or bare metal). Asking on another
//! type fails every call (`InvalidParameterCombination`), so a node started
//! with `--prefix-delegation` on one would report ready and fail every ADD.
//! The instance type is known at start: decide there, loudly.

use podwire_cloud::limits::LimitsTable;

use crate::AgentError;

/// The prefix delegation the node runs with. `Err` when it was asked for on
/// a type the limits table knows to take no prefixes and no fallback is
/// configured; with `--prefix-fallback-to-secondary-ips`, single addresses
/// (and a warning). A type the table does not know is left to the cloud.
pub(crate) fn effective(
    wanted: bool,
    fallback: bool,
    instance_type: &str,
    table: Option<&LimitsTable>,
) -> Result<bool, AgentError> {
    if !wanted {
        return Ok(false);
    }
    let Some(limits) = table.and_then(|t| t.get(instance_type)) else {
        return Ok(true);
    };
    if limits.supports_prefixes() {
        return Ok(true);
    }
    let why = format!(
        "--prefix-delegation: {instance_type} is not a Nitro instance type (hypervisor {:?}): EC2 assigns no prefixes to it",
        limits.hypervisor
    );
    if fallback {
        tracing::warn!(
            "{why}; using single secondary addresses (--prefix-fallback-to-secondary-ips)"
        );
        return Ok(false);
    }
    Err(AgentError::Config(format!(
        "{why}; turn prefix delegation off, or add --prefix-fallback-to-secondary-ips"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LimitsTable {
        LimitsTable::builtin().expect("builtin limits")
    }

    #[test]
    fn a_non_nitro_type_with_prefix_delegation_is_refused_with_the_way_out() {
        let t = table();
        let e = effective(true, false, "t2.medium", Some(&t)).expect_err("xen takes no prefixes");
        let msg = e.to_string();
        assert!(
            msg.contains("t2.medium") && msg.contains("not a Nitro"),
            "{msg}"
        );
        assert!(msg.contains("--prefix-fallback-to-secondary-ips"), "{msg}");
    }

    #[test]
    fn with_the_fallback_a_non_nitro_type_uses_secondary_addresses() {
        let t = table();
        assert!(!effective(true, true, "t2.medium", Some(&t)).expect("fallback"));
    }

    #[test]
    fn nitro_bare_metal_unknown_and_off_are_left_as_asked() {
        let t = table();
        assert!(effective(true, false, "m5.large", Some(&t)).expect("nitro"));
        assert!(effective(true, false, "m5.metal", Some(&t)).expect("bare metal"));
        assert!(effective(true, false, "zz9.huge", Some(&t)).expect("unknown: the cloud says"));
        assert!(effective(true, false, "t2.medium", None).expect("no table"));
        assert!(!effective(false, false, "t2.medium", Some(&t)).expect("off"));
    }
}
