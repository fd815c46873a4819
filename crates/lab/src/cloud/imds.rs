//! IMDSv2 for the lab's instances. The caller is recognised by its source
//! address, as the real service recognises the ENI a request arrives on.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::model::Cloud;
use super::xml::dns_name;

/// The role whose credentials every lab instance gets.
pub const ROLE: &str = "podwire-lab-node";

/// An IMDS answer: status and body.
pub type Reply = (u16, String);

fn not_found() -> Reply {
    (404, "Not Found".into())
}

/// Live session tokens and when each expires (IMDSv2 tokens carry the TTL
/// the caller asked for, 1 to 21600 seconds).
#[derive(Debug, Default)]
pub struct Tokens {
    expiry: BTreeMap<String, Instant>,
}

/// At most this many live tokens: a caller minting tokens in a loop cannot
/// grow the cloud without bound (expired ones are dropped first).
pub const MAX_TOKENS: usize = 4096;
pub const MAX_TTL_SECS: u64 = 21600;

impl Tokens {
    /// Handles `PUT /latest/api/token`.
    pub fn issue(&mut self, ttl_header: Option<&str>, now: Instant) -> Reply {
        let ttl = match ttl_header.and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(ttl) if (1..=MAX_TTL_SECS).contains(&ttl) => ttl,
            _ => {
                return (
                    400,
                    "Bad Request: X-aws-ec2-metadata-token-ttl-seconds must be 1-21600".into(),
                )
            }
        };
        self.expiry.retain(|_, until| *until > now);
        if self.expiry.len() >= MAX_TOKENS {
            return (503, "Service Unavailable: too many live tokens".into());
        }
        let t: u128 = rand::random();
        let token = format!("AQAEA{t:032x}");
        self.expiry
            .insert(token.clone(), now + Duration::from_secs(ttl));
        (200, token)
    }

    /// Is `token` one we issued that has not expired?
    pub fn valid(&self, token: &str, now: Instant) -> bool {
        self.expiry.get(token).is_some_and(|until| now < *until)
    }
}

/// One IMDS request: method, path, and a header lookup.
#[derive(Debug)]
pub struct ImdsRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub ttl: Option<&'a str>,
    pub token: Option<&'a str>,
    /// Whether the request carried `X-Forwarded-For`.
    pub forwarded: bool,
}

/// Answers one request from `source`, as IMDSv2 does: a request that went
/// through a proxy (X-Forwarded-For) is refused, a session token must be
/// live, and only tokens, GET and PUT exist.
pub fn handle(
    cloud: &Cloud,
    tokens: &mut Tokens,
    source: Ipv4Addr,
    r: &ImdsRequest<'_>,
    now: Instant,
) -> Reply {
    if r.forwarded {
        return (403, "Forbidden".into());
    }
    match r.method {
        "PUT" if r.path == "/latest/api/token" => tokens.issue(r.ttl, now),
        "GET" => match (r.path.strip_prefix("/latest/meta-data"), r.token) {
            (Some(path), Some(tok)) if tokens.valid(tok, now) => get(cloud, source, path),
            (Some(_), _) => (401, "Unauthorized".into()),
            _ => not_found(),
        },
        "PUT" => not_found(),
        _ => (405, "Method Not Allowed".into()),
    }
}

/// Handles `GET /latest/meta-data/<path>` for the instance owning `source`.
pub fn get(cloud: &Cloud, source: Ipv4Addr, path: &str) -> Reply {
    let Some((_, Some(inst))) = cloud.owner_of(source) else {
        return not_found();
    };
    // An ENI still attaching has no device in the instance yet: the
    // metadata does not list it either.
    let enis: Vec<_> = cloud
        .instance_enis(&inst.id)
        .into_iter()
        .filter(|e| {
            e.attachment
                .as_ref()
                .is_some_and(|a| a.ready_at_ms.is_none())
        })
        .collect();
    let Some(primary) = enis.first() else {
        return not_found();
    };
    let subnet = |id: &str| cloud.subnets.get(id);
    let az = subnet(&inst.subnet_id)
        .map(|s| s.availability_zone.clone())
        .unwrap_or_default();
    let ok = |s: String| (200, s);
    let path = path.trim_start_matches('/');
    match path {
        "" => ok("instance-id\ninstance-type\nlocal-hostname\nlocal-ipv4\nmac\nnetwork/\nplacement/\niam/".into()),
        "instance-id" => ok(inst.id.clone()),
        "instance-type" => ok(inst.instance_type.clone()),
        "local-ipv4" => ok(primary.primary_ip.to_string()),
        "local-hostname" | "hostname" => ok(dns_name(primary.primary_ip)),
        "mac" => ok(primary.mac.clone()),
        "placement/availability-zone" => ok(az),
        "placement/region" => ok(cloud.region.clone()),
        "iam/security-credentials" | "iam/security-credentials/" => ok(ROLE.into()),
        p if p == format!("iam/security-credentials/{ROLE}") => {
            let Some((ak, sk)) = cloud.credentials.iter().next() else { return not_found() };
            ok(serde_json::json!({
                "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": ak, "SecretAccessKey": sk,
                "Token": "", "Expiration": "2099-01-01T00:00:00Z",
            })
            .to_string())
        }
        "network/interfaces/macs" | "network/interfaces/macs/" => ok(enis.iter().map(|e| format!("{}/", e.mac)).collect::<Vec<_>>().join("\n")),
        p => {
            let Some(rest) = p.strip_prefix("network/interfaces/macs/") else { return not_found() };
            let (mac, key) = rest.split_once('/').unwrap_or((rest, ""));
            let Some(e) = enis.iter().find(|e| e.mac == mac) else { return not_found() };
            let Some(sn) = subnet(&e.subnet_id) else { return not_found() };
            match key {
                "" => ok("device-number\ninterface-id\nipv4-prefix\nlocal-ipv4s\nmac\nsecurity-group-ids\nsubnet-id\nsubnet-ipv4-cidr-block\nvpc-id\nvpc-ipv4-cidr-block".into()),
                "device-number" => ok(e.attachment.as_ref().map(|a| a.device_index).unwrap_or(0).to_string()),
                "interface-id" => ok(e.id.clone()),
                "ipv4-prefix" if !e.prefixes.is_empty() => ok(e.prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")),
                "local-ipv4s" => ok(e.all_ips().map(|i| i.to_string()).collect::<Vec<_>>().join("\n")),
                "mac" => ok(e.mac.clone()),
                "security-group-ids" => ok(e.groups.join("\n")),
                "subnet-id" => ok(e.subnet_id.clone()),
                "subnet-ipv4-cidr-block" => ok(sn.cidr.to_string()),
                "vpc-id" => ok(cloud.vpc_id.clone()),
                "vpc-ipv4-cidr-block" => ok(cloud.vpc_cidr.map(|c| c.to_string()).unwrap_or_default()),
                _ => not_found(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::model::{Eni, EniAttachment, Instance};

    const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

    fn cloud() -> Cloud {
        let mut c = Cloud::default();
        c.instances.insert(
            "i-1".into(),
            Instance {
                id: "i-1".into(),
                host: "node-1".into(),
                netns: "pw-t-node-1".into(),
                instance_type: "t3.micro".into(),
                subnet_id: "subnet-a".into(),
            },
        );
        c.enis.insert(
            "eni-1".into(),
            Eni {
                id: "eni-1".into(),
                subnet_id: "subnet-a".into(),
                description: String::new(),
                mac: "0e:00:00:00:00:01".into(),
                primary_ip: NODE,
                secondary_ips: vec![],
                groups: vec![],
                source_dest_check: true,
                attachment: Some(EniAttachment {
                    attachment_id: "a-1".into(),
                    instance_id: "i-1".into(),
                    device_index: 0,
                    ready_at_ms: None,
                }),
                prefixes: vec![],
                tags: Default::default(),
            },
        );
        c
    }

    fn put(ttl: &str) -> ImdsRequest<'_> {
        ImdsRequest {
            method: "PUT",
            path: "/latest/api/token",
            ttl: Some(ttl),
            token: None,
            forwarded: false,
        }
    }

    fn get(token: &str) -> ImdsRequest<'_> {
        ImdsRequest {
            method: "GET",
            path: "/latest/meta-data/instance-id",
            ttl: None,
            token: Some(token),
            forwarded: false,
        }
    }

    #[test]
    fn tokens_expire_after_their_ttl() {
        let c = cloud();
        let mut t = Tokens::default();
        let t0 = Instant::now();
        let (code, tok) = handle(&c, &mut t, NODE, &put("2"), t0);
        assert_eq!(code, 200);
        assert_eq!(
            handle(&c, &mut t, NODE, &get(&tok), t0 + Duration::from_secs(1)),
            (200, "i-1".to_string())
        );
        assert_eq!(
            handle(&c, &mut t, NODE, &get(&tok), t0 + Duration::from_secs(2)).0,
            401,
            "a token is dead once its TTL has passed"
        );
        for bad in ["0", "21601", "-1", "x", "18446744073709551617"] {
            assert_eq!(handle(&c, &mut t, NODE, &put(bad), t0).0, 400, "ttl {bad}");
        }
        assert_eq!(handle(&c, &mut t, NODE, &put("21600"), t0).0, 200);
    }

    #[test]
    fn requests_through_a_proxy_are_refused() {
        let c = cloud();
        let mut t = Tokens::default();
        let t0 = Instant::now();
        let mut p = put("60");
        p.forwarded = true;
        assert_eq!(handle(&c, &mut t, NODE, &p, t0).0, 403, "token via a proxy");
        let (_, tok) = handle(&c, &mut t, NODE, &put("60"), t0);
        let mut g = get(&tok);
        g.forwarded = true;
        assert_eq!(
            handle(&c, &mut t, NODE, &g, t0).0,
            403,
            "metadata via a proxy"
        );
    }

    #[test]
    fn live_tokens_are_bounded() {
        let c = cloud();
        let mut t = Tokens::default();
        let t0 = Instant::now();
        for _ in 0..MAX_TOKENS {
            assert_eq!(handle(&c, &mut t, NODE, &put("1"), t0).0, 200);
        }
        assert_eq!(handle(&c, &mut t, NODE, &put("1"), t0).0, 503);
        // Once they expired, new ones are issued again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(handle(&c, &mut t, NODE, &put("1"), later).0, 200);
    }
}
