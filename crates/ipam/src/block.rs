//! overlay mode: one address block (a /26 by default) of the pod CIDR, its
//! node affinity and who holds each of its addresses. A block is one
//! datastore value, so every change to it is one compare-and-swap.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::handle::Handle;

/// Who holds an address: the handle (a pod's attachment or a node's
/// tunnel), the node it is used on, and free-form attributes (pod namespace
/// and name, interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub handle: Handle,
    pub node: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
}

impl Holder {
    pub fn new(handle: Handle, node: &str) -> Holder {
        Holder {
            handle,
            node: node.to_string(),
            attrs: BTreeMap::new(),
        }
    }
}

/// A block as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub cidr: Ipv4Net,
    /// The node this block belongs to (None once released).
    pub affinity: Option<String>,
    /// Ordinal (offset in the block) → who holds it.
    pub allocations: BTreeMap<u32, Holder>,
    /// Unix seconds since the block has had no allocation, for release after
    /// a grace period.
    #[serde(default)]
    pub empty_since: Option<u64>,
    /// The IPAM schema this block is written in (absent: v1, before
    /// migration; see `schema`).
    #[serde(default)]
    pub schema: u32,
}

impl Block {
    pub fn new(cidr: Ipv4Net, node: &str) -> Block {
        Block {
            cidr,
            affinity: Some(node.to_string()),
            allocations: BTreeMap::new(),
            empty_since: None,
            schema: crate::schema::SCHEMA_VERSION,
        }
    }

    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.cidr.prefix_len()))
    }

    pub fn addr(&self, ordinal: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + ordinal)
    }

    pub fn ordinal(&self, ip: Ipv4Addr) -> Option<u32> {
        self.cidr
            .contains(&ip)
            .then(|| u32::from(ip) - u32::from(self.cidr.network()))
    }

    pub fn free(&self) -> u32 {
        let used = u32::try_from(self.allocations.len()).unwrap_or(u32::MAX);
        self.size().saturating_sub(used)
    }

    /// Takes the lowest free address for `holder`.
    pub fn assign(&mut self, holder: &Holder) -> Option<Ipv4Addr> {
        let ord = (0..self.size()).find(|o| !self.allocations.contains_key(o))?;
        self.allocations.insert(ord, holder.clone());
        self.empty_since = None;
        Some(self.addr(ord))
    }

    /// Frees every address `handle` holds; returns them.
    pub fn release(&mut self, handle: &Handle, now: u64) -> Vec<Ipv4Addr> {
        let ords: Vec<u32> = self
            .allocations
            .iter()
            .filter(|(_, h)| h.handle == *handle)
            .map(|(o, _)| *o)
            .collect();
        for o in &ords {
            self.allocations.remove(o);
        }
        if !ords.is_empty() && self.allocations.is_empty() {
            self.empty_since = Some(now);
        }
        ords.into_iter().map(|o| self.addr(o)).collect()
    }

    pub fn holds(&self, handle: &Handle) -> bool {
        self.allocations.values().any(|h| h.handle == *handle)
    }

    /// The address and holder record of `handle`, if this block has it.
    pub fn find(&self, handle: &Handle) -> Option<(Ipv4Addr, &Holder)> {
        self.allocations
            .iter()
            .find(|(_, h)| h.handle == *handle)
            .map(|(o, h)| (self.addr(*o), h))
    }
}

/// Whether a pool can be cut into blocks of `block_prefix` (the one rule,
/// for the agent's flags and the lab's): /16 to /30 (a block needs room for
/// the tunnel address and pods; a /16 is already 65,536 addresses), and no
/// larger than the pool.
pub fn check_block_size(pool: Ipv4Net, block_prefix: u8) -> Result<(), String> {
    if !(16..=30).contains(&block_prefix) || block_prefix < pool.prefix_len() {
        return Err(format!(
            "block size /{block_prefix} must be /16 to /30 and not larger than the pool {pool}"
        ));
    }
    Ok(())
}

/// The blocks a pool is cut into, in order.
pub fn blocks_of(pool: Ipv4Net, block_prefix: u8) -> impl Iterator<Item = Ipv4Net> {
    pool.subnets(block_prefix).into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(c: &str) -> Handle {
        Handle::attachment("pw", c, "eth0")
    }

    #[test]
    fn block_sizes() {
        let pool: Ipv4Net = "172.16.0.0/16".parse().expect("pool");
        assert!(check_block_size(pool, 26).is_ok());
        assert!(check_block_size(pool, 16).is_ok());
        assert!(check_block_size(pool, 31).is_err());
        assert!(check_block_size(pool, 15).is_err());
        let small: Ipv4Net = "172.16.0.0/27".parse().expect("pool");
        assert!(check_block_size(small, 26).is_err(), "larger than the pool");
        assert!(check_block_size(small, 28).is_ok());
    }

    #[test]
    fn assigns_lowest_first_and_tracks_emptiness() {
        let mut b = Block::new("172.16.30.0/26".parse().expect("cidr"), "node-1");
        assert_eq!(b.size(), 64);
        assert_eq!(
            b.assign(&Holder::new(Handle::tunnel("node-1"), "node-1")),
            Some("172.16.30.0".parse().expect("ip"))
        );
        for (c, ip) in [("c1", "172.16.30.1"), ("c2", "172.16.30.2")] {
            assert_eq!(
                b.assign(&Holder::new(pod(c), "node-1")),
                Some(ip.parse().expect("ip"))
            );
        }
        assert_eq!(
            b.release(&pod("c1"), 5),
            vec!["172.16.30.1".parse::<Ipv4Addr>().expect("ip")]
        );
        assert_eq!(
            b.assign(&Holder::new(pod("c3"), "node-1")),
            Some("172.16.30.1".parse().expect("ip"))
        );
        assert_eq!(b.free(), 61);
        for h in [Handle::tunnel("node-1"), pod("c2"), pod("c3")] {
            b.release(&h, 9);
        }
        assert_eq!(b.empty_since, Some(9));
        assert_eq!(
            blocks_of("172.16.0.0/16".parse().expect("pool"), 26).count(),
            1024
        );
    }
}
