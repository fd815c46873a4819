//! The plugin ↔ agent protocol: one JSON request and one JSON response per
//! connection, each a single line, over a root-only Unix socket.
//!
//! Versioned: every message carries `v`; an agent answers a request of a
//! version it does not speak with `ErrorKind::Protocol`, so an old plugin and a
//! new agent (or the reverse) fail clearly instead of misreading each other.
//!
//! v2 (this version): every request carries the time its caller still waits
//! (`time_left_ms`), so the plugin's one deadline bounds the agent's work
//! too; an allocation says how the pod's traffic leaves the node as an
//! [`Egress`] enum instead of vpc-shaped fields; both sides read at most
//! [`MAX_MESSAGE`] bytes per message.

// Numbers from the peer are never narrowed silently (a version read as u64
// and cast to u32 once let 2^32 + 2 pass as 2).
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 2;

/// The largest message (one line, newline included) either side reads: a
/// GC request listing thousands of attachments fits many times over.
pub const MAX_MESSAGE: usize = 1 << 20;

/// A request never asks the agent to work longer than this, whatever its
/// caller claims.
pub const MAX_TIME_LEFT: Duration = Duration::from_secs(600);

/// What identifies one attachment (as the CNI spec does).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRequest {
    pub key: AttachmentKey,
    pub netns: String,
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Allocate (and record) an address for a new attachment.
    Add(AddRequest),
    /// Release the attachment's address; succeeds when there is none.
    Del { key: AttachmentKey },
    /// What the agent holds for an attachment.
    Get { key: AttachmentKey },
    /// Can the agent serve ADDs now?
    Status,
    /// Release every allocation of `network` not in `valid`.
    Gc {
        network: String,
        valid: Vec<AttachmentKey>,
    },
}

/// How a pod's traffic leaves the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Egress {
    /// The node's main table: overlay mode, and vpc mode's primary ENI.
    Main,
    /// vpc mode, an address of a secondary ENI: `from <ip> lookup <table>`,
    /// because the VPC drops what leaves an ENI with another ENI's address.
    EniTable {
        eni_id: String,
        device_number: u32,
        table: u32,
    },
}

impl Egress {
    /// The table traffic from the pod is routed by (254 = main).
    pub fn route_table(&self) -> u32 {
        match self {
            Egress::Main => TABLE_MAIN,
            Egress::EniTable { table, .. } => *table,
        }
    }
}

/// The kernel's main routing table.
pub const TABLE_MAIN: u32 = 254;

/// Where a pod's address lives and how its traffic must leave the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub key: AttachmentKey,
    pub ip: Ipv4Addr,
    pub egress: Egress,
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    /// The MTU pod interfaces must use, when the agent knows better than the
    /// plugin's configuration (overlay: underlay MTU minus VXLAN overhead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No address can be had on this node (limits reached).
    Exhausted,
    /// The attachment already has an address.
    AlreadyExists,
    /// The request is malformed.
    BadRequest,
    /// A transient failure (cloud API, datastore); retry later.
    TryAgain,
    /// Protocol version mismatch.
    Protocol,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub node: String,
    pub ready: bool,
    pub free_ips: usize,
    pub assigned_ips: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Allocated {
        allocation: Allocation,
    },
    /// DEL/GC: what was released (empty when nothing was held).
    Released {
        allocations: Vec<Allocation>,
    },
    Found {
        allocation: Option<Allocation>,
    },
    Status {
        status: StatusInfo,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// A request as the agent receives it: what is asked and how long the
/// caller still waits for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub request: Request,
    pub time_left: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    /// Requests only: milliseconds the caller still waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_left_ms: Option<u64>,
    #[serde(flatten)]
    body: T,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("agent socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("agent connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("agent message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("peer speaks protocol v{0}, this side speaks v{PROTOCOL_VERSION}")]
    Version(u64),
    #[error("peer closed the connection without a complete message")]
    Closed,
    #[error("message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("no answer within the deadline ({0:?})")]
    Deadline(Duration),
    #[error("request without time_left_ms")]
    NoDeadline,
}

fn encode<T: Serialize>(body: T, time_left: Option<Duration>) -> Result<Vec<u8>, ProtoError> {
    let time_left_ms = time_left.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut line = serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        time_left_ms,
        body,
    })?;
    line.push(b'\n');
    Ok(line)
}

/// Reads one line of at most [`MAX_MESSAGE`] bytes, giving up at `deadline`.
/// Reads in chunks and never past the first newline's chunk, so a peer that
/// sends an endless line costs at most `MAX_MESSAGE` of memory.
fn read_line_bounded(stream: &UnixStream, deadline: Instant) -> Result<Vec<u8>, ProtoError> {
    let mut line = Vec::with_capacity(512);
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProtoError::Deadline(Duration::ZERO));
        }
        stream.set_read_timeout(Some(left))?;
        let mut r = stream;
        let n = match r.read(&mut chunk) {
            Ok(0) => return Err(ProtoError::Closed),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ProtoError::Deadline(left));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let got = chunk.get(..n).unwrap_or_default();
        if let Some(pos) = got.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(got.get(..pos).unwrap_or_default());
            if line.len() >= MAX_MESSAGE {
                return Err(ProtoError::TooLong);
            }
            return Ok(line);
        }
        line.extend_from_slice(got);
        if line.len() >= MAX_MESSAGE {
            return Err(ProtoError::TooLong);
        }
    }
}

fn write_all_by(stream: &UnixStream, bytes: &[u8], deadline: Instant) -> Result<(), ProtoError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ProtoError::Deadline(Duration::ZERO));
    }
    stream.set_write_timeout(Some(left))?;
    let mut w = stream;
    w.write_all(bytes).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            ProtoError::Deadline(left)
        } else {
            ProtoError::Io(e)
        }
    })?;
    w.flush()?;
    Ok(())
}

/// Checks the version first (so a peer of another version gets the
/// protocol error rather than a parse error), then decodes.
fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<Envelope<T>, ProtoError> {
    let raw: serde_json::Value = serde_json::from_slice(line)?;
    let v = raw
        .get("v")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if v != u64::from(PROTOCOL_VERSION) {
        return Err(ProtoError::Version(v));
    }
    Ok(serde_json::from_value(raw)?)
}

/// Sends one request and waits for the answer until `deadline`: connecting,
/// writing and reading together never take longer.
pub fn call(socket: &Path, request: &Request, deadline: Instant) -> Result<Response, ProtoError> {
    let stream = UnixStream::connect(socket).map_err(|source| ProtoError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    let time_left = deadline.saturating_duration_since(Instant::now());
    write_all_by(&stream, &encode(request, Some(time_left))?, deadline)?;
    let line = read_line_bounded(&stream, deadline)?;
    Ok(decode::<Response>(&line)?.body)
}

/// Server side: reads the request of one connection, waiting for it until
/// `deadline` (a client that opens a connection and sends nothing, or sends
/// slowly, holds it no longer).
pub fn read_request(stream: &UnixStream, deadline: Instant) -> Result<Incoming, ProtoError> {
    let line = read_line_bounded(stream, deadline)?;
    let env = decode::<Request>(&line)?;
    let ms = env.time_left_ms.ok_or(ProtoError::NoDeadline)?;
    Ok(Incoming {
        request: env.body,
        time_left: Duration::from_millis(ms).min(MAX_TIME_LEFT),
    })
}

/// Server side: writes the answer, giving up at `deadline`.
pub fn write_response(
    stream: &UnixStream,
    response: &Response,
    deadline: Instant,
) -> Result<(), ProtoError> {
    write_all_by(stream, &encode(response, None)?, deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AttachmentKey {
        AttachmentKey {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn round_trip_carries_the_time_left() {
        let (a, b) = UnixStream::pair().expect("pair");
        let req = Request::Del { key: key() };
        write_all_by(
            &a,
            &encode(&req, Some(Duration::from_secs(7))).expect("enc"),
            soon(),
        )
        .expect("write");
        let got = read_request(&b, soon()).expect("read");
        assert_eq!(got.request, req);
        assert_eq!(got.time_left, Duration::from_secs(7));
    }

    #[test]
    fn versions_are_compared_without_truncation() {
        // 2^32 + 2 would read as 2 if the version were cast to u32.
        for v in [99u64, (1u64 << 32) + 2, 0] {
            let (a, b) = UnixStream::pair().expect("pair");
            let line = format!("{{\"v\":{v},\"time_left_ms\":5,\"op\":\"status\"}}\n");
            write_all_by(&a, line.as_bytes(), soon()).expect("write");
            assert!(
                matches!(read_request(&b, soon()), Err(ProtoError::Version(got)) if got == v),
                "v={v}"
            );
        }
    }

    #[test]
    fn a_request_without_time_left_is_refused() {
        let (a, b) = UnixStream::pair().expect("pair");
        write_all_by(&a, b"{\"v\":2,\"op\":\"status\"}\n", soon()).expect("write");
        assert!(matches!(
            read_request(&b, soon()),
            Err(ProtoError::NoDeadline)
        ));
    }

    #[test]
    fn the_time_left_is_capped() {
        let (a, b) = UnixStream::pair().expect("pair");
        let line = format!(
            "{{\"v\":2,\"time_left_ms\":{},\"op\":\"status\"}}\n",
            u64::MAX
        );
        write_all_by(&a, line.as_bytes(), soon()).expect("write");
        assert_eq!(
            read_request(&b, soon()).expect("read").time_left,
            MAX_TIME_LEFT
        );
    }

    #[test]
    fn an_endless_line_stops_at_the_cap() {
        let (a, b) = UnixStream::pair().expect("pair");
        let writer = std::thread::spawn(move || {
            let junk = vec![b'x'; 64 * 1024];
            let mut w = &a;
            // Until the reader hangs up.
            while w.write_all(&junk).is_ok() {}
        });
        assert!(matches!(read_request(&b, soon()), Err(ProtoError::TooLong)));
        drop(b);
        writer.join().expect("writer");
    }

    #[test]
    fn a_silent_peer_meets_the_deadline() {
        let (_a, b) = UnixStream::pair().expect("pair");
        let started = Instant::now();
        let r = read_request(&b, Instant::now() + Duration::from_millis(100));
        assert!(matches!(r, Err(ProtoError::Deadline(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn egress_names_its_table() {
        assert_eq!(Egress::Main.route_table(), TABLE_MAIN);
        let e = Egress::EniTable {
            eni_id: "eni-1".into(),
            device_number: 1,
            table: 2,
        };
        assert_eq!(e.route_table(), 2);
        let json = serde_json::to_string(&e).expect("json");
        assert_eq!(
            json,
            r#"{"via":"eni_table","eni_id":"eni-1","device_number":1,"table":2}"#
        );
    }
}

/// Property tests: whatever bytes arrive, on either side, decoding ends in a
/// value or a `ProtoError`, never a panic; what one side encodes the other
/// decodes unchanged.
#[cfg(test)]
mod proptests {
    use std::os::unix::net::UnixListener;

    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z0-9.\\-]{0,12}"]
    }

    fn key() -> impl Strategy<Value = AttachmentKey> {
        (text(), text(), text()).prop_map(|(network, container_id, ifname)| AttachmentKey {
            network,
            container_id,
            ifname,
        })
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (key(), text(), option::of(text()), option::of(text())).prop_map(
                |(key, netns, pod_namespace, pod_name)| Request::Add(AddRequest {
                    key,
                    netns,
                    pod_namespace,
                    pod_name,
                })
            ),
            key().prop_map(|key| Request::Del { key }),
            key().prop_map(|key| Request::Get { key }),
            Just(Request::Status),
            (text(), vec(key(), 0..4)).prop_map(|(network, valid)| Request::Gc { network, valid }),
        ]
    }

    fn egress() -> impl Strategy<Value = Egress> {
        prop_oneof![
            Just(Egress::Main),
            (text(), any::<u32>(), any::<u32>()).prop_map(|(eni_id, device_number, table)| {
                Egress::EniTable {
                    eni_id,
                    device_number,
                    table,
                }
            }),
        ]
    }

    fn allocation() -> impl Strategy<Value = Allocation> {
        (
            key(),
            any::<u32>(),
            egress(),
            option::of(text()),
            option::of(text()),
            option::of(any::<u32>()),
        )
            .prop_map(
                |(key, ip, egress, pod_namespace, pod_name, mtu)| Allocation {
                    key,
                    ip: Ipv4Addr::from(ip),
                    egress,
                    pod_namespace,
                    pod_name,
                    mtu,
                },
            )
    }

    fn error_kind() -> impl Strategy<Value = ErrorKind> {
        prop_oneof![
            Just(ErrorKind::Exhausted),
            Just(ErrorKind::AlreadyExists),
            Just(ErrorKind::BadRequest),
            Just(ErrorKind::TryAgain),
            Just(ErrorKind::Protocol),
            Just(ErrorKind::Internal),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            allocation().prop_map(|allocation| Response::Allocated { allocation }),
            vec(allocation(), 0..4).prop_map(|allocations| Response::Released { allocations }),
            option::of(allocation()).prop_map(|allocation| Response::Found { allocation }),
            (
                text(),
                any::<bool>(),
                any::<usize>(),
                any::<usize>(),
                text()
            )
                .prop_map(|(node, ready, free_ips, assigned_ips, message)| {
                    Response::Status {
                        status: StatusInfo {
                            node,
                            ready,
                            free_ips,
                            assigned_ips,
                            message,
                        },
                    }
                }),
            (error_kind(), text()).prop_map(|(kind, message)| Response::Error { kind, message }),
        ]
    }

    /// JSON values a decoder might trip over: numbers at the edges of
    /// every integer type, floats, strings, nesting.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop_oneof![
                Just(u64::from(u32::MAX)),
                Just(u64::from(u32::MAX) + 1),
                Just(u64::from(u32::MAX) + 3),
                Just(u64::MAX),
                0u64..4,
            ]
            .prop_map(Value::from),
            prop::num::f64::NORMAL.prop_map(Value::from),
            text().prop_map(Value::String),
            prop_oneof![
                Just("add"),
                Just("del"),
                Just("get"),
                Just("status"),
                Just("gc"),
                Just("main"),
                Just("eni_table"),
                Just("allocated"),
                Just("released"),
                Just("found"),
                Just("error"),
                Just("exhausted"),
                Just("10.0.0.1"),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..5).prop_map(Value::Array),
                vec((field(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Object keys: the protocol's own, and others.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "v",
                "time_left_ms",
                "op",
                "key",
                "network",
                "container_id",
                "ifname",
                "netns",
                "valid",
                "result",
                "allocation",
                "allocations",
                "ip",
                "egress",
                "via",
                "eni_id",
                "device_number",
                "table",
                "mtu",
                "status",
                "kind",
                "message",
            ])
            .prop_map(str::to_string),
            text(),
        ]
    }

    /// An envelope that looks like a message: `v` and the tag mostly right,
    /// everything else arbitrary.
    fn message_like() -> impl Strategy<Value = Value> {
        (
            prop_oneof![Just(json!(2)), json_value()],
            option::of(json_value()),
            vec((field(), json_value()), 0..6),
        )
            .prop_map(|(v, time_left, rest)| {
                let mut obj: serde_json::Map<String, Value> = rest.into_iter().collect();
                obj.insert("v".into(), v);
                if let Some(t) = time_left {
                    obj.insert("time_left_ms".into(), t);
                }
                Value::Object(obj)
            })
    }

    /// Writes `bytes` (and closes) from another thread, so a large input
    /// cannot block on a full socket buffer.
    fn feed(bytes: Vec<u8>) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().expect("pair");
        let writer = std::thread::spawn(move || {
            let mut w = &a;
            // The reader may stop early (a line too long): that is fine.
            let _ = w.write_all(&bytes);
        });
        (b, writer)
    }

    fn server_request(bytes: Vec<u8>) -> Result<Incoming, ProtoError> {
        let (b, writer) = feed(bytes);
        let got = read_request(&b, soon());
        drop(b);
        writer.join().expect("writer");
        got
    }

    /// Runs `call` against a one-shot agent that answers with `answer`.
    fn client_call(answer: Vec<u8>) -> Result<Response, ProtoError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let agent = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            // The request itself must be well formed.
            read_request(&conn, soon()).expect("request");
            let mut w = &conn;
            let _ = w.write_all(&answer);
        });
        let got = call(&path, &Request::Status, soon());
        agent.join().expect("agent");
        got
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_give_the_server_an_error_not_a_panic(
            bytes in vec(any::<u8>(), 0..2048),
            newline in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if newline {
                bytes.push(b'\n');
            }
            if let Ok(incoming) = server_request(bytes) {
                prop_assert!(incoming.time_left <= MAX_TIME_LEFT);
            }
        }

        #[test]
        fn message_like_json_gives_the_server_an_error_not_a_panic(msg in message_like()) {
            let mut line = serde_json::to_vec(&msg).expect("json");
            line.push(b'\n');
            let v = msg.get("v").cloned();
            match server_request(line) {
                Ok(incoming) => {
                    prop_assert_eq!(v, Some(json!(PROTOCOL_VERSION)));
                    prop_assert!(incoming.time_left <= MAX_TIME_LEFT);
                }
                Err(ProtoError::Version(got)) => {
                    prop_assert_ne!(v.as_ref().and_then(Value::as_u64), Some(2));
                    prop_assert_eq!(got, v.as_ref().and_then(Value::as_u64).unwrap_or(0));
                }
                Err(_) => {}
            }
        }

        #[test]
        fn requests_round_trip(req in request(), ms in any::<u64>()) {
            let line = encode(&req, Some(Duration::from_millis(ms))).expect("encode");
            let got = server_request(line).expect("decode");
            prop_assert_eq!(got.request, req);
            prop_assert_eq!(got.time_left, Duration::from_millis(ms).min(MAX_TIME_LEFT));
        }

        #[test]
        fn arbitrary_answers_give_the_client_an_error_not_a_panic(
            bytes in vec(any::<u8>(), 0..2048),
            newline in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if newline {
                bytes.push(b'\n');
            }
            // Anything but a panic is fine; a valid answer is astronomically
            // unlikely from random bytes.
            let _ = client_call(bytes);
        }

        #[test]
        fn answer_like_json_gives_the_client_an_error_not_a_panic(msg in message_like()) {
            let mut line = serde_json::to_vec(&msg).expect("json");
            line.push(b'\n');
            let v = msg.get("v").cloned();
            if client_call(line).is_ok() {
                prop_assert_eq!(v, Some(json!(PROTOCOL_VERSION)));
            }
        }

        #[test]
        fn responses_round_trip(resp in response()) {
            let line = encode(&resp, None).expect("encode");
            prop_assert_eq!(client_call(line).expect("decode"), resp);
        }
    }

    #[test]
    fn an_endless_answer_stops_the_client_at_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let agent = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            read_request(&conn, soon()).expect("request");
            let junk = vec![b'x'; 64 * 1024];
            let mut w = &conn;
            while w.write_all(&junk).is_ok() {}
        });
        let got = call(&path, &Request::Status, soon());
        assert!(matches!(got, Err(ProtoError::TooLong)), "{got:?}");
        agent.join().expect("agent");
    }
}
