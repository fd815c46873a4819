//! Where the IPAM keeps what in the datastore (schema 2): one owner for
//! every key, so nothing else spells them.
//!
//! ```text
//! /podwire/ipam/config                      the pool (PoolConfig, JSON)
//! /podwire/ipam/schema                      "2"
//! /podwire/ipam/blocks/<net>-<len>          a block (Block, JSON)
//! /podwire/ipam/handles/attachment/<network>/<container>/<ifname>
//! /podwire/ipam/handles/tunnel/<node>       which block holds a handle
//! /podwire/ipam/affinity/<node>/<net>-<len> the node's blocks
//! /podwire/ipam/free/<net>-<len>            blocks with a free address
//! /podwire/ipam/orphans/<net>-<len>         blocks without affinity
//! ```
//!
//! Names inside keys are escaped (`handle::escape`): no `/` from a node,
//! network or container name can move a key into another's place.

use ipnet::Ipv4Net;

use crate::handle::{escape, network_key_path, Handle};

pub const PREFIX: &str = "/podwire/ipam/";
pub const CONFIG: &str = "/podwire/ipam/config";
pub const SCHEMA: &str = "/podwire/ipam/schema";
pub const BLOCKS: &str = "/podwire/ipam/blocks/";
pub const HANDLES: &str = "/podwire/ipam/handles/";
pub const AFFINITY: &str = "/podwire/ipam/affinity/";
pub const FREE: &str = "/podwire/ipam/free/";
pub const ORPHANS: &str = "/podwire/ipam/orphans/";

fn block_id(cidr: Ipv4Net) -> String {
    format!("{}-{}", cidr.network(), cidr.prefix_len())
}

/// The block a key names by its last segment (`<net>-<len>`).
pub(crate) fn block_of_key(key: &str) -> Option<Ipv4Net> {
    let id = key.rsplit('/').next()?;
    let (net, len) = id.rsplit_once('-')?;
    Ipv4Net::new(net.parse().ok()?, len.parse().ok()?).ok()
}

pub fn block_key(cidr: Ipv4Net) -> String {
    format!("{BLOCKS}{}", block_id(cidr))
}

pub(crate) fn handle_key(h: &Handle) -> String {
    format!("{HANDLES}{}", h.key_path())
}

pub(crate) fn network_handles(network: &str) -> String {
    format!("{HANDLES}{}", network_key_path(network))
}

pub(crate) fn affinity_prefix(node: &str) -> String {
    format!("{AFFINITY}{}/", escape(node))
}

pub(crate) fn affinity_key(node: &str, cidr: Ipv4Net) -> String {
    format!("{}{}", affinity_prefix(node), block_id(cidr))
}

pub(crate) fn free_key(cidr: Ipv4Net) -> String {
    format!("{FREE}{}", block_id(cidr))
}

pub(crate) fn orphan_key(cidr: Ipv4Net) -> String {
    format!("{ORPHANS}{}", block_id(cidr))
}
