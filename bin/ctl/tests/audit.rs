//! Issue 10 §3 end to end: `podwirectl audit --verify` finds zero
//! mismatches between what the audit predicts and what probes see, in a
//! lab of 3 nodes and 21 pods (3 namespaces, several labels, named ports),
//! 3 policies (ingress and egress, ipBlock with except, named ports and a
//! port range) and the node security group opened to the external host on
//! TCP 80 (its group) and 8080 (its address) only — in vpc mode under both
//! postures, in overlay mode. And the verifier does fail: an audit told the
//! wrong posture reports the external host's connections as mismatches.
//!
//! Every probe goes to an address of a namespace the lab created.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const NAMESPACES: [(&str, &str); 3] = [
    ("web", "team=web,env=prod"),
    ("db", "team=db,env=prod"),
    ("ops", "env=dev"),
];
/// Agents apply a change within a second; a verify run takes a few more.
const CONVERGE: Duration = Duration::from_secs(90);

/// 7 pods per namespace over 3 nodes: app web (80), api (80, 8080) or
/// cache (80, 6379); in db every pod also serves sql (5432).
fn build(lab: &Lab) {
    for (ns, labels) in NAMESPACES {
        lab.ctl_ok(&["lab", "namespace", "add", ns, "--labels", labels]);
    }
    let apps = ["web", "api", "cache"];
    for (i, (ns, _)) in NAMESPACES.iter().enumerate() {
        for j in 0..7 {
            let app = apps[j % 3];
            let tier = if j < 4 { "front" } else { "back" };
            let node = format!("node-{}", (i + j) % 3 + 1);
            let key = format!("{ns}/p{j}");
            let mut args = vec![
                "lab".to_string(),
                "pod".into(),
                "add".into(),
                key,
                "--node".into(),
                node,
                "--labels".into(),
                format!("app={app},tier={tier}"),
                "--port".into(),
                "serve=80/tcp".into(),
            ];
            match app {
                "api" => args.extend(["--port".into(), "api=8080/tcp".into()]),
                "cache" => args.extend(["--port".into(), "cache=6379/tcp".into()]),
                _ => {}
            }
            if *ns == "db" {
                args.extend(["--port".into(), "sql=5432/tcp".into()]);
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            lab.ctl_ok(&a);
        }
    }
}

/// The three policies; `ext` is the external host's address.
fn policies(ext: &str) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{namespace: db, name: sql-from-web-api}}
spec:
  podSelector: {{}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {{matchLabels: {{team: web}}}}
      podSelector: {{matchLabels: {{app: api}}}}
    ports:
    - port: sql
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{namespace: web, name: front-web}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from:
    - ipBlock: {{cidr: {ext}/32}}
    ports:
    - port: serve
  - from:
    - namespaceSelector:
        matchExpressions: [{{key: env, operator: In, values: [prod]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{namespace: ops, name: back-egress}}
spec:
  podSelector: {{matchLabels: {{tier: back}}}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {{}}
      podSelector: {{matchLabels: {{app: api}}}}
    ports:
    - port: 8000
      endPort: 8100
  - to:
    - ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12]}}
"#
    )
}

/// The node group admits the external host on TCP 80 (by its group) and
/// TCP 8080 (by its address), nothing else.
fn open_node_group_on_some_ports(lab: &Lab, ext: &str) {
    let st = lab.status();
    let node_sg = st["node_security_group"].as_str().expect("node sg");
    let ext_sg = st["external_security_group"].as_str().expect("ext sg");
    let g = format!("GroupId={node_sg}");
    let src_group = format!("IpPermissions.1.Groups.1.GroupId={ext_sg}");
    lab.ctl_ok(&[
        "lab",
        "ec2",
        "AuthorizeSecurityGroupIngress",
        &g,
        "IpPermissions.1.IpProtocol=tcp",
        "IpPermissions.1.FromPort=80",
        "IpPermissions.1.ToPort=80",
        &src_group,
    ]);
    let src_cidr = format!("IpPermissions.1.IpRanges.1.CidrIp={ext}/32");
    lab.ctl_ok(&[
        "lab",
        "ec2",
        "AuthorizeSecurityGroupIngress",
        &g,
        "IpPermissions.1.IpProtocol=tcp",
        "IpPermissions.1.FromPort=8080",
        "IpPermissions.1.ToPort=8080",
        &src_cidr,
    ]);
}

fn setup(lab: &Lab) -> String {
    let ext = lab.status()["external"]["ip"]
        .as_str()
        .expect("external ip")
        .to_string();
    build(lab);
    open_node_group_on_some_ports(lab, &ext);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, policies(&ext)).expect("write policies");
    ctl_ok(&[
        "policy",
        "apply",
        "-f",
        file.to_str().expect("utf-8"),
        "--lab",
        &lab.name,
    ]);
    ext
}

/// `audit --verify --json`: (exit success, the JSON).
fn verify(lab: &Lab, extra: &[&str]) -> (bool, Value) {
    let mut a = vec!["audit", "--lab", lab.name.as_str(), "--json", "--verify"];
    a.extend_from_slice(extra);
    let o = ctl(&a);
    let v: Value = serde_json::from_str(&text(&o)).unwrap_or_else(|e| {
        panic!(
            "audit --json: {e}\nstdout: {}\nstderr: {}",
            text(&o),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.success(), v)
}

/// Polls `audit --verify` until it finds no mismatch (the agents converge
/// within a second of a change), or fails with the last mismatches.
fn verified(lab: &Lab, what: &str) -> Value {
    let started = Instant::now();
    loop {
        let (ok, v) = verify(lab, &[]);
        let m = v["verify"]["mismatches"]
            .as_array()
            .expect("mismatches")
            .len();
        if ok {
            assert_eq!(m, 0);
            return v;
        }
        assert!(
            started.elapsed() < CONVERGE,
            "{what}: {m} mismatches:\n{}",
            serde_json::to_string_pretty(&v["verify"]["mismatches"]).unwrap_or_default()
        );
    }
}

/// The claim from `from` to `to`:`port`.
fn claim<'a>(v: &'a Value, from: &str, to: &str, port: u64) -> &'a Value {
    v["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["pod"] == to)
        .and_then(|p| p["ports"].as_array()?.iter().find(|x| x["port"] == port))
        .and_then(|p| {
            p["claims"]
                .as_array()?
                .iter()
                .find(|c| c["from"]["name"] == from)
        })
        .unwrap_or_else(|| panic!("no claim {from} -> {to}:{port}"))
}

fn reachable(v: &Value, from: &str, to: &str, port: u64) -> bool {
    claim(v, from, to, port)["reachable"]
        .as_bool()
        .expect("bool")
}

/// The shape every run must have: 21 pods, every claim probed, the
/// policies' effects visible in the claims.
fn check_common(v: &Value) {
    assert_eq!(v["pods"].as_array().expect("pods").len(), 21);
    let claims = v["claims"].as_u64().expect("claims");
    assert_eq!(v["verify"]["claims"].as_u64(), Some(claims));
    assert_eq!(
        v["verify"]["probed"].as_u64(),
        Some(claims),
        "every claim probed"
    );
    // db isolated: only web's api pods reach sql; nobody else, on any port.
    assert!(reachable(v, "web/p1", "db/p0", 5432));
    assert!(!reachable(v, "web/p0", "db/p0", 5432));
    assert!(!reachable(v, "web/p1", "db/p0", 80));
    // web's app=web pods: prod namespaces yes, ops (dev) no.
    assert!(reachable(v, "db/p2", "web/p0", 80));
    assert!(!reachable(v, "ops/p2", "web/p0", 80));
    // ops' back tier may only open connections to api pods on 8000-8100.
    assert!(reachable(v, "ops/p4", "web/p1", 8080));
    assert!(!reachable(v, "ops/p4", "web/p1", 80));
    assert!(reachable(v, "ops/p0", "web/p1", 80));
    let why = claim(v, "ops/p0", "web/p0", 80)["reasons"].to_string();
    assert!(why.contains("isolated by web/front-web"), "{why}");
}

#[test]
fn vpc_audit_is_verified_under_both_postures_and_a_wrong_one_is_caught() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-audit-vpc", &["--nodes", "3"]);
    setup(&lab);

    // Default posture: nothing from outside reaches a pod.
    let v = verified(&lab, "vpc, deny");
    check_common(&v);
    assert_eq!(v["exposed"].as_array().expect("exposed").len(), 0);
    let why = claim(&v, "external", "ops/p0", 80)["reasons"].to_string();
    assert!(why.contains("--external-pod-access deny"), "{why}");

    // allow: the group decides by port, then the policies.
    lab.ctl_ok(&["lab", "external-pod-access", "allow"]);
    let v = verified(&lab, "vpc, allow");
    check_common(&v);
    // Unisolated ops pods: 80 (the external group's rule) yes, 6379 no.
    assert!(reachable(&v, "external", "ops/p0", 80));
    assert!(!reachable(&v, "external", "ops/p2", 6379));
    let why = claim(&v, "external", "ops/p2", 6379)["reasons"].to_string();
    assert!(why.contains("security groups: no rule"), "{why}");
    // api pods' 8080 by the address rule; web's web pods by the ipBlock.
    assert!(reachable(&v, "external", "ops/p1", 8080));
    assert!(reachable(&v, "external", "web/p0", 80));
    // db: the group admits 80, the policy does not.
    assert!(!reachable(&v, "external", "db/p0", 80));
    let exposed = v["exposed"].as_array().expect("exposed");
    assert!(exposed
        .iter()
        .any(|e| e["pod"] == "web/p0" && e["port"] == 80));
    assert!(exposed.iter().all(|e| e["from"] == "external"));

    // The verifier fails when the prediction is wrong: told deny while the
    // agents allow, it predicts no outside access and the probes connect.
    let (ok, v) = verify(&lab, &["--external-pod-access", "deny"]);
    assert!(!ok, "a wrong prediction must make --verify fail");
    let m = v["verify"]["mismatches"].as_array().expect("mismatches");
    assert!(!m.is_empty());
    assert!(
        m.iter().all(|x| x["from"]["name"] == "external"
            && x["expected"] == false
            && x["observed"] == "connected"),
        "{m:?}"
    );
    assert!(m.iter().any(|x| x["to"] == "ops/p0" && x["port"] == 80));
}

#[test]
fn overlay_audit_is_verified_and_outside_hosts_never_reach_pods() {
    if !require_root() {
        return;
    }
    let lab = Lab::up(
        "t-audit-ovl",
        &[
            "--mode",
            "overlay",
            "--nodes",
            "3",
            "--external-pod-access",
            "allow",
        ],
    );
    setup(&lab);
    let v = verified(&lab, "overlay, allow");
    check_common(&v);
    assert_eq!(v["exposed"].as_array().expect("exposed").len(), 0);
    let why = claim(&v, "external", "ops/p0", 80)["reasons"].to_string();
    assert!(why.contains("has no route"), "{why}");
    // Pods of other nodes go through the tunnel (web/p1 is on node-2,
    // db/p2 on node-1).
    let why = claim(&v, "web/p1", "db/p2", 5432)["reasons"].to_string();
    assert!(why.contains("VXLAN"), "{why}");
}
