//! The `podwire-agent` command line. With no subcommand it runs the agent
//! (today's flags, unchanged); `install-cni`, `uninstall-cni` and `status`
//! are the node-install and probe commands.
//!
//! Every flag also reads an environment variable (a flag beats its variable,
//! which beats the default): the Amazon VPC CNI's name where the meaning is
//! the same, Calico's for overlay settings where one exists, `PODWIRE_*`
//! otherwise. docs/SETTINGS.md lists them all; a test keeps it complete.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use podwire_agent_core::BlockedDestination;
use podwire_cni::config::Mode;

/// The agent's state dir when nothing else is said (a tmpfs: pods do not
/// outlive a boot).
pub const DEFAULT_STATE_DIR: &str = "/run/podwire";
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";

#[derive(Debug, Parser)]
#[command(
    name = "podwire-agent",
    version,
    about = "podwire node agent: warm pool of pod addresses, ENI plumbing, plugin socket",
    // `podwire-agent --mode vpc …` (no subcommand) runs the agent, as before.
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy the plugin into the CNI bin dir and write 10-podwire.conflist
    /// into the CNI conf dir (atomically, idempotently).
    InstallCni(InstallArgs),
    /// Remove what install-cni wrote, each file only if it is unchanged.
    UninstallCni(UninstallArgs),
    /// Ask the running agent whether it serves ADDs; exit 0 only if it does
    /// (the readiness probe).
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Dataplane mode: `vpc` or `overlay`.
    #[arg(long, env = "PODWIRE_MODE", default_value = "vpc")]
    pub mode: Mode,
    /// Name this node reports in messages (default: the host name).
    #[arg(long, env = "MY_NODE_NAME")]
    pub node_name: Option<String>,
    /// Unix socket the plugin talks to.
    #[arg(long, env = "PODWIRE_SOCKET", default_value = podwire_agent_core::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where allocations are checkpointed (a tmpfs: pods do not outlive a boot).
    #[arg(long, env = "PODWIRE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Whether pods may reach the instance metadata service
    /// (169.254.169.254): `deny` (default) or `allow`.
    #[arg(long, env = "PODWIRE_POD_IMDS_ACCESS", default_value = "deny")]
    pub pod_imds_access: Access,
    /// More destinations pods may not reach: `CIDR[:PORT]`, comma-separated
    /// (the datastore's and the cloud API's endpoints, for example).
    #[arg(long, env = "PODWIRE_BLOCK_POD_EGRESS", value_delimiter = ',')]
    pub block_pod_egress: Vec<BlockedDestination>,
    /// Whether hosts outside the cluster may open connections to pods:
    /// `deny` (default: only the cluster's nodes and pods, and
    /// --external-allow-cidrs) or `allow` (whoever reaches the node reaches
    /// its pods, the VPC CNI's behaviour).
    #[arg(long, env = "PODWIRE_EXTERNAL_POD_ACCESS", default_value = "deny")]
    pub external_pod_access: Access,
    /// Networks outside the cluster that may still open connections to pods
    /// under `deny` (load balancers in IP mode, a bastion): CIDRs,
    /// comma-separated.
    #[arg(long, env = "PODWIRE_EXTERNAL_ALLOW_CIDRS", value_delimiter = ',')]
    pub external_allow_cidrs: Vec<ipnet::Ipv4Net>,
    /// Instance metadata service.
    #[arg(long, env = "PODWIRE_IMDS_ENDPOINT", default_value = podwire_cloud::imds::DEFAULT_ENDPOINT)]
    pub imds_endpoint: String,
    /// EC2 API endpoint (default: https://ec2.<region>.amazonaws.com).
    #[arg(long, env = "AWS_EC2_ENDPOINT")]
    pub ec2_endpoint: Option<String>,
    /// Free addresses to keep ready (default: one ENI's worth).
    #[arg(long, env = "WARM_IP_TARGET")]
    pub warm_ip_target: Option<u32>,
    /// Addresses to hold in all, free or assigned (with no --warm-ip-target:
    /// no warm margin beyond it).
    #[arg(long, env = "MINIMUM_IP_TARGET", default_value_t = 0)]
    pub minimum_ip_target: u32,
    /// Seconds a released address rests before reuse.
    #[arg(long, env = "IP_COOLDOWN_PERIOD", default_value_t = 30)]
    pub ip_cooldown_secs: u64,
    /// Seconds between returns of addresses above --warm-ip-target to the cloud.
    #[arg(
        long,
        env = "PODWIRE_POOL_DECREASE_INTERVAL_SECS",
        default_value_t = 30
    )]
    pub pool_decrease_interval_secs: u64,
    /// MTU of secondary ENIs.
    #[arg(long, env = "AWS_VPC_ENI_MTU", default_value_t = 9001)]
    pub eni_mtu: u32,
    /// The datastore: `sqlite:/path/file.db`, `etcd://host:port` (plain
    /// HTTP) or `etcd+https://host:port` (TLS; needs --etcd-ca-cert-file),
    /// several etcd endpoints comma-separated. overlay: IPAM, nodes and the
    /// cluster's records (default sqlite:/var/lib/podwire/datastore.db);
    /// vpc: the cluster's records (nodes, endpoints, namespaces, pods,
    /// policies), none by default.
    #[arg(long, env = "PODWIRE_DATASTORE")]
    pub datastore: Option<String>,
    /// etcd+https: the CA certificate (PEM) that signed the etcd
    /// servers' certificates.
    #[arg(long, env = "ETCD_CA_CERT_FILE")]
    pub etcd_ca_cert_file: Option<PathBuf>,
    /// etcd+https: this node's client certificate (PEM), for an
    /// etcd that requires one (--client-cert-auth).
    #[arg(long, env = "ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// etcd+https: the client certificate's private key (PEM).
    #[arg(long, env = "ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// overlay: the pod CIDR.
    #[arg(long, env = "CALICO_IPV4POOL_CIDR", default_value = "172.16.0.0/16")]
    pub pod_cidr: ipnet::Ipv4Net,
    /// overlay: block prefix length.
    #[arg(long, env = "CALICO_IPV4POOL_BLOCK_SIZE", default_value_t = 26)]
    pub block_size: u8,
    /// overlay: never borrow addresses from other nodes' blocks.
    #[arg(long, env = "PODWIRE_STRICT_AFFINITY")]
    pub strict_affinity: bool,
    /// overlay: VXLAN network identifier.
    #[arg(long, env = "FELIX_VXLANVNI", default_value_t = 4096)]
    pub vni: u32,
    /// overlay: VXLAN UDP port.
    #[arg(long, env = "FELIX_VXLANPORT", default_value_t = 4789)]
    pub vxlan_port: u16,
    /// overlay: the underlay device (its address is the VTEP).
    #[arg(long, env = "PODWIRE_UNDERLAY_DEV", default_value = "eth0")]
    pub underlay_dev: String,
    /// overlay: seconds an empty block is kept before it goes back to the pool.
    #[arg(long, env = "PODWIRE_BLOCK_GRACE_SECS", default_value_t = 300)]
    pub block_grace_secs: u64,
    /// Once the agent is ready, write 10-podwire.conflist into this CNI conf
    /// dir (as the VPC CNI does: a node never turns Ready with a network
    /// that answers "try again"). Not given: the agent writes no conflist.
    #[arg(long, env = "PODWIRE_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Where `/metrics` (Prometheus), `/healthz` and `/v1/state` are served
    /// (`IP:PORT`; loopback by default), or `off`.
    #[arg(long, env = "PODWIRE_METRICS_ADDRESS", default_value = podwire_agent_core::DEFAULT_METRICS_ADDRESS,
          value_parser = parse_metrics_address)]
    pub metrics_address: MetricsAddress,
    /// Print the settings the agent would run with (flags, environment and
    /// defaults resolved) and exit without touching the node.
    #[arg(long)]
    pub print_config: bool,
}

/// `--metrics-address`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddress(pub Option<std::net::SocketAddr>);

fn parse_metrics_address(s: &str) -> Result<MetricsAddress, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddress(None));
    }
    s.parse()
        .map(|a| MetricsAddress(Some(a)))
        .map_err(|e| format!("{e}: want IP:PORT (127.0.0.1:61678) or `off`"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Access {
    Deny,
    Allow,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Dataplane mode the conflist names: `vpc` or `overlay`.
    #[arg(long, env = "PODWIRE_MODE", default_value = "vpc")]
    pub mode: Mode,
    /// The plugin binary to copy (default: `podwire` next to this binary).
    #[arg(long, env = "PODWIRE_PLUGIN")]
    pub plugin: Option<PathBuf>,
    /// CNI bin dir the plugin is copied into.
    #[arg(long, env = "PODWIRE_CNI_BIN_DIR", default_value = DEFAULT_CNI_BIN_DIR)]
    pub bin_dir: PathBuf,
    /// CNI conf dir 10-podwire.conflist is written into.
    #[arg(long, env = "PODWIRE_CNI_CONF_DIR", default_value = DEFAULT_CNI_CONF_DIR)]
    pub conf_dir: PathBuf,
    /// The agent socket the conflist points the plugin at (the agent's
    /// --socket).
    #[arg(long, env = "PODWIRE_SOCKET", default_value = podwire_agent_core::DEFAULT_SOCKET)]
    pub agent_socket: PathBuf,
    /// Where the record of what was written is kept (the agent's --state-dir).
    #[arg(long, env = "PODWIRE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Replace a 10-podwire.conflist this command did not write.
    #[arg(long)]
    pub force: bool,
    /// Copy the plugin only; the agent writes the conflist once it is
    /// ready (its --cni-conf-dir).
    #[arg(long)]
    pub skip_conflist: bool,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Where install-cni kept its record (the agent's --state-dir).
    #[arg(long, env = "PODWIRE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's socket (the agent's --socket).
    #[arg(long, env = "PODWIRE_SOCKET", default_value = podwire_agent_core::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Seconds to wait for the agent's answer.
    #[arg(long, env = "PODWIRE_STATUS_TIMEOUT_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout_secs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("podwire-agent").chain(args.iter().copied()))
            .expect("parse")
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn todays_flags_with_no_subcommand_run_the_agent() {
        let c = parse(&[
            "--mode",
            "overlay",
            "--socket",
            "/run/podwire/lab/a.sock",
            "--pod-cidr",
            "10.244.0.0/16",
            "--block-size",
            "24",
            "--strict-affinity",
        ]);
        assert!(c.command.is_none());
        assert_eq!(c.daemon.mode, Mode::Overlay);
        assert_eq!(c.daemon.socket, PathBuf::from("/run/podwire/lab/a.sock"));
        assert_eq!(c.daemon.block_size, 24);
        assert!(c.daemon.strict_affinity);
    }

    #[test]
    fn the_metrics_address_defaults_to_loopback_and_can_be_turned_off() {
        let d = parse(&[]).daemon.metrics_address;
        assert_eq!(d.0, Some("127.0.0.1:61678".parse().expect("addr")));
        assert_eq!(
            parse(&["--metrics-address", "off"])
                .daemon
                .metrics_address
                .0,
            None
        );
        assert_eq!(
            parse(&["--metrics-address", "0.0.0.0:9100"])
                .daemon
                .metrics_address
                .0,
            Some("0.0.0.0:9100".parse().expect("addr"))
        );
        assert!(Cli::try_parse_from(["podwire-agent", "--metrics-address", "localhost"]).is_err());
    }

    #[test]
    fn install_cni_takes_its_flags_and_the_daemon_flags_do_not_mix_in() {
        let c = parse(&[
            "install-cni",
            "--mode",
            "overlay",
            "--bin-dir",
            "/b",
            "--conf-dir",
            "/c",
            "--agent-socket",
            "/s.sock",
            "--force",
        ]);
        let Some(Command::InstallCni(a)) = c.command else {
            panic!("not install-cni: {c:?}");
        };
        assert_eq!(a.mode, Mode::Overlay);
        assert_eq!(
            (a.bin_dir, a.conf_dir, a.agent_socket),
            ("/b".into(), "/c".into(), "/s.sock".into())
        );
        assert!(a.force);
        let d = parse(&["install-cni"]);
        let Some(Command::InstallCni(a)) = d.command else {
            panic!("not install-cni");
        };
        assert_eq!(a.bin_dir, PathBuf::from(DEFAULT_CNI_BIN_DIR));
        assert_eq!(a.conf_dir, PathBuf::from(DEFAULT_CNI_CONF_DIR));
        assert!(!a.force);
        assert!(Cli::try_parse_from(["podwire-agent", "--mode", "vpc", "install-cni"]).is_err());
        assert!(matches!(
            parse(&["uninstall-cni"]).command,
            Some(Command::UninstallCni(_))
        ));
    }

    #[test]
    fn the_posture_defaults_to_deny_and_takes_an_allow_list() {
        let d = parse(&[]).daemon;
        assert_eq!(d.external_pod_access, Access::Deny);
        assert!(d.external_allow_cidrs.is_empty());
        assert_eq!(d.datastore, None, "vpc mode has no datastore unless given");
        let a = parse(&[
            "--external-pod-access",
            "allow",
            "--external-allow-cidrs",
            "10.0.5.0/24,192.0.2.7/32",
        ])
        .daemon;
        assert_eq!(a.external_pod_access, Access::Allow);
        assert_eq!(a.external_allow_cidrs.len(), 2);
        for bad in [
            &["--external-pod-access", "open"][..],
            &["--external-allow-cidrs", "10.0.0.0/33"],
            &["--external-allow-cidrs", "example.com"],
        ] {
            let argv = std::iter::once("podwire-agent").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn etcd_tls_flags_parse_and_a_certificate_needs_its_key() {
        let a = parse(&[
            "--datastore",
            "etcd+https://10.0.0.5:2379",
            "--etcd-ca-cert-file",
            "/etc/podwire/ca.pem",
            "--etcd-cert-file",
            "/etc/podwire/c.pem",
            "--etcd-key-file",
            "/etc/podwire/k.pem",
        ])
        .daemon;
        assert_eq!(a.etcd_ca_cert_file, Some("/etc/podwire/ca.pem".into()));
        assert_eq!(a.etcd_cert_file, Some("/etc/podwire/c.pem".into()));
        assert_eq!(a.etcd_key_file, Some("/etc/podwire/k.pem".into()));
        for lone in ["--etcd-cert-file", "--etcd-key-file"] {
            assert!(
                Cli::try_parse_from(["podwire-agent", lone, "/x.pem"]).is_err(),
                "{lone} alone"
            );
        }
    }

    /// Every flag of every command: (command path, `--flag`, env var).
    pub(crate) fn all_flags() -> Vec<(String, String, Option<String>)> {
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, Option<String>)>) {
            for a in cmd.get_arguments() {
                let Some(long) = a.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                out.push((path.to_string(), format!("--{long}"), env));
            }
            for sub in cmd.get_subcommands() {
                walk(sub, sub.get_name(), out);
            }
        }
        let mut out = Vec::new();
        walk(&Cli::command(), "agent", &mut out);
        out
    }

    /// docs/SETTINGS.md rows: `| command | --flag | ENV | default | meaning |`.
    fn documented() -> Vec<(String, String, Option<String>)> {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/SETTINGS.md"),
        )
        .expect("docs/SETTINGS.md");
        let tick = |s: &str| s.trim().trim_matches('`').to_string();
        doc.lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.trim().strip_prefix('|')?.split('|').collect();
                let flag = tick(cells.get(1)?);
                // `--name`, not the `|---|` separator row.
                let named = flag
                    .strip_prefix("--")
                    .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_alphabetic()));
                named.then(|| {
                    let env = tick(cells.get(2).copied().unwrap_or(""));
                    (
                        tick(cells[0]),
                        flag,
                        (!env.is_empty() && env != "—").then_some(env),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn every_flag_has_one_documented_row_with_its_env_var_and_no_row_is_stale() {
        let flags = all_flags();
        let rows = documented();
        assert!(flags.len() > 25, "{} flags found", flags.len());
        for f in &flags {
            let n = rows.iter().filter(|r| *r == f).count();
            assert_eq!(
                n,
                1,
                "docs/SETTINGS.md: want one row `{} | {} | {}`, found {n}",
                f.0,
                f.1,
                f.2.as_deref().unwrap_or("—")
            );
        }
        for r in &rows {
            assert!(
                flags.contains(r),
                "docs/SETTINGS.md documents {r:?}, which the agent does not have"
            );
        }
    }
}
