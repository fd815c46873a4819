//! IMDSv2: a session token first (PUT), then metadata reads with it.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::{http, imds_answer as answer, Credentials};

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

impl ImdsError {
    /// Worth asking again later: transport errors, throttling (429) and the
    /// service's own failures (5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            ImdsError::Http { .. } => true,
            ImdsError::Status { status, .. } => *status == 429 || *status >= 500,
            ImdsError::Parse { .. } => false,
        }
    }
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
            token: answer::token(&reply.body)?,
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
        answer::value(path, &self.get(path)?)
    }

    /// Reads `path` and checks it with `f` (one of [`answer`]'s decoders).
    fn read<T>(
        &self,
        path: &str,
        f: impl FnOnce(&str, &str) -> Result<T, ImdsError>,
    ) -> Result<T, ImdsError> {
        f(path, &self.get(path)?)
    }

    /// One ENI's metadata, by MAC (checked by the caller: it is part of
    /// the paths).
    pub fn eni(&self, mac: &str) -> Result<MetadataEni, ImdsError> {
        let base = format!("network/interfaces/macs/{}", answer::mac("mac", mac)?);
        Ok(MetadataEni {
            mac: mac.to_string(),
            eni_id: self.read(&format!("{base}/interface-id"), answer::id)?,
            device_number: self.read(&format!("{base}/device-number"), answer::device_number)?,
            subnet_id: self.read(&format!("{base}/subnet-id"), answer::id)?,
            subnet_cidr: self.parse(&format!("{base}/subnet-ipv4-cidr-block"))?,
            vpc_cidr: self.parse(&format!("{base}/vpc-ipv4-cidr-block"))?,
            local_ipv4s: self.read(&format!("{base}/local-ipv4s"), answer::ipv4_list)?,
            security_groups: answer::list(&self.get(&format!("{base}/security-group-ids"))?),
        })
    }

    /// Everything the agent needs at start-up.
    pub fn identity(&self) -> Result<InstanceIdentity, ImdsError> {
        let primary_mac = self.read("mac", answer::mac)?;
        let mut enis = Vec::new();
        for m in self.read("network/interfaces/macs/", answer::mac_listing)? {
            enis.push(self.eni(&m)?);
        }
        enis.sort_by_key(|e| e.device_number);
        let availability_zone = self.read("placement/availability-zone", answer::region)?;
        let region = self.read("placement/region", answer::region)?;
        Ok(InstanceIdentity {
            instance_id: self.read("instance-id", answer::id)?,
            instance_type: self.read("instance-type", answer::id)?,
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
        let role = self.read(path, answer::role)?;
        self.read(&format!("{path}{role}"), answer::credentials)
    }
}

#[cfg(test)]
mod tests;
