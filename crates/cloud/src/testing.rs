//! A loopback HTTP server that plays EC2 for tests (feature `test-util`):
//! each request's form body goes to a handler, whose [`Answer`] is sent
//! back. Used by this crate's client tests and the agent's pool tests, so
//! there is one fake wire, not one per crate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// An HTTP status and an XML body.
    Reply(u16, String),
    /// Read the request, then close without a reply (a lost answer).
    Drop,
    /// Hold the connection without answering until the client gives up.
    Hang,
}

/// Starts the server on 127.0.0.1; returns its endpoint (`http://ip:port`).
/// `handler` gets the request body (the Query API's form) and the number
/// of the request (0, 1, …). The server lives as long as the test process.
///
/// # Panics
/// When no loopback port can be bound (a broken test machine).
pub fn serve(handler: impl Fn(&[u8], usize) -> Answer + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(read_half) = conn.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(read_half);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            match handler(&body, n) {
                Answer::Drop => drop(conn),
                Answer::Hang => std::thread::sleep(Duration::from_secs(10)),
                Answer::Reply(status, body) => {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status} X\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            }
        }
    });
    format!("http://{addr}")
}
