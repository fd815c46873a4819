//! The agent in vpc mode: pod addresses are secondary IPs (or addresses of
//! /28 prefixes) of the node's ENIs. This module holds the node's facts and
//! the pool's state; the request handlers are in [`handlers`], the loop that
//! keeps the pool true and at its targets in [`pool`]. It ends with the
//! mode's [`Backend`] implementation.

mod handlers;
mod introspect;
pub mod pool;
mod prefix_support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use ipnet::Ipv4Net;
use podwire_cloud::ec2::{RetryPolicy, Subnet};
use podwire_cloud::imds::InstanceIdentity;
use podwire_cloud::{Credentials, Ec2Client, Imds, LimitsTable, NetworkInterface};
use podwire_dataplane::eni::{self, EniSpec};
use podwire_dataplane::routing::route_table_for;
use podwire_ipam::{
    reconcile, EniPool, Expected, ObservedEni, PoolLimits, PoolPlan, PoolTargets, WarmSettings,
};
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
    /// The primary ENI's primary address (IMDS `local-ipv4`).
    pub primary_ip: Ipv4Addr,
    pub limits: PoolLimits,
    /// vCPUs of the instance type, when DescribeInstanceTypes said.
    pub vcpus: Option<u32>,
}

#[derive(Debug)]
pub struct State {
    pub pool: EniPool,
    pub allocations: BTreeMap<AttachmentKey, Allocation>,
    /// The last plan the pool manager acted on.
    pub last_plan: PoolPlan,
    /// The last cloud failure, cleared by the next success.
    pub cloud_error: Option<(ErrorKind, String)>,
    /// The node's subnet as DescribeSubnets last said (capacity figures).
    pub subnet: Option<Subnet>,
    /// With --prefix-fallback-to-secondary-ips: the subnet had no free
    /// aligned /28; single addresses are asked for until then.
    pub prefixes_unavailable_until: Option<Instant>,
}

impl State {
    #[cfg(test)]
    pub fn add_eni(&mut self, id: &str, device: u32, route_table: u32) {
        self.pool.add_eni(id, device, route_table);
    }

    #[cfg(test)]
    pub fn add_ips(&mut self, eni_id: &str, ips: &[Ipv4Addr]) {
        self.pool.add_ips(eni_id, ips);
    }

    pub fn release(&mut self, ip: Ipv4Addr, now: Instant) {
        self.pool.release(ip, now);
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
    /// Told of every attachment whose address the cloud no longer lists
    /// (see [`VpcAgent::on_lost_address`]).
    lost_hook: std::sync::OnceLock<Hook>,
}

/// What the agent does when a pod's address is gone from the cloud.
pub type LostHook = Box<dyn Fn(&AttachmentKey) + Send + Sync>;

struct Hook(LostHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LostHook")
    }
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

impl VpcAgent {
    /// Sets what happens to an attachment whose address the cloud no
    /// longer lists: its endpoint record must go, or the address stays in
    /// every node's cluster set and policy sets, and whoever the cloud
    /// gives it to next would pass for the pod (found by an attack). Set
    /// once, before the pool manager runs.
    pub fn on_lost_address(&self, hook: LostHook) {
        if self.lost_hook.set(Hook(hook)).is_err() {
            tracing::warn!("the lost-address hook is set once; a second one is ignored");
        }
    }

    /// The attachments that held the lost addresses (by their owner
    /// strings), told to the hook.
    pub(crate) fn tell_lost(&self, holders: &[&str]) {
        let Some(hook) = self.lost_hook.get() else {
            return;
        };
        let keys: Vec<AttachmentKey> = {
            let st = self.lock();
            st.allocations
                .keys()
                .filter(|k| holders.contains(&owner(k).as_str()))
                .cloned()
                .collect()
        };
        for k in &keys {
            (hook.0)(k);
        }
    }
}

fn owner(key: &AttachmentKey) -> String {
    format!("{}/{}/{}", key.network, key.container_id, key.ifname)
}

/// An ENI as the reconcile sees it; `None` when it is not attached (a
/// missing attachment is never read as device 0, the primary ENI).
/// The shipped tables, for what the cloud's answer leaves out; `None`
/// (logged) if they do not parse, which their own tests rule out.
fn builtin_limits() -> Option<LimitsTable> {
    LimitsTable::builtin()
        .map_err(|e| tracing::warn!(error = %e, "the shipped instance tables do not parse"))
        .ok()
}

/// The node's vCPUs: DescribeInstanceTypes' `vCpuInfo` when it has one (as
/// EC2's does), else the shipped vCPU table (an endpoint that leaves it
/// out must not cost a large node its 250-pod cap), else unknown.
pub fn type_vcpus(
    reported: Option<u32>,
    instance_type: &str,
    table: Option<&LimitsTable>,
) -> Option<u32> {
    reported.or_else(|| table?.vcpus(instance_type)?.vcpus)
}

pub fn observed(e: &NetworkInterface) -> Option<ObservedEni> {
    let a = e.attachment.as_ref()?;
    Some(ObservedEni {
        id: e.id.clone(),
        device_index: a.device_index,
        primary_ip: e.private_ip,
        secondary_ips: e.secondary_ips().collect(),
        prefixes: e.prefixes.clone(),
    })
}

/// Brings an attached secondary ENI's link up with its route table and
/// rule (idempotent); waits up to `wait` for the link to appear.
pub fn configure_link(
    nl: &mut Handle,
    e: &NetworkInterface,
    device: u32,
    subnet: Ipv4Net,
    config: &VpcConfig,
) -> Result<(), AgentError> {
    if device == 0 {
        return Ok(());
    }
    let mac: MacAddr = e.mac.parse().map_err(AgentError::Config)?;
    let link = eni::wait_for_link(nl, mac, config.eni_link_wait)?;
    eni::configure_secondary(
        nl,
        &EniSpec {
            mac,
            device_number: device,
            primary_ip: e.private_ip,
            subnet,
            mtu: config.eni_mtu,
        },
        &link,
    )?;
    Ok(())
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
        let ec2 = Ec2Client::new(&endpoint, &id.region, creds).with_retry(RetryPolicy {
            budget: config.ec2_call_budget,
            ..RetryPolicy::default()
        });
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
        // A non-Nitro type with --prefix-delegation: refuse (or fall back)
        // now, not fail every ADD while reporting ready.
        let table = LimitsTable::builtin()
            .inspect_err(|e| tracing::warn!(error = %e, "shipped instance limits unreadable"))
            .ok();
        let prefix_delegation = prefix_support::effective(
            config.prefix_delegation,
            config.prefix_fallback_to_secondary_ips,
            &id.instance_type,
            table.as_ref(),
        )?;
        let config = &VpcConfig {
            prefix_delegation,
            ..config.clone()
        };
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
            primary_ip: id.local_ipv4,
            limits,
            vcpus: type_vcpus(it.vcpus, &id.instance_type, builtin_limits().as_ref()),
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
        let mut seen = Vec::new();
        for e in &enis {
            let Some(o) = observed(e) else {
                tracing::warn!(eni = %e.id, "listed for this instance without an attachment; skipped");
                continue;
            };
            configure_link(&mut nl, e, o.device_index, node.subnet, config)?;
            pool.add_eni(&e.id, o.device_index, route_table_for(o.device_index));
            pool.set_primary(&e.id, e.private_ip);
            seen.push(o);
        }
        // At start everything the cloud lists is usable at once: the
        // checkpoint below says which addresses pods hold.
        let everything = Expected {
            ips: seen
                .iter()
                .flat_map(|o| o.secondary_ips.iter().copied())
                .collect(),
            prefixes: seen
                .iter()
                .flat_map(|o| o.prefixes.iter().copied())
                .collect(),
        };
        reconcile(&mut pool, &seen, &everything, Instant::now());

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
            enis = pool.eni_count(), prefixes = pool.prefix_count(),
            restored = allocations.len(), "state rebuilt"
        );
        Ok(VpcAgent {
            node,
            config: config.clone(),
            ec2,
            checkpoint,
            metrics,
            lost_hook: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                pool,
                allocations,
                last_plan: PoolPlan::Satisfied,
                cloud_error: None,
                subnet: None,
                prefixes_unavailable_until: None,
            }),
            changed: Condvar::new(),
        })
    }

    pub fn node_name(&self) -> &str {
        &self.node.name
    }

    /// The address this node sends from (its node record's `primary`).
    pub fn primary_address(&self) -> Ipv4Addr {
        self.node.primary_ip
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every change
        // is a single insert/remove), so recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured targets (the VPC CNI's precedence, see
    /// [`podwire_ipam::warm`]).
    #[cfg(test)]
    pub fn targets(&self) -> PoolTargets {
        self.targets_at(false)
    }

    /// The targets in force: with prefixes unavailable and the fallback
    /// on, the same settings for single addresses.
    fn targets_at(&self, prefixes_unavailable: bool) -> PoolTargets {
        let c = &self.config;
        PoolTargets::from_settings(WarmSettings {
            warm_eni_target: Some(c.warm_eni_target),
            warm_ip_target: c.warm_ip_target,
            minimum_ip_target: (c.minimum_ip_target > 0).then_some(c.minimum_ip_target),
            warm_prefix_target: c.warm_prefix_target,
            prefix_delegation: c.prefix_delegation && !prefixes_unavailable,
        })
    }

    /// The targets the pool manager plans with now.
    pub fn current_targets(&self, st: &State, now: Instant) -> PoolTargets {
        let unavailable = st.prefixes_unavailable_until.is_some_and(|t| now < t);
        self.targets_at(unavailable)
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
        Self::for_test_with_ec2(node, config, pool, state_dir, "http://127.0.0.1:9")
    }

    /// The same, with the EC2 client pointed at `endpoint` (a loopback
    /// fake of the test's).
    pub(crate) fn for_test_with_ec2(
        node: NodeInfo,
        config: VpcConfig,
        pool: EniPool,
        state_dir: &std::path::Path,
        endpoint: &str,
    ) -> Result<VpcAgent, AgentError> {
        let creds = Credentials {
            access_key_id: "pwt".into(),
            secret_access_key: "pwt".into(),
            session_token: None,
        };
        Ok(VpcAgent {
            node,
            config,
            ec2: Ec2Client::new(endpoint, "pwt-region", creds).with_retry(RetryPolicy::NONE),
            checkpoint: Checkpoint::new(state_dir)?,
            metrics: Arc::new(Metrics::new()),
            lost_hook: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                pool,
                allocations: BTreeMap::new(),
                last_plan: PoolPlan::Satisfied,
                cloud_error: None,
                subnet: None,
                prefixes_unavailable_until: None,
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

    /// An ADD for container `c` (pod `default/c`).
    pub fn req(c: &str) -> podwire_proto::AddRequest {
        podwire_proto::AddRequest {
            key: podwire_proto::AttachmentKey {
                network: "pw".into(),
                container_id: c.into(),
                ifname: "eth0".into(),
            },
            netns: "/run/netns/pwt".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some(c.into()),
        }
    }

    pub fn config(warm: Option<u32>, minimum: u32) -> VpcConfig {
        VpcConfig {
            imds_endpoint: "http://127.0.0.1:9".into(),
            ec2_endpoint: None,
            warm_eni_target: 1,
            warm_ip_target: warm,
            minimum_ip_target: minimum,
            warm_prefix_target: None,
            prefix_delegation: false,
            prefix_fallback_to_secondary_ips: false,
            eni_gc_grace: Duration::from_secs(300),
            reconcile_interval: Duration::from_secs(60),
            eni_link_wait: Duration::from_secs(30),
            ec2_call_budget: Duration::from_secs(20),
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
        VpcAgent::for_test(node(&pool), config(warm, minimum), pool, &dir.0).expect("agent")
    }

    pub fn node(pool: &EniPool) -> NodeInfo {
        NodeInfo {
            name: "pwt-node".into(),
            instance_id: "i-pwt".into(),
            instance_type: "t3.pwt".into(),
            subnet_id: "subnet-pwt".into(),
            subnet: "10.0.0.0/16".parse().expect("subnet"),
            security_groups: Vec::new(),
            primary_ip: std::net::Ipv4Addr::new(10, 0, 0, 10),
            limits: pool.limits(),
            vcpus: Some(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use podwire_ipam::{EniPool, PoolTargets, WarmTarget};
    use std::time::Duration;

    /// An answer without vCpuInfo (the lab's, before it sent one) took the
    /// agent's cap to 110 on an m5.24xlarge (96 vCPUs): the shipped table
    /// fills it in; the cloud's own figure wins where it has one.
    #[test]
    fn vcpus_come_from_the_answer_then_the_shipped_table() {
        let table = super::builtin_limits();
        assert!(table.is_some());
        let t = table.as_ref();
        assert_eq!(super::type_vcpus(None, "m5.24xlarge", t), Some(96));
        assert_eq!(super::type_vcpus(None, "m5.xlarge", t), Some(4));
        assert_eq!(super::type_vcpus(Some(8), "m5.xlarge", t), Some(8));
        assert_eq!(super::type_vcpus(None, "m5.nonesuch", t), None);
        assert_eq!(super::type_vcpus(None, "m5.xlarge", None), None);
        let node = |vcpus| podwire_cloud::limits::node_max_pods(15 * 49, true, vcpus);
        assert_eq!(node(super::type_vcpus(None, "m5.24xlarge", t)), 250);
    }

    use super::testing::{agent, state_dir, LIMITS};

    fn targets(warm: Option<u32>, minimum: u32) -> PoolTargets {
        let dir = state_dir();
        agent(EniPool::new(LIMITS, Duration::ZERO), warm, minimum, &dir).targets()
    }

    /// Today's flags keep their meaning under the VPC CNI's precedence: a
    /// warm target means "that many free addresses, grown by what is
    /// short"; neither target means WARM_ENI_TARGET=1 (one ENI's worth,
    /// grown by whole ENIs); a minimum alone means no warm margin.
    #[test]
    fn targets_follow_warm_and_minimum_rules() {
        let t = |w, m| targets(w, m).target;
        assert_eq!(
            t(Some(5), 0),
            WarmTarget::Ips {
                warm: 5,
                minimum: 0
            }
        );
        assert_eq!(t(None, 0), WarmTarget::Enis(1));
        assert_eq!(
            t(None, 10),
            WarmTarget::Ips {
                warm: 0,
                minimum: 10
            }
        );
        assert_eq!(
            t(Some(2), 10),
            WarmTarget::Ips {
                warm: 2,
                minimum: 10
            }
        );
        // WARM_IP_TARGET=0 is "not set" (the VPC CNI's warmIPTargetsDefined
        // tests `!= 0`): it was an IP target of 0, under which the pool
        // never grew and every ADD waited out its deadline (found by the
        // capacity planner's agreement test).
        assert_eq!(t(Some(0), 0), WarmTarget::Enis(1));
    }

    #[test]
    fn prefix_delegation_plans_prefixes_until_the_subnet_has_none_and_the_fallback_is_on() {
        let dir = state_dir();
        let mut a = agent(EniPool::new(LIMITS, Duration::ZERO), None, 0, &dir);
        a.config.prefix_delegation = true;
        a.config.prefix_fallback_to_secondary_ips = true;
        let now = std::time::Instant::now();
        let t = a.current_targets(&a.lock(), now);
        assert_eq!((t.target, t.prefixes), (WarmTarget::Prefixes(1), true));
        a.lock().prefixes_unavailable_until = Some(now + Duration::from_secs(60));
        let t = a.current_targets(&a.lock(), now);
        assert_eq!((t.target, t.prefixes), (WarmTarget::Enis(1), false));
        let t = a.current_targets(&a.lock(), now + Duration::from_secs(61));
        assert!(t.prefixes, "prefixes are tried again later");
    }
}
