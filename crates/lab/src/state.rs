//! What a lab created, on disk in its directory, so `lab down` removes
//! exactly that (also after a failed `lab up`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
pub use podwire_cni::config::Mode;
use serde::{Deserialize, Serialize};

use crate::cloud::faults::CloudFaults;
use crate::{names, LabError};
use podwire_cluster::records::Labels;
use podwire_cluster::{ContainerPort, PodRecord, PodRef};

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
    /// The pod's listener process (every port of `ports` it serves).
    pub http_pid: Option<i32>,
    /// Its labels, as written to its PodRecord (older labs: none).
    #[serde(default)]
    pub labels: Labels,
    /// Its container ports, each served by the listener (`--http`: 80).
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

impl PodRec {
    /// `namespace/name`, the key of `LabState::pods`.
    pub fn key(&self) -> String {
        pod_key(&self.namespace, &self.name)
    }

    /// The record NetworkPolicies select this pod by.
    pub fn record(&self) -> PodRecord {
        PodRecord {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            ports: self.ports.clone(),
        }
    }
}

/// The key of a pod in `LabState::pods`: `namespace/name`.
pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What the agents do with traffic from outside the cluster to pods (their
/// `--external-pod-access`; lab.json spells it `deny` / `allow`).
pub use podwire_cluster::ExternalPodAccess;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// Spelled `vpc` / `overlay` in lab.json, as always.
    pub mode: Mode,
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
    /// vpc: the agents delegate /28 prefixes (`--prefix-delegation`).
    #[serde(default)]
    pub prefix_delegation: bool,
    /// vpc: the agents' `--eni-gc-grace` (None: the agent's default, 300 s).
    /// Tests shorten it so a leftover ENI goes within a test's time.
    #[serde(default)]
    pub eni_gc_grace_secs: Option<u64>,
    /// vpc: the agents' `--reconcile-interval` (None: their default, 60 s).
    #[serde(default)]
    pub reconcile_interval_secs: Option<u64>,
    /// Pods may reach the lab's IMDS (the agents' `--pod-imds-access allow`);
    /// off by default, as on podwire nodes.
    #[serde(default)]
    pub pod_imds_access: bool,
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
    /// EC2 failures the cloud injects (fault tests); read at every request.
    #[serde(default)]
    pub cloud_faults: CloudFaults,
    /// Every namespace created, in creation order (recorded before creation).
    pub namespaces: Vec<String>,
    pub cloud_pid: Option<i32>,
    pub node_sg: String,
    pub external_sg: String,
    pub nodes: Vec<NodeRec>,
    pub external: Option<NodeRec>,
    /// Pods by `namespace/name` (labs of older versions: by name; look pods
    /// up with [`LabState::pod`], which finds both).
    pub pods: BTreeMap<String, PodRec>,
    /// Kubernetes namespaces made with `lab namespace add` (or implicitly by
    /// a pod), with their labels as written to their NamespaceRecord.
    #[serde(default)]
    pub kube_namespaces: BTreeMap<String, Labels>,
    /// The agents' `--external-pod-access` (labs of older versions: the
    /// agents' default, deny).
    #[serde(default)]
    pub external_pod_access: ExternalPodAccess,
}

/// Creates (or truncates) a file only root can read: lab files hold the
/// cloud's secrets, pod results and agent sockets' paths. A file that exists
/// already is narrowed to 0600 too.
pub fn create_private(path: &Path) -> Result<File, LabError> {
    let err = |e: std::io::Error| LabError::State(format!("{}: {e}", path.display()));
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(PRIVATE)
        .open(path)
        .map_err(err)?;
    f.set_permissions(fs::Permissions::from_mode(PRIVATE))
        .map_err(err)?;
    Ok(f)
}

/// Mode of every file the lab writes.
const PRIVATE: u32 = 0o600;

/// Writes `path` whole or not at all, as a 0600 file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| LabError::State(format!("{}: {e}", path.display()));
    // A temporary left by a crash may carry any mode: start afresh, and
    // create it 0600 so the secret is never readable, not even for a moment.
    if let Err(e) = fs::remove_file(&tmp) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(err(e));
        }
    }
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(PRIVATE)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

impl LabState {
    /// A lab in `mode` with nothing made yet.
    pub fn new(name: &str, mode: Mode) -> LabState {
        LabState {
            name: name.to_string(),
            mode,
            subnet: None,
            subnets: Vec::new(),
            instance_type: String::new(),
            allow_external: false,
            warm_ip_target: None,
            minimum_ip_target: None,
            prefix_delegation: false,
            eni_gc_grace_secs: None,
            reconcile_interval_secs: None,
            pod_imds_access: false,
            pod_cidr: None,
            block_size: 0,
            datastore: String::new(),
            etcd_pid: None,
            cloud_faults: CloudFaults::default(),
            namespaces: Vec::new(),
            cloud_pid: None,
            node_sg: String::new(),
            external_sg: String::new(),
            nodes: Vec::new(),
            external: None,
            pods: BTreeMap::new(),
            kube_namespaces: BTreeMap::new(),
            external_pod_access: ExternalPodAccess::Deny,
        }
    }

    /// The overlay's pod CIDR: `None` in vpc mode. The mode decides, not
    /// whether a CIDR happens to be recorded.
    pub fn overlay_pool(&self) -> Result<Option<Ipv4Net>, LabError> {
        match self.mode {
            Mode::Vpc => Ok(None),
            Mode::Overlay => self.pod_cidr.map(Some).ok_or_else(|| {
                LabError::State(format!(
                    "overlay lab {} has no pod CIDR in lab.json",
                    self.name
                ))
            }),
        }
    }

    pub fn dir(&self) -> PathBuf {
        names::lab_dir(&self.name)
    }

    /// The state of the lab in `dir` (the cloud knows its lab by directory).
    pub fn load_from(dir: &Path) -> Result<LabState, LabError> {
        let p = dir.join("lab.json");
        let bytes = fs::read(&p).map_err(|e| LabError::State(format!("{}: {e}", p.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| LabError::State(format!("{}: {e}", p.display())))
    }

    pub fn load(lab: &str) -> Result<LabState, LabError> {
        let p = names::lab_dir(lab).join("lab.json");
        let bytes = fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LabError::Usage(not_up_message(lab, &labs_up()))
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

    /// The pod `r` (whatever key an older lab filed it under).
    pub fn pod(&self, r: &PodRef) -> Option<&PodRec> {
        self.pods
            .values()
            .find(|p| p.namespace == r.namespace && p.name == r.name)
    }

    /// The key `r` is filed under, if the pod exists.
    pub fn pod_entry_key(&self, r: &PodRef) -> Option<String> {
        self.pods
            .iter()
            .find(|(_, p)| p.namespace == r.namespace && p.name == r.name)
            .map(|(k, _)| k.clone())
    }

    /// The pod an operator named: `NAME` (namespace default) or `NS/NAME`.
    pub fn pod_by_arg(&self, arg: &str) -> Result<&PodRec, LabError> {
        let r = PodRef::parse(arg).map_err(|e| LabError::Usage(format!("pod {arg:?}: {e}")))?;
        self.pod(&r)
            .ok_or_else(|| LabError::Usage(format!("lab {} has no pod {r}", self.name)))
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
    // The lab's directory is root's alone, like the files in it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| LabError::State(format!("{}: {e}", dir.display())))?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(PRIVATE)
        .open(dir.join("lock"))
        .map_err(|e| LabError::State(e.to_string()))?;
    let l = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| LabError::State(format!("locking the lab: {e}")))?;
    Ok(LabLock { _lock: l })
}

/// The labs that are up: folders under the lab root with a lab.json
/// (sorted; at most a screenful, the root is not trusted to be small).
pub fn labs_up() -> Vec<String> {
    const MAX: usize = 50;
    let mut up: Vec<String> = fs::read_dir(names::lab_root())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .take(1000)
        .filter(|e| e.path().join("lab.json").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    up.sort();
    up.truncate(MAX);
    up
}

/// Why `lab` cannot be used: not up; the labs that are, to pick one with
/// `--name`, or how to start one.
fn not_up_message(lab: &str, up: &[String]) -> String {
    if up.is_empty() {
        format!("no lab named {lab:?} is up (start one with `podwirectl lab up --name {lab} --mode vpc`)")
    } else {
        format!(
            "no lab named {lab:?} is up; up: {} (pick one with --name NAME, or --lab NAME for policy, audit and capacity)",
            up.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    /// Newuser F8: `lab probe` without --name said the default lab was not
    /// up, though nu1 and nu2 were, and did not name them.
    #[test]
    fn a_lab_that_is_not_up_names_those_that_are() {
        let m = super::not_up_message("lab", &["nu1".into(), "nu2".into()]);
        assert!(
            m.contains("no lab named \"lab\" is up; up: nu1, nu2"),
            "{m}"
        );
        assert!(m.contains("--name NAME"), "{m}");
        let m = super::not_up_message("lab", &[]);
        assert!(m.contains("podwirectl lab up --name lab --mode vpc"), "{m}");
    }

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn state_files_are_private_also_when_the_writer_creates_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = dir.path().join("lab.json");
        write_atomic(&fresh, b"{}").expect("write");
        assert_eq!(mode(&fresh), 0o600, "a file the atomic writer creates");
        // A file that was readable by all before, and a stale temporary.
        let old = dir.path().join("cloud.json");
        fs::write(&old, b"{}").expect("seed");
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::write(old.with_extension("tmp"), b"stale").expect("stale tmp");
        fs::set_permissions(old.with_extension("tmp"), fs::Permissions::from_mode(0o666))
            .expect("chmod");
        write_atomic(&old, b"{\"x\":1}").expect("rewrite");
        assert_eq!(mode(&old), 0o600, "a file rewritten");
        assert_eq!(fs::read(&old).expect("read"), b"{\"x\":1}");
    }

    fn pod(namespace: &str, name: &str) -> PodRec {
        PodRec {
            name: name.into(),
            namespace: namespace.into(),
            node: "node-1".into(),
            netns: names::ns_pod("t", namespace, name),
            container_id: names::container_id("t", namespace, name),
            ip: Ipv4Addr::new(10, 0, 0, 9),
            result: serde_json::Value::Null,
            http_pid: None,
            labels: Labels::new(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn pods_are_found_by_name_or_namespace_and_name_whatever_their_key() {
        let mut st = LabState::new("t", Mode::Vpc);
        // A pod of an older lab, filed under its bare name.
        st.pods.insert("web".into(), pod("default", "web"));
        let xa = pod("x", "a");
        st.pods.insert(xa.key(), xa);
        st.pods.insert("y/a".into(), pod("y", "a"));
        assert_eq!(st.pod_by_arg("web").expect("web").name, "web");
        assert_eq!(st.pod_by_arg("default/web").expect("web").name, "web");
        assert_eq!(st.pod_by_arg("x/a").expect("x/a").namespace, "x");
        assert_eq!(st.pod_by_arg("y/a").expect("y/a").namespace, "y");
        assert!(
            st.pod_by_arg("a").is_err(),
            "a is default/a, which does not exist"
        );
        assert!(st.pod_by_arg("X/a").is_err());
        let r = PodRef::new("default", "web").expect("valid");
        assert_eq!(st.pod_entry_key(&r).as_deref(), Some("web"));
    }

    #[test]
    fn older_lab_json_reads_with_the_defaults_of_issue_10() {
        let mut v = serde_json::to_value(LabState::new("t", Mode::Vpc)).expect("json");
        let o = v.as_object_mut().expect("object");
        o.remove("kube_namespaces");
        o.remove("external_pod_access");
        let mut p = serde_json::to_value(pod("default", "web")).expect("json");
        let po = p.as_object_mut().expect("object");
        po.remove("labels");
        po.remove("ports");
        o.insert("pods".into(), serde_json::json!({ "web": p }));
        let st: LabState = serde_json::from_value(v).expect("older lab.json");
        assert_eq!(st.external_pod_access, ExternalPodAccess::Deny);
        assert!(st.kube_namespaces.is_empty());
        assert!(st.pod_by_arg("web").expect("web").labels.is_empty());
    }

    #[test]
    fn lab_json_spells_the_mode_as_before() {
        for (mode, word) in [(Mode::Vpc, "\"vpc\""), (Mode::Overlay, "\"overlay\"")] {
            let st = LabState::new("t", mode);
            let v = serde_json::to_value(&st).expect("json");
            assert_eq!(v["mode"].to_string(), word);
            let back: LabState = serde_json::from_value(v).expect("parse");
            assert_eq!(back.mode, mode);
        }
        let mut v = serde_json::to_value(LabState::new("t", Mode::Vpc)).expect("json");
        v["mode"] = "VPC".into();
        assert!(serde_json::from_value::<LabState>(v).is_err());
    }
}
