//! The agent in vpc mode: pod addresses are secondary IPs of the node's
//! ENIs. This module holds the node's facts and the pool's state; the
//! request handlers are in [`handlers`], the loop that keeps the warm pool
//! filled in [`pool`]. It ends with the mode's [`Backend`] implementation.

mod handlers;
mod introspect;
pub mod pool;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use ipnet::Ipv4Net;
use podwire_cloud::imds::InstanceIdentity;
use podwire_cloud::{Credentials, Ec2Client, Imds};
use podwire_dataplane::eni::{self, EniSpec};
use podwire_dataplane::routing::route_table_for;
use podwire_ipam::{EniPool, PoolLimits, PoolPlan, PoolTargets};
use podwire_netlink::{sysctl, Handle, MacAddr};
use podwire_proto::{Allocation, AttachmentKey, ErrorKind, Request, Response};

use crate::checkpoint::Checkpoint;
use crate::metrics::Metrics;
use crate::{AgentConfig, AgentError, Backend, VpcConfig};

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
    /// Which address is on which ENI, and when free ones were released:
    /// the pool keeps these privately; introspection shows them per ENI.
    pub ledger: Ledger,
}

/// The agent's record of the pool's layout, changed only through the
/// [`State`] methods below together with the pool.
#[derive(Debug, Default)]
pub struct Ledger {
    /// ENI id → (device index, its secondary addresses).
    pub enis: BTreeMap<String, (u32, BTreeSet<Ipv4Addr>)>,
    /// Free addresses released since start (they may be cooling down).
    pub released: BTreeMap<Ipv4Addr, Instant>,
}

impl State {
    pub fn add_eni(&mut self, id: &str, device: u32, route_table: u32) {
        self.pool.add_eni(id, device, route_table);
        self.ledger
            .enis
            .entry(id.to_string())
            .or_insert((device, BTreeSet::new()));
    }

    pub fn add_ips(&mut self, eni_id: &str, ips: &[Ipv4Addr]) {
        self.pool.add_ips(eni_id, ips);
        if let Some((_, set)) = self.ledger.enis.get_mut(eni_id) {
            set.extend(ips.iter().copied());
        }
    }

    /// Addresses given back to the cloud.
    pub fn forget_ips(&mut self, eni_id: &str, ips: &[Ipv4Addr]) {
        if let Some((_, set)) = self.ledger.enis.get_mut(eni_id) {
            for ip in ips {
                set.remove(ip);
                self.ledger.released.remove(ip);
            }
        }
    }

    pub fn release(&mut self, ip: Ipv4Addr, now: Instant) {
        if self.pool.release(ip, now) {
            self.ledger.released.insert(ip, now);
        }
    }
}

#[derive(Debug)]
pub struct VpcAgent {
    pub node: NodeInfo,
    pub config: VpcConfig,
    pub ec2: Ec2Client,
    pub checkpoint: Checkpoint,
    pub metrics: Arc<Metrics>,
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

impl VpcAgent {
    /// Learns the instance, rebuilds the pool from the cloud and the
    /// checkpoint, and prepares the kernel.
    pub fn start(
        agent: &AgentConfig,
        config: &VpcConfig,
        metrics: Arc<Metrics>,
    ) -> Result<VpcAgent, AgentError> {
        use crate::retry::{transient, STARTUP_BUDGET};
        let imds_transient = |e: &podwire_cloud::ImdsError| e.is_transient();
        let ec2_transient = |e: &podwire_cloud::Ec2Error| e.is_transient();
        let m = &metrics;
        let imds = transient("IMDS token", STARTUP_BUDGET, imds_transient, || {
            m.imds("token", || Imds::connect(&config.imds_endpoint))
        })?;
        let id: InstanceIdentity =
            transient("IMDS identity", STARTUP_BUDGET, imds_transient, || {
                m.imds("identity", || imds.identity())
            })?;
        let creds = transient(
            "IMDS credentials",
            STARTUP_BUDGET,
            |e: &AgentError| matches!(e, AgentError::Imds(i) if i.is_transient()),
            || m.imds("credentials", || credentials(&imds)),
        )?;
        let endpoint = config
            .ec2_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com", id.region));
        let ec2 = Ec2Client::new(&endpoint, &id.region, creds);
        let it = transient(
            "DescribeInstanceTypes",
            STARTUP_BUDGET,
            ec2_transient,
            || {
                m.ec2("DescribeInstanceTypes", || {
                    ec2.describe_instance_type(&id.instance_type)
                })
            },
        )?;
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
            name: agent.node_name.clone(),
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
        let enis = transient(
            "DescribeNetworkInterfaces",
            STARTUP_BUDGET,
            ec2_transient,
            || {
                m.ec2("DescribeNetworkInterfaces", || {
                    ec2.describe_instance_enis(&id.instance_id)
                })
            },
        )?;
        let mut ledger = Ledger::default();
        for e in enis {
            let device = e.attachment.as_ref().map(|a| a.device_index).unwrap_or(0);
            pool.add_eni(&e.id, device, route_table_for(device));
            let ips: Vec<Ipv4Addr> = e.secondary_ips().collect();
            pool.add_ips(&e.id, &ips);
            ledger
                .enis
                .insert(e.id.clone(), (device, ips.into_iter().collect()));
            if device > 0 {
                let mac: MacAddr = e.mac.parse().map_err(AgentError::Config)?;
                let link = eni::wait_for_link(&mut nl, mac, pool::ENI_LINK_WAIT)?;
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

        let checkpoint = Checkpoint::new(&agent.state_dir)?;
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
        Ok(VpcAgent {
            node,
            config: config.clone(),
            ec2,
            checkpoint,
            metrics,
            state: Mutex::new(State {
                pool,
                allocations,
                last_plan: PoolPlan::Satisfied,
                cloud_error: None,
                ledger,
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
}

impl Backend for VpcAgent {
    fn handle(&self, req: Request, deadline: Instant) -> Response {
        match req {
            Request::Add(add) => self.add(add, deadline),
            Request::Del { key } => self.del(&key),
            Request::Get { key } => Response::Found {
                allocation: self.lock().allocations.get(&key).cloned(),
            },
            Request::Status => self.status(),
            Request::Gc { network, valid } => self.gc(&network, &valid),
        }
    }

    fn state(&self) -> crate::introspect::NodeState {
        self.introspect(Instant::now())
    }
}

#[cfg(test)]
impl VpcAgent {
    /// An agent over a given pool with no instance behind it: no IMDS, no
    /// EC2 call, no kernel (the EC2 client points at a loopback port and is
    /// never used by the handlers). For root-free tests of the ADD wait,
    /// DEL/GC and the pool targets.
    pub(crate) fn for_test(
        node: NodeInfo,
        config: VpcConfig,
        pool: EniPool,
        state_dir: &std::path::Path,
    ) -> Result<VpcAgent, AgentError> {
        let creds = Credentials {
            access_key_id: "pwt".into(),
            secret_access_key: "pwt".into(),
            session_token: None,
        };
        Ok(VpcAgent {
            node,
            config,
            ec2: Ec2Client::new("http://127.0.0.1:9", "pwt-region", creds),
            checkpoint: Checkpoint::new(state_dir)?,
            metrics: Arc::new(Metrics::new()),
            state: Mutex::new(State {
                pool,
                allocations: BTreeMap::new(),
                last_plan: PoolPlan::Satisfied,
                cloud_error: None,
                ledger: Ledger::default(),
            }),
            changed: Condvar::new(),
        })
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Shared by the vpc tests: a node, a config, a state dir.

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use podwire_ipam::{EniPool, PoolLimits};

    use super::{NodeInfo, VpcAgent};
    use crate::VpcConfig;

    pub const LIMITS: PoolLimits = PoolLimits {
        max_enis: 2,
        secondary_per_eni: 3,
    };

    pub fn config(warm: Option<u32>, minimum: u32) -> VpcConfig {
        VpcConfig {
            imds_endpoint: "http://127.0.0.1:9".into(),
            ec2_endpoint: None,
            warm_ip_target: warm,
            minimum_ip_target: minimum,
            ip_cooldown: Duration::from_secs(30),
            pool_decrease_interval: Duration::from_secs(60),
            eni_mtu: 9001,
        }
    }

    /// A state directory removed when dropped.
    pub struct StateDir(pub PathBuf);

    impl Drop for StateDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub fn state_dir() -> StateDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        StateDir(std::env::temp_dir().join(format!(
            "pwt-vpc-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        )))
    }

    pub fn agent(pool: EniPool, warm: Option<u32>, minimum: u32, dir: &StateDir) -> VpcAgent {
        let node = NodeInfo {
            name: "pwt-node".into(),
            instance_id: "i-pwt".into(),
            instance_type: "t3.pwt".into(),
            subnet_id: "subnet-pwt".into(),
            subnet: "10.0.0.0/16".parse().expect("subnet"),
            security_groups: Vec::new(),
            limits: pool.limits(),
        };
        VpcAgent::for_test(node, config(warm, minimum), pool, &dir.0).expect("agent")
    }
}

#[cfg(test)]
mod tests {
    use podwire_ipam::{EniPool, PoolTargets};
    use std::time::Duration;

    use super::testing::{agent, state_dir, LIMITS};

    fn targets(warm: Option<u32>, minimum: u32) -> PoolTargets {
        let dir = state_dir();
        agent(EniPool::new(LIMITS, Duration::ZERO), warm, minimum, &dir).targets()
    }

    /// The VPC CNI's rules: a warm target means "that many free addresses,
    /// grown by what is short"; neither target means one ENI's worth, grown
    /// by whole ENIs; a minimum alone means no warm margin.
    #[test]
    fn targets_follow_warm_and_minimum_rules() {
        let t = targets(Some(5), 0);
        assert_eq!((t.warm, t.minimum, t.whole_enis), (5, 0, false));
        let t = targets(None, 0);
        assert_eq!(
            (t.warm, t.minimum, t.whole_enis),
            (LIMITS.secondary_per_eni, 0, true)
        );
        let t = targets(None, 10);
        assert_eq!((t.warm, t.minimum, t.whole_enis), (0, 10, true));
        let t = targets(Some(2), 10);
        assert_eq!((t.warm, t.minimum, t.whole_enis), (2, 10, false));
        let t = targets(Some(0), 0);
        assert_eq!((t.warm, t.minimum, t.whole_enis), (0, 0, false));
    }
}
