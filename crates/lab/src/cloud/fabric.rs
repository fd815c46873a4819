//! The VPC's data plane, inside the fabric namespace: one veth per attached
//! ENI (the other end is `ethN` in the instance), a /32 route and a permanent
//! neighbour entry per address (the VPC's mapping service), proxy ARP for the
//! subnet, and nftables for source/dest check and security groups. Reconciled
//! from the model after every change.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::Ipv4Net;
use podwire_netlink::{sysctl, Handle, MacAddr, Neighbour, Route, RouteScope, VethSpec};

use super::model::{Cloud, IngressRule, IngressSource, Protocol};
use super::scope::LabScope;
use crate::LabError;

/// Route protocol of the fabric's per-address routes.
pub const FABRIC_PROTO: u8 = 81;
pub const NFT_TABLE: &str = "podwire_lab";
pub const ENI_MTU: u32 = 9001;

/// The fabric-side name of an ENI's veth: `<host>.eth<N>`.
pub fn fabric_ifname(host: &str, device: u32) -> String {
    let mut s = format!("{host}.eth{device}");
    s.truncate(15);
    s
}

fn lab_err(e: impl std::fmt::Display) -> LabError {
    LabError::Fabric(e.to_string())
}

/// Brings the fabric namespace in line with the model.
/// Incremental: only what differs is changed, so the fabric holds the
/// (global) rtnl lock as briefly as possible while nodes program pods.
pub fn sync(
    nl: &mut Handle,
    cloud: &Cloud,
    scope: &LabScope,
    last_nft: &mut Option<String>,
) -> Result<(), LabError> {
    // Desired: ifname -> (instance netns, device, mac, addresses).
    let mut want: BTreeMap<String, (String, u32, MacAddr, Vec<Ipv4Addr>)> = BTreeMap::new();
    for e in cloud.enis.values() {
        let Some(a) = &e.attachment else { continue };
        // Still attaching: no link in the instance yet.
        if a.ready_at_ms.is_some() {
            continue;
        }
        let Some(inst) = cloud.instances.get(&a.instance_id) else {
            continue;
        };
        let mac: MacAddr = e.mac.parse().map_err(lab_err)?;
        want.insert(
            fabric_ifname(&inst.host, a.device_index),
            (
                inst.netns.clone(),
                a.device_index,
                mac,
                // Addresses inside prefixes are delivered like secondaries.
                e.owned_ips().collect(),
            ),
        );
    }
    let links = nl.links()?;
    // Detached or deleted ENIs: remove their veth (the instance side goes too).
    for l in &links {
        if l.kind.as_deref() == Some("veth")
            && l.name.contains(".eth")
            && !want.contains_key(&l.name)
        {
            nl.delete_link(l.index)?;
        }
    }
    let current_routes: Vec<Route> = nl
        .routes()?
        .into_iter()
        .filter(|r| r.protocol == FABRIC_PROTO && r.dst.prefix_len() == 32)
        .collect();
    let have_routes: BTreeMap<Ipv4Addr, u32> = current_routes
        .iter()
        .filter_map(|r| r.oif.map(|o| (r.dst.addr(), o)))
        .collect();
    let current_neigh = nl.permanent_neighbours()?;
    let have_neigh: BTreeMap<(u32, Ipv4Addr), MacAddr> = current_neigh
        .iter()
        .map(|n| ((n.ifindex, n.ip), n.mac))
        .collect();
    let mut desired_routes: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    let mut desired_neigh: BTreeSet<(u32, Ipv4Addr)> = BTreeSet::new();
    for (ifname, (netns, device, mac, ips)) in &want {
        let link = match nl.link_by_name(ifname)? {
            Some(l) => l,
            None => {
                // Only ever into an instance namespace this lab made.
                if !scope.allows_netns(netns) {
                    return Err(lab_err(format!(
                        "refusing to link {ifname} into {}: not a namespace of lab {}",
                        netns.escape_debug(),
                        scope.lab
                    )));
                }
                let ns = File::open(Path::new("/run/netns").join(netns))
                    .map_err(|e| lab_err(format!("instance netns {netns}: {e}")))?;
                nl.add_veth(&VethSpec {
                    name: ifname,
                    peer_name: &format!("eth{device}"),
                    mtu: Some(ENI_MTU),
                    mac: None,
                    peer_mac: Some(*mac),
                    peer_netns: Some(ns.as_fd()),
                })?;
                let l = nl.link(ifname)?;
                for (k, v) in [
                    ("net/ipv4/conf/{}/proxy_arp", "1"),
                    ("net/ipv4/neigh/{}/proxy_delay", "0"),
                    ("net/ipv4/conf/{}/rp_filter", "0"),
                ] {
                    sysctl::write(&k.replace("{}", ifname), v)?;
                }
                nl.set_up(l.index)?;
                l
            }
        };
        for ip in ips {
            desired_routes.insert(*ip, link.index);
            desired_neigh.insert((link.index, *ip));
            if have_routes.get(ip) != Some(&link.index) {
                nl.replace_route(
                    &Route::new(Ipv4Net::new(*ip, 32).map_err(lab_err)?)
                        .dev(link.index)
                        .scope(RouteScope::Link)
                        .protocol(FABRIC_PROTO),
                )?;
            }
            if have_neigh.get(&(link.index, *ip)) != Some(mac) {
                nl.replace_neighbour(&Neighbour {
                    ifindex: link.index,
                    ip: *ip,
                    mac: *mac,
                })?;
            }
        }
    }
    for r in current_routes {
        if desired_routes.get(&r.dst.addr()) != r.oif.as_ref() {
            let _ = nl.delete_route(&r);
        }
    }
    let fabric_links: BTreeSet<u32> = nl
        .links()?
        .iter()
        .filter(|l| want.contains_key(&l.name))
        .map(|l| l.index)
        .collect();
    for n in current_neigh {
        if fabric_links.contains(&n.ifindex) && !desired_neigh.contains(&(n.ifindex, n.ip)) {
            let _ = nl.delete_neighbour(&n);
        }
    }
    let rules = ruleset(cloud);
    if last_nft.as_deref() != Some(rules.as_str()) {
        podwire_dataplane::nft::apply(&rules).map_err(lab_err)?;
        *last_nft = Some(rules);
    }
    Ok(())
}

/// The nftables ruleset: stateful, default drop for forwarded traffic;
/// source/dest check on the way in, security groups on the way out.
pub fn ruleset(cloud: &Cloud) -> String {
    let mut r = format!("table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n  chain forward {{\n    type filter hook forward priority 0; policy drop;\n    ct state established,related accept\n    ct state invalid drop\n");
    let members = |g: &str| -> BTreeSet<Ipv4Addr> {
        cloud
            .enis
            .values()
            .filter(|e| e.groups.iter().any(|x| x == g))
            .flat_map(|e| e.owned_ips().collect::<Vec<_>>())
            .collect()
    };
    let set = |ips: &BTreeSet<Ipv4Addr>| {
        ips.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for e in cloud.enis.values() {
        let Some(a) = &e.attachment else { continue };
        if a.ready_at_ms.is_some() {
            continue;
        }
        let Some(inst) = cloud.instances.get(&a.instance_id) else {
            continue;
        };
        let ifname = fabric_ifname(&inst.host, a.device_index);
        if e.source_dest_check {
            // The ENI's addresses and its whole prefixes.
            let own: Vec<String> = e
                .all_ips()
                .map(|i| i.to_string())
                .chain(e.prefixes.iter().map(|p| p.to_string()))
                .collect();
            r.push_str(&format!("    iifname \"{ifname}\" ip saddr != {{ {} }} counter drop comment \"source/dest check {}\"\n", own.join(", "), e.id));
        }
        // Security groups: one accept per rule, ports included, for
        // traffic to any address of the ENI (pod addresses too).
        let rules: BTreeSet<&IngressRule> = e
            .groups
            .iter()
            .filter_map(|g| cloud.groups.get(g))
            .flat_map(|sg| sg.ingress.iter())
            .collect();
        for rule in rules {
            let from = match &rule.source {
                IngressSource::Group(g) => {
                    let m = members(g);
                    if m.is_empty() {
                        continue;
                    }
                    format!("{{ {} }}", set(&m))
                }
                IngressSource::Cidr(c) => c.to_string(),
            };
            r.push_str(&format!(
                "    oifname \"{ifname}\" ip saddr {from} {}accept comment \"{} ingress {}\"\n",
                match_ports(rule),
                e.id,
                rule.protocol.ec2_name()
            ));
        }
    }
    r.push_str("  }\n}\n");
    r
}

/// The nftables match of a rule's protocol and ports ("" for all traffic).
fn match_ports(rule: &IngressRule) -> String {
    let range = |a: i32, b: i32| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    };
    match rule.protocol {
        Protocol::All => String::new(),
        Protocol::Tcp => format!("tcp dport {} ", range(rule.from_port, rule.to_port)),
        Protocol::Udp => format!("udp dport {} ", range(rule.from_port, rule.to_port)),
        Protocol::Icmp => {
            let mut m = "meta l4proto icmp ".to_string();
            if rule.from_port >= 0 {
                m.push_str(&format!("icmp type {} ", rule.from_port));
                if rule.to_port >= 0 {
                    m.push_str(&format!("icmp code {} ", rule.to_port));
                }
            }
            m
        }
    }
}
