//! EC2 security groups as the audit reasons about them: which inbound rule
//! of the groups of the ENI that holds an address admits a packet (by
//! protocol, port and source), read from DescribeSecurityGroups and
//! DescribeNetworkInterfaces replies (EC2's own XML, so a real VPC's groups
//! are read exactly like the lab's).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use roxmltree::{Document, Node};
use serde::Serialize;

use crate::AuditError;

/// The largest reply read (a VPC with thousands of ENIs stays far below).
pub const MAX_REPLY_BYTES: usize = 32 << 20;

/// A rule's protocol, EC2's `IpProtocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SgProtocol {
    /// `-1`: every protocol and port.
    All,
    Tcp,
    Udp,
    Icmp,
    /// Any other IP protocol number: never TCP or UDP.
    Other(u8),
}

/// The transport a question is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transport {
    Tcp,
    Udp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SgSource {
    Cidr(Ipv4Net),
    /// Every address of every ENI in the group (pods' too, in vpc mode).
    Group(String),
}

/// One inbound rule: a protocol, a port range (TCP/UDP), a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SgRule {
    pub protocol: SgProtocol,
    pub from_port: i32,
    pub to_port: i32,
    pub source: SgSource,
}

impl SgRule {
    fn covers(&self, t: Transport, port: u16) -> bool {
        let p = i32::from(port);
        match (self.protocol, t) {
            (SgProtocol::All, _) => true,
            (SgProtocol::Tcp, Transport::Tcp) | (SgProtocol::Udp, Transport::Udp) => {
                self.from_port <= p && p <= self.to_port
            }
            _ => false,
        }
    }

    fn describe(&self) -> String {
        let what = match self.protocol {
            SgProtocol::All => "all traffic".to_string(),
            SgProtocol::Tcp | SgProtocol::Udp => {
                let proto = if self.protocol == SgProtocol::Tcp {
                    "TCP"
                } else {
                    "UDP"
                };
                if self.from_port == self.to_port {
                    format!("{proto} {}", self.from_port)
                } else {
                    format!("{proto} {}-{}", self.from_port, self.to_port)
                }
            }
            SgProtocol::Icmp => "ICMP".to_string(),
            SgProtocol::Other(n) => format!("protocol {n}"),
        };
        let from = match &self.source {
            SgSource::Cidr(c) => c.to_string(),
            SgSource::Group(g) => format!("group {g}"),
        };
        format!("{what} from {from}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub rules: Vec<SgRule>,
}

/// An ENI: its groups and every address it receives for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Eni {
    pub id: String,
    pub groups: Vec<String>,
    pub addresses: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
}

impl Eni {
    fn holds(&self, ip: Ipv4Addr) -> bool {
        self.addresses.contains(&ip) || self.prefixes.iter().any(|p| p.contains(&ip))
    }
}

/// The groups and ENIs of a VPC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SecurityGroups {
    pub groups: BTreeMap<String, SecurityGroup>,
    pub enis: Vec<Eni>,
}

/// Whether the VPC delivers a packet to an address, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgDecision {
    pub allowed: bool,
    pub reason: String,
}

impl SecurityGroups {
    pub fn new(groups: Vec<SecurityGroup>, enis: Vec<Eni>) -> SecurityGroups {
        SecurityGroups {
            groups: groups.into_iter().map(|g| (g.id.clone(), g)).collect(),
            enis,
        }
    }

    pub fn eni_of(&self, ip: Ipv4Addr) -> Option<&Eni> {
        self.enis.iter().find(|e| e.holds(ip))
    }

    fn is_member(&self, group: &str, ip: Ipv4Addr) -> bool {
        self.enis
            .iter()
            .any(|e| e.groups.iter().any(|g| g == group) && e.holds(ip))
    }

    /// Every CIDR a rule names and every ENI address: inside each of them
    /// the answer of [`SecurityGroups::admits`] is the same for every source.
    pub fn boundaries(&self) -> Vec<Ipv4Net> {
        let mut v: Vec<Ipv4Net> = self
            .groups
            .values()
            .flat_map(|g| g.rules.iter())
            .filter_map(|r| match &r.source {
                SgSource::Cidr(c) => Some(*c),
                SgSource::Group(_) => None,
            })
            .collect();
        for e in &self.enis {
            v.extend(e.addresses.iter().map(|a| Ipv4Net::from(*a)));
            v.extend(e.prefixes.iter().copied());
        }
        v
    }

    /// Does the VPC deliver `t`/`port` from `src` to `dst`? Stateful (EC2's
    /// groups are), so only the opening packet's direction is asked.
    pub fn admits(&self, dst: Ipv4Addr, src: Ipv4Addr, t: Transport, port: u16) -> SgDecision {
        let Some(eni) = self.eni_of(dst) else {
            return SgDecision {
                allowed: false,
                reason: format!("no ENI holds {dst}: the VPC delivers nothing to it"),
            };
        };
        for gid in &eni.groups {
            let Some(g) = self.groups.get(gid) else {
                continue;
            };
            for r in &g.rules {
                let source_ok = match &r.source {
                    SgSource::Cidr(c) => c.contains(&src),
                    SgSource::Group(sg) => self.is_member(sg, src),
                };
                if source_ok && r.covers(t, port) {
                    return SgDecision {
                        allowed: true,
                        reason: format!(
                            "security group {} ({}) of {} admits {t} {port} from {src}: rule {}",
                            g.id,
                            g.name,
                            eni.id,
                            r.describe()
                        ),
                    };
                }
            }
        }
        let names: Vec<&str> = eni.groups.iter().map(String::as_str).collect();
        SgDecision {
            allowed: false,
            reason: format!(
                "no rule of the security groups of {} ({}) admits {t} {port} from {src}: the VPC drops it",
                eni.id,
                names.join(", ")
            ),
        }
    }
}

fn bad(what: &str, msg: impl Into<String>) -> AuditError {
    AuditError::Ec2Reply {
        action: what.to_string(),
        msg: msg.into(),
    }
}

fn child<'a>(n: Node<'a, 'a>, name: &str) -> Option<Node<'a, 'a>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text(n: Node<'_, '_>, name: &str) -> Option<String> {
    child(n, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
}

fn items<'a>(n: Node<'a, 'a>, set: &str) -> Vec<Node<'a, 'a>> {
    child(n, set)
        .map(|s| {
            s.children()
                .filter(|c| c.is_element() && c.tag_name().name() == "item")
                .collect()
        })
        .unwrap_or_default()
}

fn parse_doc<'a>(action: &str, xml: &'a str) -> Result<Document<'a>, AuditError> {
    if xml.len() > MAX_REPLY_BYTES {
        return Err(bad(action, format!("reply over {MAX_REPLY_BYTES} bytes")));
    }
    Document::parse(xml).map_err(|e| bad(action, e.to_string()))
}

fn protocol(action: &str, s: &str) -> Result<SgProtocol, AuditError> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "-1" | "all" => SgProtocol::All,
        "tcp" | "6" => SgProtocol::Tcp,
        "udp" | "17" => SgProtocol::Udp,
        "icmp" | "1" => SgProtocol::Icmp,
        other => SgProtocol::Other(
            other
                .parse()
                .map_err(|_| bad(action, format!("unknown ipProtocol {other:?}")))?,
        ),
    })
}

/// The groups of a DescribeSecurityGroups reply (inbound rules only:
/// egress is not what decides who reaches a pod).
pub fn parse_security_groups(xml: &str) -> Result<Vec<SecurityGroup>, AuditError> {
    const A: &str = "DescribeSecurityGroups";
    let doc = parse_doc(A, xml)?;
    let mut out = Vec::new();
    for g in items(doc.root_element(), "securityGroupInfo") {
        let id = text(g, "groupId").ok_or_else(|| bad(A, "a group without groupId"))?;
        let mut rules = Vec::new();
        for p in items(g, "ipPermissions") {
            let proto = protocol(
                A,
                &text(p, "ipProtocol").ok_or_else(|| bad(A, format!("{id}: no ipProtocol")))?,
            )?;
            let port = |name: &str| -> Result<i32, AuditError> {
                match text(p, name) {
                    None => Ok(-1),
                    Some(v) => v
                        .parse()
                        .map_err(|_| bad(A, format!("{id}: {name} {v:?} is not a number"))),
                }
            };
            let (from_port, to_port) = match proto {
                SgProtocol::All => (-1, -1),
                _ => (port("fromPort")?, port("toPort")?),
            };
            let mut sources = Vec::new();
            for s in items(p, "groups") {
                if let Some(gid) = text(s, "groupId") {
                    sources.push(SgSource::Group(gid));
                }
            }
            for s in items(p, "ipRanges") {
                let c = text(s, "cidrIp").ok_or_else(|| bad(A, format!("{id}: no cidrIp")))?;
                let net: Ipv4Net = c
                    .parse()
                    .map_err(|_| bad(A, format!("{id}: cidrIp {c:?} is not a CIDR")))?;
                sources.push(SgSource::Cidr(net.trunc()));
            }
            rules.extend(sources.into_iter().map(|source| SgRule {
                protocol: proto,
                from_port,
                to_port,
                source,
            }));
        }
        out.push(SecurityGroup {
            name: text(g, "groupName").unwrap_or_default(),
            id,
            rules,
        });
    }
    Ok(out)
}

/// The ENIs of a DescribeNetworkInterfaces reply: groups, addresses,
/// delegated prefixes.
pub fn parse_network_interfaces(xml: &str) -> Result<Vec<Eni>, AuditError> {
    const A: &str = "DescribeNetworkInterfaces";
    let doc = parse_doc(A, xml)?;
    let mut out = Vec::new();
    for n in items(doc.root_element(), "networkInterfaceSet") {
        let id = text(n, "networkInterfaceId").ok_or_else(|| bad(A, "an ENI without id"))?;
        let groups = items(n, "groupSet")
            .into_iter()
            .filter_map(|g| text(g, "groupId"))
            .collect();
        let mut addresses = Vec::new();
        for a in items(n, "privateIpAddressesSet") {
            if let Some(s) = text(a, "privateIpAddress") {
                addresses.push(
                    s.parse()
                        .map_err(|_| bad(A, format!("{id}: address {s:?}")))?,
                );
            }
        }
        if let Some(s) = text(n, "privateIpAddress") {
            let ip: Ipv4Addr = s
                .parse()
                .map_err(|_| bad(A, format!("{id}: address {s:?}")))?;
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        let mut prefixes = Vec::new();
        for p in items(n, "ipv4PrefixSet") {
            if let Some(s) = text(p, "ipv4Prefix") {
                prefixes.push(
                    s.parse()
                        .map_err(|_| bad(A, format!("{id}: prefix {s:?}")))?,
                );
            }
        }
        out.push(Eni {
            id,
            groups,
            addresses,
            prefixes,
        });
    }
    Ok(out)
}

/// The groups of `aws ec2 describe-security-groups` output (JSON:
/// `SecurityGroups[].{GroupId, GroupName, IpPermissions[].{IpProtocol,
/// FromPort, ToPort, IpRanges[].CidrIp, UserIdGroupPairs[].GroupId}}`).
pub fn parse_security_groups_json(text: &str) -> Result<Vec<SecurityGroup>, AuditError> {
    const A: &str = "describe-security-groups (JSON)";
    let v = parse_json(A, text)?;
    let mut out = Vec::new();
    for g in array(&v, "SecurityGroups") {
        let id = string(g, "GroupId").ok_or_else(|| bad(A, "a group without GroupId"))?;
        let mut rules = Vec::new();
        for p in array(g, "IpPermissions") {
            let proto = protocol(
                A,
                &string(p, "IpProtocol").ok_or_else(|| bad(A, format!("{id}: no IpProtocol")))?,
            )?;
            let port = |k: &str| -> Result<i32, AuditError> {
                match p.get(k) {
                    None | Some(serde_json::Value::Null) => Ok(-1),
                    Some(n) => n
                        .as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| bad(A, format!("{id}: {k} {n} is not a port"))),
                }
            };
            let (from_port, to_port) = match proto {
                SgProtocol::All => (-1, -1),
                _ => (port("FromPort")?, port("ToPort")?),
            };
            let mut sources = Vec::new();
            for pair in array(p, "UserIdGroupPairs") {
                if let Some(gid) = string(pair, "GroupId") {
                    sources.push(SgSource::Group(gid));
                }
            }
            for r in array(p, "IpRanges") {
                let c = string(r, "CidrIp").ok_or_else(|| bad(A, format!("{id}: no CidrIp")))?;
                let net: Ipv4Net = c
                    .parse()
                    .map_err(|_| bad(A, format!("{id}: CidrIp {c:?} is not a CIDR")))?;
                sources.push(SgSource::Cidr(net.trunc()));
            }
            rules.extend(sources.into_iter().map(|source| SgRule {
                protocol: proto,
                from_port,
                to_port,
                source,
            }));
        }
        out.push(SecurityGroup {
            name: string(g, "GroupName").unwrap_or_default(),
            id,
            rules,
        });
    }
    Ok(out)
}

/// The ENIs of `aws ec2 describe-network-interfaces` output (JSON:
/// `NetworkInterfaces[].{NetworkInterfaceId, Groups[].GroupId,
/// PrivateIpAddresses[].PrivateIpAddress, Ipv4Prefixes[].Ipv4Prefix}`).
pub fn parse_network_interfaces_json(text: &str) -> Result<Vec<Eni>, AuditError> {
    const A: &str = "describe-network-interfaces (JSON)";
    let v = parse_json(A, text)?;
    let mut out = Vec::new();
    for n in array(&v, "NetworkInterfaces") {
        let id = string(n, "NetworkInterfaceId").ok_or_else(|| bad(A, "an ENI without id"))?;
        let groups = array(n, "Groups")
            .filter_map(|g| string(g, "GroupId"))
            .collect();
        let mut addresses = Vec::new();
        let listed = array(n, "PrivateIpAddresses").filter_map(|a| string(a, "PrivateIpAddress"));
        for s in string(n, "PrivateIpAddress").into_iter().chain(listed) {
            let ip: Ipv4Addr = s
                .parse()
                .map_err(|_| bad(A, format!("{id}: address {s:?}")))?;
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        let mut prefixes = Vec::new();
        for s in array(n, "Ipv4Prefixes").filter_map(|p| string(p, "Ipv4Prefix")) {
            prefixes.push(
                s.parse()
                    .map_err(|_| bad(A, format!("{id}: prefix {s:?}")))?,
            );
        }
        out.push(Eni {
            id,
            groups,
            addresses,
            prefixes,
        });
    }
    Ok(out)
}

/// Either form of a reply: EC2's XML (`<…`) or the AWS CLI's JSON.
pub fn parse_security_groups_any(text: &str) -> Result<Vec<SecurityGroup>, AuditError> {
    if text.trim_start().starts_with('<') {
        parse_security_groups(text)
    } else {
        parse_security_groups_json(text)
    }
}

/// Either form of a reply: EC2's XML (`<…`) or the AWS CLI's JSON.
pub fn parse_network_interfaces_any(text: &str) -> Result<Vec<Eni>, AuditError> {
    if text.trim_start().starts_with('<') {
        parse_network_interfaces(text)
    } else {
        parse_network_interfaces_json(text)
    }
}

fn parse_json(action: &str, text: &str) -> Result<serde_json::Value, AuditError> {
    if text.len() > MAX_REPLY_BYTES {
        return Err(bad(action, format!("over {MAX_REPLY_BYTES} bytes")));
    }
    serde_json::from_str(text).map_err(|e| bad(action, e.to_string()))
}

fn array<'a>(v: &'a serde_json::Value, key: &str) -> impl Iterator<Item = &'a serde_json::Value> {
    v.get(key).and_then(|a| a.as_array()).into_iter().flatten()
}

fn string(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|s| s.as_str()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SGS: &str = r#"<DescribeSecurityGroupsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId><securityGroupInfo>
<item><ownerId>0</ownerId><groupId>sg-node</groupId><groupName>nodes</groupName><ipPermissions>
<item><ipProtocol>-1</ipProtocol><groups><item><userId>0</userId><groupId>sg-node</groupId></item></groups><ipRanges/></item>
<item><ipProtocol>tcp</ipProtocol><fromPort>80</fromPort><toPort>81</toPort><groups><item><groupId>sg-ext</groupId></item></groups><ipRanges><item><cidrIp>192.168.0.0/24</cidrIp></item></ipRanges></item>
</ipPermissions></item>
<item><groupId>sg-ext</groupId><groupName>ext</groupName><ipPermissions/></item>
</securityGroupInfo></DescribeSecurityGroupsResponse>"#;

    const ENIS: &str = r#"<DescribeNetworkInterfacesResponse><networkInterfaceSet>
<item><networkInterfaceId>eni-1</networkInterfaceId><privateIpAddress>10.0.1.10</privateIpAddress><groupSet><item><groupId>sg-node</groupId><groupName>nodes</groupName></item></groupSet>
<privateIpAddressesSet><item><privateIpAddress>10.0.1.10</privateIpAddress><primary>true</primary></item><item><privateIpAddress>10.0.1.20</privateIpAddress><primary>false</primary></item></privateIpAddressesSet>
<ipv4PrefixSet><item><ipv4Prefix>10.0.1.48/28</ipv4Prefix></item></ipv4PrefixSet></item>
<item><networkInterfaceId>eni-2</networkInterfaceId><privateIpAddress>10.0.1.5</privateIpAddress><groupSet><item><groupId>sg-ext</groupId></item></groupSet><privateIpAddressesSet/><ipv4PrefixSet/></item>
</networkInterfaceSet></DescribeNetworkInterfacesResponse>"#;

    fn model() -> SecurityGroups {
        SecurityGroups::new(
            parse_security_groups(SGS).expect("groups"),
            parse_network_interfaces(ENIS).expect("enis"),
        )
    }

    #[test]
    fn replies_parse_into_rules_and_enis() {
        let m = model();
        let node = &m.groups["sg-node"];
        assert_eq!(node.rules.len(), 3, "{:?}", node.rules);
        assert_eq!(node.rules[1].protocol, SgProtocol::Tcp);
        assert_eq!((node.rules[1].from_port, node.rules[1].to_port), (80, 81));
        assert_eq!(m.enis[0].addresses.len(), 2);
        assert_eq!(m.enis[0].prefixes.len(), 1);
        assert_eq!(m.enis[1].addresses, vec![Ipv4Addr::new(10, 0, 1, 5)]);
        assert!(parse_security_groups("<x").is_err());
        let unknown = SGS.replace(
            "<ipProtocol>tcp</ipProtocol>",
            "<ipProtocol>gre</ipProtocol>",
        );
        assert!(parse_security_groups(&unknown).is_err());
    }

    #[test]
    fn the_aws_clis_json_reads_as_the_xml_does() {
        let sgs = r#"{"SecurityGroups":[
          {"GroupId":"sg-node","GroupName":"nodes","IpPermissions":[
            {"IpProtocol":"-1","UserIdGroupPairs":[{"UserId":"0","GroupId":"sg-node"}],"IpRanges":[]},
            {"IpProtocol":"tcp","FromPort":80,"ToPort":81,"UserIdGroupPairs":[{"GroupId":"sg-ext"}],
             "IpRanges":[{"CidrIp":"192.168.0.0/24","Description":"office"}]}]},
          {"GroupId":"sg-ext","GroupName":"ext","IpPermissions":[]}]}"#;
        let enis = r#"{"NetworkInterfaces":[
          {"NetworkInterfaceId":"eni-1","PrivateIpAddress":"10.0.1.10","Groups":[{"GroupId":"sg-node","GroupName":"nodes"}],
           "PrivateIpAddresses":[{"PrivateIpAddress":"10.0.1.10","Primary":true},{"PrivateIpAddress":"10.0.1.20","Primary":false}],
           "Ipv4Prefixes":[{"Ipv4Prefix":"10.0.1.48/28"}]},
          {"NetworkInterfaceId":"eni-2","PrivateIpAddress":"10.0.1.5","Groups":[{"GroupId":"sg-ext"}]}]}"#;
        let from_json = SecurityGroups::new(
            parse_security_groups_any(sgs).expect("groups"),
            parse_network_interfaces_any(enis).expect("enis"),
        );
        let xml = model();
        assert_eq!(from_json.groups, xml.groups);
        for (a, b) in from_json.enis.iter().zip(xml.enis.iter()) {
            assert_eq!(
                (&a.id, &a.groups, &a.prefixes),
                (&b.id, &b.groups, &b.prefixes)
            );
            let (mut x, mut y) = (a.addresses.clone(), b.addresses.clone());
            x.sort();
            y.sort();
            assert_eq!(x, y);
        }
        assert!(parse_security_groups_any("{").is_err());
        assert!(parse_security_groups_any(r#"{"SecurityGroups":[{"GroupName":"x"}]}"#).is_err());
    }

    #[test]
    fn rules_decide_by_source_protocol_and_port() {
        let m = model();
        let ext = Ipv4Addr::new(10, 0, 1, 5);
        let pod = Ipv4Addr::new(10, 0, 1, 20);
        let prefixed = Ipv4Addr::new(10, 0, 1, 50);
        // The external host's group is admitted on TCP 80-81 only.
        assert!(m.admits(pod, ext, Transport::Tcp, 80).allowed);
        assert!(m.admits(prefixed, ext, Transport::Tcp, 81).allowed);
        let d = m.admits(pod, ext, Transport::Tcp, 82);
        assert!(!d.allowed && d.reason.contains("sg-node"), "{}", d.reason);
        assert!(!m.admits(pod, ext, Transport::Udp, 80).allowed);
        // Members of the node group (its ENIs' every address) get all.
        assert!(
            m.admits(pod, Ipv4Addr::new(10, 0, 1, 10), Transport::Udp, 4789)
                .allowed
        );
        assert!(m.admits(pod, prefixed, Transport::Tcp, 9).allowed);
        // A CIDR source.
        assert!(
            m.admits(pod, Ipv4Addr::new(192, 168, 0, 7), Transport::Tcp, 80)
                .allowed
        );
        assert!(
            !m.admits(pod, Ipv4Addr::new(192, 168, 1, 7), Transport::Tcp, 80)
                .allowed
        );
        // An address no ENI holds receives nothing.
        assert!(
            !m.admits(Ipv4Addr::new(10, 0, 9, 9), ext, Transport::Tcp, 80)
                .allowed
        );
        // Nothing admits the external host itself (its group has no rule).
        assert!(!m.admits(ext, pod, Transport::Tcp, 80).allowed);
    }
}
