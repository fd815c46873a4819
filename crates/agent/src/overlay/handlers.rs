//! overlay mode's answers to the plugin: addresses come from the node's
//! blocks through the block IPAM (which records every one under the
//! attachment's handle), DEL and GC release exactly those handles.

use std::net::Ipv4Addr;

use podwire_ipam::block::Holder;
use podwire_ipam::block_store::IpamError;
use podwire_ipam::nodes;
use podwire_ipam::Handle;
use podwire_proto::{
    AddRequest, Allocation, AttachmentKey, Egress, ErrorKind, Response, StatusInfo,
};

use super::OverlayAgent;

/// The handle an attachment's address is recorded under: the attachment
/// itself, field by field (names and ids may contain dots).
pub(super) fn handle_of(key: &AttachmentKey) -> Handle {
    Handle::attachment(&key.network, &key.container_id, &key.ifname)
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

impl OverlayAgent {
    fn allocation(&self, key: &AttachmentKey, ip: Ipv4Addr, h: &Holder) -> Allocation {
        Allocation {
            key: key.clone(),
            ip,
            egress: Egress::Main,
            pod_namespace: h.attrs.get("pod_namespace").cloned(),
            pod_name: h.attrs.get("pod_name").cloned(),
            mtu: Some(self.mtu),
        }
    }

    pub(super) fn add(&self, req: AddRequest) -> Response {
        let handle = handle_of(&req.key);
        match self.metrics.datastore("find", || self.ipam.find(&handle)) {
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
        match self
            .metrics
            .datastore("allocate", || self.ipam.allocate_for(&holder))
        {
            Ok(a) => {
                let allocation = self.allocation(&req.key, a.ip, &holder);
                // Recorded locally before the plugin hears of it; a record
                // that cannot be written undoes the allocation.
                if let Err(e) = self.record.add(&allocation) {
                    let _ = self
                        .metrics
                        .datastore("release", || self.ipam.release(&handle));
                    return Response::Error {
                        kind: ErrorKind::Internal,
                        message: e.to_string(),
                    };
                }
                tracing::info!(ip = %a.ip, block = %a.block, borrowed = a.borrowed, %handle, "address assigned");
                Response::Allocated { allocation }
            }
            Err(e) => {
                if matches!(e, IpamError::Exhausted { .. }) {
                    self.metrics.no_address("exhausted");
                }
                ipam_error(e)
            }
        }
    }

    pub(super) fn get(&self, key: &AttachmentKey) -> Response {
        match self
            .metrics
            .datastore("find", || self.ipam.find(&handle_of(key)))
        {
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

    pub(super) fn del(&self, key: &AttachmentKey) -> Response {
        let found = match self.get(key) {
            Response::Found { allocation } => allocation,
            other => return other,
        };
        // The local record first: it never names what the store does not hold.
        if let Err(e) = self.record.remove(key) {
            return Response::Error {
                kind: ErrorKind::Internal,
                message: e.to_string(),
            };
        }
        // Before the address is free again: no later pod inherits its flows.
        crate::forget_flows(found.as_ref().map(|a| a.ip));
        match self
            .metrics
            .datastore("release", || self.ipam.release(&handle_of(key)))
        {
            Ok(_) => Response::Released {
                allocations: found.into_iter().collect(),
            },
            Err(e) => ipam_error(e),
        }
    }

    pub(super) fn gc(&self, network: &str, valid: &[AttachmentKey]) -> Response {
        let keep: Vec<Handle> = valid.iter().map(handle_of).collect();
        // Exactly this network's attachments on this node (never `pw.x`'s
        // for `pw`): the ipam answers from its handle index.
        let held = match self.metrics.datastore("list_allocations", || {
            self.ipam.allocations_on(&self.node, network)
        }) {
            Ok(v) => v,
            Err(e) => return ipam_error(e),
        };
        let mut released = Vec::new();
        for a in held {
            let Handle::Attachment {
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
            if let Err(e) = self.record.remove(&key) {
                return Response::Error {
                    kind: ErrorKind::Internal,
                    message: e.to_string(),
                };
            }
            crate::forget_flows([a.ip]);
            if let Err(e) = self
                .metrics
                .datastore("release", || self.ipam.release(&a.holder.handle))
            {
                return ipam_error(e);
            }
            released.push(self.allocation(&key, a.ip, &a.holder));
        }
        Response::Released {
            allocations: released,
        }
    }

    pub(super) fn status(&self) -> Response {
        let (ready, message) = match self
            .metrics
            .datastore("get", || self.store.get(&nodes::node_key(&self.node)))
        {
            Ok(_) => (true, format!("datastore reachable; pod MTU {}", self.mtu)),
            Err(e) => (false, e.to_string()),
        };
        // Addresses in this node's own blocks (more blocks can be claimed).
        let (free, assigned) = self
            .metrics
            .datastore("list_blocks", || self.ipam.blocks())
            .map(|bs| {
                bs.iter()
                    .filter(|(b, _)| b.affinity.as_deref() == Some(self.node.as_str()))
                    .fold((0usize, 0usize), |(f, a), (b, _)| {
                        (
                            f + b.free() as usize,
                            a + b
                                .allocations
                                .values()
                                .filter(|h| !matches!(h.handle, Handle::Tunnel { .. }))
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
