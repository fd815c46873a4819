//! The `CNI_*` environment of one plugin call, validated as the spec says.
//!
//! Runtimes pass their whole environment on, so it is read as OS strings:
//! only `CNI_` variables are looked at, and only they can fail a call (a
//! non-UTF-8 `HOME` or `LANG` is none of the plugin's business).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use crate::{CniError, Code};

/// The verb of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// Pod identity from `CNI_ARGS` (Kubernetes runtimes set these).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub infra_container_id: Option<String>,
}

/// One validated plugin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// Set for ADD, DEL and CHECK.
    pub container_id: String,
    /// Required for ADD and CHECK; may be absent on DEL.
    pub netns: Option<PathBuf>,
    /// Set for ADD, DEL and CHECK.
    pub ifname: String,
    pub pod: PodArgs,
    pub cni_path: Vec<PathBuf>,
}

fn invalid(msg: String) -> CniError {
    CniError::new(Code::InvalidEnv, msg)
}

/// The `CNI_` variables of a call, as the OS gave them. Everything else in
/// the environment is dropped unread.
#[derive(Debug, Clone, Default)]
struct CniVars(HashMap<String, OsString>);

impl CniVars {
    fn collect<I, K, V>(vars: I) -> CniVars
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        CniVars(
            vars.into_iter()
                .filter_map(|(k, v)| {
                    let k = k.as_ref().to_str()?;
                    k.starts_with("CNI_")
                        .then(|| (k.to_string(), v.as_ref().to_os_string()))
                })
                .collect(),
        )
    }

    /// The value of `name`; empty counts as unset. Not UTF-8: code 4.
    fn get(&self, name: &str) -> Result<Option<&str>, CniError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) => match v.to_str() {
                Some("") => Ok(None),
                Some(s) => Ok(Some(s)),
                None => Err(invalid(format!(
                    "{name} is not valid UTF-8 ({:?})",
                    v.to_string_lossy()
                ))),
            },
        }
    }
}

/// Container ids follow the network-name pattern `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Interface names the kernel accepts: 1–15 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

fn parse_cni_args(raw: &str) -> PodArgs {
    let mut pod = PodArgs::default();
    // Lenient: unknown keys and malformed pairs are ignored (runtimes send
    // `IgnoreUnknown=1` plus keys for other plugins).
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = Some(v.to_string()).filter(|v| !v.is_empty());
        match k {
            "K8S_POD_NAMESPACE" => pod.namespace = v,
            "K8S_POD_NAME" => pod.name = v,
            "K8S_POD_UID" => pod.uid = v,
            "K8S_POD_INFRA_CONTAINER_ID" => pod.infra_container_id = v,
            _ => {}
        }
    }
    pod
}

impl Invocation {
    /// Reads the process environment (as OS strings: never panics).
    pub fn from_env() -> Result<Invocation, CniError> {
        Invocation::from_vars(std::env::vars_os())
    }

    /// Validates a call from environment pairs; only `CNI_` names are read.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Invocation, CniError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let env = CniVars::collect(vars);
        let get = |k: &str| env.get(k);
        let command_raw =
            get("CNI_COMMAND")?.ok_or_else(|| invalid("CNI_COMMAND is not set".into()))?;
        let command = Command::parse(command_raw)
            .ok_or_else(|| invalid(format!("CNI_COMMAND {command_raw:?} is not a CNI verb")))?;
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);

        let mut missing = Vec::new();
        let container_id = get("CNI_CONTAINERID")?.unwrap_or_default().to_string();
        let ifname = get("CNI_IFNAME")?.unwrap_or_default().to_string();
        let netns = get("CNI_NETNS")?.map(PathBuf::from);
        if per_container {
            if container_id.is_empty() {
                missing.push("CNI_CONTAINERID");
            }
            if ifname.is_empty() {
                missing.push("CNI_IFNAME");
            }
            if netns.is_none() && command != Command::Del {
                missing.push("CNI_NETNS");
            }
        }
        if command == Command::Gc && get("CNI_PATH")?.is_none() {
            missing.push("CNI_PATH");
        }
        if !missing.is_empty() {
            return Err(invalid(format!(
                "required environment variables missing: {}",
                missing.join(", ")
            )));
        }
        if per_container {
            if !valid_container_id(&container_id) {
                return Err(invalid(format!(
                    "CNI_CONTAINERID {container_id:?} has characters other than letters, digits, '_', '.', '-' (or does not start with a letter or digit)"
                )));
            }
            if !valid_ifname(&ifname) {
                return Err(invalid(format!(
                    "CNI_IFNAME {ifname:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces, not '.' or '..')"
                )));
            }
        }
        if let Some(ns) = &netns {
            if !ns.is_absolute() {
                return Err(invalid(format!(
                    "CNI_NETNS {:?} is not an absolute path",
                    ns
                )));
            }
        }
        let cni_path = get("CNI_PATH")?
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            pod: parse_cni_args(get("CNI_ARGS")?.unwrap_or_default()),
            cni_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Invocation {
        fn from_map(env: &HashMap<String, String>) -> Result<Invocation, CniError> {
            Invocation::from_vars(env)
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn add_env() -> HashMap<String, String> {
        env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1.2_x"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;junk;X=1",
            ),
        ])
    }

    #[test]
    fn valid_add() {
        let inv = Invocation::from_map(&add_env()).expect("valid");
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.pod.namespace.as_deref(), Some("default"));
        assert_eq!(inv.pod.name.as_deref(), Some("web"));
    }

    #[test]
    fn every_bad_env_is_code_4_and_names_the_variable() {
        let cases: Vec<(&str, &str, &str)> = vec![
            ("CNI_COMMAND", "", "CNI_COMMAND"),
            ("CNI_COMMAND", "FROB", "CNI_COMMAND"),
            ("CNI_CONTAINERID", "", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "-bad", "CNI_CONTAINERID"),
            ("CNI_CONTAINERID", "a/b", "CNI_CONTAINERID"),
            ("CNI_IFNAME", "", "CNI_IFNAME"),
            ("CNI_IFNAME", "..", "CNI_IFNAME"),
            ("CNI_IFNAME", "a:b", "CNI_IFNAME"),
            ("CNI_IFNAME", "sixteen-chars-xx", "CNI_IFNAME"),
            ("CNI_IFNAME", "e th0", "CNI_IFNAME"),
            ("CNI_NETNS", "", "CNI_NETNS"),
            ("CNI_NETNS", "relative/path", "CNI_NETNS"),
        ];
        for (k, v, named) in cases {
            let mut e = add_env();
            e.insert(k.into(), v.into());
            let err = Invocation::from_map(&e).expect_err(&format!("{k}={v:?}"));
            assert_eq!(err.code, 4, "{k}={v:?}");
            assert!(err.msg.contains(named), "{k}={v:?}: {}", err.msg);
        }
    }

    #[test]
    fn non_utf8_is_ignored_outside_cni_vars_and_named_inside() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![b'x', 0xff]);
        let mut vars: Vec<(OsString, OsString)> = add_env()
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        vars.push(("LANG".into(), bad()));
        vars.push((bad(), "1".into()));
        assert!(Invocation::from_vars(vars.clone()).is_ok());
        for name in ["CNI_IFNAME", "CNI_CONTAINERID", "CNI_COMMAND"] {
            let mut v = vars.clone();
            v.retain(|(k, _)| k != name);
            v.push((name.into(), bad()));
            let e = Invocation::from_vars(v).expect_err(name);
            assert_eq!(e.code, 4, "{name}");
            assert!(e.msg.contains(name) && e.msg.contains("UTF-8"), "{}", e.msg);
        }
    }

    #[test]
    fn del_without_netns_is_fine_version_needs_only_command() {
        let mut e = add_env();
        e.insert("CNI_COMMAND".into(), "DEL".into());
        e.remove("CNI_NETNS");
        assert!(Invocation::from_map(&e).expect("del").netns.is_none());
        let v = Invocation::from_map(&env(&[("CNI_COMMAND", "VERSION")])).expect("version");
        assert_eq!(v.command, Command::Version);
        let gc = Invocation::from_map(&env(&[("CNI_COMMAND", "GC")])).expect_err("gc");
        assert!(gc.msg.contains("CNI_PATH"));
    }
}
