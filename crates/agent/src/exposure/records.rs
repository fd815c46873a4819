//! This node's records in the datastore: its endpoints (one per pod
//! attachment, written at ADD before the answer, removed at DEL and GC) and
//! its addresses. Each write is a compare-and-swap on the key, retried a
//! bounded number of times.

use std::net::Ipv4Addr;

use podwire_cluster::{keys, EndpointRecord, NodeAddressesRecord};
use podwire_store::{Datastore, Expect, Revision, StoreError, Write};

use super::Settings;
use crate::metrics::Metrics;

/// Compare-and-swap rounds before giving up (another writer of the same key
/// is a bug or an operator, never a crowd).
const ROUNDS: usize = 20;

/// Writes `value` under `key` unless it is already there; returns the
/// revision of the write (or of the record found equal).
fn put(
    store: &dyn Datastore,
    key: &str,
    value: &[u8],
    metrics: &Metrics,
) -> Result<Revision, StoreError> {
    for _ in 0..ROUNDS {
        let expect = match metrics.datastore("get", || store.get(key))? {
            Some(e) if e.value == value => return Ok(e.mod_revision),
            Some(e) => Expect::Revision(e.mod_revision),
            None => Expect::Absent,
        };
        match metrics.datastore("put", || store.put(key, value, expect)) {
            Ok(rev) => return Ok(rev),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict {
        key: key.to_string(),
    })
}

pub(crate) fn put_endpoint(
    store: &dyn Datastore,
    rec: &EndpointRecord,
    metrics: &Metrics,
) -> Result<Revision, StoreError> {
    let value = serde_json::to_vec(rec).map_err(|e| StoreError::Backend(e.to_string()))?;
    put(store, &keys::endpoint(rec), &value, metrics)
}

/// Deletes the record if it exists; returns the revision of the delete
/// (`None`: there was nothing to delete).
pub(crate) fn delete_endpoint(
    store: &dyn Datastore,
    key: &str,
    metrics: &Metrics,
) -> Result<Option<Revision>, StoreError> {
    for _ in 0..ROUNDS {
        let Some(e) = metrics.datastore("get", || store.get(key))? else {
            return Ok(None);
        };
        let w = [Write::delete(key, Expect::Revision(e.mod_revision))];
        match metrics.datastore("commit", || store.commit(&w)) {
            Ok(rev) => return Ok(Some(rev)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict {
        key: key.to_string(),
    })
}

/// Publishes this node's addresses (`/podwire/node-addresses/<node>`).
pub(crate) fn publish_node(
    store: &dyn Datastore,
    s: &Settings,
    addresses: &[Ipv4Addr],
    metrics: &Metrics,
) -> Result<(), StoreError> {
    let rec = NodeAddressesRecord {
        node: s.node.clone(),
        mode: s.mode.to_string(),
        addresses: addresses.to_vec(),
        primary: s.primary,
        external_pod_access: Some(s.access),
        external_allow_cidrs: Some(s.allow.clone()),
    };
    rec.validate()
        .map_err(|e| StoreError::Backend(format!("node record: {e}")))?;
    let value = serde_json::to_vec(&rec).map_err(|e| StoreError::Backend(e.to_string()))?;
    put(store, &keys::node_addresses(&s.node), &value, metrics).map(|_| ())
}

/// This node's IPv4 addresses as the kernel has them: every interface's,
/// but loopback and link-local (169.254.0.0/16 is every node's, and the
/// pods' gateway).
pub(crate) fn node_addresses() -> Result<Vec<Ipv4Addr>, podwire_netlink::Error> {
    let mut nl = podwire_netlink::Handle::new()?;
    let mut v: Vec<Ipv4Addr> = nl
        .addresses(None)?
        .into_iter()
        .map(|(_, a)| a.addr())
        .filter(|a| !a.is_loopback() && !a.is_link_local() && !a.is_unspecified())
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}
