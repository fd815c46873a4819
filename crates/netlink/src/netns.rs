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

/// Runs `f` on the *calling* thread inside the network namespace at `path`,
/// then returns the thread to its own namespace (also if `f` panics). Cheaper
/// than [`run_in`] (no thread), for short work such as opening a socket; `f`
/// must not start threads that expect the caller's namespace.
pub fn switch_in<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    let home = File::open("/proc/thread-self/ns/net").map_err(|e| Error::Netns {
        path: "/proc/thread-self/ns/net".into(),
        source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc_enoent())),
    })?;
    enter(path)?;
    struct Back(File);
    impl Drop for Back {
        fn drop(&mut self) {
            // Failing to return would leave this thread in the wrong
            // namespace: nothing safe can follow, so stop the process.
            if setns(&self.0, CloneFlags::CLONE_NEWNET).is_err() {
                std::process::abort();
            }
        }
    }
    let _back = Back(home);
    Ok(f())
}
