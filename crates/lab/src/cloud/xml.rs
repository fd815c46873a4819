//! EC2's XML answers, written by hand (the shapes are few and fixed).

use super::model::{Cloud, Eni, Instance};

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
