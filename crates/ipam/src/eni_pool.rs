//! vpc mode: the node's ENIs and their secondary addresses as one pool.
//!
//! Addresses are handed out from the lowest device number first (so pods
//! fill `eth0` before `eth1`, which keeps the ENI count and the policy rules
//! small), and a released address rests for a cool-down before reuse so
//! stale endpoints elsewhere in the cluster cannot reach the next pod.

// Counts become u32 only through `count_u32` (saturating, documented).
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Instance-type limits as the pool uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// ENIs the instance may attach (the primary included).
    pub max_enis: u32,
    /// Secondary addresses per ENI (IPv4 per ENI minus the primary).
    pub secondary_per_eni: u32,
}

impl PoolLimits {
    /// Every ENI's secondary addresses; saturates (at more than any node
    /// can use) rather than wrapping on absurd limits.
    pub fn max_pod_ips(&self) -> u32 {
        self.max_enis.saturating_mul(self.secondary_per_eni)
    }
}

/// A count of ENIs or addresses as the u32 the limits and targets use.
/// Saturates: a count that does not fit is above every limit and target,
/// and every comparison below stays right (never wraps to a small number).
fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
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
struct Eni {
    id: String,
    device_number: u32,
    route_table: u32,
    ips: BTreeMap<Ipv4Addr, Slot>,
}

/// How many addresses the pool keeps (the VPC CNI's WARM_IP_TARGET and
/// MINIMUM_IP_TARGET).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTargets {
    /// Free addresses to keep ready.
    pub warm: u32,
    /// Addresses to hold in all, free or assigned.
    pub minimum: u32,
    /// Grow by whole ENIs (fill an ENI per call) rather than by what is short.
    pub whole_enis: bool,
}

impl PoolTargets {
    pub fn warm(warm: u32) -> Self {
        PoolTargets {
            warm,
            minimum: 0,
            whole_enis: true,
        }
    }
}

/// What the pool needs from the cloud to meet its warm target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolPlan {
    /// Enough free addresses.
    Satisfied,
    /// Ask for `count` more secondary addresses on an attached ENI.
    AssignIps { eni_id: String, count: u32 },
    /// Every attached ENI is full: create and attach another at this device
    /// index, with `count` secondary addresses.
    AttachEni { device_index: u32, count: u32 },
    /// Short of the target, but the instance-type limits are reached.
    AtLimit,
}

/// An address handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub ip: Ipv4Addr,
    pub eni_id: String,
    pub device_number: u32,
    pub route_table: u32,
}

#[derive(Debug, Clone)]
pub struct EniPool {
    limits: PoolLimits,
    cooldown: Duration,
    enis: BTreeMap<u32, Eni>,
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

    /// Adds (or refreshes) an attached ENI; known addresses keep their state.
    pub fn add_eni(&mut self, id: &str, device_number: u32, route_table: u32) {
        self.enis.entry(device_number).or_insert_with(|| Eni {
            id: id.to_string(),
            device_number,
            route_table,
            ips: BTreeMap::new(),
        });
    }

    /// Adds secondary addresses the cloud assigned to an ENI, as free.
    pub fn add_ips(&mut self, eni_id: &str, ips: &[Ipv4Addr]) {
        if let Some(eni) = self.enis.values_mut().find(|e| e.id == eni_id) {
            for ip in ips {
                eni.ips.entry(*ip).or_insert(Slot::Free { since: None });
            }
        }
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

    /// Hands out the lowest free, rested address of the lowest ENI.
    pub fn allocate(&mut self, owner: &str, now: Instant) -> Option<Assigned> {
        let cooldown = self.cooldown;
        for eni in self.enis.values_mut() {
            let pick = eni
                .ips
                .iter()
                .find(|(_, slot)| slot.usable(now, cooldown))
                .map(|(ip, _)| *ip);
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

    /// True when no further address can ever be had on this instance.
    pub fn at_limit(&self) -> bool {
        self.eni_count() >= self.limits.max_enis
            && self
                .enis
                .values()
                .all(|e| count_u32(e.ips.len()) >= self.limits.secondary_per_eni)
    }

    /// Addresses on the node's ENIs, free or not.
    pub fn total(&self) -> usize {
        self.enis.values().map(|e| e.ips.len()).sum()
    }

    /// Takes out of the pool the free, rested addresses above the warm
    /// target (never below the minimum), from the highest ENI first, so the
    /// caller can give them back to the cloud. They are gone from the pool
    /// before the cloud call, so no ADD can be handed one meanwhile; put them
    /// back with [`EniPool::add_ips`] if the call fails.
    pub fn take_surplus(
        &mut self,
        targets: PoolTargets,
        now: Instant,
    ) -> Option<(String, Vec<Ipv4Addr>)> {
        let free = count_u32(self.free(now));
        let total = count_u32(self.total());
        let over = free
            .saturating_sub(targets.warm)
            .min(total.saturating_sub(targets.minimum));
        if over == 0 {
            return None;
        }
        let cooldown = self.cooldown;
        let eni = self
            .enis
            .values_mut()
            .rev()
            .find(|e| e.ips.values().any(|s| s.usable(now, cooldown)))?;
        let ips: Vec<Ipv4Addr> = eni
            .ips
            .iter()
            .rev()
            .filter(|(_, s)| s.usable(now, cooldown))
            .map(|(ip, _)| *ip)
            .take(over as usize)
            .collect();
        for ip in &ips {
            eni.ips.remove(ip);
        }
        Some((eni.id.clone(), ips))
    }

    /// What to ask the cloud for so that `targets.warm` addresses are free
    /// and at least `targets.minimum` are held in all.
    pub fn plan(&self, targets: PoolTargets) -> PoolPlan {
        let free = count_u32(self.free_total());
        if free >= targets.warm && count_u32(self.total()) >= targets.minimum {
            return PoolPlan::Satisfied;
        }
        // With whole ENIs (the VPC CNI's WARM_ENI_TARGET) an ENI is filled in
        // one call; with an address target only what is short is asked for,
        // so the surplus release never has to give it back.
        let short = targets
            .warm
            .saturating_sub(free)
            .max((targets.minimum).saturating_sub(count_u32(self.total())))
            .max(1);
        for eni in self.enis.values() {
            let room = self
                .limits
                .secondary_per_eni
                .saturating_sub(count_u32(eni.ips.len()));
            if room > 0 {
                let count = if targets.whole_enis {
                    room
                } else {
                    room.min(short)
                };
                return PoolPlan::AssignIps {
                    eni_id: eni.id.clone(),
                    count,
                };
            }
        }
        if self.eni_count() < self.limits.max_enis {
            let device_index = (0..)
                .find(|d| !self.enis.contains_key(d))
                .unwrap_or(self.eni_count());
            let per_eni = self.limits.secondary_per_eni;
            let count = if targets.whole_enis {
                per_eni
            } else {
                per_eni.min(short)
            };
            return PoolPlan::AttachEni {
                device_index,
                count,
            };
        }
        PoolPlan::AtLimit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    fn m5_large() -> EniPool {
        EniPool::new(
            PoolLimits {
                max_enis: 3,
                secondary_per_eni: 9,
            },
            Duration::ZERO,
        )
    }

    /// Limits come from DescribeInstanceTypes: absurd ones must not wrap.
    #[test]
    fn max_pod_ips_of_absurd_limits_saturate() {
        let l = PoolLimits {
            max_enis: 65_536,
            secondary_per_eni: 65_536,
        };
        assert_eq!(l.max_pod_ips(), u32::MAX);
    }

    #[test]
    fn counts_saturate_at_u32_max() {
        assert_eq!(count_u32(7), 7);
        assert_eq!(count_u32(usize::MAX), u32::MAX);
    }

    #[test]
    fn fills_eth0_first_then_plans_a_new_eni_then_stops_at_the_limit() {
        let mut p = m5_large();
        let now = Instant::now();
        p.add_eni("eni-0", 0, 254);
        assert_eq!(
            p.plan(PoolTargets::warm(9)),
            PoolPlan::AssignIps {
                eni_id: "eni-0".into(),
                count: 9
            }
        );
        p.add_ips("eni-0", &(10..19).map(ip).collect::<Vec<_>>());
        assert_eq!(p.plan(PoolTargets::warm(9)), PoolPlan::Satisfied);
        let a = p.allocate("a", now).expect("first");
        assert_eq!((a.ip, a.device_number, a.route_table), (ip(10), 0, 254));
        assert_eq!(
            p.plan(PoolTargets::warm(9)),
            PoolPlan::AttachEni {
                device_index: 1,
                count: 9
            }
        );
        p.add_eni("eni-1", 1, 2);
        p.add_ips("eni-1", &(20..29).map(ip).collect::<Vec<_>>());
        p.add_eni("eni-2", 2, 3);
        p.add_ips("eni-2", &(30..39).map(ip).collect::<Vec<_>>());
        let mut got = vec![a];
        for i in 1..27 {
            got.push(p.allocate(&format!("p{i}"), now).expect("within limit"));
        }
        // eth0 filled before eth1, eth1 before eth2.
        assert!(got
            .windows(2)
            .all(|w| w[0].device_number <= w[1].device_number));
        assert_eq!(got[9].device_number, 1);
        assert!(p.allocate("p27", now).is_none(), "the 28th must fail");
        assert!(p.at_limit());
        assert_eq!(p.plan(PoolTargets::warm(9)), PoolPlan::AtLimit);
        assert!(p.release(got[3].ip, now));
        assert!(!p.release(got[3].ip, now), "double release");
        assert_eq!(p.allocate("again", now).map(|a| a.ip), Some(got[3].ip));
    }

    #[test]
    fn minimum_target_holds_addresses_without_a_warm_margin() {
        let mut p = m5_large();
        p.add_eni("eni-0", 0, 254);
        let t = PoolTargets {
            warm: 0,
            minimum: 12,
            whole_enis: true,
        };
        assert_eq!(
            p.plan(t),
            PoolPlan::AssignIps {
                eni_id: "eni-0".into(),
                count: 9
            }
        );
        p.add_ips("eni-0", &(10..19).map(ip).collect::<Vec<_>>());
        assert_eq!(
            p.plan(t),
            PoolPlan::AttachEni {
                device_index: 1,
                count: 9
            }
        );
        p.add_eni("eni-1", 1, 2);
        p.add_ips("eni-1", &(20..29).map(ip).collect::<Vec<_>>());
        assert_eq!(p.plan(t), PoolPlan::Satisfied);
        // Allocations below the minimum ask for nothing more.
        for i in 0..10 {
            p.allocate(&format!("o{i}"), Instant::now()).expect("alloc");
        }
        assert_eq!(p.plan(t), PoolPlan::Satisfied);
    }

    #[test]
    fn surplus_above_the_warm_target_is_taken_from_the_highest_eni() {
        let mut p = m5_large();
        let now = Instant::now();
        p.add_eni("eni-0", 0, 254);
        p.add_ips("eni-0", &(10..19).map(ip).collect::<Vec<_>>());
        p.add_eni("eni-1", 1, 2);
        p.add_ips("eni-1", &(20..29).map(ip).collect::<Vec<_>>());
        let held: Vec<_> = (0..3)
            .map(|i| p.allocate(&format!("o{i}"), now).expect("alloc"))
            .collect();
        // 15 free, warm 4: 11 over, all from eni-1 first (9), then eni-0.
        let (eni, ips) = p.take_surplus(PoolTargets::warm(4), now).expect("surplus");
        assert_eq!((eni.as_str(), ips.len()), ("eni-1", 9));
        let (eni, ips) = p.take_surplus(PoolTargets::warm(4), now).expect("more");
        assert_eq!((eni.as_str(), ips.len()), ("eni-0", 2));
        assert!(
            ips.iter().all(|i| !held.iter().any(|h| h.ip == *i)),
            "assigned addresses are never taken"
        );
        assert_eq!(p.free(now), 4);
        assert_eq!(p.take_surplus(PoolTargets::warm(4), now), None);
        // The minimum wins over the warm target.
        assert_eq!(
            p.take_surplus(
                PoolTargets {
                    warm: 0,
                    minimum: 7,
                    whole_enis: true,
                },
                now
            ),
            None
        );
    }

    #[test]
    fn an_address_target_asks_only_for_what_is_short() {
        let mut p = m5_large();
        p.add_eni("eni-0", 0, 254);
        let t = PoolTargets {
            warm: 3,
            minimum: 0,
            whole_enis: false,
        };
        assert_eq!(
            p.plan(t),
            PoolPlan::AssignIps {
                eni_id: "eni-0".into(),
                count: 3
            }
        );
        p.add_ips("eni-0", &(10..19).map(ip).collect::<Vec<_>>());
        for i in 0..9 {
            p.allocate(&format!("o{i}"), Instant::now()).expect("alloc");
        }
        assert_eq!(
            p.plan(t),
            PoolPlan::AttachEni {
                device_index: 1,
                count: 3
            }
        );
    }

    #[test]
    fn cooldown_keeps_a_released_address_out_for_a_while() {
        let mut p = EniPool::new(
            PoolLimits {
                max_enis: 1,
                secondary_per_eni: 2,
            },
            Duration::from_secs(30),
        );
        let t0 = Instant::now();
        p.add_eni("e", 0, 254);
        p.add_ips("e", &[ip(1), ip(2)]);
        let a = p.allocate("a", t0).expect("a");
        p.release(a.ip, t0);
        let b = p.allocate("b", t0).expect("b");
        assert_ne!(b.ip, a.ip);
        assert!(p.allocate("c", t0 + Duration::from_secs(1)).is_none());
        assert_eq!(
            p.allocate("c", t0 + Duration::from_secs(31)).map(|x| x.ip),
            Some(a.ip)
        );
    }

    #[test]
    fn restore_marks_owner_and_unknown_addresses_are_refused() {
        let mut p = m5_large();
        p.add_eni("e", 0, 254);
        p.add_ips("e", &[ip(1), ip(2)]);
        assert!(p.restore(ip(2), "x"));
        assert!(!p.restore(ip(99), "y"));
        assert_eq!(p.owner(ip(2)), Some("x"));
        assert_eq!(p.allocate("z", Instant::now()).map(|a| a.ip), Some(ip(1)));
        assert!(p.allocate("w", Instant::now()).is_none());
    }
}
