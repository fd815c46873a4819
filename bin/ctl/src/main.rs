//! `podwirectl`: the operator CLI. Today: `lab`, the local emulated VPC.

mod audit;
mod capacity;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use podwire_cni::config::Mode;
use podwire_lab::cloud::faults::{CloudFaults, FaultUpdate};
use podwire_lab::{demo, names, ops, probe, state::LabState};

mod labpods;
mod policy;

#[derive(Debug, Parser)]
#[command(name = "podwirectl", version, about = "podwire operator CLI")]
struct Cli {
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// The local lab: an emulated VPC made of network namespaces.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Kubernetes NetworkPolicies in the datastore (a lab's, or any).
    Policy {
        #[command(subcommand)]
        cmd: policy::PolicyCmd,
    },
    /// A live agent on this node (outside the lab too).
    Node {
        #[command(subcommand)]
        cmd: NodeTop,
    },
    /// IP capacity: max pods per instance type, a node group in a subnet,
    /// or the running agents' figures (docs/CAPACITY.md).
    Capacity(capacity::CapacityArgs),
    /// Who reaches each pod, on which ports, and why; --verify probes it
    /// (docs/AUDIT.md).
    Audit(audit::AuditArgs),
}

#[derive(Debug, Subcommand)]
enum NodeTop {
    /// What the agent says: STATUS over its socket, or its /v1/state over
    /// HTTP with --endpoint. Exits 1 when the agent is not ready.
    Status {
        /// The agent's socket (its --socket).
        #[arg(long, default_value = podwire_cni::config::DEFAULT_AGENT_SOCKET, conflicts_with = "endpoint")]
        socket: PathBuf,
        /// The agent's metrics endpoint, `http://IP:PORT` (its
        /// --metrics-address, e.g. http://127.0.0.1:61678).
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum LabCmd {
    /// Build a lab: fabric (the VPC), its cloud, nodes with agents, an external host.
    Up {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        /// `vpc` or `overlay`.
        #[arg(long, value_parser = parse_mode)]
        mode: Mode,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value = "m5.large")]
        instance_type: String,
        #[arg(long, default_value = "10.0.0.0/20", conflicts_with = "subnets")]
        subnet: ipnet::Ipv4Net,
        /// Several node subnets, comma-separated (nodes take them in turn).
        #[arg(long, value_delimiter = ',')]
        subnets: Vec<ipnet::Ipv4Net>,
        /// Open the node security group to the external host (and so every pod).
        #[arg(long)]
        allow_external: bool,
        /// Free addresses each agent keeps ready (default: one ENI's worth).
        #[arg(long)]
        warm_ip_target: Option<u32>,
        /// Addresses each agent holds in all, free or assigned.
        #[arg(long)]
        minimum_ip_target: Option<u32>,
        /// vpc: the agents delegate /28 prefixes (`--prefix-delegation`).
        #[arg(long)]
        prefix_delegation: bool,
        /// vpc: the agents' `--eni-gc-grace`: seconds after which an
        /// unattached podwire ENI is deleted [default: the agents', 300].
        #[arg(long, value_name = "SECS")]
        eni_gc_grace: Option<u64>,
        /// vpc: the agents' `--reconcile-interval`: seconds between checks
        /// of the pool against the cloud [default: the agents', 60].
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
        reconcile_interval: Option<u64>,
        /// Let pods reach the lab's instance metadata service (podwire's
        /// default, like the agents', is to keep them away from it).
        #[arg(long)]
        pod_imds_access: bool,
        /// overlay: the pod network [default: 172.16.0.0/16].
        #[arg(long)]
        pod_cidr: Option<ipnet::Ipv4Net>,
        /// overlay: block prefix length [default: 26].
        #[arg(long)]
        block_size: Option<u8>,
        /// `sqlite` (one file all nodes share) or `etcd` (the lab runs an etcd
        /// server on the fabric; nodes reach it as a VPC service): pods,
        /// namespaces and policies in both modes, the overlay's IPAM too
        /// [default: sqlite].
        #[arg(long, value_parser = ["sqlite", "etcd"])]
        datastore: Option<String>,
        /// What the agents do with traffic from outside the cluster to pods:
        /// `deny` (podwire's default) or `allow` (the VPC CNI's behaviour).
        #[arg(long, value_parser = labpods::parse_access, default_value = "deny")]
        external_pod_access: podwire_lab::state::ExternalPodAccess,
        #[command(flatten)]
        faults: FaultArgs,
    },
    /// Change the running lab cloud's injected failures and EC2 timing.
    Faults {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        #[command(flatten)]
        faults: FaultArgs,
    },
    /// Nodes, ENIs, addresses, pods and namespace names.
    Status {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Pods.
    Pod {
        #[command(subcommand)]
        cmd: PodCmd,
    },
    /// Kubernetes namespaces and their labels.
    Namespace {
        #[command(subcommand)]
        cmd: labpods::NamespaceCmd,
    },
    /// Every pod to every pod on one TCP port, in parallel: a reachability matrix.
    Probe {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        #[arg(long, default_value_t = 80)]
        port: u16,
        /// Each connection's deadline.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long)]
        json: bool,
    },
    /// Restart the agents with `--external-pod-access deny|allow`.
    ExternalPodAccess {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        #[arg(value_parser = labpods::parse_access)]
        access: podwire_lab::state::ExternalPodAccess,
    },
    /// Nodes: add the next one to a running lab, or remove one (its pods first).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Run a command inside a node, a pod, `external` or `fabric`.
    Exec {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        target: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// traceroute from inside FROM's namespace to TO.
    Trace {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        from: String,
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// HTTP GET from FROM to TO[:PORT].
    Curl {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        from: String,
        to: String,
    },
    /// Open or close the node security group to the external host.
    AllowExternal {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Call the lab cloud's EC2 API: ACTION [Key=Value ...]; prints the XML.
    Ec2 {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        action: String,
        params: Vec<String>,
    },
    /// Stop or start a node's agent (pods keep running while it is down).
    Agent {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        #[arg(value_parser = ["stop", "start"])]
        action: String,
        node: String,
    },
    /// The article's two experiments, narrated: vpc mode (lab `demo-vpc`),
    /// then overlay mode (lab `demo-ovl`), then a comparison. Labs of those
    /// names are replaced.
    Demo {
        #[arg(long, default_value = "demo")]
        name: String,
        /// Leave the lab up afterwards to look around.
        #[arg(long)]
        keep: bool,
    },
    /// Remove the lab: every process, namespace and file it made.
    Down {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
    },
    #[command(name = "_cloud", hide = true)]
    Cloud {
        #[arg(long)]
        dir: PathBuf,
    },
    #[command(name = "_http", hide = true)]
    Http {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        namespace: String,
        /// Ports to serve (default 80).
        #[arg(long)]
        port: Vec<u16>,
    },
}

/// EC2 failures and timing the lab cloud emulates. On `lab faults` a flag
/// left out keeps its current value; on `lab up` it is 0 (or `new`).
#[derive(Debug, clap::Args)]
struct FaultArgs {
    /// Share (0..1) of EC2 requests answered 500 `InternalError`.
    #[arg(long)]
    error_rate: Option<f64>,
    /// Share (0..1) of EC2 requests answered 503 `RequestLimitExceeded`.
    #[arg(long)]
    throttle_rate: Option<f64>,
    /// Seed of the cloud's dice (default: random); the same seed fails the
    /// same n-th requests.
    #[arg(long)]
    fault_seed: Option<u64>,
    /// Every EC2 call waits this many milliseconds before it is answered.
    #[arg(long, value_name = "MS")]
    ec2_latency: Option<u64>,
    /// An attached ENI's link appears in the node this many milliseconds
    /// after AttachNetworkInterface answers (`attaching` until then).
    #[arg(long, value_name = "MS")]
    attach_delay: Option<u64>,
    /// `new`: Assign replies list the new addresses (EC2); `all`: every
    /// address of the ENI, the primary included (another implementation).
    #[arg(long, value_parser = ["new", "all"])]
    ec2_assign_reply: Option<String>,
}

impl FaultArgs {
    fn update(&self) -> anyhow::Result<FaultUpdate> {
        Ok(FaultUpdate {
            error_rate: self.error_rate,
            throttle_rate: self.throttle_rate,
            seed: self.fault_seed,
            ec2_latency_ms: self.ec2_latency,
            attach_delay_ms: self.attach_delay,
            assign_reply: self
                .ec2_assign_reply
                .as_deref()
                .map(str::parse)
                .transpose()?,
        })
    }
}

/// A seed nobody chose: the clock's nanoseconds mixed with the process id.
fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (u64::from(nanos) << 32) ^ u64::from(std::process::id())
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Launch, boot and join the next node (`node-3`, ...); prints its name.
    Add {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
    },
    /// Remove a node: its pods, its agent, its instance (and its overlay routes everywhere).
    Del {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum PodCmd {
    /// Create a pod on a node (prints its IP). POD is NAME (namespace
    /// default, or --namespace) or NS/NAME.
    Add {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        pod: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        namespace: Option<String>,
        /// Labels: k=v,k2=v2.
        #[arg(long, default_value = "")]
        labels: String,
        /// A named container port, NAME=PORT/tcp, served by a TCP listener
        /// that answers (repeatable).
        #[arg(long)]
        port: Vec<String>,
        /// Serve a page on TCP 80 inside the pod.
        #[arg(long)]
        http: bool,
    },
    /// Change a pod's labels: k=v adds or changes, k- removes.
    Label {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        pod: String,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Delete a pod: NAME (namespace default, or --namespace) or NS/NAME.
    Del {
        #[arg(long, default_value = names::DEFAULT_LAB)]
        name: String,
        pod: String,
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// clap's parser for [`Mode`], through its `FromStr` (the cni crate needs no clap).
fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
        .map_err(|e: podwire_cni::config::UnknownMode| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PODWIRE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("podwirectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `node status`: the agent's answer, printed; exit 1 when not ready.
fn node_status(
    socket: &std::path::Path,
    endpoint: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let v = match endpoint {
        Some(ep) => {
            let a = ops::http_get(ep, "/v1/state", std::time::Duration::from_secs(5))?;
            if a.status != 200 {
                anyhow::bail!("{ep}/v1/state answered {}: {}", a.status, a.body.trim());
            }
            serde_json::from_str::<serde_json::Value>(&a.body)
                .with_context(|| format!("{ep}/v1/state is not JSON"))?
        }
        None => {
            let v = ops::agent_status(socket);
            if v.is_null() {
                anyhow::bail!("no agent answers on {}", socket.display());
            }
            v
        }
    };
    let ready = v["ready"].as_bool().unwrap_or(false);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", format_node_status(&v));
    }
    Ok(if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The human form of a STATUS answer or a /v1/state document.
fn format_node_status(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let mut out = String::new();
    let node = v["node"]
        .as_str()
        .map(|n| format!("node {n}: "))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{node}{} ({} free, {} assigned){}",
        if v["ready"].as_bool().unwrap_or(false) {
            "ready"
        } else {
            "not ready"
        },
        v["free_ips"],
        v["assigned_ips"],
        if s("message").is_empty() {
            String::new()
        } else {
            format!(": {}", s("message"))
        }
    );
    if let Some(mode) = v["mode"].as_str() {
        let _ = writeln!(out, "mode {mode}");
    }
    if let Some(t) = v.get("targets").filter(|t| !t.is_null()) {
        let _ = writeln!(
            out,
            "targets: warm {} minimum {} whole ENIs {}",
            t["warm_ip_target"], t["minimum_ip_target"], t["whole_enis"]
        );
    }
    let count = |addrs: &serde_json::Value, state: &str| {
        addrs
            .as_array()
            .map_or(0, |a| a.iter().filter(|x| x["state"] == state).count())
    };
    for e in v["enis"].as_array().into_iter().flatten() {
        let a = &e["addresses"];
        let _ = writeln!(
            out,
            "eni {} (device {}): {} addresses, {} assigned, {} free, {} cooling",
            e["id"].as_str().unwrap_or("?"),
            e["device_index"],
            a.as_array().map_or(0, Vec::len),
            count(a, "assigned"),
            count(a, "free"),
            count(a, "cooling")
        );
        for x in a
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| !x["holder"].is_null())
        {
            let _ = writeln!(
                out,
                "  {} {}",
                x["ip"].as_str().unwrap_or("?"),
                x["holder"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(limit) = v["eni_limit"].as_u64() {
        let n = v["enis"].as_array().map_or(0, Vec::len);
        let _ = writeln!(out, "ENIs: {n} attached of {limit} allowed");
    }
    for b in v["blocks"].as_array().into_iter().flatten() {
        let c = &b["counts"];
        let _ = writeln!(
            out,
            "block {} (affinity {}): {} addresses, {} held, {} free",
            b["cidr"].as_str().unwrap_or("?"),
            b["affinity"].as_str().unwrap_or("none"),
            c["total"],
            c["assigned"],
            c["free"]
        );
        for x in b["addresses"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {} {}",
                x["ip"].as_str().unwrap_or("?"),
                x["holder"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(p) = v["peers"].as_u64() {
        let _ = writeln!(out, "peers: {p}");
    }
    for e in v["last_errors"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "error at {}: {}: {}",
            e["at"],
            e["what"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("")
        );
    }
    out
}

/// `lab allow-external`'s one-line confirmation.
fn allow_external_done(lab: &str, on: bool) -> String {
    if on {
        format!("lab {lab}: node security group open to the external host")
    } else {
        format!("lab {lab}: node security group closed to the external host")
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cmd = match cli.cmd {
        Top::Lab { cmd } => cmd,
        Top::Capacity(a) => return capacity::run(a),
        Top::Audit(a) => return audit::run(a),
        Top::Node {
            cmd:
                NodeTop::Status {
                    socket,
                    endpoint,
                    json,
                },
        } => return node_status(&socket, endpoint.as_deref(), json),
        Top::Policy { cmd } => {
            policy::run(cmd)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    match cmd {
        LabCmd::Up {
            name,
            mode,
            nodes,
            instance_type,
            subnet,
            subnets,
            allow_external,
            warm_ip_target,
            minimum_ip_target,
            prefix_delegation,
            eni_gc_grace,
            reconcile_interval,
            pod_imds_access,
            pod_cidr,
            block_size,
            datastore,
            external_pod_access,
            faults,
        } => {
            let cloud_faults = faults
                .update()?
                .apply(CloudFaults::default(), rand_seed())?;
            // A setting of the other mode is a mistake, not something to ignore.
            let misplaced: Vec<&str> = match mode {
                Mode::Vpc => [
                    ("--pod-cidr", pod_cidr.is_some()),
                    ("--block-size", block_size.is_some()),
                ]
                .into_iter()
                .filter_map(|(f, given)| given.then_some(f))
                .collect(),
                Mode::Overlay => [
                    ("--warm-ip-target", warm_ip_target.is_some()),
                    ("--minimum-ip-target", minimum_ip_target.is_some()),
                    ("--prefix-delegation", prefix_delegation),
                    ("--eni-gc-grace", eni_gc_grace.is_some()),
                    ("--reconcile-interval", reconcile_interval.is_some()),
                ]
                .into_iter()
                .filter_map(|(f, given)| given.then_some(f))
                .collect(),
            };
            if !misplaced.is_empty() {
                anyhow::bail!(
                    "{} do(es) not apply to --mode {mode}: leave it out, or choose the other mode",
                    misplaced.join(", ")
                );
            }
            let pod_cidr = pod_cidr.unwrap_or(ipnet::Ipv4Net::new_assert(
                std::net::Ipv4Addr::new(172, 16, 0, 0),
                16,
            ));
            let block_size = block_size.unwrap_or(26);
            let datastore = datastore.unwrap_or_else(|| "sqlite".into());
            let st = ops::up(&ops::UpOptions {
                name,
                mode,
                nodes,
                instance_type,
                subnets: if subnets.is_empty() {
                    vec![subnet]
                } else {
                    subnets
                },
                allow_external,
                warm_ip_target,
                minimum_ip_target,
                prefix_delegation,
                eni_gc_grace_secs: eni_gc_grace,
                reconcile_interval_secs: reconcile_interval,
                pod_imds_access,
                pod_cidr,
                block_size,
                datastore,
                cloud_faults,
                external_pod_access,
            })?;
            println!(
                "lab {} is up (mode {}, {} x {})",
                st.name,
                st.mode,
                st.nodes.len(),
                st.instance_type
            );
            for n in &st.nodes {
                println!("  {}  {}  netns {}", n.name, n.primary_ip, n.netns);
            }
            if let Some(e) = &st.external {
                println!("  {}  {}  netns {}", e.name, e.primary_ip, e.netns);
            }
        }
        LabCmd::Status { name, json } => {
            let v = ops::status_json(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", ops::format_status(&v));
            }
        }
        LabCmd::Pod {
            cmd:
                PodCmd::Add {
                    name,
                    pod,
                    node,
                    namespace,
                    labels,
                    port,
                    http,
                },
        } => {
            let spec = labpods::pod_spec(&pod, &node, namespace.as_deref(), &labels, &port, http)?;
            let rec = ops::pod_add(&name, &spec)?;
            println!("{}", rec.ip);
        }
        LabCmd::Pod {
            cmd:
                PodCmd::Label {
                    name,
                    pod,
                    namespace,
                    changes,
                },
        } => labpods::pod_label(&name, &pod, namespace.as_deref(), &changes)?,
        LabCmd::Namespace { cmd } => labpods::namespace(cmd)?,
        LabCmd::Probe {
            name,
            port,
            timeout_ms,
            json,
        } => labpods::probe(&name, port, timeout_ms, json)?,
        LabCmd::ExternalPodAccess { name, access } => labpods::external_pod_access(&name, access)?,
        LabCmd::Pod {
            cmd:
                PodCmd::Del {
                    name,
                    pod,
                    namespace,
                },
        } => ops::pod_del(&name, &labpods::pod_arg(&pod, namespace.as_deref())?)?,
        LabCmd::Node {
            cmd: NodeCmd::Add { name },
        } => {
            let n = ops::node_add(&name)?;
            println!("{}  {}", n.name, n.primary_ip);
        }
        LabCmd::Node {
            cmd: NodeCmd::Del { name, node },
        } => ops::node_del(&name, &node)?,
        LabCmd::Exec { name, target, cmd } => {
            let code = probe::exec(&LabState::load(&name)?, &target, &cmd)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        LabCmd::Trace {
            name,
            from,
            to,
            json,
        } => {
            let t = probe::trace(&LabState::load(&name)?, &from, &to)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                probe::print_trace(&t);
            }
            if !t.reached {
                return Ok(ExitCode::FAILURE);
            }
        }
        LabCmd::Curl { name, from, to } => {
            print!("{}", probe::curl(&LabState::load(&name)?, &from, &to)?)
        }
        LabCmd::Faults { name, faults } => {
            let now = ops::set_cloud_faults(&name, &faults.update()?, rand_seed())?;
            println!("{}", serde_json::to_string(&now)?);
        }
        LabCmd::AllowExternal { name, state } => {
            ops::set_allow_external(&name, state == "on")?;
            println!("{}", allow_external_done(&name, state == "on"));
        }
        LabCmd::Ec2 {
            name,
            action,
            params,
        } => {
            let params: Vec<(String, String)> = params
                .iter()
                .map(|p| {
                    p.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .context(format!("{p:?} is not Key=Value"))
                })
                .collect::<anyhow::Result<_>>()?;
            match ops::ec2_call(&name, &action, &params) {
                Ok(xml) => println!("{xml}"),
                // An error reply: EC2's code and message, exit 1.
                Err(podwire_lab::LabError::Ec2(e)) if e.code().is_some() => {
                    eprintln!("podwirectl: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            }
        }
        LabCmd::Agent { name, action, node } => {
            let mut st = LabState::load(&name)?;
            if action == "stop" {
                ops::stop_agent(&mut st, &node)?;
            } else {
                ops::restart_agent(&mut st, &node)?;
            }
        }
        LabCmd::Demo { name, keep } => demo::run(&name, keep)?,
        LabCmd::Down { name } => {
            ops::down(&name)?;
            println!("lab {name} is down: its processes, namespaces and files are gone");
        }
        LabCmd::Cloud { dir } => podwire_lab::cloud::serve(&dir)?,
        LabCmd::Http {
            dir: _,
            pod,
            namespace,
            port,
        } => probe::serve_http(&pod, &namespace, &port)?,
    }
    Ok(ExitCode::SUCCESS)
}
