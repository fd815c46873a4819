//! The etcd half of a datastore spec: `etcd://` (plain) or `etcd+https://`
//! (TLS), then `host:port` endpoints separated by commas. Checked before
//! anything is dialled, so a typo is a configuration error that says so,
//! not a SQLite file named after it or a connection that times out.

use crate::{EtcdTls, Result, StoreError};

const PLAIN: &str = "etcd://";
const TLS: &str = "etcd+https://";
/// More endpoints than any etcd cluster has members.
const MAX_ENDPOINTS: usize = 16;

/// Where an etcd is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSpec {
    /// `http://host:port` or `https://host:port`, as etcd-client takes them.
    pub endpoints: Vec<String>,
    /// Empty for plain HTTP.
    pub tls: EtcdTls,
}

fn config(msg: String) -> StoreError {
    StoreError::Config(msg)
}

/// `None` when `spec` is not an etcd spec (a SQLite one). An etcd spec
/// with the wrong TLS files for its scheme is an error: plain `etcd://`
/// with any file, `etcd+https://` without a CA, or a certificate without
/// its key (or the reverse).
pub fn parse_etcd_spec(spec: &str, tls: &EtcdTls) -> Result<Option<EtcdSpec>> {
    let (rest, scheme, secure) = if let Some(r) = spec.strip_prefix(TLS) {
        (r, "https", true)
    } else if let Some(r) = spec.strip_prefix(PLAIN) {
        (r, "http", false)
    } else if let Some((scheme, _)) = spec.split_once("://") {
        return Err(config(format!(
            "{spec}: unknown datastore scheme {scheme}:// (use sqlite:/path, \
             {PLAIN}host:port or {TLS}host:port)"
        )));
    } else {
        return Ok(None);
    };
    let endpoints = rest
        .split(',')
        .map(|e| endpoint(spec, e.trim()).map(|hp| format!("{scheme}://{hp}")))
        .collect::<Result<Vec<_>>>()?;
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(config(format!(
            "{spec}: {} endpoints (at most {MAX_ENDPOINTS})",
            endpoints.len()
        )));
    }
    if !secure {
        if !tls.is_empty() {
            return Err(config(format!(
                "etcd TLS files were given but {spec} is plain HTTP: write {TLS}{rest}"
            )));
        }
        return Ok(Some(EtcdSpec {
            endpoints,
            tls: EtcdTls::default(),
        }));
    }
    if tls.ca_cert.is_none() {
        return Err(config(format!(
            "{spec} needs the CA certificate that signed the etcd servers' \
             certificates (--etcd-ca-cert-file / ETCD_CA_CERT_FILE); no system \
             roots are trusted"
        )));
    }
    match (&tls.cert, &tls.key) {
        (Some(_), None) => Err(config(
            "an etcd client certificate was given without its key \
             (--etcd-key-file / ETCD_KEY_FILE)"
                .into(),
        )),
        (None, Some(_)) => Err(config(
            "an etcd client key was given without its certificate \
             (--etcd-cert-file / ETCD_CERT_FILE)"
                .into(),
        )),
        _ => Ok(Some(EtcdSpec {
            endpoints,
            tls: tls.clone(),
        })),
    }
}

/// One `host:port`: a name or address, and a port number.
fn endpoint<'a>(spec: &str, hp: &'a str) -> Result<&'a str> {
    let bad = |why: &str| config(format!("{spec}: endpoint {hp:?} {why} (want host:port)"));
    if hp.is_empty() {
        return Err(bad("is empty"));
    }
    if hp
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@' | '?' | '#'))
    {
        return Err(bad("is not a host and port"));
    }
    let (host, port) = hp.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(hp),
        _ => Err(bad("has no valid port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn files(ca: bool, cert: bool, key: bool) -> EtcdTls {
        EtcdTls {
            ca_cert: ca.then(|| PathBuf::from("/t/ca.pem")),
            cert: cert.then(|| PathBuf::from("/t/c.pem")),
            key: key.then(|| PathBuf::from("/t/k.pem")),
        }
    }

    #[test]
    fn schemes_give_urls_and_sqlite_is_not_etcd() {
        let none = EtcdTls::default();
        assert_eq!(parse_etcd_spec("sqlite:/x.db", &none).expect("ok"), None);
        assert_eq!(parse_etcd_spec("/x.db", &none).expect("ok"), None);
        let plain = parse_etcd_spec("etcd://10.0.0.1:2379,e2:2379", &none)
            .expect("ok")
            .expect("etcd");
        assert_eq!(plain.endpoints, ["http://10.0.0.1:2379", "http://e2:2379"]);
        let all = files(true, true, true);
        let tls = parse_etcd_spec("etcd+https://[::1]:2379", &all)
            .expect("ok")
            .expect("etcd");
        assert_eq!(tls.endpoints, ["https://[::1]:2379"]);
        assert_eq!(tls.tls, all);
        // Server verification without a client certificate is allowed.
        assert!(parse_etcd_spec("etcd+https://e:2379", &files(true, false, false)).is_ok());
    }

    #[test]
    fn wrong_files_for_the_scheme_and_bad_endpoints_are_config_errors() {
        let cases: &[(&str, EtcdTls, &str)] = &[
            ("etcd://e:2379", files(true, false, false), "plain HTTP"),
            (
                "etcd+https://e:2379",
                files(false, true, true),
                "CA certificate",
            ),
            (
                "etcd+https://e:2379",
                files(true, true, false),
                "without its key",
            ),
            (
                "etcd+https://e:2379",
                files(true, false, true),
                "without its certificate",
            ),
            (
                "etcds://e:2379",
                EtcdTls::default(),
                "unknown datastore scheme",
            ),
            (
                "https://e:2379",
                EtcdTls::default(),
                "unknown datastore scheme",
            ),
            ("etcd://", EtcdTls::default(), "is empty"),
            ("etcd://e", EtcdTls::default(), "no port"),
            ("etcd://e:0", EtcdTls::default(), "valid port"),
            ("etcd://e:99999", EtcdTls::default(), "valid port"),
            ("etcd://:2379", EtcdTls::default(), "no host"),
            ("etcd://http://e:2379", EtcdTls::default(), "not a host"),
            ("etcd://e:2379,", EtcdTls::default(), "is empty"),
        ];
        for (spec, tls, want) in cases {
            match parse_etcd_spec(spec, tls) {
                Err(StoreError::Config(m)) => assert!(m.contains(want), "{spec}: {m}"),
                other => panic!("{spec}: {other:?}"),
            }
        }
        let many = format!("etcd://{}", vec!["e:1"; 17].join(","));
        assert!(matches!(
            parse_etcd_spec(&many, &EtcdTls::default()),
            Err(StoreError::Config(_))
        ));
    }

    #[test]
    fn tls_files_for_sqlite_are_refused() {
        assert!(matches!(
            crate::open_with("sqlite:/nonexistent/x.db", &files(true, false, false)),
            Err(StoreError::Config(_))
        ));
    }
}
