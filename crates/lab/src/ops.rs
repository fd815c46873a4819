//! `lab up`, `lab down`, `lab pod add|del`, `lab status`, and EC2 calls into
//! the lab's cloud.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnet::Ipv4Net;
use podwire_cloud::{Credentials, Ec2Client};
use podwire_netlink::{netns, Handle, Route};
use serde_json::json;

use crate::cloud::model::{Cloud, IngressSource, SecurityGroup, Subnet};
use crate::cloud::{self, READY_FILE};
use crate::state::{self, LabState, NodeRec, PodRec};
use crate::{names, procs, LabError};

/// Options of `lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub name: String,
    pub mode: String,
    pub nodes: usize,
    pub instance_type: String,
    /// Node subnets (nodes are spread over them in turn); the first also
    /// holds the external host.
    pub subnets: Vec<Ipv4Net>,
    pub allow_external: bool,
    /// Free addresses each agent keeps ready (default: one ENI's worth).
    pub warm_ip_target: Option<u32>,
    /// Addresses each agent holds in all.
    pub minimum_ip_target: Option<u32>,
    /// overlay: the pod CIDR and its block size.
    pub pod_cidr: Ipv4Net,
    pub block_size: u8,
    /// overlay: `sqlite` (one file all nodes share) or `etcd` (a server the
    /// lab runs on the fabric).
    pub datastore: String,
}

/// Where the podwire binaries are: beside the running one, or
/// `PODWIRE_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PODWIRE_BIN_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn bin(name: &str) -> Result<PathBuf, LabError> {
    let p = bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(LabError::Usage(format!(
            "{} not found (build the workspace, or set PODWIRE_BIN_DIR)",
            p.display()
        )))
    }
}

fn gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Brings a lab up; on failure removes whatever it had made.
pub fn up(opts: &UpOptions) -> Result<LabState, LabError> {
    names::check_lab_name(&opts.name)?;
    if opts.mode != "vpc" && opts.mode != "overlay" {
        return Err(LabError::Usage(format!(
            "--mode {:?} must be vpc or overlay",
            opts.mode
        )));
    }
    if opts.mode == "overlay"
        && (opts.block_size < opts.pod_cidr.prefix_len() || opts.block_size > 30)
    {
        return Err(LabError::Usage(format!(
            "--block-size {} does not fit --pod-cidr {}",
            opts.block_size, opts.pod_cidr
        )));
    }
    if opts.nodes == 0 || opts.nodes > 16 {
        return Err(LabError::Usage("--nodes must be 1 to 16".into()));
    }
    let first = *opts
        .subnets
        .first()
        .ok_or_else(|| LabError::Usage("at least one subnet".into()))?;
    let vpc = Ipv4Net::new(first.network(), 16)
        .map(|n| n.trunc())
        .map_err(|e| LabError::Usage(e.to_string()))?;
    if opts.subnets.iter().any(|s| !vpc.contains(s)) {
        return Err(LabError::Usage(format!(
            "every subnet must lie in the VPC {vpc}"
        )));
    }
    for (i, a) in opts.subnets.iter().enumerate() {
        if opts.subnets[i + 1..]
            .iter()
            .any(|b| a.contains(b) || b.contains(a))
        {
            return Err(LabError::Usage(format!("subnet {a} overlaps another")));
        }
    }
    if opts
        .subnets
        .iter()
        .any(|s| s.prefix_len() > 28 || s.prefix_len() < 16)
    {
        return Err(LabError::Usage(
            "--subnet must be a /16 to /28 (as a VPC subnet)".into(),
        ));
    }
    let limits =
        podwire_cloud::LimitsTable::builtin().map_err(|e| LabError::State(e.to_string()))?;
    if limits.get(&opts.instance_type).is_none() {
        return Err(LabError::Usage(format!(
            "unknown instance type {:?}",
            opts.instance_type
        )));
    }
    let dir = names::lab_dir(&opts.name);
    if dir.join("lab.json").exists() {
        return Err(LabError::Usage(format!(
            "lab {:?} is already up (`podwirectl lab down --name {}` first)",
            opts.name, opts.name
        )));
    }
    let _lock = state::lock(&dir)?;
    let mut st = LabState {
        name: opts.name.clone(),
        mode: opts.mode.clone(),
        subnet: Some(first),
        subnets: opts.subnets.clone(),
        instance_type: opts.instance_type.clone(),
        allow_external: opts.allow_external,
        warm_ip_target: opts.warm_ip_target,
        minimum_ip_target: opts.minimum_ip_target,
        pod_cidr: (opts.mode == "overlay").then_some(opts.pod_cidr),
        block_size: opts.block_size,
        datastore: opts.datastore.clone(),
        ..Default::default()
    };
    st.save()?;
    match build(&mut st, opts) {
        Ok(()) => Ok(st),
        Err(e) => {
            let _ = st.save();
            let _ = teardown(&st);
            Err(e)
        }
    }
}

fn build(st: &mut LabState, opts: &UpOptions) -> Result<(), LabError> {
    let dir = st.dir();
    let lab = opts.name.clone();
    // The cloud model: a VPC, one subnet, two security groups, instances.
    // Ids are counters from a random start: unique within the lab, and
    // different from one lab to the next, as in EC2.
    let mut c = Cloud {
        region: "us-east-1".into(),
        next_id: u64::from(rand::random::<u32>()),
        ..Default::default()
    };
    c.vpc_id = c.new_id("vpc");
    let vpc_cidr = Ipv4Net::new(opts.subnets[0].network(), 16)
        .ok()
        .map(|n| n.trunc());
    c.vpc_cidr = vpc_cidr;
    let mut subnet_ids = Vec::new();
    for (k, cidr) in opts.subnets.iter().enumerate() {
        let id = c.new_id("subnet");
        let az = format!("us-east-1{}", (b'a' + (k % 6) as u8) as char);
        c.subnets.insert(
            id.clone(),
            Subnet {
                id: id.clone(),
                cidr: *cidr,
                availability_zone: az,
            },
        );
        subnet_ids.push((id, *cidr));
    }
    let node_sg = c.new_id("sg");
    let ext_sg = c.new_id("sg");
    // As an EKS managed node group: the nodes' group admits its own members.
    let mut node_ingress = BTreeSet::from([IngressSource::Group(node_sg.clone())]);
    if opts.allow_external {
        node_ingress.insert(IngressSource::Group(ext_sg.clone()));
    }
    c.groups.insert(
        node_sg.clone(),
        SecurityGroup {
            id: node_sg.clone(),
            name: format!("eks-cluster-sg-{lab}"),
            description: "EKS node group".into(),
            ingress: node_ingress,
        },
    );
    let ext_ingress = vpc_cidr.map(IngressSource::Cidr).into_iter().collect();
    c.groups.insert(
        ext_sg.clone(),
        SecurityGroup {
            id: ext_sg.clone(),
            name: format!("{lab}-external"),
            description: "an instance outside the cluster".into(),
            ingress: ext_ingress,
        },
    );
    let ak = format!("AKIA{:016X}", rand_u64());
    c.credentials.insert(ak, format!("{:032x}", rand_u128()));
    st.node_sg = node_sg.clone();
    st.external_sg = ext_sg.clone();

    // Nodes take the subnets in turn; the external host sits in the first.
    let mut hosts: Vec<(String, String, String, String, usize)> = (1..=opts.nodes)
        .map(|i| {
            (
                names::node_name(i),
                names::ns_node(&lab, i),
                opts.instance_type.clone(),
                node_sg.clone(),
                (i - 1) % subnet_ids.len(),
            )
        })
        .collect();
    hosts.push((
        names::EXTERNAL.into(),
        names::ns_external(&lab),
        "t3.micro".into(),
        ext_sg.clone(),
        0,
    ));
    let limits =
        podwire_cloud::LimitsTable::builtin().map_err(|e| LabError::State(e.to_string()))?;
    let api =
        |e: crate::cloud::model::ApiError| LabError::State(format!("{}: {}", e.code, e.message));
    let mut recs = Vec::new();
    for (host, ns, ty, sg, k) in &hosts {
        let (subnet_id, cidr) = &subnet_ids[*k];
        let id = c
            .run_instance(&limits, host, ns, ty, subnet_id, vec![sg.clone()])
            .map_err(api)?;
        let ip = c
            .instance_enis(&id)
            .first()
            .map(|e| e.primary_ip)
            .ok_or_else(|| LabError::State("instance without ENI".into()))?;
        recs.push(NodeRec {
            name: host.clone(),
            netns: ns.clone(),
            instance_id: id,
            primary_ip: ip,
            subnet: Some(*cidr),
            socket: dir.join(host).join("agent.sock"),
            agent_pid: None,
        });
    }

    // Namespaces, each recorded before it exists.
    let mut all_ns = vec![names::ns_fabric(&lab)];
    all_ns.extend(hosts.iter().map(|h| h.1.clone()));
    for ns in &all_ns {
        st.namespaces.push(ns.clone());
        st.save()?;
        procs::netns_add(ns)?;
    }
    st.external = recs.pop();
    st.nodes = recs;
    st.save()?;

    cloud::save(&dir, &c)?;
    let me = std::env::current_exe().map_err(|e| LabError::State(e.to_string()))?;
    let log = dir.join("cloud.log");
    let pid = procs::spawn_in(
        &names::ns_fabric(&lab),
        &me,
        &[
            "lab".into(),
            "_cloud".into(),
            "--dir".into(),
            dir.display().to_string(),
        ],
        &log,
    )?;
    st.cloud_pid = Some(pid);
    st.save()?;
    let ready = dir.join(READY_FILE);
    procs::wait_for("lab cloud", pid, &log, Duration::from_secs(15), || {
        ready.exists()
    })?;

    for r in st.nodes.iter().chain(st.external.iter()) {
        boot(r)?;
    }
    if st.pod_cidr.is_some() && st.datastore == "etcd" {
        start_etcd(st)?;
    }

    for i in 0..st.nodes.len() {
        start_agent(st, i)?;
    }
    Ok(())
}

/// Where the lab's etcd listens: an address of the fabric, reached by the
/// nodes through their eth0 like any VPC service.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 251);

/// The datastore as the agents are told to open it.
fn datastore_spec(st: &LabState) -> String {
    if st.datastore == "etcd" {
        format!("etcd://{ETCD_ADDR}:2379")
    } else {
        format!("sqlite:{}", st.dir().join("datastore.db").display())
    }
}

/// Starts the lab's etcd in the fabric namespace.
fn start_etcd(st: &mut LabState) -> Result<(), LabError> {
    let fabric = names::ns_fabric(&st.name);
    let mut h = Handle::in_netns(&procs::netns_path(&fabric))?;
    let lo = h.link("lo")?;
    if let Err(e) = h.add_address(
        lo.index,
        Ipv4Net::new(ETCD_ADDR, 32).map_err(|e| LabError::State(e.to_string()))?,
    ) {
        if !e.is_exists() {
            return Err(e.into());
        }
    }
    let dir = st.dir();
    let client = format!("http://{ETCD_ADDR}:2379");
    let args: Vec<String> = [
        "--name",
        "podwire-lab",
        "--data-dir",
        &dir.join("etcd").display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "podwire-lab=http://127.0.0.1:2380",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = dir.join("etcd.log");
    let pid = procs::spawn_in(&fabric, Path::new("etcd"), &args, &log)?;
    st.etcd_pid = Some(pid);
    st.save()?;
    let ns = procs::netns_path(&fabric);
    procs::wait_for("etcd", pid, &log, Duration::from_secs(20), || {
        crate::probe::port_open(&ns, ETCD_ADDR, 2379)
    })
}

/// The lab's datastore, opened from the host (etcd through the fabric).
pub fn lab_store(st: &LabState) -> Result<std::sync::Arc<dyn podwire_store::Datastore>, LabError> {
    if st.datastore == "etcd" {
        let endpoint = vec![format!("http://{ETCD_ADDR}:2379")];
        // The store's runtime threads are born in the fabric namespace and
        // keep it, so its connections are made from there.
        let store = netns::run_in(&procs::netns_path(&names::ns_fabric(&st.name)), move || {
            podwire_store::EtcdStore::connect(&endpoint)
        })?
        .map_err(|e| LabError::State(e.to_string()))?;
        Ok(std::sync::Arc::new(store))
    } else {
        let s = podwire_store::SqliteStore::open(&st.dir().join("datastore.db"))
            .map_err(|e| LabError::State(e.to_string()))?;
        Ok(std::sync::Arc::new(s))
    }
}

/// What an instance's OS does at boot (DHCP, in AWS): lo and eth0 up,
/// eth0's address, the default route via the subnet's router.
fn boot(r: &NodeRec) -> Result<(), LabError> {
    let subnet = r
        .subnet
        .ok_or_else(|| LabError::State(format!("{} has no subnet", r.name)))?;
    let mut h = Handle::in_netns(&procs::netns_path(&r.netns))?;
    let lo = h.link("lo")?;
    h.set_up(lo.index)?;
    let eth0 = h.link("eth0")?;
    h.add_address(
        eth0.index,
        Ipv4Net::new(r.primary_ip, subnet.prefix_len())
            .map_err(|e| LabError::State(e.to_string()))?,
    )?;
    h.set_up(eth0.index)?;
    h.add_route(
        &Route::new(Ipv4Net::default())
            .via(gateway(&subnet))
            .dev(eth0.index),
    )?;
    Ok(())
}

fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].to_string())
}

/// `lab node add`: launches the next node through the cloud's RunInstances,
/// boots it and starts its agent.
pub fn node_add(lab: &str) -> Result<NodeRec, LabError> {
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    let i = st
        .nodes
        .iter()
        .filter_map(|n| n.name.strip_prefix("node-")?.parse::<usize>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    // As at `up`: nodes take the subnets in turn.
    let subnets: Vec<Ipv4Net> = if st.subnets.is_empty() {
        st.subnet.into_iter().collect()
    } else {
        st.subnets.clone()
    };
    let subnet = *subnets
        .get((i - 1) % subnets.len().max(1))
        .ok_or_else(|| LabError::State("lab has no subnet".into()))?;
    let name = names::node_name(i);
    let ns = names::ns_node(lab, i);
    st.namespaces.push(ns.clone());
    st.save()?;
    procs::netns_add(&ns)?;
    match launch(&mut st, lab, &name, &ns, subnet) {
        Ok(rec) => Ok(rec),
        Err(e) => {
            // Undo: the instance (if launched), the namespace, the records.
            if let Some(r) = st.nodes.iter().find(|n| n.name == name).cloned() {
                if let Some(pid) = r.agent_pid {
                    procs::stop(pid, &st.dir().display().to_string());
                }
                let _ = ec2_call(
                    lab,
                    "TerminateInstances",
                    &[("InstanceId.1".into(), r.instance_id)],
                );
            }
            let _ = procs::netns_del(&ns);
            st.nodes.retain(|n| n.name != name);
            st.namespaces.retain(|n| *n != ns);
            st.save()?;
            Err(e)
        }
    }
}

fn launch(
    st: &mut LabState,
    lab: &str,
    name: &str,
    ns: &str,
    subnet: Ipv4Net,
) -> Result<NodeRec, LabError> {
    let c = cloud::load(&st.dir())?;
    let subnet_id = c
        .subnets
        .values()
        .find(|s| s.cidr == subnet)
        .map(|s| s.id.clone())
        .ok_or_else(|| LabError::State(format!("no subnet {subnet} in the cloud")))?;
    let xml = ec2_call(
        lab,
        "RunInstances",
        &[
            ("ImageId".into(), "ami-podwire-lab".into()),
            ("InstanceType".into(), st.instance_type.clone()),
            ("SubnetId".into(), subnet_id),
            ("SecurityGroupId.1".into(), st.node_sg.clone()),
            ("MinCount".into(), "1".into()),
            ("MaxCount".into(), "1".into()),
            ("TagSpecification.1.ResourceType".into(), "instance".into()),
            ("TagSpecification.1.Tag.1.Key".into(), "Name".into()),
            ("TagSpecification.1.Tag.1.Value".into(), name.to_string()),
            (
                "TagSpecification.1.Tag.2.Key".into(),
                "podwire:netns".into(),
            ),
            ("TagSpecification.1.Tag.2.Value".into(), ns.to_string()),
        ],
    )?;
    let instance_id = xml_field(&xml, "instanceId")
        .ok_or_else(|| LabError::State("RunInstances: no instanceId".into()))?;
    let primary_ip = xml_field(&xml, "privateIpAddress")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| LabError::State("RunInstances: no privateIpAddress".into()))?;
    let rec = NodeRec {
        name: name.to_string(),
        netns: ns.to_string(),
        instance_id,
        primary_ip,
        subnet: Some(subnet),
        socket: st.dir().join(name).join("agent.sock"),
        agent_pid: None,
    };
    st.nodes.push(rec.clone());
    st.save()?;
    boot(&rec)?;
    let idx = st.nodes.len() - 1;
    start_agent(st, idx)?;
    Ok(st.nodes[idx].clone())
}

/// `lab node del`: deletes the node's pods, stops its agent, terminates the
/// instance and, in overlay mode, removes the node from the datastore so
/// every other node drops its routes.
pub fn node_del(lab: &str, node: &str) -> Result<(), LabError> {
    let st = LabState::load(lab)?;
    st.node(node)?;
    for p in st.pods.values().filter(|p| p.node == node) {
        pod_del(lab, &p.name)?;
    }
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    let idx = st
        .nodes
        .iter()
        .position(|n| n.name == node)
        .ok_or_else(|| LabError::Usage(format!("no node {node}")))?;
    let rec = st.nodes[idx].clone();
    if let Some(pid) = rec.agent_pid {
        procs::stop(pid, &st.dir().display().to_string());
    }
    if let Some(pool) = st.pod_cidr {
        let store: std::sync::Arc<dyn podwire_store::Datastore> = std::sync::Arc::new(
            podwire_store::SqliteStore::open(&st.dir().join("datastore.db"))
                .map_err(|e| LabError::State(e.to_string()))?,
        );
        let ipam = podwire_ipam::block_store::BlockIpam::open(
            std::sync::Arc::clone(&store),
            podwire_ipam::block_store::PoolConfig {
                pool,
                block_prefix: st.block_size,
                strict_affinity: false,
            },
        )
        .map_err(|e| LabError::State(e.to_string()))?;
        podwire_ipam::nodes::remove(store, &ipam, node)
            .map_err(|e| LabError::State(e.to_string()))?;
    }
    ec2_call(
        lab,
        "TerminateInstances",
        &[("InstanceId.1".into(), rec.instance_id.clone())],
    )?;
    procs::netns_del(&rec.netns)?;
    st.nodes.remove(idx);
    st.namespaces.retain(|n| *n != rec.netns);
    st.save()
}

fn rand_u64() -> u64 {
    rand::random()
}
fn rand_u128() -> u128 {
    rand::random()
}

/// The agent answers STATUS with free addresses ready.
pub fn agent_ready(socket: &Path) -> bool {
    matches!(
        podwire_proto::call(socket, &podwire_proto::Request::Status, Duration::from_secs(2)),
        Ok(podwire_proto::Response::Status { status }) if status.ready
    )
}

/// The agent's own STATUS answer, or null when it does not answer.
fn agent_status(socket: &Path) -> serde_json::Value {
    match podwire_proto::call(
        socket,
        &podwire_proto::Request::Status,
        Duration::from_secs(1),
    ) {
        Ok(podwire_proto::Response::Status { status }) => json!({
            "ready": status.ready, "free_ips": status.free_ips, "assigned_ips": status.assigned_ips, "message": status.message,
        }),
        _ => serde_json::Value::Null,
    }
}

/// Starts a node's agent again (after it was stopped), keeping its state.
pub fn restart_agent(st: &mut LabState, node: &str) -> Result<(), LabError> {
    let dir = st.dir();
    let idx = st
        .nodes
        .iter()
        .position(|n| n.name == node)
        .ok_or_else(|| LabError::Usage(format!("no node {node}")))?;
    let r = st.nodes[idx].clone();
    let marker = dir.display().to_string();
    if let Some(pid) = r.agent_pid {
        procs::stop(pid, &marker);
    }
    start_agent(st, idx)
}

/// Starts the agent of node `idx` and waits until it serves addresses.
fn start_agent(st: &mut LabState, idx: usize) -> Result<(), LabError> {
    let r = st.nodes[idx].clone();
    let nd = st.dir().join(&r.name);
    std::fs::create_dir_all(&nd).map_err(|e| LabError::State(e.to_string()))?;
    let mut args: Vec<String> = vec![
        "--node-name".into(),
        r.name.clone(),
        "--socket".into(),
        r.socket.display().to_string(),
        "--state-dir".into(),
        nd.join("state").display().to_string(),
        "--imds-endpoint".into(),
        format!("http://{}", cloud::IMDS_ADDR),
        "--ec2-endpoint".into(),
        cloud::ec2_endpoint(),
        // The lab reuses addresses at once so capacity tests are exact.
        "--ip-cooldown-secs".into(),
        "0".into(),
        "--pool-decrease-interval-secs".into(),
        "1".into(),
    ];
    if let Some(cidr) = st.pod_cidr {
        args.extend([
            "--mode".into(),
            "overlay".into(),
            "--datastore".into(),
            datastore_spec(st),
            "--pod-cidr".into(),
            cidr.to_string(),
            "--block-size".into(),
            st.block_size.to_string(),
        ]);
    }
    if let Some(w) = st.warm_ip_target {
        args.push("--warm-ip-target".into());
        args.push(w.to_string());
    }
    if let Some(m) = st.minimum_ip_target {
        args.push("--minimum-ip-target".into());
        args.push(m.to_string());
    }
    let log = nd.join("agent.log");
    let pid = procs::spawn_in(&r.netns, &bin("podwire-agent")?, &args, &log)?;
    st.nodes[idx].agent_pid = Some(pid);
    st.save()?;
    procs::wait_for(
        &format!("podwire-agent on {}", r.name),
        pid,
        &log,
        Duration::from_secs(30),
        || agent_ready(&r.socket),
    )
}

/// Stops a node's agent (for failure tests); pods keep running.
pub fn stop_agent(st: &mut LabState, node: &str) -> Result<(), LabError> {
    let marker = st.dir().display().to_string();
    let idx = st
        .nodes
        .iter()
        .position(|n| n.name == node)
        .ok_or_else(|| LabError::Usage(format!("no node {node}")))?;
    if let Some(pid) = st.nodes[idx].agent_pid.take() {
        procs::stop(pid, &marker);
    }
    st.save()
}

/// Removes everything a lab made: processes by PID, namespaces by name.
pub fn teardown(st: &LabState) -> Result<(), LabError> {
    let marker = st.dir().display().to_string();
    for p in st.pods.values() {
        if let Some(pid) = p.http_pid {
            procs::stop(pid, &marker);
        }
    }
    for n in &st.nodes {
        if let Some(pid) = n.agent_pid {
            procs::stop(pid, &marker);
        }
    }
    if let Some(pid) = st.etcd_pid {
        procs::stop(pid, &marker);
    }
    if let Some(pid) = st.cloud_pid {
        procs::stop(pid, &marker);
    }
    let mut failures = Vec::new();
    // Pods first, then instances, the fabric last.
    let mut all: Vec<String> = st.pods.values().map(|p| p.netns.clone()).collect();
    all.extend(st.namespaces.iter().rev().cloned());
    for ns in all {
        if let Err(e) = procs::netns_del(&ns) {
            failures.push(e.to_string());
        }
    }
    if !failures.is_empty() {
        return Err(LabError::State(failures.join("; ")));
    }
    let dir = st.dir();
    std::fs::remove_dir_all(&dir)
        .map_err(|e| LabError::State(format!("{}: {e}", dir.display())))?;
    Ok(())
}

pub fn down(lab: &str) -> Result<(), LabError> {
    names::check_lab_name(lab)?;
    let st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    teardown(&st)
}

fn plugin_conf(mode: &str, node: &NodeRec, prev: Option<&serde_json::Value>) -> String {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "podwire",
        "type": "podwire",
        "mode": mode,
        "agentSocket": node.socket.display().to_string(),
    });
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c.to_string()
}

/// Runs the plugin on a node as a runtime does: env + config on stdin,
/// inside the node's namespace.
pub fn run_plugin(
    mode: &str,
    node: &NodeRec,
    command: &str,
    pod: &PodRec,
    prev: Option<&serde_json::Value>,
) -> Result<String, LabError> {
    let plugin = bin("podwire")?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(&plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", procs::netns_path(&pod.netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin_dir())
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                pod.namespace, pod.name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Command {
            what: "podwire plugin".into(),
            msg: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(plugin_conf(mode, node, prev).as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| LabError::Command {
        what: "podwire plugin".into(),
        msg: e.to_string(),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let msg = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .map(|v| {
                format!(
                    "CNI error {}: {}",
                    v["code"],
                    v["msg"].as_str().unwrap_or_default()
                )
            })
            .unwrap_or_else(|| format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
        return Err(LabError::Command {
            what: format!("{command} of pod {} on {}", pod.name, node.name),
            msg,
        });
    }
    Ok(stdout)
}

/// `lab pod add`: a namespace, the plugin's ADD, optionally an HTTP page.
pub fn pod_add(
    lab: &str,
    pod: &str,
    node: &str,
    namespace: &str,
    http: bool,
) -> Result<PodRec, LabError> {
    names::check_pod_name(pod)?;
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    if st.pods.contains_key(pod) {
        return Err(LabError::Usage(format!("pod {pod} exists already")));
    }
    let n = st.node(node)?.clone();
    let mut rec = PodRec {
        name: pod.into(),
        namespace: namespace.into(),
        node: node.into(),
        netns: names::ns_pod(lab, pod),
        container_id: format!("pw{lab}-{pod}"),
        ip: Ipv4Addr::UNSPECIFIED,
        result: serde_json::Value::Null,
        http_pid: None,
    };
    procs::netns_add(&rec.netns)?;
    let wired = (|| -> Result<(), LabError> {
        let mut h = Handle::in_netns(&procs::netns_path(&rec.netns))?;
        let lo = h.link("lo")?;
        h.set_up(lo.index)?;
        let out = run_plugin(&st.mode, &n, "ADD", &rec, None)?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| LabError::State(format!("plugin result: {e}")))?;
        let ip = v["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok());
        rec.ip =
            ip.ok_or_else(|| LabError::State(format!("plugin result has no address: {out}")))?;
        rec.result = v;
        Ok(())
    })();
    if let Err(e) = wired {
        let _ = procs::netns_del(&rec.netns);
        return Err(e);
    }
    if http {
        let dir = st.dir();
        let me = std::env::current_exe().map_err(|e| LabError::State(e.to_string()))?;
        let log = dir.join(format!("pod-{pod}.log"));
        let args = vec![
            "lab".into(),
            "_http".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--pod".into(),
            pod.into(),
            "--namespace".into(),
            namespace.into(),
        ];
        let pid = procs::spawn_in(&rec.netns, &me, &args, &log)?;
        rec.http_pid = Some(pid);
        let ns_path = procs::netns_path(&rec.netns);
        procs::wait_for(
            &format!("HTTP server in pod {pod}"),
            pid,
            &log,
            Duration::from_secs(5),
            || crate::probe::port_open(&ns_path, rec.ip, 80),
        )?;
    }
    st.pods.insert(pod.into(), rec.clone());
    st.save()?;
    Ok(rec)
}

/// `lab pod del`: the plugin's DEL, then the namespace.
pub fn pod_del(lab: &str, pod: &str) -> Result<(), LabError> {
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    let rec = st
        .pods
        .get(pod)
        .cloned()
        .ok_or_else(|| LabError::Usage(format!("lab {lab} has no pod {pod}")))?;
    let node = st.node(&rec.node)?.clone();
    if let Some(pid) = rec.http_pid {
        procs::stop(pid, &st.dir().display().to_string());
    }
    run_plugin(&st.mode, &node, "DEL", &rec, Some(&rec.result))?;
    procs::netns_del(&rec.netns)?;
    st.pods.remove(pod);
    st.save()
}

/// An EC2 client for the lab's cloud, usable from the host: its requests
/// are made from a thread inside the fabric namespace.
pub fn ec2_call(lab: &str, action: &str, params: &[(String, String)]) -> Result<String, LabError> {
    let dir = names::lab_dir(lab);
    let c = cloud::load(&dir)?;
    let (ak, sk) = c
        .credentials
        .iter()
        .next()
        .ok_or_else(|| LabError::State("lab cloud has no credentials".into()))?;
    let client = Ec2Client::new(
        &cloud::ec2_endpoint(),
        &c.region,
        Credentials {
            access_key_id: ak.clone(),
            secret_access_key: sk.clone(),
            session_token: None,
        },
    );
    let action = action.to_string();
    let params = params.to_vec();
    netns::run_in(&procs::netns_path(&names::ns_fabric(lab)), move || {
        client.call(&action, &params)
    })?
    .map_err(LabError::from)
}

/// `lab status --json`.
pub fn status_json(lab: &str) -> Result<serde_json::Value, LabError> {
    let st = LabState::load(lab)?;
    let c = cloud::load(&st.dir()).ok();
    let enis_of = |instance_id: &str| -> Vec<serde_json::Value> {
        c.as_ref()
            .map(|c| {
                c.instance_enis(instance_id)
                    .iter()
                    .map(|e| {
                        json!({
                            "id": e.id, "device_index": e.attachment.as_ref().map(|a| a.device_index),
                            "mac": e.mac, "primary_ip": e.primary_ip, "secondary_ips": e.secondary_ips,
                            "description": e.description, "security_groups": e.groups,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut pods_by_node: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in st.pods.values() {
        pods_by_node.entry(&p.node).or_default().push(&p.name);
    }
    let nodes: Vec<serde_json::Value> = st
        .nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name, "netns": n.netns, "instance_id": n.instance_id, "instance_type": st.instance_type,
                "primary_ip": n.primary_ip, "subnet": n.subnet, "dns_name": cloud::xml::dns_name(n.primary_ip),
                "agent_pid": n.agent_pid,
                "agent": agent_status(&n.socket), "agent_socket": n.socket, "enis": enis_of(&n.instance_id),
                "pods": pods_by_node.get(n.name.as_str()).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let pods: Vec<serde_json::Value> = st
        .pods
        .values()
        .map(|p| {
            let eni = c.as_ref().and_then(|c| c.owner_of(p.ip).map(|(e, _)| (e.id.clone(), e.attachment.as_ref().map(|a| a.device_index))));
            json!({
                "name": p.name, "namespace": p.namespace, "node": p.node, "netns": p.netns, "ip": p.ip,
                "container_id": p.container_id, "eni": eni.as_ref().map(|e| e.0.clone()), "device_index": eni.and_then(|e| e.1),
                "http": p.http_pid.is_some(),
            })
        })
        .collect();
    Ok(json!({
        "name": st.name, "mode": st.mode, "subnet": st.subnet, "subnets": st.subnets, "allow_external": st.allow_external,
        "pod_cidr": st.pod_cidr, "block_size": st.pod_cidr.map(|_| st.block_size),
        "datastore": st.pod_cidr.map(|_| datastore_spec(&st)), "etcd_pid": st.etcd_pid,
        "vpc_id": c.as_ref().map(|c| c.vpc_id.clone()), "node_security_group": st.node_sg, "external_security_group": st.external_sg,
        "fabric_netns": names::ns_fabric(&st.name),
        "nodes": nodes,
        "external": st.external.as_ref().map(|e| json!({"name": e.name, "netns": e.netns, "instance_id": e.instance_id, "ip": e.primary_ip})),
        "pods": pods,
    }))
}

/// Opens or closes the node security group to the external host, through
/// the EC2 API (Authorize/RevokeSecurityGroupIngress).
pub fn set_allow_external(lab: &str, allow: bool) -> Result<(), LabError> {
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    let action = if allow {
        "AuthorizeSecurityGroupIngress"
    } else {
        "RevokeSecurityGroupIngress"
    };
    ec2_call(
        lab,
        action,
        &[
            ("GroupId".into(), st.node_sg.clone()),
            ("IpPermissions.1.IpProtocol".into(), "-1".into()),
            (
                "IpPermissions.1.Groups.1.GroupId".into(),
                st.external_sg.clone(),
            ),
        ],
    )?;
    st.allow_external = allow;
    st.save()
}

/// `lab status` for people: nodes, ENIs with their addresses, pods.
pub fn format_status(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab {}  mode {}  subnet {}  {}",
        v["name"].as_str().unwrap_or(""),
        v["mode"].as_str().unwrap_or(""),
        v["subnet"].as_str().unwrap_or(""),
        v["vpc_id"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        out,
        "external host reachable to pods: {}",
        v["allow_external"]
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{}  {}  {}  {}  netns {}",
            n["name"].as_str().unwrap_or(""),
            n["instance_id"].as_str().unwrap_or(""),
            n["instance_type"].as_str().unwrap_or(""),
            n["primary_ip"].as_str().unwrap_or(""),
            n["netns"].as_str().unwrap_or("")
        );
        for e in n["enis"].as_array().into_iter().flatten() {
            let ips: Vec<&str> = e["secondary_ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str())
                .collect();
            let _ = writeln!(
                out,
                "    eth{}  {}  {}  \"{}\"  primary {}  secondary [{}]",
                e["device_index"],
                e["id"].as_str().unwrap_or(""),
                e["mac"].as_str().unwrap_or(""),
                e["description"].as_str().unwrap_or(""),
                e["primary_ip"].as_str().unwrap_or(""),
                ips.join(" ")
            );
        }
    }
    if let Some(e) = v["external"].as_object() {
        let _ = writeln!(
            out,
            "external  {}  {}  netns {}",
            e["instance_id"].as_str().unwrap_or(""),
            e["ip"].as_str().unwrap_or(""),
            e["netns"].as_str().unwrap_or("")
        );
    }
    for p in v["pods"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "pod {}/{}  on {}  {}  eth{} ({})  netns {}",
            p["namespace"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or(""),
            p["node"].as_str().unwrap_or(""),
            p["ip"].as_str().unwrap_or(""),
            p["device_index"],
            p["eni"].as_str().unwrap_or(""),
            p["netns"].as_str().unwrap_or("")
        );
    }
    out
}
