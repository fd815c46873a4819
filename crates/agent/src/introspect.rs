//! What `/v1/state` answers: the agent's view of its node, read from its
//! in-memory state (never from the cloud or the datastore, so a scrape
//! costs no remote call). The same snapshot sets the metrics' gauges and
//! answers `/healthz`.

use serde::Serialize;

use crate::metrics::LastError;

/// One address and who holds it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AddressState {
    pub ip: std::net::Ipv4Addr,
    /// `assigned`, `free` or `cooling` (released, resting before reuse).
    pub state: &'static str,
    /// The attachment (`network/container/ifname`) or handle holding it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// Address counts by state.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub assigned: usize,
    pub free: usize,
    pub cooling: usize,
}

impl Counts {
    pub fn labelled(&self) -> [(&'static str, usize); 4] {
        [
            ("total", self.total),
            ("assigned", self.assigned),
            ("free", self.free),
            ("cooling", self.cooling),
        ]
    }
}

/// vpc: one attached ENI.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EniState {
    pub id: String,
    pub device_index: u32,
    pub addresses: Vec<AddressState>,
}

impl EniState {
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            total: self.addresses.len(),
            ..Counts::default()
        };
        for a in &self.addresses {
            match a.state {
                "assigned" => c.assigned += 1,
                "cooling" => c.cooling += 1,
                _ => c.free += 1,
            }
        }
        c
    }
}

/// overlay: one block of this node (its own, or one it borrowed from).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BlockState {
    pub cidr: String,
    /// The node the block is affine to.
    pub affinity: Option<String>,
    pub counts: Counts,
    /// The held addresses of this node in the block, with their handles
    /// (free addresses are only counted: a block has up to thousands).
    pub addresses: Vec<AddressState>,
}

/// vpc: the warm pool's targets.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Targets {
    /// The rule in force: `warm_eni`, `warm_ip` or `warm_prefix`.
    pub rule: &'static str,
    pub warm_eni_target: Option<u32>,
    pub warm_ip_target: u32,
    pub minimum_ip_target: u32,
    pub warm_prefix_target: Option<u32>,
    pub prefix_delegation: bool,
    /// Grown by whole ENIs (WARM_ENI_TARGET).
    pub whole_enis: bool,
}

/// vpc: what the node holds and could still hold, and its subnet at the
/// last reconcile: the `capacity` object of `/v1/state`. One type with what
/// `podwirectl capacity --live` parses (podwire-capacity), so the two
/// cannot drift; the same figures are gauges.
pub use podwire_capacity::live::{Figures as Capacity, SubnetFigures as SubnetCapacity};

/// The agent's view of its node.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct NodeState {
    pub node: String,
    /// `vpc` or `overlay`.
    pub mode: String,
    pub ready: bool,
    pub message: String,
    pub free_ips: usize,
    pub assigned_ips: usize,
    /// vpc: ENIs the instance type allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eni_limit: Option<u32>,
    /// vpc: the attached ENIs, lowest device first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub enis: Vec<EniState>,
    /// overlay: blocks with addresses of this node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<BlockState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Targets>,
    /// vpc: what the pool manager is doing (`Satisfied`, `AssignIps …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_plan: Option<String>,
    /// vpc: capacity figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// overlay: other nodes programmed into the VXLAN device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<usize>,
    pub last_errors: Vec<LastError>,
}
