//! Test support shared by podwire's crates: a real etcd server on free
//! loopback ports, with its own data directory, stopped when dropped.
//! (Feature `test-util`; never used by the binaries.)

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::EtcdStore;

/// Ports this process has handed out: tests run in parallel, and a port
/// released by `free_port` could otherwise be handed out twice.
static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// An etcd server of the test's own, on free loopback ports.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

impl Etcd {
    /// Starts an etcd on fresh ports; if another process takes a port
    /// between our choice and etcd's bind, tries again with others.
    pub fn start() -> Etcd {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            if let Some(e) = Etcd::try_start_in(dir, free_port(), free_port()) {
                return e;
            }
        }
        panic!("etcd did not start on five sets of ports");
    }

    /// Starts an etcd on given ports and data (a restart, in tests).
    pub fn start_in(dir: tempfile::TempDir, client_port: u16, peer_port: u16) -> Etcd {
        Etcd::try_start_in(dir, client_port, peer_port).expect("etcd exited at start")
    }

    /// Ready means it answers a request, not merely that its port is open;
    /// None when it exited first.
    fn try_start_in(dir: tempfile::TempDir, client_port: u16, peer_port: u16) -> Option<Etcd> {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .args(["--name", "pwtest", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("pwtest={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian package etcd-server) must be installed: scripts/deps.sh does it");
        let mut e = Etcd {
            child,
            dir,
            client_port,
            peer_port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = e.child.try_wait() {
                return None;
            }
            if EtcdStore::connect(&e.endpoint()).is_ok() {
                return Some(e);
            }
            assert!(Instant::now() < deadline, "etcd did not answer within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> Vec<String> {
        vec![format!("http://127.0.0.1:{}", self.client_port)]
    }

    pub fn stop(mut self) -> (tempfile::TempDir, u16, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (dir, self.client_port, self.peer_port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
