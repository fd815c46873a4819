//! The `podwire` CNI plugin: validates the call, asks the node agent for an
//! address, wires the pod, prints the result. Every verb of CNI 1.1.0.
//!
//! [`run`] takes the environment and stdin and returns what to print and the
//! exit status, so the binary stays a three-line `main`.

mod agent;
mod verbs;

use std::ffi::OsStr;

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
pub fn run<I, K, V>(env: I, stdin: &[u8]) -> Outcome
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
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
    match verbs::dispatch(&inv, &conf) {
        Ok(stdout) => Outcome::ok(stdout),
        Err(e) => Outcome::err(tag(e)),
    }
}
