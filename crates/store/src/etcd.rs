//! etcd v3 backend. `etcd-client` is async; the agent's callers are plain
//! threads, so the store owns a small runtime and blocks on it. Every call
//! has a deadline: an unreachable etcd is an `Unavailable` error, not a hang.

use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::runtime::Runtime;

use crate::etcd_tls::{diagnose, TlsMaterial};
use crate::{
    check_commit, Datastore, Entry, EtcdTls, Event, Expect, Result, Revision, Snapshot, StoreError,
    Write,
};

const DEADLINE: Duration = Duration::from_secs(3);

pub struct EtcdStore {
    rt: Runtime,
    client: Client,
    endpoints: Vec<String>,
    /// With TLS: the files as read, for the diagnosis of a failure.
    tls: Option<TlsMaterial>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn key_of(kv: &etcd_client::KeyValue) -> Result<String> {
    kv.key_str()
        .map(str::to_string)
        .map_err(|e| StoreError::Backend(format!("key is not UTF-8: {e}")))
}

/// An etcd-client error in a line: for a gRPC status its message and its
/// deepest cause (a status's own text repeats the cause's debug form).
fn describe(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return e.to_string();
    };
    let mut msg = status.message().to_string();
    let mut deepest = None;
    let mut cur = std::error::Error::source(status);
    while let Some(err) = cur {
        deepest = Some(err);
        cur = err.source();
    }
    if let Some(d) = deepest.map(|d| d.to_string()) {
        if !msg.contains(&d) {
            msg = format!("{msg}: {d}");
        }
    }
    msg
}

impl EtcdStore {
    /// `endpoints` like `http://127.0.0.1:2379`, without TLS.
    pub fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        EtcdStore::connect_with(endpoints, &EtcdTls::default())
    }

    /// `endpoints` like `https://10.0.0.1:2379` with `tls` (a CA file at
    /// least), or `http://…` with an empty `tls`.
    /// A server that cannot be reached is `Unavailable`; one we cannot
    /// agree with on TLS (untrusted certificate, our certificate refused
    /// or missing) is `Tls`; bad files are `Config`, before any dialling.
    pub fn connect_with(endpoints: &[String], tls: &EtcdTls) -> Result<EtcdStore> {
        let secure = !tls.is_empty();
        if endpoints.is_empty() {
            return Err(StoreError::Config("no etcd endpoint".into()));
        }
        let scheme = if secure { "https://" } else { "http://" };
        if let Some(e) = endpoints.iter().find(|e| !e.starts_with(scheme)) {
            return Err(StoreError::Config(format!(
                "etcd endpoint {e}: with{} TLS files it must start with {scheme}",
                if secure { "" } else { "out" }
            )));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("runtime: {e}")))?;
        let material = secure.then(|| TlsMaterial::load(tls)).transpose()?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(DEADLINE)
            .with_timeout(DEADLINE);
        if let Some(m) = &material {
            opts = opts.with_tls(m.options());
        }
        let client = rt
            .block_on(async {
                tokio::time::timeout(DEADLINE, Client::connect(endpoints, Some(opts))).await
            })
            .map_err(|_| {
                unavailable(format!(
                    "etcd at {} did not answer within {DEADLINE:?}",
                    endpoints.join(",")
                ))
            })?
            .map_err(|e| unavailable(describe(&e)))?;
        let store = EtcdStore {
            rt,
            client,
            endpoints: endpoints.to_vec(),
            tls: material,
        };
        // The client connects lazily: ask once so a dead endpoint fails
        // here, and if it does, find out whether TLS is why.
        match store.get("/podwire/probe") {
            Ok(_) => Ok(store),
            Err(StoreError::Unavailable(msg)) => {
                Err(store.diagnose().unwrap_or(StoreError::Unavailable(msg)))
            }
            Err(e) => Err(e),
        }
    }

    /// The first TLS reason any endpoint gives for refusing us, found
    /// within one more deadline in all.
    fn diagnose(&self) -> Option<StoreError> {
        let all = async {
            for e in &self.endpoints {
                if let Some(err) = diagnose(e, self.tls.as_ref(), DEADLINE).await {
                    return Some(err);
                }
            }
            None
        };
        // The timer is made inside the runtime, which it needs.
        self.rt
            .block_on(async { tokio::time::timeout(DEADLINE, all).await })
            .ok()
            .flatten()
    }

    fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        self.rt
            .block_on(async { tokio::time::timeout(DEADLINE, f).await })
            .map_err(|_| {
                unavailable(format!(
                    "etcd at {} did not answer within {DEADLINE:?}",
                    self.endpoints.join(",")
                ))
            })?
            .map_err(|e| unavailable(describe(&e)))
    }

    /// One etcd `Txn`: a compare per expectation, the writes if all hold,
    /// else a read of each compared key so the conflict can be named.
    fn txn(&self, writes: &[Write]) -> Result<Revision> {
        check_commit(writes)?;
        let guarded: Vec<&Write> = writes.iter().filter(|w| w.expect != Expect::Any).collect();
        let compares: Vec<Compare> = guarded
            .iter()
            .filter_map(|w| match w.expect {
                Expect::Absent => Some(Compare::create_revision(
                    w.key.as_str(),
                    CompareOp::Equal,
                    0,
                )),
                Expect::Revision(r) => {
                    Some(Compare::mod_revision(w.key.as_str(), CompareOp::Equal, r))
                }
                Expect::Any => None,
            })
            .collect();
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|w| match &w.value {
                Some(v) => TxnOp::put(w.key.as_str(), v.clone(), None),
                None => TxnOp::delete(w.key.as_str(), None),
            })
            .collect();
        let reads: Vec<TxnOp> = guarded
            .iter()
            .map(|w| TxnOp::get(w.key.as_str(), None))
            .collect();
        let mut kv = self.client.kv_client();
        let txn = Txn::new().when(compares).and_then(ops).or_else(reads);
        let resp = self.run(async move { kv.txn(txn).await })?;
        if !resp.succeeded() {
            // Which expectation failed, from the reads of the else branch.
            let failed = guarded
                .iter()
                .zip(resp.op_responses())
                .find(|(w, r)| {
                    let current = match r {
                        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                        _ => None,
                    };
                    match w.expect {
                        Expect::Absent => current.is_some(),
                        Expect::Revision(rev) => current != Some(rev),
                        Expect::Any => false,
                    }
                })
                .map(|(w, _)| w.key.clone());
            return Err(StoreError::Conflict {
                key: failed
                    .or_else(|| guarded.first().map(|w| w.key.clone()))
                    .unwrap_or_default(),
            });
        }
        resp.header()
            .map(|h| h.revision())
            .ok_or_else(|| StoreError::Backend("txn answer without header".into()))
    }
}

impl Datastore for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Entry>> {
        let mut kv = self.client.kv_client();
        let k = key.to_string();
        let resp = self.run(async move { kv.get(k, None).await })?;
        resp.kvs()
            .first()
            .map(|kv| {
                Ok(Entry {
                    key: key_of(kv)?,
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision(),
                })
            })
            .transpose()
    }

    fn list(&self, prefix: &str) -> Result<Snapshot> {
        let mut kv = self.client.kv_client();
        let p = prefix.to_string();
        let resp =
            self.run(async move { kv.get(p, Some(GetOptions::new().with_prefix())).await })?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let entries = resp
            .kvs()
            .iter()
            .map(|kv| {
                Ok(Entry {
                    key: key_of(kv)?,
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Snapshot { entries, revision })
    }

    fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<Revision> {
        self.txn(&[Write::put(key, value.to_vec(), expect)])
    }

    fn delete(&self, key: &str, expect: Revision) -> Result<()> {
        self.txn(&[Write::delete(key, Expect::Revision(expect))])
            .map(|_| ())
    }

    fn commit(&self, writes: &[Write]) -> Result<Revision> {
        self.txn(writes)
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Receiver<Result<Event>>> {
        let mut client = self.client.clone();
        let p = prefix.to_string();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1);
        let mut stream = self.run(async move { client.watch(p, Some(opts)).await })?;
        let (tx, rx) = mpsc::channel();
        self.rt.spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            let _ = tx.send(Err(unavailable(format!(
                                "etcd cancelled the watch (compacted at {})",
                                resp.compact_revision()
                            ))));
                            return;
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let key = match key_of(kv) {
                                Ok(k) => k,
                                Err(e) => {
                                    let _ = tx.send(Err(e));
                                    continue;
                                }
                            };
                            let event = match ev.event_type() {
                                EventType::Put => Event::Put(Entry {
                                    key,
                                    value: kv.value().to_vec(),
                                    mod_revision: kv.mod_revision(),
                                }),
                                EventType::Delete => Event::Delete {
                                    key,
                                    revision: kv.mod_revision(),
                                },
                            };
                            if tx.send(Ok(event)).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Err(unavailable("etcd closed the watch stream")));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(unavailable(e)));
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
