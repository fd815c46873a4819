//! The agent proper: its flags turned into an [`AgentConfig`], then run.

use std::time::Duration;

use anyhow::Context;
use podwire_agent_core::{AgentConfig, ModeConfig, OverlayConfig, PodEgressGuard, VpcConfig};
use podwire_cni::config::Mode;

use crate::cli::{Access, DaemonArgs};

/// Runs the agent until it stops.
pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let print_only = args.print_config;
    let config = config(args)?;
    if print_only {
        println!("{config:#?}");
        return Ok(());
    }
    podwire_agent_core::run(config)?;
    Ok(())
}

fn config(args: DaemonArgs) -> anyhow::Result<AgentConfig> {
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
    Ok(AgentConfig {
        node_name,
        socket: args.socket,
        state_dir: args.state_dir,
        pod_guard,
        mode,
    })
}
