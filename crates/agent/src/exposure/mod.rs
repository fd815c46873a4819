//! Who reaches this node's pods: the external posture (outsiders kept away
//! from pods unless `--external-pod-access allow`) and the NetworkPolicies,
//! both from the cluster's records in the datastore, both enforced with
//! nftables.
//!
//! - [`view`] keeps the records by key; [`firewall`] applies a change in one
//!   transaction; [`records`] writes this node's endpoint and address
//!   records; [`follow`] lists and watches the datastore; [`backend`] wraps a
//!   mode's [`crate::Backend`] so every ADD is recorded and enforced before
//!   it is answered.
//! - The kernel never sees a state more open than the last one applied
//!   until the records say so: the agent rebuilds from the datastore before
//!   its first ADD, the table and the policy chain are never flushed without
//!   their new content in the same transaction, and a policy record that
//!   does not decode isolates its namespace until it is fixed (leaving it
//!   out would open what it meant to close).

pub(crate) mod backend;
pub(crate) mod firewall;
mod follow;
pub(crate) mod records;
pub(crate) mod view;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::Ipv4Net;
use podwire_cluster::{keys, EndpointRecord, ExternalPodAccess, PodRef};
use podwire_cni::config::Mode;
use podwire_store::{Datastore, Revision};

use crate::metrics::Metrics;
use crate::AgentError;
use firewall::{Change, Firewall};
use view::View;

/// How this node's exposure is decided.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub node: String,
    pub mode: Mode,
    /// `--external-allow-cidrs`: part of "the cluster" for the posture.
    pub allow: Vec<Ipv4Net>,
    /// `--external-pod-access`, published in the node record.
    pub access: ExternalPodAccess,
    /// The address the node sends from, published in the node record.
    pub primary: Option<Ipv4Addr>,
}

#[derive(Debug, Default)]
struct Inner {
    view: View,
    /// What the kernel holds (as far as this process applied it).
    applied: Change,
    /// This agent's own endpoint writes (key → revision, record or None
    /// for a delete): a full re-read taken before one of them must not undo
    /// it.
    local: BTreeMap<String, (Revision, Option<EndpointRecord>)>,
}

#[derive(Debug)]
pub(crate) struct Exposure {
    settings: Settings,
    store: Option<Arc<dyn Datastore>>,
    fw: Box<dyn Firewall>,
    metrics: Arc<Metrics>,
    /// This node's own addresses (interfaces), part of the cluster at once.
    own: Mutex<Vec<Ipv4Addr>>,
    inner: Mutex<Inner>,
}

impl Exposure {
    pub fn new(
        settings: Settings,
        store: Option<Arc<dyn Datastore>>,
        fw: Box<dyn Firewall>,
        metrics: Arc<Metrics>,
    ) -> Exposure {
        Exposure {
            settings,
            store,
            fw,
            metrics,
            own: Mutex::new(Vec::new()),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn own(&self) -> Vec<Ipv4Addr> {
        self.own.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets this node's own addresses; publishes them when a datastore is
    /// configured and they changed.
    pub fn set_own_addresses(&self, mut addrs: Vec<Ipv4Addr>) -> Result<(), AgentError> {
        addrs.sort();
        addrs.dedup();
        let changed = {
            let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *own != addrs;
            *own = addrs.clone();
            changed
        };
        if let Some(store) = &self.store {
            records::publish_node(store.as_ref(), &self.settings, &addrs, &self.metrics)?;
        }
        if changed {
            tracing::info!(addresses = ?addrs, "this node's addresses");
        }
        Ok(())
    }

    /// Reads every followed record and rebuilds the view; returns the
    /// revision each prefix was read at (to watch from). Without a datastore
    /// there is nothing to read.
    pub fn reload(&self) -> Result<Vec<Revision>, AgentError> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let snaps = view::FOLLOWED
            .iter()
            .map(|p| self.metrics.datastore("list", || store.list(p)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut inner = self.lock();
        inner.view.clear();
        for e in snaps.iter().flat_map(|s| &s.entries) {
            if let Err(r) = inner.view.update(&e.key, Some(&e.value)) {
                self.reject(&r);
            }
        }
        let endpoints_rev = view::FOLLOWED
            .iter()
            .position(|p| *p == keys::ENDPOINTS)
            .and_then(|i| snaps.get(i))
            .map(|s| s.revision)
            .unwrap_or(0);
        // This agent's writes the listing predates still hold.
        inner.local.retain(|_, (rev, _)| *rev > endpoints_rev);
        let local: Vec<(String, Option<EndpointRecord>)> = inner
            .local
            .iter()
            .map(|(k, (_, e))| (k.clone(), e.clone()))
            .collect();
        for (k, e) in local {
            match e {
                Some(e) => inner.view.put_endpoint(e),
                None => {
                    inner.view.remove_endpoint(&k);
                }
            }
        }
        Ok(snaps.iter().map(|s| s.revision).collect())
    }

    fn reject(&self, r: &view::Rejected) {
        self.metrics
            .note_error("cluster_record", &format!("{}: {}", r.key, r.reason));
        tracing::error!(key = %r.key, "record left out: {}", r.reason);
    }

    /// What the kernel should hold now.
    fn desired(&self, view: &View) -> Change {
        let own = self.own();
        let mut extra = self.settings.allow.clone();
        extra.extend(own.iter().copied().map(Ipv4Net::from));
        let policy = self.store.as_ref().map(|_| {
            let cv = view.cluster_view(&self.settings.node, &own);
            let rules = podwire_policy::compile(&cv, &self.settings.node);
            firewall::ruleset(podwire_policy::render_nft(&rules))
        });
        Change {
            cluster_nets: Some(view.cluster_nets(&extra)),
            policy,
        }
    }

    /// The full desired state, for the node's first ruleset (applied in the
    /// same transaction as the node's rules at start-up); recorded as applied
    /// by [`Exposure::applied_at_start`].
    pub fn desired_now(&self) -> Change {
        let inner = self.lock();
        self.desired(&inner.view)
    }

    pub fn applied_at_start(&self, change: Change) {
        self.lock().applied = change;
    }

    /// Makes the kernel match the view (only what changed).
    pub fn sync(&self) -> Result<(), AgentError> {
        let mut inner = self.lock();
        self.sync_locked(&mut inner)
    }

    fn sync_locked(&self, inner: &mut Inner) -> Result<(), AgentError> {
        let want = self.desired(&inner.view);
        let change = Change {
            cluster_nets: want
                .cluster_nets
                .clone()
                .filter(|n| inner.applied.cluster_nets.as_ref() != Some(n)),
            policy: want
                .policy
                .clone()
                .filter(|p| inner.applied.policy.as_ref() != Some(p)),
        };
        if change.is_empty() {
            return Ok(());
        }
        self.fw.apply(&change)?;
        if change.cluster_nets.is_some() {
            inner.applied.cluster_nets = want.cluster_nets;
        }
        if change.policy.is_some() {
            inner.applied.policy = want.policy;
        }
        Ok(())
    }

    /// ADD: the endpoint is recorded in the datastore and the node's rules
    /// for it are in the kernel before this returns. On failure nothing of
    /// it is left (the caller releases the address).
    pub fn on_add(
        &self,
        key: &podwire_proto::AttachmentKey,
        ip: Ipv4Addr,
        pod_namespace: Option<&str>,
        pod_name: Option<&str>,
    ) -> Result<(), String> {
        let pod = match (pod_namespace, pod_name) {
            (Some(ns), Some(name)) => match PodRef::new(ns, name) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(container = %key.container_id, "pod identity not usable, treated as none: {e}");
                    None
                }
            },
            _ => None,
        };
        let rec = EndpointRecord {
            node: self.settings.node.clone(),
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            ip,
            pod,
        };
        rec.validate()
            .map_err(|e| format!("endpoint record: {e}"))?;
        let ekey = keys::endpoint(&rec);
        let rev = match &self.store {
            Some(store) => Some(
                records::put_endpoint(store.as_ref(), &rec, &self.metrics)
                    .map_err(|e| format!("writing the endpoint record {ekey}: {e}"))?,
            ),
            None => None,
        };
        let mut inner = self.lock();
        let before = inner.view.remove_endpoint(&ekey);
        inner.view.put_endpoint(rec.clone());
        if let Some(rev) = rev {
            inner.local.insert(ekey.clone(), (rev, Some(rec)));
        }
        if let Err(e) = self.sync_locked(&mut inner) {
            inner.view.remove_endpoint(&ekey);
            if let Some(b) = before {
                inner.view.put_endpoint(b);
            }
            inner.local.remove(&ekey);
            drop(inner);
            if let Some(store) = &self.store {
                if let Err(e) = records::delete_endpoint(store.as_ref(), &ekey, &self.metrics) {
                    tracing::warn!(key = %ekey, "endpoint record of a failed ADD remains: {e}");
                }
            }
            return Err(format!("installing the rules for {ip}: {e}"));
        }
        Ok(())
    }

    /// At start: every pod this node holds gets its endpoint record (pods
    /// from before the datastore was configured, or whose ADD wrote none),
    /// and this node's records of pods it no longer holds go (a DEL that
    /// never reached the agent).
    pub fn adopt(&self, live: &[podwire_proto::Allocation]) -> Result<(), AgentError> {
        let mut keep = std::collections::BTreeSet::new();
        for a in live {
            let pod = match (&a.pod_namespace, &a.pod_name) {
                (Some(ns), Some(n)) => PodRef::new(ns, n).ok(),
                _ => None,
            };
            let rec = EndpointRecord {
                node: self.settings.node.clone(),
                container_id: a.key.container_id.clone(),
                ifname: a.key.ifname.clone(),
                ip: a.ip,
                pod,
            };
            if let Err(e) = rec.validate() {
                tracing::warn!(ip = %a.ip, "a live pod has no usable endpoint record: {e}");
                continue;
            }
            let key = keys::endpoint(&rec);
            keep.insert(key.clone());
            if let Some(store) = &self.store {
                let rev = records::put_endpoint(store.as_ref(), &rec, &self.metrics)?;
                self.lock().local.insert(key, (rev, Some(rec.clone())));
            }
            self.lock().view.put_endpoint(rec);
        }
        let stale: Vec<String> = {
            let inner = self.lock();
            inner
                .view
                .endpoints_of(&self.settings.node)
                .map(keys::endpoint)
                .filter(|k| !keep.contains(k))
                .collect()
        };
        for k in stale {
            if let Some(store) = &self.store {
                let rev = records::delete_endpoint(store.as_ref(), &k, &self.metrics)?;
                if let Some(rev) = rev {
                    self.lock().local.insert(k.clone(), (rev, None));
                }
            }
            tracing::info!(key = %k, "endpoint record of a pod this node no longer holds removed");
            self.lock().view.remove_endpoint(&k);
        }
        Ok(())
    }

    /// A pod whose address the cloud took back (vpc mode): its endpoint
    /// record goes, so the address leaves the cluster set and the policy
    /// sets at once; the attachment itself stays until its DEL (the pod
    /// has no working address and must be recreated — the agent logs so).
    pub fn on_lost(&self, key: &podwire_proto::AttachmentKey) -> Result<(), String> {
        self.on_del(key)
    }

    /// DEL (and GC): the endpoint record goes first, so no record names an
    /// address that is free again. An error means nothing was released.
    pub fn on_del(&self, key: &podwire_proto::AttachmentKey) -> Result<(), String> {
        let ekey = keys::endpoint_of(&self.settings.node, &key.container_id, &key.ifname);
        let rev = match &self.store {
            Some(store) => records::delete_endpoint(store.as_ref(), &ekey, &self.metrics)
                .map_err(|e| format!("deleting the endpoint record {ekey}: {e}"))?,
            None => None,
        };
        let mut inner = self.lock();
        inner.view.remove_endpoint(&ekey);
        if let Some(rev) = rev {
            inner.local.insert(ekey.clone(), (rev, None));
        }
        // The pod is gone: a failure here leaves rules for a free address,
        // replaced at the next change.
        if let Err(e) = self.sync_locked(&mut inner) {
            tracing::warn!(key = %ekey, "rules not updated after DEL: {e}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
