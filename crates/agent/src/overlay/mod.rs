//! The agent in overlay mode: addresses from blocks of the pod CIDR
//! (claimed through the datastore), a VXLAN device, and routes, neighbours
//! and FDB entries to every other node, converged from the datastore at
//! start-up and on every change it announces.
//!
//! [`model`] turns the datastore's records into the kernel state this node
//! needs, [`converge`] keeps the kernel there, [`handlers`] answers the
//! plugin; this module starts the node and ends with the mode's
//! [`Backend`] implementation.

mod converge;
mod handlers;
mod introspect;
mod model;
mod record;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use podwire_dataplane::overlay::{self, DeviceSpec, VXLAN_OVERHEAD};
use podwire_ipam::block_store::{BlockIpam, PoolConfig};
use podwire_ipam::nodes::{self, NodeRecord};
use podwire_netlink::{sysctl, Handle};
use podwire_proto::{Request, Response};
use podwire_store::Datastore;

use crate::metrics::Metrics;
use crate::{AgentConfig, AgentError, Backend, OverlayConfig};
use model::Model;

/// What the agent follows: node records and IPAM blocks, and nothing else
/// of the datastore (the IPAM's indexes hold an entry per pod of the
/// cluster, which no agent needs to read or hear about).
const WATCHED: [&str; 2] = [podwire_ipam::nodes::NODES, podwire_ipam::keys::BLOCKS];

pub struct OverlayAgent {
    node: String,
    store: Arc<dyn Datastore>,
    /// The node's address on the underlay (what it sends from).
    underlay_ip: Ipv4Addr,
    ipam: BlockIpam,
    cfg: OverlayConfig,
    mtu: u32,
    /// Held so the handle's netlink socket is not re-opened per change.
    nl: Mutex<Handle>,
    /// The datastore's nodes and blocks as last seen, and what was applied.
    model: Mutex<Model>,
    /// This node's live pods, to recognise a datastore that lost them.
    record: record::Record,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for OverlayAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayAgent")
            .field("node", &self.node)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

impl OverlayAgent {
    pub fn start(
        config: &AgentConfig,
        cfg: &OverlayConfig,
        metrics: Arc<Metrics>,
    ) -> Result<OverlayAgent, AgentError> {
        let node = config.node_name.clone();
        let store: Arc<dyn Datastore> =
            Arc::from(podwire_store::open_with(&cfg.datastore, &cfg.etcd_tls)?);
        let checkpoint = crate::checkpoint::Checkpoint::new(&config.state_dir)?;
        let state_file = checkpoint.path().display().to_string();
        let record = record::Record::load(checkpoint)?;
        // Before anything is written: a store without the pool's settings
        // while pods of this node live was lost, not new.
        if record.len() > 0 && store.get(podwire_ipam::keys::CONFIG)?.is_none() {
            record.verify_against(None, &cfg.datastore, &state_file)?;
        }
        let mut nl = Handle::new()?;
        let underlay = nl.link(&cfg.underlay_dev)?;
        let underlay_net = nl
            .addresses(Some(underlay.index))?
            .first()
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                AgentError::Config(format!("{} has no IPv4 address", cfg.underlay_dev))
            })?;
        let underlay_ip = underlay_net.addr();
        // Pod addresses inside the node network would shadow nodes (and
        // SNAT, which spares the pod CIDR, would spare traffic to them).
        if cfg.pool.contains(&underlay_net.trunc()) || underlay_net.trunc().contains(&cfg.pool) {
            return Err(AgentError::Config(format!(
                "--pod-cidr {} overlaps the node network {} of {}: choose a pod CIDR outside the VPC",
                cfg.pool,
                underlay_net.trunc(),
                cfg.underlay_dev
            )));
        }
        let ipam = BlockIpam::open(
            Arc::clone(&store),
            PoolConfig {
                pool: cfg.pool,
                block_prefix: cfg.block_prefix,
                strict_affinity: cfg.strict_affinity,
            },
        )?;
        record.verify_against(Some(&ipam), &cfg.datastore, &state_file)?;
        let mtu = underlay.mtu.saturating_sub(VXLAN_OVERHEAD);
        // The tunnel address: the first address of the node's first block.
        let tunnel_handle = podwire_ipam::Handle::tunnel(&node);
        let tunnel_ip = match ipam.find(&tunnel_handle)? {
            Some((ip, _)) => ip,
            None => ipam.allocate(&node, tunnel_handle)?.ip,
        };
        sysctl::write("net/ipv4/ip_forward", "1")?;
        let vxlan = overlay::ensure_device(
            &mut nl,
            &DeviceSpec {
                vni: cfg.vni,
                port: cfg.port,
                underlay_ip,
                underlay_index: underlay.index,
                mtu,
                tunnel_ip,
            },
        )?;
        let vtep_mac = vxlan
            .mac
            .ok_or_else(|| AgentError::Config("VXLAN device has no MAC".into()))?;
        nodes::register(
            store.as_ref(),
            &NodeRecord {
                name: node.clone(),
                underlay_ip,
                vtep_mac: vtep_mac.to_string(),
                tunnel_ip,
            },
        )?;
        tracing::info!(%node, %underlay_ip, %tunnel_ip, mtu, "overlay node registered");
        let agent = OverlayAgent {
            node,
            store,
            underlay_ip,
            ipam,
            cfg: cfg.clone(),
            mtu,
            nl: Mutex::new(nl),
            model: Mutex::new(Model::default()),
            record,
            metrics,
        };
        agent.converge_once()?;
        Ok(agent)
    }
}

impl OverlayAgent {
    /// The datastore this agent uses (the cluster's records live there too).
    pub(crate) fn store(&self) -> Arc<dyn Datastore> {
        Arc::clone(&self.store)
    }

    /// The address this node sends from (its node record's `primary`).
    pub(crate) fn primary_address(&self) -> Ipv4Addr {
        self.underlay_ip
    }

    /// The pods this node holds, from its local record.
    pub(crate) fn live_allocations(&self) -> Vec<podwire_proto::Allocation> {
        self.record.all()
    }
}

impl Backend for OverlayAgent {
    fn handle(&self, req: Request, _deadline: Instant) -> Response {
        match req {
            Request::Add(a) => self.add(a),
            Request::Del { key } => self.del(&key),
            Request::Get { key } => self.get(&key),
            Request::Status => self.status(),
            Request::Gc { network, valid } => self.gc(&network, &valid),
        }
    }

    fn state(&self) -> crate::introspect::NodeState {
        self.introspect()
    }
}
