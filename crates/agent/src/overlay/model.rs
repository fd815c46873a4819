//! overlay mode's picture of the cluster: the datastore's nodes and blocks
//! as last seen, and from them the routes, blackholes and peers this node's
//! kernel must have ([`Model::desired`]). Pure: no kernel, no datastore.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use podwire_dataplane::overlay::{Desired, Peer};
use podwire_ipam::nodes::{self, NodeRecord};
use podwire_netlink::MacAddr;

/// The datastore's view this agent follows.
#[derive(Debug, Default)]
pub(super) struct Model {
    pub(super) nodes: BTreeMap<String, NodeRecord>,
    pub(super) blocks: BTreeMap<String, podwire_ipam::block::Block>,
    pub(super) applied: Desired,
    /// The underlay addresses last put in the VXLAN peer set (None: not
    /// known to be in the kernel yet).
    pub(super) vxlan_peers: Option<std::collections::BTreeSet<std::net::Ipv4Addr>>,
}

impl Model {
    pub(super) fn update(&mut self, key: &str, value: Option<&[u8]>) {
        if key.starts_with(nodes::NODES) {
            match value.and_then(|v| serde_json::from_slice::<NodeRecord>(v).ok()) {
                Some(n) => {
                    self.nodes.insert(key.to_string(), n);
                }
                None => {
                    self.nodes.remove(key);
                }
            }
        } else if key.starts_with(podwire_ipam::keys::BLOCKS) {
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
    pub(super) fn desired(&self, me: &str) -> Desired {
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
                        d.routes.insert(Ipv4Net::from(b.addr(*ord)), t);
                    }
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_ipam::block::{Block, Holder};

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
        b1.assign(&Holder::new(podwire_ipam::Handle::tunnel("n1"), "n1"));
        // n3 borrowed an address from n1's block.
        let borrowed = b1
            .assign(&Holder::new(
                podwire_ipam::Handle::attachment("pw", "x", "eth0"),
                "n3",
            ))
            .expect("borrow");
        let b2 = Block::new("172.16.0.64/26".parse().expect("cidr"), "n2");
        put(&mut m, &format!("{}a", podwire_ipam::keys::BLOCKS), &b1);
        put(&mut m, &format!("{}b", podwire_ipam::keys::BLOCKS), &b2);

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
