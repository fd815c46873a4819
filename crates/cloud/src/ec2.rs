//! EC2 Query API client: the calls a node agent needs, nothing more.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use roxmltree::{Document, Node};

use crate::{http, sigv4, Credentials};

pub const API_VERSION: &str = "2016-11-15";

#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// EC2 answered with an error document (`<Code>` and `<Message>`).
    #[error("EC2 {action}: {code}: {message}")]
    Api {
        action: String,
        code: String,
        message: String,
        status: u16,
    },
    #[error("EC2 {action}: {source}")]
    Http {
        action: String,
        source: http::HttpError,
    },
    #[error("EC2 {action}: unreadable answer: {msg}")]
    Parse { action: String, msg: String },
    #[error(transparent)]
    Sign(#[from] sigv4::SignError),
}

impl Ec2Error {
    pub fn code(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub attachment_id: String,
    pub instance_id: String,
    pub device_index: u32,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateIp {
    pub ip: Ipv4Addr,
    pub primary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    pub id: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub description: String,
    pub status: String,
    pub mac: String,
    pub private_ip: Ipv4Addr,
    pub private_ips: Vec<PrivateIp>,
    pub groups: Vec<String>,
    pub attachment: Option<Attachment>,
}

impl NetworkInterface {
    pub fn secondary_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.private_ips.iter().filter(|p| !p.primary).map(|p| p.ip)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub private_ip: Ipv4Addr,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeNetwork {
    pub instance_type: String,
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
}

/// The client. Blocking; every call is one signed POST.
#[derive(Debug, Clone)]
pub struct Ec2Client {
    endpoint: String,
    host: String,
    region: String,
    creds: Credentials,
    agent: ureq::Agent,
}

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

impl Ec2Client {
    /// `endpoint` like `https://ec2.us-east-1.amazonaws.com` (or the lab's).
    pub fn new(endpoint: &str, region: &str, creds: Credentials) -> Ec2Client {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let host = endpoint
            .split("://")
            .nth(1)
            .unwrap_or(&endpoint)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        Ec2Client {
            endpoint,
            host,
            region: region.to_string(),
            creds,
            agent: http::agent(Duration::from_secs(20)),
        }
    }

    /// Sends one action and returns the XML answer of a 2xx.
    pub fn call(&self, action: &str, params: &[(String, String)]) -> Result<String, Ec2Error> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", action);
        form.append_pair("Version", API_VERSION);
        for (k, v) in params {
            form.append_pair(k, v);
        }
        let body = form.finish();
        let url = format!("{}/", self.endpoint);
        let mut headers = vec![
            ("host".to_string(), self.host.clone()),
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded; charset=utf-8".to_string(),
            ),
        ];
        let signed = sigv4::sign_headers(
            &self.creds,
            &self.region,
            "ec2",
            sigv4::Signable {
                method: "POST",
                url: &url,
                headers: &headers,
                body: body.as_bytes(),
            },
            SystemTime::now(),
        )?;
        headers.extend(signed);
        headers.retain(|(k, _)| k != "host");
        let reply =
            http::post(&self.agent, &url, &headers, &body).map_err(|source| Ec2Error::Http {
                action: action.into(),
                source,
            })?;
        if (200..300).contains(&reply.status) {
            return Ok(reply.body);
        }
        let (code, message) = Document::parse(&reply.body)
            .ok()
            .and_then(|d| {
                let err = d.descendants().find(|n| n.has_tag_name("Error"))?;
                Some((text(err, "Code"), text(err, "Message")))
            })
            .unwrap_or_else(|| {
                (
                    format!("HTTP{}", reply.status),
                    reply.body.chars().take(200).collect(),
                )
            });
        Err(Ec2Error::Api {
            action: action.into(),
            code,
            message,
            status: reply.status,
        })
    }

    fn parse<T>(
        &self,
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

    pub fn describe_instance(&self, instance_id: &str) -> Result<Instance, Ec2Error> {
        let a = "DescribeInstances";
        let xml = self.call(a, &[("InstanceId.1".into(), instance_id.into())])?;
        self.parse(a, &xml, |root| {
            let first = items(root, "reservationSet")
                .into_iter()
                .flat_map(|r| items(r, "instancesSet"))
                .next();
            if let Some(i) = first {
                {
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
            }
            Err(Ec2Error::Api {
                action: a.into(),
                code: "InvalidInstanceID.NotFound".into(),
                message: format!("{instance_id} not found"),
                status: 400,
            })
        })
    }

    pub fn describe_instance_type(
        &self,
        instance_type: &str,
    ) -> Result<InstanceTypeNetwork, Ec2Error> {
        let a = "DescribeInstanceTypes";
        let xml = self.call(a, &[("InstanceType.1".into(), instance_type.into())])?;
        self.parse(a, &xml, |root| {
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

    /// ENIs attached to an instance.
    pub fn describe_instance_enis(
        &self,
        instance_id: &str,
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        self.describe_network_interfaces(&[("attachment.instance-id", instance_id)], &[])
    }

    pub fn describe_network_interfaces(
        &self,
        filters: &[(&str, &str)],
        ids: &[&str],
    ) -> Result<Vec<NetworkInterface>, Ec2Error> {
        let a = "DescribeNetworkInterfaces";
        let mut params = Vec::new();
        for (i, (name, value)) in filters.iter().enumerate() {
            params.push((format!("Filter.{}.Name", i + 1), name.to_string()));
            params.push((format!("Filter.{}.Value.1", i + 1), value.to_string()));
        }
        for (i, id) in ids.iter().enumerate() {
            params.push((format!("NetworkInterfaceId.{}", i + 1), id.to_string()));
        }
        let xml = self.call(a, &params)?;
        self.parse(a, &xml, |root| {
            items(root, "networkInterfaceSet")
                .into_iter()
                .map(|n| parse_eni(a, n))
                .collect()
        })
    }

    pub fn create_network_interface(
        &self,
        subnet_id: &str,
        description: &str,
        groups: &[String],
        secondary_count: u32,
    ) -> Result<NetworkInterface, Ec2Error> {
        let a = "CreateNetworkInterface";
        let mut params = vec![
            ("SubnetId".to_string(), subnet_id.to_string()),
            ("Description".to_string(), description.to_string()),
        ];
        for (i, g) in groups.iter().enumerate() {
            params.push((format!("SecurityGroupId.{}", i + 1), g.clone()));
        }
        if secondary_count > 0 {
            params.push((
                "SecondaryPrivateIpAddressCount".into(),
                secondary_count.to_string(),
            ));
        }
        let xml = self.call(a, &params)?;
        self.parse(a, &xml, |root| {
            let n = child(root, "networkInterface").ok_or_else(|| Ec2Error::Parse {
                action: a.into(),
                msg: "no networkInterface".into(),
            })?;
            parse_eni(a, n)
        })
    }

    /// Returns the attachment id.
    pub fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        let a = "AttachNetworkInterface";
        let xml = self.call(
            a,
            &[
                ("NetworkInterfaceId".into(), eni_id.into()),
                ("InstanceId".into(), instance_id.into()),
                ("DeviceIndex".into(), device_index.to_string()),
            ],
        )?;
        self.parse(a, &xml, |root| Ok(text(root, "attachmentId")))
    }

    /// Asks for `count` new secondary addresses; returns them.
    pub fn assign_private_ip_addresses(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        let a = "AssignPrivateIpAddresses";
        let xml = self.call(
            a,
            &[
                ("NetworkInterfaceId".into(), eni_id.into()),
                ("SecondaryPrivateIpAddressCount".into(), count.to_string()),
            ],
        )?;
        self.parse(a, &xml, |root| {
            items(root, "assignedPrivateIpAddressesSet")
                .into_iter()
                .map(|i| parse_ip(a, &text(i, "privateIpAddress")))
                .collect()
        })
    }

    pub fn unassign_private_ip_addresses(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> Result<(), Ec2Error> {
        let mut params = vec![("NetworkInterfaceId".to_string(), eni_id.to_string())];
        for (i, ip) in ips.iter().enumerate() {
            params.push((format!("PrivateIpAddress.{}", i + 1), ip.to_string()));
        }
        self.call("UnassignPrivateIpAddresses", &params).map(|_| ())
    }

    pub fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        self.call(
            "DeleteNetworkInterface",
            &[("NetworkInterfaceId".into(), eni_id.into())],
        )
        .map(|_| ())
    }
}
