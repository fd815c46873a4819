//! The EC2 Query API: form-encoded POST, SigV4 verified against the lab's
//! credentials, dispatched to the model, answered in EC2's XML.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use podwire_cloud::{sigv4, Credentials, LimitsTable};

use ipnet::Ipv4Net;

use super::faults::AssignReply;
use super::model::{api_err, ApiError, Cloud, Eni};
use super::scope::LabScope;
use super::sg;
use super::xml;

/// A parsed request: the form parameters and the headers SigV4 needs.
#[derive(Debug)]
pub struct QueryRequest {
    pub params: BTreeMap<String, String>,
    pub body: String,
    pub headers: Vec<(String, String)>,
    pub url: String,
}

fn header<'a>(r: &'a QueryRequest, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Checks the Authorization header: known key, fresh date, and a signature
/// equal to the one the lab computes with the secret.
pub fn verify(cloud: &Cloud, r: &QueryRequest) -> Result<(), ApiError> {
    let unauth = |code: &str, msg: &str| ApiError {
        code: code.into(),
        message: msg.into(),
        status: 401,
    };
    let auth = header(r, "authorization").ok_or_else(|| unauth("AuthFailure", "AWS was not able to validate the provided access credentials (no Authorization header)"))?;
    let cred = auth
        .split("Credential=")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .ok_or_else(|| unauth("AuthFailure", "malformed Authorization header"))?;
    let secret = cloud.credentials.get(cred).ok_or_else(|| {
        unauth(
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        )
    })?;
    let signed: Vec<String> = auth
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(|s| s.split(';').map(str::to_string).collect())
        .unwrap_or_default();
    let date = header(r, "x-amz-date").ok_or_else(|| unauth("AuthFailure", "no X-Amz-Date"))?;
    let time =
        sigv4::parse_amz_date(date).ok_or_else(|| unauth("AuthFailure", "bad X-Amz-Date"))?;
    let skew = SystemTime::now()
        .duration_since(time)
        .unwrap_or_else(|e| e.duration());
    if skew > Duration::from_secs(300) {
        return Err(ApiError {
            code: "RequestExpired".into(),
            message: format!("Request has expired (X-Amz-Date {date})"),
            status: 400,
        });
    }
    let headers: Vec<(String, String)> = signed
        .iter()
        .filter(|h| *h != "x-amz-date" && *h != "x-amz-security-token")
        .filter_map(|h| header(r, h).map(|v| (h.clone(), v.to_string())))
        .collect();
    let creds = Credentials {
        access_key_id: cred.to_string(),
        secret_access_key: secret.clone(),
        session_token: header(r, "x-amz-security-token").map(str::to_string),
    };
    let region = cloud.region.clone();
    let expected = sigv4::sign_headers(
        &creds,
        &region,
        "ec2",
        sigv4::Signable {
            method: "POST",
            url: &r.url,
            headers: &headers,
            body: r.body.as_bytes(),
        },
        time,
    )
    .map_err(|e| unauth("AuthFailure", &e.to_string()))?;
    let expected_auth = expected
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.as_str());
    if expected_auth != Some(auth) {
        return Err(ApiError {
            code: "SignatureDoesNotMatch".into(),
            message:
                "The request signature we calculated does not match the signature you provided."
                    .into(),
            status: 403,
        });
    }
    Ok(())
}

fn param<'a>(p: &'a BTreeMap<String, String>, k: &str) -> Result<&'a str, ApiError> {
    p.get(k).map(String::as_str).ok_or_else(|| {
        api_err(
            "MissingParameter",
            format!("The request must contain the parameter {k}"),
        )
    })
}

fn list(p: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    let mut v: Vec<(u32, String)> = p
        .iter()
        .filter_map(|(k, val)| {
            k.strip_prefix(prefix)?
                .strip_prefix('.')?
                .parse::<u32>()
                .ok()
                .map(|n| (n, val.clone()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, s)| s).collect()
}

fn num(p: &BTreeMap<String, String>, k: &str) -> Result<u32, ApiError> {
    match p.get(k) {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| {
            api_err(
                "InvalidParameterValue",
                format!("Value ({v}) for parameter {k} is invalid"),
            )
        }),
    }
}

fn ips(p: &BTreeMap<String, String>, prefix: &str) -> Result<Vec<Ipv4Addr>, ApiError> {
    list(p, prefix)
        .iter()
        .map(|s| {
            s.parse().map_err(|_| {
                api_err(
                    "InvalidParameterValue",
                    format!("{s} is not an IPv4 address"),
                )
            })
        })
        .collect()
}

/// EC2's bound on filter values in one call.
pub const MAX_FILTER_VALUES: usize = 200;

/// Filters as `(name, values)`; each needs a value, and all of them
/// together at most [`MAX_FILTER_VALUES`] (EC2's `FilterLimitExceeded`).
fn filters(p: &BTreeMap<String, String>) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for i in 1.. {
        let Some(name) = p.get(&format!("Filter.{i}.Name")) else {
            break;
        };
        let values = list(p, &format!("Filter.{i}.Value"));
        if values.is_empty() {
            return Err(api_err(
                "InvalidParameterValue",
                format!("The filter '{}' has no value", clip(name)),
            ));
        }
        total = total.saturating_add(values.len());
        if total > MAX_FILTER_VALUES {
            return Err(api_err(
                "FilterLimitExceeded",
                format!("The maximum number of filter values specified on a single call is {MAX_FILTER_VALUES}"),
            ));
        }
        out.push((name.clone(), values));
    }
    Ok(out)
}

/// A client's string, cut short for an error message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out.escape_debug().to_string()
}

/// A count parameter that, when given, must be a whole number of at least 1.
fn count_param(p: &BTreeMap<String, String>, k: &str) -> Result<Option<u32>, ApiError> {
    match p.get(k) {
        None => Ok(None),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(api_err(
                "InvalidParameterValue",
                format!(
                    "Value ({}) for parameter {k} is invalid. Expected a number of at least 1.",
                    clip(v)
                ),
            )),
        },
    }
}

/// What a successful action changed (so the fabric is re-synced only then).
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    ReadOnly,
    Changed,
}

/// The form parameters of a request.
pub type Params = BTreeMap<String, String>;

/// What an action may consult besides the cloud itself.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub limits: &'a LimitsTable,
    pub scope: &'a LabScope,
}

/// An action's answer: the inner XML body and what it changed.
type Answer = Result<(String, Effect), ApiError>;
type Action = fn(&mut Cloud, &Ctx<'_>, &Params) -> Answer;

/// Every EC2 action the lab serves, each in a function of its own.
const ACTIONS: &[(&str, Action)] = &[
    ("DescribeNetworkInterfaces", describe_network_interfaces),
    ("DescribeInstances", describe_instances),
    ("DescribeInstanceTypes", describe_instance_types),
    ("CreateNetworkInterface", create_network_interface),
    ("AttachNetworkInterface", attach_network_interface),
    ("AssignPrivateIpAddresses", assign_private_ip_addresses),
    ("UnassignPrivateIpAddresses", unassign_private_ip_addresses),
    ("DeleteNetworkInterface", delete_network_interface),
    ("DetachNetworkInterface", detach_network_interface),
    ("DescribeSubnets", describe_subnets),
    ("RunInstances", run_instances),
    ("TerminateInstances", terminate_instances),
    (
        "AuthorizeSecurityGroupIngress",
        authorize_security_group_ingress,
    ),
    ("RevokeSecurityGroupIngress", revoke_security_group_ingress),
    ("DescribeSecurityGroups", describe_security_groups),
];

/// Routes one request to its action; wraps the answer in `<Action>Response`.
pub fn dispatch(
    cloud: &mut Cloud,
    limits: &LimitsTable,
    scope: &LabScope,
    p: &Params,
) -> Result<(String, Effect), ApiError> {
    let action = param(p, "Action")?;
    let run = ACTIONS
        .iter()
        .find(|(name, _)| *name == action)
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            api_err(
                "InvalidAction",
                format!("The action {action} is not valid for this web service."),
            )
        })?;
    let (body, effect) = run(cloud, &Ctx { limits, scope }, p)?;
    let id = cloud.new_id("req");
    Ok((xml::response(action, &id, &body), effect))
}

fn describe_network_interfaces(cloud: &mut Cloud, _: &Ctx<'_>, p: &Params) -> Answer {
    let ids = list(p, "NetworkInterfaceId");
    for i in &ids {
        cloud.eni(i)?;
    }
    let fs = filters(p)?;
    let mut items = String::new();
    for e in cloud.enis.values() {
        if !ids.is_empty() && !ids.contains(&e.id) {
            continue;
        }
        let mut keep = true;
        for (name, values) in &fs {
            let actual = eni_filter_values(e, name)?;
            if !values
                .iter()
                .any(|v| actual.iter().any(|a| super::filter::matches(v, a)))
            {
                keep = false;
            }
        }
        if keep {
            items.push_str(&xml::eni(cloud, e, "item"));
        }
    }
    Ok((
        format!("<networkInterfaceSet>{items}</networkInterfaceSet>"),
        Effect::ReadOnly,
    ))
}

/// The values an ENI has for a DescribeNetworkInterfaces filter; an
/// unknown filter is refused as EC2 does.
fn eni_filter_values(e: &Eni, name: &str) -> Result<Vec<String>, ApiError> {
    let att = e.attachment.as_ref();
    Ok(match name {
        "attachment.instance-id" => att.map(|a| a.instance_id.clone()).into_iter().collect(),
        "attachment.attachment-id" => att.map(|a| a.attachment_id.clone()).into_iter().collect(),
        "attachment.device-index" => att
            .map(|a| a.device_index.to_string())
            .into_iter()
            .collect(),
        "attachment.status" => att.map(|a| a.status().to_string()).into_iter().collect(),
        "subnet-id" => vec![e.subnet_id.clone()],
        "description" => vec![e.description.clone()],
        "status" => vec![e.status().to_string()],
        "network-interface-id" => vec![e.id.clone()],
        "mac-address" => vec![e.mac.clone()],
        "group-id" => e.groups.clone(),
        "addresses.private-ip-address" | "private-ip-address" => {
            e.all_ips().map(|i| i.to_string()).collect()
        }
        "ipv4-prefixes.ipv4-prefix" => e.prefixes.iter().map(|p| p.to_string()).collect(),
        "tag-key" => e.tags.keys().cloned().collect(),
        "tag-value" => e.tags.values().cloned().collect(),
        other => match other.strip_prefix("tag:") {
            Some(k) => e.tags.get(k).cloned().into_iter().collect(),
            None => {
                return Err(api_err(
                    "InvalidParameterValue",
                    format!("The filter '{}' is invalid", clip(other)),
                ))
            }
        },
    })
}

fn describe_subnets(cloud: &mut Cloud, _: &Ctx<'_>, p: &Params) -> Answer {
    let ids = list(p, "SubnetId");
    for i in &ids {
        if !cloud.subnets.contains_key(i) {
            return Err(api_err(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{}' does not exist", clip(i)),
            ));
        }
    }
    let fs = filters(p)?;
    let mut items = String::new();
    for s in cloud.subnets.values() {
        if !ids.is_empty() && !ids.contains(&s.id) {
            continue;
        }
        let mut keep = true;
        for (name, values) in &fs {
            let actual = match name.as_str() {
                "subnet-id" => s.id.clone(),
                "vpc-id" => cloud.vpc_id.clone(),
                "cidr-block" | "cidr" | "cidrBlock" => s.cidr.to_string(),
                "availability-zone" | "availabilityZone" => s.availability_zone.clone(),
                "state" => "available".into(),
                other => {
                    return Err(api_err(
                        "InvalidParameterValue",
                        format!("The filter '{}' is invalid", clip(other)),
                    ))
                }
            };
            if !values.iter().any(|v| super::filter::matches(v, &actual)) {
                keep = false;
            }
        }
        if keep {
            items.push_str(&format!(
                "<item><subnetId>{}</subnetId><state>available</state><vpcId>{}</vpcId><cidrBlock>{}</cidrBlock><availableIpAddressCount>{}</availableIpAddressCount><availabilityZone>{}</availabilityZone><defaultForAz>false</defaultForAz><mapPublicIpOnLaunch>false</mapPublicIpOnLaunch></item>",
                s.id,
                cloud.vpc_id,
                s.cidr,
                cloud.available_in_subnet(&s.id),
                s.availability_zone
            ));
        }
    }
    Ok((format!("<subnetSet>{items}</subnetSet>"), Effect::ReadOnly))
}

fn describe_instances(cloud: &mut Cloud, _: &Ctx<'_>, p: &Params) -> Answer {
    let ids = list(p, "InstanceId");
    for i in &ids {
        if !cloud.instances.contains_key(i) {
            return Err(api_err(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{i}' does not exist"),
            ));
        }
    }
    let items: String = cloud
        .instances
        .values()
        .filter(|i| ids.is_empty() || ids.contains(&i.id))
        .map(|inst| xml::instance(cloud, inst))
        .collect();
    Ok((format!("<reservationSet><item><reservationId>r-0000000000000001</reservationId><ownerId>000000000000</ownerId><instancesSet>{items}</instancesSet></item></reservationSet>"), Effect::ReadOnly))
}

fn describe_instance_types(_: &mut Cloud, ctx: &Ctx<'_>, p: &Params) -> Answer {
    let mut items = String::new();
    for t in list(p, "InstanceType") {
        let l = ctx.limits.get(&t).ok_or_else(|| {
            api_err(
                "InvalidInstanceType",
                format!("The following supplied instance types do not exist: [{t}]"),
            )
        })?;
        // vCpuInfo as EC2 sends it (the agent's prefix-delegation cap needs
        // it); left out, as EC2 never does, only where the table has no
        // figure.
        let vcpus = match ctx.limits.vcpus(&t).and_then(|v| v.vcpus) {
            Some(n) => format!("<vCpuInfo><defaultVCpus>{n}</defaultVCpus></vCpuInfo>"),
            None => String::new(),
        };
        items.push_str(&format!(
            "<item><instanceType>{}</instanceType><hypervisor>{}</hypervisor><bareMetal>{}</bareMetal>{vcpus}<networkInfo><maximumNetworkInterfaces>{}</maximumNetworkInterfaces><ipv4AddressesPerInterface>{}</ipv4AddressesPerInterface><defaultNetworkCardIndex>0</defaultNetworkCardIndex></networkInfo></item>",
            l.instance_type, l.hypervisor, l.bare_metal, l.max_enis, l.ipv4_per_eni
        ));
    }
    Ok((
        format!("<instanceTypeSet>{items}</instanceTypeSet>"),
        Effect::ReadOnly,
    ))
}

/// EC2's bounds on CreateNetworkInterface's strings.
const MAX_DESCRIPTION: usize = 255;
const MAX_CLIENT_TOKEN: usize = 64;

fn create_network_interface(cloud: &mut Cloud, ctx: &Ctx<'_>, p: &Params) -> Answer {
    let subnet = param(p, "SubnetId")?.to_string();
    let desc = p.get("Description").cloned().unwrap_or_default();
    if desc.chars().count() > MAX_DESCRIPTION {
        return Err(api_err(
            "InvalidParameterValue",
            format!("Value for parameter Description is longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    let groups = list(p, "SecurityGroupId");
    let tags = super::tags::from_specifications(p, "network-interface")?;
    let secondary = count_param(p, "SecondaryPrivateIpAddressCount")?;
    let prefixes = count_param(p, "Ipv4PrefixCount")?;
    if secondary.is_some() && prefixes.is_some() {
        return Err(api_err(
            "InvalidParameterCombination",
            "SecondaryPrivateIpAddressCount and Ipv4PrefixCount cannot be used together",
        ));
    }
    let primary = p
        .get("PrivateIpAddress")
        .map(|s| s.parse())
        .transpose()
        .map_err(|_| api_err("InvalidParameterValue", "PrivateIpAddress"))?;
    let token = match p.get("ClientToken") {
        None => None,
        Some(t) if t.is_empty() || t.len() > MAX_CLIENT_TOKEN || !t.is_ascii() => {
            return Err(api_err(
                "InvalidParameterValue",
                format!("ClientToken must be 1 to {MAX_CLIENT_TOKEN} ASCII characters"),
            ))
        }
        Some(t) => Some(t.clone()),
    };
    // The request's meaning without the token: a retry must match it.
    let fingerprint: String = p
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "ClientToken" | "Action" | "Version"))
        .map(|(k, v)| format!("{}={}&", k.len(), v.len()) + k + "=" + v + "\n")
        .collect();
    if let Some(t) = &token {
        if let Some((fp, eni_id)) = cloud.client_tokens.get(t) {
            if *fp != fingerprint {
                return Err(api_err(
                    "IdempotentParameterMismatch",
                    "The client token you have provided is associated with a resource that was created with different parameters",
                ));
            }
            let body = xml::eni(cloud, cloud.eni(eni_id)?, "networkInterface");
            return Ok((body + &client_token_xml(t), Effect::ReadOnly));
        }
    }
    let eni_id = cloud.create_eni(&subnet, &desc, groups, secondary.unwrap_or(0), primary)?;
    if let Some(n) = prefixes {
        cloud.assign_prefixes(ctx.limits, &eni_id, n, &[])?;
    }
    if let Some(e) = cloud.enis.get_mut(&eni_id) {
        e.tags = tags;
    }
    let mut body = xml::eni(cloud, cloud.eni(&eni_id)?, "networkInterface");
    if let Some(t) = token {
        body.push_str(&client_token_xml(&t));
        cloud.client_tokens.insert(t, (fingerprint, eni_id));
    }
    Ok((body, Effect::Changed))
}

fn client_token_xml(t: &str) -> String {
    format!("<clientToken>{}</clientToken>", xml::esc(t))
}

fn attach_network_interface(cloud: &mut Cloud, ctx: &Ctx<'_>, p: &Params) -> Answer {
    let delay = ctx.scope.faults.attach_delay_ms;
    let ready_at = (delay > 0).then(|| now_ms().saturating_add(delay));
    let att = cloud.attach_after(
        ctx.limits,
        param(p, "NetworkInterfaceId")?,
        param(p, "InstanceId")?,
        num(p, "DeviceIndex")?,
        ready_at,
    )?;
    Ok((
        format!("<attachmentId>{att}</attachmentId><networkCardIndex>0</networkCardIndex>"),
        Effect::Changed,
    ))
}

/// Milliseconds since the Unix epoch (attachment deadlines in cloud.json).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Parses `Ipv4Prefix.N` against the ENI's subnet.
fn requested_prefixes(cloud: &Cloud, eni_id: &str, p: &Params) -> Result<Vec<Ipv4Net>, ApiError> {
    let raw = list(p, "Ipv4Prefix");
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let eni = cloud.eni(eni_id)?;
    let subnet = cloud
        .subnets
        .get(&eni.subnet_id)
        .map(|s| s.cidr)
        .ok_or_else(|| api_err("InvalidSubnetID.NotFound", eni.subnet_id.clone()))?;
    raw.iter()
        .map(|s| super::prefix::parse_requested(subnet, s))
        .collect()
}

/// Exactly one way of asking, as EC2 requires.
fn one_kind(kinds: &[(&str, bool)]) -> Result<(), ApiError> {
    let given: Vec<&str> = kinds.iter().filter(|(_, g)| *g).map(|(n, _)| *n).collect();
    match given.len() {
        0 => Err(api_err(
            "MissingParameter",
            format!(
                "The request must contain one of: {}",
                kinds.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        )),
        1 => Ok(()),
        _ => Err(api_err(
            "InvalidParameterCombination",
            format!("{} cannot be used together", given.join(" and ")),
        )),
    }
}

fn assign_private_ip_addresses(cloud: &mut Cloud, ctx: &Ctx<'_>, p: &Params) -> Answer {
    let eni_id = param(p, "NetworkInterfaceId")?.to_string();
    cloud.eni(&eni_id)?;
    let count = count_param(p, "SecondaryPrivateIpAddressCount")?;
    let explicit = ips(p, "PrivateIpAddress")?;
    let prefix_count = count_param(p, "Ipv4PrefixCount")?;
    let prefixes = requested_prefixes(cloud, &eni_id, p)?;
    one_kind(&[
        ("SecondaryPrivateIpAddressCount", count.is_some()),
        ("PrivateIpAddress.N", !explicit.is_empty()),
        ("Ipv4PrefixCount", prefix_count.is_some()),
        ("Ipv4Prefix.N", !prefixes.is_empty()),
    ])?;
    let (new_ips, new_prefixes) = if prefix_count.is_some() || !prefixes.is_empty() {
        let got =
            cloud.assign_prefixes(ctx.limits, &eni_id, prefix_count.unwrap_or(0), &prefixes)?;
        (Vec::new(), got)
    } else {
        let got = cloud.assign(ctx.limits, &eni_id, count.unwrap_or(0), &explicit)?;
        (got, Vec::new())
    };
    // `all`: the other implementation's quirk, every address and prefix
    // of the ENI, the primary included.
    let (listed_ips, listed_prefixes) = match ctx.scope.faults.assign_reply {
        AssignReply::New => (new_ips, new_prefixes),
        AssignReply::All => {
            let e = cloud.eni(&eni_id)?;
            (e.all_ips().collect(), e.prefixes.clone())
        }
    };
    let items: String = listed_ips
        .iter()
        .map(|ip| format!("<item><privateIpAddress>{ip}</privateIpAddress></item>"))
        .collect();
    let prefix_items: String = listed_prefixes
        .iter()
        .map(|p| format!("<item><ipv4Prefix>{p}</ipv4Prefix></item>"))
        .collect();
    Ok((format!("<networkInterfaceId>{eni_id}</networkInterfaceId><assignedPrivateIpAddressesSet>{items}</assignedPrivateIpAddressesSet><assignedIpv4PrefixSet>{prefix_items}</assignedIpv4PrefixSet><return>true</return>"), Effect::Changed))
}

fn unassign_private_ip_addresses(cloud: &mut Cloud, _: &Ctx<'_>, p: &Params) -> Answer {
    let eni_id = param(p, "NetworkInterfaceId")?.to_string();
    cloud.eni(&eni_id)?;
    let addrs = ips(p, "PrivateIpAddress")?;
    let raw_prefixes = list(p, "Ipv4Prefix");
    one_kind(&[
        ("PrivateIpAddress.N", !addrs.is_empty()),
        ("Ipv4Prefix.N", !raw_prefixes.is_empty()),
    ])?;
    if addrs.is_empty() {
        let prefixes: Vec<Ipv4Net> = raw_prefixes
            .iter()
            .map(|s| {
                s.parse().map_err(|_| {
                    api_err(
                        "InvalidParameterValue",
                        format!("Value ({}) for parameter Ipv4Prefix is invalid", clip(s)),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        cloud.unassign_prefixes(&eni_id, &prefixes)?;
    } else {
        cloud.unassign(&eni_id, &addrs)?;
    }
    Ok(("<return>true</return>".into(), Effect::Changed))
}

fn detach_network_interface(cloud: &mut Cloud, _: &Ctx<'_>, p: &Params) -> Answer {
    let att = param(p, "AttachmentId")?;
    match p.get("Force").map(String::as_str) {
        None | Some("true") | Some("false") => {}
        Some(v) => {
            return Err(api_err(
                "InvalidParameterValue",
                format!(
                    "Value ({}) for parameter Force is invalid. Expected: 'true' or 'false'.",
                    clip(v)
                ),
            ))
        }
    }
    cloud.detach(att)?;
    Ok(("<return>true</return>".into(), Effect::Changed))
}

fn delete_network_interface(cloud: &mut Cloud, _: &Ctx<'_>, p: &Params) -> Answer {
    cloud.delete_eni(param(p, "NetworkInterfaceId")?)?;
    Ok(("<return>true</return>".into(), Effect::Changed))
}

/// Tags of `TagSpecification.1` as key → value.
fn tags(p: &Params) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    for i in 1.. {
        let Some(k) = p.get(&format!("TagSpecification.1.Tag.{i}.Key")) else {
            break;
        };
        tags.insert(
            k.clone(),
            p.get(&format!("TagSpecification.1.Tag.{i}.Value"))
                .cloned()
                .unwrap_or_default(),
        );
    }
    tags
}

fn run_instances(cloud: &mut Cloud, ctx: &Ctx<'_>, p: &Params) -> Answer {
    if num(p, "MinCount")? > 1 || num(p, "MaxCount")? > 1 {
        return Err(api_err(
            "InvalidParameterValue",
            "the lab launches one instance per call",
        ));
    }
    // Tags name the instance and the namespace that is its machine.
    let tags = tags(p);
    let host = tags
        .get("Name")
        .ok_or_else(|| api_err("MissingParameter", "tag Name"))?;
    let netns = tags
        .get("podwire:netns")
        .ok_or_else(|| api_err("MissingParameter", "tag podwire:netns"))?;
    ctx.scope.check_instance(host, netns)?;
    let id = cloud.run_instance(
        ctx.limits,
        host,
        netns,
        param(p, "InstanceType")?,
        param(p, "SubnetId")?,
        list(p, "SecurityGroupId"),
    )?;
    let inst = cloud
        .instances
        .get(&id)
        .ok_or_else(|| api_err("InternalError", "instance vanished"))?;
    let reservation = id.strip_prefix("i-").unwrap_or(&id);
    let body = format!("<reservationId>r-{reservation}</reservationId><ownerId>000000000000</ownerId><instancesSet>{}</instancesSet>", xml::instance(cloud, inst));
    Ok((body, Effect::Changed))
}

fn terminate_instances(cloud: &mut Cloud, _: &Ctx<'_>, p: &Params) -> Answer {
    let mut items = String::new();
    for id in list(p, "InstanceId") {
        cloud.terminate_instance(&id)?;
        items.push_str(&format!("<item><instanceId>{id}</instanceId><currentState><code>48</code><name>terminated</name></currentState></item>"));
    }
    Ok((
        format!("<instancesSet>{items}</instancesSet>"),
        Effect::Changed,
    ))
}

fn authorize_security_group_ingress(cloud: &mut Cloud, _: &Ctx<'_>, p: &Params) -> Answer {
    change_ingress(cloud, p, true)
}

fn revoke_security_group_ingress(cloud: &mut Cloud, _: &Ctx<'_>, p: &Params) -> Answer {
    change_ingress(cloud, p, false)
}

/// Authorize (`add`) or revoke every rule of the request, all or nothing:
/// a rule already there (authorize) or absent (revoke) fails the call as
/// in EC2.
fn change_ingress(cloud: &mut Cloud, p: &Params, add: bool) -> Answer {
    let gid = param(p, "GroupId")?.to_string();
    if !cloud.groups.contains_key(&gid) {
        return Err(api_err(
            "InvalidGroup.NotFound",
            format!("The security group '{}' does not exist", clip(&gid)),
        ));
    }
    let groups: Vec<String> = cloud.groups.keys().cloned().collect();
    let rules = sg::parse_permissions(p, &|g| groups.iter().any(|x| x == g))?;
    let sg = cloud.groups.get_mut(&gid).ok_or_else(|| {
        api_err(
            "InvalidGroup.NotFound",
            format!("The security group '{}' does not exist", clip(&gid)),
        )
    })?;
    let mut next = sg.ingress.clone();
    for r in rules {
        let desc = format!(
            "{} {}..{} from {:?}",
            r.protocol.ec2_name(),
            r.from_port,
            r.to_port,
            r.source
        );
        if add && !next.insert(r.clone()) {
            return Err(api_err(
                "InvalidPermission.Duplicate",
                format!("the specified rule \"{desc}\" already exists"),
            ));
        }
        if !add && !next.remove(&r) {
            return Err(api_err(
                "InvalidPermission.NotFound",
                format!("The specified rule does not exist in this security group: {desc}"),
            ));
        }
    }
    if next.len() > sg::MAX_RULES {
        return Err(api_err(
            "RulesPerSecurityGroupLimitExceeded",
            format!(
                "The maximum number of rules per security group ({}) has been reached.",
                sg::MAX_RULES
            ),
        ));
    }
    sg.ingress = next;
    Ok(("<return>true</return>".into(), Effect::Changed))
}

fn describe_security_groups(cloud: &mut Cloud, _: &Ctx<'_>, p: &Params) -> Answer {
    let ids = list(p, "GroupId");
    for i in &ids {
        if !cloud.groups.contains_key(i) {
            return Err(api_err(
                "InvalidGroup.NotFound",
                format!("The security group '{}' does not exist", clip(i)),
            ));
        }
    }
    let fs = filters(p)?;
    let mut items = String::new();
    for g in cloud.groups.values() {
        if !ids.is_empty() && !ids.contains(&g.id) {
            continue;
        }
        let mut keep = true;
        for (name, values) in &fs {
            let actual = match name.as_str() {
                "group-id" => g.id.clone(),
                "group-name" => g.name.clone(),
                "vpc-id" => cloud.vpc_id.clone(),
                other => {
                    return Err(api_err(
                        "InvalidParameterValue",
                        format!("The filter '{}' is invalid", clip(other)),
                    ))
                }
            };
            if !values.iter().any(|v| super::filter::matches(v, &actual)) {
                keep = false;
            }
        }
        if keep {
            items.push_str(&xml::security_group(cloud, g));
        }
    }
    Ok((
        format!("<securityGroupInfo>{items}</securityGroupInfo>"),
        Effect::ReadOnly,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn signed(secret: &str, time: SystemTime) -> QueryRequest {
        let body = "Action=DescribeInstances&Version=2016-11-15".to_string();
        let url = "http://169.254.169.250/".to_string();
        let mut headers = vec![
            ("host".to_string(), "169.254.169.250".to_string()),
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded; charset=utf-8".to_string(),
            ),
        ];
        let creds = Credentials {
            access_key_id: "AKIALAB".into(),
            secret_access_key: secret.into(),
            session_token: None,
        };
        let req = sigv4::Signable {
            method: "POST",
            url: &url,
            headers: &headers,
            body: body.as_bytes(),
        };
        let extra = sigv4::sign_headers(&creds, "us-east-1", "ec2", req, time).expect("sign");
        headers.extend(extra.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)));
        QueryRequest {
            params: BTreeMap::new(),
            body,
            headers,
            url,
        }
    }

    #[test]
    fn sigv4_is_verified_like_ec2_does() {
        let mut cloud = Cloud {
            region: "us-east-1".into(),
            ..Default::default()
        };
        cloud.credentials.insert("AKIALAB".into(), "right".into());
        let now = SystemTime::now();
        assert_eq!(verify(&cloud, &signed("right", now)), Ok(()));
        assert_eq!(
            verify(&cloud, &signed("wrong", now))
                .expect_err("bad secret")
                .code,
            "SignatureDoesNotMatch"
        );
        let old = now - Duration::from_secs(3600);
        assert_eq!(
            verify(&cloud, &signed("right", old))
                .expect_err("stale")
                .code,
            "RequestExpired"
        );
        let mut tampered = signed("right", now);
        tampered.body.push_str("&InstanceId.1=i-x");
        assert_eq!(
            verify(&cloud, &tampered).expect_err("tampered").code,
            "SignatureDoesNotMatch"
        );
        let mut unsigned = signed("right", now);
        unsigned.headers.retain(|(k, _)| k != "authorization");
        assert_eq!(
            verify(&cloud, &unsigned).expect_err("unsigned").code,
            "AuthFailure"
        );
        cloud.credentials.clear();
        assert_eq!(
            verify(&cloud, &signed("right", now))
                .expect_err("unknown key")
                .code,
            "AuthFailure"
        );
    }

    #[test]
    fn list_params_keep_their_order() {
        let mut p = BTreeMap::new();
        for (k, v) in [
            ("PrivateIpAddress.10", "c"),
            ("PrivateIpAddress.2", "b"),
            ("PrivateIpAddress.1", "a"),
            ("PrivateIpAddressX", "z"),
        ] {
            p.insert(k.to_string(), v.to_string());
        }
        assert_eq!(list(&p, "PrivateIpAddress"), vec!["a", "b", "c"]);
    }

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn lab_cloud() -> Cloud {
        let mut c = Cloud {
            region: "us-east-1".into(),
            ..Default::default()
        };
        c.subnets.insert(
            "subnet-a".into(),
            super::super::model::Subnet {
                id: "subnet-a".into(),
                cidr: "10.0.0.0/24".parse().expect("cidr"),
                availability_zone: "us-east-1a".into(),
            },
        );
        c
    }

    fn run_instances(host: &str, netns: &str) -> BTreeMap<String, String> {
        params(&[
            ("Action", "RunInstances"),
            ("InstanceType", "t3.micro"),
            ("SubnetId", "subnet-a"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("TagSpecification.1.Tag.1.Key", "Name"),
            ("TagSpecification.1.Tag.1.Value", host),
            ("TagSpecification.1.Tag.2.Key", "podwire:netns"),
            ("TagSpecification.1.Tag.2.Value", netns),
        ])
    }

    #[test]
    fn run_instances_links_only_namespaces_the_lab_recorded() {
        let limits = LimitsTable::builtin().expect("limits");
        let scope = LabScope {
            lab: "t".into(),
            namespaces: ["pw-t-fabric".to_string(), "pw-t-node-3".to_string()]
                .into_iter()
                .collect(),
            faults: Default::default(),
        };
        let mut c = lab_cloud();
        for (host, netns) in [
            ("node-3", "../../proc/1/ns/net"),
            ("node-4", "pw-t-node-4"),
            ("fabric", "pw-t-fabric"),
        ] {
            let e =
                dispatch(&mut c, &limits, &scope, &run_instances(host, netns)).expect_err(netns);
            assert_eq!(e.code, "InvalidParameterValue", "{netns}");
            assert!(
                c.instances.is_empty() && c.enis.is_empty(),
                "created nothing"
            );
        }
        let (xml, eff) = dispatch(
            &mut c,
            &limits,
            &scope,
            &run_instances("node-3", "pw-t-node-3"),
        )
        .expect("a recorded namespace");
        assert_eq!(eff, Effect::Changed);
        assert!(xml.contains("<value>node-3</value>"), "{xml}");
        assert_eq!(c.instances.len(), 1);
    }

    #[test]
    fn every_action_is_routed_and_unknown_ones_are_refused() {
        let limits = LimitsTable::builtin().expect("limits");
        let scope = LabScope::default();
        let mut c = lab_cloud();
        let (xml, eff) = dispatch(
            &mut c,
            &limits,
            &scope,
            &params(&[
                ("Action", "DescribeInstanceTypes"),
                ("InstanceType.1", "t3.micro"),
            ]),
        )
        .expect("routed");
        assert_eq!(eff, Effect::ReadOnly);
        assert!(xml.contains("<DescribeInstanceTypesResponse"), "{xml}");
        assert!(xml.contains("<maximumNetworkInterfaces>2<"), "{xml}");
        let e = dispatch(&mut c, &limits, &scope, &params(&[("Action", "DeleteVpc")]))
            .expect_err("unknown");
        assert_eq!(e.code, "InvalidAction");
        let e = dispatch(&mut c, &limits, &scope, &params(&[])).expect_err("no action");
        assert_eq!(e.code, "MissingParameter");
        let names: BTreeSet<&str> = ACTIONS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), ACTIONS.len(), "each action once");
    }

    /// The agent reads the type's vCPUs from this answer, as from EC2's.
    #[test]
    fn describe_instance_types_sends_vcpu_info_as_ec2_does() {
        let limits = LimitsTable::builtin().expect("limits");
        let scope = LabScope::default();
        let mut c = lab_cloud();
        let (xml, _) = dispatch(
            &mut c,
            &limits,
            &scope,
            &params(&[
                ("Action", "DescribeInstanceTypes"),
                ("InstanceType.1", "m5.xlarge"),
            ]),
        )
        .expect("answered");
        let t = podwire_cloud::ec2_reply::describe_instance_types(&xml, "m5.xlarge")
            .expect("the agent's parser reads it");
        assert_eq!((t.max_enis, t.ipv4_per_eni, t.vcpus), (4, 15, Some(4)));
    }
}
