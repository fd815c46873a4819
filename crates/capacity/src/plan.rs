//! `podwirectl capacity --subnet CIDR --instance-type T --nodes N …`: a
//! node group in one subnet. Pods are spread evenly over the nodes (as a
//! scheduler spreads them); each node holds what the warm targets make it
//! hold ([`crate::warm`]); the subnet is filled as EC2 fills it
//! ([`crate::subnet`]).

use ipnet::Ipv4Net;
use podwire_cloud::limits::{InstanceLimits, LimitsTable};
use serde::Serialize;

use crate::instance;
use crate::subnet::{Demand, SubnetSpace};
use crate::warm::{node_use, NodeUse, WarmFlags, WarmTargets};
use crate::CapacityError;

/// Node groups larger than this are refused (no EC2 subnet holds more
/// nodes: a /16 has 65 531 usable addresses).
pub const MAX_NODES: u32 = 65_536;

/// A question about a node group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanInput<'a> {
    pub subnet: Ipv4Net,
    pub instance_type: &'a str,
    pub nodes: u32,
    pub prefix_delegation: bool,
    pub warm: WarmFlags,
}

/// What binds first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// Every node is full: the instance type's limit binds, not the subnet.
    InstanceLimit,
    /// The subnet has no address (or /28) left, however it is laid out.
    SubnetSize,
    /// Enough addresses, but not enough free aligned /28s: single
    /// addresses scattered over the subnet spoil them.
    PrefixFragmentation,
}

/// Per node: limits and the two ends of its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFigures {
    pub max_pods: u32,
    pub max_pods_prefix_delegation: Option<u32>,
    /// The kubelet `--max-pods` for the chosen mode.
    pub kubelet_max_pods: u32,
    /// Pods with a VPC address a node can hold.
    pub pod_addresses: u32,
    pub enis_allowed: u32,
    /// With no pod: what the warm pool alone holds.
    pub idle: Held,
    /// With `pod_addresses` pods.
    pub full: Held,
}

/// What one node (or the group) holds at some pod count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Held {
    pub pods: u64,
    pub enis: u64,
    pub prefixes: u64,
    /// Pool addresses no pod holds (warm).
    pub warm_addresses: u64,
    /// Subnet addresses taken: ENI primaries + secondary IPs + 16 per prefix.
    pub subnet_addresses: u64,
}

impl Held {
    fn of(u: &NodeUse) -> Held {
        Held {
            pods: u64::from(u.pods),
            enis: u64::from(u.enis),
            prefixes: u64::from(u.prefixes),
            warm_addresses: u64::from(u.warm_addresses),
            subnet_addresses: u.subnet_addresses(),
        }
    }

    fn times(self, n: u64) -> Held {
        Held {
            pods: self.pods * n,
            enis: self.enis * n,
            prefixes: self.prefixes * n,
            warm_addresses: self.warm_addresses * n,
            subnet_addresses: self.subnet_addresses * n,
        }
    }

    fn plus(self, o: Held) -> Held {
        Held {
            pods: self.pods + o.pods,
            enis: self.enis + o.enis,
            prefixes: self.prefixes + o.prefixes,
            warm_addresses: self.warm_addresses + o.warm_addresses,
            subnet_addresses: self.subnet_addresses + o.subnet_addresses,
        }
    }
}

/// The group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupFigures {
    pub nodes: u32,
    /// Every node full (`nodes × pod_addresses`): the instance limit.
    pub pods_max: u64,
    /// The group with no pod: the warm pools alone.
    pub idle: Held,
    /// Whether the idle group fits the subnet at all.
    pub idle_fits: bool,
    /// Pods that fit however EC2 scatters single addresses (guaranteed).
    pub pods_fit: u64,
    /// Pods that fit if single addresses pack (the best case; equal to
    /// `pods_fit` without prefix delegation).
    pub pods_fit_if_packed: u64,
    /// The pod whose address the subnet cannot give (`pods_fit + 1`), null
    /// when the instance limit binds first.
    pub pods_at_exhaustion: Option<u64>,
    /// The group at `pods_fit`.
    pub at_fit: Held,
    /// Full nodes the subnet holds (guaranteed); one more node and it runs out.
    pub full_nodes_fit: u64,
    /// Idle nodes (no pod) the subnet holds.
    pub idle_nodes_fit: u64,
    pub limited_by: Constraint,
}

/// The whole answer (every field in docs/CAPACITY.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanReport {
    pub instance_type: String,
    pub prefix_delegation: bool,
    pub warm: WarmTargets,
    pub subnet: SubnetSpace,
    pub node: NodeFigures,
    pub group: GroupFigures,
}

/// The group with `q` pods spread evenly over `n` nodes: `q mod n` nodes
/// hold one pod more than the others.
fn spread(l: &InstanceLimits, t: WarmTargets, pd: bool, n: u64, q: u64) -> Held {
    if n == 0 {
        return Held::of(&node_use(l, t, pd, 0)).times(0);
    }
    let (p, r) = (q / n, q % n);
    let at = |pods: u64| Held::of(&node_use(l, t, pd, u32::try_from(pods).unwrap_or(u32::MAX)));
    at(p).times(n - r).plus(at(p + 1).times(r))
}

fn demand(h: &Held) -> Demand {
    Demand {
        prefixes: h.prefixes,
        singles: h.subnet_addresses - h.prefixes * 16,
    }
}

/// The largest `x` in `0..=hi` with `ok(x)`, for `ok` true up to some
/// point and false after; `None` when `ok(0)` is false.
fn last_true(hi: u64, ok: impl Fn(u64) -> bool) -> Option<u64> {
    if !ok(0) {
        return None;
    }
    let (mut lo, mut hi) = (0u64, hi);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

pub fn plan(table: &LimitsTable, q: &PlanInput<'_>) -> Result<PlanReport, CapacityError> {
    if q.nodes == 0 || q.nodes > MAX_NODES {
        return Err(CapacityError::Invalid(format!(
            "--nodes {}: want 1 to {MAX_NODES}",
            q.nodes
        )));
    }
    let inst = instance::report(table, q.instance_type, q.prefix_delegation)?;
    let l = instance::lookup(table, q.instance_type)?;
    let t = q.warm.resolve(q.prefix_delegation)?;
    let space = SubnetSpace::new(q.subnet)?;
    let pd = q.prefix_delegation;
    let per_node_max = inst.pod_addresses;
    let idle = Held::of(&node_use(l, t, pd, 0));
    let full = Held::of(&node_use(l, t, pd, per_node_max));
    let n = u64::from(q.nodes);
    let pods_max = n * u64::from(per_node_max);
    let group = |pods: u64| spread(l, t, pd, n, pods);
    let scattered = |pods: u64| space.fits_scattered(demand(&group(pods)));
    let packed = |pods: u64| space.fits_packed(demand(&group(pods)));
    let pods_fit = last_true(pods_max, scattered);
    let pods_fit_if_packed = last_true(pods_max, packed);
    let fit = pods_fit.unwrap_or(0);
    let limited_by = if pods_fit == Some(pods_max) {
        Constraint::InstanceLimit
    } else if pods_fit_if_packed > pods_fit {
        Constraint::PrefixFragmentation
    } else {
        Constraint::SubnetSize
    };
    // Nodes the subnet holds, all full or all idle (bounded by the subnet:
    // every node takes at least its primary address).
    let nodes_fit = |h: Held| {
        last_true(space.usable, |k| space.fits_scattered(demand(&h.times(k)))).unwrap_or(0)
    };
    Ok(PlanReport {
        instance_type: inst.instance_type.clone(),
        prefix_delegation: pd,
        warm: t,
        subnet: space,
        node: NodeFigures {
            max_pods: inst.max_pods,
            max_pods_prefix_delegation: inst.max_pods_prefix_delegation,
            kubelet_max_pods: inst.kubelet_max_pods,
            pod_addresses: per_node_max,
            enis_allowed: l.max_enis,
            idle,
            full,
        },
        group: GroupFigures {
            nodes: q.nodes,
            pods_max,
            idle: idle.times(n),
            idle_fits: pods_fit.is_some(),
            pods_fit: fit,
            pods_fit_if_packed: pods_fit_if_packed.unwrap_or(0),
            pods_at_exhaustion: (limited_by != Constraint::InstanceLimit).then_some(fit + 1),
            at_fit: group(fit),
            full_nodes_fit: nodes_fit(full),
            idle_nodes_fit: nodes_fit(idle),
            limited_by,
        },
    })
}

/// `n word` or `n words`: "1 node", "2 nodes", "1 prefix", "3 prefixes".
fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

impl PlanReport {
    /// Whether the group can start at all: false when the idle nodes' warm
    /// pools alone overflow the subnet (`podwirectl capacity` then exits 1;
    /// a subnet that merely limits the pods is a figure, exit 0).
    pub fn fits(&self) -> bool {
        self.group.idle_fits
    }
}

/// The human form.
pub fn render(r: &PlanReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let g = &r.group;
    let nd = &r.node;
    let _ = writeln!(
        o,
        "{} of {} in {} ({} usable addresses{}), {}, warm pool {}",
        count(g.nodes, "node", "nodes"),
        r.instance_type,
        r.subnet.cidr,
        r.subnet.usable,
        if r.prefix_delegation {
            format!(", {} /28s for prefixes", r.subnet.prefix_blocks)
        } else {
            String::new()
        },
        if r.prefix_delegation {
            "prefix delegation"
        } else {
            "secondary IPs"
        },
        warm_text(&r.warm)
    );
    let _ = writeln!(
        o,
        "per node: kubelet --max-pods={}, up to {} with an address, {} allowed",
        nd.kubelet_max_pods,
        count(nd.pod_addresses, "pod", "pods"),
        count(nd.enis_allowed, "ENI", "ENIs")
    );
    let held = |h: &Held| {
        format!(
            "{}, {}{}, {}, {}",
            count(h.pods, "pod", "pods"),
            count(h.enis, "ENI", "ENIs"),
            if r.prefix_delegation {
                format!(", {}", count(h.prefixes, "prefix", "prefixes"))
            } else {
                String::new()
            },
            count(h.warm_addresses, "warm address", "warm addresses"),
            count(h.subnet_addresses, "subnet address", "subnet addresses")
        )
    };
    let _ = writeln!(o, "  idle node: {}", held(&nd.idle));
    let _ = writeln!(o, "  full node: {}", held(&nd.full));
    let _ = writeln!(
        o,
        "group idle: {}{}",
        held(&g.idle),
        if g.idle_fits {
            ""
        } else {
            "  — DOES NOT FIT the subnet"
        }
    );
    let _ = writeln!(o, "pods that fit: {} of {} ({})", g.pods_fit, g.pods_max, match g.limited_by {
        Constraint::InstanceLimit => "every node full: the instance limit binds, not the subnet".to_string(),
        // The idle group already overflows: nodes cannot even take their warm pools.
        Constraint::SubnetSize if !g.idle_fits => if g.nodes == 1 {
            "the subnet runs out before the first pod: the idle node's warm pool does not fit".to_string()
        } else {
            "the subnet runs out before the first pod: the idle nodes' warm pools do not fit".to_string()
        },
        Constraint::SubnetSize => format!("the subnet runs out at pod {}", g.pods_fit + 1),
        Constraint::PrefixFragmentation => format!(
            "the subnet runs out of free /28s at pod {} if single addresses scatter; {} if they pack",
            g.pods_fit + 1,
            g.pods_fit_if_packed
        ),
    });
    let _ = writeln!(o, "  at that point: {}", held(&g.at_fit));
    let _ = writeln!(
        o,
        "the subnet holds {} (runs out at node {}) or {} idle",
        count(g.full_nodes_fit, "full node", "full nodes"),
        g.full_nodes_fit + 1,
        g.idle_nodes_fit
    );
    o
}

fn warm_text(t: &WarmTargets) -> String {
    match t {
        WarmTargets::WarmEni { warm_eni_target } => format!("WARM_ENI_TARGET={warm_eni_target}"),
        WarmTargets::WarmIp {
            warm_ip_target,
            minimum_ip_target,
        } => {
            format!("WARM_IP_TARGET={warm_ip_target} MINIMUM_IP_TARGET={minimum_ip_target}")
        }
        WarmTargets::WarmPrefix { warm_prefix_target } => {
            format!("WARM_PREFIX_TARGET={warm_prefix_target}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(subnet: &str, ty: &str, nodes: u32, pd: bool, warm: WarmFlags) -> PlanReport {
        let t = LimitsTable::builtin().expect("builtin");
        plan(
            &t,
            &PlanInput {
                subnet: subnet.parse().expect("cidr"),
                instance_type: ty,
                nodes,
                prefix_delegation: pd,
                warm,
            },
        )
        .expect("plan")
    }

    /// docs/CAPACITY.md example 2a: a /20, 40 m5.large, secondary IPs,
    /// WARM_ENI_TARGET=1.
    #[test]
    fn m5_large_x40_in_a_slash_20_with_warm_eni_target() {
        let r = run("10.0.0.0/20", "m5.large", 40, false, WarmFlags::default());
        // 4096 - 5 reserved = 4091 usable.
        assert_eq!(r.subnet.usable, 4091);
        // Per node, 3 ENIs x 9 secondary IPs = 27 pods with an address.
        assert_eq!(r.node.pod_addresses, 27);
        // Idle node: ceil((0 + 1 x 9) / 9) = 1 ENI, its 9 secondary IPs
        // all warm; 1 primary + 9 = 10 subnet addresses.
        assert_eq!(
            (
                r.node.idle.enis,
                r.node.idle.warm_addresses,
                r.node.idle.subnet_addresses
            ),
            (1, 9, 10)
        );
        // Full node (27 pods): ceil((27 + 9) / 9) = 4 -> capped at 3 ENIs,
        // 27 secondary IPs, 0 warm; 3 + 27 = 30 subnet addresses.
        assert_eq!(
            (
                r.node.full.enis,
                r.node.full.warm_addresses,
                r.node.full.subnet_addresses
            ),
            (3, 0, 30)
        );
        // Group idle: 40 x 9 = 360 warm, 40 x 10 = 400 subnet addresses.
        assert_eq!(
            (r.group.idle.warm_addresses, r.group.idle.subnet_addresses),
            (360, 400)
        );
        // Group full: 40 x 27 = 1080 pods on 40 x 30 = 1200 addresses,
        // which fit 4091: the instance limit binds.
        assert_eq!((r.group.pods_max, r.group.pods_fit), (1080, 1080));
        assert_eq!(r.group.limited_by, Constraint::InstanceLimit);
        assert_eq!(r.group.pods_at_exhaustion, None);
        assert_eq!(r.group.at_fit.subnet_addresses, 1200);
        // Full nodes: floor(4091 / 30) = 136 (137 x 30 = 4110 > 4091);
        // idle: floor(4091 / 10) = 409.
        assert_eq!((r.group.full_nodes_fit, r.group.idle_nodes_fit), (136, 409));
    }

    /// WARM_IP_TARGET=2, MINIMUM_IP_TARGET=4 on the same group: an idle
    /// node holds max(0 + 2, 4) = 4 secondary IPs on 1 ENI (5 subnet
    /// addresses): 40 x 4 = 160 warm instead of 360.
    #[test]
    fn warm_ip_target_holds_less_idle() {
        let w = WarmFlags {
            warm_ip_target: Some(2),
            minimum_ip_target: Some(4),
            ..WarmFlags::default()
        };
        let r = run("10.0.0.0/20", "m5.large", 40, false, w);
        assert_eq!(
            (r.group.idle.warm_addresses, r.group.idle.subnet_addresses),
            (160, 200)
        );
        // Full: min(27 + 2, 27) = 27 IPs on 3 ENIs: 30 addresses, as above.
        assert_eq!(r.node.full.subnet_addresses, 30);
        // floor(4091 / 5) = 818 idle nodes.
        assert_eq!(r.group.idle_nodes_fit, 818);
    }

    /// docs/CAPACITY.md example 2b: the same group with prefix delegation,
    /// WARM_PREFIX_TARGET=1. 254 /28s take prefixes (256 - first - last).
    #[test]
    fn m5_large_x40_in_a_slash_20_with_prefixes_runs_out_of_slash_28s() {
        let r = run("10.0.0.0/20", "m5.large", 40, true, WarmFlags::default());
        assert_eq!(r.subnet.prefix_blocks, 254);
        // kubelet 110 -> 108 pods with an address per node; 4320 in all.
        assert_eq!(
            (
                r.node.kubelet_max_pods,
                r.node.pod_addresses,
                r.group.pods_max
            ),
            (110, 108, 4320)
        );
        // Idle node: 0 + 1 prefix on 1 ENI: 16 warm, 1 + 16 = 17 addresses.
        assert_eq!(
            (
                r.node.idle.prefixes,
                r.node.idle.warm_addresses,
                r.node.idle.subnet_addresses
            ),
            (1, 16, 17)
        );
        // Full node: ceil(108 / 16) + 1 = 8 prefixes, still 1 ENI (9
        // slots): 128 - 108 = 20 warm, 1 + 128 = 129 addresses.
        assert_eq!(
            (
                r.node.full.prefixes,
                r.node.full.enis,
                r.node.full.warm_addresses,
                r.node.full.subnet_addresses
            ),
            (8, 1, 20, 129)
        );
        // Guaranteed: the 40 ENI primaries may spoil 40 /28s, leaving 214
        // for prefixes. 40 nodes x (ceil(64/16) + 1 = 5) = 200 prefixes at
        // 64 pods each; each node at 65 pods takes a 6th: 200 + 14 = 214
        // with 14 nodes at 65: 40 x 64 + 14 = 2574 pods; pod 2575 fails.
        assert_eq!(r.group.pods_fit, 2574);
        assert_eq!(r.group.pods_at_exhaustion, Some(2575));
        // Packed: 27 primaries sit in the edge /28s, 13 spoil one more:
        // 253 prefixes. 40 x 6 = 240 at 80 pods; 13 nodes at 81 take a
        // 7th: 253 -> 40 x 80 + 13 = 3213.
        assert_eq!(r.group.pods_fit_if_packed, 3213);
        assert_eq!(r.group.limited_by, Constraint::PrefixFragmentation);
        // At 2574 pods: 214 prefixes, 40 ENIs; warm = 26 nodes x (80 - 64)
        // + 14 x (96 - 65) = 416 + 434 = 850; addresses 40 + 214 x 16.
        assert_eq!(
            (
                r.group.at_fit.prefixes,
                r.group.at_fit.enis,
                r.group.at_fit.warm_addresses,
                r.group.at_fit.subnet_addresses
            ),
            (214, 40, 850, 3464)
        );
        // Full nodes: 8 prefixes + 1 possibly spoiled /28 each: 9 x 28 =
        // 252 <= 254 < 9 x 29. Idle: 2 x 127 = 254.
        assert_eq!((r.group.full_nodes_fit, r.group.idle_nodes_fit), (28, 127));
    }

    /// A /24 with 10 m5.large, WARM_ENI_TARGET=1: a node takes 10 subnet
    /// addresses per ENI (9 secondary + primary): 10 idle, 20 with 1..9
    /// pods, 30 from 10 pods on. 251 usable: 5 x 30 + 5 x 20 = 250 fits at
    /// 5 nodes x 10 + 5 x 9 = 95 pods; pod 96 puts a 6th node on its 3rd
    /// ENI: 6 x 30 + 4 x 20 = 260 > 251.
    #[test]
    fn a_small_subnet_binds_before_the_instances() {
        let r = run("10.0.0.0/24", "m5.large", 10, false, WarmFlags::default());
        assert_eq!(r.subnet.usable, 251);
        assert_eq!((r.group.pods_fit, r.group.pods_fit_if_packed), (95, 95));
        assert_eq!(r.group.pods_at_exhaustion, Some(96));
        assert_eq!(r.group.limited_by, Constraint::SubnetSize);
        assert_eq!(r.group.at_fit.subnet_addresses, 250);
        // floor(251 / 30) = 8 full nodes, floor(251 / 10) = 25 idle.
        assert_eq!((r.group.full_nodes_fit, r.group.idle_nodes_fit), (8, 25));
        assert!(render(&r).contains("runs out at pod 96"));
    }

    /// A group whose warm pools alone overflow the subnet: 30 idle nodes x
    /// 10 addresses = 300 > 251.
    #[test]
    fn idle_nodes_that_do_not_fit() {
        let r = run("10.0.0.0/24", "m5.large", 30, false, WarmFlags::default());
        assert!(!r.group.idle_fits);
        assert_eq!(r.group.pods_fit, 0);
        assert_eq!(r.group.limited_by, Constraint::SubnetSize);
        assert!(render(&r).contains("DOES NOT FIT"));
        assert!(!r.fits());
        assert!(render(&r).contains("idle nodes' warm pools do not fit"));
    }

    /// Newuser F10: one node in a /28 with prefixes read "1 nodes", "1
    /// ENIs", "1 prefixes" and "runs out at pod 1", though the node's warm
    /// prefix does not fit before any pod.
    #[test]
    fn one_idle_node_that_does_not_fit_is_worded_right() {
        let r = run("10.0.0.0/28", "m5.large", 1, true, WarmFlags::default());
        assert!(!r.fits());
        let text = render(&r);
        for bad in ["1 nodes", "1 ENIs", "1 prefixes", "runs out at pod 1"] {
            assert!(!text.contains(bad), "{bad:?} in {text}");
        }
        for good in [
            "1 node of m5.large",
            "1 ENI, 1 prefix,",
            "pods that fit: 0 of 108 (the subnet runs out before the first pod: the idle node's warm pool does not fit)",
        ] {
            assert!(text.contains(good), "{good:?} not in {text}");
        }
        assert!(run("10.0.0.0/20", "m5.large", 40, true, WarmFlags::default()).fits());
    }

    #[test]
    fn bad_questions_are_refused_clearly() {
        let t = LimitsTable::builtin().expect("builtin");
        let q = |subnet: &str, ty: &'static str, nodes: u32, pd: bool| {
            plan(
                &t,
                &PlanInput {
                    subnet: subnet.parse().expect("cidr"),
                    instance_type: ty,
                    nodes,
                    prefix_delegation: pd,
                    warm: WarmFlags::default(),
                },
            )
        };
        assert!(matches!(
            q("10.0.0.0/20", "m5.larg", 4, false),
            Err(CapacityError::UnknownInstanceType { .. })
        ));
        assert!(q("10.0.0.0/20", "m5.large", 0, false).is_err());
        assert!(q("10.0.0.0/20", "m5.large", MAX_NODES + 1, false).is_err());
        assert!(q("10.0.0.0/30", "m5.large", 4, false).is_err());
        assert!(
            q("10.0.0.0/20", "c4.large", 4, true).is_err(),
            "xen with prefixes"
        );
    }

    #[test]
    fn json_has_the_documented_fields() {
        let r = run("10.0.0.0/20", "m5.large", 40, false, WarmFlags::default());
        let v = serde_json::to_value(&r).expect("json");
        for k in [
            "instance_type",
            "prefix_delegation",
            "warm",
            "subnet",
            "node",
            "group",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["warm"]["mode"], "warm_eni");
        assert_eq!(v["subnet"]["cidr"], "10.0.0.0/20");
        assert_eq!(v["group"]["limited_by"], "instance_limit");
        assert!(v["group"]["pods_at_exhaustion"].is_null());
    }
}
