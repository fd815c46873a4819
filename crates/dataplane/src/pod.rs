//! A pod's attachment, in both modes: a routed veth. In vpc mode the
//! address is a secondary IP of one of the node's ENIs; in overlay mode it
//! comes from the node's block of the pod CIDR. The wiring is the same.
//!
//! Pod side: `<ip>/32` on the interface, `169.254.1.1 dev eth0 scope link`,
//! `default via 169.254.1.1`, and a permanent neighbour entry for
//! 169.254.1.1 pointing at the host veth's MAC (no proxy ARP, nothing owns
//! that address). Node side: the `eni…` veth with no address, `<ip> dev
//! eni… scope link` in the main table and, when the address lives on a
//! secondary ENI, `from <ip> lookup <ENI table>` — the VPC drops packets whose
//! source is not an address of the ENI they leave from.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::Ipv4Net;
use podwire_netlink::{
    Batch, Handle, Link, MacAddr, Neighbour, Route, RouteScope, Rule, VethSpec, TABLE_MAIN,
};
use sha1::{Digest, Sha1};

use crate::routing::{host_route as host32, RULE_FROM_POD_PRIORITY, RULE_TO_POD_PRIORITY};
use crate::{DataplaneError, Result};

/// The pod's default gateway; nothing owns it, the neighbour entry answers.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// What to build for one pod.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub host_veth: &'a str,
    pub ip: Ipv4Addr,
    pub mtu: u32,
    pub route_table: u32,
    /// The host end's MAC; None = a stable one derived from the names.
    /// (Overlay mode uses `ee:ee:ee:ee:ee:ee`, as Calico does.)
    pub host_mac: Option<MacAddr>,
}

/// What was built: both ends of the veth.
#[derive(Debug, Clone)]
pub struct PodLinks {
    pub host: Link,
    pub container: Link,
}

fn pod_rules(ip: Ipv4Addr, route_table: u32) -> Vec<Rule> {
    if route_table == TABLE_MAIN {
        return Vec::new();
    }
    vec![
        Rule {
            priority: RULE_TO_POD_PRIORITY,
            src: None,
            dst: Some(host32(ip)),
            table: TABLE_MAIN,
        },
        Rule {
            priority: RULE_FROM_POD_PRIORITY,
            src: Some(host32(ip)),
            dst: None,
            table: route_table,
        },
    ]
}

/// Non-blocking and checked on the open file (see
/// [`podwire_netlink::netns::open_netns`]).
fn open_netns(path: &Path) -> Result<File> {
    Ok(podwire_netlink::netns::open_netns(path)?)
}

/// A stable, locally administered unicast MAC for one end of a pod's veth.
/// Choosing it here (rather than letting the kernel pick) saves reading the
/// links back after creating them; collisions would be harmless anyway, as
/// every veth is its own point-to-point segment.
pub fn veth_mac(end: &str, host_veth: &str, ifname: &str) -> MacAddr {
    let d = Sha1::digest(format!("{end}/{host_veth}/{ifname}").as_bytes());
    MacAddr([(d[0] & 0xfe) | 0x02, d[1], d[2], d[3], d[4], d[5]])
}

/// Wires a pod. On any failure everything this call created is removed
/// before the error is returned.
pub fn add_pod(host: &mut Handle, spec: &PodSpec<'_>) -> Result<PodLinks> {
    let netns_file = open_netns(spec.netns)?;
    let mut pod = Handle::in_netns(spec.netns)?;
    let veth = VethSpec {
        name: spec.host_veth,
        peer_name: spec.ifname,
        mtu: Some(spec.mtu),
        mac: Some(
            spec.host_mac
                .unwrap_or_else(|| veth_mac("host", spec.host_veth, spec.ifname)),
        ),
        peer_mac: Some(veth_mac("pod", spec.host_veth, spec.ifname)),
        peer_netns: Some(netns_file.as_fd()),
    };
    match host.add_veth(&veth) {
        Ok(()) => {}
        Err(e) if e.is_exists() => {
            // Which name is taken? An interface of that name in the pod is
            // the caller's error; a host veth of the same name is left from
            // an earlier sandbox of the same pod (names derive from
            // namespace/name) and is replaced.
            if pod.link_by_name(spec.ifname)?.is_some() {
                return Err(DataplaneError::IfnameExists {
                    ifname: spec.ifname.to_string(),
                    netns: spec.netns.display().to_string(),
                });
            }
            host.delete_link_by_name(spec.host_veth)?;
            host.add_veth(&veth)?;
        }
        Err(e) => return Err(e.into()),
    }
    match wire(host, &mut pod, spec, &veth) {
        Ok(links) => Ok(links),
        Err(e) => {
            let _ = remove_host_side(host, spec.host_veth, spec.ip, spec.route_table);
            Err(e)
        }
    }
}

fn wire(
    host: &mut Handle,
    pod: &mut Handle,
    spec: &PodSpec<'_>,
    veth: &VethSpec<'_>,
) -> Result<PodLinks> {
    let host_link = host.link(spec.host_veth)?;
    let host_mac = veth.mac.unwrap_or_default();
    let cont = pod.link(spec.ifname)?;
    // One system call per namespace for the whole configuration.
    pod.commit(
        Batch::new()
            .add_address(cont.index, host32(spec.ip))
            .set_up(cont.index)
            .add_route(
                &Route::new(host32(GATEWAY))
                    .dev(cont.index)
                    .scope(RouteScope::Link),
            )
            .add_route(&Route::new(Ipv4Net::default()).via(GATEWAY).dev(cont.index))
            .replace_neighbour(&Neighbour {
                ifindex: cont.index,
                ip: GATEWAY,
                mac: host_mac,
            }),
    )?;
    host.commit(
        Batch::new().set_up(host_link.index).add_route(
            &Route::new(host32(spec.ip))
                .dev(host_link.index)
                .scope(RouteScope::Link),
        ),
    )?;
    for rule in pod_rules(spec.ip, spec.route_table) {
        match host.add_rule(&rule) {
            Err(e) if !e.is_exists() => return Err(e.into()),
            _ => {}
        }
    }
    Ok(PodLinks {
        host: host_link,
        container: cont,
    })
}

/// Removes the node side of a pod: the veth (its peer and the /32 route go
/// with it) and the policy rules. Idempotent.
pub fn remove_host_side(
    host: &mut Handle,
    host_veth: &str,
    ip: Ipv4Addr,
    route_table: u32,
) -> Result<()> {
    host.delete_link_by_name(host_veth)?;
    remove_rules(host, ip, route_table)
}

/// Removes the pod's policy rules (none for pods on the primary ENI).
fn remove_rules(host: &mut Handle, ip: Ipv4Addr, route_table: u32) -> Result<()> {
    for rule in pod_rules(ip, route_table) {
        match host.delete_rule(&rule) {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Removes a pod: its veth (deleting the host end takes the container end
/// and the /32 route with it) and the node side. Idempotent: whatever is
/// already gone is skipped.
pub fn del_pod(
    host: &mut Handle,
    netns: Option<&Path>,
    ifname: &str,
    host_veth: &str,
    ip: Ipv4Addr,
    route_table: u32,
) -> Result<()> {
    if !host.delete_link_by_name(host_veth)? {
        // No host end: an interface of ours could only be left in the pod if
        // it was renamed or moved; look there too, when the pod still exists.
        if let Some(ns) = netns.filter(|p| p.exists()) {
            if let Ok(mut pod) = Handle::in_netns(ns) {
                if pod
                    .link_by_name(ifname)?
                    .is_some_and(|l| l.kind.as_deref() == Some("veth"))
                {
                    pod.delete_link_by_name(ifname)?;
                }
            }
        }
    }
    remove_rules(host, ip, route_table)
}

/// Removes a pod when only its address is known (the agent is unreachable
/// and the runtime's prevResult is all there is): the veth as [`del_pod`]
/// does, and whichever of this module's rules name the address, whatever
/// table they point to.
pub fn del_pod_by_ip(
    host: &mut Handle,
    netns: Option<&Path>,
    ifname: &str,
    host_veth: &str,
    ip: Ipv4Addr,
) -> Result<()> {
    del_pod(host, netns, ifname, host_veth, ip, TABLE_MAIN)?;
    let ours = |r: &Rule| {
        (r.priority == RULE_TO_POD_PRIORITY && r.dst == Some(host32(ip)) && r.src.is_none())
            || (r.priority == RULE_FROM_POD_PRIORITY
                && r.src == Some(host32(ip))
                && r.dst.is_none())
    };
    for rule in host.rules()?.into_iter().filter(ours) {
        match host.delete_rule(&rule) {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Verifies that a pod still looks as ADD left it.
pub fn check_pod(host: &mut Handle, spec: &PodSpec<'_>) -> Result<()> {
    let mismatch = |m: String| Err(DataplaneError::Mismatch(m));
    let Some(host_link) = host.link_by_name(spec.host_veth)? else {
        return mismatch(format!("host veth {} is missing", spec.host_veth));
    };
    let routes = host.routes()?;
    if !routes.iter().any(|r| {
        r.dst == host32(spec.ip) && r.oif == Some(host_link.index) && r.table == TABLE_MAIN
    }) {
        return mismatch(format!(
            "route {} dev {} is missing",
            spec.ip, spec.host_veth
        ));
    }
    let rules = host.rules()?;
    for rule in pod_rules(spec.ip, spec.route_table) {
        if !rules.contains(&rule) {
            return mismatch(format!("policy rule {rule:?} is missing"));
        }
    }
    let mut pod = Handle::in_netns(spec.netns)?;
    let Some(cont) = pod.link_by_name(spec.ifname)? else {
        return mismatch(format!(
            "{} is missing in {}",
            spec.ifname,
            spec.netns.display()
        ));
    };
    if !pod
        .addresses(Some(cont.index))?
        .iter()
        .any(|(_, a)| *a == host32(spec.ip))
    {
        return mismatch(format!("{} lacks {}/32", spec.ifname, spec.ip));
    }
    if !pod
        .routes()?
        .iter()
        .any(|r| r.dst == Ipv4Net::default() && r.gateway == Some(GATEWAY))
    {
        return mismatch("default route via 169.254.1.1 is missing in the pod".into());
    }
    Ok(())
}
