//! EC2's XML answers, written by hand (the shapes are few and fixed).

use super::model::{Cloud, Eni, IngressSource, Instance, Protocol, SecurityGroup};

pub const NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn dns_name(ip: std::net::Ipv4Addr) -> String {
    format!("ip-{}.ec2.internal", ip.to_string().replace('.', "-"))
}

/// `<Action>Response` around a body.
pub fn response(action: &str, request_id: &str, body: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{NS}\"><requestId>{request_id}</requestId>{body}</{action}Response>")
}

pub fn error(code: &str, message: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
        esc(code),
        esc(message)
    )
}

fn group_set(cloud: &Cloud, groups: &[String]) -> String {
    let items: String = groups
        .iter()
        .map(|g| {
            let name = cloud
                .groups
                .get(g)
                .map(|x| x.name.clone())
                .unwrap_or_default();
            format!(
                "<item><groupId>{}</groupId><groupName>{}</groupName></item>",
                esc(g),
                esc(&name)
            )
        })
        .collect();
    format!("<groupSet>{items}</groupSet>")
}

pub fn eni(cloud: &Cloud, e: &Eni, tag: &str) -> String {
    let az = cloud
        .subnets
        .get(&e.subnet_id)
        .map(|s| s.availability_zone.clone())
        .unwrap_or_default();
    let attachment = e
        .attachment
        .as_ref()
        .map(|a| {
            format!(
                "<attachment><attachmentId>{}</attachmentId><instanceId>{}</instanceId><deviceIndex>{}</deviceIndex><status>{}</status><deleteOnTermination>{}</deleteOnTermination></attachment>",
                a.attachment_id, a.instance_id, a.device_index, a.status(), a.device_index == 0
            )
        })
        .unwrap_or_default();
    let ips: String = e
        .all_ips()
        .map(|ip| format!("<item><privateIpAddress>{ip}</privateIpAddress><privateDnsName>{}</privateDnsName><primary>{}</primary></item>", dns_name(ip), ip == e.primary_ip))
        .collect();
    let prefixes: String = e
        .prefixes
        .iter()
        .map(|p| format!("<item><ipv4Prefix>{p}</ipv4Prefix></item>"))
        .collect();
    format!(
        "<{tag}><networkInterfaceId>{}</networkInterfaceId><subnetId>{}</subnetId><vpcId>{}</vpcId><availabilityZone>{az}</availabilityZone><description>{}</description><ownerId>000000000000</ownerId><requesterManaged>false</requesterManaged><status>{}</status><macAddress>{}</macAddress><privateIpAddress>{}</privateIpAddress><privateDnsName>{}</privateDnsName><sourceDestCheck>{}</sourceDestCheck>{}{attachment}<privateIpAddressesSet>{ips}</privateIpAddressesSet><ipv4PrefixSet>{prefixes}</ipv4PrefixSet>{}<interfaceType>interface</interfaceType></{tag}>",
        e.id,
        e.subnet_id,
        cloud.vpc_id,
        esc(&e.description),
        e.status(),
        e.mac,
        e.primary_ip,
        dns_name(e.primary_ip),
        e.source_dest_check,
        group_set(cloud, &e.groups),
        tag_set(&e.tags),
    )
}

/// `<tagSet>` of a resource's tags.
pub fn tag_set(tags: &std::collections::BTreeMap<String, String>) -> String {
    let items: String = tags
        .iter()
        .map(|(k, v)| {
            format!(
                "<item><key>{}</key><value>{}</value></item>",
                esc(k),
                esc(v)
            )
        })
        .collect();
    format!("<tagSet>{items}</tagSet>")
}

pub fn instance(cloud: &Cloud, i: &Instance) -> String {
    let enis = cloud.instance_enis(&i.id);
    let primary = enis
        .first()
        .map(|e| e.primary_ip.to_string())
        .unwrap_or_default();
    let groups = enis.first().map(|e| e.groups.clone()).unwrap_or_default();
    let nis: String = enis.iter().map(|e| eni(cloud, e, "item")).collect();
    format!(
        "<item><instanceId>{}</instanceId><instanceType>{}</instanceType><instanceState><code>16</code><name>running</name></instanceState><privateIpAddress>{primary}</privateIpAddress><privateDnsName>{}</privateDnsName><subnetId>{}</subnetId><vpcId>{}</vpcId>{}<networkInterfaceSet>{nis}</networkInterfaceSet><tagSet><item><key>Name</key><value>{}</value></item></tagSet></item>",
        i.id,
        i.instance_type,
        primary.parse().map(dns_name).unwrap_or_default(),
        i.subnet_id,
        cloud.vpc_id,
        group_set(cloud, &groups),
        esc(&i.host),
    )
}

/// A security group as DescribeSecurityGroups lists it: rules with the same
/// protocol and ports are one `ipPermissions` item with all their sources.
pub fn security_group(cloud: &Cloud, g: &SecurityGroup) -> String {
    let mut perms: std::collections::BTreeMap<(Protocol, i32, i32), (String, String)> =
        std::collections::BTreeMap::new();
    for r in &g.ingress {
        let e = perms
            .entry((r.protocol, r.from_port, r.to_port))
            .or_default();
        match &r.source {
            IngressSource::Group(id) => e.0.push_str(&format!(
                "<item><userId>000000000000</userId><groupId>{}</groupId></item>",
                esc(id)
            )),
            IngressSource::Cidr(c) => e.1.push_str(&format!("<item><cidrIp>{c}</cidrIp></item>")),
        }
    }
    let items: String = perms
        .iter()
        .map(|((proto, from, to), (groups, ranges))| {
            let ports = if *proto == Protocol::All {
                String::new()
            } else {
                format!("<fromPort>{from}</fromPort><toPort>{to}</toPort>")
            };
            format!(
                "<item><ipProtocol>{}</ipProtocol>{ports}<groups>{groups}</groups><ipRanges>{ranges}</ipRanges><ipv6Ranges/><prefixListIds/></item>",
                proto.ec2_name()
            )
        })
        .collect();
    format!(
        "<item><ownerId>000000000000</ownerId><groupId>{}</groupId><groupName>{}</groupName><groupDescription>{}</groupDescription><vpcId>{}</vpcId><ipPermissions>{items}</ipPermissions><ipPermissionsEgress><item><ipProtocol>-1</ipProtocol><groups/><ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges><ipv6Ranges/><prefixListIds/></item></ipPermissionsEgress><tagSet/></item>",
        esc(&g.id),
        esc(&g.name),
        esc(&g.description),
        esc(&cloud.vpc_id)
    )
}
