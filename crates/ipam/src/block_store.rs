//! Block IPAM over a [`Datastore`]: nodes claim blocks of the pool by
//! compare-and-swap (two nodes can never claim the same one), hand out
//! addresses from their own blocks, borrow single addresses from other nodes'
//! blocks when the pool has no free block (unless strict affinity), and
//! give empty blocks back after a grace period.
//!
//! Each allocation is recorded in its block under a handle
//! (`<network>.<container id>`), so DEL and GC release exactly what was taken.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use podwire_store::{Datastore, Entry, Expect, StoreError};
use serde::{Deserialize, Serialize};

use crate::block::{blocks_of, Block, Holder};

pub const PREFIX: &str = "/podwire/ipam/";
pub const BLOCKS: &str = "/podwire/ipam/blocks/";
const CONFIG: &str = "/podwire/ipam/config";
/// Compare-and-swap rounds before giving up (contention is short-lived).
const MAX_ROUNDS: usize = 200;

/// The pool's settings, stored once; every agent must agree with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub pool: Ipv4Net,
    pub block_prefix: u8,
    /// Never hand out addresses from another node's block.
    pub strict_affinity: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("pool {pool} is exhausted: {detail}")]
    Exhausted { pool: Ipv4Net, detail: String },
    #[error("datastore holds pool {stored:?}, this agent is configured with {ours:?}")]
    ConfigMismatch {
        stored: Box<PoolConfig>,
        ours: Box<PoolConfig>,
    },
    #[error("corrupt IPAM record {key}: {msg}")]
    Corrupt { key: String, msg: String },
    #[error("too much contention on the datastore (gave up after {MAX_ROUNDS} rounds)")]
    Contention,
}

pub type Result<T, E = IpamError> = std::result::Result<T, E>;

/// An address handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub ip: Ipv4Addr,
    pub block: Ipv4Net,
    /// The block belongs to another node (the address must be routed as a
    /// /32 by this node).
    pub borrowed: bool,
}

pub fn block_key(cidr: Ipv4Net) -> String {
    format!("{BLOCKS}{}-{}", cidr.network(), cidr.prefix_len())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn decode(e: &Entry) -> Result<Block> {
    serde_json::from_slice(&e.value).map_err(|err| IpamError::Corrupt {
        key: e.key.clone(),
        msg: err.to_string(),
    })
}

fn encode(b: &Block) -> Vec<u8> {
    serde_json::to_vec(b).unwrap_or_default()
}

/// A small stable hash, to spread nodes' first block claims over the pool.
fn spread(node: &str) -> usize {
    node.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    }) as usize
}

#[derive(Debug, Clone)]
pub struct BlockIpam {
    store: Arc<dyn Datastore>,
    config: PoolConfig,
}

impl BlockIpam {
    /// Opens the pool, writing its configuration if this is the first agent.
    pub fn open(store: Arc<dyn Datastore>, config: PoolConfig) -> Result<BlockIpam> {
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        match store.put(CONFIG, &bytes, Expect::Absent) {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                let e = store.get(CONFIG)?.ok_or_else(|| IpamError::Corrupt {
                    key: CONFIG.into(),
                    msg: "vanished".into(),
                })?;
                let stored: PoolConfig =
                    serde_json::from_slice(&e.value).map_err(|err| IpamError::Corrupt {
                        key: CONFIG.into(),
                        msg: err.to_string(),
                    })?;
                if stored != config {
                    return Err(IpamError::ConfigMismatch {
                        stored: Box::new(stored),
                        ours: Box::new(config),
                    });
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(BlockIpam { store, config })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Every block with its record and revision.
    pub fn blocks(&self) -> Result<Vec<(Block, i64)>> {
        self.store
            .list(BLOCKS)?
            .entries
            .iter()
            .map(|e| Ok((decode(e)?, e.mod_revision)))
            .collect()
    }

    /// Writes a changed block if nobody changed it meanwhile.
    fn update(&self, b: &Block, rev: i64) -> Result<bool> {
        match self
            .store
            .put(&block_key(b.cidr), &encode(b), Expect::Revision(rev))
        {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Hands `handle` an address on `node`.
    pub fn allocate(&self, node: &str, handle: &str) -> Result<Assigned> {
        self.allocate_for(&Holder::new(handle, node))
    }

    /// The address `handle` holds, with its block and record.
    pub fn find(&self, handle: &str) -> Result<Option<(Ipv4Addr, Block)>> {
        Ok(self
            .blocks()?
            .into_iter()
            .find_map(|(b, _)| b.find(handle).map(|(ip, _)| (ip, b.clone()))))
    }

    /// Hands `holder` an address on `holder.node`.
    pub fn allocate_for(&self, holder: &Holder) -> Result<Assigned> {
        let node = holder.node.as_str();
        let handle = holder;
        for _ in 0..MAX_ROUNDS {
            let blocks = self.blocks()?;
            // 1. A free address in one of our own blocks.
            if let Some((mut b, rev)) = blocks
                .iter()
                .find(|(b, _)| b.affinity.as_deref() == Some(node) && b.free() > 0)
                .cloned()
            {
                if let Some(ip) = b.assign(handle) {
                    if self.update(&b, rev)? {
                        return Ok(Assigned {
                            ip,
                            block: b.cidr,
                            borrowed: false,
                        });
                    }
                }
                continue;
            }
            // 2. Claim an unclaimed block.
            let all: Vec<Ipv4Net> = blocks_of(self.config.pool, self.config.block_prefix).collect();
            let taken: std::collections::BTreeSet<Ipv4Net> =
                blocks.iter().map(|(b, _)| b.cidr).collect();
            let start = if all.is_empty() {
                0
            } else {
                spread(node) % all.len()
            };
            let candidate = all
                .iter()
                .cycle()
                .skip(start)
                .take(all.len())
                .find(|c| !taken.contains(c));
            if let Some(cidr) = candidate {
                let mut b = Block::new(*cidr, node);
                let ip = b.assign(handle).ok_or(IpamError::Contention)?;
                match self
                    .store
                    .put(&block_key(*cidr), &encode(&b), Expect::Absent)
                {
                    Ok(_) => {
                        tracing::info!(%node, block = %cidr, "claimed block");
                        return Ok(Assigned {
                            ip,
                            block: *cidr,
                            borrowed: false,
                        });
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            // 3. Borrow from another node's block.
            if !self.config.strict_affinity {
                if let Some((mut b, rev)) = blocks.iter().find(|(b, _)| b.free() > 0).cloned() {
                    if let Some(ip) = b.assign(handle) {
                        if self.update(&b, rev)? {
                            return Ok(Assigned {
                                ip,
                                block: b.cidr,
                                borrowed: b.affinity.as_deref() != Some(node),
                            });
                        }
                    }
                    continue;
                }
            }
            let detail = if self.config.strict_affinity {
                format!("every /{} block is claimed and node {node}'s blocks are full (strict affinity: no borrowing)", self.config.block_prefix)
            } else {
                format!(
                    "every address of every /{} block is in use",
                    self.config.block_prefix
                )
            };
            return Err(IpamError::Exhausted {
                pool: self.config.pool,
                detail,
            });
        }
        Err(IpamError::Contention)
    }

    /// Releases what `handle` holds; returns the addresses freed.
    pub fn release(&self, handle: &str) -> Result<Vec<Ipv4Addr>> {
        for _ in 0..MAX_ROUNDS {
            let Some((mut b, rev)) = self.blocks()?.into_iter().find(|(b, _)| b.holds(handle))
            else {
                return Ok(Vec::new());
            };
            let freed = b.release(handle, now());
            if self.update(&b, rev)? {
                return Ok(freed);
            }
        }
        Err(IpamError::Contention)
    }

    /// Every (handle, address) recorded under `handle_prefix`.
    pub fn allocations(&self, handle_prefix: &str) -> Result<Vec<(String, Ipv4Addr)>> {
        let mut out = Vec::new();
        for (b, _) in self.blocks()? {
            for (o, h) in &b.allocations {
                if h.handle.starts_with(handle_prefix) {
                    out.push((h.handle.clone(), b.addr(*o)));
                }
            }
        }
        Ok(out)
    }

    /// Deletes `node`'s blocks that have been empty for `grace_secs` or more.
    pub fn release_empty_blocks(&self, node: &str, grace_secs: u64) -> Result<Vec<Ipv4Net>> {
        let now = now();
        let mut released = Vec::new();
        for (b, rev) in self.blocks()? {
            let expired = b
                .empty_since
                .is_some_and(|t| now.saturating_sub(t) >= grace_secs);
            if b.affinity.as_deref() == Some(node) && b.allocations.is_empty() && expired {
                match self.store.delete(&block_key(b.cidr), rev) {
                    Ok(()) => released.push(b.cidr),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(released)
    }
}
