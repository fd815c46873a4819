//! IMDSv2: a session token first (PUT), then metadata reads with it.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::{http, Credentials};

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("IMDS {path}: {source}")]
    Http {
        path: String,
        source: http::HttpError,
    },
    #[error("IMDS {path}: HTTP {status}")]
    Status { path: String, status: u16 },
    #[error("IMDS {path}: {msg}")]
    Parse { path: String, msg: String },
}

/// One ENI as the instance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataEni {
    pub mac: String,
    pub eni_id: String,
    pub device_number: u32,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub vpc_cidr: Ipv4Net,
    pub local_ipv4s: Vec<Ipv4Addr>,
    pub security_groups: Vec<String>,
}

/// What a node learns about itself at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub instance_type: String,
    pub region: String,
    pub availability_zone: String,
    pub primary_mac: String,
    pub local_ipv4: Ipv4Addr,
    pub enis: Vec<MetadataEni>,
}

#[derive(Debug)]
pub struct Imds {
    endpoint: String,
    token: String,
    agent: ureq::Agent,
}

impl Imds {
    /// Opens a session (token TTL six hours).
    pub fn connect(endpoint: &str) -> Result<Imds, ImdsError> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let agent = http::agent(Duration::from_secs(5));
        let path = "/latest/api/token";
        let url = format!("{endpoint}{path}");
        let reply = http::put(
            &agent,
            &url,
            &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
        )
        .map_err(|source| ImdsError::Http {
            path: path.into(),
            source,
        })?;
        if reply.status != 200 {
            return Err(ImdsError::Status {
                path: path.into(),
                status: reply.status,
            });
        }
        Ok(Imds {
            endpoint,
            token: reply.body.trim().to_string(),
            agent,
        })
    }

    /// Reads `/latest/meta-data/<path>`.
    pub fn get(&self, path: &str) -> Result<String, ImdsError> {
        let full = format!("/latest/meta-data/{path}");
        let url = format!("{}{full}", self.endpoint);
        let reply = http::get(
            &self.agent,
            &url,
            &[("X-aws-ec2-metadata-token", &self.token)],
        )
        .map_err(|source| ImdsError::Http {
            path: full.clone(),
            source,
        })?;
        if reply.status != 200 {
            return Err(ImdsError::Status {
                path: full,
                status: reply.status,
            });
        }
        Ok(reply.body.trim().to_string())
    }

    fn parse<T: std::str::FromStr>(&self, path: &str) -> Result<T, ImdsError> {
        let v = self.get(path)?;
        v.parse().map_err(|_| ImdsError::Parse {
            path: path.into(),
            msg: format!("unexpected value {v:?}"),
        })
    }

    /// One ENI's metadata, by MAC.
    pub fn eni(&self, mac: &str) -> Result<MetadataEni, ImdsError> {
        let base = format!("network/interfaces/macs/{mac}");
        let ips = self.get(&format!("{base}/local-ipv4s"))?;
        let local_ipv4s = ips
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.trim().parse().map_err(|_| ImdsError::Parse {
                    path: format!("{base}/local-ipv4s"),
                    msg: format!("{l:?}"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(MetadataEni {
            mac: mac.to_string(),
            eni_id: self.get(&format!("{base}/interface-id"))?,
            device_number: self.parse(&format!("{base}/device-number"))?,
            subnet_id: self.get(&format!("{base}/subnet-id"))?,
            subnet_cidr: self.parse(&format!("{base}/subnet-ipv4-cidr-block"))?,
            vpc_cidr: self.parse(&format!("{base}/vpc-ipv4-cidr-block"))?,
            local_ipv4s,
            security_groups: self
                .get(&format!("{base}/security-group-ids"))?
                .lines()
                .map(str::to_string)
                .collect(),
        })
    }

    /// Everything the agent needs at start-up.
    pub fn identity(&self) -> Result<InstanceIdentity, ImdsError> {
        let primary_mac = self.get("mac")?;
        let macs = self.get("network/interfaces/macs/")?;
        let mut enis = Vec::new();
        for m in macs
            .lines()
            .map(|l| l.trim().trim_end_matches('/'))
            .filter(|l| !l.is_empty())
        {
            enis.push(self.eni(m)?);
        }
        enis.sort_by_key(|e| e.device_number);
        let availability_zone = self.get("placement/availability-zone")?;
        let region = self.get("placement/region")?;
        Ok(InstanceIdentity {
            instance_id: self.get("instance-id")?,
            instance_type: self.get("instance-type")?,
            region,
            availability_zone,
            primary_mac,
            local_ipv4: self.parse("local-ipv4")?,
            enis,
        })
    }

    /// Role credentials from `iam/security-credentials/<role>`.
    pub fn credentials(&self) -> Result<Credentials, ImdsError> {
        let path = "iam/security-credentials/";
        let role = self.get(path)?;
        let role = role.lines().next().unwrap_or_default().trim().to_string();
        let doc_path = format!("{path}{role}");
        let doc = self.get(&doc_path)?;
        let v: serde_json::Value = serde_json::from_str(&doc).map_err(|e| ImdsError::Parse {
            path: doc_path.clone(),
            msg: e.to_string(),
        })?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Ok(Credentials {
            access_key_id: field("AccessKeyId").ok_or_else(|| ImdsError::Parse {
                path: doc_path.clone(),
                msg: "no AccessKeyId".into(),
            })?,
            secret_access_key: field("SecretAccessKey").ok_or_else(|| ImdsError::Parse {
                path: doc_path.clone(),
                msg: "no SecretAccessKey".into(),
            })?,
            session_token: field("Token"),
        })
    }
}
