//! `lab pod add|del`: the real plugin, run as a runtime runs it.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use podwire_netlink::Handle;
use serde_json::json;

use podwire_cluster::records::Labels;
use podwire_cluster::{ContainerPort, PodRef, Protocol};

use super::binaries::{bin, bin_dir};
use crate::datastore::lab_store;
use crate::kube::{self, LabelEdit};
use crate::state::{self, LabState, Mode, NodeRec, PodRec};
use crate::{names, procs, LabError};

fn plugin_conf(mode: Mode, node: &NodeRec, prev: Option<&serde_json::Value>) -> String {
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
    mode: Mode,
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

/// What `lab pod add` makes.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub labels: Labels,
    /// Served by the pod's listener (`--http` adds 80; see
    /// [`crate::kube::pod_ports`]).
    pub ports: Vec<ContainerPort>,
}

impl PodSpec {
    /// A pod in namespace default, with an HTTP page on 80 or none.
    pub fn simple(name: &str, node: &str, http: bool) -> PodSpec {
        PodSpec {
            name: name.into(),
            namespace: names::DEFAULT_NAMESPACE.into(),
            node: node.into(),
            labels: Labels::new(),
            ports: if http {
                vec![ContainerPort {
                    name: None,
                    port: 80,
                    protocol: Protocol::TCP,
                }]
            } else {
                Vec::new()
            },
        }
    }
}

/// `lab pod add`: its records in the datastore (before ADD: the agent
/// knows the pod's labels when it wires it), a namespace, the plugin's ADD
/// (CNI_ARGS carry K8S_POD_NAMESPACE/K8S_POD_NAME), then its listener.
pub fn pod_add(lab: &str, spec: &PodSpec) -> Result<PodRec, LabError> {
    names::check_pod_name(&spec.name)?;
    names::check_namespace_name(&spec.namespace)?;
    let pref = PodRef::new(&spec.namespace, &spec.name)
        .map_err(|e| LabError::Usage(format!("pod {}/{}: {e}", spec.namespace, spec.name)))?;
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    if st.pod(&pref).is_some() {
        return Err(LabError::Usage(format!("pod {pref} exists already")));
    }
    let netns = names::ns_pod(lab, &spec.namespace, &spec.name);
    if let Some(other) = st.pods.values().find(|p| p.netns == netns) {
        return Err(LabError::Usage(format!(
            "pod {pref} would get network namespace {netns}, which pod {}/{} has: choose another name",
            other.namespace, other.name
        )));
    }
    let n = st.node(&spec.node)?.clone();
    let mut rec = PodRec {
        name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        node: spec.node.clone(),
        netns,
        container_id: names::container_id(lab, &spec.namespace, &spec.name),
        ip: Ipv4Addr::UNSPECIFIED,
        result: serde_json::Value::Null,
        http_pid: None,
        labels: spec.labels.clone(),
        ports: spec.ports.clone(),
    };
    let record = rec.record();
    record
        .validate()
        .map_err(|e| LabError::Usage(format!("pod {pref}: {e}")))?;
    // The namespace first (a pod in a namespace the lab does not know yet
    // makes it, with only its name label), then the pod. As in Kubernetes,
    // where the pod exists whatever the CNI's datastore does, a datastore
    // that cannot be reached does not stop the ADD (the agent then answers
    // for itself); the operator is told the records are missing.
    let store = match lab_store(&st) {
        Ok(s) => Some(s),
        Err(LabError::Datastore {
            unavailable: true,
            msg,
        }) => {
            tracing::warn!("pod {pref}: the lab's datastore is unavailable ({msg}): its records are not written; `lab pod label` writes them later");
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(store) = &store {
        match write_records(&mut st, store.as_ref(), &spec.namespace, &record) {
            Ok(()) => {}
            Err(LabError::Datastore {
                unavailable: true,
                msg,
            }) => tracing::warn!(
                "pod {pref}: datastore unavailable ({msg}): its records are not written; `lab pod label` writes them later"
            ),
            Err(e) => return Err(e),
        }
    }
    procs::netns_add(&rec.netns)?;
    let wired = (|| -> Result<(), LabError> {
        let mut h = Handle::in_netns(&procs::netns_path(&rec.netns))?;
        let lo = h.link("lo")?;
        h.set_up(lo.index)?;
        let out = run_plugin(st.mode, &n, "ADD", &rec, None)?;
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
        if let Some(store) = &store {
            let _ = kube::delete_pod(store.as_ref(), &record);
        }
        return Err(e);
    }
    // Recorded before the listener starts: a failing listener leaves a pod
    // that `lab pod del` removes, never one the lab forgot.
    st.pods.insert(rec.key(), rec.clone());
    st.save()?;
    if !rec.ports.is_empty() {
        let pid = start_listener(&st, &rec)?;
        rec.http_pid = Some(pid);
        st.pods.insert(rec.key(), rec.clone());
        st.save()?;
        wait_listening(&st, &rec, pid)?;
    }
    Ok(rec)
}

/// The pod's namespace record (when the lab does not have it yet) and its
/// own record.
fn write_records(
    st: &mut LabState,
    store: &dyn podwire_store::Datastore,
    namespace: &str,
    record: &podwire_cluster::PodRecord,
) -> Result<(), LabError> {
    if !st.kube_namespaces.contains_key(namespace) {
        let ns = kube::namespace_record(namespace, &Labels::new())?;
        kube::write_namespace(store, &ns)?;
        st.kube_namespaces.insert(namespace.to_string(), ns.labels);
        st.save()?;
    }
    kube::write_pod(store, record)
}

/// The pod's listener: one process serving every port of the pod.
fn start_listener(st: &LabState, rec: &PodRec) -> Result<i32, LabError> {
    let dir = st.dir();
    let me = std::env::current_exe().map_err(|e| LabError::State(e.to_string()))?;
    let log = dir.join(format!("pod-{}.log", rec.netns));
    let mut args = vec![
        "lab".into(),
        "_http".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--pod".into(),
        rec.name.clone(),
        "--namespace".into(),
        rec.namespace.clone(),
    ];
    for p in &rec.ports {
        args.extend(["--port".into(), p.port.to_string()]);
    }
    procs::spawn_in(&rec.netns, &me, &args, &log)
}

fn wait_listening(st: &LabState, rec: &PodRec, pid: i32) -> Result<(), LabError> {
    let log = st.dir().join(format!("pod-{}.log", rec.netns));
    let ns_path = procs::netns_path(&rec.netns);
    procs::wait_for(
        &format!("listener in pod {}", rec.key()),
        pid,
        &log,
        Duration::from_secs(5),
        || {
            rec.ports
                .iter()
                .all(|p| procs::port_open(&ns_path, rec.ip, p.port))
        },
    )
}

/// `lab pod label`: changes a pod's labels, in lab.json and its record.
pub fn pod_label(lab: &str, pod: &str, edits: &[LabelEdit]) -> Result<PodRec, LabError> {
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    let rec = st.pod_by_arg(pod)?.clone();
    let key = st
        .pod_entry_key(&rec.record().pod_ref())
        .unwrap_or_else(|| rec.key());
    let mut new = rec.clone();
    new.labels = kube::apply_label_edits(&rec.labels, edits, None)?;
    kube::write_pod(lab_store(&st)?.as_ref(), &new.record())?;
    st.pods.insert(key, new.clone());
    st.save()?;
    Ok(new)
}

/// `lab pod del`: the plugin's DEL, then the namespace and the pod's record.
pub fn pod_del(lab: &str, pod: &str) -> Result<(), LabError> {
    let mut st = LabState::load(lab)?;
    let _lock = state::lock(&st.dir())?;
    st = LabState::load(lab)?;
    let rec = st.pod_by_arg(pod)?.clone();
    let key = st
        .pod_entry_key(&rec.record().pod_ref())
        .unwrap_or_else(|| rec.key());
    let node = st.node(&rec.node)?.clone();
    if let Some(pid) = rec.http_pid {
        procs::stop(pid, &st.dir().display().to_string());
    }
    run_plugin(st.mode, &node, "DEL", &rec, Some(&rec.result))?;
    procs::netns_del(&rec.netns)?;
    st.pods.remove(&key);
    st.save()?;
    // The pod is gone; a record the datastore could not drop now selects
    // nothing (no endpoint has it) and is replaced by the next pod of the
    // name.
    if let Err(e) = lab_store(&st).and_then(|s| kube::delete_pod(s.as_ref(), &rec.record())) {
        tracing::warn!("pod {key}: its record stays in the datastore: {e}");
    }
    Ok(())
}
