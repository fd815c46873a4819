//! `podwirectl audit [--lab N | --datastore URL] [--json] [--verify]`: who
//! reaches each pod and why (podwire-audit), from a lab or any datastore;
//! with `--verify` (lab only) every claim is probed and each mismatch
//! between prediction and probe reported (exit 1 when there is one).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ipnet::Ipv4Net;
use podwire_audit::sg::{
    parse_network_interfaces, parse_network_interfaces_any, parse_security_groups,
    parse_security_groups_any, SecurityGroups, MAX_REPLY_BYTES,
};
use podwire_audit::{
    AuditInput, ExternalSource, FlatClaim, Mismatch, Mode, NodeInfo, Observation, Posture,
    SourceKind, VXLAN_PORT,
};
use podwire_cluster::{PodRef, Protocol};
use podwire_lab::state::{ExternalPodAccess, LabState};
use podwire_lab::{names, ops, procs};
use podwire_store::{Datastore, EtcdTls};
use serde_json::json;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The lab to audit [default: lab, unless --datastore] (`--name`, as
    /// the `lab` commands spell it, works too).
    #[arg(long, visible_alias = "name", conflicts_with = "datastore")]
    lab: Option<String>,
    /// A podwire datastore, as the agents' --datastore (a real cluster's).
    #[arg(long)]
    datastore: Option<String>,
    #[arg(long, requires = "datastore")]
    etcd_ca_cert_file: Option<PathBuf>,
    #[arg(long, requires = "etcd_key_file")]
    etcd_cert_file: Option<PathBuf>,
    #[arg(long, requires = "etcd_cert_file")]
    etcd_key_file: Option<PathBuf>,
    /// The cluster's mode, when its node records do not say (--datastore).
    #[arg(long, value_parser = ["vpc", "overlay"])]
    mode: Option<String>,
    /// The agents' --external-pod-access [default: the lab's; else deny].
    #[arg(long, value_parser = ["deny", "allow"])]
    external_pod_access: Option<String>,
    /// The agents' --external-allow-cidrs (CIDR,…).
    #[arg(long, value_delimiter = ',')]
    external_allow_cidrs: Vec<Ipv4Net>,
    /// Outside ranges to audit, repeatable [default: the lab's external
    /// host; else 0.0.0.0/0]. The cluster's own addresses are left out.
    #[arg(long)]
    external: Vec<Ipv4Net>,
    /// The VPC's security groups: a DescribeSecurityGroups reply (EC2's
    /// XML) or `aws ec2 describe-security-groups` output (JSON) [default:
    /// the lab's, through its EC2 API; with --datastore: not known].
    #[arg(long, requires = "network_interfaces")]
    security_groups: Option<PathBuf>,
    /// The VPC's ENIs, to know which groups hold each address: a
    /// DescribeNetworkInterfaces reply (XML) or `aws ec2
    /// describe-network-interfaces` output (JSON).
    #[arg(long, requires = "security_groups")]
    network_interfaces: Option<PathBuf>,
    /// The overlay's VXLAN port.
    #[arg(long, default_value_t = VXLAN_PORT)]
    vxlan_port: u16,
    /// Audit only these pods (NAME or NS/NAME, repeatable); every source is
    /// still asked about them.
    #[arg(long = "pod")]
    pods: Vec<String>,
    /// The whole report, every claim with its reasons (docs/AUDIT.md).
    #[arg(long)]
    json: bool,
    /// Lab only: probe every claim; exit 1 on any mismatch.
    #[arg(long, conflicts_with = "datastore")]
    verify: bool,
    /// --verify: each probe's deadline.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// --verify: probes in flight at once (at most 128).
    #[arg(long, default_value_t = 64)]
    parallel: usize,
}

pub fn run(a: AuditArgs) -> anyhow::Result<ExitCode> {
    let (input, lab) = match &a.datastore {
        Some(spec) => (datastore_input(&a, spec)?, None),
        None => {
            let lab = a.lab.clone().unwrap_or_else(|| names::DEFAULT_LAB.into());
            let st = LabState::load(&lab)?;
            (lab_input(&a, &st)?, Some(st))
        }
    };
    let report = podwire_audit::audit(&input);
    for r in &input.only_pods {
        let key = r.to_string();
        if !report.pods.iter().any(|p| p.pod == key) {
            anyhow::bail!("--pod {key}: no such pod with an address in the records");
        }
    }
    let mut out = serde_json::to_value(&report)?;
    let mut code = ExitCode::SUCCESS;
    let mut verify_text = String::new();
    if a.verify {
        let st = lab
            .as_ref()
            .context("--verify needs a lab (it probes from the lab's namespaces)")?;
        let claims = report.flat_claims();
        let v = verify(st, &claims, &a)?;
        if !v.mismatches.is_empty() {
            code = ExitCode::FAILURE;
        }
        verify_text = format_verify(&v);
        out["verify"] = json!({
            "claims": claims.len(),
            "probed": v.observations.len(),
            "skipped": v.skipped,
            "timeout_ms": a.timeout_ms,
            "mismatches": v.mismatches,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", podwire_audit::format_report(&report));
        print!("{verify_text}");
    }
    Ok(code)
}

fn posture(s: Option<&str>, default: Posture) -> Posture {
    match s {
        Some("allow") => Posture::Allow,
        Some(_) => Posture::Deny,
        None => default,
    }
}

fn mode_arg(s: Option<&str>) -> Option<Mode> {
    match s {
        Some("vpc") => Some(Mode::Vpc),
        Some("overlay") => Some(Mode::Overlay),
        _ => None,
    }
}

/// A real cluster: its datastore, and its security groups when given as
/// files (else the report says they were assumed open).
fn datastore_input(a: &AuditArgs, spec: &str) -> anyhow::Result<AuditInput> {
    let tls = EtcdTls {
        ca_cert: a.etcd_ca_cert_file.clone(),
        cert: a.etcd_cert_file.clone(),
        key: a.etcd_key_file.clone(),
    };
    let store: Arc<dyn Datastore> = Arc::from(
        podwire_store::open_with(spec, &tls)
            .with_context(|| format!("opening the datastore {spec}"))?,
    );
    let rec = podwire_audit::store::load(store.as_ref())?;
    report_problems(&rec.problems);
    let mode = mode_arg(a.mode.as_deref())
        .or(rec.mode)
        .context("the node records do not say the mode: give --mode vpc|overlay")?;
    let external = if a.external.is_empty() {
        vec![ExternalSource {
            name: "outside".into(),
            cidr: Ipv4Net::default(),
        }]
    } else {
        named_externals(&a.external)
    };
    Ok(AuditInput {
        mode,
        view: rec.view,
        nodes: rec.nodes,
        posture: posture(a.external_pod_access.as_deref(), Posture::Deny),
        external_allow_cidrs: a.external_allow_cidrs.clone(),
        external,
        security_groups: sg_files(a)?,
        vxlan_port: a.vxlan_port,
        only_pods: only_pods(a)?,
    })
}

/// `--pod NAME|NS/NAME`s.
fn only_pods(a: &AuditArgs) -> anyhow::Result<Vec<PodRef>> {
    a.pods
        .iter()
        .map(|p| PodRef::parse(p).with_context(|| format!("--pod {p:?}")))
        .collect()
}

/// `--security-groups` and `--network-interfaces`, when given.
fn sg_files(a: &AuditArgs) -> anyhow::Result<Option<SecurityGroups>> {
    let (Some(g), Some(n)) = (&a.security_groups, &a.network_interfaces) else {
        return Ok(None);
    };
    Ok(Some(SecurityGroups::new(
        parse_security_groups_any(&read_bounded(g)?)?,
        parse_network_interfaces_any(&read_bounded(n)?)?,
    )))
}

/// A file of at most `MAX_REPLY_BYTES`, as UTF-8.
fn read_bounded(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut buf = String::new();
    let limit = u64::try_from(MAX_REPLY_BYTES).unwrap_or(u64::MAX);
    f.take(limit + 1)
        .read_to_string(&mut buf)
        .with_context(|| format!("{}: not UTF-8 text", path.display()))?;
    if buf.len() > MAX_REPLY_BYTES {
        anyhow::bail!("{}: over {MAX_REPLY_BYTES} bytes", path.display());
    }
    Ok(buf)
}

fn named_externals(v: &[Ipv4Net]) -> Vec<ExternalSource> {
    v.iter()
        .map(|c| ExternalSource {
            name: "outside".into(),
            cidr: c.trunc(),
        })
        .collect()
}

fn report_problems(problems: &[String]) {
    for p in problems {
        eprintln!("podwirectl audit: record left out: {p}");
    }
}

/// A lab: its datastore, its cloud's security groups and ENIs (through
/// the EC2 API, as from a real VPC), its agents' posture, its external host.
fn lab_input(a: &AuditArgs, st: &LabState) -> anyhow::Result<AuditInput> {
    let store = podwire_lab::datastore::lab_store(st)?;
    let rec = podwire_audit::store::load(store.as_ref())?;
    report_problems(&rec.problems);
    let sgs = match sg_files(a)? {
        Some(s) => s,
        None => {
            let groups = ops::ec2_call(&st.name, "DescribeSecurityGroups", &[])?;
            let enis = ops::ec2_call(&st.name, "DescribeNetworkInterfaces", &[])?;
            SecurityGroups::new(
                parse_security_groups(&groups)?,
                parse_network_interfaces(&enis)?,
            )
        }
    };
    // The lab knows each node's primary address for sure.
    let nodes: Vec<NodeInfo> = st
        .nodes
        .iter()
        .map(|n| {
            let known = rec.nodes.iter().find(|r| r.name == n.name);
            let mut addresses = known.map(|k| k.addresses.clone()).unwrap_or_default();
            if !addresses.contains(&n.primary_ip) {
                addresses.push(n.primary_ip);
            }
            NodeInfo {
                name: n.name.clone(),
                addresses,
                primary: n.primary_ip,
                tunnel: known.and_then(|k| k.tunnel),
            }
        })
        .collect();
    let mut external = named_externals(&a.external);
    if let Some(e) = &st.external {
        external.insert(
            0,
            ExternalSource {
                name: names::EXTERNAL.into(),
                cidr: Ipv4Net::from(e.primary_ip),
            },
        );
    }
    let lab_posture = match st.external_pod_access {
        ExternalPodAccess::Deny => Posture::Deny,
        ExternalPodAccess::Allow => Posture::Allow,
    };
    Ok(AuditInput {
        mode: match st.mode {
            podwire_lab::Mode::Vpc => Mode::Vpc,
            podwire_lab::Mode::Overlay => Mode::Overlay,
        },
        view: rec.view,
        nodes,
        posture: posture(a.external_pod_access.as_deref(), lab_posture),
        external_allow_cidrs: a.external_allow_cidrs.clone(),
        external,
        security_groups: Some(sgs),
        vxlan_port: a.vxlan_port,
        only_pods: only_pods(a)?,
    })
}

/// What --verify found.
struct Verified {
    observations: Vec<Observation>,
    /// Claims no probe can check (outside ranges other than the lab's
    /// host, non-TCP ports), by `from -> to:port`.
    skipped: Vec<String>,
    mismatches: Vec<Mismatch>,
}

/// One connection to make: from a namespace to an address and port.
struct Probe {
    netns: PathBuf,
    to: SocketAddr,
}

/// The namespace a claim's source lives in, if the lab has it.
fn source_netns(st: &LabState, c: &FlatClaim) -> Option<String> {
    match c.from.kind {
        SourceKind::External => (c.from.name == names::EXTERNAL)
            .then(|| st.external.as_ref().map(|e| e.netns.clone()))
            .flatten(),
        SourceKind::Node => st
            .nodes
            .iter()
            .find(|n| n.name == c.from.name)
            .map(|n| n.netns.clone()),
        SourceKind::Pod => PodRef::parse(&c.from.name)
            .ok()
            .and_then(|r| st.pod(&r))
            .or_else(|| st.pods.values().find(|p| p.ip == c.from.ip))
            .map(|p| p.netns.clone()),
    }
}

/// Probes every claim in parallel; a probe that disagrees with its claim
/// is made again (twice, with a longer deadline) before it counts, so one
/// lost SYN is not a mismatch; a drop never turns into a connection.
fn verify(st: &LabState, claims: &[FlatClaim], a: &AuditArgs) -> anyhow::Result<Verified> {
    if a.timeout_ms == 0 || a.timeout_ms > 30_000 {
        anyhow::bail!("--timeout-ms must be 1 to 30000");
    }
    let mut skipped = Vec::new();
    let mut work: Vec<(usize, Probe)> = Vec::new();
    for (i, c) in claims.iter().enumerate() {
        let ns = source_netns(st, c).filter(|_| c.protocol == Protocol::TCP);
        match ns {
            Some(ns) => work.push((
                i,
                Probe {
                    netns: procs::netns_path(&ns),
                    to: SocketAddr::from((c.to_ip, c.port)),
                },
            )),
            None => skipped.push(format!("{} -> {}:{}", c.from.name, c.to, c.port)),
        }
    }
    let timeout = Duration::from_millis(a.timeout_ms);
    let mut outcomes = probe_all(&work, timeout, a.parallel);
    for round in 1..=2 {
        let again: Vec<usize> = (0..work.len())
            .filter(|k| outcomes[*k].0 != claims[work[*k].0].reachable)
            .collect();
        if again.is_empty() {
            break;
        }
        let subset: Vec<(usize, Probe)> = again
            .iter()
            .map(|k| {
                (
                    *k,
                    Probe {
                        netns: work[*k].1.netns.clone(),
                        to: work[*k].1.to,
                    },
                )
            })
            .collect();
        let redo = probe_all(&subset, timeout * (2 * round + 1), a.parallel);
        for ((k, _), o) in subset.iter().zip(redo) {
            outcomes[*k] = o;
        }
    }
    let observations: Vec<Observation> = work
        .iter()
        .zip(outcomes)
        .map(|((i, _), (reachable, outcome))| {
            let c = &claims[*i];
            Observation {
                from: c.from.name.clone(),
                to: c.to.clone(),
                port: c.port,
                reachable,
                outcome,
            }
        })
        .collect();
    // Skipped claims are not mismatches: compare only what was probed.
    let probed: Vec<FlatClaim> = work.iter().map(|(i, _)| claims[*i].clone()).collect();
    let mismatches = podwire_audit::compare(&probed, &observations);
    Ok(Verified {
        observations,
        skipped,
        mismatches,
    })
}

/// Bounded parallel TCP connects: (connected, outcome) per probe, in order.
fn probe_all(work: &[(usize, Probe)], timeout: Duration, parallel: usize) -> Vec<(bool, String)> {
    let results: Mutex<Vec<(bool, String)>> =
        Mutex::new(vec![(false, "not probed".to_string()); work.len()]);
    let next = AtomicUsize::new(0);
    let workers = parallel.clamp(1, 128).min(work.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((_, p)) = work.get(k) else { break };
                let r = connect(p, timeout);
                if let Ok(mut v) = results.lock() {
                    v[k] = r;
                }
            });
        }
    });
    results.into_inner().unwrap_or_default()
}

fn connect(p: &Probe, timeout: Duration) -> (bool, String) {
    let to = p.to;
    match podwire_netlink::netns::run_in(&p.netns, move || TcpStream::connect_timeout(&to, timeout))
    {
        Ok(Ok(_)) => (true, "connected".into()),
        Ok(Err(e)) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused => (false, "refused".into()),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                (false, "timeout".into())
            }
            _ => (false, format!("error: {e}")),
        },
        Err(e) => (false, format!("error: {e}")),
    }
}

fn format_verify(v: &Verified) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nverify: {} claims probed, {} skipped, {} mismatches",
        v.observations.len(),
        v.skipped.len(),
        v.mismatches.len()
    );
    for m in &v.mismatches {
        let _ = writeln!(
            out,
            "MISMATCH {} ({}) -> {} {}:{}: expected {}, observed {}",
            m.from.name,
            m.from.ip,
            m.to,
            m.to_ip,
            m.port,
            if m.expected {
                "reachable"
            } else {
                "unreachable"
            },
            m.observed
        );
        for r in &m.reasons {
            let _ = writeln!(out, "    {r}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use podwire_store::{Expect, SqliteStore};

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: AuditArgs,
    }

    /// A real cluster's way in: a datastore and the AWS CLI's JSON.
    #[test]
    fn a_datastore_and_aws_cli_json_give_a_report_without_a_lab() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("d.db");
        let s = SqliteStore::open(&db).expect("open");
        for (k, v) in [
            (
                "/podwire/pods/x/a",
                r#"{"namespace":"x","name":"a","ports":[{"name":"web","port":80},{"port":22}]}"#,
            ),
            (
                "/podwire/endpoints/node-1/c1/eth0",
                r#"{"node":"node-1","container_id":"c1","ifname":"eth0","ip":"10.0.1.20","pod":{"namespace":"x","name":"a"}}"#,
            ),
            (
                "/podwire/node-addresses/node-1",
                r#"{"node":"node-1","mode":"vpc","addresses":["10.0.1.10"]}"#,
            ),
        ] {
            s.put(k, v.as_bytes(), Expect::Absent).expect("put");
        }
        let sg = dir.path().join("sg.json");
        std::fs::write(&sg, r#"{"SecurityGroups":[{"GroupId":"sg-1","GroupName":"nodes","IpPermissions":[{"IpProtocol":"tcp","FromPort":80,"ToPort":80,"IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}]}"#).expect("write");
        let eni = dir.path().join("eni.json");
        std::fs::write(&eni, r#"{"NetworkInterfaces":[{"NetworkInterfaceId":"eni-1","PrivateIpAddress":"10.0.1.10","Groups":[{"GroupId":"sg-1"}],"PrivateIpAddresses":[{"PrivateIpAddress":"10.0.1.10"},{"PrivateIpAddress":"10.0.1.20"}]}]}"#).expect("write");
        let spec = format!("sqlite:{}", db.display());
        let args = |posture: &str| {
            T::try_parse_from([
                "t",
                "--datastore",
                &spec,
                "--external-pod-access",
                posture,
                "--security-groups",
                sg.to_str().expect("utf-8"),
                "--network-interfaces",
                eni.to_str().expect("utf-8"),
            ])
            .expect("args")
            .a
        };
        let a = args("allow");
        let r = podwire_audit::audit(&datastore_input(&a, &spec).expect("input"));
        assert!(r.security_groups_known);
        // 0.0.0.0/0 is one part (no inner boundary but the ENI's addresses,
        // which are the cluster's): TCP 80 open to the world, 22 not.
        let exposed: Vec<(u16, &str)> = r
            .exposed
            .iter()
            .map(|e| (e.port, e.from.as_str()))
            .collect();
        assert!(
            !exposed.is_empty() && exposed.iter().all(|(p, _)| *p == 80),
            "{exposed:?}"
        );
        let r = podwire_audit::audit(&datastore_input(&args("deny"), &spec).expect("input"));
        assert!(r.exposed.is_empty());
        // Half the pair is refused by clap.
        assert!(T::try_parse_from(["t", "--datastore", &spec, "--security-groups", "x"]).is_err());
        assert!(T::try_parse_from(["t", "--datastore", &spec, "--verify"]).is_err());
    }
}
