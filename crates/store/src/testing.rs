//! Test support shared by podwire's crates: a real etcd server on free
//! loopback ports, with its own data directory, stopped when dropped;
//! plain, or with TLS and client-certificate authentication
//! ([`Etcd::start_tls`]). (Feature `test-util`; never used by the binaries.)

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pki::{write_etcd_files, EtcdFiles};
use crate::{EtcdStore, EtcdTls};

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
    /// With TLS: the CA, server and client files (in `dir`).
    tls: Option<EtcdFiles>,
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
        Etcd::start_with(false)
    }

    /// Starts an etcd that speaks only TLS, with a certificate signed by a
    /// CA of its own, and accepts only clients with a certificate of that
    /// CA (`--client-cert-auth`). [`Etcd::client_tls`] names the files a
    /// client needs.
    pub fn start_tls() -> Etcd {
        Etcd::start_with(true)
    }

    fn start_with(tls: bool) -> Etcd {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let files = tls.then(|| {
                write_etcd_files(
                    &dir.path().join("tls"),
                    &["127.0.0.1".parse().expect("ip")],
                    "pwtest-client",
                )
                .expect("test certificates")
            });
            if let Some(e) = Etcd::try_start_in(dir, free_port(), free_port(), files) {
                return e;
            }
        }
        panic!("etcd did not start on five sets of ports");
    }

    /// Starts a plain etcd on given ports and data (a restart, in tests).
    pub fn start_in(dir: tempfile::TempDir, client_port: u16, peer_port: u16) -> Etcd {
        Etcd::try_start_in(dir, client_port, peer_port, None).expect("etcd exited at start")
    }

    /// Ready means it answers a request, not merely that its port is open;
    /// None when it exited first.
    fn try_start_in(
        dir: tempfile::TempDir,
        client_port: u16,
        peer_port: u16,
        tls: Option<EtcdFiles>,
    ) -> Option<Etcd> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{client_port}");
        // Peers stay plain: one member, on loopback.
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new("etcd");
        if let Some(f) = &tls {
            cmd.arg("--cert-file")
                .arg(&f.server_cert)
                .arg("--key-file")
                .arg(&f.server_key)
                .arg("--trusted-ca-file")
                .arg(&f.ca_cert)
                .arg("--client-cert-auth");
        }
        let child = cmd
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
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = e.child.try_wait() {
                return None;
            }
            if EtcdStore::connect_with(&e.endpoint(), &e.client_tls()).is_ok() {
                return Some(e);
            }
            assert!(Instant::now() < deadline, "etcd did not answer within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://…` with TLS.
    pub fn endpoint(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        vec![format!("{scheme}://127.0.0.1:{}", self.client_port)]
    }

    /// `127.0.0.1:PORT`, for a datastore spec.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// What a client presents and trusts: the CA and a client certificate
    /// of this etcd (empty for a plain etcd).
    pub fn client_tls(&self) -> EtcdTls {
        self.tls
            .as_ref()
            .map(|f| f.client.clone())
            .unwrap_or_default()
    }

    /// This etcd's TLS files (None for a plain etcd).
    pub fn tls_files(&self) -> Option<&EtcdFiles> {
        self.tls.as_ref()
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
