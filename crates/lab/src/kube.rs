//! The lab's Kubernetes metadata: namespaces and pods with labels and named
//! ports, as the operator gives them on the command line, written to the
//! lab's datastore as the records of `podwire-cluster` (the same records a
//! Kubernetes watcher would feed).

use podwire_cluster::records::{Labels, NAMESPACE_NAME_LABEL};
use podwire_cluster::{keys, names as k8s, ContainerPort, NamespaceRecord, PodRecord, Protocol};
use podwire_store::{Datastore, Expect, StoreError};

use crate::LabError;

/// The most labels an object carries here (Kubernetes bounds the total
/// size; a bound of our own keeps argument lists sane).
const MAX_LABELS: usize = 64;
/// The most ports a pod serves (each one a listener thread).
pub const MAX_PORTS: usize = 16;

fn usage(what: &str, e: impl std::fmt::Display) -> LabError {
    LabError::Usage(format!("{what}: {e}"))
}

/// `--labels k=v,k2=v2` (an empty string: none).
pub fn parse_labels(s: &str) -> Result<Labels, LabError> {
    let mut labels = Labels::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| LabError::Usage(format!("--labels: {item:?} is not key=value")))?;
        check_label("--labels", k, v)?;
        if labels.insert(k.to_string(), v.to_string()).is_some() {
            return Err(LabError::Usage(format!("--labels: {k:?} given twice")));
        }
    }
    if labels.len() > MAX_LABELS {
        return Err(LabError::Usage(format!(
            "--labels: at most {MAX_LABELS} labels"
        )));
    }
    Ok(labels)
}

fn check_label(what: &str, k: &str, v: &str) -> Result<(), LabError> {
    k8s::label_key(&format!("{what} {k:?}"), k).map_err(|e| usage(what, e))?;
    k8s::label_value(&format!("{what} {k:?}"), v).map_err(|e| usage(what, e))
}

/// One change of `lab … label`: `k=v` sets, `k-` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelEdit {
    Set(String, String),
    Remove(String),
}

pub fn parse_label_edits(args: &[String]) -> Result<Vec<LabelEdit>, LabError> {
    if args.is_empty() {
        return Err(LabError::Usage(
            "give at least one label change: k=v (add or change) or k- (remove)".into(),
        ));
    }
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) => {
                check_label("label", k, v)?;
                Ok(LabelEdit::Set(k.into(), v.into()))
            }
            None => match a.strip_suffix('-') {
                Some(k) => {
                    k8s::label_key(&format!("label {k:?}"), k).map_err(|e| usage("label", e))?;
                    Ok(LabelEdit::Remove(k.into()))
                }
                None => Err(LabError::Usage(format!(
                    "label change {a:?} is neither k=v nor k-"
                ))),
            },
        })
        .collect()
}

/// Applies edits in order; a namespace's name label stays as it is.
pub fn apply_label_edits(
    labels: &Labels,
    edits: &[LabelEdit],
    protected: Option<&str>,
) -> Result<Labels, LabError> {
    let mut out = labels.clone();
    for e in edits {
        let key = match e {
            LabelEdit::Set(k, _) | LabelEdit::Remove(k) => k,
        };
        if protected == Some(key.as_str()) {
            return Err(LabError::Usage(format!(
                "label {key:?} is the namespace's name: it cannot be changed or removed"
            )));
        }
        match e {
            LabelEdit::Set(k, v) => {
                out.insert(k.clone(), v.clone());
            }
            LabelEdit::Remove(k) => {
                out.remove(k);
            }
        }
    }
    if out.len() > MAX_LABELS {
        return Err(LabError::Usage(format!("at most {MAX_LABELS} labels")));
    }
    Ok(out)
}

/// `--port NAME=PORT/tcp` (the protocol may be left out: TCP).
pub fn parse_port(s: &str) -> Result<ContainerPort, LabError> {
    let bad = |why: &str| LabError::Usage(format!("--port {s:?}: {why} (NAME=PORT/tcp)"));
    let (name, rest) = s.split_once('=').ok_or_else(|| bad("no name"))?;
    k8s::port_name("--port", name).map_err(|e| usage("--port", e))?;
    let (num, proto) = match rest.split_once('/') {
        Some((n, p)) => (n, p),
        None => (rest, "tcp"),
    };
    let protocol: Protocol = proto.parse().map_err(|e| usage("--port", e))?;
    if protocol != Protocol::TCP {
        return Err(bad("only TCP listeners are served"));
    }
    let port: u16 = num
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port must be 1-65535"))?;
    Ok(ContainerPort {
        name: Some(name.to_string()),
        port,
        protocol,
    })
}

/// The ports a pod serves: `--port`s, and 80 (unnamed) for `--http`
/// unless a `--port` serves 80 already.
pub fn pod_ports(ports: &[String], http: bool) -> Result<Vec<ContainerPort>, LabError> {
    let mut out: Vec<ContainerPort> = Vec::new();
    for p in ports {
        let cp = parse_port(p)?;
        if out.iter().any(|q| q.port == cp.port) {
            return Err(LabError::Usage(format!(
                "--port {p:?}: port {} is served already",
                cp.port
            )));
        }
        if out.iter().any(|q| q.name == cp.name) {
            return Err(LabError::Usage(format!("--port {p:?}: the name is taken")));
        }
        out.push(cp);
    }
    if http && !out.iter().any(|p| p.port == 80) {
        out.push(ContainerPort {
            name: None,
            port: 80,
            protocol: Protocol::TCP,
        });
    }
    if out.len() > MAX_PORTS {
        return Err(LabError::Usage(format!("at most {MAX_PORTS} ports")));
    }
    Ok(out)
}

/// A namespace's record (its name label added).
pub fn namespace_record(name: &str, labels: &Labels) -> Result<NamespaceRecord, LabError> {
    let mut l = labels.clone();
    l.remove(NAMESPACE_NAME_LABEL);
    NamespaceRecord::new(name, l).map_err(|e| usage(&format!("namespace {name}"), e))
}

fn store_err(what: &str, e: StoreError) -> LabError {
    LabError::Datastore {
        unavailable: matches!(e, StoreError::Unavailable(_)),
        msg: format!("{what}: {e}"),
    }
}

/// Writes `value` at `key` whatever is there (compare-and-swap on what was
/// read, so a concurrent writer is noticed, then retried once).
fn put(store: &dyn Datastore, key: &str, value: &[u8]) -> Result<(), LabError> {
    let mut last = None;
    for _ in 0..2 {
        let expect = match store.get(key).map_err(|e| store_err(key, e))? {
            Some(e) => Expect::Revision(e.mod_revision),
            None => Expect::Absent,
        };
        match store.put(key, value, expect) {
            Ok(_) => return Ok(()),
            Err(e @ StoreError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(store_err(key, e)),
        }
    }
    Err(match last {
        Some(e) => store_err(key, e),
        None => LabError::Datastore {
            unavailable: false,
            msg: format!("{key}: not written"),
        },
    })
}

fn to_json<T: serde::Serialize>(r: &T) -> Result<Vec<u8>, LabError> {
    serde_json::to_vec(r).map_err(|e| LabError::State(e.to_string()))
}

pub fn write_namespace(store: &dyn Datastore, r: &NamespaceRecord) -> Result<(), LabError> {
    r.validate()
        .map_err(|e| usage(&format!("namespace {}", r.name), e))?;
    put(store, &keys::namespace(&r.name), &to_json(r)?)
}

pub fn write_pod(store: &dyn Datastore, r: &PodRecord) -> Result<(), LabError> {
    r.validate()
        .map_err(|e| usage(&format!("pod {}/{}", r.namespace, r.name), e))?;
    put(store, &keys::pod(&r.pod_ref()), &to_json(r)?)
}

/// Removes a namespace's record (absent already: nothing to do).
pub fn delete_namespace(store: &dyn Datastore, name: &str) -> Result<(), LabError> {
    let key = keys::namespace(name);
    match store.get(&key).map_err(|e| store_err(&key, e))? {
        Some(e) => store
            .delete(&key, e.mod_revision)
            .map_err(|e| store_err(&key, e)),
        None => Ok(()),
    }
}

/// Removes a pod's record (absent already: nothing to do).
pub fn delete_pod(store: &dyn Datastore, r: &PodRecord) -> Result<(), LabError> {
    let key = keys::pod(&r.pod_ref());
    match store.get(&key).map_err(|e| store_err(&key, e))? {
        Some(e) => store
            .delete(&key, e.mod_revision)
            .map_err(|e| store_err(&key, e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_refuse_what_kubernetes_refuses() {
        let l = parse_labels("pod=a,app.kubernetes.io/name=web,empty=").expect("valid");
        assert_eq!(l.get("pod").map(String::as_str), Some("a"));
        assert_eq!(l.get("empty").map(String::as_str), Some(""));
        assert!(parse_labels("").expect("none").is_empty());
        for bad in ["pod", "p od=a", "pod=a b", "pod=a,pod=b", "-x=1"] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_edits_set_change_and_remove_but_keep_the_name_label() {
        let args: Vec<String> = ["a=1", "b-", "c=3"].iter().map(|s| s.to_string()).collect();
        let edits = parse_label_edits(&args).expect("valid");
        let before = Labels::from([("b".into(), "2".into()), ("a".into(), "0".into())]);
        let after = apply_label_edits(&before, &edits, None).expect("applies");
        assert_eq!(
            after,
            Labels::from([("a".into(), "1".into()), ("c".into(), "3".into())])
        );
        assert!(parse_label_edits(&["a".to_string()]).is_err());
        assert!(parse_label_edits(&[]).is_err());
        let rm = parse_label_edits(&[format!("{NAMESPACE_NAME_LABEL}-")]).expect("parses");
        assert!(apply_label_edits(&before, &rm, Some(NAMESPACE_NAME_LABEL)).is_err());
    }

    #[test]
    fn ports_are_named_tcp_listeners() {
        let p = parse_port("serve-80-tcp=80/tcp").expect("valid");
        assert_eq!(
            (p.name.as_deref(), p.port, p.protocol),
            (Some("serve-80-tcp"), 80, Protocol::TCP)
        );
        assert_eq!(parse_port("web=8080").expect("valid").port, 8080);
        for bad in [
            "80/tcp",
            "web=0/tcp",
            "web=70000/tcp",
            "web=53/udp",
            "abcdefghijklmnop=80/tcp",
            "Web=80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        let both = pod_ports(&["a=81/tcp".into()], true).expect("valid");
        assert_eq!(both.iter().map(|p| p.port).collect::<Vec<_>>(), [81, 80]);
        let dup = pod_ports(&["a=80/tcp".into(), "b=80/tcp".into()], false);
        assert!(dup.is_err());
        // --http with a named port on 80 serves 80 once.
        assert_eq!(
            pod_ports(&["a=80/tcp".into()], true).expect("valid").len(),
            1
        );
    }

    #[test]
    fn records_reach_the_datastore_under_their_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = podwire_store::SqliteStore::open(&dir.path().join("d.db")).expect("open");
        let ns = namespace_record("x", &parse_labels("ns=x").expect("labels")).expect("ns");
        write_namespace(&store, &ns).expect("write");
        write_namespace(&store, &ns).expect("rewrite");
        let got = store
            .get("/podwire/namespaces/x")
            .expect("get")
            .expect("present");
        let back: NamespaceRecord = serde_json::from_slice(&got.value).expect("json");
        assert_eq!(back, ns);
        let pod = PodRecord {
            namespace: "x".into(),
            name: "a".into(),
            labels: parse_labels("pod=a").expect("labels"),
            ports: pod_ports(&["serve-80-tcp=80/tcp".into()], false).expect("ports"),
        };
        write_pod(&store, &pod).expect("write");
        assert!(store.get("/podwire/pods/x/a").expect("get").is_some());
        delete_pod(&store, &pod).expect("delete");
        delete_pod(&store, &pod).expect("delete again");
        assert!(store.get("/podwire/pods/x/a").expect("get").is_none());
    }
}
