//! The plugin-facing Unix socket: one request per connection, each on its
//! own thread (plugin calls for different pods run in parallel), with every
//! resource a caller can hold bounded: the request line's size
//! ([`podwire_proto::MAX_MESSAGE`]), how long the agent waits for it
//! ([`REQUEST_READ`]), and how many connections are served at once
//! ([`MAX_CONNECTIONS`]).
//!
//! An ADD whose answer cannot be delivered (the plugin gave up, or its
//! deadline passed while the agent waited for the cloud) is undone here,
//! before the connection is dropped, so no address is held for a pod that
//! will never be wired.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podwire_proto::{read_request, write_response, ErrorKind, Request, Response};

use crate::metrics::Metrics;
use crate::{AgentError, Backend};

/// Connections served at once; more are answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 128;
/// How long a connection may take to send its request line.
pub const REQUEST_READ: Duration = Duration::from_secs(10);
/// Kept back from the caller's deadline for the answer to travel and the
/// plugin to wire the pod.
const REPLY_MARGIN: Duration = Duration::from_secs(2);

pub fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    let err = |source| AgentError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // A directory the agent creates is root-only; one that exists
        // already (/run, /tmp, a shared mount) is left exactly as it is —
        // the socket itself is 0600.
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another agent is serving this socket",
            )));
        }
        fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    // Only root may ask for addresses.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Counts a connection for as long as it is served.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn serve(listener: UnixListener, backend: Arc<dyn Backend>, metrics: Arc<Metrics>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            refuse_busy(&stream);
            continue;
        }
        let slot = Slot(Arc::clone(&active));
        let backend = Arc::clone(&backend);
        let metrics = Arc::clone(&metrics);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                let _slot = slot;
                handle(&stream, backend.as_ref(), &metrics);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a connection thread: {e}");
        }
    }
}

/// Tells an over-limit caller to come back (never blocking the accept loop
/// for long: the answer is small and the write gives up quickly).
fn refuse_busy(stream: &UnixStream) {
    let busy = Response::Error {
        kind: ErrorKind::TryAgain,
        message: format!("podwire-agent is serving {MAX_CONNECTIONS} calls already; try again"),
    };
    let _ = write_response(stream, &busy, Instant::now() + Duration::from_millis(100));
}

fn handle(stream: &UnixStream, backend: &dyn Backend, metrics: &Metrics) {
    let received = Instant::now();
    let incoming = match read_request(stream, received + REQUEST_READ) {
        Ok(i) => i,
        Err(e) => {
            let response = match e {
                podwire_proto::ProtoError::Version(v) => Response::Error {
                    kind: ErrorKind::Protocol,
                    message: format!(
                        "plugin speaks protocol v{v}, agent speaks v{}: install the plugin binary that came with this agent (podwire-agent install-cni)",
                        podwire_proto::PROTOCOL_VERSION
                    ),
                },
                other => Response::Error {
                    kind: ErrorKind::BadRequest,
                    message: other.to_string(),
                },
            };
            let _ = write_response(stream, &response, Instant::now() + Duration::from_secs(1));
            return;
        }
    };
    let answer_by = received + incoming.time_left;
    let margin = REPLY_MARGIN.min(incoming.time_left / 10);
    let work_by = answer_by.checked_sub(margin).unwrap_or(answer_by);
    let add_key = match &incoming.request {
        Request::Add(a) => Some(a.key.clone()),
        _ => None,
    };
    let verb = crate::metrics::verb_label(&incoming.request);
    let response = backend.handle(incoming.request, work_by);
    // Timed from the request's arrival: what the plugin waited for.
    metrics.cni_request(
        verb,
        &crate::metrics::result_label(&response),
        received.elapsed(),
    );
    let delivered =
        Instant::now() < answer_by && write_response(stream, &response, answer_by).is_ok();
    if !delivered {
        if let (Some(key), Response::Allocated { allocation }) = (add_key, &response) {
            // Nobody will wire this address: give it back now rather than
            // leaving it held until a DEL or GC.
            tracing::warn!(ip = %allocation.ip, container = %key.container_id, "the plugin did not take the ADD answer; releasing the address");
            let _ = backend.handle(
                Request::Del { key },
                Instant::now() + Duration::from_secs(10),
            );
        } else {
            tracing::warn!("could not deliver an answer to the plugin");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_proto::{Allocation, AttachmentKey, Egress};
    use std::sync::Mutex;

    /// Records what it was asked; ADD answers after `add_delay`.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<Request>>,
        add_delay: Duration,
    }

    fn key() -> AttachmentKey {
        AttachmentKey {
            network: "pw".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }
    }

    impl Backend for Recorder {
        fn handle(&self, req: Request, _deadline: Instant) -> Response {
            self.calls.lock().expect("lock").push(req.clone());
            match req {
                Request::Add(a) => {
                    std::thread::sleep(self.add_delay);
                    Response::Allocated {
                        allocation: Allocation {
                            key: a.key,
                            ip: "10.0.0.5".parse().expect("ip"),
                            egress: Egress::Main,
                            pod_namespace: None,
                            pod_name: None,
                            mtu: None,
                        },
                    }
                }
                _ => Response::Released {
                    allocations: Vec::new(),
                },
            }
        }
        fn state(&self) -> crate::introspect::NodeState {
            crate::introspect::NodeState::default()
        }
    }

    fn socket_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pwt-agent-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn start(tag: &str, backend: Arc<Recorder>) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = socket_dir(tag);
        let sock = dir.join("agent.sock");
        let listener = bind(&sock).expect("bind");
        std::thread::spawn(move || serve(listener, backend, Arc::new(Metrics::new())));
        (dir, sock)
    }

    fn add_request() -> Request {
        Request::Add(podwire_proto::AddRequest {
            key: key(),
            netns: "/run/netns/x".into(),
            pod_namespace: None,
            pod_name: None,
        })
    }

    #[test]
    fn an_add_answer_nobody_takes_is_released() {
        let backend = Arc::new(Recorder {
            add_delay: Duration::from_millis(600),
            ..Recorder::default()
        });
        let (dir, sock) = start("giveup", Arc::clone(&backend));
        // The plugin gives up after 200 ms; the agent answers after 600 ms.
        let r = podwire_proto::call(
            &sock,
            &add_request(),
            Instant::now() + Duration::from_millis(200),
        );
        assert!(r.is_err(), "the caller gave up: {r:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let calls = backend.calls.lock().expect("lock").clone();
            if calls
                .iter()
                .any(|c| matches!(c, Request::Del { key: k } if *k == key()))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no release after the undelivered ADD: {calls:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn every_answer_is_counted_by_verb_and_result() {
        let backend = Arc::new(Recorder::default());
        let dir = socket_dir("count");
        let sock = dir.join("agent.sock");
        let listener = bind(&sock).expect("bind");
        let metrics = Arc::new(Metrics::new());
        let m = Arc::clone(&metrics);
        std::thread::spawn(move || serve(listener, backend, m));
        let soon = || Instant::now() + Duration::from_secs(10);
        let r = podwire_proto::call(&sock, &add_request(), soon());
        assert!(matches!(r, Ok(Response::Allocated { .. })), "{r:?}");
        let _ = podwire_proto::call(&sock, &Request::Del { key: key() }, soon());
        // The answer reaches the caller before the count moves: poll.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = metrics.render(&crate::introspect::NodeState::default());
            let add = "podwire_cni_requests_total{result=\"ok\",verb=\"add\"} 1";
            let del = "podwire_cni_requests_total{result=\"ok\",verb=\"del\"} 1";
            let hist = "podwire_cni_request_duration_seconds_count{result=\"ok\",verb=\"add\"} 1";
            if text.contains(add) && text.contains(del) && text.contains(hist) {
                break;
            }
            assert!(Instant::now() < deadline, "{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_delivered_add_is_kept() {
        let backend = Arc::new(Recorder::default());
        let (dir, sock) = start("kept", Arc::clone(&backend));
        let r = podwire_proto::call(
            &sock,
            &add_request(),
            Instant::now() + Duration::from_secs(10),
        );
        assert!(matches!(r, Ok(Response::Allocated { .. })), "{r:?}");
        // A status call after it is served on its own connection: by then
        // the ADD's connection has finished, and no DEL came.
        let _ = podwire_proto::call(
            &sock,
            &Request::Status,
            Instant::now() + Duration::from_secs(10),
        );
        let calls = backend.calls.lock().expect("lock").clone();
        assert!(
            !calls.iter().any(|c| matches!(c, Request::Del { .. })),
            "{calls:?}"
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn connections_are_capped_and_idle_ones_time_out() {
        let backend = Arc::new(Recorder::default());
        let (dir, sock) = start("cap", backend);
        // Idle connections that never send anything fill every slot...
        let idle: Vec<UnixStream> = (0..MAX_CONNECTIONS)
            .map(|_| UnixStream::connect(&sock).expect("connect"))
            .collect();
        // ...so one more is told to come back instead of getting a thread.
        let deadline = Instant::now() + Duration::from_secs(5);
        let busy = loop {
            let r = podwire_proto::call(
                &sock,
                &Request::Status,
                Instant::now() + Duration::from_secs(2),
            );
            if let Ok(Response::Error {
                kind: ErrorKind::TryAgain,
                message,
            }) = r
            {
                break message;
            }
            assert!(Instant::now() < deadline, "never refused: {r:?}");
        };
        assert!(busy.contains("try again"), "{busy}");
        drop(idle);
        // Once they are gone the agent serves again.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = podwire_proto::call(
                &sock,
                &Request::Status,
                Instant::now() + Duration::from_secs(2),
            );
            if matches!(r, Ok(Response::Released { .. })) {
                break;
            }
            assert!(Instant::now() < deadline, "not served again: {r:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn an_oversized_request_is_refused() {
        let backend = Arc::new(Recorder::default());
        let (dir, sock) = start("big", Arc::clone(&backend));
        let s = UnixStream::connect(&sock).expect("connect");
        let writer = {
            let s = s.try_clone().expect("clone");
            std::thread::spawn(move || {
                let junk = vec![b'x'; 64 * 1024];
                let mut w = &s;
                let mut sent = 0usize;
                while sent < 4 * podwire_proto::MAX_MESSAGE
                    && std::io::Write::write_all(&mut w, &junk).is_ok()
                {
                    sent += junk.len();
                }
            })
        };
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut &s, &mut answer);
        writer.join().expect("writer");
        assert!(
            answer.contains("bad_request") && answer.contains("longer than"),
            "{answer}"
        );
        assert!(backend.calls.lock().expect("lock").is_empty());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn an_existing_directory_keeps_its_mode() {
        let dir = socket_dir("mode");
        fs::create_dir_all(&dir).expect("dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).expect("chmod");
        let sock = dir.join("agent.sock");
        let _l = bind(&sock).expect("bind");
        let mode = fs::metadata(&dir).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(
            mode, 0o1777,
            "the agent must not change a directory it did not create"
        );
        assert_eq!(
            fs::metadata(&sock).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        // A directory it creates is its own: root only.
        let own = dir.join("own");
        let _l2 = bind(&own.join("agent.sock")).expect("bind");
        assert_eq!(
            fs::metadata(&own).expect("meta").permissions().mode() & 0o777,
            0o700
        );
        let _ = fs::remove_dir_all(dir);
    }
}
