//! `podwire-agent status`: the readiness probe. Asks the agent on its
//! socket whether it can serve ADDs, with a deadline; ready → exit 0.

use std::path::Path;
use std::time::{Duration, Instant};

use podwire_proto::{Request, Response, StatusInfo};

use crate::cli::StatusArgs;

/// The agent's answer, or why there is none.
pub fn query(args: &StatusArgs) -> anyhow::Result<StatusInfo> {
    ask(&args.socket, Duration::from_secs(args.timeout_secs))
}

/// Asks the agent on `socket`, waiting at most `timeout`.
pub fn ask(socket: &Path, timeout: Duration) -> anyhow::Result<StatusInfo> {
    let deadline = Instant::now() + timeout;
    match podwire_proto::call(socket, &Request::Status, deadline)? {
        Response::Status { status } => Ok(status),
        Response::Error { kind, message } => {
            anyhow::bail!("the agent answered {kind:?}: {message}")
        }
        other => anyhow::bail!("the agent answered a status request with {other:?}"),
    }
}
