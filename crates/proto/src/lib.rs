//! The plugin ↔ agent protocol: one JSON request and one JSON response per
//! connection, each a single line, over a root-only Unix socket.
//!
//! Versioned: every message carries `v`; an agent answers a request of a
//! version it does not speak with `ErrorKind::Protocol`, so an old plugin and a
//! new agent (or the reverse) fail clearly instead of misreading each other.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;

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

/// Where a pod's address lives and how its traffic must leave the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub key: AttachmentKey,
    pub ip: Ipv4Addr,
    /// The ENI that owns the address (vpc mode).
    #[serde(default)]
    pub eni_id: String,
    /// 0 = primary ENI.
    #[serde(default)]
    pub device_number: u32,
    /// Route table for traffic *from* the pod; 254 (main) on the primary ENI.
    pub route_table: u32,
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

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
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
    #[error("agent speaks protocol v{0}, this side speaks v{PROTOCOL_VERSION}")]
    Version(u32),
    #[error("agent closed the connection without answering")]
    Closed,
}

fn write_line<T: Serialize>(w: &mut impl Write, body: T) -> Result<(), ProtoError> {
    let mut line = serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        body,
    })?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()?;
    Ok(())
}

fn read_line<T: for<'de> Deserialize<'de>>(r: &mut impl BufRead) -> Result<T, ProtoError> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(ProtoError::Closed);
    }
    let raw: serde_json::Value = serde_json::from_str(&line)?;
    let v = raw
        .get("v")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0) as u32;
    if v != PROTOCOL_VERSION {
        return Err(ProtoError::Version(v));
    }
    let env: Envelope<T> = serde_json::from_value(raw)?;
    Ok(env.body)
}

/// Sends one request and waits for the answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ProtoError> {
    let stream = UnixStream::connect(socket).map_err(|source| ProtoError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = &stream;
    write_line(&mut writer, request)?;
    let mut reader = BufReader::new(&stream);
    read_line(&mut reader)
}

/// Server side: reads the request of one connection.
pub fn read_request(r: &mut impl BufRead) -> Result<Request, ProtoError> {
    read_line(r)
}

/// Server side: writes the answer.
pub fn write_response(w: &mut impl Write, response: &Response) -> Result<(), ProtoError> {
    write_line(w, response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let req = Request::Del {
            key: AttachmentKey {
                network: "n".into(),
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
        };
        let mut buf = Vec::new();
        write_line(&mut buf, &req).expect("write");
        let back: Request = read_request(&mut buf.as_slice()).expect("read");
        assert_eq!(back, req);
        let bad = br#"{"v":99,"op":"status"}
"#;
        assert!(matches!(
            read_request(&mut bad.as_slice()),
            Err(ProtoError::Version(99))
        ));
    }
}
