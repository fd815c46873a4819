//! The IPAM's datastore schema version (`/podwire/ipam/schema`) and the one
//! migration so far, v1 → v2:
//!
//! - v1 (no schema key): blocks whose holders carry string handles
//!   (`<network>.<container id>[.<ifname>]`, `tunnel.<node>`); no indexes.
//! - v2: typed handles ([`Handle`]), blocks marked `schema: 2`, and the
//!   handle, affinity, free and orphan indexes (`keys`).
//!
//! Every agent that opens the store runs the migration until the version
//! key says 2; agents may do so at once. Each block is converted by a
//! compare-and-swap on it (so exactly once: a loser re-reads and finds it
//! converted), and the version key is written by compare-and-swap last, so
//! a store says 2 only when every block is converted and indexed. A store
//! with a newer version than this code knows is refused, never rewritten.
//! All agents must run v2 code: a v1 agent cannot read a v2 block that
//! holds addresses (it fails instead of guessing).

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use podwire_store::{Datastore, Expect, StoreError, Write};
use serde::Deserialize;

use crate::block::{Block, Holder};
use crate::block_store::{corrupt, IpamError, Result};
use crate::handle::Handle;
use crate::index::{self, STEP};
use crate::keys;

/// The schema this code reads and writes.
pub const SCHEMA_VERSION: u32 = 2;

/// Rounds of "convert what is left" before giving up.
const MAX_ROUNDS: usize = 50;

#[derive(Deserialize)]
struct HolderV1 {
    handle: String,
    node: String,
    #[serde(default)]
    attrs: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct BlockV1 {
    cidr: Ipv4Net,
    affinity: Option<String>,
    allocations: BTreeMap<u32, HolderV1>,
    #[serde(default)]
    empty_since: Option<u64>,
}

/// The version the store says it has (None: no key, a v1 store).
fn stored_version(store: &dyn Datastore) -> Result<Option<(u32, i64)>> {
    let Some(e) = store.get(keys::SCHEMA)? else {
        return Ok(None);
    };
    let v = std::str::from_utf8(&e.value)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or_else(|| corrupt(keys::SCHEMA, "not a version number"))?;
    Ok(Some((v, e.mod_revision)))
}

/// Brings the store to [`SCHEMA_VERSION`] (or refuses a newer one).
pub(crate) fn ensure(store: &dyn Datastore) -> Result<()> {
    for _ in 0..MAX_ROUNDS {
        let current = stored_version(store)?;
        match current {
            Some((v, _)) if v == SCHEMA_VERSION => return Ok(()),
            Some((v, _)) if v > SCHEMA_VERSION => {
                return Err(IpamError::SchemaTooNew {
                    found: v,
                    known: SCHEMA_VERSION,
                })
            }
            _ => {}
        }
        if !convert_blocks(store)? {
            continue;
        }
        let expect = current.map_or(Expect::Absent, |(_, rev)| Expect::Revision(rev));
        match store.put(keys::SCHEMA, SCHEMA_VERSION.to_string().as_bytes(), expect) {
            Ok(_) => {
                tracing::info!(version = SCHEMA_VERSION, "IPAM datastore schema migrated");
                return Ok(());
            }
            // Another agent finished first (or a newer one): read again.
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(IpamError::Contention)
}

/// Converts every block not yet at v2; true when none is left.
fn convert_blocks(store: &dyn Datastore) -> Result<bool> {
    let mut done = true;
    for e in store.list(keys::BLOCKS)?.entries {
        if let Ok(b) = serde_json::from_slice::<Block>(&e.value) {
            if b.schema == SCHEMA_VERSION {
                continue;
            }
        }
        let v1: BlockV1 = serde_json::from_slice(&e.value).map_err(|err| corrupt(&e.key, err))?;
        let b = to_v2(&e.key, v1)?;
        // Big blocks: handle entries first, in steps (they only say where to
        // look, and readers check the block); small ones in one commit.
        let holders: Vec<&Holder> = b.allocations.values().collect();
        let inline = holders.len() <= STEP;
        if !inline {
            for chunk in holders.chunks(STEP) {
                let writes: Vec<Write> = chunk
                    .iter()
                    .map(|h| index::handle_write(&h.handle, b.cidr, &h.node, Expect::Any))
                    .collect();
                store.commit(&writes)?;
            }
        }
        let mut writes = Vec::new();
        if let Some(n) = &b.affinity {
            writes.push(Write::put(
                keys::affinity_key(n, b.cidr),
                index::MARK.to_vec(),
                Expect::Any,
            ));
        } else {
            writes.push(Write::put(
                keys::orphan_key(b.cidr),
                index::MARK.to_vec(),
                Expect::Any,
            ));
        }
        if b.free() > 0 {
            writes.push(Write::put(
                keys::free_key(b.cidr),
                index::MARK.to_vec(),
                Expect::Any,
            ));
        }
        if inline {
            for h in &holders {
                writes.push(index::handle_write(&h.handle, b.cidr, &h.node, Expect::Any));
            }
        }
        writes.push(Write::put(
            e.key.clone(),
            serde_json::to_vec(&b).unwrap_or_default(),
            Expect::Revision(e.mod_revision),
        ));
        match store.commit(&writes) {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => done = false,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(done)
}

fn to_v2(key: &str, v1: BlockV1) -> Result<Block> {
    let mut b = Block::new(v1.cidr, "");
    b.affinity = v1.affinity;
    b.empty_since = v1.empty_since;
    for (o, h) in v1.allocations {
        let handle = Handle::from_v1(&h.handle, &h.node, &h.attrs).ok_or_else(|| {
            corrupt(
                key,
                format!("v1 handle {:?} is not one podwire wrote", h.handle),
            )
        })?;
        b.allocations.insert(
            o,
            Holder {
                handle,
                node: h.node,
                attrs: h.attrs,
            },
        );
    }
    Ok(b)
}
