//! IPv4 prefix delegation as EC2 has it: /28 prefixes aligned on 16
//! addresses, taken from the subnet but never its first or last /28 (they
//! hold the subnet's reserved addresses).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::model::{api_err, ApiError};

/// The only prefix length EC2 delegates for IPv4.
pub const PREFIX_LEN: u8 = 28;

/// Every address inside a prefix (all 16 are usable by the ENI's owner).
pub fn addresses(p: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(p.network());
    let last = u32::from(p.broadcast());
    (first..=last).map(Ipv4Addr::from)
}

/// The aligned /28s of `subnet` a prefix may be, in address order.
pub fn candidates(subnet: Ipv4Net) -> Vec<Ipv4Net> {
    if subnet.prefix_len() >= PREFIX_LEN {
        return Vec::new();
    }
    let subnets: Vec<Ipv4Net> = match subnet.subnets(PREFIX_LEN) {
        Ok(s) => s.collect(),
        Err(_) => return Vec::new(),
    };
    let n = subnets.len();
    subnets
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != 0 && *i + 1 != n)
        .map(|(_, p)| p)
        .collect()
}

/// Parses a requested `Ipv4Prefix.N`: a /28, aligned, one of the subnet's
/// candidates. EC2 answers `InvalidParameterValue` otherwise.
pub fn parse_requested(subnet: Ipv4Net, s: &str) -> Result<Ipv4Net, ApiError> {
    let bad = |why: &str| {
        api_err(
            "InvalidParameterValue",
            format!(
                "Value ({}) for parameter Ipv4Prefix is invalid: {why}",
                s.chars().take(64).collect::<String>().escape_debug()
            ),
        )
    };
    let p: Ipv4Net = s.parse().map_err(|_| bad("not an IPv4 prefix"))?;
    if p.prefix_len() != PREFIX_LEN {
        return Err(bad("only /28 prefixes can be delegated"));
    }
    if p.addr() != p.network() {
        return Err(bad("the prefix is not aligned on its /28"));
    }
    if !subnet.contains(&p) {
        return Err(bad("the prefix is outside the subnet"));
    }
    if !candidates(subnet).contains(&p) {
        return Err(bad(
            "the first and last /28 of a subnet hold its reserved addresses",
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    #[test]
    fn candidates_skip_the_first_and_last_28() {
        let c = candidates(net("10.0.0.0/26"));
        assert_eq!(c, vec![net("10.0.0.16/28"), net("10.0.0.32/28")]);
        assert!(candidates(net("10.0.0.0/27")).is_empty());
        assert!(candidates(net("10.0.0.0/28")).is_empty());
        assert_eq!(candidates(net("10.0.0.0/20")).len(), 254);
        assert_eq!(addresses(net("10.0.0.16/28")).count(), 16);
    }

    #[test]
    fn requested_prefixes_must_be_aligned_28s_inside_the_subnet() {
        let s = net("10.0.0.0/24");
        assert_eq!(
            parse_requested(s, "10.0.0.32/28").expect("ok"),
            net("10.0.0.32/28")
        );
        for bad in [
            "10.0.0.33/28",
            "10.0.0.32/27",
            "10.0.0.32",
            "10.0.1.32/28",
            "10.0.0.0/28",
            "10.0.0.240/28",
            "x",
            "",
        ] {
            assert_eq!(
                parse_requested(s, bad).expect_err(bad).code,
                "InvalidParameterValue",
                "{bad}"
            );
        }
    }
}
