//! The agent's HTTP endpoint (`--metrics-address`, loopback by default):
//! `/metrics` (Prometheus text), `/healthz` (200 when an ADD can be served,
//! 503 with the reason otherwise) and `/v1/state` (JSON introspection).
//!
//! One thread serves one connection at a time, each bounded in what it may
//! send ([`MAX_HEAD`]) and how long it may take ([`IO_DEADLINE`]), then
//! closed. Answers are built from the agent's in-memory state, so a scraper
//! can neither slow the plugin's socket nor make the agent call the cloud.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::{AgentError, Backend};

/// The largest request head read; longer ones are answered 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a connection may take to send its request, and to take the answer.
pub const IO_DEADLINE: Duration = Duration::from_secs(2);

/// Binds `addr` now (a taken port stops the agent with a clear error) and
/// serves it from a thread of its own.
pub fn start(
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
) -> Result<SocketAddr, AgentError> {
    let listener = TcpListener::bind(addr).map_err(|source| AgentError::Socket {
        path: format!("metrics address {addr}"),
        source,
    })?;
    let bound = listener.local_addr().map_err(|source| AgentError::Socket {
        path: format!("metrics address {addr}"),
        source,
    })?;
    crate::spawn("metrics", move || serve(&listener, backend, metrics))?;
    tracing::info!(address = %bound, "metrics and introspection served (/metrics, /healthz, /v1/state)");
    Ok(bound)
}

/// Connections served at once: a client that opens connections and sends
/// nothing holds a thread each for at most [`IO_DEADLINE`], and never the
/// others' (a scraper and a probe still get their answers).
pub const MAX_CONNECTIONS: usize = 16;

fn serve(listener: &TcpListener, backend: Arc<dyn Backend>, metrics: Arc<Metrics>) {
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                use std::sync::atomic::Ordering;
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    drop(stream);
                    continue;
                }
                let (backend, metrics, active) = (
                    Arc::clone(&backend),
                    Arc::clone(&metrics),
                    Arc::clone(&active),
                );
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        if let Err(e) = handle(stream, backend.as_ref(), &metrics) {
                            tracing::debug!("metrics endpoint: {e}");
                        }
                        active.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    tracing::warn!("metrics endpoint: no thread for a connection: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("metrics endpoint accept: {e}");
                // Out of descriptors and the like: do not spin.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// An answer: status, content type, body.
struct Answer(u16, &'static str, String);

fn plain(code: u16, body: impl Into<String>) -> Answer {
    Answer(code, "text/plain; charset=utf-8", body.into())
}

/// Reads the request head (up to the blank line) within the deadline and
/// the size bound. `Ok(None)`: too long.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head not sent in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the request head ended",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

fn handle(mut stream: TcpStream, backend: &dyn Backend, metrics: &Metrics) -> std::io::Result<()> {
    let deadline = Instant::now() + IO_DEADLINE;
    let answer = match read_head(&mut stream, deadline)? {
        None => plain(431, "request head too long\n"),
        Some(head) => {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&head) {
                Ok(httparse::Status::Complete(_)) => route(
                    req.method.unwrap_or(""),
                    req.path.unwrap_or(""),
                    backend,
                    metrics,
                ),
                Ok(httparse::Status::Partial) | Err(_) => plain(400, "bad request\n"),
            }
        }
    };
    let Answer(code, ctype, body) = answer;
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    );
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    stream.set_write_timeout(Some(left))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

fn route(method: &str, path: &str, backend: &dyn Backend, metrics: &Metrics) -> Answer {
    if method != "GET" && method != "HEAD" {
        return plain(405, "only GET\n");
    }
    // The query string is ignored (Prometheus may add one).
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/metrics" => Answer(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(&backend.state()),
        ),
        "/healthz" => {
            let s = backend.state();
            let code = if s.ready { 200 } else { 503 };
            let word = if s.ready { "ready" } else { "not ready" };
            plain(code, format!("{word}: {}\n", s.message))
        }
        "/v1/state" => {
            let mut s = backend.state();
            s.last_errors = metrics.last_errors();
            match serde_json::to_string_pretty(&s) {
                Ok(mut body) => {
                    body.push('\n');
                    Answer(200, "application/json", body)
                }
                Err(e) => plain(503, format!("state not encodable: {e}\n")),
            }
        }
        _ => plain(404, "not found: try /metrics, /healthz or /v1/state\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::introspect::NodeState;
    use podwire_proto::{Request, Response};
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Fake {
        ready: AtomicBool,
    }

    impl Backend for Fake {
        fn handle(&self, _req: Request, _deadline: Instant) -> Response {
            Response::Released {
                allocations: Vec::new(),
            }
        }
        fn state(&self) -> NodeState {
            let ready = self.ready.load(Ordering::SeqCst);
            NodeState {
                node: "pwt-node".into(),
                mode: "vpc".into(),
                ready,
                message: if ready { "3 ready" } else { "no address left" }.into(),
                ..NodeState::default()
            }
        }
    }

    fn start_fake() -> (SocketAddr, Arc<Fake>, Arc<Metrics>) {
        let fake = Arc::new(Fake {
            ready: AtomicBool::new(true),
        });
        let metrics = Arc::new(Metrics::new());
        let addr = start(
            "127.0.0.1:0".parse().expect("addr"),
            Arc::clone(&fake) as Arc<dyn Backend>,
            Arc::clone(&metrics),
        )
        .expect("start");
        (addr, fake, metrics)
    }

    fn get(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.write_all(raw);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn path(addr: SocketAddr, p: &str) -> String {
        get(
            addr,
            format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    }

    #[test]
    fn healthz_follows_readiness_with_the_reason() {
        let (addr, fake, _) = start_fake();
        let a = path(addr, "/healthz");
        assert!(a.starts_with("HTTP/1.1 200 "), "{a}");
        assert!(a.ends_with("ready: 3 ready\n"), "{a}");
        fake.ready.store(false, Ordering::SeqCst);
        let a = path(addr, "/healthz");
        assert!(a.starts_with("HTTP/1.1 503 "), "{a}");
        assert!(a.contains("not ready: no address left"), "{a}");
    }

    #[test]
    fn metrics_and_state_are_served_and_other_paths_are_not() {
        let (addr, _, metrics) = start_fake();
        metrics.cni_request("add", "ok", Duration::from_millis(2));
        metrics.note_error("ec2:AssignPrivateIpAddresses", "throttled");
        let m = path(addr, "/metrics?x=1");
        assert!(m.starts_with("HTTP/1.1 200 "), "{m}");
        assert!(m.contains("text/plain; version=0.0.4"), "{m}");
        assert!(
            m.contains("podwire_cni_requests_total{result=\"ok\",verb=\"add\"} 1"),
            "{m}"
        );
        assert!(m.contains("podwire_agent_ready 1"), "{m}");
        let s = path(addr, "/v1/state");
        let body = s.split("\r\n\r\n").nth(1).expect("body");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["node"], "pwt-node");
        assert_eq!(v["last_errors"][0]["what"], "ec2:AssignPrivateIpAddresses");
        assert!(path(addr, "/nope").starts_with("HTTP/1.1 404 "));
        let post = get(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    }

    #[test]
    fn hostile_clients_are_bounded_and_do_not_stop_the_server() {
        let (addr, _, _) = start_fake();
        // A head that never ends.
        let long = [
            b"GET /metrics HTTP/1.1\r\nX: ".as_slice(),
            &vec![b'a'; 4 * MAX_HEAD],
        ]
        .concat();
        let a = get(addr, &long);
        assert!(a.starts_with("HTTP/1.1 431 ") || a.is_empty(), "{a}");
        // Garbage.
        let a = get(addr, b"\x00\x01\x02 nonsense\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 400 "), "{a}");
        // Clients that connect and say nothing hold only their own
        // connections: the next one is answered at once, not after their
        // deadlines one by one.
        let idle: Vec<TcpStream> = (0..10)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        let started = Instant::now();
        let a = path(addr, "/healthz");
        assert!(a.starts_with("HTTP/1.1 200 "), "{a}");
        assert!(
            started.elapsed() < IO_DEADLINE,
            "waited {:?} behind idle clients",
            started.elapsed()
        );
        drop(idle);
    }

    #[test]
    fn a_taken_address_is_a_clear_start_error() {
        let (addr, fake, metrics) = start_fake();
        let e = start(addr, fake as Arc<dyn Backend>, metrics).expect_err("taken");
        assert!(e.to_string().contains("metrics address"), "{e}");
    }
}
