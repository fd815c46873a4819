//! Decoding IMDS answers. Pure functions of the answer text, so each can be
//! tested (and attacked) without a metadata service.
//!
//! What IMDS says goes into URLs (MACs, the role name), HTTP headers (the
//! token, the credentials) and the EC2 endpoint the agent builds from the
//! region, so each value is checked against the shape AWS documents before
//! it is used: a bad answer is an error naming the path, never a request
//! somewhere else.

use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::imds::ImdsError;
use crate::Credentials;

/// Most ENIs (MACs) an instance may list; more than any instance type has
/// (see `ec2_reply::MAX_ENIS`).
pub const MAX_ENIS: usize = crate::ec2_reply::MAX_ENIS as usize;

/// Longest session token accepted (AWS's are about 60 characters).
pub const MAX_TOKEN: usize = 1024;

/// Longest credential field accepted (session tokens run to about 2 KB).
pub const MAX_CREDENTIAL: usize = 8192;

fn bad(path: &str, msg: impl Into<String>) -> ImdsError {
    ImdsError::Parse {
        path: path.into(),
        msg: msg.into(),
    }
}

/// `s` shortened for an error message.
fn show(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    format!("{short:?}")
}

fn visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

/// The session token of `PUT /latest/api/token`: it is sent back as a
/// header, so it must be one (visible ASCII, bounded, not empty).
pub fn token(body: &str) -> Result<String, ImdsError> {
    let t = body.trim();
    if t.is_empty() || t.len() > MAX_TOKEN || !visible_ascii(t) {
        return Err(bad(
            "/latest/api/token",
            format!("not a session token: {}", show(t)),
        ));
    }
    Ok(t.to_string())
}

/// A single value that must parse as `T`.
pub fn value<T: FromStr>(path: &str, body: &str) -> Result<T, ImdsError> {
    let v = body.trim();
    v.parse()
        .map_err(|_| bad(path, format!("unexpected value {}", show(v))))
}

/// A MAC address as IMDS writes it (`0e:49:61:0f:c3:11`); it becomes part
/// of metadata paths, so nothing else may pass.
pub fn mac(path: &str, s: &str) -> Result<String, ImdsError> {
    let s = s.trim();
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(bad(path, format!("not a MAC address: {}", show(s))));
    }
    Ok(s.to_string())
}

/// `network/interfaces/macs/`: one `<mac>/` per line, each once.
pub fn mac_listing(path: &str, body: &str) -> Result<Vec<String>, ImdsError> {
    let mut out: Vec<String> = Vec::new();
    for line in body
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .filter(|l| !l.is_empty())
    {
        let m = mac(path, line)?;
        if out.iter().any(|o| o.eq_ignore_ascii_case(&m)) {
            return Err(bad(path, format!("{m} is listed twice")));
        }
        if out.len() == MAX_ENIS {
            return Err(bad(path, format!("more than {MAX_ENIS} interfaces")));
        }
        out.push(m);
    }
    Ok(out)
}

/// An ENI's device number: it picks the ENI's route table (number + 1), so
/// it is bounded like EC2's device index and cannot collide at `u32::MAX`.
pub fn device_number(path: &str, body: &str) -> Result<u32, ImdsError> {
    let n: u32 = value(path, body)?;
    if n >= crate::ec2_reply::MAX_ENIS {
        return Err(bad(
            path,
            format!(
                "device number {n} is not below {}",
                crate::ec2_reply::MAX_ENIS
            ),
        ));
    }
    Ok(n)
}

/// One address per line (`local-ipv4s`).
pub fn ipv4_list(path: &str, body: &str) -> Result<Vec<Ipv4Addr>, ImdsError> {
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| value(path, l))
        .collect()
}

/// One item per line, empty lines skipped (`security-group-ids`).
pub fn list(body: &str) -> Vec<String> {
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// An identifier (instance id, instance type, ENI or subnet id): letters,
/// digits, `-` and `.`, at most 128 characters.
pub fn id(path: &str, body: &str) -> Result<String, ImdsError> {
    let s = body.trim();
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !ok {
        return Err(bad(path, format!("not an identifier: {}", show(s))));
    }
    Ok(s.to_string())
}

/// A region or availability zone (`us-east-1`, `us-east-1a`): the agent
/// builds the EC2 endpoint `ec2.<region>.amazonaws.com` from it, so only
/// lowercase letters, digits and inner dashes pass (no dots, slashes, `@`
/// or ports that would send signed requests to another host).
pub fn region(path: &str, body: &str) -> Result<String, ImdsError> {
    let s = body.trim();
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        return Err(bad(path, format!("not a region or zone: {}", show(s))));
    }
    Ok(s.to_string())
}

/// The role of `iam/security-credentials/` (its first line). It becomes
/// part of the next path, so it must be an IAM role name: letters, digits
/// and `+=,.@_-`, at most 64 characters, and not `.` or `..`.
pub fn role(path: &str, body: &str) -> Result<String, ImdsError> {
    let r = body.lines().next().unwrap_or_default().trim();
    let ok = !r.is_empty()
        && r.len() <= 64
        && r != "."
        && r != ".."
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if !ok {
        return Err(bad(path, format!("not a role name: {}", show(r))));
    }
    Ok(r.to_string())
}

/// The credentials document of a role. `Code`, when present, must be
/// `Success`; the key id and token are sent as headers, so they must be
/// visible ASCII; an empty `Token` means none.
pub fn credentials(path: &str, doc: &str) -> Result<Credentials, ImdsError> {
    let v: serde_json::Value = serde_json::from_str(doc).map_err(|e| bad(path, e.to_string()))?;
    if let Some(code) = v.get("Code") {
        if code.as_str() != Some("Success") {
            return Err(bad(path, format!("Code is {}", show(&code.to_string()))));
        }
    }
    let field = |k: &str, required: bool| -> Result<Option<String>, ImdsError> {
        match v.get(k) {
            None | Some(serde_json::Value::Null) if !required => Ok(None),
            Some(serde_json::Value::String(s)) if s.is_empty() && !required => Ok(None),
            Some(serde_json::Value::String(s))
                if !s.is_empty() && s.len() <= MAX_CREDENTIAL && visible_ascii(s) =>
            {
                Ok(Some(s.clone()))
            }
            _ => Err(bad(path, format!("no usable {k}"))),
        }
    };
    let required = |k: &str| field(k, true)?.ok_or_else(|| bad(path, format!("no {k}")));
    Ok(Credentials {
        access_key_id: required("AccessKeyId")?,
        secret_access_key: required("SecretAccessKey")?,
        session_token: field("Token", false)?,
    })
}

#[cfg(test)]
mod proptests;
