//! SigV4 for the EC2 Query API, through `aws-sigv4`. Also used by the lab's
//! cloud to verify what clients send, by signing the same canonical request
//! again with the secret it knows.

use std::time::SystemTime;

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use crate::Credentials;

#[derive(Debug, thiserror::Error)]
#[error("SigV4 signing: {0}")]
pub struct SignError(String);

/// Signs a request and returns the headers to add (Authorization,
/// X-Amz-Date, and X-Amz-Security-Token when there is a session token).
/// The parts of an HTTP request that SigV4 covers.
#[derive(Debug, Clone, Copy)]
pub struct Signable<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

pub fn sign_headers(
    creds: &Credentials,
    region: &str,
    service: &str,
    req: Signable<'_>,
    time: SystemTime,
) -> Result<Vec<(String, String)>, SignError> {
    let Signable {
        method,
        url,
        headers,
        body,
    } = req;
    let identity = AwsCredentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "podwire",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| SignError(e.to_string()))?;
    let (instructions, _sig) = sign(signable, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Parses `X-Amz-Date` (`20261128T135000Z`) into a time.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || !s.ends_with('Z') || s.as_bytes().get(8) != Some(&b'T') {
        return None;
    }
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0, 4)?,
        n(4, 6)?,
        n(6, 8)?,
        n(9, 11)?,
        n(11, 13)?,
        n(13, 15)?,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(creds: &Credentials, t: SystemTime) -> Vec<(String, String)> {
        let hdrs = vec![(
            "host".to_string(),
            "ec2.us-east-1.amazonaws.com".to_string(),
        )];
        let req = Signable {
            method: "POST",
            url: "https://ec2.us-east-1.amazonaws.com/",
            headers: &hdrs,
            body: b"Action=X",
        };
        sign_headers(creds, "us-east-1", "ec2", req, t).expect("sign")
    }

    #[test]
    fn signature_is_deterministic_and_key_dependent() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: None,
        };
        let t = parse_amz_date("20261128T135000Z").expect("date");
        let a = sign(&creds, t);
        assert_eq!(a, sign(&creds, t));
        let auth = &a
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .expect("auth")
            .1;
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261128/us-east-1/ec2/aws4_request"
        ));
        let other = Credentials {
            secret_access_key: "other".into(),
            ..creds
        };
        assert_ne!(a, sign(&other, t));
        let date = &a
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-date"))
            .expect("date")
            .1;
        assert_eq!(date, "20261128T135000Z");
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// The lab verifies client requests with this: any header value
            /// gives a time or None, never a panic.
            #[test]
            fn amz_dates_never_panic(s in prop_oneof![any::<String>(), "[0-9+\\-]{8}T[0-9+\\-]{6}Z"]) {
                let _ = parse_amz_date(&s);
            }

            /// What the signer writes, the parser reads back to the second.
            #[test]
            fn amz_dates_round_trip(secs in 0u64..253_402_300_799) {
                let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
                let creds = Credentials {
                    access_key_id: "AKID".into(),
                    secret_access_key: "s".into(),
                    session_token: None,
                };
                let signed = sign(&creds, t);
                let date = &signed
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-date"))
                    .expect("date")
                    .1;
                prop_assert_eq!(parse_amz_date(date), Some(t));
            }
        }
    }
}
