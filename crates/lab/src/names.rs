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
pub fn ns_pod(lab: &str, pod: &str) -> String {
    format!("pw-{lab}-pod-{pod}")
}
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

pub fn check_pod_name(s: &str) -> Result<(), LabError> {
    check("pod", s, 40)?;
    if s == EXTERNAL || s == FABRIC || s.starts_with("node-") {
        return Err(LabError::Usage(format!(
            "pod name {s:?} is reserved for the lab's hosts"
        )));
    }
    Ok(())
}
