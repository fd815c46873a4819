//! The API server's validation of a NetworkPolicy
//! (pkg/apis/networking/validation: ValidateNetworkPolicy and the label
//! selector rules it calls), with the API server's defaulting of
//! policyTypes. Errors name the field as `kubectl` would.

use ipnet::IpNet;
use podwire_cluster::names;
use podwire_cluster::RecordError;

use crate::model::{LabelSelector, Operator, PolicyPeer, PolicyPort, PolicyWire, PortRef, Rule};
use crate::parse::{api_version, default_types};
use crate::{NetworkPolicy, PolicyError};

/// Kubernetes' bound on all annotations of an object together.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

fn rec(e: RecordError, field: &str) -> PolicyError {
    // The names module puts its own field in `e.field`; ours is the path.
    PolicyError::new(field, e.reason)
}

pub(crate) fn policy(w: PolicyWire) -> Result<NetworkPolicy, PolicyError> {
    if w.api_version != api_version() {
        return Err(PolicyError::new(
            "apiVersion",
            format!("{:?} is not {:?}", w.api_version, api_version()),
        ));
    }
    if w.kind != "NetworkPolicy" {
        return Err(PolicyError::new(
            "kind",
            format!("{:?} is not \"NetworkPolicy\" (or a List of them)", w.kind),
        ));
    }
    let m = w.metadata;
    names::dns1123_subdomain("", &m.name).map_err(|e| rec(e, "metadata.name"))?;
    let namespace = m.namespace.unwrap_or_else(|| "default".to_string());
    names::dns1123_label("", &namespace).map_err(|e| rec(e, "metadata.namespace"))?;
    for (k, v) in &m.labels {
        let f = format!("metadata.labels[{k:?}]");
        names::label_key("", k).map_err(|e| rec(e, &f))?;
        names::label_value("", v).map_err(|e| rec(e, &f))?;
    }
    let mut total = 0;
    for (k, v) in &m.annotations {
        names::label_key("", k).map_err(|e| rec(e, &format!("metadata.annotations[{k:?}]")))?;
        total += k.len() + v.len();
    }
    if total > ANNOTATIONS_MAX_BYTES {
        return Err(PolicyError::new(
            "metadata.annotations",
            format!("{total} bytes is more than {ANNOTATIONS_MAX_BYTES}"),
        ));
    }
    let spec = w.spec;
    selector(&spec.pod_selector, "spec.podSelector")?;
    if spec.policy_types.len() > 2 {
        return Err(PolicyError::new(
            "spec.policyTypes",
            "may not specify more than two policyTypes",
        ));
    }
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        ingress.push(rule(&r.ports, &r.from, &f, "from")?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        egress.push(rule(&r.ports, &r.to, &f, "to")?);
    }
    let policy_types = default_types(&spec);
    Ok(NetworkPolicy {
        namespace,
        name: m.name,
        labels: m.labels,
        annotations: m.annotations,
        pod_selector: spec.pod_selector,
        policy_types,
        ingress,
        egress,
    })
}

fn rule(
    ports: &[PolicyPort],
    peers: &[PolicyPeer],
    f: &str,
    peers_name: &str,
) -> Result<Rule, PolicyError> {
    for (j, p) in ports.iter().enumerate() {
        port(p, &format!("{f}.ports[{j}]"))?;
    }
    for (j, p) in peers.iter().enumerate() {
        peer(p, &format!("{f}.{peers_name}[{j}]"))?;
    }
    Ok(Rule {
        ports: ports.to_vec(),
        peers: peers.to_vec(),
    })
}

fn port(p: &PolicyPort, f: &str) -> Result<(), PolicyError> {
    match &p.port {
        Some(PortRef::Name(n)) => {
            if n.len() > 15 {
                return Err(PolicyError::new(
                    format!("{f}.port"),
                    format!("port name {n:?} is longer than 15"),
                ));
            }
            names::port_name("", n).map_err(|e| rec(e, &format!("{f}.port")))?;
            if p.end_port.is_some() {
                return Err(PolicyError::new(
                    format!("{f}.endPort"),
                    "may not be specified when `port` is non-numeric",
                ));
            }
        }
        Some(PortRef::Number(n)) => {
            if let Some(end) = p.end_port {
                if end < *n {
                    return Err(PolicyError::new(
                        format!("{f}.endPort"),
                        format!("{end} must be greater than or equal to `port` ({n})"),
                    ));
                }
            }
        }
        None => {
            if p.end_port.is_some() {
                return Err(PolicyError::new(
                    format!("{f}.endPort"),
                    "may not be specified when `port` is not specified",
                ));
            }
        }
    }
    Ok(())
}

fn peer(p: &PolicyPeer, f: &str) -> Result<(), PolicyError> {
    let mut n = 0;
    if let Some(s) = &p.pod_selector {
        n += 1;
        selector(s, &format!("{f}.podSelector"))?;
    }
    if let Some(s) = &p.namespace_selector {
        n += 1;
        selector(s, &format!("{f}.namespaceSelector"))?;
    }
    if let Some(b) = &p.ip_block {
        n += 1;
        ip_block(&b.cidr, &b.except, &format!("{f}.ipBlock"))?;
    }
    if n == 0 {
        return Err(PolicyError::new(f, "must specify a peer"));
    }
    if n > 1 && p.ip_block.is_some() {
        return Err(PolicyError::new(
            f,
            "may not specify both ipBlock and another peer",
        ));
    }
    Ok(())
}

/// A CIDR as the API server takes it (host bits may be set).
pub(crate) fn cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok()
}

fn ip_block(c: &str, except: &[String], f: &str) -> Result<(), PolicyError> {
    if c.is_empty() {
        return Err(PolicyError::new(format!("{f}.cidr"), "Required value"));
    }
    let net = cidr(c).ok_or_else(|| {
        PolicyError::new(format!("{f}.cidr"), format!("{c:?} is not a valid CIDR"))
    })?;
    for (k, e) in except.iter().enumerate() {
        let ff = format!("{f}.except[{k}]");
        let ex =
            cidr(e).ok_or_else(|| PolicyError::new(&ff, format!("{e:?} is not a valid CIDR")))?;
        let inside = match (net.trunc(), ex.trunc()) {
            (IpNet::V4(a), IpNet::V4(b)) => a.contains(&b.network()),
            (IpNet::V6(a), IpNet::V6(b)) => a.contains(&b.network()),
            _ => false,
        };
        if !inside || ex.prefix_len() <= net.prefix_len() {
            return Err(PolicyError::new(
                ff,
                format!("{e:?} must be a strict subset of `cidr` {c:?}"),
            ));
        }
    }
    Ok(())
}

fn selector(s: &LabelSelector, f: &str) -> Result<(), PolicyError> {
    for (k, v) in &s.match_labels {
        let ff = format!("{f}.matchLabels[{k:?}]");
        names::label_key("", k).map_err(|e| rec(e, &ff))?;
        names::label_value("", v).map_err(|e| rec(e, &ff))?;
    }
    for (i, r) in s.match_expressions.iter().enumerate() {
        let ff = format!("{f}.matchExpressions[{i}]");
        names::label_key("", &r.key).map_err(|e| rec(e, &format!("{ff}.key")))?;
        match r.operator {
            Operator::In | Operator::NotIn => {
                if r.values.is_empty() {
                    return Err(PolicyError::new(
                        format!("{ff}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !r.values.is_empty() {
                    return Err(PolicyError::new(
                        format!("{ff}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
        }
        for (j, v) in r.values.iter().enumerate() {
            names::label_value("", v).map_err(|e| rec(e, &format!("{ff}.values[{j}]")))?;
        }
    }
    Ok(())
}
