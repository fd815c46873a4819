//! Is `CNI_NETNS` a network namespace? Asked with `statfs`, which never opens
//! the path: opening a FIFO blocks forever, and a file or directory would
//! only fail later, deep in netlink, after the agent allocated.

use std::path::Path;

use nix::errno::Errno;
use podwire_cni::{CniError, Code};

/// `NSFS_MAGIC` from linux/magic.h: namespace files (`/proc/<pid>/ns/*` and
/// their bind mounts under /run/netns) live on nsfs.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// What `statfs` says about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsPath {
    /// On nsfs: safe to open.
    Namespace,
    Missing,
    /// Exists, but is a FIFO, file, directory, … on another file system.
    NotNamespace,
    /// statfs itself failed (permission, loop, name too long, …).
    Unreadable(Errno),
}

pub fn probe(path: &Path) -> NetnsPath {
    match nix::sys::statfs::statfs(path) {
        // The field's type differs by architecture; a value that does not fit
        // u64 is no magic number we know.
        Ok(st) if u64::try_from(st.filesystem_type().0).ok() == Some(NSFS_MAGIC) => {
            NetnsPath::Namespace
        }
        Ok(_) => NetnsPath::NotNamespace,
        Err(Errno::ENOENT | Errno::ENOTDIR) => NetnsPath::Missing,
        Err(e) => NetnsPath::Unreadable(e),
    }
}

/// ADD and CHECK: the path must be a namespace, else code 3.
pub fn require(path: &Path) -> Result<(), CniError> {
    let why = match probe(path) {
        NetnsPath::Namespace => return Ok(()),
        NetnsPath::Missing => "does not exist".to_string(),
        NetnsPath::NotNamespace => {
            "is not a network namespace (not on nsfs: a file, directory or FIFO?)".to_string()
        }
        NetnsPath::Unreadable(e) => format!("cannot be examined ({e})"),
    };
    Err(CniError::new(
        Code::UnknownContainer,
        format!("network namespace {} {why}", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_one_and_others_are_not() {
        assert_eq!(probe(Path::new("/proc/self/ns/net")), NetnsPath::Namespace);
        let dir = tempfile::Builder::new()
            .prefix("pwt-netns")
            .tempdir()
            .expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert_eq!(probe(&fifo), NetnsPath::NotNamespace);
        assert_eq!(probe(dir.path()), NetnsPath::NotNamespace);
        assert_eq!(probe(&dir.path().join("x")), NetnsPath::Missing);
        assert_eq!(probe(&fifo.join("x")), NetnsPath::Missing);
        assert!(require(Path::new("/proc/self/ns/net")).is_ok());
        assert_eq!(require(&fifo).expect_err("fifo").code, 3);
    }
}
