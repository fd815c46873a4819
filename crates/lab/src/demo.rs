//! `podwirectl lab demo`: the article's two experiments, narrated, side by
//! side — vpc mode (SEED-NOTES §2 and both warnings of §4), then overlay
//! mode (§3) — each in a lab of its own, removed afterwards, and a
//! comparison of what was observed.

use std::process::Command;

use crate::ops::{self, UpOptions};
use crate::probe;
use crate::state::{ExternalPodAccess, LabState, Mode};
use crate::{names, LabError};

fn section(title: &str) {
    println!("\n=== {title} ===");
}

fn shell(args: &[&str]) {
    println!("$ {}", args.join(" "));
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Err(e) => println!("({e})"),
    }
}

/// Two m5.large nodes in 10.0.0.0/20 (and, in overlay mode, 172.16.0.0/16
/// in /26 blocks on the shared SQLite datastore), as in the article.
fn demo_options(
    lab: &str,
    mode: Mode,
    allow_external: bool,
    external_pod_access: ExternalPodAccess,
) -> Result<UpOptions, LabError> {
    let parse = |s: &str| s.parse().map_err(|e| LabError::Usage(format!("{e}")));
    Ok(UpOptions {
        name: lab.into(),
        mode,
        nodes: 2,
        instance_type: "m5.large".into(),
        subnets: vec![parse("10.0.0.0/20")?],
        allow_external,
        warm_ip_target: None,
        minimum_ip_target: None,
        pod_imds_access: false,
        pod_cidr: parse("172.16.0.0/16")?,
        block_size: 26,
        datastore: "sqlite".into(),
        cloud_faults: Default::default(),
        prefix_delegation: false,
        eni_gc_grace_secs: None,
        reconcile_interval_secs: None,
        external_pod_access,
    })
}

/// What each experiment observed, for the comparison at the end.
#[derive(Debug, Default)]
struct Observed {
    pod_ip: String,
    pod_mtu: String,
    remote_trace: String,
    external_to_pod: String,
}

pub fn run(name: &str, keep: bool) -> Result<(), LabError> {
    let vpc_lab = format!("{name}-vpc");
    let ovl_lab = format!("{name}-ovl");
    for l in [&vpc_lab, &ovl_lab] {
        names::check_lab_name(l)?;
        if names::lab_dir(l).join("lab.json").exists() {
            ops::down(l)?;
        }
    }
    let vpc = narrate(&vpc_lab);
    let ovl = match &vpc {
        Ok(_) => narrate_overlay(&ovl_lab),
        Err(_) => Err(LabError::Usage(
            "skipped after the vpc experiment failed".into(),
        )),
    };
    if let (Ok(v), Ok(o)) = (&vpc, &ovl) {
        compare(v, o);
    }
    for l in [&vpc_lab, &ovl_lab] {
        if !keep && names::lab_dir(l).join("lab.json").exists() {
            ops::down(l)?;
        }
    }
    if keep {
        println!("\nThe labs are still up: `podwirectl lab status --name {vpc_lab}` / `--name {ovl_lab}`; `podwirectl lab down --name …` when done.");
    } else {
        section("Clean-up");
        println!(
            "labs {vpc_lab} and {ovl_lab} removed: no namespace, process or file of them is left."
        );
    }
    vpc.and(ovl).map(|_| ())
}

fn compare(v: &Observed, o: &Observed) {
    section("Side by side");
    let rows = [
        ("pod address", &v.pod_ip, &o.pod_ip),
        ("pod MTU", &v.pod_mtu, &o.pod_mtu),
        (
            "trace to a pod on the other node",
            &v.remote_trace,
            &o.remote_trace,
        ),
        (
            "external host -> pod (node SG open)",
            &v.external_to_pod,
            &o.external_to_pod,
        ),
    ];
    println!("{:<38} {:<44} overlay mode", "", "vpc mode");
    for (what, a, b) in rows {
        println!("{what:<38} {a:<44} {b}");
    }
    println!(
        "{:<38} {:<44} /26 blocks of the pod CIDR (pool limit)",
        "where addresses come from", "ENI secondary IPs (instance-type limit)"
    );
    println!(
        "\nvpc mode makes pods first-class VPC citizens (fast, simple, but IP-hungry and exposed"
    );
    println!(
        "wherever nodes are); overlay mode keeps the pod network private and cheap in VPC IPs,"
    );
    println!(
        "at the cost of encapsulation (50 bytes of every packet) and SNAT for the outside world."
    );
}

fn mtu_of(netns: &str) -> String {
    Command::new("ip")
        .args(["-n", netns, "-o", "link", "show", "eth0"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .skip_while(|w| *w != "mtu")
                .nth(1)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn hops(t: &probe::Trace) -> String {
    t.hops
        .iter()
        .map(|h| h.ip.map(|ip| ip.to_string()).unwrap_or_else(|| "*".into()))
        .collect::<Vec<_>>()
        .join(" > ")
}

fn narrate_overlay(lab: &str) -> Result<Observed, LabError> {
    section("7. The same cluster in overlay mode (the Calico VXLAN model)");
    println!("Pods get addresses from 172.16.0.0/16, cut in /26 blocks that nodes claim; nodes talk VXLAN.");
    ops::up(&demo_options(
        lab,
        Mode::Overlay,
        true,
        ExternalPodAccess::Allow,
    )?)?;
    let mut first = String::new();
    for (p, n) in [
        ("web-1", "node-1"),
        ("web-2", "node-1"),
        ("web-3", "node-2"),
    ] {
        let rec = ops::pod_add(lab, &ops::PodSpec::simple(p, n, true))?;
        println!("  pod {p} on {n}: {}", rec.ip);
        if first.is_empty() {
            first = rec.ip.to_string();
        }
    }
    section("8. What node-1 looks like (SEED-NOTES §3)");
    let ns1 = names::ns_node(lab, 1);
    shell(&["ip", "-n", &ns1, "-br", "addr"]);
    shell(&["ip", "-n", &ns1, "route"]);
    println!("vxlan.podwire has MTU 8951 (9001 - 50) and the node's tunnel address; the node's own /26 is a");
    println!("blackhole, the other node's block goes via its tunnel address, onlink.");
    section("9. Traceroute from web-1");
    let st = LabState::load(lab)?;
    probe::print_trace(&probe::trace(&st, "web-1", "web-2")?);
    let remote = probe::trace(&st, "web-1", "web-3")?;
    probe::print_trace(&remote);
    println!("The middle hop is the other node's tunnel address, not its VPC address.");
    section("10. The external host, with the node security group open");
    let node = probe::trace(&st, "external", "node-1")?;
    println!(
        "  external -> node-1: {}",
        if node.reached { "answers" } else { "no answer" }
    );
    let pod = match probe::curl(&st, "external", "web-1") {
        Ok(_) => "answered (unexpected!)".to_string(),
        Err(e) => format!("no answer ({e})"),
    };
    println!("  external -> web-1: {pod}");
    println!("The VPC has no route to 172.16.0.0/16: pods are reachable only through the nodes.");
    Ok(Observed {
        pod_ip: format!("{first} (pod CIDR)"),
        pod_mtu: mtu_of(&names::ns_pod(lab, names::DEFAULT_NAMESPACE, "web-1")),
        remote_trace: hops(&remote),
        external_to_pod: "no answer".into(),
    })
}

fn narrate(lab: &str) -> Result<Observed, LabError> {
    section("1. An emulated VPC on this machine");
    println!("Subnet 10.0.0.0/20, two m5.large nodes running podwire-agent (vpc mode), one EC2 instance outside the cluster.");
    println!(
        "The VPC fabric, its EC2 API and instance metadata service run in network namespace {}.",
        names::ns_fabric(lab)
    );
    // The article's exposure is the Amazon VPC CNI's behaviour; podwire's
    // agents close it by default, so this part opens their posture first.
    println!("To reproduce the article, this lab's agents run with --external-pod-access allow (the VPC CNI's");
    println!("behaviour); podwire's default, deny, is shown closing the exposure in step 5.");
    let st = ops::up(&demo_options(
        lab,
        Mode::Vpc,
        false,
        ExternalPodAccess::Allow,
    )?)?;
    for n in st.nodes.iter().chain(st.external.iter()) {
        println!("  {:9} {:15} {}", n.name, n.primary_ip, n.instance_id);
    }

    section("2. Three pods, as in the article: two on node-1, one on node-2");
    let pods = [
        ("web-1", "node-1"),
        ("web-2", "node-1"),
        ("web-3", "node-2"),
    ];
    let mut first = String::new();
    for (p, n) in pods {
        let rec = ops::pod_add(lab, &ops::PodSpec::simple(p, n, true))?;
        println!("  pod {p} on {n}: {}", rec.ip);
        if first.is_empty() {
            first = rec.ip.to_string();
        }
    }
    println!("Pod addresses come from the node subnet: they are secondary IPs of the nodes' ENIs.");
    print!("{}", ops::format_status(&ops::status_json(lab)?));
    println!("(From the lab cloud's DescribeNetworkInterfaces; `podwirectl lab ec2 --name {lab} DescribeNetworkInterfaces` shows the XML.)");

    section("3. What node-1 looks like (SEED-NOTES §2)");
    let ns1 = names::ns_node(lab, 1);
    shell(&["ip", "-n", &ns1, "-br", "addr"]);
    shell(&["ip", "-n", &ns1, "route"]);
    println!("One eni<hash> veth per pod (MTU 9001, no IPv4 on it) and a /32 route per local pod.");

    section("4. Traceroute from web-1");
    let st = LabState::load(lab)?;
    probe::print_trace(&probe::trace(&st, "web-1", "web-2")?);
    let remote = probe::trace(&st, "web-1", "web-3")?;
    probe::print_trace(&remote);
    println!("Same node: the node, then the pod. Other node: own node, the other node's primary IP, the pod.");
    println!("The VPC itself is never a hop: pod traffic is ordinary VPC traffic.");

    section("5. Warning 2: pods are reachable wherever nodes are");
    println!("From the external host (not in the cluster), with the default node security group:");
    match probe::curl(&st, "external", "web-1") {
        Ok(_) => println!("  curl web-1: answered (unexpected!)"),
        Err(e) => println!("  curl web-1: {e}"),
    }
    println!("An operator now lets the external host reach the nodes (AuthorizeSecurityGroupIngress on the node group);");
    println!("the agents run with --external-pod-access allow, as the VPC CNI behaves...");
    ops::set_allow_external(lab, true)?;
    let exposed = probe::curl(&st, "external", "web-1");
    match &exposed {
        Ok(page) => println!(
            "  curl web-1 answers:\n{}",
            page.lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Err(e) => println!("  curl web-1: {e}"),
    }
    probe::print_trace(&probe::trace(&st, "external", "web-1")?);
    println!("Opening the node to a host opened every pod behind its ENIs too: the pods share the node's network.");
    println!("Now podwire's default posture: `podwirectl lab external-pod-access deny` (agents restarted with it)...");
    ops::set_external_pod_access(lab, ExternalPodAccess::Deny)?;
    let st = LabState::load(lab)?;
    let after = probe::curl(&st, "external", "web-1");
    match &after {
        Ok(_) => println!("  curl web-1: answered (the posture did not close it!)"),
        Err(e) => println!("  curl web-1: {e}"),
    }
    let node = probe::trace(&st, "external", "node-1")?;
    println!(
        "  external -> node-1: {}",
        if node.reached { "answers" } else { "no answer" }
    );
    println!("The node security group still admits the external host to the node; the node drops what it sends");
    println!("to pods, while node -> pod, pod -> pod and the pods' own connections keep working.");
    let closed = after.is_err();

    section("6. Warning 1: pods fail for lack of IPs, not of CPU or memory");
    println!("An m5.large takes 3 ENIs x 10 IPv4 addresses; the ENIs' primaries are not for pods: 3 x 9 = 27 pod IPs.");
    let mut n = 1; // web-3 is already on node-2
    let mut i = 0;
    loop {
        i += 1;
        let pod = format!("fill-{i}");
        match ops::pod_add(lab, &ops::PodSpec::simple(&pod, "node-2", false)) {
            Ok(_) => n += 1,
            Err(e) => {
                println!(
                    "  {n} pods run on node-2; pod number {} fails:\n  {e}",
                    n + 1
                );
                break;
            }
        }
        if i > 40 {
            return Err(LabError::State(
                "node-2 took more pods than its instance type allows".into(),
            ));
        }
    }
    ops::pod_del(lab, "fill-1")?;
    let rec = ops::pod_add(lab, &ops::PodSpec::simple("after-delete", "node-2", false))?;
    println!(
        "  after deleting one pod its address is reused: after-delete got {}",
        rec.ip
    );
    Ok(Observed {
        pod_ip: format!("{first} (node subnet)"),
        pod_mtu: mtu_of(&names::ns_pod(lab, names::DEFAULT_NAMESPACE, "web-1")),
        remote_trace: hops(&remote),
        external_to_pod: match (exposed.is_ok(), closed) {
            (true, true) => "exposed with allow, closed by deny".into(),
            (true, false) => "answers: the pod is exposed".into(),
            (false, _) => "no answer".into(),
        },
    })
}
