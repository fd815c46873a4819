//! nftables: rulesets are applied whole, as one `nft -f -` transaction, so a
//! table is never seen half-written.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{DataplaneError, Result};

/// Applies `rules` (nft syntax) atomically in the caller's network namespace.
pub fn apply(rules: &str) -> Result<()> {
    let fail = DataplaneError::Nft;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("running nft: {e} (is nftables installed?)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "rejected the ruleset: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}
