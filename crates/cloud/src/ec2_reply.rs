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

fn parse_ip(action: &str, s: &str) -> Result<Ipv4Addr, Ec2Error> {
    s.parse().map_err(|_| Ec2Error::Parse {
        action: action.into(),
        msg: format!("{s:?} is not an IPv4 address"),
    })
}

fn parse_eni(action: &str, n: Node<'_, '_>) -> Result<NetworkInterface, Ec2Error> {
    let attachment = child(n, "attachment").map(|a| Attachment {
        attachment_id: text(a, "attachmentId"),
        instance_id: text(a, "instanceId"),
        device_index: text(a, "deviceIndex").parse().unwrap_or(0),
        status: text(a, "status"),
    });
    let mut private_ips = Vec::new();
    for item in items(n, "privateIpAddressesSet") {
        private_ips.push(PrivateIp {
            ip: parse_ip(action, &text(item, "privateIpAddress"))?,
            primary: text(item, "primary") == "true",
        });
    }
    Ok(NetworkInterface {
        id: text(n, "networkInterfaceId"),
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
    let doc = Document::parse(xml).map_err(|e| Ec2Error::Parse {
        action: action.into(),
        msg: e.to_string(),
    })?;
    f(doc.root_element())
}

/// The error of a non-2xx answer: EC2's `<Code>` and `<Message>` when the
/// body is an error document, else the status and the body's start.
pub fn error_reply(action: &str, status: u16, body: &str) -> Ec2Error {
    let (code, message) = Document::parse(body)
        .ok()
        .and_then(|d| {
            let err = d.descendants().find(|n| n.has_tag_name("Error"))?;
            Some((text(err, "Code"), text(err, "Message")))
        })
        .unwrap_or_else(|| (format!("HTTP{status}"), body.chars().take(200).collect()));
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
        let first = items(root, "reservationSet")
            .into_iter()
            .flat_map(|r| items(r, "instancesSet"))
            .next();
        if let Some(i) = first {
            return Ok(Instance {
                id: text(i, "instanceId"),
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
        let item = items(root, "instanceTypeSet")
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
        let num = |k: &str| {
            text(net, k).parse::<u32>().map_err(|_| Ec2Error::Parse {
                action: a.into(),
                msg: format!("{k} is not a number"),
            })
        };
        Ok(InstanceTypeNetwork {
            instance_type: text(item, "instanceType"),
            max_enis: num("maximumNetworkInterfaces")?,
            ipv4_per_eni: num("ipv4AddressesPerInterface")?,
        })
    })
}

pub fn describe_network_interfaces(xml: &str) -> Result<Vec<NetworkInterface>, Ec2Error> {
    let a = "DescribeNetworkInterfaces";
    parse(a, xml, |root| {
        items(root, "networkInterfaceSet")
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
    parse("AttachNetworkInterface", xml, |root| {
        Ok(text(root, "attachmentId"))
    })
}

/// AssignPrivateIpAddresses: the addresses assigned.
pub fn assign_private_ip_addresses(xml: &str) -> Result<Vec<Ipv4Addr>, Ec2Error> {
    let a = "AssignPrivateIpAddresses";
    parse(a, xml, |root| {
        items(root, "assignedPrivateIpAddressesSet")
            .into_iter()
            .map(|i| parse_ip(a, &text(i, "privateIpAddress")))
            .collect()
    })
}
