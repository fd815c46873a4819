//! What `podwirectl lab` does: `up` and `down` here (building the VPC, its
//! cloud, the instances), and in the submodules the agents, the overlay
//! datastore, node churn, pods, and status.

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
use crate::state::{self, LabState, Mode, NodeRec, PodRec};
use crate::{names, procs, LabError};

mod agents;
mod datastore;
mod nodes;
mod pods;
mod status;

pub use agents::{agent_ready, restart_agent, stop_agent};
use agents::{agent_status, start_agent};
use datastore::{datastore_spec, start_etcd};
pub use datastore::{lab_store, ETCD_ADDR};
pub use nodes::{node_add, node_del};
pub use pods::{pod_add, pod_del, run_plugin};
pub use status::{ec2_call, format_status, set_allow_external, status_json};

/// Options of `lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub name: String,
    pub mode: Mode,
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
    if opts.mode == Mode::Overlay
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
        subnet: Some(first),
        subnets: opts.subnets.clone(),
        instance_type: opts.instance_type.clone(),
        allow_external: opts.allow_external,
        warm_ip_target: opts.warm_ip_target,
        minimum_ip_target: opts.minimum_ip_target,
        pod_cidr: (opts.mode == Mode::Overlay).then_some(opts.pod_cidr),
        block_size: opts.block_size,
        datastore: opts.datastore.clone(),
        ..LabState::new(&opts.name, opts.mode)
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
        const ZONES: [char; 6] = ['a', 'b', 'c', 'd', 'e', 'f'];
        let az = format!("us-east-1{}", ZONES[k % ZONES.len()]);
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
    if st.mode == Mode::Overlay && st.datastore == "etcd" {
        start_etcd(st)?;
    }

    for i in 0..st.nodes.len() {
        start_agent(st, i)?;
    }
    Ok(())
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

fn rand_u64() -> u64 {
    rand::random()
}

fn rand_u128() -> u128 {
    rand::random()
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
