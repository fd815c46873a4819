//! Forgetting a released address's flows. The kernel keeps connection
//! tracking entries for minutes to days; a pod that gets a reused address
//! must not inherit them (an established entry would let replies of the old
//! pod's connections in, and NAT decisions stick to entries).
//!
//! Done with conntrack-tools' `conntrack -D`, which dumps the table, filters
//! and deletes each match (ctnetlink deletes by exact tuple only): once by
//! original source, once by original destination, once by reply source (a
//! flow DNATed to the pod, such as a Service's).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::{DataplaneError, Result};

/// Deletes every conntrack entry of `ip` in the caller's network namespace.
/// Returns how many were deleted.
pub fn flush(ip: Ipv4Addr) -> Result<u64> {
    // Nothing tracked in this namespace (no rule needs conntrack, or the
    // module is not loaded): nothing to forget, and three process starts
    // saved on every release.
    if tracked_entries() == Some(0) {
        return Ok(0);
    }
    let ip = ip.to_string();
    let mut deleted = 0u64;
    for filter in ["--orig-src", "--orig-dst", "--reply-src"] {
        let out = Command::new("conntrack")
            .args(["-D", "-f", "ipv4", filter, &ip])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                DataplaneError::Conntrack(format!(
                    "running conntrack: {e} (is conntrack-tools installed?)"
                ))
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // "conntrack v1.4.7 (conntrack-tools): N flow entries have been deleted."
        // It exits 1 when N is 0, so the count, not the status, tells.
        match deleted_count(&stderr) {
            Some(n) => deleted = deleted.saturating_add(n),
            None => {
                return Err(DataplaneError::Conntrack(format!(
                    "conntrack -D {filter} {ip}: {}",
                    stderr.trim()
                )))
            }
        }
    }
    Ok(deleted)
}

/// How many entries the caller's namespace tracks (`None`: unknown, e.g.
/// the module is not loaded, or the file is unreadable).
fn tracked_entries() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn deleted_count(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| {
            l.split("): ")
                .nth(1)?
                .strip_suffix(" flow entries have been deleted.")
        })
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_conntracks_words() {
        assert_eq!(
            deleted_count(
                "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n"
            ),
            Some(3)
        );
        assert_eq!(
            deleted_count("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted."),
            Some(0)
        );
        assert_eq!(
            deleted_count("conntrack v1.4.7 (conntrack-tools): Operation not permitted"),
            None
        );
        assert_eq!(deleted_count(""), None);
    }
}
