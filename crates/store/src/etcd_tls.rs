//! TLS for the etcd backend: the CA, certificate and key files read and
//! checked before anything is dialled, and — when a first request fails —
//! a handshake of our own that finds out why. gRPC over HTTP/2 hides the
//! reason: a server that refuses our client certificate shows up as a
//! "broken pipe" on the next write, and plain HTTP to a TLS server as a
//! closed stream. A direct handshake sees the TLS alert (or the untrusted
//! certificate) and says which setting is wrong.

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Identity, TlsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::{EtcdTls, Result, StoreError};

/// A certificate or key file is a few kilobytes; a bigger one is not ours.
const MAX_PEM_FILE: u64 = 1 << 20;

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC
/// client sends first. A server that accepted the handshake answers it; one
/// that did not sends its alert instead.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The files, read and parsed.
#[derive(Clone)]
pub(crate) struct TlsMaterial {
    files: EtcdTls,
    ca: Vec<u8>,
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn read_bounded(what: &str, path: &Path) -> Result<Vec<u8>> {
    let fail = |why: String| StoreError::Config(format!("{what} {}: {why}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(fail(format!("larger than {MAX_PEM_FILE} bytes")));
    }
    Ok(bytes)
}

fn certificates(what: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let fail = |why: String| StoreError::Config(format!("{what} {}: {why}", path.display()));
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM CERTIFICATE".into()));
    }
    Ok(certs)
}

impl TlsMaterial {
    /// Reads the files of `tls` (a CA at least); every problem names its
    /// file.
    pub(crate) fn load(tls: &EtcdTls) -> Result<TlsMaterial> {
        let ca_path = tls.ca_cert.as_deref().ok_or_else(|| {
            StoreError::Config("etcd over TLS needs a CA certificate file".into())
        })?;
        let what = "etcd CA certificate file";
        let ca = read_bounded(what, ca_path)?;
        let roots = certificates(what, ca_path, &ca)?;
        let identity = match (&tls.cert, &tls.key) {
            (Some(cert_path), Some(key_path)) => {
                let what = "etcd client certificate file";
                let cert = read_bounded(what, cert_path)?;
                certificates(what, cert_path, &cert)?;
                let what = "etcd client key file";
                let key = read_bounded(what, key_path)?;
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
                    StoreError::Config(format!(
                        "{what} {}: holds no PEM PRIVATE KEY ({e})",
                        key_path.display()
                    ))
                })?;
                Some((cert, key))
            }
            (None, None) => None,
            _ => {
                return Err(StoreError::Config(
                    "an etcd client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(TlsMaterial {
            files: tls.clone(),
            ca,
            roots,
            identity,
        })
    }

    /// What etcd-client (tonic) is configured with.
    pub(crate) fn options(&self) -> TlsOptions {
        let opts = TlsOptions::new().ca_certificate(Certificate::from_pem(&self.ca));
        match &self.identity {
            Some((cert, key)) => opts.identity(Identity::from_pem(cert, key)),
            None => opts,
        }
    }

    /// The same trust and identity for our own handshake.
    fn client_config(&self) -> std::result::Result<ClientConfig, rustls::Error> {
        let mut roots = RootCertStore::empty();
        for c in &self.roots {
            roots.add(c.clone())?;
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// Only the server's certificate matters to the probe of a plain
/// endpoint: trusting nothing, any TLS server fails verification, which
/// proves it speaks TLS.
fn trust_nothing() -> std::result::Result<ClientConfig, rustls::Error> {
    Ok(
        ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
    )
}

/// `host:port` and the host of an `http(s)://host:port` endpoint.
fn host_port(endpoint: &str) -> Option<(&str, &str)> {
    let hp = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let (host, _) = hp.rsplit_once(':')?;
    Some((hp, host.trim_start_matches('[').trim_end_matches(']')))
}

fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Why the etcd at `endpoint` would not talk to us, found by a handshake
/// of our own within `budget`; None when no TLS reason shows (the server
/// is down, or the problem is not TLS).
pub(crate) async fn diagnose(
    endpoint: &str,
    tls: Option<&TlsMaterial>,
    budget: Duration,
) -> Option<StoreError> {
    let (hp, host) = host_port(endpoint)?;
    let name = ServerName::try_from(host.to_string()).ok()?;
    let tcp = tokio::time::timeout(budget, TcpStream::connect(hp))
        .await
        .ok()?
        .ok()?;
    match tls {
        Some(m) => diagnose_tls(endpoint, m, name, tcp, budget).await,
        None => diagnose_plain(endpoint, name, tcp, budget).await,
    }
}

/// Plain HTTP failed: does the server speak TLS?
async fn diagnose_plain(
    endpoint: &str,
    name: ServerName<'static>,
    tcp: TcpStream,
    budget: Duration,
) -> Option<StoreError> {
    let connector = TlsConnector::from(Arc::new(trust_nothing().ok()?));
    let r = tokio::time::timeout(budget, connector.connect(name, tcp))
        .await
        .ok()?;
    let speaks_tls = match r {
        Ok(_) => true,
        Err(e) => matches!(
            rustls_error(&e),
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_))
        ),
    };
    speaks_tls.then(|| {
        StoreError::Tls(format!(
            "the etcd at {endpoint} speaks TLS but was dialled over plain HTTP: \
             use etcd+https:// with its CA certificate (--etcd-ca-cert-file) and a \
             client certificate (--etcd-cert-file, --etcd-key-file)"
        ))
    })
}

async fn diagnose_tls(
    endpoint: &str,
    m: &TlsMaterial,
    name: ServerName<'static>,
    tcp: TcpStream,
    budget: Duration,
) -> Option<StoreError> {
    let ca = m.files.ca_cert.as_deref().map(Path::display);
    let ca = ca.map(|c| c.to_string()).unwrap_or_default();
    let connector = TlsConnector::from(Arc::new(m.client_config().ok()?));
    let handshake = tokio::time::timeout(budget, connector.connect(name, tcp))
        .await
        .ok()?;
    let mut stream = match handshake {
        Ok(s) => s,
        Err(e) => {
            return Some(match rustls_error(&e) {
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                )) => StoreError::Tls(format!(
                    "the etcd at {endpoint} presented a certificate not signed by the CA in {ca}"
                )),
                Some(rustls::Error::InvalidCertificate(
                    c @ (CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. }),
                )) => StoreError::Tls(format!(
                    "the etcd at {endpoint} presented a certificate for another name ({c:?})"
                )),
                Some(rustls::Error::InvalidCertificate(c)) => StoreError::Tls(format!(
                    "the etcd at {endpoint} presented a certificate we cannot accept: {c:?}"
                )),
                Some(rustls::Error::AlertReceived(a)) => refused(endpoint, m, *a),
                Some(rustls::Error::InvalidMessage(_)) => StoreError::Tls(format!(
                    "the etcd at {endpoint} does not speak TLS: use etcd:// (or give it \
                     a certificate)"
                )),
                _ => StoreError::Tls(format!("TLS handshake with the etcd at {endpoint}: {e}")),
            });
        }
    };
    // TLS 1.3: our side of the handshake is done before the server has
    // judged our certificate; its verdict comes with the first read.
    tokio::time::timeout(budget, async {
        stream.write_all(H2_PREFACE).await?;
        stream.flush().await?;
        let mut buf = [0u8; 64];
        stream.read(&mut buf).await
    })
    .await
    .ok()
    .and_then(|r| match r {
        Ok(n) if n > 0 => None,
        Ok(_) => Some(StoreError::Tls(format!(
            "the etcd at {endpoint} closed the connection after the TLS handshake{}",
            if m.identity.is_none() {
                ": it may require a client certificate (--etcd-cert-file, --etcd-key-file)"
            } else {
                ""
            }
        ))),
        Err(e) => Some(match rustls_error(&e) {
            Some(rustls::Error::AlertReceived(a)) => refused(endpoint, m, *a),
            _ => StoreError::Tls(format!(
                "the etcd at {endpoint} ended the connection after the TLS handshake: {e}"
            )),
        }),
    })
}

/// The server sent an alert about us: no certificate, or one it rejects.
fn refused(endpoint: &str, m: &TlsMaterial, alert: AlertDescription) -> StoreError {
    match (&m.files.cert, alert) {
        (None, _) => StoreError::Tls(format!(
            "the etcd at {endpoint} requires a client certificate and none was given \
             (--etcd-cert-file, --etcd-key-file); it sent alert {alert:?}"
        )),
        (Some(cert), _) => StoreError::Tls(format!(
            "the etcd at {endpoint} refused the client certificate {} (alert {alert:?}): \
             is it signed by a CA the server trusts (--trusted-ca-file)?",
            cert.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_into_host_and_port() {
        assert_eq!(
            host_port("https://10.0.0.1:2379"),
            Some(("10.0.0.1:2379", "10.0.0.1"))
        );
        assert_eq!(host_port("http://[::1]:2379"), Some(("[::1]:2379", "::1")));
        assert_eq!(host_port("https://e"), None);
    }
}
