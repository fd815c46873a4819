//! Alone in its own test binary, so counting this process's threads means
//! something: an idle SQLite watch reports progress, and its polling thread
//! ends once nobody listens.

use std::time::{Duration, Instant};

use podwire_store::{Datastore, Event, Expect, SqliteStore};

fn watch_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "sqlite-watch")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn an_idle_sqlite_watch_reports_progress_and_stops_when_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(&dir.path().join("s.db")).expect("open");
    let r = s.put("k", b"v", Expect::Absent).expect("put");
    let rx = s.watch("k", r).expect("watch");
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(3))
            .expect("progress")
            .expect("ok"),
        Event::Progress(r)
    );
    assert_eq!(watch_threads(), 1);
    drop(rx);
    let t = Instant::now();
    while watch_threads() > 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(watch_threads(), 0, "the watch thread outlived its receiver");
}
