//! The lab's naming contract (tests and operators rely on it).

use std::path::PathBuf;

use crate::LabError;

pub const DEFAULT_LAB: &str = "lab";
pub const EXTERNAL: &str = "external";
pub const FABRIC: &str = "fabric";

/// Labs live under this directory, one folder each.
pub fn lab_root() -> PathBuf {
    std::env::var_os("PODWIRE_LAB_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/podwire/lab"))
}

pub fn lab_dir(lab: &str) -> PathBuf {
    lab_root().join(lab)
}

pub fn ns_fabric(lab: &str) -> String {
    format!("pw-{lab}-fabric")
}
pub fn ns_external(lab: &str) -> String {
    format!("pw-{lab}-external")
}
pub fn ns_node(lab: &str, i: usize) -> String {
    format!("pw-{lab}-node-{i}")
}
/// A pod's network namespace: `pw-<lab>-pod-<name>` in namespace
/// `default` (as before namespaces existed), `pw-<lab>-pod-<ns>-<name>`
/// otherwise. Two pods could meet in one name (`x-a` in default, `a` in
/// `x`): `lab pod add` refuses the second. Netns names are file names (255
/// bytes; ours stay under 130), and no interface name derives from them.
pub fn ns_pod(lab: &str, namespace: &str, pod: &str) -> String {
    if namespace == DEFAULT_NAMESPACE {
        format!("pw-{lab}-pod-{pod}")
    } else {
        format!("pw-{lab}-pod-{namespace}-{pod}")
    }
}

/// A pod's container id, unique in the lab as its netns is.
pub fn container_id(lab: &str, namespace: &str, pod: &str) -> String {
    if namespace == DEFAULT_NAMESPACE {
        format!("pw{lab}-{pod}")
    } else {
        format!("pw{lab}-{namespace}-{pod}")
    }
}

/// The Kubernetes namespace of pods created without one.
pub const DEFAULT_NAMESPACE: &str = "default";
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

fn check(kind: &str, s: &str, max: usize) -> Result<(), LabError> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Usage(format!("{kind} name {s:?} must be 1-{max} lowercase letters, digits or '-' (not at either end)")))
    }
}

pub fn check_lab_name(s: &str) -> Result<(), LabError> {
    check("lab", s, 16)
}

/// A Kubernetes namespace of the lab: a DNS-1123 label, at most 63.
pub fn check_namespace_name(s: &str) -> Result<(), LabError> {
    check("namespace", s, 63)
}

pub fn check_pod_name(s: &str) -> Result<(), LabError> {
    check("pod", s, 40)?;
    if s == EXTERNAL || s == FABRIC || s.starts_with("node-") {
        return Err(LabError::Usage(format!(
            "pod name {s:?} is reserved for the lab's hosts"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_netns_names_keep_the_default_namespace_short() {
        assert_eq!(ns_pod("lab", "default", "web"), "pw-lab-pod-web");
        assert_eq!(ns_pod("lab", "x", "a"), "pw-lab-pod-x-a");
        assert_eq!(container_id("lab", "default", "web"), "pwlab-web");
        assert_eq!(container_id("lab", "x", "a"), "pwlab-x-a");
        // The longest names the checks let through still make a file name.
        let longest = ns_pod(&"l".repeat(16), &"n".repeat(63), &"p".repeat(40));
        assert!(longest.len() < 255, "{}", longest.len());
        assert!(check_namespace_name(&"n".repeat(63)).is_ok());
        assert!(check_namespace_name(&"n".repeat(64)).is_err());
        assert!(check_namespace_name("X").is_err());
    }
}
