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

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use podwire_netlink::{
    Batch, Link, MacAddr, Neighbour, Netlink, Route, RouteScope, Rule, VethSpec, TABLE_MAIN,
};
use sha1::{Digest, Sha1};

use crate::routing::{host_route as host32, RULE_FROM_POD_PRIORITY, RULE_TO_POD_PRIORITY};
use crate::{DataplaneError, Result};

/// The interface group of every pod's host veth (`ip link set … group`):
/// what podwire's nftables rules match to know a packet comes from a pod,
/// whatever the veth's name (the conflist's `vethPrefix` can change that).
pub const POD_LINK_GROUP: u32 = crate::nft::POD_IFGROUP;

/// The pod's default gateway; nothing owns it, the neighbour entry answers.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Which host interface belongs to one attachment: the names it may have
/// (the pod's usual `eni…` name, then one derived from the container id for
/// when another live attachment of the same pod holds the usual one) and
/// the alias that proves ownership ([`crate::names::owner_alias`]).
#[derive(Debug, Clone, Copy)]
pub struct HostVeth<'a> {
    pub name: &'a str,
    pub fallback: &'a str,
    pub owner: &'a str,
}

impl HostVeth<'_> {
    /// Whether `link` is this attachment's. A link without alias under the
    /// usual name was made by a plugin before owners were recorded: it is
    /// taken as this attachment's, as that plugin did.
    fn owns(&self, link: &Link) -> bool {
        match link.alias.as_deref() {
            Some(a) => a == self.owner,
            None => link.name == self.name,
        }
    }

    /// The attachment's host link, if it has one.
    pub fn find<N: Netlink>(&self, host: &mut N) -> Result<Option<Link>> {
        for name in [self.name, self.fallback] {
            if let Some(l) = host.link_by_name(name)? {
                if self.owns(&l) {
                    return Ok(Some(l));
                }
            }
        }
        Ok(None)
    }

    /// Deletes the attachment's host link (never another's). Ok(false) when
    /// it has none.
    pub fn delete<N: Netlink>(&self, host: &mut N) -> Result<bool> {
        match self.find(host)? {
            Some(l) => match host.delete_link(l.index) {
                Ok(()) => Ok(true),
                Err(e) if e.is_not_found() => Ok(false),
                Err(e) => Err(e.into()),
            },
            None => Ok(false),
        }
    }
}

/// What to build for one pod.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub host_veth: HostVeth<'a>,
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

/// A stable, locally administered unicast MAC for one end of a pod's veth.
/// Choosing it here (rather than letting the kernel pick) saves reading the
/// links back after creating them; collisions would be harmless anyway, as
/// every veth is its own point-to-point segment.
pub fn veth_mac(end: &str, host_veth: &str, ifname: &str) -> MacAddr {
    let d = Sha1::digest(format!("{end}/{host_veth}/{ifname}").as_bytes());
    MacAddr([(d[0] & 0xfe) | 0x02, d[1], d[2], d[3], d[4], d[5]])
}

/// A name no pod interface has, for the moment between creating a veth and
/// naming it as its attachment's (the name is unique per call).
fn temporary_name(owner: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let d = Sha1::digest(format!("{owner}/{}/{nanos}", std::process::id()).as_bytes());
    let hex: String = d.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("pwtmp{hex}")
}

/// Gives the freshly created host end (`index`) its attachment's name and
/// alias. Never touches another attachment's interface: when the usual name
/// belongs to another live attachment the fallback name is used, and a
/// leftover of this same attachment is replaced.
fn claim_name<N: Netlink>(host: &mut N, index: u32, hv: &HostVeth<'_>) -> Result<String> {
    for name in [hv.name, hv.fallback] {
        for _attempt in 0..2 {
            match host.rename_with_alias(index, name, hv.owner, POD_LINK_GROUP) {
                Ok(()) => return Ok(name.to_string()),
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(e.into()),
            }
            match host.link_by_name(name)? {
                // Ours, left by an earlier try of this attachment: replace.
                Some(l) if l.alias.as_deref() == Some(hv.owner) => {
                    host.delete_link(l.index)?;
                }
                // Gone in between: try the name again.
                None => {}
                // Another attachment's (or a pre-ownership one's): keep it.
                Some(_) => break,
            }
        }
    }
    let holder = host
        .link_by_name(hv.fallback)?
        .and_then(|l| l.alias)
        .unwrap_or_else(|| "(no owner recorded)".into());
    Err(DataplaneError::OwnedByOther {
        ifname: format!("{} and {}", hv.name, hv.fallback),
        owner: holder,
        container_id: hv.owner.to_string(),
    })
}

/// Wires a pod. On any failure everything this call created is removed
/// before the error is returned; another attachment's interface is never
/// touched (see [`claim_name`]).
pub fn add_pod<N: Netlink>(host: &mut N, spec: &PodSpec<'_>) -> Result<PodLinks> {
    // Opened once (non-blocking, checked to be on nsfs): the veth's peer is
    // created directly in it and the pod-side handle is opened in it.
    let netns = host.open_netns(spec.netns)?;
    let mut pod = host.handle_in(&netns)?;
    let temp = temporary_name(spec.host_veth.owner);
    let veth = VethSpec {
        name: &temp,
        peer_name: spec.ifname,
        mtu: Some(spec.mtu),
        mac: Some(
            spec.host_mac
                .unwrap_or_else(|| veth_mac("host", spec.host_veth.name, spec.ifname)),
        ),
        peer_mac: Some(veth_mac("pod", spec.host_veth.name, spec.ifname)),
        peer_netns: None,
    };
    match host.add_veth_into(&veth, Some(&netns)) {
        Ok(()) => {}
        Err(e) if e.is_exists() && pod.link_by_name(spec.ifname)?.is_some() => {
            return Err(DataplaneError::IfnameExists {
                ifname: spec.ifname.to_string(),
                netns: spec.netns.display().to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    let created = match host.link(&temp) {
        Ok(l) => l,
        Err(e) => {
            // The veth exists but could not be read back: remove it by its
            // name (unique to this call), or it would hold the pod's
            // ifname and fail every retry.
            let _ = host.delete_link_by_name(&temp);
            return Err(e.into());
        }
    };
    let name = match claim_name(host, created.index, &spec.host_veth) {
        Ok(n) => n,
        Err(e) => {
            let _ = host.delete_link(created.index);
            return Err(e);
        }
    };
    match wire(host, &mut pod, spec, &name, veth.mac.unwrap_or_default()) {
        Ok(links) => Ok(links),
        Err(e) => {
            let _ = host.delete_link(created.index);
            let _ = remove_rules(host, spec.ip, spec.route_table);
            Err(e)
        }
    }
}

fn wire<N: Netlink>(
    host: &mut N,
    pod: &mut N,
    spec: &PodSpec<'_>,
    host_name: &str,
    host_mac: MacAddr,
) -> Result<PodLinks> {
    let host_link = host.link(host_name)?;
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

/// Removes the node side of an attachment: its veth (the peer and the /32
/// route go with it) and its policy rules. Idempotent; leaves any other
/// attachment's interface alone.
pub fn remove_host_side<N: Netlink>(
    host: &mut N,
    host_veth: &HostVeth<'_>,
    ip: Ipv4Addr,
    route_table: u32,
) -> Result<()> {
    host_veth.delete(host)?;
    remove_rules(host, ip, route_table)
}

/// Removes the pod's policy rules (none for pods on the primary ENI).
fn remove_rules<N: Netlink>(host: &mut N, ip: Ipv4Addr, route_table: u32) -> Result<()> {
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
/// already gone is skipped; another attachment's interface is never touched.
pub fn del_pod<N: Netlink>(
    host: &mut N,
    netns: Option<&Path>,
    ifname: &str,
    host_veth: &HostVeth<'_>,
    ip: Ipv4Addr,
    route_table: u32,
) -> Result<()> {
    if !host_veth.delete(host)? {
        // No host end: an interface of ours could only be left in the pod if
        // it was renamed or moved; look there too, when the pod still exists.
        if let Some(ns) = netns.filter(|p| p.exists()) {
            if let Ok(mut pod) = host.open_netns(ns).and_then(|f| host.handle_in(&f)) {
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
pub fn del_pod_by_ip<N: Netlink>(
    host: &mut N,
    netns: Option<&Path>,
    ifname: &str,
    host_veth: &HostVeth<'_>,
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
pub fn check_pod<N: Netlink>(host: &mut N, spec: &PodSpec<'_>) -> Result<()> {
    let mismatch = |m: String| Err(DataplaneError::Mismatch(m));
    let Some(host_link) = spec.host_veth.find(host)? else {
        return mismatch(format!(
            "host veth {} of {} is missing",
            spec.host_veth.name, spec.host_veth.owner
        ));
    };
    let routes = host.routes()?;
    if !routes.iter().any(|r| {
        r.dst == host32(spec.ip) && r.oif == Some(host_link.index) && r.table == TABLE_MAIN
    }) {
        return mismatch(format!(
            "route {} dev {} is missing",
            spec.ip, host_link.name
        ));
    }
    let rules = host.rules()?;
    for rule in pod_rules(spec.ip, spec.route_table) {
        if !rules.contains(&rule) {
            return mismatch(format!("policy rule {rule:?} is missing"));
        }
    }
    let netns = host.open_netns(spec.netns)?;
    let mut pod = host.handle_in(&netns)?;
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
