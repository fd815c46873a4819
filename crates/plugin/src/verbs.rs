//! ADD, DEL, CHECK, STATUS and GC. Both modes wire pods the same way (a
//! routed veth with a /32 and 169.254.1.1 as gateway); they differ in where
//! the address comes from, which the agent hides.

use std::path::Path;

use ipnet::Ipv4Net;
use podwire_cni::config::{Mode, VALID_ATTACHMENTS_KEY};
use podwire_cni::result::{Interface, IpConfig, RouteEntry};
use podwire_cni::{CniError, Code, Command, Invocation, NetConf};
use podwire_dataplane::names::{self, fallback_veth_name, host_veth_name, owner_alias};
use podwire_dataplane::{pod, DataplaneError};
use podwire_netlink::{MacAddr, Netlink};
use podwire_proto::{AddRequest, Allocation, AttachmentKey, Request, Response};

use crate::agent::{self, Agent};
use crate::netns;

const DEFAULT_MTU: u32 = 9001;

/// Host veth prefix per mode: `eni` as the VPC CNI, `pw` in overlay mode.
fn default_veth_prefix(mode: Mode) -> &'static str {
    match mode {
        Mode::Vpc => names::VPC_VETH_PREFIX,
        Mode::Overlay => names::OVERLAY_VETH_PREFIX,
    }
}

/// Overlay mode gives every host veth Calico's `ee:ee:ee:ee:ee:ee`: pods
/// only ever talk to their gateway through it.
fn host_mac(mode: Mode) -> Option<MacAddr> {
    match mode {
        Mode::Vpc => None,
        Mode::Overlay => Some(MacAddr([0xee; 6])),
    }
}

/// Opens the netlink connection of the node's namespace; called only by
/// the verbs that touch the kernel, at the point they do (the real one is
/// `Handle::new`, tests pass the fake kernel's).
pub type OpenHost<'a, N> = &'a dyn Fn() -> podwire_netlink::Result<N>;

pub fn dispatch<N: Netlink>(
    inv: &Invocation,
    conf: &NetConf,
    started: std::time::Instant,
    open_host: OpenHost<'_, N>,
) -> Result<String, CniError> {
    let agent = Agent::new(conf, started);
    match inv.command {
        Command::Add => add(inv, conf, &agent, open_host),
        Command::Del => del(inv, conf, &agent, open_host).map(|()| String::new()),
        Command::Check => check(inv, conf, &agent, open_host).map(|()| String::new()),
        Command::Status => status(&agent).map(|()| String::new()),
        Command::Gc => gc(conf, &agent, open_host).map(|()| String::new()),
        Command::Version => Ok(String::new()),
    }
}

fn key(inv: &Invocation, conf: &NetConf) -> AttachmentKey {
    AttachmentKey {
        network: conf.name.clone(),
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
    }
}

/// An attachment's host veth: its usual name (from the pod's namespace and
/// name, the article's observable), the fallback when another attachment
/// of the pod holds that, and the owner recorded in the link's alias.
struct VethNames {
    name: String,
    fallback: String,
    owner: String,
}

impl VethNames {
    fn host_veth(&self) -> pod::HostVeth<'_> {
        pod::HostVeth {
            name: &self.name,
            fallback: &self.fallback,
            owner: &self.owner,
        }
    }
}

fn veth_for(
    conf: &NetConf,
    ns: Option<&str>,
    name: Option<&str>,
    key: &AttachmentKey,
) -> VethNames {
    let prefix = conf
        .veth_prefix
        .as_deref()
        .unwrap_or(default_veth_prefix(conf.mode));
    VethNames {
        name: host_veth_name(prefix, ns, name, &key.container_id),
        fallback: fallback_veth_name(prefix, &key.container_id, &key.ifname),
        owner: owner_alias(&key.network, &key.container_id, &key.ifname),
    }
}

fn host_handle<N: Netlink>(open_host: OpenHost<'_, N>) -> Result<N, CniError> {
    open_host().map_err(|e| CniError::new(Code::Kernel, format!("netlink: {e}")))
}

fn kernel_error(e: DataplaneError) -> CniError {
    match e {
        DataplaneError::IfnameExists { .. } => CniError::new(Code::AlreadyExists, e.to_string()),
        DataplaneError::Netns { .. } => CniError::new(Code::UnknownContainer, e.to_string()),
        DataplaneError::Mismatch(m) => CniError::new(Code::CheckFailed, m),
        DataplaneError::Netlink(_)
        | DataplaneError::Nft(_)
        | DataplaneError::Conntrack(_)
        | DataplaneError::LinkTimeout { .. }
        | DataplaneError::Prefix(_)
        | DataplaneError::OwnedByOther { .. } => CniError::new(Code::Kernel, e.to_string()),
    }
}

fn add<N: Netlink>(
    inv: &Invocation,
    conf: &NetConf,
    agent: &Agent,
    open_host: OpenHost<'_, N>,
) -> Result<String, CniError> {
    let netns = inv.netns.as_deref().unwrap_or(Path::new(""));
    // Check the sandbox before taking an address, so a bad call changes nothing.
    netns::require(netns)?;
    let mut host = host_handle(open_host)?;
    let req = Request::Add(AddRequest {
        key: key(inv, conf),
        netns: netns.display().to_string(),
        pod_namespace: inv.pod.namespace.clone(),
        pod_name: inv.pod.name.clone(),
    });
    let alloc = match agent.request(&req)? {
        Response::Allocated { allocation } => allocation,
        other => return Err(agent::unexpected(other)),
    };
    let host_veth = veth_for(
        conf,
        inv.pod.namespace.as_deref(),
        inv.pod.name.as_deref(),
        &key(inv, conf),
    );
    // The agent knows the overlay's MTU; an explicit config value wins.
    let mtu = conf.mtu.or(alloc.mtu).unwrap_or(DEFAULT_MTU);
    let spec = pod::PodSpec {
        netns,
        ifname: &inv.ifname,
        host_veth: host_veth.host_veth(),
        ip: alloc.ip,
        mtu,
        route_table: alloc.egress.route_table(),
        host_mac: host_mac(conf.mode),
    };
    let links = match pod::add_pod(&mut host, &spec) {
        Ok(l) => l,
        Err(e) => {
            // Give the address back; the wiring already undid itself.
            let _ = agent.request(&Request::Del {
                key: key(inv, conf),
            });
            return Err(kernel_error(e));
        }
    };
    tracing::info!(ip = %alloc.ip, veth = %links.host.name, table = alloc.egress.route_table(), "pod attached");

    let mut result = conf.prev_result.clone().unwrap_or_default();
    let base = result.interfaces.len();
    result.interfaces.push(Interface {
        name: links.host.name.clone(),
        mac: links.host.mac.map(|m| m.to_string()).unwrap_or_default(),
        mtu: Some(mtu),
        sandbox: String::new(),
    });
    result.interfaces.push(Interface {
        name: links.container.name.clone(),
        mac: links
            .container
            .mac
            .map(|m| m.to_string())
            .unwrap_or_default(),
        mtu: Some(mtu),
        sandbox: netns.display().to_string(),
    });
    result.ips.push(IpConfig {
        address: Ipv4Net::new(alloc.ip, 32).unwrap_or_default(),
        gateway: Some(pod::GATEWAY),
        interface: Some(base + 1),
    });
    result.routes.push(RouteEntry {
        dst: Ipv4Net::default(),
        gw: Some(pod::GATEWAY),
        scope: None,
    });
    Ok(result.to_value(conf.cni_version).to_string())
}

fn lookup(agent: &Agent, key: AttachmentKey) -> Result<Option<Allocation>, CniError> {
    match agent.request(&Request::Get { key })? {
        Response::Found { allocation } => Ok(allocation),
        other => Err(agent::unexpected(other)),
    }
}

fn del<N: Netlink>(
    inv: &Invocation,
    conf: &NetConf,
    agent: &Agent,
    open_host: OpenHost<'_, N>,
) -> Result<(), CniError> {
    // DEL must finish its work when the sandbox is gone or the path is no
    // namespace at all (never open a FIFO): such a path is ignored.
    let netns = inv.netns.as_deref().filter(|p| match netns::probe(p) {
        netns::NetnsPath::Namespace => true,
        other => {
            tracing::info!(path = %p.display(), ?other, "DEL: CNI_NETNS ignored");
            false
        }
    });
    let mut host = host_handle(open_host)?;
    let veth = veth_for(
        conf,
        inv.pod.namespace.as_deref(),
        inv.pod.name.as_deref(),
        &key(inv, conf),
    );
    let veth = veth.host_veth();
    let alloc = match lookup(agent, key(inv, conf)) {
        Ok(a) => a,
        Err(e) => {
            // Agent unreachable: still remove what lives in the kernel, using
            // what the runtime remembers, then ask to be called again so the
            // address is released once the agent is back.
            if let Some(prev) = &conf.prev_result {
                for ip in &prev.ips {
                    let _ =
                        pod::del_pod_by_ip(&mut host, netns, &inv.ifname, &veth, ip.address.addr());
                }
            }
            return Err(e);
        }
    };
    if let Some(a) = &alloc {
        pod::del_pod(
            &mut host,
            netns,
            &inv.ifname,
            &veth,
            a.ip,
            a.egress.route_table(),
        )
        .map_err(kernel_error)?;
        match agent.request(&Request::Del {
            key: key(inv, conf),
        })? {
            Response::Released { .. } => {}
            other => return Err(agent::unexpected(other)),
        }
    } else {
        // Nothing held: a repeated DEL. Make sure no veth of this
        // attachment is left over (another sandbox's is not ours).
        veth.delete(&mut host).map_err(kernel_error)?;
    }
    Ok(())
}

fn check<N: Netlink>(
    inv: &Invocation,
    conf: &NetConf,
    agent: &Agent,
    open_host: OpenHost<'_, N>,
) -> Result<(), CniError> {
    let netns = inv.netns.as_deref().unwrap_or(Path::new(""));
    netns::require(netns)?;
    let alloc = lookup(agent, key(inv, conf))?.ok_or_else(|| {
        CniError::new(
            Code::UnknownContainer,
            format!(
                "podwire holds no attachment for container {} {}",
                inv.container_id, inv.ifname
            ),
        )
    })?;
    if let Some(prev) = &conf.prev_result {
        if !prev.ips.iter().any(|i| i.address.addr() == alloc.ip) {
            return Err(CniError::new(
                Code::CheckFailed,
                format!("prevResult does not list the pod's address {}", alloc.ip),
            ));
        }
    }
    let veth = veth_for(
        conf,
        inv.pod.namespace.as_deref(),
        inv.pod.name.as_deref(),
        &key(inv, conf),
    );
    let mut host = host_handle(open_host)?;
    pod::check_pod(
        &mut host,
        &pod::PodSpec {
            netns,
            ifname: &inv.ifname,
            host_veth: veth.host_veth(),
            ip: alloc.ip,
            mtu: conf.mtu.or(alloc.mtu).unwrap_or(DEFAULT_MTU),
            route_table: alloc.egress.route_table(),
            host_mac: host_mac(conf.mode),
        },
    )
    .map_err(kernel_error)
}

fn status(agent: &Agent) -> Result<(), CniError> {
    match agent.call(&Request::Status) {
        Ok(Response::Status { status }) if status.ready => Ok(()),
        Ok(Response::Status { status }) => {
            Err(CniError::new(Code::PluginNotAvailable, status.message))
        }
        Ok(other) => Err(agent::unexpected(other)),
        Err(e) => Err(CniError::new(
            Code::PluginNotAvailable,
            format!(
                "podwire-agent is not available at {}: {e}",
                agent.socket().display()
            ),
        )),
    }
}

fn gc<N: Netlink>(
    conf: &NetConf,
    agent: &Agent,
    open_host: OpenHost<'_, N>,
) -> Result<(), CniError> {
    // No list is not an empty list: without it GC would release every pod
    // of the network.
    let Some(valid) = conf.valid_attachments.clone() else {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!(
                "GC needs {VALID_ATTACHMENTS_KEY:?} (the attachments still in use; null or [] for none): refusing to release anything without it"
            ),
        ));
    };
    let valid = valid
        .into_iter()
        .map(|a| AttachmentKey {
            network: conf.name.clone(),
            container_id: a.container_id,
            ifname: a.ifname,
        })
        .collect();
    let released = match agent.request(&Request::Gc {
        network: conf.name.clone(),
        valid,
    })? {
        Response::Released { allocations } => allocations,
        other => return Err(agent::unexpected(other)),
    };
    let mut host = host_handle(open_host)?;
    let mut failures = Vec::new();
    for a in released {
        let veth = veth_for(
            conf,
            a.pod_namespace.as_deref(),
            a.pod_name.as_deref(),
            &a.key,
        );
        if let Err(e) =
            pod::remove_host_side(&mut host, &veth.host_veth(), a.ip, a.egress.route_table())
        {
            failures.push(format!("{}: {e}", a.key.container_id));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            Code::Kernel,
            format!("GC could not clean: {}", failures.join("; ")),
        ))
    }
}
