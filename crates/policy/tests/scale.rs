//! 250 pods on the node (EKS's most), 1000 in the cluster, 200 policies:
//! compile + render must stay fast and the ruleset small. Prints the
//! figures (no assertion on time: the machine is shared); with root, also
//! applies the ruleset and a one-policy change with real nft in a
//! namespace of its own (`pwt-pol-<pid>-scale`, removed by name).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Instant;

use podwire_cluster::records::Labels;
use podwire_cluster::{
    ContainerPort, EndpointRecord, NamespaceRecord, PodRecord, PodRef, Protocol,
};
use podwire_policy::{compile, parse_documents, render_nft, ClusterView, NetworkPolicy};

const LOCAL: usize = 250;
const PODS: usize = 1000;
const POLICIES: usize = 200;
const NAMESPACES: usize = 20;

fn policy_yaml(k: usize, http_alt: u16) -> String {
    let ns = k % NAMESPACES;
    let sel = if k % 10 == 0 {
        "{}".to_string()
    } else {
        format!("{{matchLabels: {{app: app{}}}}}", k % 25)
    };
    let mut y = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: ns{ns}}}\nspec:\n  podSelector: {sel}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{tier: web}}}}\n      namespaceSelector: {{matchLabels: {{team: t{}}}}}\n    ports: [{{port: http}}, {{port: 443}}, {{port: {http_alt}}}]\n  - from: [{{ipBlock: {{cidr: 10.200.0.0/16, except: [10.200.{}.0/24]}}}}]\n    ports: [{{port: 8000, endPort: 8100}}]\n",
        k % 4,
        k % 250
    );
    if k % 2 == 0 {
        y.push_str("  policyTypes: [Ingress, Egress]\n  egress:\n  - to: [{namespaceSelector: {}}]\n    ports: [{port: metrics}, {port: 53, protocol: UDP}]\n  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]\n    ports: [{port: 443}]\n");
    }
    y.push_str("---\n");
    y
}

fn view() -> ClusterView {
    let mut v = ClusterView::default();
    for n in 0..NAMESPACES {
        let labels = Labels::from([("team".to_string(), format!("t{}", n % 4))]);
        v.namespaces
            .push(NamespaceRecord::new(&format!("ns{n}"), labels).expect("namespace"));
    }
    for j in 0..PODS {
        let r = PodRef::new(&format!("ns{}", j % NAMESPACES), &format!("pod{j}")).expect("ref");
        let tier = ["web", "api", "db"][j % 3];
        v.pods.push(PodRecord {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            labels: Labels::from([
                ("app".to_string(), format!("app{}", j % 25)),
                ("tier".to_string(), tier.to_string()),
            ]),
            ports: vec![
                ContainerPort {
                    name: Some("http".into()),
                    port: 8080 + u16::try_from(j % 3).expect("small"),
                    protocol: Protocol::TCP,
                },
                ContainerPort {
                    name: Some("metrics".into()),
                    port: 9090,
                    protocol: Protocol::TCP,
                },
            ],
        });
        let node = if j < LOCAL {
            "node-1".to_string()
        } else {
            format!("node-{}", 2 + j % 3)
        };
        let ip = Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 2, 0, 10)) + u32::try_from(j).expect("small"),
        );
        v.endpoints.push(EndpointRecord {
            node,
            container_id: format!("c{j}"),
            ifname: "eth0".into(),
            ip,
            pod: Some(r),
        });
    }
    let text: String = (0..POLICIES).map(|k| policy_yaml(k, 8443)).collect();
    v.policies = parse_documents(&text).expect("policies");
    v
}

fn nft_in(ns: &str, script: &str) -> std::time::Duration {
    let t = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

#[test]
fn two_hundred_policies_on_a_node_of_250_pods_compile_small_and_fast() {
    let mut v = view();
    assert_eq!(v.policies.len(), POLICIES);
    let t = Instant::now();
    let rules = compile(&v, "node-1");
    let t_compile = t.elapsed();
    let t = Instant::now();
    let nft = render_nft(&rules);
    let script = nft.script(None);
    let t_render = t.elapsed();
    assert_eq!(rules.local.len(), LOCAL);
    let lines = script.lines().count();
    println!(
        "scale: {LOCAL} local pods, {PODS} pods, {POLICIES} policies: compile {t_compile:?}, render+script {t_render:?}; \
         {} ingress chains, {} egress chains, {} address sets, {} pair sets, {lines} lines, {} bytes",
        rules.ingress_chains.len(),
        rules.egress_chains.len(),
        rules.addr_sets.len(),
        rules.pair_sets.len(),
        script.len()
    );
    // Shared chains: far fewer than one per pod and direction.
    assert!(rules.ingress_chains.len() < LOCAL && rules.egress_chains.len() < LOCAL);

    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let ns = format!("pwt-pol-{}-scale", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .expect("ip");
    assert!(ok.success());
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _del = Del(ns.clone());
    let base = podwire_dataplane::nft::NodeRules {
        pod_iface_prefix: "pw".into(),
        tunnel: None,
        guard: Default::default(),
        snat: None,
        external_pod_access: podwire_dataplane::nft::ExternalPodAccess::Deny,
        policy: None,
    }
    .script()
    .expect("base");
    nft_in(&ns, &base);
    let t_first = nft_in(&ns, &script);
    // A change of one policy: recompile, render, apply the whole policy
    // part in one transaction.
    let changed: NetworkPolicy = parse_documents(&policy_yaml(3, 9443))
        .expect("policy")
        .remove(0);
    let i = v.policies.iter().position(|p| p.name == "p3").expect("p3");
    v.policies[i] = changed;
    let t = Instant::now();
    let next = render_nft(&compile(&v, "node-1"));
    let script2 = next.script(Some(&nft));
    let t_build = t.elapsed();
    let t_apply = nft_in(&ns, &script2);
    assert!(script2.contains("9443"));
    let written = script2
        .lines()
        .filter(|l| {
            l.starts_with("add chain ip podwire np-c") || l.starts_with("add set ip podwire np-s")
        })
        .count();
    println!(
        "scale: the change writes {written} of {} helper objects, {} lines, {} bytes",
        next.objects.len(),
        script2.lines().count(),
        script2.len()
    );
    assert!(
        written < next.objects.len() / 4,
        "an update rewrites only what changed"
    );
    // Applying the same thing again writes no helper object at all.
    let again = next.script(Some(&next));
    assert!(
        !again.contains("add chain ip podwire np-c") && !again.contains("add set ip podwire np-s")
    );
    nft_in(&ns, &again);
    println!(
        "scale: first apply {t_first:?}; a one-policy change: compile+render {t_build:?} + nft apply {t_apply:?} = {:?}",
        t_build + t_apply
    );
}

/// A new pod on the node that other pods' peers select (an ADD) changes
/// the elements of the address sets that hold it, never which chains
/// exist: before, sets were named by their elements, so every such ADD
/// renamed them and rewrote every chain that refers to them (half the
/// ruleset; bench/netpol.sh measured ADD at 2.2 × its time without
/// policies).
#[test]
fn a_new_pod_that_peers_select_rewrites_no_chain() {
    let mut v = view();
    let before = render_nft(&compile(&v, "node-1"));
    // A replica of pod0 (same namespace and labels), on node-1.
    let mut rec = v.pods[0].clone();
    rec.name = "pod-new".into();
    let r = PodRef::new(&rec.namespace, &rec.name).expect("ref");
    v.pods.push(rec);
    v.endpoints.push(EndpointRecord {
        node: "node-1".into(),
        container_id: "c-new".into(),
        ifname: "eth0".into(),
        ip: Ipv4Addr::new(10, 3, 0, 1),
        pod: Some(r),
    });
    let after = render_nft(&compile(&v, "node-1"));
    let chains = |p: &podwire_policy::NftPolicy| -> Vec<String> {
        p.objects
            .iter()
            .filter(|o| matches!(o, podwire_policy::NftObject::Chain { .. }))
            .map(|o| o.name().to_string())
            .collect()
    };
    assert_eq!(chains(&after), chains(&before), "the ADD rewrote chains");
    // ... while the new address is in the sets that select it, and the
    // change carries it.
    let script = after.script(Some(&before));
    assert!(script.contains("10.3.0.1"), "{script}");
    assert!(!script.contains("add chain ip podwire np-c"), "{script}");
}
