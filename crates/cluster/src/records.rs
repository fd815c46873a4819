//! The records themselves. Each decodes strictly (unknown fields refused)
//! and is validated before it is used or written: a record in the
//! datastore is input like any other.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::names;
use crate::posture::ExternalPodAccess;
use crate::RecordError;

/// The label every namespace carries (Kubernetes sets it since 1.21;
/// NetworkPolicies select namespaces by it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels as Kubernetes has them: keys unique, ordered for stable output.
pub type Labels = BTreeMap<String, String>;

fn check_labels(field: &str, labels: &Labels) -> Result<(), RecordError> {
    for (k, v) in labels {
        names::label_key(&format!("{field}[{k:?}]"), k)?;
        names::label_value(&format!("{field}[{k:?}]"), v)?;
    }
    Ok(())
}

/// A pod by name: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn new(namespace: &str, name: &str) -> Result<PodRef, RecordError> {
        let r = PodRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        r.validate()?;
        Ok(r)
    }

    pub fn validate(&self) -> Result<(), RecordError> {
        names::dns1123_label("namespace", &self.namespace)?;
        names::dns1123_subdomain("name", &self.name)
    }

    /// `NAME` (namespace `default`) or `NS/NAME`, as the CLI takes them.
    pub fn parse(s: &str) -> Result<PodRef, RecordError> {
        match s.split_once('/') {
            Some((ns, name)) => PodRef::new(ns, name),
            None => PodRef::new("default", s),
        }
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
    SCTP,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::SCTP => "SCTP",
        })
    }
}

impl std::str::FromStr for Protocol {
    type Err = RecordError;

    /// `tcp`/`TCP`, `udp`, `sctp`.
    fn from_str(s: &str) -> Result<Protocol, RecordError> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::TCP),
            "UDP" => Ok(Protocol::UDP),
            "SCTP" => Ok(Protocol::SCTP),
            _ => Err(RecordError::new(
                "protocol",
                format!("{s:?} is not TCP, UDP or SCTP"),
            )),
        }
    }
}

/// A container port, named or not (NetworkPolicies name them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// A namespace and its labels; `kubernetes.io/metadata.name=<name>` is
/// always among them (set by [`NamespaceRecord::new`] and checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRecord {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

impl NamespaceRecord {
    pub fn new(name: &str, mut labels: Labels) -> Result<NamespaceRecord, RecordError> {
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        let r = NamespaceRecord {
            name: name.to_string(),
            labels,
        };
        r.validate()?;
        Ok(r)
    }

    pub fn validate(&self) -> Result<(), RecordError> {
        names::dns1123_label("name", &self.name)?;
        check_labels("labels", &self.labels)?;
        if self.labels.get(NAMESPACE_NAME_LABEL) != Some(&self.name) {
            return Err(RecordError::new(
                format!("labels[{NAMESPACE_NAME_LABEL:?}]"),
                format!("must be the namespace's name {:?}", self.name),
            ));
        }
        Ok(())
    }
}

/// A pod's metadata: what NetworkPolicies select it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

impl PodRecord {
    pub fn pod_ref(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), RecordError> {
        self.pod_ref().validate()?;
        check_labels("labels", &self.labels)?;
        for (i, p) in self.ports.iter().enumerate() {
            if p.port == 0 {
                return Err(RecordError::new(
                    format!("ports[{i}].port"),
                    "must be 1-65535",
                ));
            }
            if let Some(n) = &p.name {
                names::port_name(&format!("ports[{i}].name"), n)?;
                let dup = self.ports[..i]
                    .iter()
                    .any(|q| q.name.as_deref() == Some(n.as_str()));
                if dup {
                    return Err(RecordError::new(
                        format!("ports[{i}].name"),
                        format!("{n:?} is used by an earlier port"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The number a named port has on this pod for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// One pod attachment on a node: written by the agent when ADD gives the
/// attachment its address, removed at DEL (and by GC). `pod` is the
/// Kubernetes identity from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME), absent
/// for containers started without one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRecord {
    pub node: String,
    pub container_id: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

impl EndpointRecord {
    pub fn validate(&self) -> Result<(), RecordError> {
        names::dns1123_subdomain("node", &self.node)?;
        names::container_id("container_id", &self.container_id)?;
        names::ifname("ifname", &self.ifname)?;
        if let Some(p) = &self.pod {
            p.validate()?;
        }
        Ok(())
    }
}

/// Every address of a node, whichever the mode: written by its agent at
/// start and when they change, so every node's posture counts them as "the
/// cluster". A record of its own (not the overlay's `/podwire/nodes/`
/// record, which overlay agents parse strictly for their routes): vpc nodes
/// have no VTEP, and older overlay agents keep reading what they know.
///
/// The agent also says which address is its primary and what posture it
/// enforces, so `podwirectl audit --datastore` needs no flags on a real
/// cluster. Those fields are optional: records of older agents, which lack
/// them, stay readable (and are written without them when unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddressesRecord {
    pub node: String,
    /// `vpc` or `overlay`.
    pub mode: String,
    pub addresses: Vec<Ipv4Addr>,
    /// The address the node sends from towards the VPC: its primary ENI's
    /// (vpc) or its underlay address (overlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<Ipv4Addr>,
    /// The agent's `--external-pod-access`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_pod_access: Option<ExternalPodAccess>,
    /// The agent's `--external-allow-cidrs` (with `external_pod_access`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_allow_cidrs: Option<Vec<Ipv4Net>>,
}

/// The most addresses a node record carries (a node with 15 ENIs and its
/// tunnel stays far below).
pub const NODE_ADDRESSES_MAX: usize = 256;

/// The most `external_allow_cidrs` a node record carries.
pub const NODE_ALLOW_CIDRS_MAX: usize = 1024;

impl NodeAddressesRecord {
    pub fn validate(&self) -> Result<(), RecordError> {
        names::dns1123_subdomain("node", &self.node)?;
        if self.mode != "vpc" && self.mode != "overlay" {
            return Err(RecordError::new(
                "mode",
                format!("{:?} is not vpc or overlay", self.mode),
            ));
        }
        if let Some(c) = &self.external_allow_cidrs {
            if c.len() > NODE_ALLOW_CIDRS_MAX {
                return Err(RecordError::new(
                    "external_allow_cidrs",
                    format!("{} networks, at most {NODE_ALLOW_CIDRS_MAX}", c.len()),
                ));
            }
        }
        if self.addresses.len() > NODE_ADDRESSES_MAX {
            return Err(RecordError::new(
                "addresses",
                format!(
                    "{} addresses, at most {NODE_ADDRESSES_MAX}",
                    self.addresses.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Decodes and validates a record from its JSON.
pub fn decode<T>(
    bytes: &[u8],
    validate: impl Fn(&T) -> Result<(), RecordError>,
) -> Result<T, RecordError>
where
    T: serde::de::DeserializeOwned,
{
    let rec: T =
        serde_json::from_slice(bytes).map_err(|e| RecordError::new("record", e.to_string()))?;
    validate(&rec)?;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_always_carries_its_name_label() {
        let ns =
            NamespaceRecord::new("x", Labels::from([("ns".into(), "x".into())])).expect("valid");
        assert_eq!(
            ns.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
            Some("x")
        );
        let forged = NamespaceRecord {
            name: "x".into(),
            labels: Labels::from([(NAMESPACE_NAME_LABEL.into(), "y".into())]),
        };
        assert!(forged.validate().is_err());
    }

    #[test]
    fn pod_records_decode_strictly_and_validate() {
        let ok = br#"{"namespace":"x","name":"a","labels":{"pod":"a"},"ports":[{"name":"serve-80-tcp","port":80}]}"#;
        let p: PodRecord = decode(ok, PodRecord::validate).expect("valid");
        assert_eq!(p.named_port("serve-80-tcp", Protocol::TCP), Some(80));
        assert_eq!(p.named_port("serve-80-tcp", Protocol::UDP), None);
        let unknown = br#"{"namespace":"x","name":"a","colour":"red"}"#;
        assert!(decode::<PodRecord>(unknown, PodRecord::validate).is_err());
        let long =
            br#"{"namespace":"x","name":"a","ports":[{"name":"abcdefghijklmnop","port":80}]}"#;
        let e = decode::<PodRecord>(long, PodRecord::validate).expect_err("must fail");
        assert_eq!(e.field, "ports[0].name");
        let dup = br#"{"namespace":"x","name":"a","ports":[{"name":"p","port":80},{"name":"p","port":81}]}"#;
        assert!(decode::<PodRecord>(dup, PodRecord::validate).is_err());
        let zero = br#"{"namespace":"x","name":"a","ports":[{"port":0}]}"#;
        assert!(decode::<PodRecord>(zero, PodRecord::validate).is_err());
    }

    #[test]
    fn pod_refs_parse_with_default_namespace() {
        assert_eq!(PodRef::parse("a").expect("valid").to_string(), "default/a");
        assert_eq!(PodRef::parse("x/a").expect("valid").to_string(), "x/a");
        assert!(PodRef::parse("x/a/b").is_err());
        assert!(PodRef::parse("X/a").is_err());
    }

    #[test]
    fn node_address_records_decode_strictly() {
        let ok = br#"{"node":"node-1","mode":"vpc","addresses":["10.0.1.10"]}"#;
        let r: NodeAddressesRecord = decode(ok, NodeAddressesRecord::validate).expect("valid");
        assert_eq!(r.addresses, vec![Ipv4Addr::new(10, 0, 1, 10)]);
        for bad in [
            &br#"{"node":"node-1","mode":"bgp","addresses":[]}"#[..],
            br#"{"node":"Node_1","mode":"vpc","addresses":[]}"#,
            br#"{"node":"n","mode":"vpc","addresses":[],"vtep":"x"}"#,
        ] {
            assert!(decode::<NodeAddressesRecord>(bad, NodeAddressesRecord::validate).is_err());
        }
    }

    /// An agent publishes its primary address and posture; an older
    /// agent's record (without them) still decodes, and one written
    /// without them carries no such keys (older readers keep reading it).
    #[test]
    fn node_records_carry_primary_and_posture_and_old_ones_still_read() {
        let old = br#"{"node":"node-1","mode":"vpc","addresses":["10.0.1.10"]}"#;
        let r: NodeAddressesRecord = decode(old, NodeAddressesRecord::validate).expect("old");
        assert_eq!(
            (
                r.primary,
                r.external_pod_access,
                r.external_allow_cidrs.clone()
            ),
            (None, None, None)
        );
        assert_eq!(serde_json::to_vec(&r).expect("json"), old.to_vec());
        let new = br#"{"node":"node-1","mode":"vpc","addresses":["10.0.1.10","10.0.1.11"],"primary":"10.0.1.10","external_pod_access":"allow","external_allow_cidrs":["192.0.2.0/24"]}"#;
        let r: NodeAddressesRecord = decode(new, NodeAddressesRecord::validate).expect("new");
        assert_eq!(r.primary, Some(Ipv4Addr::new(10, 0, 1, 10)));
        assert_eq!(r.external_pod_access, Some(ExternalPodAccess::Allow));
        assert_eq!(
            r.external_allow_cidrs,
            Some(vec!["192.0.2.0/24".parse().expect("net")])
        );
        let bad = br#"{"node":"node-1","mode":"vpc","addresses":[],"external_pod_access":"open"}"#;
        assert!(decode::<NodeAddressesRecord>(bad, NodeAddressesRecord::validate).is_err());
        let many = NodeAddressesRecord {
            node: "node-1".into(),
            mode: "vpc".into(),
            external_allow_cidrs: Some(vec![Ipv4Net::default(); NODE_ALLOW_CIDRS_MAX + 1]),
            ..NodeAddressesRecord::default()
        };
        assert!(many.validate().is_err());
    }

    #[test]
    fn endpoint_records_validate_their_names() {
        let e = EndpointRecord {
            node: "node-1".into(),
            container_id: "abc".into(),
            ifname: "eth0".into(),
            ip: Ipv4Addr::new(10, 0, 0, 5),
            pod: Some(PodRef::new("x", "a").expect("valid")),
        };
        assert!(e.validate().is_ok());
        let bad = EndpointRecord {
            container_id: "../x".into(),
            ..e
        };
        assert!(bad.validate().is_err());
    }
}
