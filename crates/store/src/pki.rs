//! A throwaway certificate authority for an etcd that podwire itself runs:
//! the lab's, and the tests'. It makes one CA, server certificates for the
//! addresses etcd listens on, and client certificates for the agents, and
//! writes keys readable by their owner only. Not a production PKI: no
//! revocation, no rotation; a cluster brings its own certificates and hands
//! the agents their file names (Calico's ETCD_CA_CERT_FILE and friends).
//! (Feature `pki`.)

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::EtcdTls;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that signs server and client certificates.
pub struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// From an hour ago (clocks of namespaces on one host agree, but a test
/// machine's may have just been set) for ten years: a lab lives as long
/// as it is up, and the certificates go with it.
fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
}

impl Pki {
    /// A new CA named `name` (its common name).
    pub fn new(name: &str) -> Result<Pki, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM: what clients and servers trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn leaf(
        &self,
        name: &str,
        sans: Vec<SanType>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for these addresses. It may act as a client
    /// too: etcd's own gateway dials the server with it.
    pub fn server(&self, name: &str, ips: &[IpAddr]) -> Result<Issued, PkiError> {
        let sans = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        self.leaf(
            name,
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A client certificate (its common name is the client's name in
    /// etcd's logs, and its user when etcd's auth is on).
    pub fn client(&self, name: &str) -> Result<Issued, PkiError> {
        self.leaf(name, Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth])
    }
}

/// Writes `bytes` to `path`, readable and writable by its owner only,
/// whatever the file's mode was before.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    // An existing file keeps its mode through open(): set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The files of one etcd with TLS, as [`write_etcd_files`] lays them out
/// in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// What a client (an agent) is given.
    pub client: EtcdTls,
}

impl EtcdFiles {
    /// Where the files are under `dir`.
    pub fn in_dir(dir: &Path) -> EtcdFiles {
        EtcdFiles {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client: EtcdTls {
                ca_cert: Some(dir.join("ca.pem")),
                cert: Some(dir.join("client.pem")),
                key: Some(dir.join("client-key.pem")),
            },
        }
    }
}

/// Makes a CA, a server certificate for `ips` and one client certificate
/// named `client`, and writes them all 0600 under `dir` (created 0700).
/// The CA's key is not kept: nothing more is ever signed.
pub fn write_etcd_files(dir: &Path, ips: &[IpAddr], client: &str) -> Result<EtcdFiles, PkiError> {
    let err = |source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    let pki = Pki::new("podwire etcd CA")?;
    let server = pki.server("podwire etcd", ips)?;
    let client_cert = pki.client(client)?;
    let files = EtcdFiles::in_dir(dir);
    write_private(&files.ca_cert, pki.ca_pem().as_bytes())?;
    write_private(&files.server_cert, server.cert_pem.as_bytes())?;
    write_private(&files.server_key, server.key_pem.as_bytes())?;
    if let (Some(c), Some(k)) = (&files.client.cert, &files.client.key) {
        write_private(c, client_cert.cert_pem.as_bytes())?;
        write_private(k, client_cert.key_pem.as_bytes())?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_even_when_they_existed_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("tls");
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let old = d.join("client-key.pem");
        std::fs::write(&old, b"old").expect("write");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let files = write_etcd_files(&d, &["127.0.0.1".parse().expect("ip")], "c").expect("pki");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        for p in [
            &files.ca_cert,
            &files.server_cert,
            &files.server_key,
            files.client.cert.as_ref().expect("cert"),
            files.client.key.as_ref().expect("key"),
        ] {
            assert_eq!(mode(p), 0o600, "{}", p.display());
            let text = std::fs::read_to_string(p).expect("read");
            assert!(text.starts_with("-----BEGIN "), "{}", p.display());
        }
    }
}
