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
mod exposure;
pub mod introspect;
pub mod metrics;
mod overlay;
mod retry;
mod server;
mod vpc;

pub use config::{
    AgentConfig, BlockedDestination, DatastoreSpec, ExposureConfig, ExternalPodAccess, ModeConfig,
    OverlayConfig, PodEgressGuard, VpcConfig, DEFAULT_METRICS_ADDRESS, DEFAULT_SOCKET,
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
        external_pod_access: config.exposure.external_pod_access,
        policy: None,
    }
}

/// vpc mode with `deny` and no datastore cannot know the cluster: refused
/// before the node is touched (docs/SECURITY.md says why).
fn check_exposure(config: &AgentConfig) -> Result<(), AgentError> {
    let vpc_without_store =
        matches!(config.mode, ModeConfig::Vpc(_)) && config.exposure.vpc_datastore.is_none();
    if vpc_without_store && config.exposure.external_pod_access == ExternalPodAccess::Deny {
        return Err(AgentError::Config(
            "--external-pod-access deny (the default) needs the cluster's records to tell the \
             cluster from outsiders: give vpc mode a --datastore (the one the other nodes use), \
             or keep the VPC CNI's behaviour with --external-pod-access allow"
                .into(),
        ));
    }
    Ok(())
}

/// Builds the exposure component over `store` and rebuilds its view from
/// the datastore (a failure stops the start: the last rules stay in force).
fn exposure(
    config: &AgentConfig,
    primary: std::net::Ipv4Addr,
    store: Option<Arc<dyn podwire_store::Datastore>>,
    live: &[podwire_proto::Allocation],
    metrics: &Arc<metrics::Metrics>,
) -> Result<Arc<exposure::Exposure>, AgentError> {
    let settings = exposure::Settings {
        node: config.node_name.clone(),
        mode: config.mode.mode(),
        allow: config.exposure.allow_cidrs.clone(),
        access: config.exposure.external_pod_access,
        primary: Some(primary),
    };
    let x = Arc::new(exposure::Exposure::new(
        settings,
        store,
        Box::<exposure::firewall::Nft>::default(),
        Arc::clone(metrics),
    ));
    x.set_own_addresses(exposure::records::node_addresses()?)?;
    x.reload()?;
    x.adopt(live)?;
    Ok(x)
}

/// The node's ruleset, the cluster's addresses and the policies, in one
/// transaction: the first rules of this run replace the last run's at once.
fn apply_node_rules(config: &AgentConfig, x: &exposure::Exposure) -> Result<(), AgentError> {
    let want = x.desired_now();
    let mut rules = node_rules(config);
    rules.policy = want.policy.clone();
    let existing = if rules.policy.is_some() {
        podwire_dataplane::nft::existing_helpers()?
    } else {
        podwire_dataplane::nft::Helpers::default()
    };
    let mut script = rules.script_with(&existing)?;
    if let Some(nets) = &want.cluster_nets {
        script.push_str(&podwire_dataplane::nft::cluster_nets_script(nets));
    }
    podwire_dataplane::nft::apply(&script)?;
    x.applied_at_start(want);
    tracing::info!(
        deny_imds = config.pod_guard.deny_imds,
        blocked = ?config.pod_guard.blocked.iter().map(ToString::to_string).collect::<Vec<_>>(),
        external_pod_access = %config.exposure.external_pod_access,
        allow = ?config.exposure.allow_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "pod egress guard, posture and policies in place"
    );
    Ok(())
}

/// Starts the agent and serves until the process is stopped.
pub fn run(config: AgentConfig) -> Result<(), AgentError> {
    check_exposure(&config)?;
    let metrics = Arc::new(metrics::Metrics::new());
    // Served from the moment the plugin socket is: a probe sees the agent
    // as it starts answering.
    let endpoint = |backend: Arc<dyn Backend>| -> Result<(), AgentError> {
        if let Some(addr) = config.metrics_address {
            endpoint::start(addr, backend, Arc::clone(&metrics))?;
        }
        Ok(())
    };
    // Each mode: started (a configuration error stops the agent before it
    // changes the node's firewall), then the cluster's records read, then
    // the node's rules applied (before the socket is bound: no pod is wired
    // without its guard, posture and policies), then served.
    match &config.mode {
        ModeConfig::Overlay(overlay) => {
            let agent = Arc::new(overlay::OverlayAgent::start(
                &config,
                overlay,
                Arc::clone(&metrics),
            )?);
            let x = exposure(
                &config,
                agent.primary_address(),
                Some(agent.store()),
                &agent.live_allocations(),
                &metrics,
            )?;
            apply_node_rules(&config, &x)?;
            agent.sync_vxlan_peers();
            let listener = server::bind(&config.socket)?;
            let backend = Arc::new(exposure::backend::Enforced {
                inner: Arc::clone(&agent),
                exposure: Arc::clone(&x),
            });
            endpoint(Arc::clone(&backend) as Arc<dyn Backend>)?;
            tracing::info!(socket = %config.socket.display(), node = %config.node_name, "overlay agent ready");
            let converger = Arc::clone(&agent);
            spawn("converge", move || converger.converge_forever())?;
            spawn("exposure", move || x.follow_forever())?;
            server::serve(listener, backend, metrics);
        }
        ModeConfig::Vpc(vpc) => {
            let store: Option<Arc<dyn podwire_store::Datastore>> =
                match &config.exposure.vpc_datastore {
                    Some(d) => Some(Arc::from(podwire_store::open_with(&d.spec, &d.etcd_tls)?)),
                    None => None,
                };
            let agent = Arc::new(vpc::VpcAgent::start(&config, vpc, Arc::clone(&metrics))?);
            let live: Vec<podwire_proto::Allocation> =
                agent.lock().allocations.values().cloned().collect();
            let x = exposure(&config, agent.primary_address(), store, &live, &metrics)?;
            apply_node_rules(&config, &x)?;
            let listener = server::bind(&config.socket)?;
            let backend = Arc::new(exposure::backend::Enforced {
                inner: Arc::clone(&agent),
                exposure: Arc::clone(&x),
            });
            endpoint(Arc::clone(&backend) as Arc<dyn Backend>)?;
            tracing::info!(socket = %config.socket.display(), node = %agent.node_name(), "vpc agent ready");
            let xl = Arc::clone(&x);
            agent.on_lost_address(Box::new(move |key| {
                if let Err(e) = xl.on_lost(key) {
                    tracing::warn!(container = %key.container_id, "lost address: {e}");
                }
            }));
            let manager = Arc::clone(&agent);
            spawn("pool", move || vpc::pool::run(&manager))?;
            spawn("exposure", move || x.follow_forever())?;
            server::serve(listener, backend, metrics);
        }
    }
    Ok(())
}

#[cfg(test)]
mod exposure_config_tests {
    use super::*;

    fn config(mode: ModeConfig, access: ExternalPodAccess, store: bool) -> AgentConfig {
        AgentConfig {
            node_name: "pwt-node".into(),
            socket: "/nonexistent/pwt.sock".into(),
            state_dir: "/nonexistent/pwt".into(),
            pod_guard: PodEgressGuard::default(),
            mode,
            exposure: ExposureConfig {
                external_pod_access: access,
                allow_cidrs: Vec::new(),
                vpc_datastore: store.then(|| DatastoreSpec {
                    spec: "sqlite:/nonexistent/pwt.db".into(),
                    etcd_tls: podwire_store::EtcdTls::default(),
                }),
            },
            metrics_address: None,
        }
    }

    fn vpc() -> ModeConfig {
        ModeConfig::Vpc(crate::vpc::testing::config(None, 0))
    }

    /// deny needs the cluster's records; without them the agent must not
    /// start (it would either open pods or cut them off from other nodes).
    #[test]
    fn a_vpc_agent_under_deny_without_a_datastore_refuses_to_start() {
        let e = check_exposure(&config(vpc(), ExternalPodAccess::Deny, false))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("--datastore") && e.contains("allow"), "{e}");
        // And before it touches anything: run() fails the same way.
        let e = run(config(vpc(), ExternalPodAccess::Deny, false))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("--datastore"), "{e}");
        assert!(check_exposure(&config(vpc(), ExternalPodAccess::Allow, false)).is_ok());
        assert!(check_exposure(&config(vpc(), ExternalPodAccess::Deny, true)).is_ok());
    }
}
