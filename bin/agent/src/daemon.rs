//! The agent proper: its flags turned into an [`AgentConfig`], then run.

use std::time::Duration;

use std::path::PathBuf;

use anyhow::Context;
use podwire_agent_core::{
    AgentConfig, DatastoreSpec, ExposureConfig, ExternalPodAccess, ModeConfig, OverlayConfig,
    PodEgressGuard, VpcConfig,
};
use podwire_cni::config::Mode;

use crate::cli::{Access, DaemonArgs};
use crate::install::{self, Install};
use crate::status;

/// Runs the agent until it stops.
pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let print_only = args.print_config;
    let conf_dir = args.cni_conf_dir.clone();
    let config = config(args)?;
    if print_only {
        println!("{config:#?}");
        return Ok(());
    }
    if let Some(conf_dir) = conf_dir {
        let plan = Install {
            mode: config.mode.mode(),
            plugin: None,
            bin_dir: PathBuf::new(),
            conf_dir: Some(conf_dir),
            agent_socket: config.socket.clone(),
            state_dir: config.state_dir.clone(),
            force: false,
        };
        // Detached: it ends once the conflist is written, or with the agent.
        let _writer = std::thread::Builder::new()
            .name("conflist".into())
            .spawn(move || write_conflist_when_ready(&plan))
            .context("starting the conflist writer")?;
    }
    podwire_agent_core::run(config)?;
    Ok(())
}

/// How often the writer asks the agent whether it is ready.
const READY_POLL: Duration = Duration::from_millis(500);

/// Waits until the agent on `plan.agent_socket` answers ready, then writes
/// the conflist: runtimes see podwire only once it can serve an ADD.
fn write_conflist_when_ready(plan: &Install) {
    let mut said = false;
    loop {
        match status::ask(&plan.agent_socket, Duration::from_secs(2)) {
            Ok(s) if s.ready => break,
            answer => {
                if !said {
                    tracing::info!(?answer, "the conflist waits until the agent is ready");
                    said = true;
                }
            }
        }
        std::thread::sleep(READY_POLL);
    }
    match install::install(plan) {
        Ok(done) => {
            for (path, outcome) in done {
                tracing::info!(path = %path.display(), ?outcome, "conflist in place: the node's network is ready");
            }
        }
        Err(e) => tracing::error!(
            "writing the conflist: {e:#} (pods on this node get no network until it is written)"
        ),
    }
}

/// overlay mode's datastore when none is given.
pub const DEFAULT_OVERLAY_DATASTORE: &str = "sqlite:/var/lib/podwire/datastore.db";

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
    let etcd_tls = podwire_store::EtcdTls {
        ca_cert: args.etcd_ca_cert_file.clone(),
        cert: args.etcd_cert_file.clone(),
        key: args.etcd_key_file.clone(),
    };
    let exposure = ExposureConfig {
        external_pod_access: match args.external_pod_access {
            Access::Deny => ExternalPodAccess::Deny,
            Access::Allow => ExternalPodAccess::Allow,
        },
        allow_cidrs: args
            .external_allow_cidrs
            .iter()
            .map(|n| n.trunc())
            .collect(),
        vpc_datastore: match (args.mode, &args.datastore) {
            (Mode::Vpc, Some(spec)) => Some(DatastoreSpec {
                spec: spec.clone(),
                etcd_tls: etcd_tls.clone(),
            }),
            _ => None,
        },
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
                datastore: args
                    .datastore
                    .unwrap_or_else(|| DEFAULT_OVERLAY_DATASTORE.to_string()),
                etcd_tls,
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
        exposure,
        metrics_address: args.metrics_address.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    use podwire_proto::{Response, StatusInfo};

    /// A stand-in agent: not ready for the first `not_ready` requests, then
    /// ready. Returns, per request, whether the conflist already existed.
    fn fake_agent(
        sock: &std::path::Path,
        conflist: PathBuf,
        not_ready: usize,
    ) -> std::thread::JoinHandle<Vec<bool>> {
        let listener = UnixListener::bind(sock).expect("bind");
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for i in 0..=not_ready {
                let (stream, _) = listener.accept().expect("accept");
                let deadline = Instant::now() + Duration::from_secs(10);
                podwire_proto::read_request(&stream, deadline).expect("request");
                seen.push(conflist.exists());
                let status = StatusInfo {
                    node: "pwt-node".into(),
                    ready: i == not_ready,
                    free_ips: 0,
                    assigned_ips: 0,
                    message: String::new(),
                };
                podwire_proto::write_response(&stream, &Response::Status { status }, deadline)
                    .expect("answer");
            }
            seen
        })
    }

    #[test]
    fn the_conflist_appears_only_once_the_agent_answers_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf_dir = dir.path().join("net.d");
        let conflist = conf_dir.join(install::CONFLIST_NAME);
        let sock = dir.path().join("agent.sock");
        let plan = Install {
            mode: podwire_cni::config::Mode::Overlay,
            plugin: None,
            bin_dir: PathBuf::new(),
            conf_dir: Some(conf_dir),
            agent_socket: sock.clone(),
            state_dir: dir.path().join("state"),
            force: false,
        };
        let agent = fake_agent(&sock, conflist.clone(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            write_conflist_when_ready(&plan);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the writer finishes once the agent is ready");
        assert_eq!(agent.join().expect("fake agent"), vec![false, false, false]);
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&conflist).expect("conflist")).expect("json");
        assert_eq!(v["plugins"][0]["mode"], "overlay");
        assert_eq!(v["plugins"][0]["agentSocket"], sock.display().to_string());
    }
}
