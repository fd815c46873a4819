//! etcd over TLS with client-certificate authentication: a client with the
//! right CA and a certificate works; every wrong setup fails at once (well
//! within the deadline) with an error that names the problem.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use podwire_store::pki::{write_private, Pki};
use podwire_store::testing::Etcd;
use podwire_store::{open_with, EtcdStore, EtcdTls, Expect, StoreError};

/// Connects and reports the error, checking it came in time (the store's
/// deadline is 3 s for the request and 3 s for finding out why it failed).
fn refused(endpoints: &[String], tls: &EtcdTls) -> StoreError {
    let t = Instant::now();
    let r = EtcdStore::connect_with(endpoints, tls);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    match r {
        Ok(s) => panic!("connected: {s:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_client_with_the_ca_and_a_certificate_reads_and_writes() {
    let etcd = Etcd::start_tls();
    let spec = format!("etcd+https://{}", etcd.host_port());
    let s = open_with(&spec, &etcd.client_tls()).expect("open");
    let r = s.put("pw/tls", b"1", Expect::Absent).expect("put");
    assert_eq!(
        s.get("pw/tls").expect("get").map(|e| e.mod_revision),
        Some(r)
    );
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let etcd = Etcd::start_tls();
    let mut tls = etcd.client_tls();
    tls.cert = None;
    tls.key = None;
    let e = refused(&etcd.endpoint(), &tls);
    let StoreError::Tls(msg) = &e else {
        panic!("{e:?}")
    };
    assert!(msg.contains("client certificate"), "{msg}");
}

#[test]
fn a_client_trusting_another_ca_is_refused() {
    let etcd = Etcd::start_tls();
    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("other-ca.pem");
    let pki = Pki::new("another CA").expect("pki");
    write_private(&other, pki.ca_pem().as_bytes()).expect("write");
    let mut tls = etcd.client_tls();
    tls.ca_cert = Some(other);
    let e = refused(&etcd.endpoint(), &tls);
    let StoreError::Tls(msg) = &e else {
        panic!("{e:?}")
    };
    assert!(msg.contains("not signed by the CA"), "{msg}");
}

#[test]
fn a_client_certificate_of_another_ca_is_refused() {
    let etcd = Etcd::start_tls();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("another CA").expect("pki");
    let c = pki.client("stranger").expect("client");
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    write_private(&cert, c.cert_pem.as_bytes()).expect("write");
    write_private(&key, c.key_pem.as_bytes()).expect("write");
    let mut tls = etcd.client_tls();
    tls.cert = Some(cert);
    tls.key = Some(key);
    let e = refused(&etcd.endpoint(), &tls);
    let StoreError::Tls(msg) = &e else {
        panic!("{e:?}")
    };
    assert!(msg.contains("refused"), "{msg}");
}

#[test]
fn plain_http_to_a_tls_etcd_fails_clearly() {
    let etcd = Etcd::start_tls();
    let e = refused(
        &[format!("http://{}", etcd.host_port())],
        &EtcdTls::default(),
    );
    assert!(
        matches!(&e, StoreError::Tls(m) if m.contains("speaks TLS") && m.contains("etcd+https://")),
        "{e:?}"
    );
}

#[test]
fn missing_unreadable_or_wrong_files_are_named() {
    let etcd = Etcd::start_tls();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = etcd.client_tls();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, b"not a certificate").expect("write");
    let missing = PathBuf::from("/nonexistent/pw-ca.pem");
    let cases = [
        (
            EtcdTls {
                ca_cert: Some(missing.clone()),
                ..good.clone()
            },
            "/nonexistent/pw-ca.pem",
        ),
        (
            EtcdTls {
                ca_cert: Some(garbage.clone()),
                ..good.clone()
            },
            "holds no PEM CERTIFICATE",
        ),
        (
            EtcdTls {
                key: Some(garbage.clone()),
                ..good.clone()
            },
            "client key file",
        ),
        (
            EtcdTls {
                // A certificate where the key should be.
                key: good.cert.clone(),
                ..good.clone()
            },
            "holds no PEM PRIVATE KEY",
        ),
        (
            EtcdTls {
                ca_cert: Some(dir.path().to_path_buf()),
                ..good.clone()
            },
            "CA certificate file",
        ),
    ];
    for (tls, want) in cases {
        match refused(&etcd.endpoint(), &tls) {
            StoreError::Config(m) => assert!(m.contains(want), "{m}"),
            other => panic!("{want}: {other:?}"),
        }
    }
    // And the spec: TLS files with a plain etcd:// are refused up front.
    assert!(matches!(
        open_with(&format!("etcd://{}", etcd.host_port()), &good),
        Err(StoreError::Config(_))
    ));
}

#[test]
fn an_unreadable_key_file_is_named() {
    let etcd = Etcd::start_tls();
    let tls = etcd.client_tls();
    let key = tls.key.clone().expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o000))
        .expect("chmod");
    // Root reads it anyway: the case only exists for other users.
    if std::fs::read(&key).is_ok() {
        return;
    }
    match refused(&etcd.endpoint(), &tls) {
        StoreError::Config(m) => assert!(m.contains("client key file"), "{m}"),
        other => panic!("{other:?}"),
    }
}
