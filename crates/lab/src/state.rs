//! What a lab created, on disk in its directory, so `lab down` removes
//! exactly that (also after a failed `lab up`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{names, LabError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRec {
    pub name: String,
    pub netns: String,
    pub instance_id: String,
    pub primary_ip: Ipv4Addr,
    /// The subnet of its primary ENI.
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    pub socket: PathBuf,
    pub agent_pid: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodRec {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub ip: Ipv4Addr,
    pub result: serde_json::Value,
    pub http_pid: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LabState {
    pub name: String,
    pub mode: String,
    pub subnet: Option<Ipv4Net>,
    /// Every node subnet (the first is `subnet`).
    #[serde(default)]
    pub subnets: Vec<Ipv4Net>,
    pub instance_type: String,
    pub allow_external: bool,
    #[serde(default)]
    pub warm_ip_target: Option<u32>,
    #[serde(default)]
    pub minimum_ip_target: Option<u32>,
    /// overlay mode: the pod CIDR (None in vpc mode) and block size.
    #[serde(default)]
    pub pod_cidr: Option<Ipv4Net>,
    #[serde(default)]
    pub block_size: u8,
    /// overlay: `sqlite` or `etcd`.
    #[serde(default)]
    pub datastore: String,
    #[serde(default)]
    pub etcd_pid: Option<i32>,
    /// Every namespace created, in creation order (recorded before creation).
    pub namespaces: Vec<String>,
    pub cloud_pid: Option<i32>,
    pub node_sg: String,
    pub external_sg: String,
    pub nodes: Vec<NodeRec>,
    pub external: Option<NodeRec>,
    pub pods: BTreeMap<String, PodRec>,
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| LabError::State(format!("{}: {e}", path.display()));
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

impl LabState {
    pub fn dir(&self) -> PathBuf {
        names::lab_dir(&self.name)
    }

    pub fn load(lab: &str) -> Result<LabState, LabError> {
        let p = names::lab_dir(lab).join("lab.json");
        let bytes = fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LabError::Usage(format!("no lab named {lab:?} is up (start one with `podwirectl lab up --name {lab} --mode vpc`)"))
            } else {
                LabError::State(format!("{}: {e}", p.display()))
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| LabError::State(format!("{}: {e}", p.display())))
    }

    pub fn save(&self) -> Result<(), LabError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| LabError::State(e.to_string()))?;
        write_atomic(&self.dir().join("lab.json"), &bytes)
    }

    pub fn node(&self, name: &str) -> Result<&NodeRec, LabError> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            LabError::Usage(format!(
                "lab {} has no node {name:?} (nodes: {})",
                self.name,
                self.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

/// An exclusive lock on a lab's directory for commands that change it.
#[derive(Debug)]
pub struct LabLock {
    _lock: Flock<File>,
}

pub fn lock(dir: &Path) -> Result<LabLock, LabError> {
    fs::create_dir_all(dir).map_err(|e| LabError::State(format!("{}: {e}", dir.display())))?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| LabError::State(e.to_string()))?;
    let l = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| LabError::State(format!("locking the lab: {e}")))?;
    Ok(LabLock { _lock: l })
}
