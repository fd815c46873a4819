//! `podwirectl policy apply|delete|list`: NetworkPolicies in the datastore
//! (`/podwire/policies/<ns>/<name>`), where every agent reads them from.
//! Applying is all or nothing: the whole input is parsed and validated
//! first (an error names the field, and nothing is written), then every
//! policy is written in one datastore transaction.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use podwire_cluster::{keys, names as k8s};
use podwire_lab::names;
use podwire_lab::state::LabState;
use podwire_policy::NetworkPolicy;
use podwire_store::{Datastore, EtcdTls, Expect, StoreError, Write, MAX_COMMIT_WRITES};
use serde_json::json;

/// Where the cluster's records live: a lab's datastore, or any podwire
/// datastore (`policy`, `audit`).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The lab whose datastore to use [default: lab, unless --datastore]
    /// (`--name`, as the `lab` commands spell it, works too).
    #[arg(long, visible_alias = "name", conflicts_with = "datastore")]
    lab: Option<String>,
    /// A datastore, as the agents' --datastore: `sqlite:/path/file.db`,
    /// `etcd://host:port`, `etcd+https://host:port`.
    #[arg(long)]
    datastore: Option<String>,
    /// etcd over TLS: the CA that signed the servers' certificates.
    #[arg(long, requires = "datastore")]
    etcd_ca_cert_file: Option<PathBuf>,
    /// etcd over TLS: this client's certificate (with --etcd-key-file).
    #[arg(long, requires = "etcd_key_file")]
    etcd_cert_file: Option<PathBuf>,
    #[arg(long, requires = "etcd_cert_file")]
    etcd_key_file: Option<PathBuf>,
}

impl StoreArgs {
    /// `--datastore`, when given (else the lab's).
    pub fn datastore(&self) -> Option<&str> {
        self.datastore.as_deref()
    }

    /// The lab named (or the default one).
    pub fn lab(&self) -> &str {
        self.lab.as_deref().unwrap_or(names::DEFAULT_LAB)
    }

    /// The `--datastore` given, with its etcd TLS files.
    pub fn open_datastore(&self, spec: &str) -> anyhow::Result<Arc<dyn Datastore>> {
        let tls = EtcdTls {
            ca_cert: self.etcd_ca_cert_file.clone(),
            cert: self.etcd_cert_file.clone(),
            key: self.etcd_key_file.clone(),
        };
        let store = podwire_store::open_with(spec, &tls)
            .with_context(|| format!("opening the datastore {spec}"))?;
        Ok(Arc::from(store))
    }

    fn open(&self) -> anyhow::Result<Arc<dyn Datastore>> {
        if let Some(spec) = self.datastore() {
            return self.open_datastore(spec);
        }
        let st = LabState::load(self.lab())?;
        Ok(podwire_lab::datastore::lab_store(&st)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Create or replace the NetworkPolicies of FILE (YAML or JSON: one
    /// object, a List, or several YAML documents; `-` reads stdin). Several
    /// -f apply together: all of them or nothing.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        file: Vec<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete policies: NAMESPACE/NAME (NAME alone: namespace default).
    Delete {
        #[arg(required = true)]
        policies: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The policies in the datastore.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Apply { file, store } => {
            // Every file parsed and validated before the datastore is opened.
            let mut policies = Vec::new();
            for f in &file {
                let text = read_input(f)?;
                policies.extend(parse(&text).with_context(|| format!("{}", f.display()))?);
            }
            for line in apply(store.open()?.as_ref(), &policies)? {
                println!("{line}");
            }
        }
        PolicyCmd::Delete { policies, store } => {
            for p in delete(store.open()?.as_ref(), &policies)? {
                println!("networkpolicy {p} deleted");
            }
        }
        PolicyCmd::List { json, store } => {
            let listed = list(store.open()?.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                print!("{}", format_list(&listed));
            }
        }
    }
    Ok(())
}

/// The file (or stdin), at most the parser's limit.
fn read_input(file: &Path) -> anyhow::Result<String> {
    let limit = podwire_policy::MAX_INPUT_BYTES as u64 + 1;
    let mut buf = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut buf)
            .context("reading stdin")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("{}", file.display()))?
            .take(limit)
            .read_to_end(&mut buf)
            .with_context(|| format!("{}", file.display()))?;
    }
    if buf.len() as u64 >= limit {
        anyhow::bail!(
            "{}: more than {} bytes",
            file.display(),
            podwire_policy::MAX_INPUT_BYTES
        );
    }
    String::from_utf8(buf).with_context(|| format!("{} is not UTF-8", file.display()))
}

/// Every policy of the input, or the first error (naming its field).
fn parse(text: &str) -> anyhow::Result<Vec<NetworkPolicy>> {
    let policies = podwire_policy::parse_documents(text)?;
    if policies.is_empty() {
        anyhow::bail!("no NetworkPolicy in the input");
    }
    if policies.len() > MAX_COMMIT_WRITES {
        anyhow::bail!(
            "{} policies: at most {MAX_COMMIT_WRITES} are applied at once (one datastore transaction); split the input",
            policies.len()
        );
    }
    for (i, p) in policies.iter().enumerate() {
        if policies[..i].iter().any(|q| q.key() == p.key()) {
            anyhow::bail!("networkpolicy {} is given twice in the input", p.key());
        }
    }
    Ok(policies)
}

/// Writes every policy in one transaction; kubectl-like lines.
fn apply(store: &dyn Datastore, policies: &[NetworkPolicy]) -> anyhow::Result<Vec<String>> {
    // Two tries: a concurrent writer of one of the keys makes the first
    // lose its compare-and-swap; the second reads again.
    for attempt in 0..2 {
        let mut writes = Vec::new();
        let mut lines = Vec::new();
        for p in policies {
            let key = keys::policy(&p.namespace, &p.name);
            let record = p.to_record();
            let (expect, verb) = match store.get(&key)? {
                Some(e) if e.value == record => {
                    lines.push(format!("networkpolicy {} unchanged", p.key()));
                    continue;
                }
                Some(e) => (Expect::Revision(e.mod_revision), "configured"),
                None => (Expect::Absent, "created"),
            };
            writes.push(Write::put(key, record, expect));
            lines.push(format!("networkpolicy {} {verb}", p.key()));
        }
        if writes.is_empty() {
            return Ok(lines);
        }
        match store.commit(&writes) {
            Ok(_) => return Ok(lines),
            Err(StoreError::Conflict { .. }) if attempt == 0 => continue,
            Err(e) => return Err(e).context("writing the policies (none was written)"),
        }
    }
    anyhow::bail!("the policies changed under us twice; nothing was written, try again")
}

/// Deletes every named policy in one transaction, or none when one is
/// missing.
fn delete(store: &dyn Datastore, names: &[String]) -> anyhow::Result<Vec<String>> {
    let mut refs = Vec::new();
    for n in names {
        let (ns, name) = n.split_once('/').unwrap_or(("default", n.as_str()));
        k8s::dns1123_label("namespace", ns).with_context(|| format!("policy {n:?}"))?;
        k8s::dns1123_subdomain("name", name).with_context(|| format!("policy {n:?}"))?;
        let r = format!("{ns}/{name}");
        if !refs.iter().any(|(x, _): &(String, String)| *x == r) {
            refs.push((r, keys::policy(ns, name)));
        }
    }
    if refs.len() > MAX_COMMIT_WRITES {
        anyhow::bail!("at most {MAX_COMMIT_WRITES} policies are deleted at once");
    }
    let mut writes = Vec::new();
    let mut missing = Vec::new();
    for (r, key) in &refs {
        match store.get(key)? {
            Some(e) => writes.push(Write::delete(key.clone(), Expect::Revision(e.mod_revision))),
            None => missing.push(r.clone()),
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "no networkpolicy {} (nothing was deleted)",
            missing.join(", ")
        );
    }
    store
        .commit(&writes)
        .context("deleting the policies (none was deleted)")?;
    Ok(refs.into_iter().map(|(r, _)| r).collect())
}

/// `policy list --json` (docs/LAB.md): every policy as stored, and every
/// record that does not decode, with why.
fn list(store: &dyn Datastore) -> anyhow::Result<serde_json::Value> {
    let snap = store.list(keys::POLICIES)?;
    let mut policies = Vec::new();
    let mut invalid = Vec::new();
    for e in &snap.entries {
        match NetworkPolicy::from_record(&e.value) {
            Ok(p) => {
                let object: serde_json::Value =
                    serde_json::from_slice(&p.to_record()).unwrap_or(serde_json::Value::Null);
                policies.push(json!({
                    "namespace": p.namespace,
                    "name": p.name,
                    "key": e.key,
                    "revision": e.mod_revision,
                    "policyTypes": p.policy_types,
                    "ingressRules": p.ingress.len(),
                    "egressRules": p.egress.len(),
                    "object": object,
                }));
            }
            Err(err) => invalid.push(json!({"key": e.key, "error": err.to_string()})),
        }
    }
    Ok(json!({
        "revision": snap.revision,
        "policies": policies,
        "invalid": invalid,
    }))
}

fn format_list(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<32} {:<18} {:>7} {:>6}",
        "NAMESPACE", "NAME", "TYPES", "INGRESS", "EGRESS"
    );
    for p in v["policies"].as_array().into_iter().flatten() {
        let types: Vec<&str> = p["policyTypes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        let _ = writeln!(
            out,
            "{:<20} {:<32} {:<18} {:>7} {:>6}",
            p["namespace"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or(""),
            types.join(","),
            p["ingressRules"].as_u64().unwrap_or(0),
            p["egressRules"].as_u64().unwrap_or(0)
        );
    }
    for i in v["invalid"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "invalid record {}: {}",
            i["key"].as_str().unwrap_or(""),
            i["error"].as_str().unwrap_or("")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, podwire_store::SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = podwire_store::SqliteStore::open(&dir.path().join("d.db")).expect("open");
        (dir, s)
    }

    const TWO: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: serve-80-tcp}]
"#;

    /// Newuser F11: several -f were refused ("cannot be used multiple times").
    #[test]
    fn apply_takes_several_files() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "podwirectl",
            "policy",
            "apply",
            "-f",
            "a.yaml",
            "-f",
            "b.yaml",
            "--lab",
            "t",
        ])
        .expect("parses");
        let crate::Top::Policy {
            cmd: PolicyCmd::Apply { file, .. },
        } = cli.cmd
        else {
            panic!("not policy apply");
        };
        assert_eq!(file, vec![PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]);
        assert!(crate::Cli::try_parse_from(["podwirectl", "policy", "apply"]).is_err());
    }

    #[test]
    fn apply_writes_every_policy_and_reports_what_changed() {
        let (_d, s) = store();
        let ps = parse(TWO).expect("valid");
        assert_eq!(
            apply(&s, &ps).expect("apply"),
            [
                "networkpolicy x/deny created",
                "networkpolicy y/web created"
            ]
        );
        assert_eq!(
            apply(&s, &ps).expect("again"),
            [
                "networkpolicy x/deny unchanged",
                "networkpolicy y/web unchanged"
            ]
        );
        let v = list(&s).expect("list");
        assert_eq!(v["policies"][0]["key"], "/podwire/policies/x/deny");
        assert_eq!(v["policies"][1]["name"], "web");
        assert_eq!(v["policies"][1]["policyTypes"][0], "Ingress");
        assert!(format_list(&v).contains("web"));
    }

    #[test]
    fn a_bad_document_writes_nothing_and_names_its_field() {
        let (_d, s) = store();
        let bad = TWO.replace("serve-80-tcp", "abcdefghijklmnop");
        let e = parse(&bad).expect_err("port name too long");
        assert!(format!("{e:#}").contains("ports[0].port"), "{e:#}");
        assert!(s.list(keys::POLICIES).expect("list").entries.is_empty());
        assert!(parse("").is_err(), "nothing to apply");
        let twice = format!("{TWO}---\n{}", TWO.split("---").nth(1).unwrap_or(""));
        assert!(parse(&twice).is_err(), "one policy twice");
    }

    #[test]
    fn delete_is_all_or_nothing() {
        let (_d, s) = store();
        apply(&s, &parse(TWO).expect("valid")).expect("apply");
        let e = delete(&s, &["x/deny".into(), "y/missing".into()]).expect_err("missing");
        assert!(e.to_string().contains("y/missing"), "{e}");
        assert_eq!(s.list(keys::POLICIES).expect("list").entries.len(), 2);
        assert_eq!(
            delete(&s, &["x/deny".into(), "y/web".into()]).expect("delete"),
            ["x/deny", "y/web"]
        );
        assert!(s.list(keys::POLICIES).expect("list").entries.is_empty());
        assert!(delete(&s, &["X/bad".into()]).is_err());
    }
}
