//! overlay mode: the nodes of the cluster as the datastore knows them — what
//! every other node needs to reach one (its underlay address, VTEP MAC and
//! tunnel address).

use std::net::Ipv4Addr;
use std::sync::Arc;

use podwire_store::{Datastore, Expect, StoreError};
use serde::{Deserialize, Serialize};

use crate::block_store::{now, BlockIpam, IpamError, Result};

pub const NODES: &str = "/podwire/nodes/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: String,
    pub tunnel_ip: Ipv4Addr,
}

pub fn node_key(name: &str) -> String {
    format!("{NODES}{name}")
}

/// Writes (or rewrites) a node's record.
pub fn register(store: &dyn Datastore, rec: &NodeRecord) -> Result<()> {
    let value = serde_json::to_vec(rec).unwrap_or_default();
    let key = node_key(&rec.name);
    for _ in 0..100 {
        let expect = match store.get(&key)? {
            Some(e) if e.value == value => return Ok(()),
            Some(e) => Expect::Revision(e.mod_revision),
            None => Expect::Absent,
        };
        match store.put(&key, &value, expect) {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(IpamError::Contention)
}

/// Every node record.
pub fn list(store: &dyn Datastore) -> Result<Vec<NodeRecord>> {
    store
        .list(NODES)?
        .entries
        .iter()
        .map(|e| {
            serde_json::from_slice(&e.value).map_err(|err| IpamError::Corrupt {
                key: e.key.clone(),
                msg: err.to_string(),
            })
        })
        .collect()
}

/// Removes a node from the cluster: its record, every address it held
/// (its pods and tunnel are gone with it; they must be DELeted first where
/// possible), and its affinity. Its blocks that still hold addresses of
/// other nodes (borrowed) stay, without affinity, until those are released;
/// the empty ones go now. Reads every block: an operator action, not a
/// per-pod path.
pub fn remove(store: Arc<dyn Datastore>, ipam: &BlockIpam, name: &str) -> Result<()> {
    let key = node_key(name);
    if let Some(e) = store.get(&key)? {
        match store.delete(&key, e.mod_revision) {
            Ok(()) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (b, _) in ipam.blocks()? {
        let touches =
            b.affinity.as_deref() == Some(name) || b.allocations.values().any(|h| h.node == name);
        if !touches {
            continue;
        }
        ipam.update_block(b.cidr, |b| {
            let mut nb = b.clone();
            nb.allocations.retain(|_, h| h.node != name);
            if nb.affinity.as_deref() == Some(name) {
                nb.affinity = None;
            }
            if nb.allocations.is_empty() && nb.affinity.is_none() {
                return None;
            }
            if nb.allocations.is_empty() && nb.empty_since.is_none() {
                nb.empty_since = Some(now());
            }
            Some(nb)
        })?;
    }
    Ok(())
}
