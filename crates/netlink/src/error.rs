use std::io;

/// Errors from a netlink operation. `Kernel` keeps the errno so callers can
/// tell "already exists" and "not found" apart from real failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("netlink decode: {0}")]
    Decode(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: nix::errno::Errno,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            Error::Kernel { source, .. } | Error::Netns { source, .. } => Some(*source),
            Error::Io(e) => e.raw_os_error().map(nix::errno::Errno::from_raw),
            _ => None,
        }
    }

    /// The object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(nix::errno::Errno::EEXIST)
    }

    /// The object (link, route, rule, address, neighbour) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
            || matches!(
                self.errno(),
                Some(nix::errno::Errno::ENOENT)
                    | Some(nix::errno::Errno::ESRCH)
                    | Some(nix::errno::Errno::ENODEV)
                    | Some(nix::errno::Errno::EADDRNOTAVAIL)
            )
    }
}
