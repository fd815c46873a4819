//! The `CNI_*` environment of one plugin call, validated as the spec says.
//!
//! Runtimes pass their whole environment on, so it is read as OS strings:
//! only `CNI_` variables are looked at, and only they can fail a call (a
//! non-UTF-8 `HOME` or `LANG` is none of the plugin's business).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use crate::error::excerpt;
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
    /// Set for ADD, DEL and CHECK; empty for the other verbs.
    pub container_id: String,
    /// Set for ADD and CHECK (absolute, not yet checked to be a namespace);
    /// on DEL only when given as an absolute path.
    pub netns: Option<PathBuf>,
    /// Set for ADD, DEL and CHECK.
    pub ifname: String,
    /// From `CNI_ARGS`, for ADD, DEL and CHECK.
    pub pod: PodArgs,
}

fn invalid(msg: String) -> CniError {
    CniError::new(Code::InvalidEnv, msg)
}

/// The `CNI_` variables of a call, as the OS gave them. Everything else in
/// the environment is dropped unread.
#[derive(Debug, Clone, Default)]
struct CniVars(HashMap<String, OsString>);

impl CniVars {
    /// A name given twice keeps its last value: libcni appends its own
    /// `CNI_` values after the environment it inherited (older versions
    /// without de-duplicating), so the last one is the runtime's.
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

    fn raw(&self, name: &str) -> Option<&OsStr> {
        self.0.get(name).map(OsString::as_os_str)
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
                    excerpt(&v.to_string_lossy())
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

/// Reads the pod identity from `CNI_ARGS` (`K=V;K=V`). Lenient, as libcni
/// expects with `IgnoreUnknown=1`: unknown keys, malformed pairs and other
/// plugins' values (whatever their bytes) are skipped; only a key podwire
/// uses whose value is not UTF-8 is an error.
pub(crate) fn parse_cni_args(raw: &OsStr) -> Result<PodArgs, CniError> {
    let mut pod = PodArgs::default();
    for pair in raw.as_encoded_bytes().split(|b| *b == b';') {
        let Some(eq) = pair.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (k, v) = (&pair[..eq], &pair[eq + 1..]);
        let slot = match k {
            b"K8S_POD_NAMESPACE" => &mut pod.namespace,
            b"K8S_POD_NAME" => &mut pod.name,
            b"K8S_POD_UID" => &mut pod.uid,
            b"K8S_POD_INFRA_CONTAINER_ID" => &mut pod.infra_container_id,
            _ => continue,
        };
        let v = std::str::from_utf8(v).map_err(|_| {
            invalid(format!(
                "CNI_ARGS: the value of {} is not valid UTF-8",
                String::from_utf8_lossy(k)
            ))
        })?;
        *slot = Some(v.to_string()).filter(|v| !v.is_empty());
    }
    Ok(pod)
}

impl Invocation {
    /// Reads the process environment (as OS strings: never panics).
    pub fn from_env() -> Result<Invocation, CniError> {
        Invocation::from_vars(std::env::vars_os())
    }

    /// Validates a call from environment pairs. Only `CNI_` names are read,
    /// and of those only what the verb needs (the spec's table): VERSION,
    /// STATUS and GC read nothing but `CNI_COMMAND`; DEL does not require
    /// `CNI_NETNS`. Anything else (libcni's `dummy` placeholders, `CNI_PATH`,
    /// which podwire never uses) is ignored, not validated.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Invocation, CniError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let env = CniVars::collect(vars);
        let command_raw = env
            .get("CNI_COMMAND")?
            .ok_or_else(|| invalid("CNI_COMMAND is not set".into()))?;
        let command = Command::parse(command_raw).ok_or_else(|| {
            invalid(format!(
                "CNI_COMMAND {:?} is not a CNI verb",
                excerpt(command_raw)
            ))
        })?;
        match command {
            Command::Add | Command::Check | Command::Del => {
                Invocation::per_container(command, &env)
            }
            Command::Status | Command::Gc | Command::Version => Ok(Invocation {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                pod: PodArgs::default(),
            }),
        }
    }

    /// ADD, CHECK and DEL: one attachment of one container.
    fn per_container(command: Command, env: &CniVars) -> Result<Invocation, CniError> {
        let container_id = env.get("CNI_CONTAINERID")?.unwrap_or_default();
        let ifname = env.get("CNI_IFNAME")?.unwrap_or_default();
        // DEL must work when the sandbox is gone: a netns value it cannot use
        // (not UTF-8, relative) is ignored like an absent one.
        let netns = if command == Command::Del {
            env.get("CNI_NETNS")
                .ok()
                .flatten()
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        } else {
            env.get("CNI_NETNS")?.map(PathBuf::from)
        };
        let mut missing = Vec::new();
        if container_id.is_empty() {
            missing.push("CNI_CONTAINERID");
        }
        if ifname.is_empty() {
            missing.push("CNI_IFNAME");
        }
        if netns.is_none() && command != Command::Del {
            missing.push("CNI_NETNS");
        }
        if !missing.is_empty() {
            return Err(invalid(format!(
                "required environment variables missing: {}",
                missing.join(", ")
            )));
        }
        if !valid_container_id(container_id) {
            return Err(invalid(format!(
                "CNI_CONTAINERID {:?} has characters other than letters, digits, '_', '.', '-' (or does not start with a letter or digit)",
                excerpt(container_id)
            )));
        }
        if !valid_ifname(ifname) {
            return Err(invalid(format!(
                "CNI_IFNAME {:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces, not '.' or '..')",
                excerpt(ifname)
            )));
        }
        if let Some(ns) = netns.as_deref().filter(|p| !p.is_absolute()) {
            return Err(invalid(format!(
                "CNI_NETNS {:?} is not an absolute path",
                excerpt(&ns.to_string_lossy())
            )));
        }
        let pod = match env.raw("CNI_ARGS") {
            Some(raw) => parse_cni_args(raw)?,
            None => PodArgs::default(),
        };
        Ok(Invocation {
            command,
            container_id: container_id.to_string(),
            netns,
            ifname: ifname.to_string(),
            pod,
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
    fn a_variable_given_twice_keeps_its_last_value() {
        use std::os::unix::ffi::OsStringExt;
        let vars: Vec<(OsString, OsString)> = vec![
            ("CNI_COMMAND".into(), OsString::from_vec(vec![0xff])),
            ("CNI_NETNS".into(), "/proc/1/ns/net".into()),
            ("CNI_COMMAND".into(), "VERSION".into()),
        ];
        let inv = Invocation::from_vars(vars).expect("last wins");
        assert_eq!(inv.command, Command::Version);
    }

    #[test]
    fn del_without_netns_is_fine_version_needs_only_command() {
        let mut e = add_env();
        e.insert("CNI_COMMAND".into(), "DEL".into());
        e.remove("CNI_NETNS");
        assert!(Invocation::from_map(&e).expect("del").netns.is_none());
        for verb in ["VERSION", "STATUS", "GC"] {
            let v = Invocation::from_map(&env(&[("CNI_COMMAND", verb)])).expect(verb);
            assert_eq!(v.container_id, "", "{verb}");
        }
    }

    /// What libcni sends: VERSION probes with `dummy` placeholders, CNI_PATH
    /// always, CNI_ARGS with IgnoreUnknown and keys for other plugins.
    #[test]
    fn each_verb_ignores_the_variables_it_does_not_need() {
        use std::os::unix::ffi::OsStringExt;
        let junk = || OsString::from_vec(vec![0xff, 0xfe]);
        let placeholders: Vec<(OsString, OsString)> = vec![
            ("CNI_CONTAINERID".into(), "".into()),
            ("CNI_NETNS".into(), "dummy".into()),
            ("CNI_IFNAME".into(), "dummy/../:x y".into()),
            ("CNI_PATH".into(), junk()),
            ("CNI_ARGS".into(), junk()),
        ];
        for verb in ["VERSION", "STATUS", "GC"] {
            let mut v = placeholders.clone();
            v.push(("CNI_COMMAND".into(), verb.into()));
            let inv = Invocation::from_vars(v).expect(verb);
            assert_eq!(inv.netns, None, "{verb}");
        }
        // DEL: a netns it cannot use is ignored, the attachment is still named.
        for netns in [OsString::from("dummy"), junk()] {
            let mut e: Vec<(OsString, OsString)> = add_env()
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
            e.retain(|(k, _)| k != "CNI_COMMAND" && k != "CNI_NETNS");
            e.push(("CNI_COMMAND".into(), "DEL".into()));
            e.push(("CNI_NETNS".into(), netns));
            let inv = Invocation::from_vars(e).expect("del");
            assert_eq!((inv.netns, inv.container_id.as_str()), (None, "abc-1.2_x"));
        }
        // ADD: CNI_PATH is never read; CNI_ARGS keys of others are skipped
        // whatever their bytes.
        let mut args = b"IgnoreUnknown=1;K8S_POD_NAME=web;OTHER=".to_vec();
        args.extend([0xff, b';', 0xfe, b';', b'=', b';']);
        let mut e: Vec<(OsString, OsString)> = add_env()
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        e.retain(|(k, _)| k != "CNI_ARGS");
        e.push(("CNI_ARGS".into(), OsString::from_vec(args)));
        e.push(("CNI_PATH".into(), junk()));
        let inv = Invocation::from_vars(e.clone()).expect("add");
        assert_eq!(inv.pod.name.as_deref(), Some("web"));
        // ... but a key podwire uses must be UTF-8.
        e.push((
            "CNI_ARGS".into(),
            OsString::from_vec(b"K8S_POD_NAMESPACE=\xff".to_vec()),
        ));
        e.retain(|(k, v)| k != "CNI_ARGS" || v.as_encoded_bytes().starts_with(b"K8S"));
        let err = Invocation::from_vars(e).expect_err("bad K8S value");
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("K8S_POD_NAMESPACE"), "{}", err.msg);
    }
}
