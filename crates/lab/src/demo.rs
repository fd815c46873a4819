//! `podwirectl lab demo`: the article's vpc-mode experiment, narrated —
//! SEED-NOTES §2 (addresses, routes, veths, traces) and both warnings of §4,
//! reproduced in a lab of its own and removed afterwards.

use std::process::Command;

use crate::ops::{self, UpOptions};
use crate::probe;
use crate::state::LabState;
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

pub fn run(name: &str, keep: bool) -> Result<(), LabError> {
    if names::lab_dir(name).join("lab.json").exists() {
        ops::down(name)?;
    }
    let result = narrate(name);
    if !keep {
        section("Clean-up");
        ops::down(name)?;
        println!("lab {name} removed: no namespace, process or file of it is left.");
    } else {
        println!("\nThe lab is still up: try `podwirectl lab status --name {name}`, `ip netns list`, and `podwirectl lab down --name {name}` when done.");
    }
    result
}

fn narrate(lab: &str) -> Result<(), LabError> {
    section("1. An emulated VPC on this machine");
    println!("Subnet 10.0.0.0/20, two m5.large nodes running podwire-agent (vpc mode), one EC2 instance outside the cluster.");
    println!(
        "The VPC fabric, its EC2 API and instance metadata service run in network namespace {}.",
        names::ns_fabric(lab)
    );
    let st = ops::up(&UpOptions {
        name: lab.into(),
        mode: "vpc".into(),
        nodes: 2,
        instance_type: "m5.large".into(),
        subnets: vec!["10.0.0.0/20"
            .parse()
            .map_err(|e| LabError::Usage(format!("{e}")))?],
        allow_external: false,
        warm_ip_target: None,
        minimum_ip_target: None,
        pod_cidr: "172.16.0.0/16"
            .parse()
            .map_err(|e| LabError::Usage(format!("{e}")))?,
        block_size: 26,
        datastore: "sqlite".into(),
    })?;
    for n in st.nodes.iter().chain(st.external.iter()) {
        println!("  {:9} {:15} {}", n.name, n.primary_ip, n.instance_id);
    }

    section("2. Three pods, as in the article: two on node-1, one on node-2");
    let pods = [
        ("web-1", "node-1"),
        ("web-2", "node-1"),
        ("web-3", "node-2"),
    ];
    for (p, n) in pods {
        let rec = ops::pod_add(lab, p, n, "default", true)?;
        println!("  pod {p} on {n}: {}", rec.ip);
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
    probe::print_trace(&probe::trace(&st, "web-1", "web-3")?);
    println!("Same node: the node, then the pod. Other node: own node, the other node's primary IP, the pod.");
    println!("The VPC itself is never a hop: pod traffic is ordinary VPC traffic.");

    section("5. Warning 2: pods are reachable wherever nodes are");
    println!("From the external host (not in the cluster), with the default node security group:");
    match probe::curl(&st, "external", "web-1") {
        Ok(_) => println!("  curl web-1: answered (unexpected!)"),
        Err(e) => println!("  curl web-1: {e}"),
    }
    println!("An operator now lets the external host reach the nodes (AuthorizeSecurityGroupIngress on the node group)...");
    ops::set_allow_external(lab, true)?;
    match probe::curl(&st, "external", "web-1") {
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

    section("6. Warning 1: pods fail for lack of IPs, not of CPU or memory");
    println!("An m5.large takes 3 ENIs x 10 IPv4 addresses; the ENIs' primaries are not for pods: 3 x 9 = 27 pod IPs.");
    let mut n = 1; // web-3 is already on node-2
    let mut i = 0;
    loop {
        i += 1;
        let pod = format!("fill-{i}");
        match ops::pod_add(lab, &pod, "node-2", "default", false) {
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
    let rec = ops::pod_add(lab, "after-delete", "node-2", "default", false)?;
    println!(
        "  after deleting one pod its address is reused: after-delete got {}",
        rec.ip
    );
    Ok(())
}
