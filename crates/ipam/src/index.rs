//! The writes that take a block from one state to the next together with
//! every index entry that describes it, for one [`Datastore::commit`].
//!
//! Why transactions and not hints: an ADD asks "does this attachment hold
//! an address already?" and GC asks "which addresses does network N hold on
//! node X?". A hint can say where to look but never prove absence without
//! the scan we want to avoid; an index written in the same transaction as
//! the block's compare-and-swap is exact. Both backends do multi-key
//! transactions cheaply (SQLite: one transaction; etcd: one Txn), so every
//! block change carries its index changes. The block's own compare-and-swap
//! guards the affinity/free/orphan entries (only writes that win the block
//! touch them: `Expect::Any`); a new handle entry must be absent, which is
//! what stops one attachment from taking two addresses in two blocks.
//!
//! [`Datastore::commit`]: podwire_store::Datastore::commit

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use podwire_store::{Expect, Revision, Write};
use serde::{Deserialize, Serialize};

use crate::block::Block;
use crate::handle::Handle;
use crate::keys;

/// The value of a handle's index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HandleRecord {
    pub block: Ipv4Net,
    pub node: String,
}

pub(crate) const MARK: &[u8] = b"1";

fn handles(b: Option<&Block>) -> BTreeSet<(&Handle, &str)> {
    b.map(|b| {
        b.allocations
            .values()
            .map(|h| (&h.handle, h.node.as_str()))
            .collect()
    })
    .unwrap_or_default()
}

pub(crate) fn handle_write(h: &Handle, block: Ipv4Net, node: &str, expect: Expect) -> Write {
    let rec = HandleRecord {
        block,
        node: node.to_string(),
    };
    Write::put(
        keys::handle_key(h),
        serde_json::to_vec(&rec).unwrap_or_default(),
        expect,
    )
}

/// From `old` (with its revision; None: no such block) to `new` (None:
/// delete it). The block's write comes last, so the revision a commit
/// returns is the block's on both backends.
pub(crate) fn transition(old: Option<(&Block, Revision)>, new: Option<&Block>) -> Vec<Write> {
    let ob = old.map(|(b, _)| b);
    let Some(cidr) = new.or(ob).map(|b| b.cidr) else {
        return Vec::new();
    };
    let mut w = Vec::new();
    // Affinity.
    let oa = ob.and_then(|b| b.affinity.as_deref());
    let na = new.and_then(|b| b.affinity.as_deref());
    if oa != na {
        if let Some(n) = oa {
            w.push(Write::delete(keys::affinity_key(n, cidr), Expect::Any));
        }
        if let Some(n) = na {
            w.push(Write::put(
                keys::affinity_key(n, cidr),
                MARK.to_vec(),
                Expect::Any,
            ));
        }
    }
    // Orphan (exists without affinity) and free (has room) marks.
    for (key, was, is) in [
        (
            keys::orphan_key(cidr),
            ob.is_some_and(|b| b.affinity.is_none()),
            new.is_some_and(|b| b.affinity.is_none()),
        ),
        (
            keys::free_key(cidr),
            ob.is_some_and(|b| b.free() > 0),
            new.is_some_and(|b| b.free() > 0),
        ),
    ] {
        if was && !is {
            w.push(Write::delete(key, Expect::Any));
        } else if is && !was {
            w.push(Write::put(key, MARK.to_vec(), Expect::Any));
        }
    }
    // Handles.
    let oh = handles(ob);
    let nh = handles(new);
    for (h, _) in oh.difference(&nh) {
        w.push(Write::delete(keys::handle_key(h), Expect::Any));
    }
    for (h, node) in nh.difference(&oh) {
        w.push(handle_write(h, cidr, node, Expect::Absent));
    }
    // The block itself, compare-and-swap.
    let key = keys::block_key(cidr);
    let expect = old.map_or(Expect::Absent, |(_, r)| Expect::Revision(r));
    match new {
        Some(b) => w.push(Write::put(
            key,
            serde_json::to_vec(b).unwrap_or_default(),
            expect,
        )),
        None => {
            if let Some((_, r)) = old {
                w.push(Write::delete(key, Expect::Revision(r)));
            }
        }
    }
    w
}

/// How many holders one commit adds or removes at most: a block's index
/// changes must stay within a transaction's limit (etcd: 128 operations),
/// and a /16 block can have 65,536 holders. Bigger changes go in steps,
/// each a consistent state of its own.
pub(crate) const STEP: usize = 48;

/// The next state on the way from `cur` to `target`, and whether it is the
/// target itself.
pub(crate) fn next_step(cur: Option<&Block>, target: Option<&Block>) -> (Option<Block>, bool) {
    let Some(shape) = cur.or(target) else {
        return (None, true);
    };
    let empty = std::collections::BTreeMap::new();
    let ca = cur.map_or(&empty, |b| &b.allocations);
    let ta = target.map_or(&empty, |b| &b.allocations);
    let removed: Vec<u32> = ca
        .iter()
        .filter(|(o, h)| ta.get(o) != Some(h))
        .map(|(o, _)| *o)
        .collect();
    let added: Vec<u32> = ta
        .iter()
        .filter(|(o, h)| ca.get(o) != Some(h))
        .map(|(o, _)| *o)
        .collect();
    if removed.len() + added.len() <= STEP {
        return (target.cloned(), true);
    }
    let mut next = cur.cloned().unwrap_or_else(|| {
        let mut b = shape.clone();
        b.allocations.clear();
        b
    });
    let mut budget = STEP;
    for o in removed.iter().take(budget) {
        next.allocations.remove(o);
        budget -= 1;
    }
    for o in added.iter().take(budget) {
        if let Some(h) = ta.get(o) {
            next.allocations.insert(*o, h.clone());
        }
    }
    (Some(next), false)
}
