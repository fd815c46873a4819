//! Kubernetes' rules for names, label keys and values and port names
//! (k8s.io/apimachinery validation: DNS-1123 labels and subdomains,
//! qualified names, IANA service names), and the CNI spec's rule for
//! container ids.

use crate::RecordError;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const PORT_NAME_MAX: usize = 15;
/// Container ids are bounded by us (the spec gives no limit): long enough
/// for every runtime's ids.
const CONTAINER_ID_MAX: usize = 256;
const IFNAME_MAX: usize = 15;

fn err(field: &str, reason: impl Into<String>) -> RecordError {
    RecordError::new(field, reason)
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric.
/// Namespace names are these.
pub fn dns1123_label(field: &str, s: &str) -> Result<(), RecordError> {
    if s.is_empty() || s.len() > DNS1123_LABEL_MAX {
        return Err(err(
            field,
            format!("{s:?} must be 1-{DNS1123_LABEL_MAX} characters"),
        ));
    }
    let ok = s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum);
    if !ok {
        return Err(err(
            field,
            format!("{s:?} must be lower-case letters, digits and '-', starting and ending with a letter or digit"),
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
/// Pod names and label-key prefixes are these.
pub fn dns1123_subdomain(field: &str, s: &str) -> Result<(), RecordError> {
    if s.is_empty() || s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(err(
            field,
            format!("{s:?} must be 1-{DNS1123_SUBDOMAIN_MAX} characters"),
        ));
    }
    for part in s.split('.') {
        dns1123_label(field, part).map_err(|_| {
            err(
                field,
                format!("{s:?} must be dot-separated parts of lower-case letters, digits and '-', each starting and ending with a letter or digit"),
            )
        })?;
    }
    Ok(())
}

/// 1-63 of `[A-Za-z0-9_.-]`, starting and ending alphanumeric (the name part
/// of a label key, a label value when not empty).
fn qualified_part(field: &str, s: &str, what: &str) -> Result<(), RecordError> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok = !s.is_empty()
        && s.len() <= QUALIFIED_NAME_MAX
        && s.chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum);
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("{what} {s:?} must be 1-{QUALIFIED_NAME_MAX} of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"),
        ))
    }
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn label_key(field: &str, key: &str) -> Result<(), RecordError> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            dns1123_subdomain(field, prefix)
                .map_err(|e| err(field, format!("label key {key:?}: prefix: {}", e.reason)))?;
            qualified_part(field, name, "label key name")
        }
        None => qualified_part(field, key, "label key"),
    }
}

/// A label value: empty, or like the name part of a key.
pub fn label_value(field: &str, value: &str) -> Result<(), RecordError> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > LABEL_VALUE_MAX {
        return Err(err(
            field,
            format!(
                "label value of {} characters is longer than {LABEL_VALUE_MAX}",
                value.len()
            ),
        ));
    }
    qualified_part(field, value, "label value")
}

/// A port name (IANA_SVC_NAME): 1-15 of `[a-z0-9-]`, at least one letter,
/// no '-' at either end and no "--".
pub fn port_name(field: &str, s: &str) -> Result<(), RecordError> {
    if s.is_empty() || s.len() > PORT_NAME_MAX {
        return Err(err(
            field,
            format!("port name {s:?} must be 1-{PORT_NAME_MAX} characters"),
        ));
    }
    let ok = s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("port name {s:?} must be lower-case letters, digits and '-', with at least one letter, no '-' at either end and no \"--\""),
        ))
    }
}

/// A container id as the CNI spec allows: alphanumeric first, then
/// alphanumerics, '_', '.' and '-'.
pub fn container_id(field: &str, s: &str) -> Result<(), RecordError> {
    let ok = !s.is_empty()
        && s.len() <= CONTAINER_ID_MAX
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("container id {s:?} must be 1-{CONTAINER_ID_MAX} of letters, digits, '_', '.' and '-', starting with a letter or digit"),
        ))
    }
}

/// An interface name as Linux allows it (1-15 bytes, no '/', no
/// whitespace, not "." or "..").
pub fn ifname(field: &str, s: &str) -> Result<(), RecordError> {
    let ok = !s.is_empty()
        && s.len() <= IFNAME_MAX
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!(
                "interface name {s:?} must be 1-{IFNAME_MAX} visible characters without '/' or ':'"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names() {
        for ok in ["x", "kube-system", "a1", &"a".repeat(63)] {
            assert!(dns1123_label("f", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "a/b"] {
            assert!(dns1123_label("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_names_are_subdomains() {
        assert!(dns1123_subdomain("f", "web-0.blue").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a/b", &"a".repeat(254)] {
            assert!(dns1123_subdomain("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for ok in [
            "app",
            "kubernetes.io/metadata.name",
            "a.b_c-d",
            "example.com/x",
        ] {
            assert!(label_key("f", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "-a",
            "a b",
            "Ex.com/a",
            "a/b/c",
            &"k".repeat(64),
        ] {
            assert!(label_key("f", bad).is_err(), "{bad}");
        }
        for ok in ["", "v", "V1.2_3-x"] {
            assert!(label_value("f", ok).is_ok(), "{ok}");
        }
        for bad in ["-v", "v-", "a b", "a/b", &"v".repeat(64)] {
            assert!(label_value("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_names_follow_iana_svc_name() {
        for ok in ["http", "serve-80-tcp", "a1"] {
            assert!(port_name("f", ok).is_ok(), "{ok}");
        }
        for bad in ["", "80", "-a", "a-", "a--b", "A", "abcdefghijklmnop", "a_b"] {
            assert!(port_name("f", bad).is_err(), "{bad}");
        }
        let e = port_name("ports[0].name", "abcdefghijklmnop").expect_err("must fail");
        assert_eq!(e.field, "ports[0].name");
    }

    #[test]
    fn container_ids_and_ifnames() {
        assert!(container_id("f", "abc123_.-").is_ok());
        for bad in ["", "_a", "a/b", "a b", &"a".repeat(257)] {
            assert!(container_id("f", bad).is_err(), "{bad}");
        }
        assert!(ifname("f", "eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "abcdefghijklmnop"] {
            assert!(ifname("f", bad).is_err(), "{bad}");
        }
    }
}
