//! The agent's state and the request handlers that read and change it.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use ipnet::Ipv4Net;
use podwire_cloud::imds::InstanceIdentity;
use podwire_cloud::{Credentials, Ec2Client, Imds};
use podwire_dataplane::eni::{self, EniSpec};
use podwire_ipam::{EniPool, PoolLimits, PoolPlan, PoolTargets};
use podwire_netlink::{sysctl, Handle, MacAddr};
use podwire_proto::{
    AddRequest, Allocation, AttachmentKey, ErrorKind, Request, Response, StatusInfo,
};

use crate::checkpoint::Checkpoint;
use crate::{AgentConfig, AgentError};

/// Facts about this node that do not change while the agent runs.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub instance_id: String,
    pub instance_type: String,
    pub subnet_id: String,
    pub subnet: Ipv4Net,
    pub security_groups: Vec<String>,
    pub limits: PoolLimits,
}

#[derive(Debug)]
pub struct State {
    pub pool: EniPool,
    pub allocations: BTreeMap<AttachmentKey, Allocation>,
    /// The last plan the pool manager acted on.
    pub last_plan: PoolPlan,
    /// The last cloud failure, cleared by the next success.
    pub cloud_error: Option<(ErrorKind, String)>,
}

#[derive(Debug)]
pub struct Shared {
    pub node: NodeInfo,
    pub config: AgentConfig,
    pub ec2: Ec2Client,
    pub checkpoint: Checkpoint,
    state: Mutex<State>,
    /// Signalled when the pool changes or an ADD needs addresses.
    pub changed: Condvar,
}

fn credentials(imds: &Imds) -> Result<Credentials, AgentError> {
    if let (Ok(ak), Ok(sk)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok(Credentials {
            access_key_id: ak,
            secret_access_key: sk,
            session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
        });
    }
    Ok(imds.credentials()?)
}

fn owner(key: &AttachmentKey) -> String {
    format!("{}/{}/{}", key.network, key.container_id, key.ifname)
}

impl Shared {
    /// Learns the instance, rebuilds the pool from the cloud and the
    /// checkpoint, and prepares the kernel.
    pub fn start(config: &AgentConfig) -> Result<Shared, AgentError> {
        let imds = Imds::connect(&config.imds_endpoint)?;
        let id: InstanceIdentity = imds.identity()?;
        let creds = credentials(&imds)?;
        let endpoint = config
            .ec2_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com", id.region));
        let ec2 = Ec2Client::new(&endpoint, &id.region, creds);
        let it = ec2.describe_instance_type(&id.instance_type)?;
        let limits = PoolLimits {
            max_enis: it.max_enis,
            secondary_per_eni: it.ipv4_per_eni.saturating_sub(1),
        };
        let primary = id
            .enis
            .iter()
            .find(|e| e.device_number == 0)
            .ok_or_else(|| AgentError::Config("instance metadata lists no device-0 ENI".into()))?;
        let node = NodeInfo {
            name: config.node_name.clone(),
            instance_id: id.instance_id.clone(),
            instance_type: id.instance_type.clone(),
            subnet_id: primary.subnet_id.clone(),
            subnet: primary.subnet_cidr,
            security_groups: primary.security_groups.clone(),
            limits,
        };

        // Node-wide kernel settings (idempotent).
        sysctl::write("net/ipv4/ip_forward", "1")?;
        let mut nl = Handle::new()?;
        let primary_mac: MacAddr = id.primary_mac.parse().map_err(AgentError::Config)?;
        if let Some(l) = nl.links()?.into_iter().find(|l| l.mac == Some(primary_mac)) {
            eni::set_loose_rp_filter(&l.name)?;
        }

        let mut pool = EniPool::new(limits, config.ip_cooldown);
        for e in ec2.describe_instance_enis(&id.instance_id)? {
            let device = e.attachment.as_ref().map(|a| a.device_index).unwrap_or(0);
            pool.add_eni(&e.id, device, eni::route_table_for(device));
            pool.add_ips(&e.id, &e.secondary_ips().collect::<Vec<_>>());
            if device > 0 {
                let mac: MacAddr = e.mac.parse().map_err(AgentError::Config)?;
                let link = eni::wait_for_link(&mut nl, mac, std::time::Duration::from_secs(10))?;
                eni::configure_secondary(
                    &mut nl,
                    &EniSpec {
                        mac,
                        device_number: device,
                        primary_ip: e.private_ip,
                        subnet: node.subnet,
                        mtu: config.eni_mtu,
                    },
                    &link,
                )?;
            }
        }

        let checkpoint = Checkpoint::new(&config.state_dir)?;
        let mut allocations = BTreeMap::new();
        let saved = checkpoint.load()?;
        let saved_len = saved.len();
        for a in saved {
            if pool.restore(a.ip, &owner(&a.key)) {
                allocations.insert(a.key.clone(), a);
            } else {
                tracing::warn!(ip = %a.ip, container = %a.key.container_id, "checkpointed address is no longer on this instance; dropped");
            }
        }
        if allocations.len() != saved_len {
            checkpoint.save(&allocations.values().cloned().collect::<Vec<_>>())?;
        }
        tracing::info!(
            instance = %node.instance_id, instance_type = %node.instance_type,
            enis = pool.eni_count(), restored = allocations.len(), "state rebuilt"
        );
        Ok(Shared {
            node,
            config: config.clone(),
            ec2,
            checkpoint,
            state: Mutex::new(State {
                pool,
                allocations,
                last_plan: PoolPlan::Satisfied,
                cloud_error: None,
            }),
            changed: Condvar::new(),
        })
    }

    pub fn node_name(&self) -> &str {
        &self.node.name
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every change
        // is a single insert/remove), so recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn targets(&self) -> PoolTargets {
        // Like the VPC CNI: an explicit minimum without a warm target means
        // no warm margin; with neither, keep one ENI's worth free.
        let warm = match (self.config.warm_ip_target, self.config.minimum_ip_target) {
            (Some(w), _) => w,
            (None, 0) => self.node.limits.secondary_per_eni,
            (None, _) => 0,
        };
        PoolTargets {
            warm,
            minimum: self.config.minimum_ip_target,
            whole_enis: self.config.warm_ip_target.is_none(),
        }
    }

    fn save(&self, st: &State) -> Result<(), AgentError> {
        self.checkpoint
            .save(&st.allocations.values().cloned().collect::<Vec<_>>())
    }

    pub fn handle(&self, req: Request) -> Response {
        match req {
            Request::Add(add) => self.add(add),
            Request::Del { key } => self.del(&key),
            Request::Get { key } => Response::Found {
                allocation: self.lock().allocations.get(&key).cloned(),
            },
            Request::Status => self.status(),
            Request::Gc { network, valid } => self.gc(&network, &valid),
        }
    }

    fn exhausted_message(&self, st: &State, who: &str) -> String {
        let l = self.node.limits;
        let n = &self.node;
        format!(
            "node {} ({}, {}) has no IP address left for {who}: the instance type allows {} ENIs x {} secondary IPv4 addresses = {} pod IPs, and all {} are in use. \
             Schedule the pod on another node, add nodes, or use an instance type with more ENIs or addresses per ENI.",
            n.name, n.instance_id, n.instance_type, l.max_enis, l.secondary_per_eni, l.max_pod_ips(), st.pool.assigned()
        )
    }

    fn add(&self, req: AddRequest) -> Response {
        let who = match (&req.pod_namespace, &req.pod_name) {
            (Some(ns), Some(n)) => format!("pod {ns}/{n}"),
            _ => format!("container {}", req.key.container_id),
        };
        let deadline = Instant::now() + self.config.add_wait;
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
                    eni_id: got.eni_id,
                    device_number: got.device_number,
                    route_table: got.route_table,
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
                tracing::info!(ip = %alloc.ip, %who, eni = %alloc.eni_id, "address assigned");
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

    fn del(&self, key: &AttachmentKey) -> Response {
        let mut st = self.lock();
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

    fn gc(&self, network: &str, valid: &[AttachmentKey]) -> Response {
        let mut st = self.lock();
        let stale: Vec<AttachmentKey> = st
            .allocations
            .keys()
            .filter(|k| k.network == network && !valid.contains(k))
            .cloned()
            .collect();
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

    fn status(&self) -> Response {
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
