//! overlay mode's local record of the node's live pods: every allocation the
//! plugin was answered with, kept in the state directory (the same
//! checkpoint file format as vpc mode) until its DEL or GC.
//!
//! The datastore is the truth for the cluster, but it can be lost or
//! replaced (a deleted SQLite file, an etcd restored from an old backup).
//! An agent that trusted an empty store would claim a block again and hand
//! out addresses that live pods still use. With the record, the agent
//! refuses such a store and says what happened and what to do.
//!
//! Ordering keeps the record a subset of the store: ADD writes the store,
//! then the record; DEL and GC remove from the record, then release in the
//! store. A crash in between leaves at most an allocation the store holds
//! and the record does not (which the runtime's DEL or GC releases), never
//! the reverse.

use std::collections::BTreeMap;
use std::sync::Mutex;

use podwire_ipam::block_store::BlockIpam;
use podwire_proto::{Allocation, AttachmentKey};

use crate::checkpoint::Checkpoint;
use crate::AgentError;

#[derive(Debug)]
pub(super) struct Record {
    file: Checkpoint,
    live: Mutex<BTreeMap<AttachmentKey, Allocation>>,
}

impl Record {
    pub(super) fn load(file: Checkpoint) -> Result<Record, AgentError> {
        let live = file
            .load()?
            .into_iter()
            .map(|a| (a.key.clone(), a))
            .collect();
        Ok(Record {
            file,
            live: Mutex::new(live),
        })
    }

    fn save(&self, live: &BTreeMap<AttachmentKey, Allocation>) -> Result<(), AgentError> {
        self.file.save(&live.values().cloned().collect::<Vec<_>>())
    }

    pub(super) fn add(&self, a: &Allocation) -> Result<(), AgentError> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(a.key.clone(), a.clone());
        let saved = self.save(&live);
        if saved.is_err() {
            live.remove(&a.key);
        }
        saved
    }

    pub(super) fn remove(&self, key: &AttachmentKey) -> Result<(), AgentError> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.remove(key).is_some() {
            self.save(&live)?;
        }
        Ok(())
    }

    /// Every live allocation (their endpoint records are checked at start).
    pub(super) fn all(&self) -> Vec<Allocation> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Checks that the datastore still holds every live pod's address.
    /// `store_has_pool` is false for a store with no IPAM at all (new, or
    /// lost): then every recorded pod is missing.
    pub(super) fn verify_against(
        &self,
        ipam: Option<&BlockIpam>,
        datastore: &str,
        state_file: &str,
    ) -> Result<(), AgentError> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing = Vec::new();
        for a in live.values() {
            let handle = super::handlers::handle_of(&a.key);
            let held = match ipam {
                Some(i) => i.find(&handle)?.map(|(ip, _)| ip),
                None => None,
            };
            if held != Some(a.ip) {
                missing.push(format!(
                    "{} for container {} ({})",
                    a.ip,
                    a.key.container_id,
                    held.map_or_else(
                        || "not recorded".to_string(),
                        |ip| format!("recorded as {ip}")
                    )
                ));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        Err(AgentError::Config(format!(
            "the datastore {datastore} does not hold {} address(es) that pods on this node are using: {}{}. \
             It was replaced or lost data (a deleted SQLite file, an etcd restored from an older backup). \
             Starting would hand those addresses out again. Restore the datastore, or, if those pods are gone, \
             delete {state_file} and start the agent again.",
            missing.len(),
            shown.join("; "),
            if missing.len() > shown.len() { "; …" } else { "" }
        )))
    }
}
