//! A plain HTTP GET for the agent's metrics endpoint (`/metrics`,
//! `/healthz`, `/v1/state`): `podwirectl node status --endpoint` and the
//! lab tests read a live agent with it. `http://IP:PORT` only, every step
//! under a deadline and the answer bounded in size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::LabError;

/// The largest answer read (a /metrics of a big node is tens of KiB).
pub const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// An HTTP answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

fn usage(msg: String) -> LabError {
    LabError::Usage(msg)
}

/// `http://IP:PORT[/…]` → the address (the path part is ignored: the
/// caller names the path).
fn endpoint_addr(endpoint: &str) -> Result<SocketAddr, LabError> {
    let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
        usage(format!(
            "endpoint {endpoint:?}: want http://IP:PORT (the agent's --metrics-address)"
        ))
    })?;
    let hostport = rest.split('/').next().unwrap_or("");
    hostport.parse().map_err(|e| {
        usage(format!(
            "endpoint {endpoint:?}: {e}: want http://IP:PORT (an address, not a name)"
        ))
    })
}

/// GETs `path` from `endpoint` within `timeout`.
pub fn http_get(endpoint: &str, path: &str, timeout: Duration) -> Result<HttpAnswer, LabError> {
    let addr = endpoint_addr(endpoint)?;
    let deadline = Instant::now() + timeout;
    let io = |e: std::io::Error| LabError::State(format!("GET {endpoint}{path}: {e}"));
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut s = TcpStream::connect_timeout(&addr, left()).map_err(io)?;
    s.set_write_timeout(Some(left())).map_err(io)?;
    // One write: a server that reads one segment and closes must not
    // meet the rest of the request (it would answer with a reset).
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if Instant::now() >= deadline {
            return Err(io(std::io::ErrorKind::TimedOut.into()));
        }
        s.set_read_timeout(Some(left())).map_err(io)?;
        let n = s.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_ANSWER {
            return Err(LabError::State(format!(
                "GET {endpoint}{path}: answer longer than {MAX_ANSWER} bytes"
            )));
        }
    }
    let text = String::from_utf8(raw)
        .map_err(|_| LabError::State(format!("GET {endpoint}{path}: answer is not UTF-8")))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| LabError::State(format!("GET {endpoint}{path}: no HTTP head")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| LabError::State(format!("GET {endpoint}{path}: bad status line")))?;
    Ok(HttpAnswer {
        status,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn endpoints_must_be_http_with_an_address() {
        assert!(endpoint_addr("http://127.0.0.1:61678").is_ok());
        assert!(endpoint_addr("http://127.0.0.1:61678/v1/state").is_ok());
        assert!(endpoint_addr("https://127.0.0.1:61678").is_err());
        assert!(endpoint_addr("http://localhost:61678").is_err());
        assert!(endpoint_addr("127.0.0.1:61678").is_err());
    }

    #[test]
    fn an_answer_is_read_and_a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            // The whole head first: closing with unread bytes would reset.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\nnot ready\n",
            );
            drop(c);
            // The second caller gets nothing at all.
            let (c2, _) = l.accept().expect("accept");
            std::thread::sleep(Duration::from_secs(2));
            drop(c2);
        });
        let ep = format!("http://{addr}");
        let a = http_get(&ep, "/healthz", Duration::from_secs(5)).expect("answer");
        assert_eq!(
            a,
            HttpAnswer {
                status: 503,
                body: "not ready\n".into()
            }
        );
        let started = Instant::now();
        assert!(http_get(&ep, "/healthz", Duration::from_millis(300)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        server.join().expect("server");
    }
}
