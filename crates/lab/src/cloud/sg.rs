//! Security group rules as EC2 has them: a protocol (`tcp`, `udp`, `icmp`
//! or `-1` for all), a port range (for ICMP: type and code, -1 meaning
//! any), and a source (a CIDR or the members of a group). Parsing of
//! `IpPermissions.N` with EC2's errors lives here, so the API and the
//! fabric share one meaning.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::model::{api_err, ApiError};

/// Where a rule admits traffic from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum IngressSource {
    /// Every address of every ENI in the group (pods' addresses included).
    Group(String),
    Cidr(Ipv4Net),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `-1`: every protocol, every port.
    All,
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    /// EC2's spelling in replies.
    pub fn ec2_name(self) -> &'static str {
        match self {
            Protocol::All => "-1",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// One ingress rule. For TCP/UDP the ports are a range 0..=65535; for ICMP
/// `from_port` is the type and `to_port` the code (-1: any); for `All`
/// both are -1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct IngressRule {
    pub protocol: Protocol,
    pub from_port: i32,
    pub to_port: i32,
    pub source: IngressSource,
}

impl IngressRule {
    /// All traffic from `source`.
    pub fn all_from(source: IngressSource) -> IngressRule {
        IngressRule {
            protocol: Protocol::All,
            from_port: -1,
            to_port: -1,
            source,
        }
    }
}

/// EC2's default quota of inbound rules per security group.
pub const MAX_RULES: usize = 60;

fn invalid(msg: String) -> ApiError {
    api_err("InvalidParameterValue", msg)
}

fn clip(s: &str) -> String {
    s.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

fn port(p: &BTreeMap<String, String>, key: &str) -> Result<Option<i32>, ApiError> {
    p.get(key)
        .map(|v| {
            v.parse::<i32>()
                .map_err(|_| invalid(format!("Invalid value '{}' for {key}", clip(v))))
        })
        .transpose()
}

/// Protocol and port range of `IpPermissions.N`, checked as EC2 does.
fn protocol_and_ports(
    p: &BTreeMap<String, String>,
    n: usize,
) -> Result<(Protocol, i32, i32), ApiError> {
    let key = |k: &str| format!("IpPermissions.{n}.{k}");
    let raw = p.get(&key("IpProtocol")).ok_or_else(|| {
        api_err(
            "MissingParameter",
            format!(
                "The request must contain the parameter {}",
                key("IpProtocol")
            ),
        )
    })?;
    let protocol = match raw.to_ascii_lowercase().as_str() {
        "-1" | "all" => Protocol::All,
        "tcp" | "6" => Protocol::Tcp,
        "udp" | "17" => Protocol::Udp,
        "icmp" | "1" => Protocol::Icmp,
        _ => {
            return Err(invalid(format!(
                "Invalid value '{}' for IP protocol. Unknown protocol (the lab has tcp, udp, icmp and -1).",
                clip(raw)
            )))
        }
    };
    let (from, to) = (port(p, &key("FromPort"))?, port(p, &key("ToPort"))?);
    match protocol {
        // EC2: with -1 every port is open, whatever ports were given.
        Protocol::All => Ok((protocol, -1, -1)),
        Protocol::Tcp | Protocol::Udp => {
            let (Some(from), Some(to)) = (from, to) else {
                return Err(invalid(
                    "Invalid value 'Must specify both from and to ports with TCP/UDP.' for portRange".into(),
                ));
            };
            if !(0..=65535).contains(&from) || !(0..=65535).contains(&to) || from > to {
                return Err(invalid(format!(
                    "Invalid value '{from}-{to}' for portRange: ports are 0 to 65535, from at most to"
                )));
            }
            Ok((protocol, from, to))
        }
        Protocol::Icmp => {
            let (t, c) = (from.unwrap_or(-1), to.unwrap_or(-1));
            if !(-1..=255).contains(&t) || !(-1..=255).contains(&c) || (t == -1 && c != -1) {
                return Err(invalid(format!(
                    "Invalid value '{t}/{c}' for ICMP type/code: -1 or 0 to 255, and a code needs a type"
                )));
            }
            Ok((protocol, t, c))
        }
    }
}

/// Every rule of `IpPermissions.1..N`; `group_exists` checks group sources.
pub fn parse_permissions(
    p: &BTreeMap<String, String>,
    group_exists: &dyn Fn(&str) -> bool,
) -> Result<Vec<IngressRule>, ApiError> {
    let mut rules = Vec::new();
    for n in 1.. {
        let prefix = format!("IpPermissions.{n}.");
        if !p.keys().any(|k| k.starts_with(&prefix)) {
            break;
        }
        let (protocol, from_port, to_port) = protocol_and_ports(p, n)?;
        let mut sources = Vec::new();
        for m in 1.. {
            let Some(g) = p.get(&format!("{prefix}Groups.{m}.GroupId")) else {
                break;
            };
            if !group_exists(g) {
                return Err(api_err(
                    "InvalidGroup.NotFound",
                    format!("The security group '{}' does not exist", clip(g)),
                ));
            }
            sources.push(IngressSource::Group(g.clone()));
        }
        for m in 1.. {
            let Some(c) = p.get(&format!("{prefix}IpRanges.{m}.CidrIp")) else {
                break;
            };
            let net: Ipv4Net = c
                .parse()
                .map_err(|_| invalid(format!("CIDR block {} is malformed", clip(c))))?;
            if net.addr() != net.network() {
                return Err(invalid(format!(
                    "CIDR block {} is malformed: host bits are set",
                    clip(c)
                )));
            }
            sources.push(IngressSource::Cidr(net));
        }
        if sources.is_empty() {
            return Err(api_err(
                "MissingParameter",
                format!("{prefix}* needs IpRanges or Groups (UserIdGroupPairs)"),
            ));
        }
        rules.extend(sources.into_iter().map(|source| IngressRule {
            protocol,
            from_port,
            to_port,
            source,
        }));
    }
    if rules.is_empty() {
        return Err(api_err(
            "MissingParameter",
            "The request must contain the parameter IpPermissions",
        ));
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(kv: &[(&str, &str)]) -> Result<Vec<IngressRule>, String> {
        parse_permissions(&p(kv), &|g| g == "sg-1").map_err(|e| e.code)
    }

    #[test]
    fn permissions_parse_as_ec2_reads_them() {
        let r = parse(&[
            ("IpPermissions.1.IpProtocol", "tcp"),
            ("IpPermissions.1.FromPort", "80"),
            ("IpPermissions.1.ToPort", "81"),
            ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/16"),
            ("IpPermissions.1.Groups.1.GroupId", "sg-1"),
            ("IpPermissions.2.IpProtocol", "-1"),
            ("IpPermissions.2.FromPort", "5"),
            ("IpPermissions.2.IpRanges.1.CidrIp", "192.168.0.0/24"),
            ("IpPermissions.3.IpProtocol", "icmp"),
            ("IpPermissions.3.FromPort", "8"),
            ("IpPermissions.3.ToPort", "-1"),
            ("IpPermissions.3.IpRanges.1.CidrIp", "0.0.0.0/0"),
        ])
        .expect("ok");
        assert_eq!(r.len(), 4);
        assert_eq!(
            (r[0].protocol, r[0].from_port, r[0].to_port),
            (Protocol::Tcp, 80, 81)
        );
        assert_eq!(
            r[1].source,
            IngressSource::Cidr("10.0.0.0/16".parse().expect("net"))
        );
        assert_eq!(
            (r[2].protocol, r[2].from_port),
            (Protocol::All, -1),
            "ports ignored for -1"
        );
        assert_eq!(
            (r[3].protocol, r[3].from_port, r[3].to_port),
            (Protocol::Icmp, 8, -1)
        );
    }

    #[test]
    fn bad_permissions_get_ec2s_errors() {
        let cidr = ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/16");
        for (kv, code) in [
            (
                vec![
                    ("IpPermissions.1.IpProtocol", "tcp"),
                    ("IpPermissions.1.FromPort", "80"),
                    cidr,
                ],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("IpPermissions.1.IpProtocol", "tcp"),
                    ("IpPermissions.1.FromPort", "81"),
                    ("IpPermissions.1.ToPort", "80"),
                    cidr,
                ],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("IpPermissions.1.IpProtocol", "udp"),
                    ("IpPermissions.1.FromPort", "0"),
                    ("IpPermissions.1.ToPort", "65536"),
                    cidr,
                ],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("IpPermissions.1.IpProtocol", "tcp"),
                    ("IpPermissions.1.FromPort", "x"),
                    ("IpPermissions.1.ToPort", "1"),
                    cidr,
                ],
                "InvalidParameterValue",
            ),
            (
                vec![("IpPermissions.1.IpProtocol", "gre"), cidr],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("IpPermissions.1.IpProtocol", "icmp"),
                    ("IpPermissions.1.FromPort", "-1"),
                    ("IpPermissions.1.ToPort", "3"),
                    cidr,
                ],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("IpPermissions.1.IpProtocol", "icmp"),
                    ("IpPermissions.1.FromPort", "256"),
                    cidr,
                ],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("IpPermissions.1.IpProtocol", "-1"),
                    ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.1/16"),
                ],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("IpPermissions.1.IpProtocol", "-1"),
                    ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/33"),
                ],
                "InvalidParameterValue",
            ),
            (
                vec![
                    ("IpPermissions.1.IpProtocol", "-1"),
                    ("IpPermissions.1.Groups.1.GroupId", "sg-nope"),
                ],
                "InvalidGroup.NotFound",
            ),
            (
                vec![("IpPermissions.1.IpProtocol", "-1")],
                "MissingParameter",
            ),
            (
                vec![("IpPermissions.1.FromPort", "1"), cidr],
                "MissingParameter",
            ),
            (vec![], "MissingParameter"),
        ] {
            assert_eq!(parse(&kv).expect_err("bad"), code, "{kv:?}");
        }
    }
}
