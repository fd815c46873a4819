//! `podwire-agent`: one per node. It owns the node's addresses and serves
//! the plugin over a root-only Unix socket:
//!
//! - vpc mode ([`vpc`]): learns its instance through IMDSv2, keeps a warm
//!   pool of ENI secondary addresses through the EC2 API, brings new ENIs up
//!   in the kernel; every allocation is checkpointed before it is answered.
//! - overlay mode ([`overlay`]): claims blocks of the pod CIDR through the
//!   datastore and converges VXLAN routes to every other node from it.
//!
//! Each mode is one module ending in its [`Backend`] implementation, the one
//! seam the socket server ([`server`]) talks to. Plain threads rather than an
//! async runtime: the agent's work is an accept loop and one background loop
//! per mode, and threads keep its resident memory small.

mod checkpoint;
mod config;
mod endpoint;
pub mod introspect;
pub mod metrics;
mod overlay;
mod retry;
mod server;
mod vpc;

pub use config::{
    AgentConfig, BlockedDestination, ModeConfig, OverlayConfig, PodEgressGuard, VpcConfig,
    DEFAULT_METRICS_ADDRESS, DEFAULT_SOCKET,
};

use std::sync::Arc;
use std::time::Instant;

/// Agent failures (start-up; the loops themselves log and carry on).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("instance metadata: {0}")]
    Imds(#[from] podwire_cloud::ImdsError),
    #[error(transparent)]
    Ec2(#[from] podwire_cloud::Ec2Error),
    #[error(transparent)]
    Dataplane(#[from] podwire_dataplane::DataplaneError),
    #[error(transparent)]
    Netlink(#[from] podwire_netlink::Error),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    #[error("socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] podwire_store::StoreError),
    #[error(transparent)]
    Ipam(#[from] podwire_ipam::block_store::IpamError),
}

/// What answers the plugin: one implementation per mode.
pub(crate) trait Backend: Send + Sync {
    /// Answers one request. `deadline` is when the caller stops waiting: work
    /// that cannot finish by then (waiting for the cloud) gives up before.
    fn handle(&self, req: podwire_proto::Request, deadline: Instant) -> podwire_proto::Response;

    /// The agent's view of its node from memory (no remote call): what
    /// `/v1/state`, `/healthz` and the metrics' gauges show.
    fn state(&self) -> introspect::NodeState;
}

/// Forgets the connection tracking entries of released addresses, so a pod
/// that gets one of them next inherits no flows. Failures are logged, not
/// returned: the release itself has happened.
pub(crate) fn forget_flows(ips: impl IntoIterator<Item = std::net::Ipv4Addr>) {
    for ip in ips {
        match podwire_dataplane::conntrack::flush(ip) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(%ip, entries = n, "conntrack entries of a released address deleted")
            }
            Err(e) => {
                tracing::warn!(%ip, "conntrack entries of a released address may remain: {e}")
            }
        }
    }
}

fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<(), AgentError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|source| AgentError::Thread { name, source })
}

/// The node's podwire nftables: the pod egress guard in both modes, SNAT
/// out of the pod network in overlay mode. Applied before the socket is
/// bound, so no pod is wired before its guard exists.
fn node_rules(config: &AgentConfig) -> podwire_dataplane::nft::NodeRules {
    let snat = match &config.mode {
        ModeConfig::Overlay(o) => Some(podwire_dataplane::nft::Snat {
            pod_cidr: o.pool,
            keep_dev: podwire_dataplane::overlay::VXLAN_DEV.to_string(),
        }),
        ModeConfig::Vpc(_) => None,
    };
    let tunnel = match &config.mode {
        ModeConfig::Overlay(o) => Some(podwire_dataplane::nft::Tunnel {
            dev: podwire_dataplane::overlay::VXLAN_DEV.to_string(),
            udp_port: o.port,
        }),
        ModeConfig::Vpc(_) => None,
    };
    podwire_dataplane::nft::NodeRules {
        pod_iface_prefix: config.mode.veth_prefix().to_string(),
        guard: config.pod_guard.clone(),
        snat,
        tunnel,
        external_pod_access: podwire_dataplane::nft::ExternalPodAccess::Allow,
        policy: None,
    }
}

/// Starts the agent and serves until the process is stopped.
pub fn run(config: AgentConfig) -> Result<(), AgentError> {
    // After the mode has started (a configuration error stops the agent
    // before it changes the node's firewall) and before the socket is bound
    // (no pod is wired without its guard). The rules of an earlier run stay
    // in force until these replace them.
    let guard = || -> Result<(), AgentError> {
        node_rules(&config).apply()?;
        tracing::info!(
            deny_imds = config.pod_guard.deny_imds,
            blocked = ?config.pod_guard.blocked.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "pod egress guard in place"
        );
        Ok(())
    };
    let metrics = Arc::new(metrics::Metrics::new());
    // Served from the moment the plugin socket is: a probe sees the agent
    // as it starts answering.
    let endpoint = |backend: Arc<dyn Backend>| -> Result<(), AgentError> {
        if let Some(addr) = config.metrics_address {
            endpoint::start(addr, backend, Arc::clone(&metrics))?;
        }
        Ok(())
    };
    match &config.mode {
        ModeConfig::Overlay(overlay) => {
            let agent = Arc::new(overlay::OverlayAgent::start(
                &config,
                overlay,
                Arc::clone(&metrics),
            )?);
            guard()?;
            agent.sync_vxlan_peers();
            let listener = server::bind(&config.socket)?;
            endpoint(Arc::clone(&agent) as Arc<dyn Backend>)?;
            tracing::info!(socket = %config.socket.display(), node = %config.node_name, "overlay agent ready");
            let converger = Arc::clone(&agent);
            spawn("converge", move || converger.converge_forever())?;
            server::serve(listener, agent, metrics);
        }
        ModeConfig::Vpc(vpc) => {
            let agent = Arc::new(vpc::VpcAgent::start(&config, vpc, Arc::clone(&metrics))?);
            guard()?;
            let listener = server::bind(&config.socket)?;
            endpoint(Arc::clone(&agent) as Arc<dyn Backend>)?;
            tracing::info!(socket = %config.socket.display(), node = %agent.node_name(), "vpc agent ready");
            let manager = Arc::clone(&agent);
            spawn("pool", move || vpc::pool::run(&manager))?;
            server::serve(listener, agent, metrics);
        }
    }
    Ok(())
}
