//! The `podwire` CNI plugin: validates the call, asks the node agent for an
//! address, wires the pod, prints the result. Every verb of CNI 1.1.0.
//!
//! [`run`] takes the environment and stdin and returns what to print and the
//! exit status, so the binary stays a three-line `main`.

// Issue 6 item 16: an `as` cast that truncates, wraps or drops a sign turned
// an out-of-range value into a valid one; convert with try_from and an error.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod agent;
#[cfg(test)]
mod fake_tests;
mod netns;
mod verbs;

use std::ffi::OsStr;
use std::io::Read;

use podwire_cni::config::requested_version;
use podwire_cni::{CniError, Code, Command, Invocation, NetConf, Version};

/// What the process prints on stdout and exits with.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Outcome {
            stdout,
            exit_code: 0,
        }
    }
    fn err(e: CniError) -> Self {
        Outcome {
            stdout: e.to_json(),
            exit_code: 1,
        }
    }
}

/// Runs one plugin call. `env` is the whole environment as OS strings (as
/// [`std::env::vars_os`] gives it); only its `CNI_` variables are read.
/// `stdin` is read to its end, at most 1 MiB
/// ([`podwire_cni::input::MAX_CONFIG_BYTES`]).
pub fn run<I, K, V>(env: I, stdin: impl Read) -> Outcome
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    run_with(env, stdin, &podwire_netlink::Handle::new)
}

/// [`run`] with the node's netlink connection opened by `open_host` (the
/// seam root-free tests use to put the fake kernel in).
pub(crate) fn run_with<I, K, V, N>(
    env: I,
    stdin: impl Read,
    open_host: verbs::OpenHost<'_, N>,
) -> Outcome
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
    N: podwire_netlink::Netlink,
{
    // The call's one deadline counts from here.
    let started = std::time::Instant::now();
    let stdin = match podwire_cni::input::read_config(stdin) {
        Ok(bytes) => bytes,
        Err(e) => return Outcome::err(e),
    };
    let stdin = stdin.as_slice();
    // The error object echoes the version the runtime asked for, when known
    // (read only on the error path: the success path parses stdin once).
    let tag = |e: CniError| match requested_version(stdin) {
        Ok(v) => e.for_version(&v),
        Err(_) => e,
    };
    let inv = match Invocation::from_vars(env) {
        Ok(inv) => inv,
        Err(e) => return Outcome::err(tag(e)),
    };
    if inv.command == Command::Version {
        return match requested_version(stdin) {
            Ok(v) => Outcome::ok(
                serde_json::json!({
                    "cniVersion": v,
                    "supportedVersions": podwire_cni::version::supported_list(),
                })
                .to_string(),
            ),
            Err(e) => Outcome::err(e),
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return Outcome::err(tag(e)),
    };
    let min = match inv.command {
        Command::Check => Version::CHECK,
        Command::Gc | Command::Status => Version::GC_STATUS,
        _ => Version::new(0, 3, 0),
    };
    if conf.cni_version < min {
        return Outcome::err(tag(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "{:?} needs cniVersion {min} or later, config has {}",
                inv.command, conf.cni_version
            ),
        )));
    }
    match verbs::dispatch(&inv, &conf, started, open_host) {
        Ok(stdout) => Outcome::ok(stdout),
        Err(e) => Outcome::err(tag(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A socket path no agent listens on: calls that reach for the agent
    /// fail with a known code, calls that must not reach it never get there.
    pub(crate) const NO_AGENT: &str = "/run/podwire/pwt-no-such-agent.sock";

    pub(crate) fn conf(version: &str, extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"pw","type":"podwire","agentSocket":"{NO_AGENT}"{extra}}}"#
        )
    }

    pub(crate) fn code(o: &Outcome) -> u64 {
        let v: Value = serde_json::from_str(&o.stdout).unwrap_or(Value::Null);
        v["code"].as_u64().unwrap_or(0)
    }

    /// libcni's placeholders in the variables STATUS and GC do not need.
    #[test]
    fn status_and_gc_ignore_placeholder_variables() {
        let placeholders = |verb: &'static str| {
            vec![
                ("CNI_COMMAND", verb),
                ("CNI_CONTAINERID", ""),
                ("CNI_NETNS", "dummy"),
                ("CNI_IFNAME", "dummy"),
                ("CNI_PATH", "dummy"),
                ("CNI_ARGS", ""),
            ]
        };
        let st = run(placeholders("STATUS"), conf("1.1.0", "").as_bytes());
        assert_eq!(code(&st), 50, "{}", st.stdout);
        let gc = run(
            placeholders("GC"),
            conf("1.1.0", r#","cni.dev/valid-attachments":[]"#).as_bytes(),
        );
        assert_eq!(code(&gc), 11, "{}", gc.stdout);
        let v = run(placeholders("VERSION"), &br#"{"cniVersion":"1.0.0"}"#[..]);
        assert_eq!(v.exit_code, 0, "{}", v.stdout);
    }

    fn per_container<'a>(verb: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", "pwt1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", netns),
        ]
    }

    /// ADD and CHECK look at CNI_NETNS with statfs before anything else: a
    /// FIFO (opening it would hang), a file or a directory is code 3 before
    /// the agent is asked (here it would answer 11: there is none).
    #[test]
    fn add_and_check_refuse_a_netns_that_is_not_one_before_the_agent() {
        let dir = tempfile::Builder::new()
            .prefix("pwt-netns")
            .tempdir()
            .expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").expect("file");
        let missing = dir.path().join("missing");
        for (verb, version) in [("ADD", "1.0.0"), ("CHECK", "1.0.0")] {
            for path in [&fifo, &file, &dir.path().to_path_buf(), &missing] {
                let p = path.to_str().expect("utf-8 temp path");
                let o = run(per_container(verb, p), conf(version, "").as_bytes());
                assert_eq!(code(&o), 3, "{verb} {p}: {}", o.stdout);
                let msg = if path == &missing {
                    "does not exist"
                } else {
                    "not a network namespace"
                };
                assert!(o.stdout.contains(msg), "{verb} {p}: {}", o.stdout);
            }
        }
    }

    /// GC without `cni.dev/valid-attachments` released every pod of the
    /// network. Now code 7 naming the key, before the agent is asked (here
    /// it would answer 11: there is none).
    #[test]
    fn gc_without_valid_attachments_is_code_7_and_asks_nobody() {
        let o = run([("CNI_COMMAND", "GC")], conf("1.1.0", "").as_bytes());
        assert_eq!(code(&o), 7, "{}", o.stdout);
        assert!(
            o.stdout.contains("cni.dev/valid-attachments"),
            "{}",
            o.stdout
        );
        for empty in ["null", "[]"] {
            let extra = format!(r#","cni.dev/valid-attachments":{empty}"#);
            let o = run([("CNI_COMMAND", "GC")], conf("1.1.0", &extra).as_bytes());
            assert_eq!(code(&o), 11, "{empty}: {}", o.stdout);
        }
    }
}
