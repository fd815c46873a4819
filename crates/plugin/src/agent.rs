//! Calls to the node agent, with agent failures mapped to CNI codes.
//!
//! One deadline per plugin call (`timeoutSeconds` of the conflist, counted
//! from the start of the call): every request to the agent shares it, and
//! each tells the agent how much of it is left, so the agent never works on
//! an ADD its caller has given up on.

use std::path::{Path, PathBuf};
use std::time::Instant;

use podwire_cni::{CniError, Code, NetConf};
use podwire_proto::{call, ErrorKind, ProtoError, Request, Response};

/// The node agent as this plugin call sees it.
#[derive(Debug, Clone)]
pub struct Agent {
    socket: PathBuf,
    deadline: Instant,
}

impl Agent {
    pub fn new(conf: &NetConf, started: Instant) -> Agent {
        Agent {
            socket: conf.agent_socket.clone(),
            deadline: started + conf.timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a request; agent errors and failures become CNI errors.
    pub fn request(&self, req: &Request) -> Result<Response, CniError> {
        match self.call(req) {
            Ok(Response::Error { kind, message }) => Err(map_kind(kind, message)),
            Ok(r) => Ok(r),
            Err(e) => Err(self.failure(e)),
        }
    }

    /// Sends a request and returns the raw outcome.
    pub fn call(&self, req: &Request) -> Result<Response, ProtoError> {
        call(&self.socket, req, self.deadline)
    }

    fn failure(&self, e: ProtoError) -> CniError {
        match e {
            ProtoError::Connect { path, source } => CniError::new(
                Code::TryAgainLater,
                format!(
                    "podwire-agent is not reachable at {path} ({source}); is it running on this node?"
                ),
            ),
            ProtoError::Version(v) => CniError::new(
                Code::Protocol,
                format!(
                    "podwire-agent speaks protocol v{v}; this plugin speaks v{}: install the plugin that came with the running agent (podwire-agent install-cni), or upgrade both together",
                    podwire_proto::PROTOCOL_VERSION
                ),
            ),
            ProtoError::Deadline(_) => CniError::new(
                Code::TryAgainLater,
                format!(
                    "podwire-agent at {} did not answer within the call's deadline (timeoutSeconds)",
                    self.socket.display()
                ),
            ),
            e => CniError::new(Code::TryAgainLater, format!("podwire-agent: {e}")),
        }
    }
}

fn map_kind(kind: ErrorKind, message: String) -> CniError {
    let code = match kind {
        ErrorKind::Exhausted => Code::IpExhausted,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::BadRequest => Code::InvalidConfig,
        ErrorKind::TryAgain => Code::TryAgainLater,
        ErrorKind::Protocol => Code::Protocol,
        ErrorKind::Internal => Code::Agent,
    };
    CniError::new(code, message)
}

pub fn unexpected(resp: Response) -> CniError {
    CniError::new(
        Code::Protocol,
        format!("unexpected answer from podwire-agent: {resp:?}"),
    )
}
