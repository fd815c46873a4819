use std::fmt;
use std::str::FromStr;

use crate::error::excerpt;
use crate::{CniError, Code};

/// A CNI spec version. Only the versions podwire implements parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub patch: u8,
}

/// Every version podwire accepts, oldest first.
pub const SUPPORTED: [Version; 5] = [
    Version::new(0, 3, 0),
    Version::new(0, 3, 1),
    Version::new(0, 4, 0),
    Version::new(1, 0, 0),
    Version::new(1, 1, 0),
];

impl Version {
    pub const fn new(major: u8, minor: u8, patch: u8) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// The version CHECK appeared in.
    pub const CHECK: Version = Version::new(0, 4, 0);
    /// The version GC and STATUS appeared in.
    pub const GC_STATUS: Version = Version::new(1, 1, 0);
    pub const LATEST: Version = Version::new(1, 1, 0);

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn result_has_ip_version(self) -> bool {
        self < Version::new(1, 0, 0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for Version {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, CniError> {
        let parts: Vec<&str> = s.split('.').collect();
        let parsed: Option<Vec<u8>> = if parts.len() == 3 {
            parts.iter().map(|p| p.parse().ok()).collect()
        } else {
            None
        };
        let v = match parsed.as_deref() {
            Some([a, b, c]) => Version::new(*a, *b, *c),
            _ => {
                return Err(CniError::new(
                    Code::IncompatibleVersion,
                    format!("cniVersion {:?} is not a version", excerpt(s)),
                ))
            }
        };
        if SUPPORTED.contains(&v) {
            Ok(v)
        } else {
            Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "incompatible CNI versions: config is {s}, plugin supports {}",
                    supported_list().join(", ")
                ),
            ))
        }
    }
}

/// The supported versions as strings, for VERSION and messages.
pub fn supported_list() -> Vec<String> {
    SUPPORTED.iter().map(|v| v.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_rejects_others_with_code_1() {
        for v in supported_list() {
            assert_eq!(v.parse::<Version>().expect("supported").to_string(), v);
        }
        for bad in ["0.2.0", "1.2.0", "1.0", "x", ""] {
            let e = bad.parse::<Version>().expect_err(bad);
            assert_eq!(e.code, Code::IncompatibleVersion as u32, "{bad}");
        }
        assert!(Version::new(0, 4, 0) < Version::new(1, 0, 0));
    }
}
