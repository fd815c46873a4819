//! The datastore behind overlay mode: keys with revisions, compare-and-swap
//! writes and change notification, over two backends with one behaviour:
//!
//! - [`SqliteStore`]: one SQLite file in WAL mode that every agent on a host
//!   can share (what the lab uses; its nodes all live on one box);
//! - [`EtcdStore`]: etcd v3, for clusters across machines.
//!
//! Every write names the revision it expects, so two writers can never both
//! win; readers get the store revision with a listing and can watch for what
//! changed after it.

mod etcd;
mod sqlite;
#[cfg(feature = "test-util")]
pub mod testing;

use std::sync::mpsc::Receiver;

pub use etcd::EtcdStore;
pub use sqlite::SqliteStore;

/// A store-wide, increasing revision number.
pub type Revision = i64;

/// One key's value and the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: Revision,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist, last written at this revision.
    Revision(Revision),
}

/// A change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Entry),
    Delete {
        key: String,
        revision: Revision,
    },
    /// Nothing changed up to this revision (sent now and then while idle;
    /// lets a backend notice that nobody listens any more).
    Progress(Revision),
}

impl Event {
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(e) => e.mod_revision,
            Event::Delete { revision, .. } | Event::Progress(revision) => *revision,
        }
    }
}

/// Entries under a prefix, as of `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub entries: Vec<Entry>,
    pub revision: Revision,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key was not as the write expected: re-read and retry.
    #[error("{key} changed under us (compare-and-swap lost)")]
    Conflict { key: String },
    /// The store cannot be reached; retrying later may work.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something we cannot use.
    #[error("datastore: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The operations both backends provide, with the same meaning.
pub trait Datastore: Send + Sync + std::fmt::Debug {
    fn get(&self, key: &str) -> Result<Option<Entry>>;
    /// Every key under `prefix`, and the revision of the store at that time.
    fn list(&self, prefix: &str) -> Result<Snapshot>;
    /// Writes `value` if the key is as expected; returns the new revision.
    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<Revision>;
    /// Deletes the key if it was last written at `expect`.
    fn delete(&self, key: &str, expect: Revision) -> Result<()>;
    /// Changes under `prefix` after revision `after`, in order, until the
    /// receiver is dropped. A failure of the store arrives as an `Err`.
    fn watch(&self, prefix: &str, after: Revision) -> Result<Receiver<Result<Event>>>;
}

/// Opens a store from a URL-ish spec: `sqlite:/path/file.db` (or a plain
/// path) or `etcd://host:port[,host:port…]`.
pub fn open(spec: &str) -> Result<Box<dyn Datastore>> {
    if let Some(endpoints) = spec.strip_prefix("etcd://") {
        let eps: Vec<String> = endpoints
            .split(',')
            .map(|e| format!("http://{e}"))
            .collect();
        return Ok(Box::new(EtcdStore::connect(&eps)?));
    }
    let path = spec.strip_prefix("sqlite:").unwrap_or(spec);
    Ok(Box::new(SqliteStore::open(std::path::Path::new(path))?))
}
