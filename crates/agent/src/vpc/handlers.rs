//! vpc mode's answers to the plugin: ADD takes a free address from the
//! pool (waiting for the pool manager when it is empty, until the caller's
//! deadline), DEL and GC give addresses back, STATUS says whether ADDs can
//! be served. Every change is checkpointed before it is answered.

use std::time::Instant;

use podwire_proto::{
    AddRequest, Allocation, AttachmentKey, Egress, ErrorKind, Response, StatusInfo,
};

use super::{owner, State, VpcAgent};

impl VpcAgent {
    fn exhausted_message(&self, st: &State, who: &str) -> String {
        let l = self.node.limits;
        let n = &self.node;
        format!(
            "node {} ({}, {}) has no IP address left for {who}: the instance type allows {} ENIs x {} secondary IPv4 addresses = {} pod IPs, and all {} are in use. \
             Schedule the pod on another node, add nodes, or use an instance type with more ENIs or addresses per ENI.",
            n.name, n.instance_id, n.instance_type, l.max_enis, l.secondary_per_eni, l.max_pod_ips(), st.pool.assigned()
        )
    }

    pub(super) fn add(&self, req: AddRequest, deadline: Instant) -> Response {
        let who = match (&req.pod_namespace, &req.pod_name) {
            (Some(ns), Some(n)) => format!("pod {ns}/{n}"),
            _ => format!("container {}", req.key.container_id),
        };
        let mut st = self.lock();
        if let Some(a) = st.allocations.get(&req.key) {
            return Response::Error {
                kind: ErrorKind::AlreadyExists,
                message: format!(
                    "container {} already has {} on {} (DEL it first)",
                    req.key.container_id, a.ip, req.key.ifname
                ),
            };
        }
        loop {
            let now = Instant::now();
            if let Some(got) = st.pool.allocate(&owner(&req.key), now) {
                let alloc = Allocation {
                    key: req.key.clone(),
                    ip: got.ip,
                    egress: egress_of(&got),
                    pod_namespace: req.pod_namespace.clone(),
                    pod_name: req.pod_name.clone(),
                    mtu: None,
                };
                st.allocations.insert(req.key.clone(), alloc.clone());
                if let Err(e) = self.save(&st) {
                    st.allocations.remove(&req.key);
                    st.pool.release(got.ip, now);
                    return Response::Error {
                        kind: ErrorKind::Internal,
                        message: e.to_string(),
                    };
                }
                // Let the pool manager top the warm pool up again.
                self.changed.notify_all();
                tracing::info!(ip = %alloc.ip, %who, eni = %got.eni_id, "address assigned");
                return Response::Allocated { allocation: alloc };
            }
            if st.pool.at_limit() && st.pool.free_total() == 0 {
                return Response::Error {
                    kind: ErrorKind::Exhausted,
                    message: self.exhausted_message(&st, &who),
                };
            }
            if let Some((kind, msg)) = &st.cloud_error {
                if *kind == ErrorKind::Exhausted {
                    return Response::Error {
                        kind: *kind,
                        message: format!("node {}: {msg}", self.node.name),
                    };
                }
            }
            if now >= deadline {
                let why = if st.pool.free_total() > 0 {
                    "every free address is still cooling down after release".to_string()
                } else {
                    st.cloud_error
                        .as_ref()
                        .map(|(_, m)| m.clone())
                        .unwrap_or_else(|| "the cloud has not delivered addresses yet".into())
                };
                return Response::Error {
                    kind: ErrorKind::TryAgain,
                    message: format!("node {}: no address ready for {who}: {why}", self.node.name),
                };
            }
            self.changed.notify_all();
            let wait = deadline
                .saturating_duration_since(now)
                .min(std::time::Duration::from_millis(500));
            st = self
                .changed
                .wait_timeout(st, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn release_locked(&self, st: &mut State, key: &AttachmentKey) -> Option<Allocation> {
        let a = st.allocations.remove(key)?;
        st.pool.release(a.ip, Instant::now());
        Some(a)
    }

    pub(super) fn del(&self, key: &AttachmentKey) -> Response {
        let mut st = self.lock();
        // Before the address is free again: no later pod inherits its flows.
        crate::forget_flows(st.allocations.get(key).map(|a| a.ip));
        let released: Vec<Allocation> = self.release_locked(&mut st, key).into_iter().collect();
        if !released.is_empty() {
            if let Err(e) = self.save(&st) {
                return Response::Error {
                    kind: ErrorKind::Internal,
                    message: e.to_string(),
                };
            }
            self.changed.notify_all();
        }
        Response::Released {
            allocations: released,
        }
    }

    pub(super) fn gc(&self, network: &str, valid: &[AttachmentKey]) -> Response {
        let mut st = self.lock();
        let stale: Vec<AttachmentKey> = st
            .allocations
            .keys()
            .filter(|k| k.network == network && !valid.contains(k))
            .cloned()
            .collect();
        crate::forget_flows(
            stale
                .iter()
                .filter_map(|k| st.allocations.get(k).map(|a| a.ip)),
        );
        let released: Vec<Allocation> = stale
            .iter()
            .filter_map(|k| self.release_locked(&mut st, k))
            .collect();
        if !released.is_empty() {
            if let Err(e) = self.save(&st) {
                return Response::Error {
                    kind: ErrorKind::Internal,
                    message: e.to_string(),
                };
            }
            tracing::info!(count = released.len(), "GC released stale allocations");
        }
        Response::Released {
            allocations: released,
        }
    }

    pub(super) fn status(&self) -> Response {
        let st = self.lock();
        let free = st.pool.free(Instant::now());
        let (ready, message) = if free > 0 {
            (true, format!("{free} addresses ready"))
        } else if st.pool.at_limit() {
            (false, self.exhausted_message(&st, "new pods"))
        } else {
            (
                true,
                "addresses are being fetched from the cloud".to_string(),
            )
        };
        Response::Status {
            status: StatusInfo {
                node: self.node.name.clone(),
                ready,
                free_ips: free,
                assigned_ips: st.pool.assigned(),
                message,
            },
        }
    }
}

/// How traffic from an address of this ENI leaves the node.
fn egress_of(got: &podwire_ipam::eni_pool::Assigned) -> Egress {
    if got.route_table == podwire_proto::TABLE_MAIN {
        Egress::Main
    } else {
        Egress::EniTable {
            eni_id: got.eni_id.clone(),
            device_number: got.device_number,
            table: got.route_table,
        }
    }
}
