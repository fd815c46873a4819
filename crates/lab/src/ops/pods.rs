//! `lab pod add|del`: the real plugin, run as a runtime runs it.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use podwire_netlink::Handle;
use serde_json::json;

use super::binaries::{bin, bin_dir};
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
            || procs::port_open(&ns_path, rec.ip, 80),
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
    run_plugin(st.mode, &node, "DEL", &rec, Some(&rec.result))?;
    procs::netns_del(&rec.netns)?;
    st.pods.remove(pod);
    st.save()
}
