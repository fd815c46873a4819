//! The lab cloud's HTTP/1.1 server (EC2 Query API and IMDS). Hand-written
//! because every byte comes from pods and nodes, who may be hostile: one
//! request per connection, a thread per connection up to a cap (and a
//! smaller cap per source address, so one client cannot starve the nodes), a bounded
//! head and body (413 before a byte of an oversized body is read), and one
//! deadline for the whole request, so a client that holds its body open
//! delays nobody but itself.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line and headers.
    pub max_head: usize,
    pub max_body: usize,
    /// From accept to the last byte of the body.
    pub read_deadline: Duration,
    /// For writing the answer.
    pub write_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Connections one source address may hold at once, so that one client
    /// (a pod, a host in the VPC) cannot take every slot from the nodes.
    pub max_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_body: 1024 * 1024,
            read_deadline: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 64,
            max_per_peer: 8,
        }
    }
}

/// One request, read whole.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }
}

/// What the server calls for each complete request.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Accepts and serves connections until the listener fails.
pub fn serve(listener: TcpListener, limits: Limits, handler: Handler) -> std::io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let per_peer: PerPeer = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            // A connection that died in the backlog, or no fds left for a
            // moment: keep serving the others.
            Err(e) if e.kind() != ErrorKind::InvalidInput => {
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e),
        };
        let ip = peer.ip();
        let admitted = {
            let mut m = per_peer.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= limits.max_per_peer {
                false
            } else {
                *n += 1;
                true
            }
        };
        if !admitted {
            refuse_busy(&stream);
            continue;
        }
        let peer_slot = PeerSlot(Arc::clone(&per_peer), ip);
        if active.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            refuse_busy(&stream);
            continue;
        }
        let slot = (Slot(Arc::clone(&active)), peer_slot);
        let h = Arc::clone(&handler);
        let spawned = std::thread::Builder::new()
            .name("lab-http".into())
            .spawn(move || {
                let _slot = slot;
                serve_one(stream, peer, limits, h.as_ref());
            });
        if let Err(e) = spawned {
            // The closure (and its slot) was dropped with the error.
            tracing::warn!("no thread for a connection: {e}");
        }
    }
}

type PerPeer = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Frees a source address's connection slot when its connection ends.
struct PeerSlot(PerPeer, IpAddr);

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Frees a connection slot when the connection's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refuse_busy(stream: &TcpStream) {
    // Never block the accept loop on a client that does not read.
    let _ = stream.set_nonblocking(true);
    let mut s = stream;
    let _ = s.write_all(&encode(&Response::text(503, "Service Unavailable: busy")));
}

fn serve_one(
    mut stream: TcpStream,
    peer: SocketAddr,
    limits: Limits,
    handler: &dyn Fn(&Request) -> Response,
) {
    let resp = match read_request(&mut stream, peer, &limits) {
        Ok(req) => handler(&req),
        Err(Refusal::Gone) => return,
        Err(Refusal::Status(code, why)) => Response::text(code, why),
    };
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    if let Err(e) = stream.write_all(&encode(&resp)) {
        tracing::debug!("answering {peer}: {e}");
    }
    drain_and_close(&mut stream);
}

/// Closes after the answer. Unread request bytes would make the kernel
/// reset the connection and the client could lose the answer, so the rest
/// is read and dropped — briefly and boundedly (this is no way to upload).
fn drain_and_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut sink = [0u8; 4096];
    let mut left: usize = 256 * 1024;
    while left > 0 {
        match read_some(stream, &mut sink, deadline) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn encode(r: &Response) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        r.body
    )
    .into_bytes()
}

/// Why no request came of a connection.
#[derive(Debug)]
enum Refusal {
    /// Closed or broken before a whole head: nothing to answer.
    Gone,
    Status(u16, &'static str),
}

/// Reads at most `buf.len()` bytes before `deadline`.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, Refusal> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refusal::Status(408, "Request Timeout"));
        }
        // A zero timeout would mean "block forever".
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|_| Refusal::Gone)?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Refusal::Status(408, "Request Timeout"))
            }
            Err(_) => return Err(Refusal::Gone),
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn read_request(
    stream: &mut TcpStream,
    peer: SocketAddr,
    limits: &Limits,
) -> Result<Request, Refusal> {
    let deadline = Instant::now() + limits.read_deadline;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find_head_end(&buf) {
            break i;
        }
        if buf.len() > limits.max_head {
            return Err(Refusal::Status(431, "Request Header Fields Too Large"));
        }
        let n = read_some(stream, &mut chunk, deadline)?;
        if n == 0 {
            return Err(Refusal::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > limits.max_head {
        return Err(Refusal::Status(431, "Request Header Fields Too Large"));
    }
    let bad = || Refusal::Status(400, "Bad Request");
    let head = String::from_utf8(buf[..head_end].to_vec()).map_err(|_| bad())?;
    let mut lines = head.split("\r\n");
    let mut start = lines.next().ok_or_else(bad)?.split(' ');
    let (method, target, version) = (
        start.next().ok_or_else(bad)?,
        start.next().ok_or_else(bad)?,
        start.next().ok_or_else(bad)?,
    );
    if start.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(bad());
    }
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or_else(bad)?;
        if k.is_empty() || k.contains(' ') {
            return Err(bad());
        }
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    if headers.iter().any(|(k, _)| k == "transfer-encoding") {
        return Err(Refusal::Status(411, "Length Required"));
    }
    let mut lengths = headers.iter().filter(|(k, _)| k == "content-length");
    let len = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some((_, v)), None) => v.parse::<u64>().map_err(|_| bad())?,
        (Some(_), Some(_)) => return Err(bad()),
    };
    // Refused before reading (or allocating) any of it.
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= limits.max_body)
        .ok_or(Refusal::Status(413, "Content Too Large"))?;
    let mut body = buf.split_off(head_end + 4);
    if body.len() > len {
        // One request per connection: nothing may follow the body.
        return Err(bad());
    }
    while body.len() < len {
        let want = (len - body.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..want], deadline)?;
        if n == 0 {
            return Err(Refusal::Gone);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body,
        peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(limits: Limits) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = l.local_addr().expect("addr");
        let h: Handler = Arc::new(|r: &Request| {
            Response::text(200, format!("{} {} {}", r.method, r.target, r.body.len()))
        });
        std::thread::spawn(move || serve(l, limits, h));
        addr
    }

    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.write_all(raw);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn a_client_holding_its_body_open_blocks_nobody_else() {
        let addr = start(Limits {
            read_deadline: Duration::from_secs(30),
            ..Limits::default()
        });
        // Promises 100 bytes, sends 10, and waits.
        let mut slow = TcpStream::connect(addr).expect("connect");
        slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .expect("write");
        let t = Instant::now();
        let out = exchange(
            addr,
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        assert!(out.ends_with("POST /x 3"), "{out}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "waited {:?}",
            t.elapsed()
        );
        drop(slow);
    }

    #[test]
    fn a_body_held_open_past_the_deadline_is_answered_408() {
        let addr = start(Limits {
            read_deadline: Duration::from_millis(300),
            ..Limits::default()
        });
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
            .expect("write");
        let t = Instant::now();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    #[test]
    fn a_huge_body_is_refused_without_reading_it() {
        let addr = start(Limits::default());
        let before = rss_kib();
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = s.try_clone().expect("clone");
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = r.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        });
        s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 1500000000\r\n\r\n")
            .expect("head");
        // Push 64 MiB after it: the server must neither buffer nor wait for it.
        let junk = vec![b'x'; 1024 * 1024];
        for _ in 0..64 {
            if s.write_all(&junk).is_err() {
                break;
            }
        }
        let out = reader.join().expect("reader");
        assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
        let grown = rss_kib().saturating_sub(before);
        assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
        // Just over the bound is refused too; at the bound is served.
        let max = Limits::default().max_body;
        let over = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", max + 1);
        assert!(exchange(addr, over.as_bytes()).starts_with("HTTP/1.1 413 "));
        let mut at = format!("POST / HTTP/1.1\r\nContent-Length: {max}\r\n\r\n").into_bytes();
        at.extend(std::iter::repeat_n(b'y', max));
        assert!(exchange(addr, &at).ends_with(&format!("POST / {max}")));
    }

    #[test]
    fn endless_headers_and_chunked_bodies_are_refused() {
        let addr = start(Limits::default());
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 64 * 1024));
        assert!(exchange(addr, &raw).starts_with("HTTP/1.1 431 "));
        let chunked =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert!(exchange(addr, chunked).starts_with("HTTP/1.1 411 "));
        assert!(exchange(addr, b"NONSENSE\r\n\r\n").starts_with("HTTP/1.1 400 "));
    }

    #[test]
    fn connections_beyond_the_cap_are_turned_away_and_slots_come_back() {
        let addr = start(Limits {
            max_connections: 2,
            read_deadline: Duration::from_secs(30),
            ..Limits::default()
        });
        let hold: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n")
                    .expect("write");
                s
            })
            .collect();
        // Both slots are taken once the server has accepted them.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = exchange(addr, b"GET / HTTP/1.1\r\n\r\n");
            if out.starts_with("HTTP/1.1 503 ") {
                break;
            }
            assert!(Instant::now() < deadline, "never at the cap: {out}");
        }
        drop(hold);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = exchange(addr, b"GET /ok HTTP/1.1\r\n\r\n");
            if out.ends_with("GET /ok 0") {
                break;
            }
            assert!(Instant::now() < deadline, "slots never came back: {out}");
        }
    }

    /// A connection from `src` (a loopback address other than 127.0.0.1).
    fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
        use nix::sys::socket::{
            bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let src: std::net::SocketAddrV4 = format!("{src}:0").parse().expect("src");
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(src)).expect("bind");
        let SocketAddr::V4(to) = to else {
            panic!("v4 only")
        };
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).expect("connect");
        TcpStream::from(fd)
    }

    #[test]
    fn one_source_cannot_take_every_slot() {
        let addr = start(Limits {
            max_connections: 16,
            max_per_peer: 2,
            read_deadline: Duration::from_secs(30),
            ..Limits::default()
        });
        // 127.0.0.1 holds its two slots with bodies it never sends...
        let hold: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n")
                    .expect("write");
                s
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = exchange(addr, b"GET / HTTP/1.1\r\n\r\n");
            if out.starts_with("HTTP/1.1 503 ") {
                break;
            }
            assert!(Instant::now() < deadline, "never at the peer cap: {out}");
        }
        // ...and another source is served all the same.
        let mut other = connect_from("127.0.0.2", addr);
        other
            .write_all(b"GET /other HTTP/1.1\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        other.read_to_string(&mut out).expect("read");
        assert!(out.ends_with("GET /other 0"), "{out}");
        drop(hold);
    }
}
