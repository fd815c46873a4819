//! Entering network namespaces. Namespaces are per thread, so work inside
//! another namespace runs on a short-lived thread that `setns`es first; the
//! caller's thread never changes namespace.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::{Error, Result};

/// Runs `f` on a fresh thread that has joined the network namespace at
/// `path`, and returns its result.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let file = File::open(path).map_err(|e| Error::Netns {
        path: path.display().to_string(),
        source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc_enoent())),
    })?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Netns {
                path: path.display().to_string(),
                source,
            })?;
            Ok(f())
        });
        handle
            .join()
            .unwrap_or_else(|_| Err(Error::Decode("thread in netns panicked".into())))
    })
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

/// Joins the network namespace at `path` on the *calling* thread. For
/// single-threaded programs (the lab's helpers) that live in one namespace.
pub fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::Netns {
        path: path.display().to_string(),
        source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc_enoent())),
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Netns {
        path: path.display().to_string(),
        source,
    })
}
