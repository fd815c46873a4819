//! The agent in overlay mode: addresses from /26 blocks of the pod CIDR
//! (claimed through the datastore), a VXLAN device, and routes, neighbours
//! and FDB entries to every other node, converged from the datastore at
//! start-up and on every change it announces.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use podwire_dataplane::overlay::{self, Desired, DeviceSpec, Peer, VXLAN_DEV, VXLAN_OVERHEAD};
use podwire_ipam::block::Holder;
use podwire_ipam::block_store::{BlockIpam, IpamError, PoolConfig};
use podwire_ipam::nodes::{self, NodeRecord};
use podwire_ipam::Handle as IpamHandle;
use podwire_netlink::{sysctl, Handle, MacAddr};
use podwire_proto::{
    AddRequest, Allocation, AttachmentKey, ErrorKind, Request, Response, StatusInfo,
};
use podwire_store::Datastore;

use crate::{AgentConfig, AgentError, Backend, OverlayConfig};

const ROOT: &str = "/podwire/";

pub struct OverlayAgent {
    node: String,
    store: Arc<dyn Datastore>,
    ipam: BlockIpam,
    cfg: OverlayConfig,
    mtu: u32,
    /// Held so the handle's netlink socket is not re-opened per change.
    nl: std::sync::Mutex<Handle>,
    /// The datastore's nodes and blocks as last seen, and what was applied.
    model: std::sync::Mutex<Model>,
}

/// A full resync (read everything, diff against the kernel) this often.
const RESYNC: Duration = Duration::from_secs(30);

/// The datastore's view this agent follows.
#[derive(Debug, Default)]
struct Model {
    nodes: BTreeMap<String, NodeRecord>,
    blocks: BTreeMap<String, podwire_ipam::block::Block>,
    applied: Desired,
}

impl Model {
    fn update(&mut self, key: &str, value: Option<&[u8]>) {
        if key.starts_with(nodes::NODES) {
            match value.and_then(|v| serde_json::from_slice::<NodeRecord>(v).ok()) {
                Some(n) => {
                    self.nodes.insert(key.to_string(), n);
                }
                None => {
                    self.nodes.remove(key);
                }
            }
        } else if key.starts_with("/podwire/ipam/blocks/") {
            match value.and_then(|v| serde_json::from_slice(v).ok()) {
                Some(b) => {
                    self.blocks.insert(key.to_string(), b);
                }
                None => {
                    self.blocks.remove(key);
                }
            }
        }
    }

    /// What `me`'s routing must be.
    fn desired(&self, me: &str) -> Desired {
        let by_name: BTreeMap<&str, &NodeRecord> =
            self.nodes.values().map(|n| (n.name.as_str(), n)).collect();
        let mut d = Desired::default();
        for n in by_name.values().filter(|n| n.name != me) {
            if let Ok(mac) = n.vtep_mac.parse::<MacAddr>() {
                d.peers.insert(Peer {
                    tunnel_ip: n.tunnel_ip,
                    vtep_mac: mac,
                    underlay_ip: n.underlay_ip,
                });
            }
        }
        let tunnel_of = |name: &str| by_name.get(name).map(|n| n.tunnel_ip);
        for b in self.blocks.values() {
            match b.affinity.as_deref() {
                Some(n) if n == me => {
                    d.blackholes.insert(b.cidr);
                }
                Some(n) => {
                    if let Some(t) = tunnel_of(n) {
                        d.routes.insert(b.cidr, t);
                    }
                }
                None => {}
            }
            // Borrowed addresses live on another node than the block's.
            for (ord, h) in &b.allocations {
                if Some(h.node.as_str()) != b.affinity.as_deref() && h.node != me {
                    if let Some(t) = tunnel_of(&h.node) {
                        d.routes
                            .insert(Ipv4Net::new(b.addr(*ord), 32).unwrap_or_default(), t);
                    }
                }
            }
        }
        d
    }
}

impl std::fmt::Debug for OverlayAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayAgent")
            .field("node", &self.node)
            .field("mtu", &self.mtu)
            .finish_non_exhaustive()
    }
}

/// The handle an attachment's address is recorded under.
fn handle_of(key: &AttachmentKey) -> IpamHandle {
    IpamHandle::attachment(&key.network, &key.container_id, &key.ifname)
}

fn ipam_error(e: IpamError) -> Response {
    let kind = match &e {
        IpamError::Exhausted { .. } => ErrorKind::Exhausted,
        IpamError::Store(_) | IpamError::Contention => ErrorKind::TryAgain,
        _ => ErrorKind::Internal,
    };
    Response::Error {
        kind,
        message: e.to_string(),
    }
}

fn snat_rules(pool: Ipv4Net) -> String {
    format!(
        "table ip podwire {{}}\ndelete table ip podwire\ntable ip podwire {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {pool} ip daddr != {pool} oifname != \"{VXLAN_DEV}\" masquerade comment \"pods leave the pod network as the node\"\n  }}\n}}\n"
    )
}

impl OverlayAgent {
    pub fn start(config: &AgentConfig, cfg: &OverlayConfig) -> Result<OverlayAgent, AgentError> {
        let node = config.node_name.clone();
        let store: Arc<dyn Datastore> = Arc::from(podwire_store::open(&cfg.datastore)?);
        let ipam = BlockIpam::open(
            Arc::clone(&store),
            PoolConfig {
                pool: cfg.pool,
                block_prefix: cfg.block_prefix,
                strict_affinity: cfg.strict_affinity,
            },
        )?;
        let mut nl = Handle::new()?;
        let underlay = nl.link(&cfg.underlay_dev)?;
        let underlay_ip = nl
            .addresses(Some(underlay.index))?
            .first()
            .map(|(_, a)| a.addr())
            .ok_or_else(|| {
                AgentError::Config(format!("{} has no IPv4 address", cfg.underlay_dev))
            })?;
        let mtu = underlay.mtu.saturating_sub(VXLAN_OVERHEAD);
        // The tunnel address: the first address of the node's first block.
        let tunnel_handle = IpamHandle::tunnel(&node);
        let tunnel_ip = match ipam.find(&tunnel_handle)? {
            Some((ip, _)) => ip,
            None => ipam.allocate(&node, tunnel_handle)?.ip,
        };
        sysctl::write("net/ipv4/ip_forward", "1")?;
        let vxlan = overlay::ensure_device(
            &mut nl,
            &DeviceSpec {
                vni: cfg.vni,
                port: cfg.port,
                underlay_ip,
                underlay_index: underlay.index,
                mtu,
                tunnel_ip,
            },
        )?;
        let vtep_mac = vxlan
            .mac
            .ok_or_else(|| AgentError::Config("VXLAN device has no MAC".into()))?;
        nodes::register(
            store.as_ref(),
            &NodeRecord {
                name: node.clone(),
                underlay_ip,
                vtep_mac: vtep_mac.to_string(),
                tunnel_ip,
            },
        )?;
        podwire_dataplane::nft::apply(&snat_rules(cfg.pool))?;
        tracing::info!(%node, %underlay_ip, %tunnel_ip, mtu, "overlay node registered");
        let agent = OverlayAgent {
            node,
            store,
            ipam,
            cfg: cfg.clone(),
            mtu,
            nl: std::sync::Mutex::new(nl),
            model: std::sync::Mutex::new(Model::default()),
        };
        agent.converge_once()?;
        Ok(agent)
    }

    /// Reads everything and makes the kernel match (start-up, resync).
    fn converge_once(&self) -> Result<i64, AgentError> {
        let started = Instant::now();
        let snap = self.store.list(ROOT)?;
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        model.nodes.clear();
        model.blocks.clear();
        for e in &snap.entries {
            model.update(&e.key, Some(&e.value));
        }
        let d = model.desired(&self.node);
        let mut nl = self.nl.lock().unwrap_or_else(|p| p.into_inner());
        let vxlan = nl.link(VXLAN_DEV)?;
        let c = overlay::converge(&mut nl, &vxlan, &d)?;
        if c.added + c.removed > 0 {
            tracing::info!(
                added = c.added,
                removed = c.removed,
                routes = d.routes.len(),
                peers = d.peers.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "converged"
            );
        }
        model.applied = d;
        Ok(snap.revision)
    }

    /// Applies one batch of datastore changes to the model and the kernel.
    fn apply_events(&self, events: &[podwire_store::Event]) -> Result<(), AgentError> {
        let started = Instant::now();
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        for ev in events {
            match ev {
                podwire_store::Event::Put(e) => model.update(&e.key, Some(&e.value)),
                podwire_store::Event::Delete { key, .. } => model.update(key, None),
                podwire_store::Event::Progress(_) => {}
            }
        }
        let d = model.desired(&self.node);
        if d == model.applied {
            return Ok(());
        }
        let mut nl = self.nl.lock().unwrap_or_else(|p| p.into_inner());
        let vxlan = nl.link(VXLAN_DEV)?;
        let c = overlay::apply_delta(&mut nl, &vxlan, &model.applied, &d)?;
        model.applied = d;
        tracing::info!(
            added = c.added,
            removed = c.removed,
            took_us = started.elapsed().as_micros() as u64,
            "applied change"
        );
        Ok(())
    }

    /// Converges, then follows the datastore's changes, resyncing fully now
    /// and then and giving empty blocks back. Never returns.
    pub fn converge_forever(&self) {
        let mut last_gc = Instant::now();
        loop {
            let rev = match self.converge_once() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("converge: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let rx = match self.store.watch(ROOT, rev) {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!("watch: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let resync_at = Instant::now() + RESYNC;
            loop {
                match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(Ok(ev)) => {
                        // Take whatever else arrived with it, apply once.
                        let mut batch = vec![ev];
                        while let Ok(Ok(more)) = rx.try_recv() {
                            batch.push(more);
                        }
                        if let Err(e) = self.apply_events(&batch) {
                            tracing::warn!("applying changes: {e}");
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("watch: {e}");
                        break;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if last_gc.elapsed() > Duration::from_secs(60) {
                    last_gc = Instant::now();
                    match self
                        .ipam
                        .release_empty_blocks(&self.node, self.cfg.block_grace.as_secs())
                    {
                        Ok(v) if !v.is_empty() => {
                            tracing::info!(blocks = ?v, "released empty blocks")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("releasing empty blocks: {e}"),
                    }
                }
                if Instant::now() >= resync_at {
                    break;
                }
            }
        }
    }

    fn allocation(&self, key: &AttachmentKey, ip: Ipv4Addr, h: &Holder) -> Allocation {
        Allocation {
            key: key.clone(),
            ip,
            eni_id: String::new(),
            device_number: 0,
            route_table: podwire_netlink::TABLE_MAIN,
            pod_namespace: h.attrs.get("pod_namespace").cloned(),
            pod_name: h.attrs.get("pod_name").cloned(),
            mtu: Some(self.mtu),
        }
    }

    fn add(&self, req: AddRequest) -> Response {
        let handle = handle_of(&req.key);
        match self.ipam.find(&handle) {
            Ok(Some((ip, _))) => {
                return Response::Error {
                    kind: ErrorKind::AlreadyExists,
                    message: format!(
                        "container {} already has {ip} on {} (DEL it first)",
                        req.key.container_id, req.key.ifname
                    ),
                }
            }
            Ok(None) => {}
            Err(e) => return ipam_error(e),
        }
        let mut holder = Holder::new(handle.clone(), &self.node);
        holder.attrs.insert("ifname".into(), req.key.ifname.clone());
        if let Some(ns) = &req.pod_namespace {
            holder.attrs.insert("pod_namespace".into(), ns.clone());
        }
        if let Some(n) = &req.pod_name {
            holder.attrs.insert("pod_name".into(), n.clone());
        }
        match self.ipam.allocate_for(&holder) {
            Ok(a) => {
                tracing::info!(ip = %a.ip, block = %a.block, borrowed = a.borrowed, %handle, "address assigned");
                Response::Allocated {
                    allocation: self.allocation(&req.key, a.ip, &holder),
                }
            }
            Err(e) => ipam_error(e),
        }
    }

    fn get(&self, key: &AttachmentKey) -> Response {
        match self.ipam.find(&handle_of(key)) {
            Ok(Some((ip, b))) => {
                let holder = b
                    .find(&handle_of(key))
                    .map(|(_, h)| h.clone())
                    .unwrap_or_else(|| Holder::new(handle_of(key), &self.node));
                Response::Found {
                    allocation: Some(self.allocation(key, ip, &holder)),
                }
            }
            Ok(None) => Response::Found { allocation: None },
            Err(e) => ipam_error(e),
        }
    }

    fn del(&self, key: &AttachmentKey) -> Response {
        let found = match self.get(key) {
            Response::Found { allocation } => allocation,
            other => return other,
        };
        match self.ipam.release(&handle_of(key)) {
            Ok(_) => Response::Released {
                allocations: found.into_iter().collect(),
            },
            Err(e) => ipam_error(e),
        }
    }

    fn gc(&self, network: &str, valid: &[AttachmentKey]) -> Response {
        let keep: Vec<IpamHandle> = valid.iter().map(handle_of).collect();
        // Exactly this network's attachments on this node (never `pw.x`'s
        // for `pw`): the ipam answers from its handle index.
        let held = match self.ipam.allocations_on(&self.node, network) {
            Ok(v) => v,
            Err(e) => return ipam_error(e),
        };
        let mut released = Vec::new();
        for a in held {
            let IpamHandle::Attachment {
                network,
                container_id,
                ifname,
            } = &a.holder.handle
            else {
                continue;
            };
            if keep.contains(&a.holder.handle) {
                continue;
            }
            let key = AttachmentKey {
                network: network.clone(),
                container_id: container_id.clone(),
                ifname: ifname.clone(),
            };
            if let Err(e) = self.ipam.release(&a.holder.handle) {
                return ipam_error(e);
            }
            released.push(self.allocation(&key, a.ip, &a.holder));
        }
        Response::Released {
            allocations: released,
        }
    }

    fn status(&self) -> Response {
        let (ready, message) = match self.store.get(&nodes::node_key(&self.node)) {
            Ok(_) => (true, format!("datastore reachable; pod MTU {}", self.mtu)),
            Err(e) => (false, e.to_string()),
        };
        // Addresses in this node's own blocks (more blocks can be claimed).
        let (free, assigned) = self
            .ipam
            .blocks()
            .map(|bs| {
                bs.iter()
                    .filter(|(b, _)| b.affinity.as_deref() == Some(self.node.as_str()))
                    .fold((0usize, 0usize), |(f, a), (b, _)| {
                        (
                            f + b.free() as usize,
                            a + b
                                .allocations
                                .values()
                                .filter(|h| !matches!(h.handle, IpamHandle::Tunnel { .. }))
                                .count(),
                        )
                    })
            })
            .unwrap_or((0, 0));
        Response::Status {
            status: StatusInfo {
                node: self.node.clone(),
                ready,
                free_ips: free,
                assigned_ips: assigned,
                message,
            },
        }
    }
}

impl Backend for OverlayAgent {
    fn handle(&self, req: Request) -> Response {
        match req {
            Request::Add(a) => self.add(a),
            Request::Del { key } => self.del(&key),
            Request::Get { key } => self.get(&key),
            Request::Status => self.status(),
            Request::Gc { network, valid } => self.gc(&network, &valid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_ipam::block::Block;

    fn put<T: serde::Serialize>(m: &mut Model, key: &str, v: &T) {
        m.update(key, Some(&serde_json::to_vec(v).expect("json")));
    }

    #[test]
    fn desired_routes_blocks_borrowed_addresses_and_peers() {
        let mut m = Model::default();
        for (name, ip, tun) in [
            ("n1", "10.0.0.1", "172.16.0.0"),
            ("n2", "10.0.0.2", "172.16.0.64"),
            ("n3", "10.0.0.3", "172.16.0.128"),
        ] {
            let rec = NodeRecord {
                name: name.into(),
                underlay_ip: ip.parse().expect("ip"),
                vtep_mac: format!("02:00:00:00:00:0{}", &name[1..]),
                tunnel_ip: tun.parse().expect("ip"),
            };
            put(&mut m, &nodes::node_key(name), &rec);
        }
        let mut b1 = Block::new("172.16.0.0/26".parse().expect("cidr"), "n1");
        b1.assign(&Holder::new(IpamHandle::tunnel("n1"), "n1"));
        // n3 borrowed an address from n1's block.
        let borrowed = b1
            .assign(&Holder::new(
                IpamHandle::attachment("pw", "x", "eth0"),
                "n3",
            ))
            .expect("borrow");
        let b2 = Block::new("172.16.0.64/26".parse().expect("cidr"), "n2");
        put(&mut m, "/podwire/ipam/blocks/a", &b1);
        put(&mut m, "/podwire/ipam/blocks/b", &b2);

        let d = m.desired("n2");
        assert_eq!(
            d.blackholes
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>(),
            vec!["172.16.0.64/26"]
        );
        assert_eq!(
            d.routes.get(&"172.16.0.0/26".parse().expect("cidr")),
            Some(&"172.16.0.0".parse().expect("ip"))
        );
        // The borrowed address goes to its holder, not to the block's node.
        assert_eq!(
            d.routes.get(&Ipv4Net::new(borrowed, 32).expect("net")),
            Some(&"172.16.0.128".parse().expect("ip"))
        );
        assert_eq!(d.peers.len(), 2, "every other node, not itself");
        // On the holder itself the borrowed /32 is local (the plugin's route).
        assert!(!m
            .desired("n3")
            .routes
            .contains_key(&Ipv4Net::new(borrowed, 32).expect("net")));
        // A node that leaves takes its routes and peer entry with it.
        m.update(&nodes::node_key("n1"), None);
        let d = m.desired("n2");
        assert!(!d
            .routes
            .contains_key(&"172.16.0.0/26".parse().expect("cidr")));
        assert_eq!(d.peers.len(), 1);
    }
}
