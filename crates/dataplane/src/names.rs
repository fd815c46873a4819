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

#[cfg(test)]
mod tests {
    use super::*;

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
