//! Who an address is for, as a type: a pod's attachment (network, container
//! id, interface — any of which may contain dots) or a node's tunnel. The
//! old string handles (`<network>.<container id>[.<ifname>]`) could not be
//! told apart (`pw` + `x.c1` = `pw.x` + `c1`); a handle is now compared
//! field by field and stored as its fields, never as one joined string.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Handle {
    /// A CNI attachment: exactly the runtime's (network, container, ifname).
    Attachment {
        network: String,
        container_id: String,
        ifname: String,
    },
    /// A node's VXLAN tunnel address.
    Tunnel { node: String },
}

impl Handle {
    pub fn attachment(network: &str, container_id: &str, ifname: &str) -> Handle {
        Handle::Attachment {
            network: network.to_string(),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        }
    }

    pub fn tunnel(node: &str) -> Handle {
        Handle::Tunnel {
            node: node.to_string(),
        }
    }

    /// The network of an attachment (None for a tunnel).
    pub fn network(&self) -> Option<&str> {
        match self {
            Handle::Attachment { network, .. } => Some(network),
            Handle::Tunnel { .. } => None,
        }
    }

    /// The handle's place under the handle index: each field escaped so no
    /// field can reach into the next (`/` and `%` never appear raw).
    pub(crate) fn key_path(&self) -> String {
        match self {
            Handle::Attachment {
                network,
                container_id,
                ifname,
            } => format!(
                "{}{}/{}",
                network_key_path(network),
                escape(container_id),
                escape(ifname)
            ),
            Handle::Tunnel { node } => format!("tunnel/{}", escape(node)),
        }
    }

    /// A v1 string handle as the v1 agent wrote it: `tunnel.<node>` for the
    /// node's own tunnel, else `<network>.<container id>` plus `.<ifname>`
    /// unless the interface (recorded in the holder's `ifname` attribute)
    /// was eth0. Container ids from CRI runtimes and podman are hex and have
    /// no dots; network names may: the container id is after the last dot.
    pub(crate) fn from_v1(
        handle: &str,
        node: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Option<Handle> {
        if handle.strip_prefix("tunnel.") == Some(node) {
            return Some(Handle::tunnel(node));
        }
        let ifname = attrs.get("ifname").map_or("eth0", String::as_str);
        let rest = if ifname == "eth0" {
            handle
        } else {
            handle.strip_suffix(ifname)?.strip_suffix('.')?
        };
        let (network, container_id) = rest.rsplit_once('.')?;
        if network.is_empty() || container_id.is_empty() {
            return None;
        }
        Some(Handle::attachment(network, container_id, ifname))
    }
}

/// The index prefix of a network's attachments.
pub(crate) fn network_key_path(network: &str) -> String {
    format!("attachment/{}/", escape(network))
}

/// Letters, digits, `.`, `_` and `-` as they are; every other byte as %XX.
/// Injective, and the result never contains `/`.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handle::Attachment {
                network,
                container_id,
                ifname,
            } => write!(
                f,
                "network {network:?} container {container_id:?} interface {ifname:?}"
            ),
            Handle::Tunnel { node } => write!(f, "tunnel of node {node:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_keep_fields_apart() {
        let a = Handle::attachment("pw", "x.c1", "eth0");
        let b = Handle::attachment("pw.x", "c1", "eth0");
        let c = Handle::attachment("pw", "c/1", "eth0");
        let d = Handle::attachment("pw", "c", "1/eth0");
        let paths: std::collections::BTreeSet<String> =
            [&a, &b, &c, &d].iter().map(|h| h.key_path()).collect();
        assert_eq!(paths.len(), 4);
        assert!(!a.key_path().starts_with(&network_key_path("pw.x")));
        assert!(b.key_path().starts_with(&network_key_path("pw.x")));
        assert_eq!(c.key_path(), "attachment/pw/c%2F1/eth0");
    }

    #[test]
    fn v1_handles_parse_as_the_v1_agent_wrote_them() {
        let mut attrs = BTreeMap::new();
        assert_eq!(
            Handle::from_v1("tunnel.n1", "n1", &attrs),
            Some(Handle::tunnel("n1"))
        );
        assert_eq!(
            Handle::from_v1("pw.x.abc", "n1", &attrs),
            Some(Handle::attachment("pw.x", "abc", "eth0"))
        );
        attrs.insert("ifname".into(), "net1".into());
        assert_eq!(
            Handle::from_v1("pw.abc.net1", "n1", &attrs),
            Some(Handle::attachment("pw", "abc", "net1"))
        );
        assert_eq!(Handle::from_v1("pw.abc", "n1", &attrs), None);
        assert_eq!(Handle::from_v1("nodots", "n1", &BTreeMap::new()), None);
    }
}
