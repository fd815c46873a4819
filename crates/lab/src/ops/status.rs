//! `lab status`, and calls into the lab cloud's EC2 API.

use std::collections::BTreeMap;

use podwire_cloud::{Credentials, Ec2Client};
use podwire_netlink::netns;
use serde_json::json;

use super::agents::agent_status;
use crate::cloud;
use crate::cloud::faults::{CloudFaults, FaultUpdate};
use crate::datastore::datastore_spec;
use crate::state::{self, LabState, Mode};
use crate::{names, procs, LabError};

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
                            "prefixes": e.prefixes, "tags": e.tags,
                            "attachment_status": e.attachment.as_ref().map(|a| a.status()),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // Each node's pods as objects: who they are, where, and their labels.
    let mut pods_by_node: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for p in st.pods.values() {
        pods_by_node.entry(&p.node).or_default().push(json!({
            "namespace": p.namespace, "name": p.name, "ip": p.ip, "netns": p.netns, "labels": p.labels,
        }));
    }
    let nodes: Vec<serde_json::Value> = st
        .nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name, "netns": n.netns, "instance_id": n.instance_id, "instance_type": st.instance_type,
                "primary_ip": n.primary_ip, "subnet": n.subnet, "dns_name": cloud::xml::dns_name(n.primary_ip),
                "agent_pid": n.agent_pid,
                "agent": agent_status(&n.socket), "agent_socket": n.socket,
                "agent_metrics": super::agents::AGENT_METRICS_ADDRESS, "enis": enis_of(&n.instance_id),
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
                "http": p.ports.iter().any(|x| x.port == 80) || (p.ports.is_empty() && p.http_pid.is_some()),
                "labels": p.labels, "ports": p.ports,
            })
        })
        .collect();
    let overlay = st.mode == Mode::Overlay;
    Ok(json!({
        "name": st.name, "mode": st.mode, "subnet": st.subnet, "subnets": st.subnets, "allow_external": st.allow_external,
        "pod_cidr": overlay.then_some(st.pod_cidr).flatten(), "block_size": overlay.then_some(st.block_size),
        "datastore": datastore_spec(&st), "etcd_pid": st.etcd_pid,
        "external_pod_access": st.external_pod_access,
        "namespaces": st.kube_namespaces.iter().map(|(n, l)| json!({"name": n, "labels": l})).collect::<Vec<_>>(),
        "cloud_faults": st.cloud_faults,
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
    let done = ec2_call(
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
    );
    // EC2 refuses a rule that is there already (or, revoking, one that is
    // not): the group is as asked all the same.
    let already = if allow {
        "InvalidPermission.Duplicate"
    } else {
        "InvalidPermission.NotFound"
    };
    match done {
        Err(LabError::Ec2(e)) if e.code() == Some(already) => {}
        other => {
            other?;
        }
    }
    st.allow_external = allow;
    st.save()
}

/// `lab faults`: the EC2 failures the running lab's cloud injects from its
/// next request on (lab.json is what the cloud reads at every request).
/// What is not named in `update` stays; returns the faults now in force.
pub fn set_cloud_faults(
    lab: &str,
    update: &FaultUpdate,
    fresh_seed: u64,
) -> Result<CloudFaults, LabError> {
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    st.cloud_faults = update.apply(st.cloud_faults, fresh_seed)?;
    st.save()?;
    Ok(st.cloud_faults)
}

/// `lab status` for people: nodes, ENIs with their addresses, pods.
pub fn format_status(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab {}  mode {}  subnets {}  {}{}",
        v["name"].as_str().unwrap_or(""),
        v["mode"].as_str().unwrap_or(""),
        v["subnets"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        v["vpc_id"].as_str().unwrap_or(""),
        v["pod_cidr"]
            .as_str()
            .map(|c| format!(
                "  pod CIDR {c} in /{} blocks ({})",
                v["block_size"],
                v["datastore"].as_str().unwrap_or("")
            ))
            .unwrap_or_default()
    );
    // What the security group admits; whether pods are reached also
    // depends on the mode (overlay pod addresses are not routed by the VPC).
    let _ = writeln!(
        out,
        "node security group open to the external host: {}{}",
        v["allow_external"],
        if v["pod_cidr"].is_string() {
            " (overlay: pods are not routed from outside the cluster)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "agents' external pod access: {}",
        v["external_pod_access"].as_str().unwrap_or("deny")
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
            let prefixes: Vec<&str> = e["prefixes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str())
                .collect();
            let _ = writeln!(
                out,
                "    eth{}  {}  {}  \"{}\"  primary {}  secondary [{}]{}",
                e["device_index"],
                e["id"].as_str().unwrap_or(""),
                e["mac"].as_str().unwrap_or(""),
                e["description"].as_str().unwrap_or(""),
                e["primary_ip"].as_str().unwrap_or(""),
                ips.join(" "),
                // Prefix delegation: the /28s are where the pods' addresses are.
                if prefixes.is_empty() {
                    String::new()
                } else {
                    format!("  prefixes [{}]", prefixes.join(" "))
                }
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
        // Where the address lives: an ENI (vpc mode) or the pod CIDR (overlay).
        let home = match (p["device_index"].as_u64(), p["eni"].as_str()) {
            (Some(d), Some(eni)) => format!("eth{d} ({eni})"),
            _ => "pod CIDR".to_string(),
        };
        let labels: Vec<String> = p["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        let _ = writeln!(
            out,
            "pod {}/{}  on {}  {}  {home}  netns {}{}",
            p["namespace"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or(""),
            p["node"].as_str().unwrap_or(""),
            p["ip"].as_str().unwrap_or(""),
            p["netns"].as_str().unwrap_or(""),
            if labels.is_empty() {
                String::new()
            } else {
                format!("  labels {}", labels.join(","))
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    /// Newuser F6: with prefix delegation the text showed `secondary []`
    /// and no prefixes, though the JSON had them.
    #[test]
    fn the_text_shows_each_enis_prefixes() {
        let v = serde_json::json!({
            "nodes": [{
                "name": "node-1", "instance_id": "i-1", "instance_type": "m5.large",
                "primary_ip": "10.0.11.55", "netns": "pw-nu1-node-1",
                "enis": [{
                    "device_index": 0, "id": "eni-1", "mac": "0e:00:00:00:00:01",
                    "description": "primary", "primary_ip": "10.0.11.55",
                    "secondary_ips": [], "prefixes": ["10.0.3.32/28", "10.0.0.224/28"]
                }, {
                    "device_index": 1, "id": "eni-2", "mac": "0e:00:00:00:00:02",
                    "description": "podwire", "primary_ip": "10.0.11.56",
                    "secondary_ips": ["10.0.11.57"], "prefixes": []
                }]
            }]
        });
        let text = super::format_status(&v);
        assert!(
            text.contains("secondary []  prefixes [10.0.3.32/28 10.0.0.224/28]"),
            "{text}"
        );
        assert!(
            text.contains("secondary [10.0.11.57]\n"),
            "no empty prefixes: {text}"
        );
    }
}
