//! Whole-file writes a concurrent reader never sees half of: the bytes go
//! to a temporary file in the target's own directory (same filesystem, so
//! the rename is atomic), are synced, then renamed over the target. A
//! kubelet or runtime scanning the CNI directories sees the old file or the
//! new one, never a prefix.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use sha2::{Digest, Sha256};

/// Temporary files start with this, so an operator knows whose they are;
/// the leading dot keeps runtimes (which read `*.conf`, `*.conflist`,
/// `*.json`) from ever loading one.
pub const TEMP_PREFIX: &str = ".podwire-install.";

/// With the process id, makes temporary names unique (`create_new` refuses
/// a clash rather than sharing a file).
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `target` with permission bits `mode`, atomically.
pub fn write(target: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .with_context(|| format!("{} names no file", target.display()))?;
    let temp = dir.join(format!(
        "{TEMP_PREFIX}{}.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_temp(&temp, bytes, mode).and_then(|()| {
        fs::rename(&temp, target)
            .with_context(|| format!("renaming {} to {}", temp.display(), target.display()))
    });
    if result.is_err() {
        // Nothing half-done: the temporary file goes, the target is as it was.
        let _ = fs::remove_file(&temp);
    }
    result?;
    // The rename itself is durable only once the directory is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

fn write_temp(temp: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", temp.display()))?;
    // The umask may have narrowed `mode`; a plugin binary must be executable.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", temp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", temp.display()))
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads a whole file of at most `limit` bytes; `Ok(None)` when there is
/// none. A bigger file is an error, not a truncated read.
pub fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<Option<Vec<u8>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut buf = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > limit {
        anyhow::bail!("{} is larger than {limit} bytes", path.display());
    }
    Ok(Some(buf))
}

/// Temporary files of ours left in `dir` (by a write that was killed
/// midway); tests use it to check a write leaves none.
#[cfg(test)]
pub fn leftover_temps(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            found.push(entry.path());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("f.conflist");
        write(&target, b"old", 0o644).expect("first");
        write(&target, b"new contents", 0o755).expect("second");
        assert_eq!(fs::read(&target).expect("read"), b"new contents");
        let mode = fs::metadata(&target).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert!(leftover_temps(dir.path()).expect("list").is_empty());
    }

    #[test]
    fn a_concurrent_reader_sees_the_old_file_or_the_new_one_never_a_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("10-podwire.conflist");
        // Big enough that a plain in-place write would be seen midway.
        let a = vec![b'a'; 1 << 20];
        let b = vec![b'b'; 1 << 20];
        write(&target, &a, 0o644).expect("seed");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (target, stop) = (target.clone(), stop.clone());
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let got = fs::read(&target).expect("the file always exists");
                    assert!(
                        got == a || got == b,
                        "a partial file of {} bytes",
                        got.len()
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..40 {
            write(&target, if i % 2 == 0 { &b } else { &a }, 0o644).expect("write");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().expect("reader saw only whole files");
        assert!(reads > 0);
        assert!(leftover_temps(dir.path()).expect("list").is_empty());
    }

    #[test]
    fn a_failed_write_leaves_the_target_as_it_was_and_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("x");
        write(&target, b"kept", 0o644).expect("seed");
        // Renaming a file over a non-empty directory fails.
        let blocked = dir.path().join("d");
        fs::create_dir(&blocked).expect("mkdir");
        fs::write(blocked.join("inside"), b"").expect("fill");
        assert!(write(&blocked, b"new", 0o644).is_err());
        assert_eq!(fs::read(&target).expect("read"), b"kept");
        assert!(leftover_temps(dir.path()).expect("list").is_empty());
    }

    #[test]
    fn bounded_reads_refuse_big_files_and_report_missing_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("big");
        fs::write(&p, [0u8; 11]).expect("write");
        assert!(read_bounded(&p, 10).is_err());
        assert_eq!(
            read_bounded(&p, 11).expect("fits").map(|v| v.len()),
            Some(11)
        );
        assert!(read_bounded(&dir.path().join("none"), 10)
            .expect("missing is fine")
            .is_none());
    }

    #[test]
    fn sha256_is_the_standard_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
