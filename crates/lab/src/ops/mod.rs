//! What `podwirectl lab` does: `up` (building the VPC, its cloud, the
//! instances, in named steps) and `down` here; in the submodules the agents,
//! node churn, pods, and status. The submodules depend on each other and on
//! the crate's leaf modules, never on this one (the datastore lives in
//! [`crate::datastore`], readiness checks in [`crate::procs`]).

use std::collections::BTreeSet;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::cloud::faults::CloudFaults;
use crate::cloud::model::{Cloud, IngressRule, IngressSource, SecurityGroup, Subnet};
use crate::cloud::{self, READY_FILE};
use crate::datastore;
use crate::state::{self, ExternalPodAccess, LabState, Mode, NodeRec};
use crate::{names, procs, LabError};

mod agent_http;
mod agents;
mod binaries;
mod boot;
mod namespaces;
mod nodes;
mod pods;
mod posture;
mod status;

pub use agent_http::{http_get, HttpAnswer};
pub use agents::{agent_ready, agent_status, restart_agent, stop_agent, AGENT_METRICS_ADDRESS};
pub use binaries::bin_dir;
pub use namespaces::{namespace_add, namespace_del, namespace_label};
pub use nodes::{node_add, node_del};
pub use pods::{pod_add, pod_del, pod_label, run_plugin, PodSpec};
pub use posture::set_external_pod_access;
pub use status::{ec2_call, format_status, set_allow_external, set_cloud_faults, status_json};

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
    /// vpc: agents delegate /28 prefixes instead of single addresses.
    pub prefix_delegation: bool,
    /// vpc: the agents' `--eni-gc-grace` and `--reconcile-interval` in
    /// seconds (None: the agents' defaults).
    pub eni_gc_grace_secs: Option<u64>,
    pub reconcile_interval_secs: Option<u64>,
    /// Let pods reach the lab's instance metadata service.
    pub pod_imds_access: bool,
    /// overlay: the pod CIDR and its block size.
    pub pod_cidr: Ipv4Net,
    pub block_size: u8,
    /// overlay: `sqlite` (one file all nodes share) or `etcd` (a server the
    /// lab runs on the fabric).
    pub datastore: String,
    /// EC2 failures the cloud injects once the lab is up (its own start-up
    /// is served cleanly, so `lab up` itself does not fail of them).
    pub cloud_faults: CloudFaults,
    /// The agents' `--external-pod-access` (podwire's default: deny).
    pub external_pod_access: ExternalPodAccess,
}

/// Brings a lab up; on failure removes whatever it had made.
pub fn up(opts: &UpOptions) -> Result<LabState, LabError> {
    names::check_lab_name(&opts.name)?;
    if opts.mode == Mode::Overlay {
        // The agents' rule, so the lab never starts agents that would refuse.
        podwire_ipam::block::check_block_size(opts.pod_cidr, opts.block_size)
            .map_err(|e| LabError::Usage(format!("--block-size: {e}")))?;
        // The agents refuse it too; saying so here changes nothing yet.
        if let Some(s) = opts
            .subnets
            .iter()
            .find(|s| s.contains(&opts.pod_cidr) || opts.pod_cidr.contains(*s))
        {
            return Err(LabError::Usage(format!(
                "--pod-cidr {} overlaps the node subnet {s}: choose a pod CIDR outside the VPC (the default is 172.16.0.0/16)",
                opts.pod_cidr
            )));
        }
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
        prefix_delegation: opts.prefix_delegation,
        eni_gc_grace_secs: opts.eni_gc_grace_secs,
        reconcile_interval_secs: opts.reconcile_interval_secs,
        pod_imds_access: opts.pod_imds_access,
        pod_cidr: (opts.mode == Mode::Overlay).then_some(opts.pod_cidr),
        block_size: opts.block_size,
        datastore: opts.datastore.clone(),
        external_pod_access: opts.external_pod_access,
        ..LabState::new(&opts.name, opts.mode)
    };
    st.save()?;
    match build(&mut st, opts) {
        Ok(()) => {
            st.cloud_faults = opts.cloud_faults;
            st.save()?;
            Ok(st)
        }
        Err(e) => {
            let _ = st.save();
            let _ = teardown(&st);
            Err(e)
        }
    }
}

/// `lab up` in named steps; each records what it made before making it, so
/// a failure anywhere leaves `teardown` a complete list.
fn build(st: &mut LabState, opts: &UpOptions) -> Result<(), LabError> {
    let (cloud, hosts) = model_vpc(st, opts)?;
    create_namespaces(st, hosts)?;
    start_cloud(st, &cloud)?;
    boot_instances(st)?;
    start_datastore(st)?;
    start_agents(st)
}

/// Step 1, on paper: the cloud's model (a VPC, its subnets, the node and
/// external security groups, credentials) and its instances, launched in the
/// model. Returns the model and the instances' records (external last).
fn model_vpc(st: &mut LabState, opts: &UpOptions) -> Result<(Cloud, Vec<NodeRec>), LabError> {
    let lab = opts.name.as_str();
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
    let subnet_ids = model_subnets(&mut c, &opts.subnets);
    let (node_sg, ext_sg) = model_security_groups(&mut c, lab, vpc_cidr, opts.allow_external);
    let ak = format!("AKIA{:016X}", rand::random::<u64>());
    c.credentials
        .insert(ak, format!("{:032x}", rand::random::<u128>()));
    st.node_sg = node_sg.clone();
    st.external_sg = ext_sg.clone();

    // Nodes take the subnets in turn; the external host sits in the first.
    let mut hosts: Vec<(String, String, String, String, usize)> = (1..=opts.nodes)
        .map(|i| {
            (
                names::node_name(i),
                names::ns_node(lab, i),
                opts.instance_type.clone(),
                node_sg.clone(),
                (i - 1) % subnet_ids.len(),
            )
        })
        .collect();
    hosts.push((
        names::EXTERNAL.into(),
        names::ns_external(lab),
        "t3.micro".into(),
        ext_sg,
        0,
    ));
    let limits =
        podwire_cloud::LimitsTable::builtin().map_err(|e| LabError::State(e.to_string()))?;
    let api =
        |e: crate::cloud::model::ApiError| LabError::State(format!("{}: {}", e.code, e.message));
    let dir = st.dir();
    let mut recs = Vec::new();
    for (host, ns, ty, sg, k) in &hosts {
        let (subnet_id, cidr) = subnet_ids
            .get(*k)
            .ok_or_else(|| LabError::State("no subnet for an instance".into()))?;
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
    Ok((c, recs))
}

/// The subnets, one availability zone each in turn; (id, CIDR) in order.
fn model_subnets(c: &mut Cloud, cidrs: &[Ipv4Net]) -> Vec<(String, Ipv4Net)> {
    const ZONES: [char; 6] = ['a', 'b', 'c', 'd', 'e', 'f'];
    let mut ids = Vec::new();
    for (k, cidr) in cidrs.iter().enumerate() {
        let id = c.new_id("subnet");
        let az = format!("us-east-1{}", ZONES[k % ZONES.len()]);
        c.subnets.insert(
            id.clone(),
            Subnet {
                id: id.clone(),
                cidr: *cidr,
                availability_zone: az,
            },
        );
        ids.push((id, *cidr));
    }
    ids
}

/// The node group and the external host's group: (node SG, external SG).
fn model_security_groups(
    c: &mut Cloud,
    lab: &str,
    vpc_cidr: Option<Ipv4Net>,
    allow_external: bool,
) -> (String, String) {
    let node_sg = c.new_id("sg");
    let ext_sg = c.new_id("sg");
    // As an EKS managed node group: the nodes' group admits its own members.
    let mut node_ingress =
        BTreeSet::from([IngressRule::all_from(IngressSource::Group(node_sg.clone()))]);
    if allow_external {
        node_ingress.insert(IngressRule::all_from(IngressSource::Group(ext_sg.clone())));
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
    let ext_ingress = vpc_cidr
        .map(|c| IngressRule::all_from(IngressSource::Cidr(c)))
        .into_iter()
        .collect();
    c.groups.insert(
        ext_sg.clone(),
        SecurityGroup {
            id: ext_sg.clone(),
            name: format!("{lab}-external"),
            description: "an instance outside the cluster".into(),
            ingress: ext_ingress,
        },
    );
    (node_sg, ext_sg)
}

/// Step 2: the fabric's and every instance's namespace, each recorded
/// before it exists; then the instances' records (external last in `hosts`).
fn create_namespaces(st: &mut LabState, mut hosts: Vec<NodeRec>) -> Result<(), LabError> {
    let mut all_ns = vec![names::ns_fabric(&st.name)];
    all_ns.extend(hosts.iter().map(|h| h.netns.clone()));
    for ns in &all_ns {
        st.namespaces.push(ns.clone());
        st.save()?;
        procs::netns_add(ns)?;
    }
    st.external = hosts.pop();
    st.nodes = hosts;
    st.save()
}

/// Step 3: the cloud process in the fabric namespace, from the model.
fn start_cloud(st: &mut LabState, c: &Cloud) -> Result<(), LabError> {
    let dir = st.dir();
    cloud::save(&dir, c)?;
    let me = std::env::current_exe().map_err(|e| LabError::State(e.to_string()))?;
    let log = dir.join("cloud.log");
    let pid = procs::spawn_in(
        &names::ns_fabric(&st.name),
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
    })
}

/// Step 4: every instance's OS boots (addresses and default route).
fn boot_instances(st: &LabState) -> Result<(), LabError> {
    for r in st.nodes.iter().chain(st.external.iter()) {
        boot::boot(r)?;
    }
    Ok(())
}

/// Step 5: on etcd, the lab's etcd (SQLite needs no server); both modes
/// keep pods, namespaces and policies there.
fn start_datastore(st: &mut LabState) -> Result<(), LabError> {
    if st.datastore == "etcd" {
        datastore::start_etcd(st)?;
    }
    Ok(())
}

/// Step 6: every node's agent, each waited for until it serves.
fn start_agents(st: &mut LabState) -> Result<(), LabError> {
    for i in 0..st.nodes.len() {
        agents::start_agent(st, i)?;
    }
    Ok(())
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
