//! Splitting an outside range (e.g. 0.0.0.0/0) into the fewest CIDRs
//! inside each of which every address gets the same answer: no ipBlock,
//! exception, security-group source, allow-list entry or ENI address lies
//! strictly inside one of them. One address of each (not a cluster
//! address) then stands for all of it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The most parts one range is split into; past it the audit says the
/// input is too fragmented rather than running for minutes.
pub const MAX_ATOMS: usize = 65_536;

/// The parts of `root` and, for each, an address that stands for it (the
/// first one not in `cluster`); parts made only of cluster addresses are
/// left out. `None` when the split would exceed [`MAX_ATOMS`].
pub fn split(
    root: Ipv4Net,
    bounds: &[Ipv4Net],
    cluster: &BTreeSet<Ipv4Addr>,
) -> Option<Vec<(Ipv4Net, Ipv4Addr)>> {
    let bounds: Vec<Ipv4Net> = bounds
        .iter()
        .map(|b| b.trunc())
        .filter(|b| root.contains(b) && b.prefix_len() > root.prefix_len())
        .collect();
    let mut out = Vec::new();
    let mut stack = vec![root.trunc()];
    while let Some(net) = stack.pop() {
        let inner = bounds
            .iter()
            .any(|b| b.prefix_len() > net.prefix_len() && net.contains(b));
        if inner {
            match net.subnets(net.prefix_len() + 1) {
                Ok(halves) => {
                    let mut h: Vec<Ipv4Net> = halves.collect();
                    h.reverse(); // lower half first out of the stack
                    stack.extend(h);
                }
                Err(_) => out.push(net),
            }
        } else {
            out.push(net);
        }
        if out.len() + stack.len() > MAX_ATOMS {
            return None;
        }
    }
    Some(
        out.into_iter()
            .filter_map(|n| representative(n, cluster).map(|ip| (n, ip)))
            .collect(),
    )
}

/// The first address of `net` that is not a cluster address.
fn representative(net: Ipv4Net, cluster: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    // At most |cluster| + 1 steps: every skipped address is a cluster one.
    let mut ip = u32::from(net.network());
    let last = u32::from(net.broadcast());
    loop {
        let a = Ipv4Addr::from(ip);
        if !cluster.contains(&a) {
            return Some(a);
        }
        if ip == last {
            return None;
        }
        ip += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    #[test]
    fn a_range_splits_around_inner_bounds_only() {
        let none = BTreeSet::new();
        let parts = split(net("10.0.0.0/16"), &[net("10.0.1.0/24")], &none).expect("parts");
        let nets: Vec<String> = parts.iter().map(|(n, _)| n.to_string()).collect();
        assert!(nets.contains(&"10.0.1.0/24".to_string()), "{nets:?}");
        assert_eq!(parts.len(), 9, "{nets:?}"); // one free half at /17../23, then two /24s
                                                // Bounds outside or equal to the root change nothing.
        let whole = split(
            net("10.0.0.0/16"),
            &[net("10.0.0.0/16"), net("192.168.0.0/24")],
            &none,
        )
        .expect("parts");
        assert_eq!(
            whole,
            vec![(net("10.0.0.0/16"), Ipv4Addr::new(10, 0, 0, 0))]
        );
        // Every address is in exactly one part.
        let mut total: u64 = 0;
        for (n, _) in &parts {
            total += 1u64 << (32 - n.prefix_len());
        }
        assert_eq!(total, 1 << 16);
    }

    #[test]
    fn cluster_addresses_are_taken_out() {
        let pod = Ipv4Addr::new(10, 0, 1, 20);
        let cluster = BTreeSet::from([pod, Ipv4Addr::new(10, 0, 1, 21)]);
        let parts = split(net("10.0.1.20/31"), &[net("10.0.1.20/32")], &cluster).expect("parts");
        assert!(parts.is_empty(), "{parts:?}");
        let parts = split(net("10.0.1.16/29"), &[], &cluster).expect("parts");
        assert_eq!(
            parts,
            vec![(net("10.0.1.16/29"), Ipv4Addr::new(10, 0, 1, 16))]
        );
        let parts = split(net("10.0.1.20/30"), &[], &cluster).expect("parts");
        assert_eq!(
            parts[0].1,
            Ipv4Addr::new(10, 0, 1, 22),
            "skips cluster addresses"
        );
    }
}
