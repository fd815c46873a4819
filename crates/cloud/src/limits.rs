//! ENI and IPv4-per-ENI limits per instance type, from
//! `data/ec2-instance-network-limits.tsv`, and default vCPUs per type, from
//! `data/ec2-instance-vcpus.tsv` (both built into the binary); the max-pods
//! figures of issue 9 §3 derive from them.

use std::collections::HashMap;

/// The table shipped with podwire.
pub const BUILTIN_TSV: &str = include_str!("../../../data/ec2-instance-network-limits.tsv");

/// Default vCPUs per instance type (columns `instance_type`, `vcpus`,
/// `source`; an empty `vcpus` means unknown).
pub const BUILTIN_VCPUS_TSV: &str = include_str!("../../../data/ec2-instance-vcpus.tsv");

/// Addresses in a /28 prefix.
pub const IPS_PER_PREFIX: u32 = 16;

/// Pods the max-pods formulas leave for host-network pods that need no
/// VPC address (the VPC CNI's "+2": aws-node and kube-proxy).
pub const HOST_NETWORK_PODS: u32 = 2;

/// The VPC CNI's ceiling on prefix-delegation max pods: 110 for types with
/// at most [`PREFIX_CAP_VCPU_THRESHOLD`] vCPUs, 250 above.
pub const PREFIX_CAP_LOW_CPU: u32 = 110;
pub const PREFIX_CAP_HIGH_CPU: u32 = 250;
pub const PREFIX_CAP_VCPU_THRESHOLD: u32 = 30;

/// Why a type has no prefix-delegation max-pods figure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPrefixFigure {
    /// EC2 assigns prefixes to Nitro instances only (hypervisor `nitro`, or
    /// bare metal, which runs on the Nitro System).
    NotNitro { hypervisor: String },
    /// The cap depends on vCPUs, and the data does not know them: podwire
    /// says so rather than guess.
    UnknownVcpus,
}

impl std::fmt::Display for NoPrefixFigure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoPrefixFigure::NotNitro { hypervisor } => write!(
                f,
                "not a Nitro instance type (hypervisor {hypervisor}): EC2 assigns no prefixes to it"
            ),
            NoPrefixFigure::UnknownVcpus => write!(
                f,
                "vCPUs unknown for this type: the 110/250 cap cannot be chosen"
            ),
        }
    }
}

/// Default vCPUs of a type and where the figure comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuInfo {
    /// `None`: unknown.
    pub vcpus: Option<u32>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLimits {
    pub instance_type: String,
    /// ENIs on the default network card (what pods can use).
    pub max_enis: u32,
    /// IPv4 addresses per ENI, the ENI's primary address included.
    pub ipv4_per_eni: u32,
    pub hypervisor: String,
    pub bare_metal: bool,
    /// The table's own max-pods figure (`max_enis * (ipv4_per_eni - 1) + 2`).
    pub max_pods: u32,
}

impl InstanceLimits {
    /// Addresses usable by pods: every ENI's secondary addresses. The table
    /// can be any text ([`LimitsTable::parse`]): absurd figures saturate at
    /// `u32::MAX` (more than any node can use) instead of wrapping.
    pub fn pod_ips(&self) -> u32 {
        self.max_enis
            .saturating_mul(self.ipv4_per_eni.saturating_sub(1))
    }

    /// Max pods with secondary IPs: `ENIs × (IPv4 per ENI − 1) + 2`
    /// (equal to the VPC CNI's eni-max-pods.txt for every type).
    pub fn max_pods_secondary_ips(&self) -> u32 {
        max_pods_secondary_ips(self.pod_ips())
    }

    /// EC2 assigns /28 prefixes to this type: Nitro hypervisor or bare
    /// metal (the VPC CNI's ipamd checks the same two).
    pub fn supports_prefixes(&self) -> bool {
        self.hypervisor == "nitro" || self.bare_metal
    }

    /// `/28` prefixes the type can hold: one per secondary address slot.
    pub fn prefix_slots(&self) -> u32 {
        self.pod_ips()
    }

    /// `ENIs × (IPv4 per ENI − 1) × 16 + 2`, before the vCPU cap.
    pub fn max_pods_prefix_uncapped(&self) -> u32 {
        max_pods_prefix_uncapped(self.prefix_slots())
    }

    /// Max pods with prefix delegation: the uncapped figure, capped at 110
    /// for ≤ 30 vCPUs and 250 above; an error where there is no figure.
    pub fn max_pods_prefix_delegation(&self, vcpus: Option<u32>) -> Result<u32, NoPrefixFigure> {
        if !self.supports_prefixes() {
            return Err(NoPrefixFigure::NotNitro {
                hypervisor: self.hypervisor.clone(),
            });
        }
        let vcpus = vcpus.ok_or(NoPrefixFigure::UnknownVcpus)?;
        Ok(self.max_pods_prefix_uncapped().min(prefix_cap(vcpus)))
    }
}

/// The VPC CNI's ceiling for a type with `vcpus` vCPUs.
pub fn prefix_cap(vcpus: u32) -> u32 {
    if vcpus > PREFIX_CAP_VCPU_THRESHOLD {
        PREFIX_CAP_HIGH_CPU
    } else {
        PREFIX_CAP_LOW_CPU
    }
}

// The max-pods formulas live here once: [`InstanceLimits`] (the table, for
// `podwirectl capacity` and the lab) and the agent (figures from
// DescribeInstanceTypes, for its capacity gauges) both call them with the
// node's address slots, `ENIs × (IPv4 per ENI − 1)`.

/// `slots + 2`: max pods with secondary IPs.
pub fn max_pods_secondary_ips(slots: u32) -> u32 {
    slots.saturating_add(HOST_NETWORK_PODS)
}

/// `slots × 16 + 2`: max pods with prefix delegation, before the vCPU cap.
pub fn max_pods_prefix_uncapped(slots: u32) -> u32 {
    slots
        .saturating_mul(IPS_PER_PREFIX)
        .saturating_add(HOST_NETWORK_PODS)
}

/// The figure a running node reports (the agent's capacity gauges): like
/// [`InstanceLimits::max_pods_prefix_delegation`], but where the vCPUs are
/// unknown the lower cap (110) applies, a figure the node can surely hold,
/// rather than no figure at all.
pub fn node_max_pods(slots: u32, prefix_delegation: bool, vcpus: Option<u32>) -> u32 {
    if !prefix_delegation {
        return max_pods_secondary_ips(slots);
    }
    let cap = vcpus.map_or(PREFIX_CAP_LOW_CPU, prefix_cap);
    max_pods_prefix_uncapped(slots).min(cap)
}

#[derive(Debug, thiserror::Error)]
#[error("instance limits table line {line}: {msg}")]
pub struct LimitsParseError {
    pub line: usize,
    pub msg: String,
}

/// A tab-separated table with a header row, as both shipped tables are:
/// columns by name, errors by line (`prefix` names the table in them).
struct Tsv<'a> {
    header: Vec<&'a str>,
    body: std::iter::Enumerate<std::str::Lines<'a>>,
    prefix: &'static str,
}

/// One non-empty row and its line number (1-based).
struct Row<'a> {
    fields: Vec<&'a str>,
    line: usize,
    prefix: &'static str,
}

impl<'a> Tsv<'a> {
    fn parse(tsv: &'a str, prefix: &'static str, empty: &str) -> Result<Tsv<'a>, LimitsParseError> {
        let mut body = tsv.lines().enumerate();
        let header = match body.next() {
            Some((_, h)) => h.split('\t').collect(),
            None => {
                return Err(LimitsParseError {
                    line: 1,
                    msg: empty.into(),
                })
            }
        };
        Ok(Tsv {
            header,
            body,
            prefix,
        })
    }

    fn col(&self, name: &str) -> Result<usize, LimitsParseError> {
        self.header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| LimitsParseError {
                line: 1,
                msg: format!("{}no column {name}", self.prefix),
            })
    }

    fn rows(self) -> impl Iterator<Item = Row<'a>> {
        let prefix = self.prefix;
        self.body
            .filter(|(_, l)| !l.trim().is_empty())
            .map(move |(i, l)| Row {
                fields: l.split('\t').collect(),
                line: i + 1,
                prefix,
            })
    }
}

impl<'a> Row<'a> {
    fn get(&self, c: usize) -> Result<&'a str, LimitsParseError> {
        self.fields
            .get(c)
            .copied()
            .ok_or_else(|| self.err("short row".into()))
    }

    fn err(&self, msg: String) -> LimitsParseError {
        LimitsParseError {
            line: self.line,
            msg: format!("{}{msg}", self.prefix),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LimitsTable {
    by_type: HashMap<String, InstanceLimits>,
    vcpus: HashMap<String, VcpuInfo>,
}

impl LimitsTable {
    /// Both shipped tables: network limits and vCPUs.
    pub fn builtin() -> Result<LimitsTable, LimitsParseError> {
        LimitsTable::parse(BUILTIN_TSV)?.with_vcpus(BUILTIN_VCPUS_TSV)
    }

    /// Adds a vCPU table (`instance_type`, `vcpus`, `source` columns; an
    /// empty `vcpus` is unknown). Rows for types the limits do not know are
    /// kept: look-ups go by name.
    pub fn with_vcpus(mut self, tsv: &str) -> Result<LimitsTable, LimitsParseError> {
        let t = Tsv::parse(tsv, "vCPU table: ", "empty vCPU table")?;
        let (ty, n, src) = (t.col("instance_type")?, t.col("vcpus")?, t.col("source")?);
        for row in t.rows() {
            let vcpus = match row.get(n)?.trim() {
                "" => None,
                v => Some(
                    v.parse::<u32>()
                        .map_err(|_| row.err(format!("{v:?} is not a number")))?,
                ),
            };
            self.vcpus.insert(
                row.get(ty)?.to_string(),
                VcpuInfo {
                    vcpus,
                    source: row.get(src)?.to_string(),
                },
            );
        }
        Ok(self)
    }

    /// The type's vCPUs; `None` when the table has no row for it.
    pub fn vcpus(&self, instance_type: &str) -> Option<&VcpuInfo> {
        self.vcpus.get(instance_type)
    }

    /// Max pods with prefix delegation for a known type (`None`: unknown
    /// type): see [`InstanceLimits::max_pods_prefix_delegation`].
    pub fn max_pods_prefix_delegation(
        &self,
        instance_type: &str,
    ) -> Option<Result<u32, NoPrefixFigure>> {
        let l = self.get(instance_type)?;
        let vcpus = self.vcpus(instance_type).and_then(|v| v.vcpus);
        Some(l.max_pods_prefix_delegation(vcpus))
    }

    pub fn parse(tsv: &str) -> Result<LimitsTable, LimitsParseError> {
        let t = Tsv::parse(tsv, "", "empty table")?;
        let (ty, enis, ips, hv, bm, mp) = (
            t.col("instance_type")?,
            t.col("max_enis")?,
            t.col("ipv4_per_eni")?,
            t.col("hypervisor")?,
            t.col("is_bare_metal")?,
            t.col("max_pods")?,
        );
        let mut by_type = HashMap::new();
        for row in t.rows() {
            let num = |c: usize| -> Result<u32, LimitsParseError> {
                row.get(c)?
                    .parse()
                    .map_err(|_| row.err(format!("column {c} is not a number")))
            };
            let l = InstanceLimits {
                instance_type: row.get(ty)?.to_string(),
                max_enis: num(enis)?,
                ipv4_per_eni: num(ips)?,
                hypervisor: row.get(hv)?.to_string(),
                bare_metal: row.get(bm)? == "true",
                max_pods: num(mp)?,
            };
            by_type.insert(l.instance_type.clone(), l);
        }
        Ok(LimitsTable {
            by_type,
            vcpus: HashMap::new(),
        })
    }

    pub fn get(&self, instance_type: &str) -> Option<&InstanceLimits> {
        self.by_type.get(instance_type)
    }

    pub fn len(&self) -> usize {
        self.by_type.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &InstanceLimits> {
        self.by_type.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_is_complete_and_consistent() {
        let t = LimitsTable::builtin().expect("parse");
        assert_eq!(t.len(), 1391);
        let m5 = t.get("m5.large").expect("m5.large");
        assert_eq!(
            (m5.max_enis, m5.ipv4_per_eni, m5.pod_ips(), m5.max_pods),
            (3, 10, 27, 29)
        );
        for l in t.iter() {
            assert_eq!(l.max_pods, l.pod_ips() + 2, "{}", l.instance_type);
        }
    }

    #[test]
    fn pod_ips_of_absurd_limits_saturate_instead_of_wrapping() {
        let l = InstanceLimits {
            instance_type: "x".into(),
            max_enis: 65_536,
            ipv4_per_eni: 65_538,
            hypervisor: String::new(),
            bare_metal: false,
            max_pods: 0,
        };
        assert_eq!(l.pod_ips(), u32::MAX);
    }

    /// The VPC CNI's published list, type → max pods.
    fn eni_max_pods_txt() -> HashMap<String, u32> {
        include_str!("../../../data/eni-max-pods.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let mut it = line.split_whitespace();
                let ty = it.next().expect("type").to_string();
                let pods = it.next().expect("pods").parse().expect("number");
                (ty, pods)
            })
            .collect()
    }

    #[test]
    fn secondary_ip_formula_equals_eni_max_pods_txt_for_every_type() {
        let t = LimitsTable::builtin().expect("parse");
        let published = eni_max_pods_txt();
        assert_eq!(published.len(), 1391);
        assert_eq!(t.len(), published.len());
        for l in t.iter() {
            // The formula from the ENI and address columns, not the
            // table's own max_pods column.
            assert_eq!(
                Some(&l.max_pods_secondary_ips()),
                published.get(&l.instance_type),
                "{}: {} ENIs x ({} - 1) + 2",
                l.instance_type,
                l.max_enis,
                l.ipv4_per_eni
            );
        }
    }

    #[test]
    fn prefix_delegation_figures_with_the_vcpu_cap() {
        let t = LimitsTable::builtin().expect("parse");
        let pd = |ty: &str| t.max_pods_prefix_delegation(ty).expect("known type");
        // m5.large: 3 x (10 - 1) x 16 + 2 = 434, 2 vCPUs -> capped at 110.
        assert_eq!(
            t.get("m5.large").map(|l| l.max_pods_prefix_uncapped()),
            Some(434)
        );
        assert_eq!(pd("m5.large"), Ok(110));
        // t3.nano: 2 x (2 - 1) x 16 + 2 = 34, under the cap.
        assert_eq!(pd("t3.nano"), Ok(34));
        // t3.small: 3 x 3 x 16 + 2 = 146 -> 110.
        assert_eq!(pd("t3.small"), Ok(110));
        // m5.24xlarge: 15 x 49 x 16 + 2 = 11762, 96 vCPUs -> 250.
        assert_eq!(pd("m5.24xlarge"), Ok(250));
        // Bare metal reports no hypervisor but runs on Nitro.
        assert_eq!(pd("m5.metal"), Ok(250));
        // Xen: no prefixes at all.
        assert_eq!(
            pd("c4.large"),
            Err(NoPrefixFigure::NotNitro {
                hypervisor: "xen".into()
            })
        );
        // cr1.8xlarge: hypervisor unknown, not bare metal.
        assert!(matches!(
            pd("cr1.8xlarge"),
            Err(NoPrefixFigure::NotNitro { .. })
        ));
        // Bare metal, but vCPUs unknown: no guess.
        assert_eq!(pd("bmn-sf1.metal"), Err(NoPrefixFigure::UnknownVcpus));
        assert_eq!(t.max_pods_prefix_delegation("m5.nonesuch"), None);
        // The threshold: 30 vCPUs is still "low".
        assert_eq!((prefix_cap(30), prefix_cap(31)), (110, 250));
    }

    #[test]
    fn every_type_has_a_vcpu_row_and_a_prefix_answer() {
        let t = LimitsTable::builtin().expect("parse");
        let mut unknown = Vec::new();
        for l in t.iter() {
            let v = t.vcpus(&l.instance_type).expect("vCPU row");
            match t.max_pods_prefix_delegation(&l.instance_type) {
                Some(Ok(n)) => {
                    let cap = prefix_cap(v.vcpus.expect("known vCPUs"));
                    assert_eq!(n, l.max_pods_prefix_uncapped().min(cap));
                    assert!(
                        n >= l.max_pods_secondary_ips().min(cap),
                        "{}",
                        l.instance_type
                    );
                }
                Some(Err(NoPrefixFigure::NotNitro { .. })) => assert!(!l.supports_prefixes()),
                Some(Err(NoPrefixFigure::UnknownVcpus)) => unknown.push(l.instance_type.clone()),
                None => panic!("{} vanished", l.instance_type),
            }
        }
        assert_eq!(unknown, ["bmn-sf1.metal"]);
    }

    /// Figures from data/eni-max-pods.txt (secondary IPs) and the VPC CNI's
    /// max-pods calculator (prefixes), as a node with `enis` ENIs of `ipv4`
    /// addresses reports them (moved from the agent's former copy of the
    /// formula, podwire-ipam's `capacity`).
    #[test]
    fn node_max_pods_follows_the_formula_and_the_caps() {
        let slots = |enis: u32, ipv4: u32| enis * (ipv4 - 1);
        // m5.large: 3 ENIs x 10, 2 vCPUs.
        assert_eq!(node_max_pods(slots(3, 10), false, Some(2)), 29);
        assert_eq!(node_max_pods(slots(3, 10), true, Some(2)), 110);
        // t3.small: 3 x 4.
        assert_eq!(node_max_pods(slots(3, 4), false, Some(2)), 11);
        assert_eq!(node_max_pods(slots(3, 4), true, Some(2)), 110);
        // t3.nano: 2 x 2: 2 slots x 16 + 2 = 34, under the cap.
        assert_eq!(node_max_pods(slots(2, 2), true, Some(2)), 34);
        // m5.24xlarge: 15 x 50, 96 vCPUs.
        assert_eq!(node_max_pods(slots(15, 50), false, Some(96)), 737);
        assert_eq!(node_max_pods(slots(15, 50), true, Some(96)), 250);
        // vCPUs unknown: the lower cap.
        assert_eq!(node_max_pods(slots(15, 50), true, None), 110);
        // Exactly 30 vCPUs is "at most 30".
        assert_eq!(node_max_pods(slots(8, 30), true, Some(30)), 110);
    }

    /// The node's figure and the table's agree for every type whose vCPUs
    /// are known (the agent and `podwirectl capacity` say the same).
    #[test]
    fn node_figures_equal_the_table_figures_for_every_type() {
        let t = LimitsTable::builtin().expect("parse");
        for l in t.iter() {
            let vcpus = t.vcpus(&l.instance_type).and_then(|v| v.vcpus);
            assert_eq!(
                node_max_pods(l.pod_ips(), false, vcpus),
                l.max_pods_secondary_ips(),
                "{}",
                l.instance_type
            );
            if let Ok(pd) = l.max_pods_prefix_delegation(vcpus) {
                assert_eq!(
                    node_max_pods(l.pod_ips(), true, vcpus),
                    pd,
                    "{}",
                    l.instance_type
                );
            }
        }
    }

    #[test]
    fn limits_table_rejects_garbage_naming_the_line() {
        assert_eq!(
            LimitsTable::parse("").expect_err("empty").msg,
            "empty table"
        );
        let e = LimitsTable::parse("instance_type\tmax_enis\n").expect_err("columns");
        assert_eq!((e.line, e.msg.as_str()), (1, "no column ipv4_per_eni"));
        let head = "instance_type\tmax_enis\tipv4_per_eni\thypervisor\tis_bare_metal\tmax_pods\n";
        let e = LimitsTable::parse(&format!("{head}\nm5.large\t3\tten\tnitro\tfalse\t29\n"))
            .expect_err("not a number");
        assert_eq!((e.line, e.msg.as_str()), (3, "column 2 is not a number"));
        let e = LimitsTable::parse(&format!("{head}m5.large\t3\n")).expect_err("short");
        assert_eq!((e.line, e.msg.as_str()), (2, "short row"));
        let t = LimitsTable::parse(&format!("{head}m5.large\t3\t10\tnitro\tfalse\t29\n"))
            .expect("one row");
        assert_eq!(t.get("m5.large").map(|l| l.pod_ips()), Some(27));
    }

    #[test]
    fn vcpu_table_rejects_garbage() {
        let base = LimitsTable::parse(BUILTIN_TSV).expect("parse");
        assert!(base.clone().with_vcpus("").is_err());
        assert!(base.clone().with_vcpus("instance_type\tvcpus\n").is_err());
        let e = base
            .clone()
            .with_vcpus("instance_type\tvcpus\tsource\nm5.large\t-2\tx\n")
            .expect_err("negative");
        assert_eq!(e.line, 2);
        let ok = base
            .with_vcpus("instance_type\tvcpus\tsource\nm5.large\t\tunknown\n")
            .expect("empty is unknown");
        assert_eq!(ok.vcpus("m5.large").and_then(|v| v.vcpus), None);
    }

    #[test]
    fn agrees_with_eni_max_pods_txt() {
        let t = LimitsTable::builtin().expect("parse");
        let txt = include_str!("../../../data/eni-max-pods.txt");
        let mut n = 0;
        for line in txt
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let mut it = line.split_whitespace();
            let (Some(ty), Some(pods)) = (it.next(), it.next()) else {
                continue;
            };
            let pods: u32 = pods.parse().expect("number");
            assert_eq!(t.get(ty).map(|l| l.max_pods), Some(pods), "{ty}");
            n += 1;
        }
        assert_eq!(n, 1391);
    }
}
