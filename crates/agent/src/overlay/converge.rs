//! overlay mode's convergence loop: a full read of the datastore at start
//! and every [`RESYNC`], and in between only the delta of each change the
//! watch announces, applied to the kernel in netlink batches (Felix's
//! model: the work per change does not grow with the cluster).

use std::time::{Duration, Instant};

use podwire_dataplane::overlay::{self, VXLAN_DEV};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

use super::OverlayAgent;
use crate::AgentError;

type WatchItem = Result<podwire_store::Event, podwire_store::StoreError>;

/// The merged changes of every followed prefix, each with when it reached
/// the agent (for the convergence lag); dropping it stops the forwarding
/// threads.
struct Following {
    rx: Receiver<(Instant, WatchItem)>,
    stop: Arc<AtomicBool>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A full resync (read everything, diff against the kernel) this often.
const RESYNC: Duration = Duration::from_secs(30);
/// Empty blocks are looked for this often.
const BLOCK_GC_EVERY: Duration = Duration::from_secs(60);

/// What a convergence changed in the kernel, as metric labels.
fn changes(c: overlay::Changes) -> [(&'static str, u64); 2] {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    [
        ("kernel_added", n(c.added)),
        ("kernel_removed", n(c.removed)),
    ]
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Makes the node accept VXLAN from exactly the known nodes' underlay
/// addresses. A failure is logged and retried at the next change or resync
/// (before the agent's nftables exist at start-up, the set is not there yet).
fn sync_vxlan_peers(model: &mut super::model::Model) {
    let want: std::collections::BTreeSet<std::net::Ipv4Addr> =
        model.applied.peers.iter().map(|p| p.underlay_ip).collect();
    if model.vxlan_peers.as_ref() == Some(&want) {
        return;
    }
    match podwire_dataplane::nft::set_vxlan_peers(&want) {
        Ok(()) => model.vxlan_peers = Some(want),
        Err(e) => {
            model.vxlan_peers = None;
            tracing::debug!("VXLAN peer set not updated yet: {e}");
        }
    }
}

impl OverlayAgent {
    /// Puts the known nodes into the VXLAN peer set now (right after the
    /// agent's nftables were applied).
    pub(crate) fn sync_vxlan_peers(&self) {
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        sync_vxlan_peers(&mut model);
        if model.vxlan_peers.is_none() {
            tracing::warn!("VXLAN peer set could not be filled; retried at the next change");
        }
    }

    /// Reads everything and makes the kernel match (start-up, resync).
    /// Returns the revision each followed prefix was read at, to watch from.
    pub(super) fn converge_once(&self) -> Result<Vec<i64>, AgentError> {
        let started = Instant::now();
        let snaps = super::WATCHED
            .iter()
            .map(|p| self.metrics.datastore("list", || self.store.list(p)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        model.nodes.clear();
        model.blocks.clear();
        for e in snaps.iter().flat_map(|s| &s.entries) {
            model.update(&e.key, Some(&e.value));
        }
        let d = model.desired(&self.node);
        let mut nl = self.nl.lock().unwrap_or_else(|p| p.into_inner());
        let vxlan = nl.link(VXLAN_DEV)?;
        let c = overlay::converge(&mut *nl, &vxlan, &d)?;
        if c.added + c.removed > 0 {
            tracing::info!(
                added = c.added,
                removed = c.removed,
                routes = d.routes.len(),
                peers = d.peers.len(),
                took_ms = millis(started.elapsed()),
                "converged"
            );
        }
        model.applied = d;
        sync_vxlan_peers(&mut model);
        self.metrics.reconcile("resync", &changes(c));
        self.metrics
            .converged("resync", started.elapsed(), model.applied.peers.len());
        Ok(snaps.iter().map(|s| s.revision).collect())
    }

    /// One stream of the changes under every followed prefix, each watched
    /// from the revision it was read at (so nothing between the read and
    /// the watch is missed). A forwarding thread per prefix ends when its
    /// watch ends or the returned [`Following`] is dropped (it looks twice a
    /// second: a quiet etcd watch sends nothing to wake it).
    fn watch_all(&self, revs: &[i64]) -> Result<Following, AgentError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        for (prefix, rev) in super::WATCHED.iter().zip(revs) {
            let inner = self
                .metrics
                .datastore("watch", || self.store.watch(prefix, *rev))?;
            let tx = tx.clone();
            let stop = Arc::clone(&stop);
            crate::spawn("watch", move || {
                while !stop.load(Ordering::Acquire) {
                    match inner.recv_timeout(Duration::from_millis(500)) {
                        Ok(item) => {
                            if tx.send((Instant::now(), item)).is_err() {
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

    /// Applies one batch of datastore changes, the first of which reached
    /// the agent at `first_seen`, to the model and the kernel.
    fn apply_events(
        &self,
        events: &[podwire_store::Event],
        first_seen: Instant,
    ) -> Result<(), AgentError> {
        let started = Instant::now();
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        for ev in events {
            match ev {
                podwire_store::Event::Put(e) => model.update(&e.key, Some(&e.value)),
                podwire_store::Event::Delete { key, .. } => model.update(key, None),
                podwire_store::Event::Progress(_) => {}
            }
        }
        let d = model.desired(&self.node);
        if d == model.applied {
            self.metrics.reconcile("delta", &[]);
            return Ok(());
        }
        let mut nl = self.nl.lock().unwrap_or_else(|p| p.into_inner());
        let vxlan = nl.link(VXLAN_DEV)?;
        let c = overlay::apply_delta(&mut *nl, &vxlan, &model.applied, &d)?;
        model.applied = d;
        sync_vxlan_peers(&mut model);
        self.metrics.reconcile("delta", &changes(c));
        self.metrics
            .converged("delta", first_seen.elapsed(), model.applied.peers.len());
        tracing::info!(
            added = c.added,
            removed = c.removed,
            took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "applied change"
        );
        Ok(())
    }

    /// Converges, then follows the datastore's changes, resyncing fully now
    /// and then and giving empty blocks back. Never returns.
    pub fn converge_forever(&self) {
        let mut last_gc = Instant::now();
        loop {
            let revs = match self.converge_once() {
                Ok(r) => r,
                Err(e) => {
                    self.metrics.note_error("converge", &e.to_string());
                    tracing::warn!("converge: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let following = match self.watch_all(&revs) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("watch: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let rx = &following.rx;
            let resync_at = Instant::now() + RESYNC;
            loop {
                match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok((first_seen, Ok(ev))) => {
                        // Take whatever else arrived with it, apply once.
                        let mut batch = vec![ev];
                        while let Ok((_, Ok(more))) = rx.try_recv() {
                            batch.push(more);
                        }
                        if let Err(e) = self.apply_events(&batch, first_seen) {
                            self.metrics.note_error("converge", &e.to_string());
                            tracing::warn!("applying changes: {e}");
                            break;
                        }
                    }
                    Ok((_, Err(e))) => {
                        self.metrics.datastore_error("watch", &e.to_string());
                        tracing::warn!("watch: {e}");
                        break;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if last_gc.elapsed() > BLOCK_GC_EVERY {
                    last_gc = Instant::now();
                    let released = self.metrics.datastore("release_empty_blocks", || {
                        self.ipam
                            .release_empty_blocks(&self.node, self.cfg.block_grace.as_secs())
                    });
                    let n = released.as_ref().map(Vec::len).unwrap_or(0);
                    self.metrics.reconcile(
                        "block_gc",
                        &[("blocks_released", u64::try_from(n).unwrap_or(u64::MAX))],
                    );
                    match released {
                        Ok(v) if !v.is_empty() => {
                            tracing::info!(blocks = ?v, "released empty blocks")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("releasing empty blocks: {e}"),
                    }
                }
                if Instant::now() >= resync_at {
                    break;
                }
            }
        }
    }
}
