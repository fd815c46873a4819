//! EC2 Query API client: the calls a node agent needs, nothing more.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use crate::{ec2_reply as decode, http, sigv4, Credentials};

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

    /// Worth asking again later: throttling, EC2's own failures, and
    /// transport errors (a timeout, a refused or reset connection). Not:
    /// what EC2 refused on the merits, or an answer that made no sense.
    pub fn is_transient(&self) -> bool {
        match self {
            Ec2Error::Api { code, status, .. } => {
                *status >= 500
                    || *status == 429
                    || matches!(
                        code.as_str(),
                        "RequestLimitExceeded"
                            | "Throttling"
                            | "ThrottlingException"
                            | "InternalError"
                            | "InternalFailure"
                            | "ServiceUnavailable"
                            | "Unavailable"
                    )
            }
            Ec2Error::Http { .. } => true,
            Ec2Error::Parse { .. } | Ec2Error::Sign(_) => false,
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
        Err(decode::error_reply(action, reply.status, &reply.body))
    }

    pub fn describe_instance(&self, instance_id: &str) -> Result<Instance, Ec2Error> {
        let a = "DescribeInstances";
        let xml = self.call(a, &[("InstanceId.1".into(), instance_id.into())])?;
        decode::describe_instances(&xml, instance_id)
    }

    pub fn describe_instance_type(
        &self,
        instance_type: &str,
    ) -> Result<InstanceTypeNetwork, Ec2Error> {
        let a = "DescribeInstanceTypes";
        let xml = self.call(a, &[("InstanceType.1".into(), instance_type.into())])?;
        decode::describe_instance_types(&xml, instance_type)
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
        decode::describe_network_interfaces(&xml)
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
        decode::create_network_interface(&xml)
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
        decode::attach_network_interface(&xml)
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
        decode::assign_private_ip_addresses(&xml)
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
