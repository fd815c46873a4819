//! ENI and IPv4-per-ENI limits per instance type, from
//! `data/ec2-instance-network-limits.tsv` (built into the binary).

use std::collections::HashMap;

/// The table shipped with podwire.
pub const BUILTIN_TSV: &str = include_str!("../../../data/ec2-instance-network-limits.tsv");

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
}

#[derive(Debug, thiserror::Error)]
#[error("instance limits table line {line}: {msg}")]
pub struct LimitsParseError {
    pub line: usize,
    pub msg: String,
}

#[derive(Debug, Clone, Default)]
pub struct LimitsTable {
    by_type: HashMap<String, InstanceLimits>,
}

impl LimitsTable {
    pub fn builtin() -> Result<LimitsTable, LimitsParseError> {
        LimitsTable::parse(BUILTIN_TSV)
    }

    pub fn parse(tsv: &str) -> Result<LimitsTable, LimitsParseError> {
        let mut by_type = HashMap::new();
        let mut lines = tsv.lines().enumerate();
        let header: Vec<&str> = match lines.next() {
            Some((_, h)) => h.split('\t').collect(),
            None => {
                return Err(LimitsParseError {
                    line: 1,
                    msg: "empty table".into(),
                })
            }
        };
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or_else(|| LimitsParseError {
                    line: 1,
                    msg: format!("no column {name}"),
                })
        };
        let (ty, enis, ips, hv, bm, mp) = (
            col("instance_type")?,
            col("max_enis")?,
            col("ipv4_per_eni")?,
            col("hypervisor")?,
            col("is_bare_metal")?,
            col("max_pods")?,
        );
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let get = |c: usize| {
                f.get(c).copied().ok_or_else(|| LimitsParseError {
                    line: i + 1,
                    msg: "short row".into(),
                })
            };
            let num = |c: usize| -> Result<u32, LimitsParseError> {
                get(c)?.parse().map_err(|_| LimitsParseError {
                    line: i + 1,
                    msg: format!("column {c} is not a number"),
                })
            };
            let l = InstanceLimits {
                instance_type: get(ty)?.to_string(),
                max_enis: num(enis)?,
                ipv4_per_eni: num(ips)?,
                hypervisor: get(hv)?.to_string(),
                bare_metal: get(bm)? == "true",
                max_pods: num(mp)?,
            };
            by_type.insert(l.instance_type.clone(), l);
        }
        Ok(LimitsTable { by_type })
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
