//! The plugin-facing Unix socket: one request per connection, handled on
//! its own thread (plugin calls for different pods run in parallel).

use std::fs;
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use podwire_proto::{read_request, write_response, ErrorKind, Response};

use crate::{AgentError, Backend};

pub fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    let err = |source| AgentError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
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

pub fn serve(listener: UnixListener, shared: Arc<dyn Backend>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let shared = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || handle(stream, shared.as_ref()));
                if let Err(e) = spawned {
                    tracing::warn!("cannot start a connection thread: {e}");
                }
            }
            Err(e) => tracing::warn!("accept: {e}"),
        }
    }
}

fn handle(stream: UnixStream, shared: &dyn Backend) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let response = match read_request(&mut reader) {
        Ok(req) => shared.handle(req),
        Err(podwire_proto::ProtoError::Version(v)) => Response::Error {
            kind: ErrorKind::Protocol,
            message: format!(
                "plugin speaks protocol v{v}, agent speaks v{}",
                podwire_proto::PROTOCOL_VERSION
            ),
        },
        Err(e) => Response::Error {
            kind: ErrorKind::BadRequest,
            message: e.to_string(),
        },
    };
    let mut writer = &stream;
    if let Err(e) = write_response(&mut writer, &response) {
        tracing::warn!("answering the plugin: {e}");
    }
}
