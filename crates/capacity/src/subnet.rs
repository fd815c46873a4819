//! The address space of an EC2 subnet, as EC2 hands it out.
//!
//! - 5 addresses of every subnet are reserved: the network address, .1
//!   (router), .2 (DNS), .3 (reserved) and the last (broadcast).
//! - Prefixes are aligned /28s, never the first or the last /28 of the
//!   subnet (they hold reserved addresses), and never a /28 that holds an
//!   address already in use.
//! - Single addresses (ENI primaries, secondary IPs) land anywhere EC2
//!   picks — at random, like the lab cloud. Each one outside the edge /28s
//!   spoils a /28 for prefixes: that is /28 fragmentation.

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::CapacityError;

/// Addresses EC2 reserves in every subnet.
pub const RESERVED: u64 = 5;

/// EC2 subnets are /16 to /28.
pub const MIN_PREFIX_LEN: u8 = 16;
pub const MAX_PREFIX_LEN: u8 = 28;

/// What a subnet holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SubnetSpace {
    pub cidr: Ipv4Net,
    /// 2^(32 − prefix length).
    pub addresses: u64,
    pub reserved: u64,
    /// `addresses − reserved`.
    pub usable: u64,
    /// Aligned /28s a prefix may take: all but the first and the last.
    pub prefix_blocks: u64,
    /// Free addresses in the first and last /28 (12 + 15), where single
    /// addresses spoil no prefix.
    pub edge_addresses: u64,
}

/// Subnet addresses a node group takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// Single addresses (ENI primaries and secondary IPs).
    pub singles: u64,
    /// /28 prefixes.
    pub prefixes: u64,
}

impl SubnetSpace {
    pub fn new(cidr: Ipv4Net) -> Result<SubnetSpace, CapacityError> {
        let len = cidr.prefix_len();
        if !(MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&len) {
            return Err(CapacityError::Invalid(format!(
                "subnet {cidr}: EC2 subnets are /{MIN_PREFIX_LEN} to /{MAX_PREFIX_LEN}"
            )));
        }
        if cidr.network() != cidr.addr() {
            return Err(CapacityError::Invalid(format!(
                "subnet {cidr}: host bits set (the subnet is {})",
                cidr.trunc()
            )));
        }
        let addresses = 1u64 << (32 - u32::from(len));
        let blocks = addresses / 16;
        let (prefix_blocks, edge_addresses) = if blocks >= 2 {
            // First /28: 16 − 4 reserved; last: 16 − 1 (broadcast).
            (blocks - 2, 12 + 15)
        } else {
            // A /28: one block, first and last at once.
            (0, addresses - RESERVED)
        };
        Ok(SubnetSpace {
            cidr,
            addresses,
            reserved: RESERVED,
            usable: addresses - RESERVED,
            prefix_blocks,
            edge_addresses,
        })
    }

    /// The demand fits however EC2 places the single addresses: each one
    /// may spoil its own /28 (the worst case, and near the typical one
    /// while single addresses are few against the /28s).
    pub fn fits_scattered(&self, d: Demand) -> bool {
        self.fits_packed(d) && d.prefixes + d.singles.min(self.prefix_blocks) <= self.prefix_blocks
    }

    /// The demand fits if the single addresses are packed: first into the
    /// edge /28s, then filling whole /28s (the best case).
    pub fn fits_packed(&self, d: Demand) -> bool {
        if d.prefixes == 0 {
            return d.singles <= self.usable;
        }
        let spoiled = d.singles.saturating_sub(self.edge_addresses).div_ceil(16);
        d.prefixes.saturating_add(spoiled) <= self.prefix_blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(s: &str) -> SubnetSpace {
        SubnetSpace::new(s.parse().expect("cidr")).expect("subnet")
    }

    #[test]
    fn sizes() {
        // /20: 4096 addresses, 4091 usable, 256 /28s of which 254 take
        // prefixes; 12 + 15 free addresses in the edge /28s.
        let s = space("10.0.0.0/20");
        assert_eq!(
            (s.addresses, s.usable, s.prefix_blocks, s.edge_addresses),
            (4096, 4091, 254, 27)
        );
        // /28: 16 - 5 = 11 usable, no prefix at all.
        let s = space("10.0.0.16/28");
        assert_eq!((s.usable, s.prefix_blocks, s.edge_addresses), (11, 0, 11));
        // /27: two /28s, both at an edge.
        assert_eq!(space("10.0.0.32/27").prefix_blocks, 0);
        // /26: 4 - 2 = 2.
        assert_eq!(space("10.0.0.64/26").prefix_blocks, 2);
        assert!(SubnetSpace::new("10.0.0.0/29".parse().expect("cidr")).is_err());
        assert!(SubnetSpace::new("10.0.0.0/15".parse().expect("cidr")).is_err());
        assert!(SubnetSpace::new("10.0.0.1/20".parse().expect("cidr")).is_err());
    }

    #[test]
    fn single_addresses_fill_the_usable_space() {
        let s = space("10.0.0.0/24");
        // 256 - 5 = 251.
        let d = |n| Demand {
            singles: n,
            prefixes: 0,
        };
        assert!(s.fits_packed(d(251)) && s.fits_scattered(d(251)));
        assert!(!s.fits_packed(d(252)) && !s.fits_scattered(d(252)));
    }

    #[test]
    fn prefixes_and_fragmentation() {
        // /24: 16 /28s, 14 for prefixes.
        let s = space("10.0.0.0/24");
        let d = |singles, prefixes| Demand { singles, prefixes };
        // No single address: all 14.
        assert!(s.fits_packed(d(0, 14)) && s.fits_scattered(d(0, 14)));
        assert!(!s.fits_packed(d(0, 15)));
        // 27 singles fit the edge /28s when packed: still 14 prefixes;
        // scattered, each may spoil a /28: 14 - 14 = 0 left.
        assert!(s.fits_packed(d(27, 14)));
        assert!(!s.fits_scattered(d(27, 1)));
        // 28 packed singles spill into one /28: 13 prefixes.
        assert!(s.fits_packed(d(28, 13)) && !s.fits_packed(d(28, 14)));
        // 4 scattered singles spoil 4 /28s: 10 prefixes.
        assert!(s.fits_scattered(d(4, 10)) && !s.fits_scattered(d(4, 11)));
    }
}
