//! vpc mode's view of the node for `/v1/state`, `/healthz` and the gauges:
//! every attached ENI with each address's state and holder, the pool's
//! targets and what the pool manager is doing. Read under the state lock,
//! from memory only.

use std::time::Instant;

use podwire_cloud::limits::node_max_pods;
use podwire_ipam::eni_pool::PREFIX_ADDRESSES;
use podwire_ipam::WarmTarget;

use crate::introspect::{AddressState, Capacity, EniState, NodeState, SubnetCapacity, Targets};

use super::VpcAgent;

fn n32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl VpcAgent {
    pub(super) fn introspect(&self, now: Instant) -> NodeState {
        let (ready, message, free, assigned) = match self.status() {
            podwire_proto::Response::Status { status } => (
                status.ready,
                status.message,
                status.free_ips,
                status.assigned_ips,
            ),
            _ => (false, "no status".into(), 0, 0),
        };
        let st = self.lock();
        let enis: Vec<EniState> = st
            .pool
            .view(now)
            .into_iter()
            .map(|e| EniState {
                id: e.id,
                device_index: e.device_number,
                addresses: e
                    .addresses
                    .into_iter()
                    .map(|a| AddressState {
                        ip: a.ip,
                        state: a.state,
                        holder: a.owner,
                    })
                    .collect(),
            })
            .collect();
        let t = self.current_targets(&st, now);
        let c = &self.config;
        let (rule, warm_ip, minimum_ip) = match t.target {
            WarmTarget::Enis(_) => ("warm_eni", 0, 0),
            WarmTarget::Ips { warm, minimum } => ("warm_ip", warm, minimum),
            WarmTarget::Prefixes(_) => ("warm_prefix", 0, 0),
        };
        let limits = self.node.limits;
        let per_slot = if t.prefixes { PREFIX_ADDRESSES } else { 1 };
        let capacity = Capacity {
            prefix_delegation: c.prefix_delegation,
            max_pods: node_max_pods(limits.max_pod_ips(), c.prefix_delegation, self.node.vcpus),
            ips_in_use: n32(st.pool.assigned()),
            ips_warm: n32(st.pool.free_total()),
            ips_possible: st.pool.slots_left().saturating_mul(per_slot),
            enis_used: st.pool.eni_count(),
            enis_allowed: limits.max_enis,
            prefixes: st.pool.prefix_count(),
            subnet: st.subnet.as_ref().map(|s| SubnetCapacity {
                id: s.id.clone(),
                cidr: s.cidr,
                available: s.available,
            }),
        };
        NodeState {
            node: self.node.name.clone(),
            mode: "vpc".into(),
            ready,
            message,
            free_ips: free,
            assigned_ips: assigned,
            eni_limit: Some(limits.max_enis),
            enis,
            blocks: Vec::new(),
            targets: Some(Targets {
                rule,
                warm_eni_target: matches!(t.target, WarmTarget::Enis(_))
                    .then_some(c.warm_eni_target),
                warm_ip_target: warm_ip,
                minimum_ip_target: minimum_ip,
                warm_prefix_target: match t.target {
                    WarmTarget::Prefixes(n) => Some(n),
                    _ => None,
                },
                prefix_delegation: t.prefixes,
                whole_enis: matches!(t.target, WarmTarget::Enis(_)),
            }),
            last_plan: Some(format!("{:?}", st.last_plan)),
            capacity: Some(capacity),
            peers: None,
            last_errors: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    use podwire_ipam::EniPool;
    use podwire_proto::Response;

    use super::super::testing::{agent, req, state_dir, LIMITS};

    /// The per-ENI view adds up to the pool's own counts, through ADD,
    /// DEL (cooling) and the cool-down's end.
    #[test]
    fn the_per_eni_view_matches_the_pool_through_add_and_del() {
        let dir = state_dir();
        let a = agent(
            EniPool::new(LIMITS, Duration::from_secs(30)),
            Some(0),
            0,
            &dir,
        );
        {
            let mut st = a.lock();
            st.add_eni("eni-0", 0, podwire_proto::TABLE_MAIN);
            st.add_ips(
                "eni-0",
                &[Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2)],
            );
            st.add_eni("eni-1", 1, 2);
            st.add_ips("eni-1", &[Ipv4Addr::new(10, 0, 2, 1)]);
        }
        let r = a.add(req("c1"), Instant::now() + Duration::from_secs(5));
        assert!(matches!(r, Response::Allocated { .. }), "{r:?}");
        let s = a.introspect(Instant::now());
        assert_eq!((s.free_ips, s.assigned_ips), (2, 1));
        let counts: Vec<_> = s.enis.iter().map(|e| (e.id.as_str(), e.counts())).collect();
        assert_eq!(counts[0].0, "eni-0");
        assert_eq!(
            (counts[0].1.total, counts[0].1.assigned, counts[0].1.free),
            (2, 1, 1)
        );
        assert_eq!((counts[1].1.total, counts[1].1.free), (1, 1));
        let held = &s.enis[0].addresses[0];
        assert_eq!(held.holder.as_deref(), Some("pw/c1/eth0"));
        assert_eq!(s.eni_limit, Some(LIMITS.max_enis));

        // DEL: the address cools down (30 s), then is free again.
        let _ = a.del(&req("c1").key);
        let c = a.introspect(Instant::now()).enis[0].counts();
        assert_eq!((c.assigned, c.cooling, c.free), (0, 1, 1));
        let later = a.introspect(Instant::now() + Duration::from_secs(31));
        let c = later.enis[0].counts();
        assert_eq!((c.assigned, c.cooling, c.free), (0, 0, 2));

        // The gauges show the same.
        let text = a.metrics.render(&a.introspect(Instant::now()));
        assert!(
            text.contains("podwire_addresses{id=\"eni-0\",scope=\"eni\",state=\"cooling\"} 1"),
            "{text}"
        );
        assert!(text.contains("podwire_enis_attached 2"), "{text}");
        assert!(text.contains("podwire_enis_allowed 2"), "{text}");
    }

    #[test]
    fn an_add_that_finds_no_address_is_counted() {
        let dir = state_dir();
        let a = agent(
            EniPool::new(LIMITS, Duration::from_secs(30)),
            Some(0),
            0,
            &dir,
        );
        {
            let mut st = a.lock();
            st.add_eni("eni-0", 0, podwire_proto::TABLE_MAIN);
        }
        let r = a.add(req("c1"), Instant::now() + Duration::from_millis(50));
        assert!(matches!(r, Response::Error { .. }), "{r:?}");
        let text = a.metrics.render(&a.introspect(Instant::now()));
        assert!(
            text.contains("podwire_no_address_available_total{outcome=\"timed_out\"} 1"),
            "{text}"
        );
    }

    /// contract9.md: the capacity figures in /v1/state and as gauges.
    #[test]
    fn capacity_figures_are_in_the_state_and_the_gauges() {
        let dir = state_dir();
        let a = agent(EniPool::new(LIMITS, Duration::from_secs(30)), None, 0, &dir);
        {
            let mut st = a.lock();
            st.add_eni("eni-0", 0, podwire_proto::TABLE_MAIN);
            st.add_ips(
                "eni-0",
                &[Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2)],
            );
            st.subnet = Some(podwire_cloud::ec2::Subnet {
                id: "subnet-pwt".into(),
                cidr: "10.0.0.0/16".parse().expect("cidr"),
                available: 77,
            });
        }
        let r = a.add(req("c1"), Instant::now() + Duration::from_secs(5));
        assert!(matches!(r, Response::Allocated { .. }), "{r:?}");
        let s = a.introspect(Instant::now());
        let json = serde_json::to_value(&s).expect("json");
        let c = &json["capacity"];
        // LIMITS: 2 ENIs x 3 slots; 2 held on eni-0, 1 more there, 3 on a
        // second ENI: 4 possible. Max pods 2 x 3 + 2.
        assert_eq!(c["prefix_delegation"], false);
        assert_eq!(c["max_pods"], 8);
        assert_eq!(
            (c["ips_in_use"].as_u64(), c["ips_warm"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(c["ips_possible"], 4);
        assert_eq!(
            (c["enis_used"].as_u64(), c["enis_allowed"].as_u64()),
            (Some(1), Some(2))
        );
        assert_eq!(c["prefixes"], 0);
        assert_eq!(c["subnet"]["available"], 77);
        assert_eq!(c["subnet"]["cidr"], "10.0.0.0/16");
        assert_eq!(json["targets"]["rule"], "warm_eni");
        // `podwirectl capacity --live` reads the same figures back.
        let live = podwire_capacity::live::parse_state(&json.to_string()).expect("live parses");
        assert_eq!(live.figures.as_ref(), s.capacity.as_ref());
        assert_eq!(live.node, s.node);
        let text = a.metrics.render(&s);
        for want in [
            "podwire_capacity_ips{state=\"in_use\"} 1",
            "podwire_capacity_ips{state=\"warm\"} 1",
            "podwire_capacity_ips{state=\"possible\"} 4",
            "podwire_capacity_enis{state=\"used\"} 1",
            "podwire_capacity_enis{state=\"allowed\"} 2",
            "podwire_capacity_max_pods 8",
            "podwire_capacity_prefixes 0",
            "podwire_subnet_available_ips 77",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
