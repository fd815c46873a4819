//! The network configuration a runtime writes to the plugin's stdin.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::error::excerpt;
use crate::{CniError, CniResult, Code, Version};

/// Where pods get their addresses. The one mode type of the whole project:
/// the conflist, the agent's flags, the operator CLI and the lab's state all
/// parse it with [`FromStr`](std::str::FromStr) and print it with `Display`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Secondary IPs of the node's ENIs (the Amazon VPC CNI model).
    Vpc,
    /// Blocks of a separate pod CIDR over VXLAN (the Calico model).
    Overlay,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Vpc, Mode::Overlay];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Vpc => "vpc",
            Mode::Overlay => "overlay",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is neither `vpc` nor `overlay`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mode {0:?} must be \"vpc\" or \"overlay\"")]
pub struct UnknownMode(pub String);

impl std::str::FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_string()))
    }
}

/// One `(containerID, ifname)` pair from a GC request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The GC input key naming the attachments that are still valid.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

pub const DEFAULT_AGENT_SOCKET: &str = "/run/podwire/agent.sock";

/// A validated podwire network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    pub plugin_type: String,
    pub mode: Mode,
    pub agent_socket: PathBuf,
    pub mtu: Option<u32>,
    pub veth_prefix: Option<String>,
    /// `timeoutSeconds`: the one deadline of a plugin call, agent work
    /// included (the agent is told how much of it is left).
    pub timeout: std::time::Duration,
    pub prev_result: Option<CniResult>,
    /// GC: the attachments that are still valid. `None` when the config has
    /// no such key (GC refuses that); `null` or `[]` is `Some` of nothing.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Keys the spec defines or reserves; runtimes may pass any of them.
pub(crate) const SPEC_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "capabilities",
    "runtimeConfig",
    "args",
    "prevResult",
    "dns",
    "disableCheck",
    "disableGC",
    "loadOnlyInlinedPlugins",
];
pub(crate) const PODWIRE_KEYS: &[&str] =
    &["mode", "agentSocket", "mtu", "vethPrefix", "timeoutSeconds"];

/// `timeoutSeconds` when the conflist does not say: long enough for an ENI
/// attachment (AWS documents up to 10 s) and a few retries.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// The most `timeoutSeconds` may say.
pub const MAX_TIMEOUT_SECS: u64 = 600;

fn bad(msg: String) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

/// Network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn valid_network_name(name: &str) -> bool {
    crate::env::valid_container_id(name)
}

/// Reads just the `cniVersion` (for VERSION, whose stdin may carry nothing
/// else). Missing → the latest.
pub fn requested_version(stdin: &[u8]) -> Result<String, CniError> {
    if stdin.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Version::LATEST.to_string());
    }
    let v: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(Code::Decode, format!("config is not JSON: {e}")))?;
    Ok(v.get("cniVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| Version::LATEST.to_string()))
}

/// GC's valid list: `cni.dev/valid-attachments` (the spec's key) and
/// `cni.dev/attachments` (its name in the spec-1.1.0 tag). With both present
/// the union is valid: GC never releases what either lists.
fn valid_attachments(obj: &Map<String, Value>) -> Result<Option<Vec<Attachment>>, CniError> {
    let mut found = None;
    for key in [VALID_ATTACHMENTS_KEY, "cni.dev/attachments"] {
        let list: Vec<Attachment> = match obj.get(key) {
            None => continue,
            Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| CniError::new(Code::Decode, format!("{key}: {e}")))?,
        };
        found.get_or_insert_with(Vec::new).extend(list);
    }
    Ok(found)
}

impl NetConf {
    /// Parses and validates the config from stdin bytes.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::Decode,
                format!("network config is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                Code::Decode,
                "network config is not a JSON object",
            ));
        };
        let str_field = |obj: &Map<String, Value>, k: &str| -> Result<Option<String>, CniError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("field {k:?} must be a string"))),
            }
        };
        let version_raw = str_field(&obj, "cniVersion")?
            .ok_or_else(|| bad("required field \"cniVersion\" is missing".into()))?;
        let cni_version: Version = version_raw.parse()?;
        let name = str_field(&obj, "name")?
            .ok_or_else(|| bad("required field \"name\" is missing".into()))?;
        if !valid_network_name(&name) {
            return Err(bad(format!(
                "network name {:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$",
                excerpt(&name)
            )));
        }
        let plugin_type = str_field(&obj, "type")?
            .ok_or_else(|| bad("required field \"type\" is missing".into()))?;

        for (k, v) in &obj {
            let known = SPEC_KEYS.contains(&k.as_str())
                || PODWIRE_KEYS.contains(&k.as_str())
                || k.starts_with("cni.dev/");
            if !known {
                return Err(CniError::new(
                    Code::UnsupportedField,
                    format!(
                        "unsupported field {:?} (value {}) in network config; podwire accepts {}",
                        excerpt(k),
                        excerpt(&v.to_string()),
                        PODWIRE_KEYS.join(", ")
                    ),
                ));
            }
        }

        let mode = match str_field(&obj, "mode")?.as_deref() {
            None => Mode::Vpc,
            Some(name) => name
                .parse()
                .map_err(|_: UnknownMode| bad(UnknownMode(excerpt(name)).to_string()))?,
        };
        let agent_socket = str_field(&obj, "agentSocket")?
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
        if !agent_socket.is_absolute() {
            return Err(bad(format!(
                "agentSocket {:?} must be an absolute path",
                agent_socket
            )));
        }
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().and_then(|m| u32::try_from(m).ok()) {
                Some(m) if (576..=9001).contains(&m) => Some(m),
                _ => return Err(bad(format!("mtu {v} must be a number from 576 to 9001"))),
            },
        };
        let veth_prefix = str_field(&obj, "vethPrefix")?;
        if let Some(p) = &veth_prefix {
            // The name is prefix + 11 hex digits and must fit 15 bytes.
            if p.is_empty() || p.len() > 4 || !p.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(bad(format!(
                    "vethPrefix {:?} must be 1-4 letters or digits",
                    excerpt(p)
                )));
            }
            if ["eth", "lo", "vlan"].contains(&p.as_str()) {
                return Err(bad(format!("vethPrefix {p:?} is reserved")));
            }
        }
        let timeout = match obj.get("timeoutSeconds") {
            None | Some(Value::Null) => DEFAULT_TIMEOUT_SECS,
            Some(v) => match v.as_u64() {
                Some(t) if (1..=MAX_TIMEOUT_SECS).contains(&t) => t,
                _ => {
                    return Err(bad(format!(
                        "timeoutSeconds {v} must be a whole number from 1 to {MAX_TIMEOUT_SECS}"
                    )))
                }
            },
        };
        let timeout = std::time::Duration::from_secs(timeout);
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(CniResult::from_value(v)?),
        };
        let valid_attachments = valid_attachments(&obj)?;
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            mode,
            agent_socket,
            mtu,
            veth_prefix,
            timeout,
            prev_result,
            valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn minimal_and_full() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire"}"#).expect("ok");
        assert_eq!(c.mode, Mode::Vpc);
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        let c = parse(r#"{"cniVersion":"0.3.1","name":"pw","type":"podwire","mode":"overlay","mtu":8951,"vethPrefix":"cali","agentSocket":"/x.sock","dns":{}}"#).expect("ok");
        assert_eq!(
            (c.mode, c.mtu, c.veth_prefix.as_deref()),
            (Mode::Overlay, Some(8951), Some("cali"))
        );
        assert_eq!(
            c.timeout,
            std::time::Duration::from_secs(DEFAULT_TIMEOUT_SECS)
        );
        let c = parse(r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","timeoutSeconds":5}"#)
            .expect("ok");
        assert_eq!(c.timeout, std::time::Duration::from_secs(5));
    }

    #[test]
    fn codes() {
        let cases = [
            ("{not json", 6),
            ("[1]", 6),
            (r#"{"name":"pw","type":"podwire"}"#, 7),
            (r#"{"cniVersion":"1.0.0","type":"podwire"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"pw"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"-pw","type":"podwire"}"#, 7),
            (r#"{"cniVersion":"9.9.9","name":"pw","type":"podwire"}"#, 1),
            (
                r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","bogus":1}"#,
                2,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","ipam":{"type":"host-local"}}"#,
                2,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","mtu":70000}"#,
                7,
            ),
            // 2^32 + 1500: must not wrap to a valid 1500.
            (
                r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","mtu":4294968796}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","mode":"bridge"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","vethPrefix":"toolong"}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","timeoutSeconds":0}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","timeoutSeconds":601}"#,
                7,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","timeoutSeconds":1.5}"#,
                7,
            ),
        ];
        for (input, code) in cases {
            let e = parse(input).expect_err(input);
            assert_eq!(e.code, code, "{input}: {}", e.msg);
        }
        let e = parse(r#"{"cniVersion":"1.0.0","name":"pw","type":"podwire","bogus":1}"#)
            .expect_err("2");
        assert!(e.msg.contains("bogus"));
        // Outside input is echoed in short: the error object stays small.
        let long = "é".repeat(10_000);
        let e = parse(&format!(
            r#"{{"cniVersion":"1.0.0","name":"pw","type":"podwire","{long}":"{long}"}}"#
        ))
        .expect_err("2");
        assert!(e.msg.len() < 1000, "{}", e.msg.len());
    }

    /// Absent is not the same as empty: GC must not read a missing key as
    /// "nothing is valid". libcni sends a nil list as `null`.
    #[test]
    fn gc_valid_attachments_absent_null_empty_and_both_keys() {
        let base = r#""cniVersion":"1.1.0","name":"pw","type":"podwire""#;
        let c = parse(&format!("{{{base}}}")).expect("absent");
        assert_eq!(c.valid_attachments, None);
        for v in ["null", "[]"] {
            let c = parse(&format!(r#"{{{base},"cni.dev/valid-attachments":{v}}}"#)).expect(v);
            assert_eq!(c.valid_attachments, Some(vec![]), "{v}");
        }
        // Both keys: what either lists stays valid.
        let c = parse(&format!(
            r#"{{{base},"cni.dev/valid-attachments":null,"cni.dev/attachments":[{{"containerID":"a","ifname":"eth0"}}]}}"#
        ))
        .expect("both");
        assert_eq!(c.valid_attachments.expect("list").len(), 1);
    }

    #[test]
    fn gc_accepts_both_attachment_keys() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let s = format!(
                r#"{{"cniVersion":"1.1.0","name":"pw","type":"podwire","{key}":[{{"containerID":"a","ifname":"eth0"}}]}}"#
            );
            let c = parse(&s).expect(key);
            assert_eq!(c.valid_attachments.expect("list")[0].container_id, "a");
        }
    }
}
