//! Reading the network configuration from stdin, bounded: the runtime's
//! bytes are outside input, and a config is never near a megabyte (a
//! conflist entry with a chained prevResult is a few KiB).

use std::io::Read;

use crate::{CniError, Code};

/// The most stdin may carry.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads stdin to its end, never holding more than [`MAX_CONFIG_BYTES`] + 1
/// bytes. Too much is code 7 (the spec's "invalid network config": a
/// validation of the config failed); a read error is code 5 (I/O).
pub fn read_config(reader: impl Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    reader
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            CniError::new(
                Code::Io,
                format!("reading the network config from stdin: {e}"),
            )
        })?;
    if u64::try_from(buf.len()).map_or(true, |n| n > MAX_CONFIG_BYTES) {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!(
                "network config on stdin is larger than 1 MiB ({MAX_CONFIG_BYTES} bytes); refused unread"
            ),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what was pulled from the inner reader.
    struct Counting<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += u64::try_from(n).unwrap_or(u64::MAX);
            Ok(n)
        }
    }

    #[test]
    fn endless_stdin_is_cut_at_the_cap() {
        let mut r = Counting {
            inner: std::io::repeat(b'a'),
            read: 0,
        };
        let e = read_config(&mut r).expect_err("endless");
        assert_eq!(e.code, Code::InvalidConfig as u32);
        assert!(e.msg.contains("1 MiB"), "{}", e.msg);
        assert_eq!(r.read, MAX_CONFIG_BYTES + 1);
    }

    #[test]
    fn up_to_the_cap_is_read_whole() {
        let cap = usize::try_from(MAX_CONFIG_BYTES).expect("fits");
        let data = vec![b' '; cap];
        assert_eq!(read_config(&data[..]).expect("at cap").len(), cap);
        let data = vec![b' '; cap + 1];
        assert_eq!(read_config(&data[..]).expect_err("over").code, 7);
    }

    #[test]
    fn read_error_is_code_5() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("gone"))
            }
        }
        assert_eq!(read_config(Broken).expect_err("io").code, 5);
    }
}
