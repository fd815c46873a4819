//! Decoding EC2 Query API answers. Pure functions of the reply text, so
//! every decoder can be tested (and attacked) without a server.

use std::net::Ipv4Addr;

use roxmltree::{Document, Node};

use ipnet::Ipv4Net;

use crate::ec2::{
    Assignment, Attachment, Ec2Error, Instance, InstanceTypeNetwork, NetworkInterface, PrivateIp,
    Subnet,
};

fn child<'a>(n: Node<'a, 'a>, name: &str) -> Option<Node<'a, 'a>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text(n: Node<'_, '_>, name: &str) -> String {
    child(n, name)
        .and_then(|c| c.text())
        .unwrap_or_default()
        .trim()
        .to_string()
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

/// The items of a set, refused when there are more than [`MAX_ITEMS`]: no
/// answer about one node legitimately lists that many, and every item
/// becomes memory and work in the agent.
fn bounded_items<'a>(
    action: &str,
    n: Node<'a, 'a>,
    set: &str,
) -> Result<Vec<Node<'a, 'a>>, Ec2Error> {
    let found = items(n, set);
    if found.len() > MAX_ITEMS {
        return Err(parse_error(
            action,
            format!("{set} lists {} items (at most {MAX_ITEMS})", found.len()),
        ));
    }
    Ok(found)
}

/// A delegated IPv4 prefix: exactly a /28 on its own boundary. Anything
/// else would hand the pool addresses the cloud never delegated (a /24
/// read as a /28's 16 addresses, or 256 of them).
pub fn parse_prefix(action: &str, s: &str) -> Result<Ipv4Net, Ec2Error> {
    let net: Ipv4Net = s
        .parse()
        .map_err(|_| parse_error(action, format!("{:?} is not an IPv4 prefix", clip(s))))?;
    if net.prefix_len() != 28 || net.network() != net.addr() {
        return Err(parse_error(
            action,
            format!("{net} is not an aligned /28 prefix"),
        ));
    }
    Ok(net)
}

fn prefixes(action: &str, n: Node<'_, '_>, set: &str) -> Result<Vec<Ipv4Net>, Ec2Error> {
    bounded_items(action, n, set)?
        .into_iter()
        .map(|i| parse_prefix(action, &text(i, "ipv4Prefix")))
        .collect()
}

/// `tagSet/item/{key,value}`, bounded as EC2 bounds them (keys up to 128
/// characters, values up to 256, at most 50 per resource).
fn tags(action: &str, n: Node<'_, '_>) -> Result<Vec<(String, String)>, Ec2Error> {
    let found = items(n, "tagSet");
    if found.len() > MAX_TAGS {
        return Err(parse_error(
            action,
            format!("{} tags (at most {MAX_TAGS})", found.len()),
        ));
    }
    let mut out = Vec::with_capacity(found.len());
    for t in found {
        let (k, v) = (text(t, "key"), text(t, "value"));
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(parse_error(
                action,
                "a tag with an empty or overlong key or value",
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn parse_error(action: &str, msg: impl Into<String>) -> Ec2Error {
    Ec2Error::Parse {
        action: action.into(),
        msg: msg.into(),
    }
}

/// The text of a child that must be there and not be empty.
fn required(action: &str, n: Node<'_, '_>, name: &str) -> Result<String, Ec2Error> {
    let t = text(n, name);
    if t.is_empty() {
        return Err(parse_error(action, format!("no {name}")));
    }
    Ok(t)
}

/// The items of a set that must be there (it may be empty). A missing set
/// is not an empty one: it means the answer is not what was asked for.
fn required_items<'a>(
    action: &str,
    n: Node<'a, 'a>,
    set: &str,
) -> Result<Vec<Node<'a, 'a>>, Ec2Error> {
    if child(n, set).is_none() {
        return Err(parse_error(action, format!("no {set}")));
    }
    Ok(items(n, set))
}

/// A number that must be there and fit `lo..=hi`: exactly what the text
/// says or an error, never a default and never wrapped.
fn number(
    action: &str,
    n: Node<'_, '_>,
    name: &str,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, Ec2Error> {
    let t = text(n, name);
    match t.parse::<u32>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(parse_error(
            action,
            format!(
                "{name} {t:?} is not a number in {}..={}",
                range.start(),
                range.end()
            ),
        )),
    }
}

fn parse_ip(action: &str, s: &str) -> Result<Ipv4Addr, Ec2Error> {
    s.parse().map_err(|_| Ec2Error::Parse {
        action: action.into(),
        msg: format!("{s:?} is not an IPv4 address"),
    })
}

fn parse_eni(action: &str, n: Node<'_, '_>) -> Result<NetworkInterface, Ec2Error> {
    let attachment = match child(n, "attachment") {
        Some(a) => Some(Attachment {
            attachment_id: text(a, "attachmentId"),
            instance_id: text(a, "instanceId"),
            // Never a default: 0 would make it the instance's primary ENI.
            // Bounded: the route table is the index + 1, which must not
            // saturate into another ENI's table.
            device_index: number(action, a, "deviceIndex", 0..=MAX_ENIS - 1)?,
            status: text(a, "status"),
        }),
        None => None,
    };
    let mut private_ips = Vec::new();
    for item in bounded_items(action, n, "privateIpAddressesSet")? {
        private_ips.push(PrivateIp {
            ip: parse_ip(action, &text(item, "privateIpAddress"))?,
            primary: text(item, "primary") == "true",
        });
    }
    Ok(NetworkInterface {
        id: required(action, n, "networkInterfaceId")?,
        subnet_id: text(n, "subnetId"),
        vpc_id: text(n, "vpcId"),
        description: text(n, "description"),
        status: text(n, "status"),
        mac: text(n, "macAddress"),
        private_ip: parse_ip(action, &text(n, "privateIpAddress"))?,
        private_ips,
        groups: bounded_items(action, n, "groupSet")?
            .iter()
            .map(|g| text(*g, "groupId"))
            .collect(),
        attachment,
        prefixes: prefixes(action, n, "ipv4PrefixSet")?,
        tags: tags(action, n)?,
    })
}

fn parse<T>(
    action: &str,
    xml: &str,
    f: impl FnOnce(Node<'_, '_>) -> Result<T, Ec2Error>,
) -> Result<T, Ec2Error> {
    let doc = Document::parse(xml).map_err(|e| parse_error(action, e.to_string()))?;
    let root = doc.root_element();
    // An error document or another action's answer (a 2xx from something
    // that is not EC2) is not an answer with nothing in it.
    let expected = format!("{action}Response");
    if root.tag_name().name() != expected {
        return Err(parse_error(
            action,
            format!(
                "the answer is a <{}>, not a <{expected}>",
                clip(root.tag_name().name())
            ),
        ));
    }
    f(root)
}

/// At most [`MAX_ERROR_MESSAGE`] characters of `s`.
fn clip(s: &str) -> String {
    s.chars().take(MAX_ERROR_MESSAGE).collect()
}

/// The error of a non-2xx answer: EC2's `<Code>` and `<Message>` when the
/// body is an error document, else the status and the body's start. The
/// code is never empty (callers match on it) and both are bounded.
pub fn error_reply(action: &str, status: u16, body: &str) -> Ec2Error {
    let parsed = Document::parse(body).ok().and_then(|d| {
        let err = d.descendants().find(|n| n.has_tag_name("Error"))?;
        Some((text(err, "Code"), text(err, "Message")))
    });
    let (code, message) = match parsed {
        Some((code, message)) if !code.is_empty() => (clip(&code), clip(&message)),
        Some((_, message)) => (format!("HTTP{status}"), clip(&message)),
        None => (format!("HTTP{status}"), body.chars().take(200).collect()),
    };
    Ec2Error::Api {
        action: action.into(),
        code,
        message,
        status,
    }
}

/// DescribeInstances for one instance id.
pub fn describe_instances(xml: &str, instance_id: &str) -> Result<Instance, Ec2Error> {
    let a = "DescribeInstances";
    parse(a, xml, |root| {
        let first = required_items(a, root, "reservationSet")?
            .into_iter()
            .flat_map(|r| items(r, "instancesSet"))
            .next();
        if let Some(i) = first {
            return Ok(Instance {
                id: required(a, i, "instanceId")?,
                instance_type: text(i, "instanceType"),
                subnet_id: text(i, "subnetId"),
                vpc_id: text(i, "vpcId"),
                private_ip: parse_ip(a, &text(i, "privateIpAddress"))?,
                groups: items(i, "groupSet")
                    .iter()
                    .map(|g| text(*g, "groupId"))
                    .collect(),
            });
        }
        Err(Ec2Error::Api {
            action: a.into(),
            code: "InvalidInstanceID.NotFound".into(),
            message: format!("{instance_id} not found"),
            status: 400,
        })
    })
}

/// DescribeInstanceTypes for one instance type.
pub fn describe_instance_types(
    xml: &str,
    instance_type: &str,
) -> Result<InstanceTypeNetwork, Ec2Error> {
    let a = "DescribeInstanceTypes";
    parse(a, xml, |root| {
        let item = required_items(a, root, "instanceTypeSet")?
            .into_iter()
            .next()
            .ok_or_else(|| Ec2Error::Parse {
                action: a.into(),
                msg: format!("no instance type {instance_type} in the answer"),
            })?;
        let net = child(item, "networkInfo").ok_or_else(|| Ec2Error::Parse {
            action: a.into(),
            msg: "no networkInfo".into(),
        })?;
        // Bounded so that the pool's ENIs × addresses cannot wrap a u32.
        Ok(InstanceTypeNetwork {
            instance_type: text(item, "instanceType"),
            max_enis: number(a, net, "maximumNetworkInterfaces", 1..=MAX_ENIS)?,
            ipv4_per_eni: number(a, net, "ipv4AddressesPerInterface", 1..=MAX_IPV4_PER_ENI)?,
            vcpus: match child(item, "vCpuInfo") {
                Some(v) => Some(number(a, v, "defaultVCpus", 1..=MAX_VCPUS)?),
                None => None,
            },
        })
    })
}

pub fn describe_network_interfaces(xml: &str) -> Result<Vec<NetworkInterface>, Ec2Error> {
    let a = "DescribeNetworkInterfaces";
    parse(a, xml, |root| {
        required_items(a, root, "networkInterfaceSet")?;
        bounded_items(a, root, "networkInterfaceSet")?
            .into_iter()
            .map(|n| parse_eni(a, n))
            .collect()
    })
}

pub fn create_network_interface(xml: &str) -> Result<NetworkInterface, Ec2Error> {
    let a = "CreateNetworkInterface";
    parse(a, xml, |root| {
        let n = child(root, "networkInterface").ok_or_else(|| Ec2Error::Parse {
            action: a.into(),
            msg: "no networkInterface".into(),
        })?;
        parse_eni(a, n)
    })
}

/// AttachNetworkInterface: the attachment id.
pub fn attach_network_interface(xml: &str) -> Result<String, Ec2Error> {
    let a = "AttachNetworkInterface";
    parse(a, xml, |root| required(a, root, "attachmentId"))
}

/// AssignPrivateIpAddresses: the addresses and prefixes the reply says
/// were assigned. At least one of the two sets must be there (an answer
/// with neither is not an answer to this call). Only a claim: the agent
/// checks it against DescribeNetworkInterfaces before using any of it.
pub fn assign_private_ip_addresses(xml: &str) -> Result<Assignment, Ec2Error> {
    let a = "AssignPrivateIpAddresses";
    parse(a, xml, |root| {
        let has_ips = child(root, "assignedPrivateIpAddressesSet").is_some();
        let has_prefixes = child(root, "assignedIpv4PrefixSet").is_some();
        if !has_ips && !has_prefixes {
            return Err(parse_error(
                a,
                "no assignedPrivateIpAddressesSet nor assignedIpv4PrefixSet",
            ));
        }
        let ips = bounded_items(a, root, "assignedPrivateIpAddressesSet")?
            .into_iter()
            .map(|i| parse_ip(a, &text(i, "privateIpAddress")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Assignment {
            ips,
            prefixes: prefixes(a, root, "assignedIpv4PrefixSet")?,
        })
    })
}

/// DetachNetworkInterface, UnassignPrivateIpAddresses,
/// DeleteNetworkInterface: an answer of this action (`<return>` is not
/// `false`).
pub fn acknowledged(action: &str, xml: &str) -> Result<(), Ec2Error> {
    parse(action, xml, |root| {
        if text(root, "return") == "false" {
            return Err(parse_error(
                action,
                "the answer says <return>false</return>",
            ));
        }
        Ok(())
    })
}

/// DescribeSubnets for one subnet id.
pub fn describe_subnets(xml: &str, subnet_id: &str) -> Result<Subnet, Ec2Error> {
    let a = "DescribeSubnets";
    parse(a, xml, |root| {
        let item = bounded_items(a, root, "subnetSet")?
            .into_iter()
            .find(|i| text(*i, "subnetId") == subnet_id)
            .ok_or_else(|| {
                parse_error(a, format!("no subnet {} in the answer", clip(subnet_id)))
            })?;
        let cidr: Ipv4Net = text(item, "cidrBlock")
            .parse()
            .map_err(|_| parse_error(a, "no usable cidrBlock"))?;
        Ok(Subnet {
            id: subnet_id.to_string(),
            cidr: cidr.trunc(),
            available: number(a, item, "availableIpAddressCount", 0..=1 << 24)?,
        })
    })
}

/// Most vCPUs an instance type may claim (today's largest: 896).
pub const MAX_VCPUS: u32 = 65_536;

/// Most items of one set in an answer (ENIs, addresses, prefixes).
pub const MAX_ITEMS: usize = 4096;

/// Most tags on one resource (EC2's own limit).
pub const MAX_TAGS: usize = 50;

/// Longest error code or message kept from a reply (they end up in logs).
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Most ENIs an instance type may claim. Today's largest have a few dozen;
/// with [`MAX_IPV4_PER_ENI`] the product stays far inside a u32.
pub const MAX_ENIS: u32 = 1024;

/// Most IPv4 addresses per ENI an instance type may claim (today: 50).
pub const MAX_IPV4_PER_ENI: u32 = 1024;

#[cfg(test)]
mod proptests;
