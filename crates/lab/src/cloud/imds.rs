//! IMDSv2 for the lab's instances. The caller is recognised by its source
//! address, as the real service recognises the ENI a request arrives on.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::model::Cloud;
use super::xml::dns_name;

/// The role whose credentials every lab instance gets.
pub const ROLE: &str = "podwire-lab-node";

/// An IMDS answer: status and body.
pub type Reply = (u16, String);

fn not_found() -> Reply {
    (404, "Not Found".into())
}

/// Handles `PUT /latest/api/token`.
pub fn token(tokens: &mut BTreeSet<String>, ttl_header: Option<&str>) -> Reply {
    match ttl_header.and_then(|v| v.parse::<u32>().ok()) {
        Some(ttl) if (1..=21600).contains(&ttl) => {
            let t: u128 = rand::random();
            let token = format!("AQAEA{t:032x}");
            tokens.insert(token.clone());
            (200, token)
        }
        _ => (
            400,
            "Bad Request: X-aws-ec2-metadata-token-ttl-seconds must be 1-21600".into(),
        ),
    }
}

/// Handles `GET /latest/meta-data/<path>` for the instance owning `source`.
pub fn get(cloud: &Cloud, source: Ipv4Addr, path: &str) -> Reply {
    let Some((_, Some(inst))) = cloud.owner_of(source) else {
        return not_found();
    };
    let enis = cloud.instance_enis(&inst.id);
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
                "" => ok("device-number\ninterface-id\nlocal-ipv4s\nmac\nsecurity-group-ids\nsubnet-id\nsubnet-ipv4-cidr-block\nvpc-id\nvpc-ipv4-cidr-block".into()),
                "device-number" => ok(e.attachment.as_ref().map(|a| a.device_index).unwrap_or(0).to_string()),
                "interface-id" => ok(e.id.clone()),
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
