use serde::Serialize;

/// Error codes. 1–99 are the spec's; 100 and up are podwire's own and are
/// documented in docs/ERRORS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    PluginNotAvailable = 50,
    NotAvailableLimitedConnectivity = 51,
    /// The node has no address left for the pod (instance-type ENI/IP limit,
    /// subnet or pool exhausted).
    IpExhausted = 100,
    /// The agent answered with an error that is not one of the others.
    Agent = 101,
    /// An attachment with this container id and interface name exists.
    AlreadyExists = 102,
    /// Programming the kernel failed.
    Kernel = 103,
    /// CHECK found the pod's network differs from what ADD made.
    CheckFailed = 104,
    /// The agent is reachable but answered in a protocol we do not speak.
    Protocol = 105,
}

/// The spec's error object: printed on stdout, exit status non-zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    #[serde(rename = "cniVersion", skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            cni_version: None,
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Adds the cniVersion field the runtime asked for (set when known).
    pub fn for_version(mut self, version: &str) -> Self {
        self.cni_version = Some(version.to_string());
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code))
    }
}

/// At most 64 characters of `s`, for echoing outside input in a message:
/// the error object stays small whatever the runtime sent.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_fields() {
        let e = CniError::new(Code::InvalidEnv, "CNI_IFNAME is empty").for_version("1.0.0");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).expect("json");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "CNI_IFNAME is empty");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v.get("details").is_none());
    }
}
