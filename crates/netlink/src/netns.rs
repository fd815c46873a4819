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
    let file = open_netns(path)?;
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

/// `NSFS_MAGIC` (linux/magic.h): namespace files live on nsfs.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// Opens a namespace file safely: non-blocking (a FIFO put where a
/// namespace should be cannot hang the caller), then checked on the open
/// file to be on nsfs, so what is checked is what is used (no race between
/// a check of the path and the open).
pub fn open_netns(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| Error::Netns {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            err(e
                .raw_os_error()
                .map(nix::errno::Errno::from_raw)
                .unwrap_or(nix::errno::Errno::ENOENT))
        })?;
    let st = nix::sys::statfs::fstatfs(&file).map_err(err)?;
    if u64::try_from(st.filesystem_type().0).ok() != Some(NSFS_MAGIC) {
        return Err(err(nix::errno::Errno::EINVAL));
    }
    Ok(file)
}

/// Joins the network namespace at `path` on the *calling* thread. For
/// single-threaded programs (the lab's helpers) that live in one namespace.
pub fn enter(path: &Path) -> Result<()> {
    let file = open_netns(path)?;
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
    let file = open_netns(path)?;
    switch_to(&file, &path.display().to_string(), f)
}

/// [`switch_in`] for a namespace already opened with [`open_netns`].
pub fn switch_into<T>(ns: &File, f: impl FnOnce() -> T) -> Result<T> {
    switch_to(ns, "(open namespace file)", f)
}

fn switch_to<T>(ns: &File, label: &str, f: impl FnOnce() -> T) -> Result<T> {
    let home = open_netns(Path::new("/proc/thread-self/ns/net"))?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Netns {
        path: label.to_string(),
        source,
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_or_a_file_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("pwt-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        // Nobody writes to it: a blocking open would hang this test.
        assert!(open_netns(&fifo).is_err());
        let file = dir.join("file");
        std::fs::write(&file, b"x").expect("file");
        assert!(open_netns(&file).is_err());
        assert!(open_netns(&dir.join("missing")).is_err());
        assert!(open_netns(Path::new("/proc/self/ns/net")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
