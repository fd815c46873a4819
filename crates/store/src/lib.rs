//! The datastore behind overlay mode: keys with revisions, compare-and-swap
//! writes and change notification, over two backends with one behaviour:
//!
//! - [`SqliteStore`]: one SQLite file in WAL mode that every agent on a host
//!   can share (what the lab uses; its nodes all live on one box);
//! - [`EtcdStore`]: etcd v3, for clusters across machines.
//!
//! Every write names the revision it expects, so two writers can never both
//! win; readers get the store revision with a listing and can watch for what
//! changed after it. [`Datastore::commit`] applies several writes as one:
//! all of them or none (SQLite: one transaction; etcd: one `Txn` whose
//! compares are the writes' expectations).
//!
//! Each backend is a cargo feature (`sqlite`, `etcd`; both on by default),
//! so a program that needs one does not build the other.
//!
//! etcd can be reached over TLS with a client certificate ([`EtcdTls`];
//! spec `etcd+https://…`, see [`open_with`]): whoever can reach a plain
//! etcd can rewrite every node's record, so a cluster's etcd should
//! require client certificates.

#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
mod etcd_tls;
#[cfg(feature = "pki")]
pub mod pki;
mod spec;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "test-util")]
pub mod testing;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;

#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;
pub use spec::{parse_etcd_spec, EtcdSpec};
#[cfg(feature = "sqlite")]
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
    /// No condition on this key. Only for writes whose consistency another
    /// write of the same [`Datastore::commit`] guards (an index entry
    /// written together with the compare-and-swap of the record it indexes).
    Any,
}

/// One write of a [`Datastore::commit`]: `value` None deletes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub expect: Expect,
}

impl Write {
    pub fn put(key: impl Into<String>, value: Vec<u8>, expect: Expect) -> Write {
        Write {
            key: key.into(),
            value: Some(value),
            expect,
        }
    }

    pub fn delete(key: impl Into<String>, expect: Expect) -> Write {
        Write {
            key: key.into(),
            value: None,
            expect,
        }
    }
}

/// The most writes one [`Datastore::commit`] takes (etcd refuses more than
/// 128 operations per transaction by default; ours stay far below).
pub const MAX_COMMIT_WRITES: usize = 64;

/// Refuses what neither backend could apply atomically: nothing to do, too
/// many writes, or one key written twice (etcd rejects that).
fn check_commit(writes: &[Write]) -> Result<()> {
    if writes.is_empty() {
        return Err(StoreError::Backend("empty transaction".into()));
    }
    if writes.len() > MAX_COMMIT_WRITES {
        return Err(StoreError::Backend(format!(
            "transaction of {} writes (at most {MAX_COMMIT_WRITES})",
            writes.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for w in writes {
        if !seen.insert(w.key.as_str()) {
            return Err(StoreError::Backend(format!(
                "transaction writes {} twice",
                w.key
            )));
        }
    }
    Ok(())
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
    /// How we were told to reach the store cannot work (a bad spec, a
    /// certificate file missing or unreadable): fix the configuration.
    #[error("datastore configuration: {0}")]
    Config(String),
    /// The TLS handshake with the store failed: its certificate is not
    /// signed by our CA, or it refused our client certificate (or the
    /// lack of one). Retrying will not help.
    #[error("datastore TLS: {0}")]
    Tls(String),
}

/// Client TLS for etcd, as file names: the CA that signed the servers'
/// certificates, and this client's certificate and key (Calico's
/// ETCD_CA_CERT_FILE, ETCD_CERT_FILE and ETCD_KEY_FILE). All None: no TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl EtcdTls {
    pub fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.cert.is_none() && self.key.is_none()
    }
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
    /// Applies every write if every expectation holds, else none of them:
    /// `Conflict` names a key whose expectation failed. Returns the revision
    /// of the last write. Deleting an absent key under `Expect::Any` is no
    /// error. At most [`MAX_COMMIT_WRITES`] writes, each key once.
    fn commit(&self, writes: &[Write]) -> Result<Revision>;
    /// Changes under `prefix` after revision `after`, in order, until the
    /// receiver is dropped. A failure of the store arrives as an `Err`.
    fn watch(&self, prefix: &str, after: Revision) -> Result<Receiver<Result<Event>>>;
}

/// Opens a store from a URL-ish spec, without TLS: see [`open_with`].
pub fn open(spec: &str) -> Result<Box<dyn Datastore>> {
    open_with(spec, &EtcdTls::default())
}

/// Opens a store from a URL-ish spec:
///
/// - `sqlite:/path/file.db` (an absolute path: the agent's working
///   directory is nobody's choice, and a typo must not become a private
///   one-node datastore);
/// - `etcd://host:port[,host:port…]`: etcd over plain HTTP;
/// - `etcd+https://host:port[,host:port…]`: etcd over TLS, verified with
///   `tls.ca_cert` (required: no system roots are trusted), presenting
///   `tls.cert` and `tls.key` (both or neither) as client certificate.
///
/// TLS files given for a store that would not use them are an error, not
/// ignored: the operator meant a TLS etcd.
pub fn open_with(spec: &str, tls: &EtcdTls) -> Result<Box<dyn Datastore>> {
    if let Some(etcd) = parse_etcd_spec(spec, tls)? {
        return open_etcd(etcd);
    }
    if !tls.is_empty() {
        return Err(StoreError::Config(format!(
            "etcd TLS files were given but the datastore {spec} is SQLite"
        )));
    }
    open_sqlite(sqlite_path(spec)?)
}

/// The file of a `sqlite:/absolute/path` spec; anything else is refused
/// with the forms that are understood.
fn sqlite_path(spec: &str) -> Result<&str> {
    match spec.strip_prefix("sqlite:") {
        Some(path) if path.starts_with('/') && path.len() > 1 => Ok(path),
        Some(path) => Err(StoreError::Config(format!(
            "datastore {spec:?}: the SQLite file {path:?} must be an absolute path (sqlite:/var/lib/podwire/datastore.db)"
        ))),
        None => Err(StoreError::Config(format!(
            "datastore {spec:?} is not understood: use sqlite:/absolute/path.db, etcd://host:port[,host:port…] or etcd+https://host:port[,…]"
        ))),
    }
}

#[cfg(feature = "etcd")]
fn open_etcd(etcd: EtcdSpec) -> Result<Box<dyn Datastore>> {
    Ok(Box::new(EtcdStore::connect_with(
        &etcd.endpoints,
        &etcd.tls,
    )?))
}

#[cfg(not(feature = "etcd"))]
fn open_etcd(etcd: EtcdSpec) -> Result<Box<dyn Datastore>> {
    Err(StoreError::Config(format!(
        "etcd at {}: this program was built without etcd support (feature `etcd`)",
        etcd.endpoints.join(",")
    )))
}

#[cfg(feature = "sqlite")]
fn open_sqlite(path: &str) -> Result<Box<dyn Datastore>> {
    Ok(Box::new(SqliteStore::open(std::path::Path::new(path))?))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(path: &str) -> Result<Box<dyn Datastore>> {
    Err(StoreError::Backend(format!(
        "{path}: this program was built without SQLite support (feature `sqlite`)"
    )))
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn only_known_forms_and_absolute_sqlite_paths_are_datastores() {
        assert_eq!(
            sqlite_path("sqlite:/var/lib/x.db").ok(),
            Some("/var/lib/x.db")
        );
        for bad in [
            "bogus",
            "sqlite:relative.db",
            "sqlite:",
            "etcd:host:2379",
            "10.0.0.10:2379",
            "/abs/but/no/scheme.db",
        ] {
            let e = match open(bad) {
                Ok(_) => panic!("{bad:?} was opened"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("sqlite:/"), "{bad}: {e}");
        }
        assert!(
            !std::path::Path::new("bogus").exists(),
            "no file may be created for a typo"
        );
    }
}
