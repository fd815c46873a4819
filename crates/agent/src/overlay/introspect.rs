//! overlay mode's view of the node for `/v1/state`, `/healthz` and the
//! gauges: the blocks this node holds addresses in (from the model the
//! watch keeps, not a datastore read), with each held address's handle.
//! Readiness is the STATUS answer's: one read of this node's record.

use podwire_ipam::Handle;

use crate::introspect::{AddressState, BlockState, Counts, NodeState};

use super::model::Model;
use super::OverlayAgent;

/// The blocks of `me` in `model`: affine to it, or lending it addresses.
pub(super) fn blocks_of(model: &Model, me: &str) -> Vec<BlockState> {
    model
        .blocks
        .values()
        .filter(|b| {
            b.affinity.as_deref() == Some(me) || b.allocations.values().any(|h| h.node == me)
        })
        .map(|b| {
            let mine: Vec<AddressState> = b
                .allocations
                .iter()
                .filter(|(_, h)| h.node == me)
                .map(|(ord, h)| AddressState {
                    ip: b.addr(*ord),
                    state: "assigned",
                    holder: Some(h.handle.to_string()),
                })
                .collect();
            let held = b.allocations.len();
            let free = usize::try_from(b.free()).unwrap_or(usize::MAX);
            BlockState {
                cidr: b.cidr.to_string(),
                affinity: b.affinity.clone(),
                counts: Counts {
                    total: held.saturating_add(free),
                    assigned: held,
                    free,
                    cooling: 0,
                },
                addresses: mine,
            }
        })
        .collect()
}

impl OverlayAgent {
    pub(super) fn introspect(&self) -> NodeState {
        let (ready, message) = match self.status() {
            podwire_proto::Response::Status { status } => (status.ready, status.message),
            _ => (false, "no status".into()),
        };
        let model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let blocks = blocks_of(&model, &self.node);
        let own = |b: &&BlockState| b.affinity.as_deref() == Some(self.node.as_str());
        let free_ips = blocks.iter().filter(own).map(|b| b.counts.free).sum();
        // Pods' addresses only (the tunnel address is the node's own).
        let tunnel = Handle::tunnel(&self.node).to_string();
        let assigned_ips = blocks
            .iter()
            .flat_map(|b| &b.addresses)
            .filter(|a| a.holder.as_deref() != Some(tunnel.as_str()))
            .count();
        NodeState {
            node: self.node.clone(),
            mode: "overlay".into(),
            ready,
            message,
            free_ips,
            assigned_ips,
            eni_limit: None,
            enis: Vec::new(),
            blocks,
            targets: None,
            last_plan: None,
            capacity: None,
            peers: Some(model.applied.peers.len()),
            last_errors: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_ipam::block::{Block, Holder};

    #[test]
    fn blocks_show_this_nodes_addresses_with_their_handles() {
        let mut m = Model::default();
        let mut own = Block::new("172.16.0.0/30".parse().expect("cidr"), "pwt-a");
        let tunnel = Holder::new(Handle::tunnel("pwt-a"), "pwt-a");
        let pod = Holder::new(Handle::attachment("pw", "c1", "eth0"), "pwt-a");
        own.assign(&tunnel).expect("tunnel");
        own.assign(&pod).expect("pod");
        let mut other = Block::new("172.16.0.4/30".parse().expect("cidr"), "pwt-b");
        other
            .assign(&Holder::new(
                Handle::attachment("pw", "c9", "eth0"),
                "pwt-b",
            ))
            .expect("b's pod");
        let lent = Holder::new(Handle::attachment("pw", "c2", "eth0"), "pwt-a");
        other.assign(&lent).expect("borrowed");
        let unrelated = Block::new("172.16.0.8/30".parse().expect("cidr"), "pwt-c");
        for b in [own, other, unrelated] {
            m.blocks.insert(b.cidr.to_string(), b);
        }
        let bs = blocks_of(&m, "pwt-a");
        assert_eq!(bs.len(), 2, "{bs:?}");
        let own = &bs[0];
        assert_eq!(own.cidr, "172.16.0.0/30");
        assert_eq!(
            (own.counts.total, own.counts.assigned, own.counts.free),
            (4, 2, 2)
        );
        let holders: Vec<_> = own.addresses.iter().map(|a| a.holder.clone()).collect();
        assert!(holders.contains(&Some(Handle::attachment("pw", "c1", "eth0").to_string())));
        // The borrowed block lists only this node's address.
        assert_eq!(bs[1].addresses.len(), 1);
        assert_eq!(bs[1].counts.assigned, 2);
    }
}
