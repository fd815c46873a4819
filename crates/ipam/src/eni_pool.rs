//! vpc mode: the node's ENIs, their secondary addresses and their /28
//! prefixes as one pool.
//!
//! Addresses are handed out from the lowest device number first (so pods
//! fill `eth0` before `eth1`, which keeps the ENI count and the policy rules
//! small), and a released address rests for a cool-down before reuse so
//! stale endpoints elsewhere in the cluster cannot reach the next pod.
//!
//! An ENI's primary address is never in the pool, whatever a reply says:
//! [`EniPool::set_primary`] records it, and every way in (addresses,
//! prefixes, reconcile) refuses it, and [`EniPool::allocate`] checks again.
//! The pool is kept true by [`crate::reconcile`]; what it holds beyond the
//! targets comes out through [`EniPool::take_surplus`].

// Counts become u32 only through `count_u32` (saturating, documented).
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

pub use crate::warm::{PoolTargets, WarmSettings, WarmTarget};

/// Addresses in one delegated /28 prefix.
pub const PREFIX_ADDRESSES: u32 = 16;

/// Instance-type limits as the pool uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// ENIs the instance may attach (the primary included).
    pub max_enis: u32,
    /// Address slots per ENI beside the primary (IPv4 per ENI minus one):
    /// each secondary address or /28 prefix takes one.
    pub secondary_per_eni: u32,
}

impl PoolLimits {
    /// Every ENI's secondary addresses; saturates (at more than any node
    /// can use) rather than wrapping on absurd limits.
    pub fn max_pod_ips(&self) -> u32 {
        self.max_enis.saturating_mul(self.secondary_per_eni)
    }

    /// Every slot as a /28 prefix: 16 addresses each.
    pub fn max_prefix_ips(&self) -> u32 {
        self.max_pod_ips().saturating_mul(PREFIX_ADDRESSES)
    }
}

/// A count of ENIs or addresses as the u32 the limits and targets use.
/// Saturates: a count that does not fit is above every limit and target,
/// and every comparison below stays right (never wraps to a small number).
pub(crate) fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot {
    Free { since: Option<Instant> },
    Assigned { owner: String },
}

impl Slot {
    /// Free and rested long enough to be handed out (or given back).
    fn usable(&self, now: Instant, cooldown: Duration) -> bool {
        matches!(self, Slot::Free { since } if since.is_none_or(|t| now.duration_since(t) >= cooldown))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Eni {
    pub(crate) id: String,
    pub(crate) device_number: u32,
    pub(crate) route_table: u32,
    pub(crate) primary: Option<Ipv4Addr>,
    /// Every address pods may get: the secondary addresses and each
    /// prefix's 16.
    pub(crate) ips: BTreeMap<Ipv4Addr, Slot>,
    pub(crate) prefixes: BTreeSet<Ipv4Net>,
}

impl Eni {
    fn in_prefix(&self, ip: Ipv4Addr) -> bool {
        self.prefixes.iter().any(|p| p.contains(&ip))
    }

    /// Slots taken: each secondary address and each prefix.
    fn slots_used(&self) -> u32 {
        let singles = self.ips.keys().filter(|ip| !self.in_prefix(**ip)).count();
        count_u32(singles).saturating_add(count_u32(self.prefixes.len()))
    }

    fn prefix_free(&self, p: &Ipv4Net) -> bool {
        p.hosts_all()
            .all(|ip| matches!(self.ips.get(&ip), Some(Slot::Free { .. }) | None))
    }

    fn prefix_usable(&self, p: &Ipv4Net, now: Instant, cooldown: Duration) -> bool {
        p.hosts_all()
            .all(|ip| self.ips.get(&ip).is_none_or(|s| s.usable(now, cooldown)))
    }

    fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.prefixes.is_empty()
    }

    fn has_assigned(&self) -> bool {
        self.ips
            .values()
            .any(|s| matches!(s, Slot::Assigned { .. }))
    }
}

/// Every address of a /28, network and broadcast included: a delegated
/// prefix's 16 addresses are all the ENI's (the subnet's own reserved
/// addresses are never in a delegated /28).
trait AllHosts {
    fn hosts_all(&self) -> Box<dyn Iterator<Item = Ipv4Addr>>;
}

impl AllHosts for Ipv4Net {
    fn hosts_all(&self) -> Box<dyn Iterator<Item = Ipv4Addr>> {
        let start = u32::from(self.network());
        let end = u32::from(self.broadcast());
        Box::new((start..=end).map(Ipv4Addr::from))
    }
}

/// What the pool needs from the cloud to meet its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolPlan {
    /// Enough free addresses.
    Satisfied,
    /// Ask for `count` more secondary addresses on an attached ENI.
    AssignIps { eni_id: String, count: u32 },
    /// Ask for `count` more /28 prefixes on an attached ENI.
    AssignPrefixes { eni_id: String, count: u32 },
    /// Every attached ENI is full: create and attach another at this device
    /// index, with `count` secondary addresses (or /28 prefixes).
    AttachEni {
        device_index: u32,
        count: u32,
        prefixes: bool,
    },
    /// Short of the target, but the instance-type limits are reached.
    AtLimit,
}

/// What the pool holds beyond its targets, already out of the pool (no ADD
/// can be handed any of it meanwhile); give it back to the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Surplus {
    Ips {
        eni_id: String,
        ips: Vec<Ipv4Addr>,
    },
    Prefixes {
        eni_id: String,
        prefixes: Vec<Ipv4Net>,
    },
    /// A whole ENI with nothing in use: detach and delete it (never the
    /// primary ENI, device 0).
    Eni {
        eni_id: String,
    },
}

/// An address handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub device_number: u32,
    pub route_table: u32,
}

/// One address as the pool sees it, for introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressView {
    pub ip: Ipv4Addr,
    /// `assigned`, `cooling` or `free`.
    pub state: &'static str,
    pub owner: Option<String>,
}

/// One ENI as the pool sees it, for introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniView {
    pub id: String,
    pub device_number: u32,
    pub primary: Option<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
    pub addresses: Vec<AddressView>,
}

#[derive(Debug, Clone)]
pub struct EniPool {
    limits: PoolLimits,
    cooldown: Duration,
    pub(crate) enis: BTreeMap<u32, Eni>,
}

impl EniPool {
    pub fn new(limits: PoolLimits, cooldown: Duration) -> EniPool {
        EniPool {
            limits,
            cooldown,
            enis: BTreeMap::new(),
        }
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// Adds (or refreshes) an attached ENI; known addresses keep their state.
    pub fn add_eni(&mut self, id: &str, device_number: u32, route_table: u32) {
        self.enis.entry(device_number).or_insert_with(|| Eni {
            id: id.to_string(),
            device_number,
            route_table,
            primary: None,
            ips: BTreeMap::new(),
            prefixes: BTreeSet::new(),
        });
    }

    /// Records an ENI's primary address: it leaves the pool if it was in it
    /// (returning its holder, if a pod had it) and never enters it again.
    pub fn set_primary(&mut self, eni_id: &str, primary: Ipv4Addr) -> Option<String> {
        let eni = self.enis.values_mut().find(|e| e.id == eni_id)?;
        eni.primary = Some(primary);
        match self.remove_everywhere(primary) {
            Some(Slot::Assigned { owner }) => Some(owner),
            _ => None,
        }
    }

    fn remove_everywhere(&mut self, ip: Ipv4Addr) -> Option<Slot> {
        self.enis.values_mut().find_map(|e| e.ips.remove(&ip))
    }

    /// Every ENI's primary address.
    pub fn primaries(&self) -> BTreeSet<Ipv4Addr> {
        self.enis.values().filter_map(|e| e.primary).collect()
    }

    fn find_mut(&mut self, eni_id: &str) -> Option<&mut Eni> {
        self.enis.values_mut().find(|e| e.id == eni_id)
    }

    /// Adds secondary addresses the cloud assigned to an ENI, as free.
    /// Never a primary address of any ENI. `since`: `None` = usable now,
    /// `Some(t)` = cooling from `t` (an address nobody asked for).
    pub fn add_ips_at(&mut self, eni_id: &str, ips: &[Ipv4Addr], since: Option<Instant>) {
        let primaries = self.primaries();
        if let Some(eni) = self.find_mut(eni_id) {
            for ip in ips.iter().filter(|ip| !primaries.contains(ip)) {
                eni.ips.entry(*ip).or_insert(Slot::Free { since });
            }
        }
    }

    /// Adds secondary addresses the cloud assigned to an ENI, usable now.
    pub fn add_ips(&mut self, eni_id: &str, ips: &[Ipv4Addr]) {
        self.add_ips_at(eni_id, ips, None);
    }

    /// Adds /28 prefixes delegated to an ENI: their 16 addresses each, free
    /// (a primary address inside one, which EC2 never does, stays out).
    pub fn add_prefixes_at(&mut self, eni_id: &str, prefixes: &[Ipv4Net], since: Option<Instant>) {
        let primaries = self.primaries();
        if let Some(eni) = self.find_mut(eni_id) {
            for p in prefixes {
                if p.prefix_len() != 28 || !eni.prefixes.insert(p.trunc()) {
                    continue;
                }
                for ip in p.hosts_all().filter(|ip| !primaries.contains(ip)) {
                    eni.ips.entry(ip).or_insert(Slot::Free { since });
                }
            }
        }
    }

    pub fn add_prefixes(&mut self, eni_id: &str, prefixes: &[Ipv4Net]) {
        self.add_prefixes_at(eni_id, prefixes, None);
    }

    /// Removes an ENI and everything on it; returns the holders of the
    /// addresses pods still had.
    pub fn remove_eni(&mut self, eni_id: &str) -> Vec<(Ipv4Addr, String)> {
        let Some(device) = self
            .enis
            .iter()
            .find(|(_, e)| e.id == eni_id)
            .map(|(d, _)| *d)
        else {
            return Vec::new();
        };
        self.enis
            .remove(&device)
            .map(|e| held(&e.ips).collect())
            .unwrap_or_default()
    }

    /// Marks an address as taken by `owner` (restoring a checkpoint).
    /// False when the address is not in the pool.
    pub fn restore(&mut self, ip: Ipv4Addr, owner: &str) -> bool {
        for eni in self.enis.values_mut() {
            if let Some(slot) = eni.ips.get_mut(&ip) {
                *slot = Slot::Assigned {
                    owner: owner.to_string(),
                };
                return true;
            }
        }
        false
    }

    /// Hands out the lowest free, rested address of the lowest ENI (never
    /// a primary address, checked again here).
    pub fn allocate(&mut self, owner: &str, now: Instant) -> Option<Assigned> {
        let cooldown = self.cooldown;
        let primaries = self.primaries();
        for eni in self.enis.values_mut() {
            let usable =
                |ip: &Ipv4Addr, slot: &Slot| slot.usable(now, cooldown) && !primaries.contains(ip);
            // The prefix with the most addresses in use first (ties: the
            // lowest), then single secondary addresses: pods pack into as
            // few /28s as possible, so a whole prefix stays free for the
            // warm target instead of every prefix holding one pod.
            let packed = eni
                .prefixes
                .iter()
                .filter_map(|p| {
                    let mut in_use = 0usize;
                    let mut first = None;
                    for (ip, slot) in eni.ips.range(p.network()..=p.broadcast()) {
                        if matches!(slot, Slot::Assigned { .. }) {
                            in_use += 1;
                        } else if first.is_none() && usable(ip, slot) {
                            first = Some(*ip);
                        }
                    }
                    first.map(|ip| (std::cmp::Reverse(in_use), *p, ip))
                })
                .min()
                .map(|(_, _, ip)| ip);
            let pick = packed.or_else(|| {
                eni.ips
                    .iter()
                    .find(|(ip, slot)| !eni.in_prefix(**ip) && usable(ip, slot))
                    .map(|(ip, _)| *ip)
            });
            if let Some(ip) = pick {
                eni.ips.insert(
                    ip,
                    Slot::Assigned {
                        owner: owner.to_string(),
                    },
                );
                return Some(Assigned {
                    ip,
                    eni_id: eni.id.clone(),
                    device_number: eni.device_number,
                    route_table: eni.route_table,
                });
            }
        }
        None
    }

    /// Returns an address to the pool. False when it was not assigned.
    pub fn release(&mut self, ip: Ipv4Addr, now: Instant) -> bool {
        for eni in self.enis.values_mut() {
            if let Some(slot) = eni.ips.get_mut(&ip) {
                if matches!(slot, Slot::Assigned { .. }) {
                    *slot = Slot::Free { since: Some(now) };
                    return true;
                }
                return false;
            }
        }
        false
    }

    /// Who holds an address.
    pub fn owner(&self, ip: Ipv4Addr) -> Option<&str> {
        self.enis.values().find_map(|e| match e.ips.get(&ip) {
            Some(Slot::Assigned { owner }) => Some(owner.as_str()),
            _ => None,
        })
    }

    /// Whether the pool has this address (in any state).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.enis.values().any(|e| e.ips.contains_key(&ip))
    }

    /// Free addresses usable now.
    pub fn free(&self, now: Instant) -> usize {
        self.count(|s| s.usable(now, self.cooldown))
    }

    /// Free addresses, resting ones included.
    pub fn free_total(&self) -> usize {
        self.count(|s| matches!(s, Slot::Free { .. }))
    }

    pub fn assigned(&self) -> usize {
        self.count(|s| matches!(s, Slot::Assigned { .. }))
    }

    fn count(&self, pred: impl Fn(&Slot) -> bool) -> usize {
        self.enis
            .values()
            .flat_map(|e| e.ips.values())
            .filter(|s| pred(s))
            .count()
    }

    pub fn eni_count(&self) -> u32 {
        count_u32(self.enis.len())
    }

    /// /28 prefixes held.
    pub fn prefix_count(&self) -> u32 {
        count_u32(self.enis.values().map(|e| e.prefixes.len()).sum())
    }

    /// Address slots still free within the instance's limits: on the
    /// attached ENIs and on the ENIs it may still attach.
    pub fn slots_left(&self) -> u32 {
        let on_attached: u32 = self
            .enis
            .values()
            .map(|e| self.limits.secondary_per_eni.saturating_sub(e.slots_used()))
            .fold(0, u32::saturating_add);
        let more_enis = self.limits.max_enis.saturating_sub(self.eni_count());
        on_attached.saturating_add(more_enis.saturating_mul(self.limits.secondary_per_eni))
    }

    /// True when no further address can ever be had on this instance.
    pub fn at_limit(&self) -> bool {
        self.slots_left() == 0
    }

    /// Addresses on the node's ENIs, free or not.
    pub fn total(&self) -> usize {
        self.enis.values().map(|e| e.ips.len()).sum()
    }

    /// Every ENI with each address's state, lowest device first.
    pub fn view(&self, now: Instant) -> Vec<EniView> {
        self.enis
            .values()
            .map(|e| EniView {
                id: e.id.clone(),
                device_number: e.device_number,
                primary: e.primary,
                prefixes: e.prefixes.iter().copied().collect(),
                addresses: e
                    .ips
                    .iter()
                    .map(|(ip, s)| match s {
                        Slot::Assigned { owner } => AddressView {
                            ip: *ip,
                            state: "assigned",
                            owner: Some(owner.clone()),
                        },
                        s if s.usable(now, self.cooldown) => AddressView {
                            ip: *ip,
                            state: "free",
                            owner: None,
                        },
                        _ => AddressView {
                            ip: *ip,
                            state: "cooling",
                            owner: None,
                        },
                    })
                    .collect(),
            })
            .collect()
    }

    /// Prefixes with no address in use (cooling ones count as free: they
    /// need no new prefix to be usable soon).
    fn free_prefixes(&self) -> u32 {
        count_u32(
            self.enis
                .values()
                .map(|e| e.prefixes.iter().filter(|p| e.prefix_free(p)).count())
                .sum(),
        )
    }

    /// Addresses the targets want held in all (IP targets only).
    fn desired_total(&self, warm: u32, minimum: u32) -> u32 {
        count_u32(self.assigned()).saturating_add(warm).max(minimum)
    }

    /// What to ask the cloud for to meet `targets`.
    pub fn plan(&self, targets: PoolTargets) -> PoolPlan {
        let per_eni = self.limits.secondary_per_eni;
        // How many units (addresses or prefixes) are short, and whether to
        // fill the ENI whole (WARM_ENI_TARGET) rather than by what is short.
        let (short, whole) = match targets.target {
            WarmTarget::Enis(n) => {
                let want = n.saturating_mul(per_eni);
                (want.saturating_sub(count_u32(self.free_total())), true)
            }
            WarmTarget::Ips { warm, minimum } => {
                let short = self
                    .desired_total(warm, minimum)
                    .saturating_sub(count_u32(self.total()));
                let short = if targets.prefixes {
                    short.div_ceil(PREFIX_ADDRESSES)
                } else {
                    short
                };
                (short, false)
            }
            WarmTarget::Prefixes(n) => (n.saturating_sub(self.free_prefixes()), false),
        };
        if short == 0 {
            return PoolPlan::Satisfied;
        }
        for eni in self.enis.values() {
            let room = per_eni.saturating_sub(eni.slots_used());
            if room > 0 {
                let count = if whole { room } else { room.min(short) };
                return if targets.prefixes {
                    PoolPlan::AssignPrefixes {
                        eni_id: eni.id.clone(),
                        count,
                    }
                } else {
                    PoolPlan::AssignIps {
                        eni_id: eni.id.clone(),
                        count,
                    }
                };
            }
        }
        if self.eni_count() < self.limits.max_enis && per_eni > 0 {
            let device_index = (0..)
                .find(|d| !self.enis.contains_key(d))
                .unwrap_or(self.eni_count());
            let count = if whole { per_eni } else { per_eni.min(short) };
            return PoolPlan::AttachEni {
                device_index,
                count,
                prefixes: targets.prefixes,
            };
        }
        PoolPlan::AtLimit
    }

    /// Takes out of the pool what it holds beyond `targets` — rested free
    /// secondary addresses, wholly free and rested prefixes, or a whole ENI
    /// (never device 0) with nothing on it in use — highest ENI first, so
    /// the caller can give it back. Put it back (or let the next reconcile
    /// adopt it) if the cloud call fails.
    pub fn take_surplus(&mut self, targets: PoolTargets, now: Instant) -> Option<Surplus> {
        let cooldown = self.cooldown;
        let per_eni = self.limits.secondary_per_eni;
        let free_total = count_u32(self.free_total());
        match targets.target {
            WarmTarget::Enis(n) => {
                // A whole idle ENI, if the others still keep n ENIs' worth.
                let want = n.saturating_mul(per_eni);
                let eni = self.enis.values().rev().find(|e| {
                    e.device_number > 0
                        && !e.has_assigned()
                        && e.ips.values().all(|s| s.usable(now, cooldown))
                        && free_total.saturating_sub(count_u32(e.ips.len())) >= want
                })?;
                let id = eni.id.clone();
                self.remove_eni(&id);
                Some(Surplus::Eni { eni_id: id })
            }
            WarmTarget::Ips { warm, minimum } => {
                let over = count_u32(self.total())
                    .saturating_sub(self.desired_total(warm, minimum))
                    .min(free_total);
                self.take_addresses(over, now)
                    .or_else(|| self.take_empty_eni())
            }
            WarmTarget::Prefixes(n) => {
                let over = self.free_prefixes().saturating_sub(n);
                let taken = if over > 0 {
                    self.take_prefixes(over, now)
                } else {
                    None
                };
                taken.or_else(|| self.take_empty_eni())
            }
        }
    }

    /// Up to `over` addresses (whole prefixes only when `over` covers one).
    fn take_addresses(&mut self, over: u32, now: Instant) -> Option<Surplus> {
        if over == 0 {
            return None;
        }
        let cooldown = self.cooldown;
        for eni in self.enis.values_mut().rev() {
            let singles: Vec<Ipv4Addr> = eni
                .ips
                .iter()
                .rev()
                .filter(|(ip, s)| s.usable(now, cooldown) && !eni.in_prefix(**ip))
                .map(|(ip, _)| *ip)
                .take(over as usize)
                .collect();
            if !singles.is_empty() {
                for ip in &singles {
                    eni.ips.remove(ip);
                }
                return Some(Surplus::Ips {
                    eni_id: eni.id.clone(),
                    ips: singles,
                });
            }
        }
        self.take_prefixes(over / PREFIX_ADDRESSES, now)
    }

    /// Up to `count` wholly free, rested prefixes of one ENI.
    fn take_prefixes(&mut self, count: u32, now: Instant) -> Option<Surplus> {
        if count == 0 {
            return None;
        }
        let cooldown = self.cooldown;
        for eni in self.enis.values_mut().rev() {
            let take: Vec<Ipv4Net> = eni
                .prefixes
                .iter()
                .rev()
                .filter(|p| eni.prefix_usable(p, now, cooldown))
                .take(count as usize)
                .copied()
                .collect();
            if take.is_empty() {
                continue;
            }
            for p in &take {
                eni.prefixes.remove(p);
                for ip in p.hosts_all() {
                    eni.ips.remove(&ip);
                }
            }
            return Some(Surplus::Prefixes {
                eni_id: eni.id.clone(),
                prefixes: take,
            });
        }
        None
    }

    /// A secondary ENI with no address and no prefix left: it only takes an
    /// ENI slot (and its primary address from the subnet).
    fn take_empty_eni(&mut self) -> Option<Surplus> {
        let id = self
            .enis
            .values()
            .rev()
            .find(|e| e.device_number > 0 && e.is_empty())?
            .id
            .clone();
        self.remove_eni(&id);
        Some(Surplus::Eni { eni_id: id })
    }
}

/// The held addresses of a slot map with their holders.
fn held(ips: &BTreeMap<Ipv4Addr, Slot>) -> impl Iterator<Item = (Ipv4Addr, String)> + '_ {
    ips.iter().filter_map(|(ip, s)| match s {
        Slot::Assigned { owner } => Some((*ip, owner.clone())),
        Slot::Free { .. } => None,
    })
}

#[cfg(test)]
mod tests;
