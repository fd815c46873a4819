//! The ADD result, held in the newest (1.1.0) shape and printed in the shape
//! of whichever version the runtime asked for.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;

use crate::{CniError, Code, Version};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces in the container; empty on the host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<Ipv4Addr>,
    /// 1.1.0 only; 253 = link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An ADD result (also what `prevResult` carries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Parses a `prevResult` of any supported version (extra fields such as
    /// `ips[].version` are ignored).
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        serde_json::from_value(v.clone()).map_err(|e| {
            CniError::new(Code::Decode, format!("prevResult is not a CNI result: {e}"))
        })
    }

    /// Renders the result in the shape of `version`.
    pub fn to_value(&self, version: Version) -> Value {
        let v11 = version >= Version::new(1, 1, 0);
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    m.insert("mac".into(), json!(i.mac));
                }
                if let (true, Some(mtu)) = (v11, i.mtu) {
                    m.insert("mtu".into(), json!(mtu));
                }
                if !i.sandbox.is_empty() {
                    m.insert("sandbox".into(), json!(i.sandbox));
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if version.result_has_ip_version() {
                    m.insert("version".into(), json!("4"));
                }
                m.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    m.insert("interface".into(), json!(i));
                }
                Value::Object(m)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    m.insert("gw".into(), json!(gw.to_string()));
                }
                if let (true, Some(scope)) = (v11, r.scope) {
                    m.insert("scope".into(), json!(scope));
                }
                Value::Object(m)
            })
            .collect();
        json!({
            "cniVersion": version.to_string(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({})),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "eni0123456789a".into(),
                    mac: "0e:00:00:00:00:01".into(),
                    mtu: Some(9001),
                    sandbox: String::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0e:00:00:00:00:02".into(),
                    mtu: Some(9001),
                    sandbox: "/run/netns/p".into(),
                },
            ],
            ips: vec![IpConfig {
                address: "10.0.3.240/32".parse().expect("ip"),
                gateway: Some(Ipv4Addr::new(169, 254, 1, 1)),
                interface: Some(1),
            }],
            routes: vec![RouteEntry {
                dst: "0.0.0.0/0".parse().expect("dst"),
                gw: Some(Ipv4Addr::new(169, 254, 1, 1)),
                scope: Some(0),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn shapes_per_version() {
        let r = sample();
        let v030 = r.to_value(Version::new(0, 3, 0));
        assert_eq!(v030["cniVersion"], "0.3.0");
        assert_eq!(v030["ips"][0]["version"], "4");
        assert!(v030["interfaces"][0].get("mtu").is_none());
        let v100 = r.to_value(Version::new(1, 0, 0));
        assert!(v100["ips"][0].get("version").is_none());
        assert!(v100["interfaces"][0].get("mtu").is_none());
        assert!(v100["routes"][0].get("scope").is_none());
        let v110 = r.to_value(Version::new(1, 1, 0));
        assert_eq!(v110["interfaces"][1]["mtu"], 9001);
        assert_eq!(v110["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(v110["ips"][0]["interface"], 1);
    }

    #[test]
    fn every_version_round_trips_through_prev_result() {
        let r = sample();
        for v in crate::version::SUPPORTED {
            let back = CniResult::from_value(&r.to_value(v)).expect("parse");
            assert_eq!(back.ips, r.ips, "{v}");
            assert_eq!(back.interfaces.len(), 2);
        }
    }
}
