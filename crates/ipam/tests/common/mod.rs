//! Test helpers: a datastore wrapper that records what is read, and the
//! check that every index entry matches the blocks exactly.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use podwire_ipam::block_store::BlockIpam;
use podwire_store::{Datastore, Entry, Event, Expect, Result, Revision, Snapshot, Write};

/// Passes everything through; remembers the keys `get` read and the
/// prefixes `list` read.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn Datastore>,
    reads: Mutex<Vec<String>>,
}

#[allow(dead_code)]
impl Counting {
    pub fn new(inner: Arc<dyn Datastore>) -> Counting {
        Counting {
            inner,
            reads: Mutex::new(Vec::new()),
        }
    }

    pub fn reset(&self) {
        self.reads.lock().expect("lock").clear();
    }

    pub fn reads(&self) -> Vec<String> {
        self.reads.lock().expect("lock").clone()
    }
}

impl Datastore for Counting {
    fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.reads.lock().expect("lock").push(key.to_string());
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Snapshot> {
        self.reads.lock().expect("lock").push(prefix.to_string());
        self.inner.list(prefix)
    }
    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<Revision> {
        self.inner.put(key, value, expect)
    }
    fn delete(&self, key: &str, expect: Revision) -> Result<()> {
        self.inner.delete(key, expect)
    }
    fn commit(&self, writes: &[Write]) -> Result<Revision> {
        self.inner.commit(writes)
    }
    fn watch(&self, prefix: &str, after: Revision) -> Result<Receiver<Result<Event>>> {
        self.inner.watch(prefix, after)
    }
}

#[allow(dead_code)]
pub fn assert_consistent(ipam: &BlockIpam) {
    let problems = ipam.verify().expect("verify");
    assert!(
        problems.is_empty(),
        "indexes disagree with blocks: {problems:#?}"
    );
}
