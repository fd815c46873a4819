//! EC2 Query API client: the calls a node agent needs, nothing more.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;

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
    /// Delegated /28 prefixes (`ipv4PrefixSet`), each checked aligned.
    pub prefixes: Vec<Ipv4Net>,
    /// `tagSet` as (key, value).
    pub tags: Vec<(String, String)>,
}

impl NetworkInterface {
    /// The secondary addresses: every listed address that is neither
    /// flagged primary nor the ENI's `privateIpAddress` (a reply that
    /// forgets the flag must not turn the primary into a pod address).
    pub fn secondary_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.private_ips
            .iter()
            .filter(|p| !p.primary && p.ip != self.private_ip)
            .map(|p| p.ip)
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The tag podwire puts on every ENI it creates: the owner instance.
pub const TAG_INSTANCE_ID: &str = "podwire.io/instance-id";
/// When podwire created the ENI (RFC 3339, UTC).
pub const TAG_CREATED_AT: &str = "podwire.io/created-at";
/// The cluster, when the agent knows it.
pub const TAG_CLUSTER: &str = "podwire.io/cluster";

/// What an AssignPrivateIpAddresses reply claims was assigned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    pub ips: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
}

/// DescribeSubnets: a subnet's range and free addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub cidr: Ipv4Net,
    pub available: u32,
}

/// What AssignPrivateIpAddresses / CreateNetworkInterface ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRequest {
    /// `SecondaryPrivateIpAddressCount`.
    Ips(u32),
    /// `Ipv4PrefixCount` (/28 prefixes).
    Prefixes(u32),
}

/// A CreateNetworkInterface call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEni<'a> {
    pub subnet_id: &'a str,
    pub description: &'a str,
    pub groups: &'a [String],
    pub addresses: AddressRequest,
    /// Tags set at creation (TagSpecification), so an ENI is never
    /// untagged, not even between two calls.
    pub tags: &'a [(String, String)],
    /// Idempotency: the same token and parameters give the same ENI, so a
    /// retry after a lost reply cannot create a second one. Up to 64 ASCII
    /// characters; see [`client_token`].
    pub client_token: &'a str,
}

/// A fresh ClientToken: unique per call (process, time, counter), at most
/// 64 ASCII characters, as EC2 requires.
pub fn client_token(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut t = format!(
        "{:x}-{:x}-{:x}",
        nanos,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let keep: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64usize.saturating_sub(t.len() + 1))
        .collect();
    if !keep.is_empty() {
        t = format!("{keep}-{t}");
    }
    t
}

/// How every typed call retries: exponential backoff with full jitter (a
/// random wait between zero and `base × 2^attempt`, at most `cap`) on
/// throttling, EC2's 5xx and transport errors, until `budget` is spent.
/// Many agents throttled together then spread out instead of retrying in
/// step (AWS's "Exponential Backoff And Jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Overall deadline of one call, all attempts and waits included.
    pub budget: Duration,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(20),
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No retry: one attempt (`Ec2Client::call`'s behaviour).
    pub const NONE: RetryPolicy = RetryPolicy {
        budget: Duration::ZERO,
        base: Duration::ZERO,
        cap: Duration::ZERO,
    };

    /// The ceiling of the wait before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Runs `f` until it succeeds, fails for good, or the next wait would
    /// end past the budget. `pick(ceiling)` chooses the wait (full jitter:
    /// uniform in `0..=ceiling`), `sleep` waits: both injected for tests.
    pub fn run<T>(
        &self,
        mut f: impl FnMut() -> Result<T, Ec2Error>,
        mut pick: impl FnMut(Duration) -> Duration,
        mut sleep: impl FnMut(Duration),
    ) -> Result<T, Ec2Error> {
        let deadline = Instant::now() + self.budget;
        let mut attempt = 0u32;
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    let wait = pick(self.ceiling(attempt));
                    if Instant::now() + wait >= deadline {
                        return Err(e);
                    }
                    attempt = attempt.saturating_add(1);
                    sleep(wait);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Full jitter: a uniform wait in `0..=ceiling`.
pub fn full_jitter(ceiling: Duration) -> Duration {
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=ms))
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
    /// `vCpuInfo/defaultVCpus`, when the answer has it (the max-pods cap
    /// with prefixes depends on it).
    pub vcpus: Option<u32>,
}

/// The client. Blocking; every call is one signed POST.
#[derive(Debug, Clone)]
pub struct Ec2Client {
    endpoint: String,
    host: String,
    region: String,
    creds: Credentials,
    agent: ureq::Agent,
    retry: RetryPolicy,
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
            retry: RetryPolicy::default(),
        }
    }

    /// The same client with another retry policy; each attempt's own
    /// timeout is the budget too (at least 1 s), so one hung connection
    /// cannot outlast the call's deadline.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Ec2Client {
        self.agent = http::agent(retry.budget.max(Duration::from_secs(1)));
        self.retry = retry;
        self
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// [`Ec2Client::call`] under the client's retry policy: what every
    /// typed call below uses.
    pub fn call_retrying(
        &self,
        action: &str,
        params: &[(String, String)],
    ) -> Result<String, Ec2Error> {
        self.retry.run(
            || self.call(action, params),
            full_jitter,
            std::thread::sleep,
        )
    }

    /// Sends one action once (no retry) and returns the XML answer of a
    /// 2xx. For an operator's single call; the typed calls retry.
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
        let xml = self.call_retrying(a, &[("InstanceId.1".into(), instance_id.into())])?;
        decode::describe_instances(&xml, instance_id)
    }

    pub fn describe_instance_type(
        &self,
        instance_type: &str,
    ) -> Result<InstanceTypeNetwork, Ec2Error> {
        let a = "DescribeInstanceTypes";
        let xml = self.call_retrying(a, &[("InstanceType.1".into(), instance_type.into())])?;
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
        let xml = self.call_retrying(a, &params)?;
        decode::describe_network_interfaces(&xml)
    }

    /// Creates an ENI with its tags, idempotently (`req.client_token`).
    pub fn create_network_interface(
        &self,
        req: &CreateEni<'_>,
    ) -> Result<NetworkInterface, Ec2Error> {
        let a = "CreateNetworkInterface";
        let mut params = vec![
            ("SubnetId".to_string(), req.subnet_id.to_string()),
            ("Description".to_string(), req.description.to_string()),
            ("ClientToken".to_string(), req.client_token.to_string()),
        ];
        for (i, g) in req.groups.iter().enumerate() {
            params.push((format!("SecurityGroupId.{}", i + 1), g.clone()));
        }
        push_addresses(&mut params, req.addresses);
        if !req.tags.is_empty() {
            params.push((
                "TagSpecification.1.ResourceType".into(),
                "network-interface".into(),
            ));
            for (i, (k, v)) in req.tags.iter().enumerate() {
                params.push((format!("TagSpecification.1.Tag.{}.Key", i + 1), k.clone()));
                params.push((format!("TagSpecification.1.Tag.{}.Value", i + 1), v.clone()));
            }
        }
        let xml = self.call_retrying(a, &params)?;
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
        let xml = self.call_retrying(
            a,
            &[
                ("NetworkInterfaceId".into(), eni_id.into()),
                ("InstanceId".into(), instance_id.into()),
                ("DeviceIndex".into(), device_index.to_string()),
            ],
        )?;
        decode::attach_network_interface(&xml)
    }

    /// Asks for `what` (secondary addresses or /28 prefixes); returns what
    /// the reply claims was assigned (check it with a Describe).
    pub fn assign_addresses(
        &self,
        eni_id: &str,
        what: AddressRequest,
    ) -> Result<Assignment, Ec2Error> {
        let a = "AssignPrivateIpAddresses";
        let mut params = vec![("NetworkInterfaceId".to_string(), eni_id.to_string())];
        push_addresses(&mut params, what);
        let xml = self.call_retrying(a, &params)?;
        decode::assign_private_ip_addresses(&xml)
    }

    /// Asks for `count` new secondary addresses; returns the addresses the
    /// reply lists (a claim: see [`Ec2Client::assign_addresses`]).
    pub fn assign_private_ip_addresses(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        self.assign_addresses(eni_id, AddressRequest::Ips(count))
            .map(|a| a.ips)
    }

    /// Gives /28 prefixes back (`Ipv4Prefix.N`).
    pub fn unassign_ipv4_prefixes(
        &self,
        eni_id: &str,
        prefixes: &[Ipv4Net],
    ) -> Result<(), Ec2Error> {
        let a = "UnassignPrivateIpAddresses";
        let mut params = vec![("NetworkInterfaceId".to_string(), eni_id.to_string())];
        for (i, p) in prefixes.iter().enumerate() {
            params.push((format!("Ipv4Prefix.{}", i + 1), p.to_string()));
        }
        let xml = self.call_retrying(a, &params)?;
        decode::acknowledged(a, &xml)
    }

    /// Detaches an ENI (by its attachment id); it becomes `available`.
    pub fn detach_network_interface(
        &self,
        attachment_id: &str,
        force: bool,
    ) -> Result<(), Ec2Error> {
        let a = "DetachNetworkInterface";
        let mut params = vec![("AttachmentId".to_string(), attachment_id.to_string())];
        if force {
            params.push(("Force".into(), "true".into()));
        }
        let xml = self.call_retrying(a, &params)?;
        decode::acknowledged(a, &xml)
    }

    pub fn describe_subnet(&self, subnet_id: &str) -> Result<Subnet, Ec2Error> {
        let a = "DescribeSubnets";
        let xml = self.call_retrying(a, &[("SubnetId.1".into(), subnet_id.into())])?;
        decode::describe_subnets(&xml, subnet_id)
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
        let a = "UnassignPrivateIpAddresses";
        let xml = self.call_retrying(a, &params)?;
        decode::acknowledged(a, &xml)
    }

    pub fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        let a = "DeleteNetworkInterface";
        let xml = self.call_retrying(a, &[("NetworkInterfaceId".into(), eni_id.into())])?;
        decode::acknowledged(a, &xml)
    }
}

fn push_addresses(params: &mut Vec<(String, String)>, what: AddressRequest) {
    match what {
        AddressRequest::Ips(0) | AddressRequest::Prefixes(0) => {}
        AddressRequest::Ips(n) => {
            params.push(("SecondaryPrivateIpAddressCount".into(), n.to_string()))
        }
        AddressRequest::Prefixes(n) => params.push(("Ipv4PrefixCount".into(), n.to_string())),
    }
}

#[cfg(test)]
mod tests;
