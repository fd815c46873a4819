//! Where the podwire binaries the lab runs are.

use std::path::{Path, PathBuf};

use crate::LabError;

/// Where the podwire binaries are: beside the running one, or
/// `PODWIRE_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PODWIRE_BIN_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(super) fn bin(name: &str) -> Result<PathBuf, LabError> {
    let p = bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(LabError::Usage(format!(
            "{} not found (build the workspace, or set PODWIRE_BIN_DIR)",
            p.display()
        )))
    }
}
