//! `podwire-agent`: one per node. In vpc mode it learns its instance through
//! IMDSv2, keeps a warm pool of ENI secondary addresses through the EC2 API,
//! brings new ENIs up in the kernel, and serves the plugin over a root-only
//! Unix socket. Every allocation is checkpointed before it is answered, so a
//! restarted agent knows every pod's address and never hands one out twice.
//!
//! Plain threads rather than an async runtime: the agent's work is a socket
//! accept loop and one pool-manager loop, and threads keep its resident
//! memory small.

mod checkpoint;
mod config;
mod overlay;
mod pool;
mod server;
mod state;

pub use config::{AgentConfig, OverlayConfig};

use std::sync::Arc;

/// Agent failures (start-up; the loops themselves log and carry on).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("instance metadata: {0}")]
    Imds(#[from] podwire_cloud::ImdsError),
    #[error(transparent)]
    Ec2(#[from] podwire_cloud::Ec2Error),
    #[error(transparent)]
    Dataplane(#[from] podwire_dataplane::DataplaneError),
    #[error(transparent)]
    Netlink(#[from] podwire_netlink::Error),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    #[error("socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] podwire_store::StoreError),
    #[error(transparent)]
    Ipam(#[from] podwire_ipam::block_store::IpamError),
}

/// What answers the plugin: one implementation per mode.
pub(crate) trait Backend: Send + Sync {
    fn handle(&self, req: podwire_proto::Request) -> podwire_proto::Response;
}

impl Backend for state::Shared {
    fn handle(&self, req: podwire_proto::Request) -> podwire_proto::Response {
        state::Shared::handle(self, req)
    }
}

/// Starts the agent and serves until the process is stopped.
pub fn run(config: AgentConfig) -> Result<(), AgentError> {
    if let Some(overlay) = &config.overlay {
        let agent = Arc::new(overlay::OverlayAgent::start(&config, overlay)?);
        let listener = server::bind(&config.socket)?;
        tracing::info!(socket = %config.socket.display(), node = %config.node_name, "overlay agent ready");
        let converger = Arc::clone(&agent);
        std::thread::Builder::new()
            .name("converge".into())
            .spawn(move || converger.converge_forever())
            .map_err(|e| AgentError::Config(format!("cannot start converge thread: {e}")))?;
        server::serve(listener, agent);
        return Ok(());
    }
    let shared = Arc::new(state::Shared::start(&config)?);
    let listener = server::bind(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), node = %shared.node_name(), "agent ready");
    let manager = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("pool".into())
        .spawn(move || pool::run(&manager))
        .map_err(|e| AgentError::Config(format!("cannot start pool thread: {e}")))?;
    server::serve(listener, shared);
    Ok(())
}
