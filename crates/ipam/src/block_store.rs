//! Block IPAM over a [`Datastore`]: nodes claim blocks of the pool by
//! compare-and-swap (two nodes can never claim the same one), hand out
//! addresses from their own blocks, borrow single addresses from other
//! blocks when the pool has no unclaimed block (unless strict affinity), and
//! give empty blocks back after a grace period. A block whose node left
//! keeps the addresses others still hold, without affinity, and goes once
//! it is empty (Calico's model).
//!
//! Each address is recorded in its block under a typed [`Handle`], so DEL
//! and GC release exactly what was taken. Indexes kept in the same
//! transaction as each block change (`index`) make an ADD read only its
//! node's blocks: the handle index answers "already allocated?", the
//! affinity index lists the node's blocks, and a borrow reads the free-block
//! index. Only claiming a new block may fall back to listing the blocks, and
//! only when the node has no room and a few hashed guesses were taken.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use podwire_store::{Datastore, Entry, Expect, Revision, StoreError};
use serde::{Deserialize, Serialize};

use crate::block::{Block, Holder};
use crate::handle::Handle;
use crate::index::{self, HandleRecord};
use crate::keys;
pub use crate::keys::{block_key, PREFIX};
use crate::schema;

/// Compare-and-swap rounds before giving up (contention is short-lived).
const MAX_ROUNDS: usize = 200;
/// Unclaimed-block guesses (hashed start, then the next ones) before a claim
/// lists the blocks to find a free one.
const CLAIM_GUESSES: u32 = 8;

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
    #[error("{handle} already holds {ip}")]
    HandleInUse { handle: Box<Handle>, ip: Ipv4Addr },
    #[error("the datastore's IPAM schema is version {found}; this podwire knows up to {known}: upgrade this agent (never downgrade agents on a migrated datastore)")]
    SchemaTooNew { found: u32, known: u32 },
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

/// An address held, with its block and holder record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub ip: Ipv4Addr,
    pub block: Ipv4Net,
    pub holder: Holder,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn corrupt(key: &str, msg: impl std::fmt::Display) -> IpamError {
    IpamError::Corrupt {
        key: key.to_string(),
        msg: msg.to_string(),
    }
}

fn decode(e: &Entry) -> Result<Block> {
    serde_json::from_slice(&e.value).map_err(|err| corrupt(&e.key, err))
}

/// A small stable hash, to spread nodes' first block claims over the pool.
fn spread(node: &str) -> u32 {
    node.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    })
}

/// What a step-wise rewrite of a block ran into.
enum Outcome {
    Done,
    /// A write's expectation failed on this key: re-read and retry.
    Conflict(String),
}

#[derive(Debug, Clone)]
pub struct BlockIpam {
    store: Arc<dyn Datastore>,
    config: PoolConfig,
}

impl BlockIpam {
    /// Opens the pool: brings the datastore to this code's schema (migrating
    /// a v1 store once), then writes the pool's configuration if this is the
    /// first agent, or checks it agrees.
    pub fn open(store: Arc<dyn Datastore>, config: PoolConfig) -> Result<BlockIpam> {
        schema::ensure(store.as_ref())?;
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        match store.put(keys::CONFIG, &bytes, Expect::Absent) {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                let e = store
                    .get(keys::CONFIG)?
                    .ok_or_else(|| corrupt(keys::CONFIG, "vanished"))?;
                let stored: PoolConfig =
                    serde_json::from_slice(&e.value).map_err(|err| corrupt(keys::CONFIG, err))?;
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

    /// Every block with its record and revision (reads the whole pool: for
    /// convergence and operator tools, never on the ADD path).
    pub fn blocks(&self) -> Result<Vec<(Block, Revision)>> {
        self.store
            .list(keys::BLOCKS)?
            .entries
            .iter()
            .map(|e| Ok((decode(e)?, e.mod_revision)))
            .collect()
    }

    fn read_block(&self, cidr: Ipv4Net) -> Result<Option<(Block, Revision)>> {
        self.store
            .get(&block_key(cidr))?
            .map(|e| Ok((decode(&e)?, e.mod_revision)))
            .transpose()
    }

    /// The blocks an index lists (entries whose block has gone are skipped).
    fn indexed_blocks(&self, prefix: &str) -> Result<Vec<(Block, Revision)>> {
        let mut out = Vec::new();
        for e in self.store.list(prefix)?.entries {
            let cidr = keys::block_of_key(&e.key).ok_or_else(|| corrupt(&e.key, "not a block"))?;
            if let Some(b) = self.read_block(cidr)? {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// `node`'s blocks, from the affinity index.
    pub fn node_blocks(&self, node: &str) -> Result<Vec<(Block, Revision)>> {
        let mut v = self.indexed_blocks(&keys::affinity_prefix(node))?;
        v.retain(|(b, _)| b.affinity.as_deref() == Some(node));
        Ok(v)
    }

    /// Takes `cur` to `target` in consistent steps (see `index::STEP`).
    fn rewrite(&self, cur: Option<(Block, Revision)>, target: Option<&Block>) -> Result<Outcome> {
        let mut cur = cur;
        loop {
            let (next, last) = index::next_step(cur.as_ref().map(|(b, _)| b), target);
            let writes = index::transition(cur.as_ref().map(|(b, r)| (b, *r)), next.as_ref());
            if writes.is_empty() {
                return Ok(Outcome::Done);
            }
            match self.store.commit(&writes) {
                Ok(rev) => {
                    if last {
                        return Ok(Outcome::Done);
                    }
                    cur = next.map(|b| (b, rev));
                }
                Err(StoreError::Conflict { key }) => return Ok(Outcome::Conflict(key)),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Re-reads `cidr` and rewrites it with `f` until a write wins; `f`
    /// returning None deletes the block. False when there is no such block.
    pub(crate) fn update_block(
        &self,
        cidr: Ipv4Net,
        f: impl Fn(&Block) -> Option<Block>,
    ) -> Result<bool> {
        for _ in 0..MAX_ROUNDS {
            let Some((b, rev)) = self.read_block(cidr)? else {
                return Ok(false);
            };
            let target = f(&b);
            if target.as_ref() == Some(&b) {
                return Ok(true);
            }
            if let Outcome::Done = self.rewrite(Some((b, rev)), target.as_ref())? {
                return Ok(true);
            }
        }
        Err(IpamError::Contention)
    }

    /// A handle's index entry says it is taken: true if it really is (its
    /// block holds it); a stale entry is removed and false returned.
    fn handle_taken(&self, h: &Handle) -> Result<Option<Ipv4Addr>> {
        let key = keys::handle_key(h);
        let Some(e) = self.store.get(&key)? else {
            return Ok(None);
        };
        if let Some((ip, _)) = self.find(h)? {
            return Ok(Some(ip));
        }
        match self.store.delete(&key, e.mod_revision) {
            Ok(()) | Err(StoreError::Conflict { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Writes `b` (just changed for `holder`) over `old`; Some when it won.
    fn try_assign(
        &self,
        old: Option<(Block, Revision)>,
        b: &Block,
        holder: &Holder,
        ip: Ipv4Addr,
    ) -> Result<Option<Assigned>> {
        match self.rewrite(old, Some(b))? {
            Outcome::Done => Ok(Some(Assigned {
                ip,
                block: b.cidr,
                borrowed: b.affinity.as_deref() != Some(holder.node.as_str()),
            })),
            Outcome::Conflict(key) if key == keys::handle_key(&holder.handle) => {
                match self.handle_taken(&holder.handle)? {
                    Some(ip) => Err(IpamError::HandleInUse {
                        handle: Box::new(holder.handle.clone()),
                        ip,
                    }),
                    None => Ok(None),
                }
            }
            Outcome::Conflict(_) => Ok(None),
        }
    }

    /// Hands `handle` an address on `node`.
    pub fn allocate(&self, node: &str, handle: Handle) -> Result<Assigned> {
        self.allocate_for(&Holder::new(handle, node))
    }

    /// The address `handle` holds, with its block.
    pub fn find(&self, handle: &Handle) -> Result<Option<(Ipv4Addr, Block)>> {
        let key = keys::handle_key(handle);
        let Some(e) = self.store.get(&key)? else {
            return Ok(None);
        };
        let rec: HandleRecord =
            serde_json::from_slice(&e.value).map_err(|err| corrupt(&key, err))?;
        Ok(self
            .read_block(rec.block)?
            .and_then(|(b, _)| b.find(handle).map(|(ip, _)| (ip, b.clone()))))
    }

    /// The i-th block of the pool.
    fn nth_block(&self, i: u32) -> Option<Ipv4Net> {
        let size_bits = 32 - u32::from(self.config.block_prefix);
        let base = u32::from(self.config.pool.network());
        let ip = base.checked_add(i.checked_shl(size_bits)?)?;
        Ipv4Net::new(Ipv4Addr::from(ip), self.config.block_prefix).ok()
    }

    fn block_count(&self) -> u32 {
        let bits = u32::from(self.config.block_prefix)
            .saturating_sub(u32::from(self.config.pool.prefix_len()));
        1u32.checked_shl(bits).unwrap_or(0)
    }

    /// Claims an unclaimed block for `holder` (with its address in it):
    /// a few guesses from the node's hashed place, then a listing.
    /// `Taken` here: every block of the pool is claimed.
    fn claim(&self, holder: &Holder) -> Result<Claim> {
        let node = holder.node.as_str();
        let count = self.block_count();
        if count == 0 {
            return Ok(Claim::Taken);
        }
        let start = spread(node) % count;
        let guesses = (0..CLAIM_GUESSES.min(count)).map(|k| (start + k) % count);
        let mut guessed = 0;
        for i in guesses {
            let Some(cidr) = self.nth_block(i) else {
                continue;
            };
            guessed += 1;
            match self.claim_one(cidr, holder)? {
                Claim::Taken => {}
                other => return Ok(other),
            }
        }
        // Listing only the keys' names would do; the store lists values too.
        let taken: BTreeSet<Ipv4Net> = self
            .store
            .list(keys::BLOCKS)?
            .entries
            .iter()
            .filter_map(|e| keys::block_of_key(&e.key))
            .collect();
        let free = (0..count)
            .map(|k| (start + k) % count)
            .skip(guessed)
            .filter_map(|i| self.nth_block(i))
            .find(|c| !taken.contains(c));
        match free {
            Some(cidr) => match self.claim_one(cidr, holder)? {
                // Claimed between our listing and our write: look again.
                Claim::Taken => Ok(Claim::Retry),
                other => Ok(other),
            },
            None => Ok(Claim::Taken),
        }
    }

    fn claim_one(&self, cidr: Ipv4Net, holder: &Holder) -> Result<Claim> {
        let mut b = Block::new(cidr, &holder.node);
        let ip = b.assign(holder).ok_or(IpamError::Contention)?;
        match self.rewrite(None, Some(&b))? {
            Outcome::Done => {
                tracing::info!(node = %holder.node, block = %cidr, "claimed block");
                Ok(Claim::Won(Assigned {
                    ip,
                    block: cidr,
                    borrowed: false,
                }))
            }
            Outcome::Conflict(key) if key == block_key(cidr) => Ok(Claim::Taken),
            Outcome::Conflict(key) if key == keys::handle_key(&holder.handle) => {
                match self.handle_taken(&holder.handle)? {
                    Some(ip) => Err(IpamError::HandleInUse {
                        handle: Box::new(holder.handle.clone()),
                        ip,
                    }),
                    None => Ok(Claim::Retry),
                }
            }
            Outcome::Conflict(_) => Ok(Claim::Retry),
        }
    }

    /// Hands `holder` an address on `holder.node`.
    pub fn allocate_for(&self, holder: &Holder) -> Result<Assigned> {
        let node = holder.node.as_str();
        'round: for _ in 0..MAX_ROUNDS {
            // 1. A free address in one of our own blocks.
            let own = self.node_blocks(node)?;
            if let Some((b, rev)) = own.into_iter().find(|(b, _)| b.free() > 0) {
                let mut nb = b.clone();
                if let Some(ip) = nb.assign(holder) {
                    if let Some(a) = self.try_assign(Some((b, rev)), &nb, holder, ip)? {
                        return Ok(a);
                    }
                }
                continue;
            }
            // 2. Claim an unclaimed block.
            match self.claim(holder)? {
                Claim::Won(a) => return Ok(a),
                Claim::Retry => continue,
                Claim::Taken => {}
            }
            // 3. Borrow from another block with room.
            if !self.config.strict_affinity {
                for (b, rev) in self.indexed_blocks(keys::FREE)? {
                    let mut nb = b.clone();
                    let Some(ip) = nb.assign(holder) else {
                        continue;
                    };
                    if let Some(a) = self.try_assign(Some((b, rev)), &nb, holder, ip)? {
                        return Ok(a);
                    }
                    continue 'round;
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

    /// Releases what `handle` holds; returns the addresses freed. A block
    /// without affinity goes with its last address.
    pub fn release(&self, handle: &Handle) -> Result<Vec<Ipv4Addr>> {
        for _ in 0..MAX_ROUNDS {
            let key = keys::handle_key(handle);
            let Some(e) = self.store.get(&key)? else {
                return Ok(Vec::new());
            };
            let rec: HandleRecord =
                serde_json::from_slice(&e.value).map_err(|err| corrupt(&key, err))?;
            let Some((b, rev)) = self.read_block(rec.block)? else {
                // A stale entry (its block is gone): drop it.
                match self.store.delete(&key, e.mod_revision) {
                    Ok(()) | Err(StoreError::Conflict { .. }) => continue,
                    Err(err) => return Err(err.into()),
                }
            };
            let mut nb = b.clone();
            let freed = nb.release(handle, now());
            if freed.is_empty() {
                match self.store.delete(&key, e.mod_revision) {
                    Ok(()) | Err(StoreError::Conflict { .. }) => continue,
                    Err(err) => return Err(err.into()),
                }
            }
            let target = (nb.affinity.is_some() || !nb.allocations.is_empty()).then_some(nb);
            if let Outcome::Done = self.rewrite(Some((b, rev)), target.as_ref())? {
                return Ok(freed);
            }
        }
        Err(IpamError::Contention)
    }

    /// Every address of network `network` held on `node`, exactly: from the
    /// handle index under that network (no other network's handles share
    /// its prefix), checked against each block.
    pub fn allocations_on(&self, node: &str, network: &str) -> Result<Vec<Allocated>> {
        let mut by_block: BTreeMap<Ipv4Net, ()> = BTreeMap::new();
        for e in self.store.list(&keys::network_handles(network))?.entries {
            let rec: HandleRecord =
                serde_json::from_slice(&e.value).map_err(|err| corrupt(&e.key, err))?;
            if rec.node == node {
                by_block.insert(rec.block, ());
            }
        }
        let mut out = Vec::new();
        for cidr in by_block.into_keys() {
            let Some((b, _)) = self.read_block(cidr)? else {
                continue;
            };
            for (o, h) in &b.allocations {
                if h.node == node && h.handle.network() == Some(network) {
                    out.push(Allocated {
                        ip: b.addr(*o),
                        block: cidr,
                        holder: h.clone(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Deletes `node`'s blocks that have been empty for `grace_secs` or
    /// more, and every empty block without affinity (its node is gone).
    pub fn release_empty_blocks(&self, node: &str, grace_secs: u64) -> Result<Vec<Ipv4Net>> {
        let now = now();
        let mut released = Vec::new();
        let mut candidates = self.node_blocks(node)?;
        candidates.extend(self.indexed_blocks(keys::ORPHANS)?);
        for (b, rev) in candidates {
            let expired = b
                .empty_since
                .is_some_and(|t| now.saturating_sub(t) >= grace_secs);
            let ours = b.affinity.as_deref() == Some(node) && expired;
            if b.allocations.is_empty() && (ours || b.affinity.is_none()) {
                if let Outcome::Done = self.rewrite(Some((b.clone(), rev)), None)? {
                    released.push(b.cidr);
                }
            }
        }
        Ok(released)
    }

    /// Writes a whole block with its index entries (for tools that seed a
    /// datastore, such as the benchmarks). Fails if the block exists.
    pub fn insert_block(&self, b: &Block) -> Result<()> {
        match self.rewrite(None, Some(b))? {
            Outcome::Done => Ok(()),
            Outcome::Conflict(key) => Err(StoreError::Conflict { key }.into()),
        }
    }

    /// Deletes a block whatever it holds, with its index entries (tools
    /// and node removal). False when there was none.
    pub fn delete_block(&self, cidr: Ipv4Net) -> Result<bool> {
        self.update_block(cidr, |_| None)
    }
}

impl BlockIpam {
    /// Every disagreement between the blocks and the indexes (empty when
    /// the datastore is consistent). Reads the whole pool: for tests, soak
    /// checks and operator tools.
    pub fn verify(&self) -> Result<Vec<String>> {
        let snap = self.store.list(keys::PREFIX)?;
        let mut expected: BTreeMap<String, Option<HandleRecord>> = BTreeMap::new();
        let mut actual: BTreeMap<String, Option<HandleRecord>> = BTreeMap::new();
        let mut problems = Vec::new();
        for e in &snap.entries {
            if e.key.starts_with(keys::BLOCKS) {
                let b = decode(e)?;
                if block_key(b.cidr) != e.key {
                    problems.push(format!("{} holds block {}", e.key, b.cidr));
                }
                match &b.affinity {
                    Some(n) => expected.insert(keys::affinity_key(n, b.cidr), None),
                    None => expected.insert(keys::orphan_key(b.cidr), None),
                };
                if b.free() > 0 {
                    expected.insert(keys::free_key(b.cidr), None);
                }
                for h in b.allocations.values() {
                    let rec = HandleRecord {
                        block: b.cidr,
                        node: h.node.clone(),
                    };
                    if expected
                        .insert(keys::handle_key(&h.handle), Some(rec))
                        .is_some()
                    {
                        problems.push(format!("{} holds two addresses", h.handle));
                    }
                }
            } else if e.key.starts_with(keys::HANDLES) {
                let rec: HandleRecord =
                    serde_json::from_slice(&e.value).map_err(|err| corrupt(&e.key, err))?;
                actual.insert(e.key.clone(), Some(rec));
            } else if [keys::AFFINITY, keys::FREE, keys::ORPHANS]
                .iter()
                .any(|p| e.key.starts_with(p))
            {
                actual.insert(e.key.clone(), None);
            }
        }
        for (k, v) in &expected {
            match actual.get(k) {
                None => problems.push(format!("missing index entry {k}")),
                Some(a) if a != v => problems.push(format!("{k} is {a:?}, the block says {v:?}")),
                Some(_) => {}
            }
        }
        for k in actual.keys().filter(|k| !expected.contains_key(*k)) {
            problems.push(format!("stale index entry {k}"));
        }
        Ok(problems)
    }
}

enum Claim {
    Won(Assigned),
    /// Someone has this block.
    Taken,
    /// Something else changed: start the round again.
    Retry,
}
