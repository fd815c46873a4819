//! Starting, stopping and asking the nodes' agents.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::binaries::bin;
use crate::cloud;
use crate::datastore::{datastore_spec, etcd_client_tls, ETCD_ADDR};
use crate::state::{LabState, NodeRec};
use crate::{procs, LabError};

/// The agent answers STATUS with free addresses ready.
pub fn agent_ready(socket: &Path) -> bool {
    matches!(
        podwire_proto::call(socket, &podwire_proto::Request::Status, std::time::Instant::now() + Duration::from_secs(2)),
        Ok(podwire_proto::Response::Status { status }) if status.ready
    )
}

/// Where the lab's agents serve metrics: the default, inside each node's
/// own namespace.
pub const AGENT_METRICS_ADDRESS: &str = "127.0.0.1:61678";

/// The agent's own STATUS answer, or null when it does not answer (`lab
/// status` and `podwirectl node status` both show it).
pub fn agent_status(socket: &Path) -> serde_json::Value {
    match podwire_proto::call(
        socket,
        &podwire_proto::Request::Status,
        std::time::Instant::now() + Duration::from_secs(1),
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
pub(super) fn start_agent(st: &mut LabState, idx: usize) -> Result<(), LabError> {
    let r = st.nodes[idx].clone();
    let nd = st.dir().join(&r.name);
    std::fs::create_dir_all(&nd).map_err(|e| LabError::State(e.to_string()))?;
    let args = agent_args(st, &r)?;
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

/// The agent's command line. Its mode is the lab's mode, the same field
/// the plugin's configuration is written from.
pub(super) fn agent_args(st: &LabState, r: &NodeRec) -> Result<Vec<String>, LabError> {
    let nd = st.dir().join(&r.name);
    let mut args: Vec<String> = vec![
        "--mode".into(),
        st.mode.to_string(),
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
        // Pods stay away from the lab's control plane: the EC2 API (on EKS
        // pods reach it through IRSA, never with the node's role) and the
        // datastore. IMDS is the agent's own default.
        "--block-pod-egress".into(),
        format!("{}:80,{}:2379", cloud::EC2_ADDR, ETCD_ADDR),
        "--pod-imds-access".into(),
        if st.pod_imds_access { "allow" } else { "deny" }.into(),
        "--metrics-address".into(),
        // Benchmarks compare with the endpoint off (bench/metrics-ab.sh).
        match std::env::var("PODWIRE_LAB_AGENT_METRICS").as_deref() {
            Ok("off") => "off".into(),
            _ => AGENT_METRICS_ADDRESS.into(),
        },
    ];
    // Both modes: the agents read pods, namespaces and policies from the
    // datastore and write their endpoints there (issue 10).
    args.extend([
        "--datastore".into(),
        datastore_spec(st),
        "--external-pod-access".into(),
        st.external_pod_access.to_string(),
    ]);
    if st.datastore == "etcd" {
        // The lab's etcd takes only clients with a certificate of its CA.
        let tls = etcd_client_tls(st);
        for (flag, file) in [
            ("--etcd-ca-cert-file", tls.ca_cert),
            ("--etcd-cert-file", tls.cert),
            ("--etcd-key-file", tls.key),
        ] {
            if let Some(f) = file {
                args.extend([flag.into(), f.display().to_string()]);
            }
        }
    }
    if let Some(cidr) = st.overlay_pool()? {
        args.extend([
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
    if st.mode == crate::state::Mode::Vpc {
        if st.prefix_delegation {
            args.push("--prefix-delegation".into());
        }
        // The agents run with a clean environment: their pool timers reach
        // them as flags or not at all.
        if let Some(g) = st.eni_gc_grace_secs {
            args.extend(["--eni-gc-grace".into(), g.to_string()]);
        }
        if let Some(r) = st.reconcile_interval_secs {
            args.extend(["--reconcile-interval".into(), r.to_string()]);
        }
    }
    Ok(args)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Mode;
    use std::net::Ipv4Addr;

    fn node() -> NodeRec {
        NodeRec {
            name: "node-1".into(),
            netns: "pw-t-node-1".into(),
            instance_id: "i-1".into(),
            primary_ip: Ipv4Addr::new(10, 0, 0, 10),
            subnet: None,
            socket: "/x/agent.sock".into(),
            agent_pid: None,
        }
    }

    fn mode_arg(args: &[String]) -> Vec<&str> {
        args.windows(2)
            .filter(|w| w[0] == "--mode")
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn the_agent_runs_in_the_labs_mode_not_in_one_guessed_from_a_cidr() {
        // A vpc lab with a pod CIDR recorded (lab.json edited, or an older
        // lab): the agent must still be told vpc, as the plugin is.
        let mut st = LabState::new("t", Mode::Vpc);
        st.pod_cidr = Some("172.16.0.0/16".parse().expect("cidr"));
        st.block_size = 26;
        let args = agent_args(&st, &node()).expect("args");
        assert_eq!(mode_arg(&args), ["vpc"]);
        assert!(!args.iter().any(|a| a == "--pod-cidr"), "{args:?}");

        st.mode = Mode::Overlay;
        let args = agent_args(&st, &node()).expect("args");
        assert_eq!(mode_arg(&args), ["overlay"]);
        assert!(args.iter().any(|a| a == "--pod-cidr"), "{args:?}");

        // Overlay without a pool is an error, not a silent vpc agent.
        st.pod_cidr = None;
        assert!(agent_args(&st, &node()).is_err());
    }

    fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
        args.windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1].as_str())
    }

    #[test]
    fn prefix_delegation_reaches_vpc_agents_only_when_asked() {
        let mut st = LabState::new("t", Mode::Vpc);
        let has = |st: &LabState| {
            agent_args(st, &node())
                .expect("args")
                .iter()
                .any(|a| a == "--prefix-delegation")
        };
        assert!(!has(&st));
        st.prefix_delegation = true;
        assert!(has(&st));
    }

    #[test]
    fn the_pool_timers_reach_vpc_agents_only_when_set() {
        let mut st = LabState::new("t", Mode::Vpc);
        let args = agent_args(&st, &node()).expect("args");
        assert_eq!(flag(&args, "--eni-gc-grace"), None, "{args:?}");
        assert_eq!(flag(&args, "--reconcile-interval"), None, "{args:?}");
        st.eni_gc_grace_secs = Some(7);
        st.reconcile_interval_secs = Some(2);
        let args = agent_args(&st, &node()).expect("args");
        assert_eq!(flag(&args, "--eni-gc-grace"), Some("7"));
        assert_eq!(flag(&args, "--reconcile-interval"), Some("2"));
        // An overlay agent has no ENI pool: it would refuse neither flag,
        // but they mean nothing there.
        st.mode = Mode::Overlay;
        st.pod_cidr = Some("172.16.0.0/16".parse().expect("cidr"));
        st.block_size = 26;
        let args = agent_args(&st, &node()).expect("args");
        assert!(!args.iter().any(|a| a == "--eni-gc-grace"), "{args:?}");
    }

    #[test]
    fn the_pool_timers_survive_lab_json() {
        // `lab agent start` and `lab node add` read them back from lab.json.
        let mut st = LabState::new("t", Mode::Vpc);
        st.eni_gc_grace_secs = Some(7);
        st.reconcile_interval_secs = Some(2);
        let back: LabState =
            serde_json::from_str(&serde_json::to_string(&st).expect("json")).expect("parse");
        assert_eq!(back.eni_gc_grace_secs, Some(7));
        assert_eq!(back.reconcile_interval_secs, Some(2));
        // A lab.json of an older version has neither: the agents' defaults.
        let mut v = serde_json::to_value(&st).expect("json");
        if let Some(o) = v.as_object_mut() {
            o.remove("eni_gc_grace_secs");
            o.remove("reconcile_interval_secs");
        }
        let old: LabState = serde_json::from_value(v).expect("parse");
        assert_eq!(old.eni_gc_grace_secs, None);
        assert_eq!(old.reconcile_interval_secs, None);
    }

    #[test]
    fn agents_of_an_etcd_lab_get_its_tls_spec_and_client_files() {
        let mut st = LabState::new("t", Mode::Overlay);
        st.pod_cidr = Some("172.16.0.0/16".parse().expect("cidr"));
        st.block_size = 26;
        st.datastore = "etcd".into();
        let args = agent_args(&st, &node()).expect("args");
        assert_eq!(
            flag(&args, "--datastore"),
            Some("etcd+https://169.254.169.251:2379")
        );
        let tls = st.dir().join("etcd-tls");
        for (name, file) in [
            ("--etcd-ca-cert-file", "ca.pem"),
            ("--etcd-cert-file", "client.pem"),
            ("--etcd-key-file", "client-key.pem"),
        ] {
            let want = tls.join(file).display().to_string();
            assert_eq!(flag(&args, name), Some(want.as_str()), "{name}");
        }
        // A SQLite lab's agents get no etcd files.
        st.datastore = "sqlite".into();
        let args = agent_args(&st, &node()).expect("args");
        assert!(!args.iter().any(|a| a.starts_with("--etcd-")), "{args:?}");
    }

    #[test]
    fn vpc_agents_get_the_datastore_and_the_labs_external_pod_access() {
        let mut st = LabState::new("t", Mode::Vpc);
        st.datastore = "sqlite".into();
        let args = agent_args(&st, &node()).expect("args");
        let db = format!("sqlite:{}", st.dir().join("datastore.db").display());
        assert_eq!(flag(&args, "--datastore"), Some(db.as_str()));
        assert_eq!(flag(&args, "--external-pod-access"), Some("deny"));
        st.external_pod_access = crate::state::ExternalPodAccess::Allow;
        let args = agent_args(&st, &node()).expect("args");
        assert_eq!(flag(&args, "--external-pod-access"), Some("allow"));
    }
}
