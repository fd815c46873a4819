//! Text to policies: JSON or YAML, one object, a `List`/`NetworkPolicyList`
//! (`items`), or several YAML documents. All or nothing: the first error
//! fails the whole input.

use serde::Deserialize;
use serde_json::Value;

use crate::model::{EgressRuleWire, IngressRuleWire, MetadataWire, PolicyWire, SpecWire};
use crate::{validate, NetworkPolicy, PolicyError, PolicyType};

/// Bigger input is refused before parsing (a policy file is kilobytes).
pub const MAX_INPUT_BYTES: usize = 4 << 20;
/// More policies in one input are refused.
pub const MAX_DOCUMENTS: usize = 10_000;

const API_VERSION: &str = "networking.k8s.io/v1";

fn at(location: String, mut e: PolicyError) -> PolicyError {
    e.location = Some(location);
    e
}

/// Every policy in `text`, validated; or the first error.
pub fn parse_documents(text: &str) -> Result<Vec<NetworkPolicy>, PolicyError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(PolicyError::new(
            "input",
            format!("{} bytes is more than {MAX_INPUT_BYTES}", text.len()),
        ));
    }
    let docs = documents(text)?;
    let several = docs.len() > 1;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let loc = |e: PolicyError| {
            if several {
                at(format!("document {}", i + 1), e)
            } else {
                e
            }
        };
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        if kind == "List" || kind == "NetworkPolicyList" {
            let items = list_items(doc).map_err(loc)?;
            for (j, item) in items.into_iter().enumerate() {
                let p = one(item, &format!("items[{j}].")).map_err(loc)?;
                out.push(p);
                if out.len() > MAX_DOCUMENTS {
                    return Err(loc(PolicyError::new(
                        "items",
                        format!("more than {MAX_DOCUMENTS} policies"),
                    )));
                }
            }
        } else {
            out.push(one(doc, "").map_err(loc)?);
        }
    }
    if out.is_empty() {
        return Err(PolicyError::new("input", "holds no NetworkPolicy"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &out {
        if !seen.insert(p.key()) {
            return Err(PolicyError::new(
                "metadata.name",
                format!("{} appears more than once in the input", p.key()),
            ));
        }
    }
    Ok(out)
}

/// The input's documents as JSON values (YAML is turned into the JSON data
/// model first, so both take one decoding path and one kind of field path).
fn documents(text: &str) -> Result<Vec<Value>, PolicyError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| PolicyError::new("input", format!("not valid JSON: {e}")))?;
        return Ok(vec![v]);
    }
    let mut out = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        if i >= MAX_DOCUMENTS {
            return Err(PolicyError::new(
                "input",
                format!("more than {MAX_DOCUMENTS} documents"),
            ));
        }
        let y = yaml_serde::Value::deserialize(doc).map_err(|e| {
            PolicyError::new("input", format!("document {}: not valid YAML: {e}", i + 1))
        })?;
        if y.is_null() {
            continue; // an empty document (a trailing `---`)
        }
        let v = serde_json::to_value(&y).map_err(|e| {
            PolicyError::new(
                "input",
                format!("document {}: not representable as JSON: {e}", i + 1),
            )
        })?;
        out.push(v);
    }
    Ok(out)
}

fn list_items(doc: Value) -> Result<Vec<Value>, PolicyError> {
    let Value::Object(mut m) = doc else {
        return Err(PolicyError::new("", "must be an object"));
    };
    for k in m.keys() {
        if !matches!(k.as_str(), "apiVersion" | "kind" | "items" | "metadata") {
            return Err(PolicyError::new(k.clone(), "unknown field"));
        }
    }
    match m.remove("items") {
        Some(Value::Array(items)) => Ok(items),
        Some(Value::Null) | None => Ok(Vec::new()),
        Some(_) => Err(PolicyError::new("items", "must be a list")),
    }
}

/// Decodes and validates one object. `prefix` is put before field paths.
fn one(v: Value, prefix: &str) -> Result<NetworkPolicy, PolicyError> {
    let wire: PolicyWire = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        PolicyError::new(format!("{prefix}{path}"), e.into_inner().to_string())
    })?;
    validate::policy(wire).map_err(|mut e| {
        e.field = format!("{prefix}{}", e.field);
        e
    })
}

pub(crate) fn from_json_record(bytes: &[u8]) -> Result<NetworkPolicy, PolicyError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(PolicyError::new("record", "too large"));
    }
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| PolicyError::new("record", format!("not valid JSON: {e}")))?;
    one(v, "")
}

pub(crate) fn to_json(p: &NetworkPolicy) -> Vec<u8> {
    let wire = PolicyWire {
        api_version: API_VERSION.to_string(),
        kind: "NetworkPolicy".to_string(),
        metadata: MetadataWire {
            name: p.name.clone(),
            namespace: Some(p.namespace.clone()),
            labels: p.labels.clone(),
            annotations: p.annotations.clone(),
        },
        spec: SpecWire {
            pod_selector: p.pod_selector.clone(),
            policy_types: p.policy_types.clone(),
            ingress: p
                .ingress
                .iter()
                .map(|r| IngressRuleWire {
                    ports: r.ports.clone(),
                    from: r.peers.clone(),
                })
                .collect(),
            egress: p
                .egress
                .iter()
                .map(|r| EgressRuleWire {
                    ports: r.ports.clone(),
                    to: r.peers.clone(),
                })
                .collect(),
        },
    };
    // Serialising plain data to JSON cannot fail (string keys only).
    serde_json::to_vec(&wire).unwrap_or_default()
}

pub(crate) const fn api_version() -> &'static str {
    API_VERSION
}

pub(crate) fn default_types(spec: &SpecWire) -> Vec<PolicyType> {
    if !spec.policy_types.is_empty() {
        return spec.policy_types.clone();
    }
    let mut t = vec![PolicyType::Ingress];
    if !spec.egress.is_empty() {
        t.push(PolicyType::Egress);
    }
    t
}
