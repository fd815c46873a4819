//! What the agent is told to do (the `podwire-agent` flags), one
//! configuration per mode: a vpc agent has no pod CIDR and an overlay agent
//! no EC2 endpoint, and the types say so.

use std::path::PathBuf;
use std::time::Duration;

use podwire_cni::config::Mode;
pub use podwire_dataplane::nft::{BlockedDestination, ExternalPodAccess, PodEgressGuard};

/// The agent's socket when nothing else is said; the plugin's conflist
/// default (`agentSocket`) is the same path.
pub const DEFAULT_SOCKET: &str = podwire_cni::config::DEFAULT_AGENT_SOCKET;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// What pods on this node may not reach (IMDS, the datastore, the
    /// cloud API), enforced with nftables before the first pod is served.
    pub pod_guard: PodEgressGuard,
    pub mode: ModeConfig,
    /// Who from outside the cluster reaches pods, and where the cluster's
    /// records are read from in vpc mode.
    pub exposure: ExposureConfig,
    /// Where `/metrics`, `/healthz` and `/v1/state` are served; `None`: not
    /// at all.
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// `--external-pod-access`, `--external-allow-cidrs`, and vpc mode's
/// `--datastore`.
#[derive(Debug, Clone, Default)]
pub struct ExposureConfig {
    pub external_pod_access: ExternalPodAccess,
    /// Outside the cluster but allowed to open connections to pods (load
    /// balancers in IP mode, a bastion).
    pub allow_cidrs: Vec<ipnet::Ipv4Net>,
    /// vpc mode: the datastore of the cluster's records (nodes, endpoints,
    /// namespaces, pods, policies). overlay mode uses its own `datastore`.
    pub vpc_datastore: Option<DatastoreSpec>,
}

/// A datastore as the flags give it.
#[derive(Debug, Clone)]
pub struct DatastoreSpec {
    /// `sqlite:/path`, `etcd://host:port` or `etcd+https://host:port`.
    pub spec: String,
    pub etcd_tls: podwire_store::EtcdTls,
}

/// The metrics endpoint when nothing else is said: loopback, the Amazon VPC
/// CNI's metrics port.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:61678";

/// The per-mode half of the configuration.
#[derive(Debug, Clone)]
pub enum ModeConfig {
    Vpc(VpcConfig),
    Overlay(OverlayConfig),
}

impl ModeConfig {
    pub fn mode(&self) -> Mode {
        match self {
            ModeConfig::Vpc(_) => Mode::Vpc,
            ModeConfig::Overlay(_) => Mode::Overlay,
        }
    }

    /// How the host ends of this mode's pod veths are named.
    pub fn veth_prefix(&self) -> &'static str {
        match self {
            ModeConfig::Vpc(_) => podwire_dataplane::names::VPC_VETH_PREFIX,
            ModeConfig::Overlay(_) => podwire_dataplane::names::OVERLAY_VETH_PREFIX,
        }
    }
}

/// vpc mode: pod addresses are secondary IPs of the node's ENIs.
#[derive(Debug, Clone)]
pub struct VpcConfig {
    pub imds_endpoint: String,
    /// EC2 endpoint; `None` = `https://ec2.<region>.amazonaws.com`.
    pub ec2_endpoint: Option<String>,
    /// Free addresses to keep ready; `None` = one ENI's worth (the VPC CNI's
    /// WARM_ENI_TARGET=1).
    pub warm_ip_target: Option<u32>,
    /// Addresses to hold in all (0 = no floor).
    pub minimum_ip_target: u32,
    /// How long a released address rests before reuse.
    pub ip_cooldown: Duration,
    /// At most one return of surplus addresses to the cloud this often.
    pub pool_decrease_interval: Duration,
    pub eni_mtu: u32,
}

/// overlay mode: a pod CIDR in blocks, VXLAN between nodes.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// `sqlite:/path`, `etcd://host:port` or `etcd+https://host:port`.
    pub datastore: String,
    /// The CA, client certificate and key files for `etcd+https://`.
    pub etcd_tls: podwire_store::EtcdTls,
    pub pool: ipnet::Ipv4Net,
    pub block_prefix: u8,
    pub strict_affinity: bool,
    pub vni: u32,
    pub port: u16,
    /// The device whose address is this node's VTEP (`eth0`).
    pub underlay_dev: String,
    /// Empty blocks older than this are given back to the pool.
    pub block_grace: Duration,
}
