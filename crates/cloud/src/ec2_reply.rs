//! Decoding EC2 Query API answers. Pure functions of the reply text, so
//! every decoder can be tested (and attacked) without a server.

use std::net::Ipv4Addr;

use roxmltree::{Document, Node};

use crate::ec2::{
    Attachment, Ec2Error, Instance, InstanceTypeNetwork, NetworkInterface, PrivateIp,
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
    for item in items(n, "privateIpAddressesSet") {
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
        groups: items(n, "groupSet")
            .iter()
            .map(|g| text(*g, "groupId"))
            .collect(),
        attachment,
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
        })
    })
}

pub fn describe_network_interfaces(xml: &str) -> Result<Vec<NetworkInterface>, Ec2Error> {
    let a = "DescribeNetworkInterfaces";
    parse(a, xml, |root| {
        required_items(a, root, "networkInterfaceSet")?
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

/// AssignPrivateIpAddresses: the addresses assigned.
pub fn assign_private_ip_addresses(xml: &str) -> Result<Vec<Ipv4Addr>, Ec2Error> {
    let a = "AssignPrivateIpAddresses";
    parse(a, xml, |root| {
        required_items(a, root, "assignedPrivateIpAddressesSet")?
            .into_iter()
            .map(|i| parse_ip(a, &text(i, "privateIpAddress")))
            .collect()
    })
}

/// Longest error code or message kept from a reply (they end up in logs).
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Most ENIs an instance type may claim. Today's largest have a few dozen;
/// with [`MAX_IPV4_PER_ENI`] the product stays far inside a u32.
pub const MAX_ENIS: u32 = 1024;

/// Most IPv4 addresses per ENI an instance type may claim (today: 50).
pub const MAX_IPV4_PER_ENI: u32 = 1024;

#[cfg(test)]
mod proptests;
