//! `podwirectl capacity --instance-type T`: max pods of one type.

use podwire_cloud::limits::{InstanceLimits, LimitsTable, HOST_NETWORK_PODS, IPS_PER_PREFIX};
use serde::Serialize;

use crate::{suggest, CapacityError};

/// The type's limits, or an error naming the nearest known types.
pub fn lookup<'a>(table: &'a LimitsTable, name: &str) -> Result<&'a InstanceLimits, CapacityError> {
    table
        .get(name)
        .ok_or_else(|| CapacityError::UnknownInstanceType {
            name: name.to_string(),
            suggestions: suggest::nearest(name, table.iter().map(|l| l.instance_type.as_str())),
        })
}

/// Max pods of one instance type (every field documented in
/// docs/CAPACITY.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceReport {
    pub instance_type: String,
    /// Secondary IPs: `ENIs × (IPv4 per ENI − 1) + 2` (eni-max-pods.txt).
    pub max_pods: u32,
    /// Prefix delegation: `ENIs × (IPv4 per ENI − 1) × 16 + 2`, capped at
    /// 110 (≤ 30 vCPUs) or 250; null without a figure (see `..._note`).
    pub max_pods_prefix_delegation: Option<u32>,
    /// Why `max_pods_prefix_delegation` is null.
    pub max_pods_prefix_delegation_note: Option<String>,
    /// The prefix formula before the cap (null where the type takes no
    /// prefixes).
    pub max_pods_prefix_delegation_uncapped: Option<u32>,
    /// Whether the answer is for prefix delegation.
    pub prefix_delegation: bool,
    /// The kubelet `--max-pods` to set for the chosen mode.
    pub kubelet_max_pods: u32,
    /// Pods with a VPC address the node holds at most in the chosen mode
    /// (`kubelet_max_pods` minus the 2 host-network pods, and never more
    /// than the addresses the ENIs can hold).
    pub pod_addresses: u32,
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
    pub hypervisor: String,
    pub bare_metal: bool,
    /// Null where unknown.
    pub vcpus: Option<u32>,
    pub vcpus_source: Option<String>,
}

/// Pods with a VPC address a node holds at most: what the kubelet admits
/// beyond the 2 host-network pods, within what the ENIs can address.
pub fn pod_addresses(l: &InstanceLimits, kubelet_max_pods: u32, prefix_delegation: bool) -> u32 {
    let addressable = if prefix_delegation {
        l.prefix_slots().saturating_mul(IPS_PER_PREFIX)
    } else {
        l.pod_ips()
    };
    addressable.min(kubelet_max_pods.saturating_sub(HOST_NETWORK_PODS))
}

/// The report for `name`; with `prefix_delegation`, an error where the type
/// has no prefix figure (the configuration cannot work there).
pub fn report(
    table: &LimitsTable,
    name: &str,
    prefix_delegation: bool,
) -> Result<InstanceReport, CapacityError> {
    let l = lookup(table, name)?;
    let vcpu = table.vcpus(name);
    let vcpus = vcpu.and_then(|v| v.vcpus);
    let pd = l.max_pods_prefix_delegation(vcpus);
    let max_pods = l.max_pods_secondary_ips();
    let kubelet_max_pods = match (&pd, prefix_delegation) {
        (_, false) => max_pods,
        (Ok(n), true) => *n,
        (Err(why), true) => {
            return Err(CapacityError::Invalid(format!(
                "{name}: no prefix delegation: {why}"
            )))
        }
    };
    Ok(InstanceReport {
        instance_type: l.instance_type.clone(),
        max_pods,
        max_pods_prefix_delegation: pd.as_ref().ok().copied(),
        max_pods_prefix_delegation_note: pd.as_ref().err().map(ToString::to_string),
        max_pods_prefix_delegation_uncapped: l
            .supports_prefixes()
            .then(|| l.max_pods_prefix_uncapped()),
        prefix_delegation,
        kubelet_max_pods,
        pod_addresses: pod_addresses(l, kubelet_max_pods, prefix_delegation),
        max_enis: l.max_enis,
        ipv4_per_eni: l.ipv4_per_eni,
        hypervisor: l.hypervisor.clone(),
        bare_metal: l.bare_metal,
        vcpus,
        vcpus_source: vcpu.map(|v| v.source.clone()),
    })
}

/// The human form.
pub fn render(r: &InstanceReport) -> String {
    let pd = match (
        r.max_pods_prefix_delegation,
        &r.max_pods_prefix_delegation_note,
    ) {
        (Some(n), _) => format!(
            "{n} (formula {}, capped at {} for {} vCPUs)",
            r.max_pods_prefix_delegation_uncapped.unwrap_or(n),
            podwire_cloud::limits::prefix_cap(r.vcpus.unwrap_or(0)),
            r.vcpus.map_or("?".into(), |v| v.to_string())
        ),
        (None, Some(why)) => format!("none: {why}"),
        (None, None) => "none".into(),
    };
    // The cap can put prefix delegation below secondary IPs (c6in.32xlarge:
    // 250 < 394); turning it on then lowers max pods, which surprises.
    let lowers = match r.max_pods_prefix_delegation {
        Some(n) if n < r.max_pods => format!(
            "note: prefix delegation LOWERS max pods for this type ({n} < {}: the vCPU cap)\n",
            r.max_pods
        ),
        _ => String::new(),
    };
    let out = format!(
        "{}: {} ENIs x {} IPv4 addresses per ENI, hypervisor {}{}, vCPUs {}\n\
         max pods with secondary IPs:    {} ({} x ({} - 1) + 2)\n\
         max pods with prefix delegation: {}\n\
         set kubelet --max-pods={} ({}); pods with a VPC address: {}\n",
        r.instance_type,
        r.max_enis,
        r.ipv4_per_eni,
        r.hypervisor,
        if r.bare_metal { ", bare metal" } else { "" },
        r.vcpus.map_or("unknown".into(), |v| v.to_string()),
        r.max_pods,
        r.max_enis,
        r.ipv4_per_eni,
        pd,
        r.kubelet_max_pods,
        if r.prefix_delegation {
            "prefix delegation: without it the extra addresses give no extra pods"
        } else {
            "secondary IPs"
        },
        r.pod_addresses,
    );
    out + &lowers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LimitsTable {
        LimitsTable::builtin().expect("builtin")
    }

    /// Newuser F11: turning prefix delegation on lowers c6in.32xlarge's max
    /// pods (250 < 394) and the text did not say so.
    #[test]
    fn the_text_notes_when_prefix_delegation_lowers_max_pods() {
        let t = table();
        for pd in [false, true] {
            let text = render(&report(&t, "c6in.32xlarge", pd).expect("known"));
            assert!(
                text.contains("prefix delegation LOWERS max pods for this type (250 < 394"),
                "{text}"
            );
        }
        let text = render(&report(&t, "m5.large", true).expect("known"));
        assert!(!text.contains("LOWERS"), "{text}");
    }

    #[test]
    fn m5_large_both_ways() {
        let t = table();
        let r = report(&t, "m5.large", false).expect("known");
        // 3 ENIs x (10 - 1) + 2 = 29; prefixes 3 x 9 x 16 + 2 = 434 -> 110.
        assert_eq!(
            (
                r.max_pods,
                r.max_pods_prefix_delegation,
                r.max_pods_prefix_delegation_uncapped
            ),
            (29, Some(110), Some(434))
        );
        // Secondary IPs: kubelet 29, 27 pods with an address.
        assert_eq!((r.kubelet_max_pods, r.pod_addresses), (29, 27));
        let pd = report(&t, "m5.large", true).expect("known");
        // Prefixes: kubelet 110, 108 pods with an address (432 possible).
        assert_eq!((pd.kubelet_max_pods, pd.pod_addresses), (110, 108));
        let v = serde_json::to_value(&pd).expect("json");
        assert_eq!(v["instance_type"], "m5.large");
        assert_eq!(v["max_pods"], 29);
        assert_eq!(v["max_pods_prefix_delegation"], 110);
    }

    #[test]
    fn types_without_a_prefix_figure_say_why_and_keep_the_field() {
        let t = table();
        let r = report(&t, "c4.large", false).expect("known");
        let v = serde_json::to_value(&r).expect("json");
        assert!(v["max_pods_prefix_delegation"].is_null());
        assert!(v
            .as_object()
            .expect("object")
            .contains_key("max_pods_prefix_delegation"));
        assert!(r
            .max_pods_prefix_delegation_note
            .as_deref()
            .is_some_and(|n| n.contains("not a Nitro")));
        let e = report(&t, "c4.large", true).expect_err("xen takes no prefixes");
        assert!(e.to_string().contains("c4.large"), "{e}");
        let e = report(&t, "bmn-sf1.metal", true).expect_err("vCPUs unknown");
        assert!(e.to_string().contains("vCPUs unknown"), "{e}");
        assert!(
            render(&report(&t, "bmn-sf1.metal", false).expect("known")).contains("vCPUs unknown")
        );
    }

    #[test]
    fn unknown_types_suggest_neighbours() {
        let e = report(&table(), "m5.larg", false).expect_err("unknown");
        let CapacityError::UnknownInstanceType { suggestions, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(suggestions.first().map(String::as_str), Some("m5.large"));
        assert!(e.to_string().contains("did you mean m5.large"), "{e}");
    }
}
