//! The loop that keeps the posture and the policies current: a full read
//! at start and every [`RESYNC`], and in between the changes the watches
//! announce, applied in batches (whatever arrived together is one
//! transaction), well within a second of the write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podwire_store::{Event, Revision, StoreError};

use super::{view, Exposure};
use crate::AgentError;

/// A full re-read (and a look at this node's own addresses) this often.
pub(crate) const RESYNC: Duration = Duration::from_secs(30);

type Item = Result<Event, StoreError>;

/// Every followed prefix's changes on one channel; dropping it stops the
/// forwarding threads (they look twice a second).
struct Following {
    rx: Receiver<Item>,
    stop: Arc<AtomicBool>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Exposure {
    fn watch_all(&self, revs: &[Revision]) -> Result<Following, AgentError> {
        let Some(store) = &self.store else {
            return Err(AgentError::Config("no datastore to follow".into()));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        for (prefix, rev) in view::FOLLOWED.iter().zip(revs) {
            let inner = self
                .metrics
                .datastore("watch", || store.watch(prefix, *rev))?;
            let tx = tx.clone();
            let stop = Arc::clone(&stop);
            crate::spawn("watch-cluster", move || {
                while !stop.load(Ordering::Acquire) {
                    match inner.recv_timeout(Duration::from_millis(500)) {
                        Ok(item) => {
                            if tx.send(item).is_err() {
                                break;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })?;
        }
        Ok(Following { rx, stop })
    }

    /// Applies a batch of changes to the view and the kernel.
    pub(crate) fn apply_events(&self, events: &[Event]) -> Result<(), AgentError> {
        if events.iter().all(|e| matches!(e, Event::Progress(_))) {
            return Ok(());
        }
        let started = Instant::now();
        let mut inner = self.lock();
        let mut changed = false;
        for ev in events {
            let (key, value) = match ev {
                Event::Put(e) => (e.key.as_str(), Some(e.value.as_slice())),
                Event::Delete { key, .. } => (key.as_str(), None),
                Event::Progress(_) => continue,
            };
            // The echo of this agent's own ADD or DEL (or a record written
            // again unchanged) changes nothing: no recompile — it cost every
            // ADD a second compile of the node.
            match inner.view.update(key, value) {
                Ok(c) => changed |= c,
                Err(r) => {
                    changed = true;
                    self.reject(&r);
                }
            }
        }
        if !changed {
            return Ok(());
        }
        self.sync_locked(&mut inner)?;
        tracing::debug!(
            events = events.len(),
            took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "exposure follows the datastore"
        );
        Ok(())
    }

    /// This node's addresses, re-read from the kernel (ENIs come and go).
    pub(crate) fn refresh_own(&self) {
        match super::records::node_addresses() {
            Ok(a) => {
                if let Err(e) = self.set_own_addresses(a) {
                    tracing::warn!("publishing this node's addresses: {e}");
                }
            }
            Err(e) => tracing::warn!("reading this node's addresses: {e}"),
        }
    }

    /// Follows the datastore forever (returns at once without one).
    pub fn follow_forever(&self) {
        if self.store.is_none() {
            return;
        }
        loop {
            self.refresh_own();
            let revs = match self.reload().and_then(|r| self.sync().map(|()| r)) {
                Ok(r) => r,
                Err(e) => {
                    self.metrics.note_error("exposure", &e.to_string());
                    tracing::warn!("cluster records: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let following = match self.watch_all(&revs) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("watching cluster records: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let resync_at = Instant::now() + RESYNC;
            loop {
                let wait = resync_at.saturating_duration_since(Instant::now());
                match following.rx.recv_timeout(wait) {
                    Ok(Ok(ev)) => {
                        let mut batch = vec![ev];
                        let mut failed = None;
                        loop {
                            match following.rx.try_recv() {
                                Ok(Ok(more)) => batch.push(more),
                                Ok(Err(e)) => {
                                    failed = Some(e);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        if let Err(e) = self.apply_events(&batch) {
                            self.metrics.note_error("exposure", &e.to_string());
                            tracing::warn!("applying cluster changes: {e}");
                            break;
                        }
                        if let Some(e) = failed {
                            self.metrics.datastore_error("watch", &e.to_string());
                            tracing::warn!("watch: {e}");
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        self.metrics.datastore_error("watch", &e.to_string());
                        tracing::warn!("watch: {e}");
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
    }
}
