use std::path::PathBuf;
use std::time::Duration;

/// How the agent runs (flags of `podwire-agent`).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
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
    /// How long ADD may wait for the cloud when the pool is empty.
    pub add_wait: Duration,
    /// Set in overlay mode (the vpc fields above are then unused).
    pub overlay: Option<OverlayConfig>,
}

/// overlay mode: a pod CIDR in blocks, VXLAN between nodes.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// `sqlite:/path` or `etcd://host:port`.
    pub datastore: String,
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
