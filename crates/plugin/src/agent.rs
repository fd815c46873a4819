//! Calls to the node agent, with agent failures mapped to CNI codes.

use std::path::Path;
use std::time::Duration;

use podwire_cni::{CniError, Code};
use podwire_proto::{call, ErrorKind, ProtoError, Request, Response};

/// ADD may wait for the cloud when the warm pool is empty (attach an ENI).
const TIMEOUT: Duration = Duration::from_secs(60);

pub fn request(socket: &Path, req: &Request) -> Result<Response, CniError> {
    match call(socket, req, TIMEOUT) {
        Ok(Response::Error { kind, message }) => Err(map_kind(kind, message)),
        Ok(r) => Ok(r),
        Err(ProtoError::Connect { path, source }) => Err(CniError::new(
            Code::TryAgainLater,
            format!(
                "podwire-agent is not reachable at {path} ({source}); is it running on this node?"
            ),
        )),
        Err(ProtoError::Version(v)) => Err(CniError::new(
            Code::Protocol,
            format!(
                "podwire-agent speaks protocol v{v}; this plugin speaks v{}: upgrade them together",
                podwire_proto::PROTOCOL_VERSION
            ),
        )),
        Err(e) => Err(CniError::new(
            Code::TryAgainLater,
            format!("podwire-agent: {e}"),
        )),
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
