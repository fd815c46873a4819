//! `lab node add|del`: nodes join and leave through the cloud's API.

use ipnet::Ipv4Net;

use super::agents::start_agent;
use super::boot::boot;
use super::pods::pod_del;
use super::status::ec2_call;
use crate::cloud;
use crate::datastore::lab_store;
use crate::state::{self, LabState, NodeRec};
use crate::{names, procs, LabError};

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
    let n = st.node(node)?;
    // Pods go first, through the node's agent (as a drain would); without a
    // running agent nothing is changed and the operator is told what to do.
    if n.agent_pid.is_none() && st.pods.values().any(|p| p.node == node) {
        return Err(LabError::Usage(format!(
            "node {node}'s agent is stopped and it still has pods: start it first \
             (podwirectl lab agent start {node} --name {lab}), then delete the node"
        )));
    }
    for p in st.pods.values().filter(|p| p.node == node) {
        pod_del(lab, &p.key())?;
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
    if let Some(pool) = st.overlay_pool()? {
        // The lab's own store (SQLite file or etcd): never a backend guessed here.
        let store = lab_store(&st)?;
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
    // The node's directory (its log, socket and state): a later node of the
    // same name must not find this one's state.
    let node_dir = st.dir().join(&rec.name);
    if let Err(e) = std::fs::remove_dir_all(&node_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(LabError::State(format!(
                "removing {}: {e}",
                node_dir.display()
            )));
        }
    }
    st.nodes.remove(idx);
    st.namespaces.retain(|n| *n != rec.netns);
    st.save()
}
