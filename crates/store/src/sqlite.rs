//! SQLite backend: one file, WAL mode, shared by every process on the host.
//! Writes are `BEGIN IMMEDIATE` transactions (one writer at a time, others
//! wait on the busy timeout); each bumps a store revision and appends an
//! event row that watchers poll.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{
    check_commit, Datastore, Entry, Event, Expect, Result, Revision, Snapshot, StoreError, Write,
};

/// One row of the events table: revision, key, value (None = deleted).
type EventRow = (i64, String, Option<Vec<u8>>);

/// How often watchers look for new events.
const POLL: Duration = Duration::from_millis(5);
/// An idle watcher reports progress this often.
const PROGRESS: Duration = Duration::from_secs(1);
/// Events older than this many revisions are pruned.
const KEEP_EVENTS: i64 = 100_000;

#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(unavailable)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(unavailable)?;
    Ok(conn)
}

/// The least string above every string that starts with `prefix` (None:
/// no bound). SQLite compares TEXT bytewise and UTF-8's byte order is code
/// point order, so `prefix <= key < upper` is exactly "starts with prefix"
/// and, unlike LIKE (case-insensitive, never on the key index), reads only
/// the matching rows.
fn upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(c) = next {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = connect(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, mod_rev INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS events (rev INTEGER PRIMARY KEY, key TEXT NOT NULL, value BLOB);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta VALUES ('rev', 0);",
        )
        .map_err(unavailable)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every write in one `BEGIN IMMEDIATE` transaction: all expectations
    /// are checked before anything is written. Each write takes its own
    /// revision (the events table has one row per revision), all inside the
    /// one transaction, so readers see all of them or none.
    fn write(&self, writes: &[Write]) -> Result<Revision> {
        check_commit(writes)?;
        if !self.path.exists() {
            return Err(StoreError::Unavailable(format!(
                "{} is gone",
                self.path.display()
            )));
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        for w in writes {
            let current: Option<i64> = tx
                .query_row(
                    "SELECT mod_rev FROM kv WHERE key = ?1",
                    params![w.key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            let ok = match w.expect {
                Expect::Absent => current.is_none(),
                Expect::Revision(r) => current == Some(r),
                Expect::Any => true,
            };
            if !ok {
                return Err(StoreError::Conflict { key: w.key.clone() });
            }
        }
        let mut rev = 0;
        for w in writes {
            rev = tx
                .query_row(
                    "UPDATE meta SET value = value + 1 WHERE name = 'rev' RETURNING value",
                    [],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            match &w.value {
                Some(v) => tx.execute(
                    "INSERT OR REPLACE INTO kv VALUES (?1, ?2, ?3)",
                    params![w.key, v, rev],
                ),
                None => tx.execute("DELETE FROM kv WHERE key = ?1", params![w.key]),
            }
            .map_err(unavailable)?;
            tx.execute(
                "INSERT INTO events VALUES (?1, ?2, ?3)",
                params![rev, w.key, w.value],
            )
            .map_err(unavailable)?;
            if rev % 1000 == 0 {
                tx.execute(
                    "DELETE FROM events WHERE rev < ?1",
                    params![rev - KEEP_EVENTS],
                )
                .map_err(unavailable)?;
            }
        }
        tx.commit().map_err(unavailable)?;
        Ok(rev)
    }
}

impl Datastore for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.conn()
            .query_row(
                "SELECT value, mod_rev FROM kv WHERE key = ?1",
                params![key],
                |r| {
                    Ok(Entry {
                        key: key.to_string(),
                        value: r.get(0)?,
                        mod_revision: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(unavailable)
    }

    fn list(&self, prefix: &str) -> Result<Snapshot> {
        let mut conn = self.conn();
        // One read transaction: entries and revision are consistent.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(unavailable)?;
        let revision: i64 = tx
            .query_row("SELECT value FROM meta WHERE name = 'rev'", [], |r| {
                r.get(0)
            })
            .map_err(unavailable)?;
        let entries = {
            // Two statements so the planner sees a plain range on the key.
            let (sql, upper) = match upper_bound(prefix) {
                Some(u) => (
                    "SELECT key, value, mod_rev FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key",
                    u,
                ),
                None => (
                    "SELECT key, value, mod_rev FROM kv WHERE key >= ?1 AND ?2 = '' ORDER BY key",
                    String::new(),
                ),
            };
            let mut stmt = tx.prepare(sql).map_err(unavailable)?;
            let rows = stmt
                .query_map(params![prefix, upper], |r| {
                    Ok(Entry {
                        key: r.get(0)?,
                        value: r.get(1)?,
                        mod_revision: r.get(2)?,
                    })
                })
                .map_err(unavailable)?;
            rows.collect::<std::result::Result<Vec<_>, _>>()
                .map_err(unavailable)?
        };
        tx.commit().map_err(unavailable)?;
        Ok(Snapshot { entries, revision })
    }

    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<Revision> {
        self.write(&[Write::put(key, value.to_vec(), expect)])
    }

    fn delete(&self, key: &str, expect: Revision) -> Result<()> {
        self.write(&[Write::delete(key, Expect::Revision(expect))])
            .map(|_| ())
    }

    fn commit(&self, writes: &[Write]) -> Result<Revision> {
        self.write(writes)
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Receiver<Result<Event>>> {
        // Each watcher polls on its own connection.
        let conn = connect(&self.path)?;
        let (tx, rx) = mpsc::channel();
        let lower = prefix.to_string();
        // The same exact range as `list` (the revision index drives this
        // query, so the optional bound costs nothing).
        let upper = upper_bound(prefix);
        std::thread::Builder::new()
            .name("sqlite-watch".into())
            .spawn(move || {
                let mut last = after;
                let mut idle_since = std::time::Instant::now();
                loop {
                    let batch: rusqlite::Result<Vec<EventRow>> = conn
                        .prepare_cached("SELECT rev, key, value FROM events WHERE rev > ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3) ORDER BY rev")
                        .and_then(|mut s| s.query_map(params![last, lower, upper], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect());
                    match batch {
                        Ok(rows) => {
                            if !rows.is_empty() {
                                idle_since = std::time::Instant::now();
                            } else if idle_since.elapsed() >= PROGRESS {
                                // The only way to learn the receiver is gone.
                                idle_since = std::time::Instant::now();
                                if tx.send(Ok(Event::Progress(last))).is_err() {
                                    return;
                                }
                            }
                            for (rev, key, value) in rows {
                                last = rev;
                                let ev = match value {
                                    Some(value) => Event::Put(Entry { key, value, mod_revision: rev }),
                                    None => Event::Delete { key, revision: rev },
                                };
                                if tx.send(Ok(ev)).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            if tx.send(Err(unavailable(e))).is_err() {
                                return;
                            }
                        }
                    }
                    std::thread::sleep(POLL);
                }
            })
            .map_err(|e| StoreError::Backend(format!("watch thread: {e}")))?;
        Ok(rx)
    }
}
