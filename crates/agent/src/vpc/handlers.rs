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
        let (what, total) = if st.pool.prefix_count() > 0 {
            (
                "address slots, each a /28 prefix of 16 addresses,",
                l.max_prefix_ips(),
            )
        } else {
            ("secondary IPv4 addresses", l.max_pod_ips())
        };
        format!(
            "node {} ({}, {}) has no IP address left for {who}: the instance type allows {} ENIs x {} {what} = {} pod IPs, and all {} are in use. \
             Schedule the pod on another node, add nodes, or use an instance type with more ENIs or addresses per ENI.",
            n.name, n.instance_id, n.instance_type, l.max_enis, l.secondary_per_eni, total, st.pool.assigned()
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
        // Whether this ADD found the pool empty (counted once, by outcome).
        let mut waited = false;
        loop {
            let now = Instant::now();
            if let Some(got) = st.pool.allocate(&owner(&req.key), now) {
                if waited {
                    self.metrics.no_address("waited");
                }
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
                    st.release(got.ip, now);
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
                self.metrics.no_address("exhausted");
                return Response::Error {
                    kind: ErrorKind::Exhausted,
                    message: self.exhausted_message(&st, &who),
                };
            }
            if let Some((kind, msg)) = &st.cloud_error {
                if *kind == ErrorKind::Exhausted {
                    self.metrics.no_address("exhausted");
                    return Response::Error {
                        kind: *kind,
                        message: format!("node {}: {msg}", self.node.name),
                    };
                }
            }
            if now >= deadline {
                self.metrics.no_address("timed_out");
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
            waited = true;
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
        st.release(a.ip, Instant::now());
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
        } else if let Some((ErrorKind::Exhausted, msg)) = &st.cloud_error {
            (false, format!("node {}: {msg}", self.node.name))
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use podwire_ipam::EniPool;
    use podwire_proto::{ErrorKind, Response};

    use super::super::testing::{agent, req, state_dir, LIMITS};
    use super::super::VpcAgent;

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, n)
    }

    /// A pool with the primary ENI and `free` addresses on it.
    fn pool(free: u8) -> EniPool {
        let mut p = EniPool::new(LIMITS, Duration::from_secs(30));
        p.add_eni("eni-0", 0, podwire_proto::TABLE_MAIN);
        p.add_ips("eni-0", &(1..=free).map(ip).collect::<Vec<_>>());
        p
    }

    fn error(r: Response) -> (ErrorKind, String) {
        match r {
            Response::Error { kind, message } => (kind, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn add_takes_a_free_address_and_checkpoints_it() {
        let dir = state_dir();
        let a = agent(pool(1), None, 0, &dir);
        let r = a.add(req("c1"), Instant::now() + Duration::from_secs(5));
        let Response::Allocated { allocation } = r else {
            panic!("expected an allocation, got {r:?}");
        };
        assert_eq!(allocation.ip, ip(1));
        assert_eq!(a.checkpoint.load().expect("load"), vec![allocation]);
        // The same attachment again is refused, not given a second address.
        let (kind, msg) = error(a.add(req("c1"), Instant::now() + Duration::from_secs(5)));
        assert_eq!(kind, ErrorKind::AlreadyExists, "{msg}");
    }

    #[test]
    fn an_empty_pool_waits_for_the_deadline_then_says_try_again_and_why() {
        let dir = state_dir();
        let a = agent(pool(0), None, 0, &dir);
        let started = Instant::now();
        let wait = Duration::from_millis(300);
        let (kind, msg) = error(a.add(req("c1"), started + wait));
        assert!(started.elapsed() >= wait, "gave up early");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited too long"
        );
        assert_eq!(kind, ErrorKind::TryAgain);
        assert!(msg.contains("not delivered addresses yet"), "{msg}");
        assert!(msg.contains("pod default/c1"), "{msg}");

        // The last cloud failure is the reason given.
        a.lock().cloud_error = Some((ErrorKind::TryAgain, "EC2 throttled the call".into()));
        let (kind, msg) = error(a.add(req("c1"), Instant::now() + wait));
        assert_eq!(kind, ErrorKind::TryAgain);
        assert!(msg.contains("EC2 throttled"), "{msg}");
    }

    #[test]
    fn an_add_waits_for_the_pool_manager_and_gets_what_it_adds() {
        let dir = state_dir();
        let a = Arc::new(agent(pool(0), None, 0, &dir));
        // The pool manager's stand-in: wakes when an ADD signals it needs
        // addresses, then adds one.
        let manager = {
            let a = a.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut st = a.lock();
                while st.pool.free_total() == 0 {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let (g, timeout) = a
                        .changed
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner());
                    st = g;
                    if timeout.timed_out() {
                        // Never signalled: deliver nothing, the ADD fails.
                        return;
                    }
                    st.pool.add_ips("eni-0", &[ip(9)]);
                }
                a.changed.notify_all();
            })
        };
        let started = Instant::now();
        let r = a.add(req("c1"), started + Duration::from_secs(20));
        manager.join().expect("manager");
        match r {
            Response::Allocated { allocation } => assert_eq!(allocation.ip, ip(9)),
            other => panic!("expected an allocation, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the ADD was not woken when the address came"
        );
    }

    #[test]
    fn exhausted_at_the_limit_without_waiting() {
        let dir = state_dir();
        let mut p = EniPool::new(LIMITS, Duration::from_secs(30));
        p.add_eni("eni-0", 0, podwire_proto::TABLE_MAIN);
        p.add_eni("eni-1", 1, 2);
        p.add_ips("eni-0", &[ip(1), ip(2), ip(3)]);
        p.add_ips("eni-1", &[ip(4), ip(5), ip(6)]);
        let a = agent(p, None, 0, &dir);
        for n in 1..=6 {
            let r = a.add(
                req(&format!("c{n}")),
                Instant::now() + Duration::from_secs(5),
            );
            assert!(matches!(r, Response::Allocated { .. }), "{r:?}");
        }
        let started = Instant::now();
        let (kind, msg) = error(a.add(req("c7"), started + Duration::from_secs(30)));
        assert!(started.elapsed() < Duration::from_secs(2), "it waited");
        assert_eq!(kind, ErrorKind::Exhausted);
        assert!(
            msg.contains("2 ENIs x 3") && msg.contains("all 6 are in use"),
            "{msg}"
        );

        // Released but cooling down: not exhausted, try again, and why.
        let key = req("c1").key;
        assert!(
            matches!(a.del(&key), Response::Released { allocations } if allocations.len() == 1)
        );
        let (kind, msg) = error(a.add(req("c7"), Instant::now() + Duration::from_millis(200)));
        assert_eq!(kind, ErrorKind::TryAgain);
        assert!(msg.contains("cooling down"), "{msg}");
    }

    #[test]
    fn a_cloud_limit_is_exhausted_at_once() {
        let dir = state_dir();
        let a = agent(pool(0), None, 0, &dir);
        a.lock().cloud_error = Some((
            ErrorKind::Exhausted,
            "the subnet has no free addresses".into(),
        ));
        let started = Instant::now();
        let (kind, msg) = error(a.add(req("c1"), started + Duration::from_secs(30)));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(kind, ErrorKind::Exhausted);
        assert!(msg.contains("subnet has no free addresses"), "{msg}");
    }

    #[test]
    fn gc_releases_only_the_network_s_attachments_not_listed() {
        let dir = state_dir();
        let a: VpcAgent = agent(pool(3), None, 0, &dir);
        for c in ["c1", "c2"] {
            a.add(req(c), Instant::now() + Duration::from_secs(5));
        }
        let mut other = req("c3");
        other.key.network = "other".into();
        a.add(other, Instant::now() + Duration::from_secs(5));
        let r = a.gc("pw", &[req("c2").key]);
        match r {
            Response::Released { allocations } => {
                assert_eq!(allocations.len(), 1);
                assert_eq!(allocations[0].key.container_id, "c1");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.checkpoint.load().expect("load").len(), 2);
    }
}
