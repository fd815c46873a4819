//! The pool against the cloud: what DescribeNetworkInterfaces lists for
//! this instance is the truth, and the pool is made to match it.
//!
//! - An ENI the cloud no longer lists (attached to this instance) leaves
//!   the pool with everything on it.
//! - An address or prefix the cloud no longer lists leaves the pool; one a
//!   pod still holds is reported as lost (the caller logs it loudly and
//!   counts it).
//! - An address or prefix the cloud lists that the pool does not know is
//!   adopted: usable at once when the agent itself just asked for it (it is
//!   `expected`: an Assign or Create reply named it and the cloud confirms
//!   it), otherwise free only after the cool-down (someone else assigned
//!   it; a pod of a lost checkpoint may still use it).
//! - An ENI's primary address is never in the pool; if a reply put it
//!   there, it leaves (and a pod holding it is reported lost).
//! - An attached ENI the pool does not know is reported, not adopted: its
//!   link must be configured first (the caller does, then adds it).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Instant;

use ipnet::Ipv4Net;

use crate::eni_pool::{EniPool, Slot};

/// One ENI attached to this instance, as the cloud lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedEni {
    pub id: String,
    pub device_index: u32,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
}

/// What the agent itself just asked for (from the replies of its own
/// calls): usable at once once the cloud confirms it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub ips: BTreeSet<Ipv4Addr>,
    pub prefixes: BTreeSet<Ipv4Net>,
}

/// What a reconcile changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Addresses pods still hold that the cloud no longer lists (or that
    /// are an ENI's primary): those pods have no working address.
    pub lost: Vec<(Ipv4Addr, String)>,
    /// Free addresses the cloud no longer lists.
    pub dropped: Vec<Ipv4Addr>,
    /// Addresses nobody here asked for, adopted (cooling down first).
    pub adopted: Vec<Ipv4Addr>,
    /// Expected addresses the cloud lists: usable now.
    pub confirmed: Vec<Ipv4Addr>,
    /// Expected addresses (or prefixes' first addresses) the cloud does
    /// not list: the reply claimed them, the cloud does not have them.
    pub unconfirmed: Vec<Ipv4Addr>,
    /// ENIs gone from the instance.
    pub enis_gone: Vec<String>,
    /// Attached ENIs the pool does not know (to configure, then add).
    pub unknown_enis: Vec<ObservedEni>,
}

impl ReconcileReport {
    /// Whether the pool changed at all.
    pub fn changed(&self) -> bool {
        !(self.lost.is_empty()
            && self.dropped.is_empty()
            && self.adopted.is_empty()
            && self.confirmed.is_empty()
            && self.enis_gone.is_empty())
    }
}

fn all_addresses(p: &Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    (u32::from(p.network())..=u32::from(p.broadcast())).map(Ipv4Addr::from)
}

/// Makes `pool` match `observed` (see the module comment).
pub fn reconcile(
    pool: &mut EniPool,
    observed: &[ObservedEni],
    expected: &Expected,
    now: Instant,
) -> ReconcileReport {
    let mut r = ReconcileReport::default();
    let cloud_primaries: BTreeSet<Ipv4Addr> = observed.iter().map(|o| o.primary_ip).collect();

    // ENIs gone from the instance.
    let gone: Vec<String> = pool
        .enis
        .values()
        .filter(|e| !observed.iter().any(|o| o.id == e.id))
        .map(|e| e.id.clone())
        .collect();
    for id in gone {
        if let Some(device) = pool.enis.iter().find(|(_, e)| e.id == id).map(|(d, _)| *d) {
            if let Some(eni) = pool.enis.remove(&device) {
                for (ip, slot) in eni.ips {
                    match slot {
                        Slot::Assigned { owner } => r.lost.push((ip, owner)),
                        Slot::Free { .. } => r.dropped.push(ip),
                    }
                }
            }
        }
        r.enis_gone.push(id);
    }

    for o in observed {
        let Some(eni) = pool.enis.values_mut().find(|e| e.id == o.id) else {
            r.unknown_enis.push(o.clone());
            continue;
        };
        eni.primary = Some(o.primary_ip);
        // Prefixes: the listed ones, as aligned /28s.
        let listed_prefixes: BTreeSet<Ipv4Net> = o
            .prefixes
            .iter()
            .filter(|p| p.prefix_len() == 28)
            .map(|p| p.trunc())
            .collect();
        // What the cloud says this ENI has, primaries of any ENI excluded.
        let mut cloud: BTreeSet<Ipv4Addr> = o.secondary_ips.iter().copied().collect();
        cloud.extend(listed_prefixes.iter().flat_map(all_addresses));
        cloud.retain(|ip| !cloud_primaries.contains(ip));

        // Leave: what the cloud does not list.
        let stale: Vec<Ipv4Addr> = eni
            .ips
            .keys()
            .filter(|ip| !cloud.contains(ip))
            .copied()
            .collect();
        for ip in stale {
            match eni.ips.remove(&ip) {
                Some(Slot::Assigned { owner }) => r.lost.push((ip, owner)),
                Some(Slot::Free { .. }) => r.dropped.push(ip),
                None => {}
            }
        }
        eni.prefixes.retain(|p| listed_prefixes.contains(p));

        // Join: what the cloud lists that the pool does not know.
        for p in &listed_prefixes {
            eni.prefixes.insert(*p);
        }
        for ip in &cloud {
            if eni.ips.contains_key(ip) {
                continue;
            }
            let asked = expected.ips.contains(ip)
                || expected
                    .prefixes
                    .iter()
                    .any(|p| p.contains(ip) && listed_prefixes.contains(p));
            let since = if asked { None } else { Some(now) };
            eni.ips.insert(*ip, Slot::Free { since });
            if asked {
                r.confirmed.push(*ip);
            } else {
                r.adopted.push(*ip);
            }
        }
    }

    // Anything the replies claimed that the cloud does not list.
    let listed: BTreeSet<Ipv4Addr> = pool
        .enis
        .values()
        .flat_map(|e| e.ips.keys().copied())
        .collect();
    r.unconfirmed.extend(
        expected
            .ips
            .iter()
            .filter(|ip| !listed.contains(ip))
            .copied(),
    );
    r.unconfirmed.extend(
        expected
            .prefixes
            .iter()
            .filter(|p| !pool.enis.values().any(|e| e.prefixes.contains(p)))
            .map(|p| p.network()),
    );
    // A primary that a reply or an older pool put anywhere leaves now.
    for p in cloud_primaries {
        for eni in pool.enis.values_mut() {
            if let Some(Slot::Assigned { owner }) = eni.ips.remove(&p) {
                r.lost.push((p, owner));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::eni_pool::PoolLimits;

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, n)
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    fn pool() -> EniPool {
        let mut p = EniPool::new(
            PoolLimits {
                max_enis: 3,
                secondary_per_eni: 9,
            },
            Duration::from_secs(30),
        );
        p.add_eni("eni-0", 0, 254);
        p.set_primary("eni-0", ip(10));
        p.add_ips("eni-0", &[ip(11), ip(12), ip(13)]);
        p
    }

    fn seen(secondary: &[u8]) -> ObservedEni {
        ObservedEni {
            id: "eni-0".into(),
            device_index: 0,
            primary_ip: ip(10),
            secondary_ips: secondary.iter().map(|n| ip(*n)).collect(),
            prefixes: Vec::new(),
        }
    }

    /// Issue 9: an address unassigned out of band left the pool only on
    /// restart; the next pod got it and had no connectivity.
    #[test]
    fn an_address_the_cloud_no_longer_lists_leaves_and_a_holder_is_reported() {
        let mut p = pool();
        let now = Instant::now();
        let held = p.allocate("pw/c1/eth0", now).expect("alloc");
        assert_eq!(held.ip, ip(11));
        // Out of band: 11 (held) and 12 (free) unassigned.
        let r = reconcile(&mut p, &[seen(&[13])], &Expected::default(), now);
        assert_eq!(r.lost, vec![(ip(11), "pw/c1/eth0".to_string())]);
        assert_eq!(r.dropped, vec![ip(12)]);
        assert!(!p.contains(ip(11)) && !p.contains(ip(12)));
        // Every later pod gets an address the cloud lists.
        assert_eq!(p.allocate("c2", now).map(|a| a.ip), Some(ip(13)));
        assert_eq!(p.allocate("c3", now), None);
    }

    /// Issue 9: a reply listing the primary got it handed to a pod. The
    /// reconcile never lets a primary in, and removes one already there.
    #[test]
    fn the_primary_never_enters_and_leaves_if_a_reply_put_it_there() {
        let mut p = EniPool::new(
            PoolLimits {
                max_enis: 3,
                secondary_per_eni: 9,
            },
            Duration::ZERO,
        );
        let now = Instant::now();
        p.add_eni("eni-0", 0, 254);
        // An old pool that took a reply at its word.
        p.add_ips("eni-0", &[ip(10), ip(11)]);
        p.restore(ip(10), "pw/victim/eth0");
        let mut o = seen(&[11]);
        o.secondary_ips.push(ip(10)); // a cloud listing it as secondary too
        let r = reconcile(&mut p, &[o], &Expected::default(), now);
        assert_eq!(r.lost, vec![(ip(10), "pw/victim/eth0".to_string())]);
        assert!(!p.contains(ip(10)));
        for i in 0..5 {
            assert_ne!(
                p.allocate(&format!("c{i}"), now).map(|a| a.ip),
                Some(ip(10))
            );
        }
    }

    #[test]
    fn unknown_addresses_are_adopted_after_the_cooldown_and_expected_ones_at_once() {
        let mut p = pool();
        let now = Instant::now();
        let expected = Expected {
            ips: [ip(14), ip(99)].into_iter().collect(),
            prefixes: [net("10.0.1.32/28")].into_iter().collect(),
        };
        let mut o = seen(&[11, 12, 13, 14, 15]);
        o.prefixes = vec![net("10.0.1.32/28"), net("10.0.1.48/28")];
        let r = reconcile(&mut p, &[o], &expected, now);
        assert!(r.confirmed.contains(&ip(14)) && r.confirmed.contains(&ip(32)));
        assert!(r.adopted.contains(&ip(15)) && r.adopted.contains(&ip(48)));
        assert_eq!(r.unconfirmed, vec![ip(99)]);
        assert_eq!(p.prefix_count(), 2);
        // Usable now: 11..=14 and the expected prefix (16); not 15 nor the
        // unasked prefix, until the cool-down has passed.
        assert_eq!(p.free(now), 4 + 16);
        assert_eq!(p.free(now + Duration::from_secs(31)), 5 + 32);
        // A second pass changes nothing.
        let again = reconcile(
            &mut p,
            &[{
                let mut o = seen(&[11, 12, 13, 14, 15]);
                o.prefixes = vec![net("10.0.1.32/28"), net("10.0.1.48/28")];
                o
            }],
            &Expected::default(),
            now,
        );
        assert!(!again.changed(), "{again:?}");
    }

    #[test]
    fn a_prefix_gone_takes_its_addresses_and_an_eni_gone_takes_everything() {
        let mut p = pool();
        let now = Instant::now();
        p.add_eni("eni-1", 1, 2);
        p.set_primary("eni-1", ip(20));
        p.add_prefixes("eni-1", &[net("10.0.1.64/28")]);
        p.add_prefixes("eni-0", &[net("10.0.1.32/28")]);
        p.restore(ip(33), "pw/c/eth0");
        let r = reconcile(&mut p, &[seen(&[11, 12, 13])], &Expected::default(), now);
        assert_eq!(r.enis_gone, vec!["eni-1".to_string()]);
        assert_eq!(r.lost, vec![(ip(33), "pw/c/eth0".to_string())]);
        assert_eq!(r.dropped.len(), 15 + 16);
        assert_eq!((p.eni_count(), p.prefix_count(), p.total()), (1, 0, 3));
    }

    #[test]
    fn an_attached_eni_the_pool_does_not_know_is_reported_not_adopted() {
        let mut p = pool();
        let other = ObservedEni {
            id: "eni-9".into(),
            device_index: 2,
            primary_ip: ip(90),
            secondary_ips: vec![ip(91)],
            prefixes: Vec::new(),
        };
        let r = reconcile(
            &mut p,
            &[seen(&[11, 12, 13]), other.clone()],
            &Expected::default(),
            Instant::now(),
        );
        assert_eq!(r.unknown_enis, vec![other]);
        assert!(!p.contains(ip(91)));
    }
}
