//! Host-side interface names.

use sha1::{Digest, Sha1};

/// Host veth prefix in vpc mode: `eni`, as the Amazon VPC CNI names them.
pub const VPC_VETH_PREFIX: &str = "eni";
/// Host veth prefix in overlay mode.
pub const OVERLAY_VETH_PREFIX: &str = "pw";

/// `prefix` + the first 11 hex digits of SHA-1 of `"<namespace>.<name>"`
/// (the Amazon VPC CNI scheme, so operators find the same names), or of the
/// container id when the runtime gave no pod name.
pub fn host_veth_name(
    prefix: &str,
    pod_namespace: Option<&str>,
    pod_name: Option<&str>,
    container_id: &str,
) -> String {
    let key = match (pod_namespace, pod_name) {
        (Some(ns), Some(name)) => format!("{ns}.{name}"),
        (None, Some(name)) => format!("default.{name}"),
        _ => container_id.to_string(),
    };
    let digest = Sha1::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

/// The host veth name of an attachment whose pod's usual name is taken by
/// another live attachment (a second sandbox of the same pod, or a second
/// interface): derived from the container id and interface, so it is just as
/// stable and differs from the pod's.
pub fn fallback_veth_name(prefix: &str, container_id: &str, ifname: &str) -> String {
    host_veth_name(prefix, None, None, &format!("{container_id}/{ifname}"))
}

/// What a pod's host interface carries as its alias: the attachment that
/// owns it. DEL, CHECK and GC act only on interfaces whose alias is theirs.
/// Spelled out when it fits the kernel's 255 bytes (operators read it in
/// `ip link`), else a digest of the same triple.
pub fn owner_alias(network: &str, container_id: &str, ifname: &str) -> String {
    let plain = format!("podwire {network} {container_id} {ifname}");
    if plain.len() <= 255 && plain.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return plain;
    }
    let digest = Sha1::digest(format!("{network}\0{container_id}\0{ifname}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("podwire sha1:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_exact_and_bounded() {
        let a = owner_alias("pw", "c1", "eth0");
        assert_eq!(a, "podwire pw c1 eth0");
        assert_ne!(a, owner_alias("pw", "c1", "eth1"));
        assert_ne!(
            owner_alias("pw", "c1.eth1", "eth0"),
            owner_alias("pw", "c1", "eth1")
        );
        let long = owner_alias("pw", &"x".repeat(300), "eth0");
        assert!(
            long.len() <= 255 && long.starts_with("podwire sha1:"),
            "{long}"
        );
        assert_ne!(long, owner_alias("pw", &"x".repeat(301), "eth0"));
        let f = fallback_veth_name("eni", "c1", "eth0");
        assert_eq!(f.len(), 14);
        assert_ne!(f, host_veth_name("eni", Some("default"), Some("web"), "c1"));
    }

    #[test]
    fn matches_sha1_of_namespace_dot_name() {
        // A digest known independently of this code:
        // sha1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d.
        assert_eq!(host_veth_name("eni", None, None, "abc"), "enia9993e36470");
        let n = host_veth_name("eni", Some("default"), Some("web"), "c1");
        assert_eq!(n.len(), 14);
        assert!(n.starts_with("eni"));
        assert_ne!(n, host_veth_name("eni", Some("other"), Some("web"), "c1"));
    }
}
