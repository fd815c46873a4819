//! `podwire-agent`: the per-node daemon, in vpc or overlay mode. Logs to
//! stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use podwire_agent_core::{
    AgentConfig, BlockedDestination, ModeConfig, OverlayConfig, PodEgressGuard, VpcConfig,
};
use podwire_cni::config::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "podwire-agent",
    version,
    about = "podwire node agent: warm pool of pod addresses, ENI plumbing, plugin socket"
)]
struct Args {
    /// Dataplane mode: `vpc` or `overlay`.
    #[arg(long, default_value = "vpc")]
    mode: Mode,
    /// Name this node reports in messages (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Unix socket the plugin talks to.
    #[arg(long, default_value = podwire_agent_core::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where allocations are checkpointed (a tmpfs: pods do not outlive a boot).
    #[arg(long, default_value = "/run/podwire")]
    state_dir: PathBuf,
    /// Whether pods may reach the instance metadata service
    /// (169.254.169.254): `deny` (default) or `allow`.
    #[arg(long, default_value = "deny")]
    pod_imds_access: Access,
    /// More destinations pods may not reach: `CIDR[:PORT]`, comma-separated
    /// (the datastore's and the cloud API's endpoints, for example).
    #[arg(long, value_delimiter = ',')]
    block_pod_egress: Vec<BlockedDestination>,
    /// Instance metadata service.
    #[arg(long, default_value = podwire_cloud::imds::DEFAULT_ENDPOINT)]
    imds_endpoint: String,
    /// EC2 API endpoint (default: https://ec2.<region>.amazonaws.com).
    #[arg(long)]
    ec2_endpoint: Option<String>,
    /// Free addresses to keep ready (default: one ENI's worth).
    #[arg(long)]
    warm_ip_target: Option<u32>,
    /// Addresses to hold in all, free or assigned (with no --warm-ip-target:
    /// no warm margin beyond it).
    #[arg(long, default_value_t = 0)]
    minimum_ip_target: u32,
    /// Seconds a released address rests before reuse.
    #[arg(long, default_value_t = 30)]
    ip_cooldown_secs: u64,
    /// Seconds between returns of addresses above --warm-ip-target to the cloud.
    #[arg(long, default_value_t = 30)]
    pool_decrease_interval_secs: u64,
    /// MTU of secondary ENIs.
    #[arg(long, default_value_t = 9001)]
    eni_mtu: u32,
    /// overlay: the datastore: `sqlite:/path/file.db`, `etcd://host:port`
    /// (plain HTTP) or `etcd+https://host:port` (TLS; needs
    /// --etcd-ca-cert-file), several etcd endpoints comma-separated.
    #[arg(long, default_value = "sqlite:/var/lib/podwire/datastore.db")]
    datastore: String,
    /// overlay, etcd+https: the CA certificate (PEM) that signed the etcd
    /// servers' certificates.
    #[arg(long, env = "ETCD_CA_CERT_FILE")]
    etcd_ca_cert_file: Option<PathBuf>,
    /// overlay, etcd+https: this node's client certificate (PEM), for an
    /// etcd that requires one (--client-cert-auth).
    #[arg(long, env = "ETCD_CERT_FILE", requires = "etcd_key_file")]
    etcd_cert_file: Option<PathBuf>,
    /// overlay, etcd+https: the client certificate's private key (PEM).
    #[arg(long, env = "ETCD_KEY_FILE", requires = "etcd_cert_file")]
    etcd_key_file: Option<PathBuf>,
    /// overlay: the pod CIDR.
    #[arg(long, default_value = "172.16.0.0/16")]
    pod_cidr: ipnet::Ipv4Net,
    /// overlay: block prefix length.
    #[arg(long, default_value_t = 26)]
    block_size: u8,
    /// overlay: never borrow addresses from other nodes' blocks.
    #[arg(long)]
    strict_affinity: bool,
    /// overlay: VXLAN network identifier.
    #[arg(long, default_value_t = 4096)]
    vni: u32,
    /// overlay: VXLAN UDP port.
    #[arg(long, default_value_t = 4789)]
    vxlan_port: u16,
    /// overlay: the underlay device (its address is the VTEP).
    #[arg(long, default_value = "eth0")]
    underlay_dev: String,
    /// overlay: seconds an empty block is kept before it goes back to the pool.
    #[arg(long, default_value_t = 300)]
    block_grace_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Access {
    Deny,
    Allow,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PODWIRE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let node_name = match args.node_name.clone() {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("reading the host name")?
            .to_string_lossy()
            .into_owned(),
    };
    let pod_guard = PodEgressGuard {
        deny_imds: args.pod_imds_access == Access::Deny,
        blocked: args.block_pod_egress.clone(),
    };
    let mode = match args.mode {
        Mode::Vpc => ModeConfig::Vpc(VpcConfig {
            imds_endpoint: args.imds_endpoint,
            ec2_endpoint: args.ec2_endpoint,
            warm_ip_target: args.warm_ip_target,
            minimum_ip_target: args.minimum_ip_target,
            ip_cooldown: Duration::from_secs(args.ip_cooldown_secs),
            pool_decrease_interval: Duration::from_secs(args.pool_decrease_interval_secs),
            eni_mtu: args.eni_mtu,
        }),
        Mode::Overlay => {
            podwire_ipam::block::check_block_size(args.pod_cidr, args.block_size)
                .map_err(|e| anyhow::anyhow!("--block-size: {e}"))?;
            ModeConfig::Overlay(OverlayConfig {
                datastore: args.datastore,
                etcd_tls: podwire_store::EtcdTls {
                    ca_cert: args.etcd_ca_cert_file,
                    cert: args.etcd_cert_file,
                    key: args.etcd_key_file,
                },
                pool: args.pod_cidr,
                block_prefix: args.block_size,
                strict_affinity: args.strict_affinity,
                vni: args.vni,
                port: args.vxlan_port,
                underlay_dev: args.underlay_dev,
                block_grace: Duration::from_secs(args.block_grace_secs),
            })
        }
    };
    podwire_agent_core::run(AgentConfig {
        node_name,
        socket: args.socket,
        state_dir: args.state_dir,
        pod_guard,
        mode,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_tls_flags_parse_and_a_certificate_needs_its_key() {
        let a = Args::try_parse_from([
            "podwire-agent",
            "--datastore",
            "etcd+https://10.0.0.5:2379",
            "--etcd-ca-cert-file",
            "/etc/podwire/ca.pem",
            "--etcd-cert-file",
            "/etc/podwire/c.pem",
            "--etcd-key-file",
            "/etc/podwire/k.pem",
        ])
        .expect("parse");
        assert_eq!(a.etcd_ca_cert_file, Some("/etc/podwire/ca.pem".into()));
        assert_eq!(a.etcd_cert_file, Some("/etc/podwire/c.pem".into()));
        assert_eq!(a.etcd_key_file, Some("/etc/podwire/k.pem".into()));
        for lone in ["--etcd-cert-file", "--etcd-key-file"] {
            assert!(
                Args::try_parse_from(["podwire-agent", lone, "/x.pem"]).is_err(),
                "{lone} alone"
            );
        }
    }
}
