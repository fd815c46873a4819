//! Writing `/proc/sys/net` keys. The value applies to the network namespace
//! of the calling thread (use [`crate::netns::run_in`] for another one).

use std::fs;

use crate::{Error, Result};

/// Writes `value` to `/proc/sys/<key>` where `key` uses `/` separators, e.g.
/// `net/ipv4/ip_forward`.
pub fn write(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    fs::write(&path, value).map_err(|e| match e.raw_os_error() {
        Some(code) => Error::Kernel {
            op: format!("sysctl {key}={value}"),
            source: nix::errno::Errno::from_raw(code),
        },
        None => Error::Io(e),
    })
}

/// Reads `/proc/sys/<key>`, trimmed.
pub fn read(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{key}");
    Ok(fs::read_to_string(path)?.trim().to_string())
}
