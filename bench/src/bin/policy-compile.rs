//! Where a node's policy apply spends its time, from a real datastore:
//! reads the namespaces, pods, endpoints and policies the agents follow,
//! then times, `--reps` times each, what the agent does per change —
//! `compile` (podwire-policy), `render_nft`, and the size of the result —
//! and prints the median of each step.
//!
//!   target/release/policy-compile --datastore sqlite:/run/podwire/lab/LAB/datastore.db --node node-1

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use podwire_cluster::records::decode;
use podwire_cluster::{keys, EndpointRecord, NamespaceRecord, PodRecord};
use podwire_policy::{ClusterView, NetworkPolicy, NftObject};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    datastore: String,
    #[arg(long, default_value = "node-1")]
    node: String,
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Also show what one more endpoint on the node (an ADD) changes: the
    /// new pod claims to be this pod (`ns/name`) at 10.255.255.1.
    #[arg(long)]
    add_as: Option<String>,
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let store = podwire_store::open(&a.datastore).context("opening the datastore")?;
    let list = |p: &str| store.list(p).map(|s| s.entries);
    let mut view = ClusterView::default();
    for e in list(keys::NAMESPACES)? {
        view.namespaces.push(decode::<NamespaceRecord>(
            &e.value,
            NamespaceRecord::validate,
        )?);
    }
    for e in list(keys::PODS)? {
        view.pods
            .push(decode::<PodRecord>(&e.value, PodRecord::validate)?);
    }
    for e in list(keys::ENDPOINTS)? {
        view.endpoints.push(decode::<EndpointRecord>(
            &e.value,
            EndpointRecord::validate,
        )?);
    }
    for e in list(keys::POLICIES)? {
        view.policies.push(NetworkPolicy::from_record(&e.value)?);
    }
    println!(
        "view: {} namespaces, {} pods, {} endpoints, {} policies",
        view.namespaces.len(),
        view.pods.len(),
        view.endpoints.len(),
        view.policies.len()
    );
    let (mut tc, mut tr) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..a.reps.max(1) {
        let t = Instant::now();
        let rules = podwire_policy::compile(&view, &a.node);
        tc.push(t.elapsed());
        let t = Instant::now();
        let nft = podwire_policy::render_nft(&rules);
        tr.push(t.elapsed());
        last = Some((rules, nft));
    }
    let Some((rules, nft)) = last else {
        return Ok(());
    };
    let chains = nft
        .objects
        .iter()
        .filter(|o| matches!(o, NftObject::Chain { .. }))
        .count();
    let chain_rules: usize = nft
        .objects
        .iter()
        .map(|o| match o {
            NftObject::Chain { rules, .. } => rules.len(),
            NftObject::Set { .. } => 0,
        })
        .sum();
    let elements: usize = nft
        .objects
        .iter()
        .map(|o| match o {
            NftObject::Set { elements, .. } => elements.len(),
            NftObject::Chain { .. } => 0,
        })
        .sum();
    let script = nft.script(None);
    println!(
        "node {}: {} local, {} ingress / {} egress isolated, {} chains ({} rules), {} sets ({} elements), full script {} bytes",
        a.node,
        rules.local.len(),
        rules.ingress.len(),
        rules.egress.len(),
        chains,
        chain_rules,
        nft.objects.len() - chains,
        elements,
        script.len()
    );
    println!(
        "compile p50 {:.2} ms, render_nft p50 {:.2} ms ({} reps)",
        median(tc),
        median(tr),
        a.reps
    );
    if let Some(pod) = &a.add_as {
        let r = podwire_cluster::PodRef::parse(pod)?;
        view.endpoints.push(EndpointRecord {
            node: a.node.clone(),
            container_id: "policy-compile-add".into(),
            ifname: "eth0".into(),
            ip: std::net::Ipv4Addr::new(10, 255, 255, 1),
            pod: Some(r),
        });
        let next = podwire_policy::render_nft(&podwire_policy::compile(&view, &a.node));
        let delta = next.script(Some(&nft));
        let new_objects = next
            .objects
            .iter()
            .filter(|o| !nft.objects.iter().any(|p| p.name() == o.name()))
            .count();
        println!(
            "one ADD as {pod}: {new_objects} new helper objects, script {} lines / {} bytes",
            delta.lines().count(),
            delta.len()
        );
        if std::env::var_os("POLICY_COMPILE_SCRIPT").is_some() {
            print!("{delta}");
        }
    } else if std::env::var_os("POLICY_COMPILE_SCRIPT").is_some() {
        print!("{script}");
    }
    Ok(())
}
