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

fn enis(n: u32) -> PoolTargets {
    PoolTargets {
        target: WarmTarget::Enis(n),
        prefixes: false,
    }
}

fn ips(warm: u32, minimum: u32, prefixes: bool) -> PoolTargets {
    PoolTargets {
        target: WarmTarget::Ips { warm, minimum },
        prefixes,
    }
}

fn prefixes(n: u32) -> PoolTargets {
    PoolTargets {
        target: WarmTarget::Prefixes(n),
        prefixes: true,
    }
}

/// Limits come from DescribeInstanceTypes: absurd ones must not wrap.
#[test]
fn max_pod_ips_of_absurd_limits_saturate() {
    let l = PoolLimits {
        max_enis: 65_536,
        secondary_per_eni: 65_536,
    };
    assert_eq!(l.max_pod_ips(), u32::MAX);
    assert_eq!(l.max_prefix_ips(), u32::MAX);
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
        p.plan(enis(1)),
        PoolPlan::AssignIps {
            eni_id: "eni-0".into(),
            count: 9
        }
    );
    p.add_ips("eni-0", &(10..19).map(ip).collect::<Vec<_>>());
    assert_eq!(p.plan(enis(1)), PoolPlan::Satisfied);
    let a = p.allocate("a", now).expect("first");
    assert_eq!((a.ip, a.device_number, a.route_table), (ip(10), 0, 254));
    assert_eq!(
        p.plan(enis(1)),
        PoolPlan::AttachEni {
            device_index: 1,
            count: 9,
            prefixes: false,
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
    assert_eq!(p.plan(enis(1)), PoolPlan::AtLimit);
    assert!(p.release(got[3].ip, now));
    assert!(!p.release(got[3].ip, now), "double release");
    assert_eq!(p.allocate("again", now).map(|a| a.ip), Some(got[3].ip));
}

#[test]
fn minimum_target_holds_addresses_without_a_warm_margin() {
    let mut p = m5_large();
    p.add_eni("eni-0", 0, 254);
    let t = ips(0, 12, false);
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
            count: 3,
            prefixes: false,
        }
    );
    p.add_eni("eni-1", 1, 2);
    p.add_ips("eni-1", &(20..23).map(ip).collect::<Vec<_>>());
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
    let Some(Surplus::Ips { eni_id, ips: got }) = p.take_surplus(PoolTargets::warm(4), now) else {
        panic!("surplus")
    };
    assert_eq!((eni_id.as_str(), got.len()), ("eni-1", 9));
    let Some(Surplus::Ips { eni_id, ips: got }) = p.take_surplus(PoolTargets::warm(4), now) else {
        panic!("more")
    };
    assert_eq!((eni_id.as_str(), got.len()), ("eni-0", 2));
    assert!(
        got.iter().all(|i| !held.iter().any(|h| h.ip == *i)),
        "assigned addresses are never taken"
    );
    assert_eq!(p.free(now), 4);
    // eni-1 is empty now: it goes as a whole (detach and delete).
    assert_eq!(
        p.take_surplus(PoolTargets::warm(4), now),
        Some(Surplus::Eni {
            eni_id: "eni-1".into()
        })
    );
    assert_eq!(p.take_surplus(PoolTargets::warm(4), now), None);
    // The minimum wins over the warm target.
    assert_eq!(p.take_surplus(ips(0, 7, false), now), None);
}

#[test]
fn an_address_target_asks_only_for_what_is_short() {
    let mut p = m5_large();
    p.add_eni("eni-0", 0, 254);
    let t = ips(3, 0, false);
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
            count: 3,
            prefixes: false,
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

/// Issue 9: an Assign reply listing the ENI's primary put it in the pool
/// and a pod got the node's own address.
#[test]
fn a_primary_address_is_never_handed_out() {
    let mut p = m5_large();
    let now = Instant::now();
    p.add_eni("eni-0", 0, 254);
    p.set_primary("eni-0", ip(5));
    p.add_eni("eni-1", 1, 2);
    p.set_primary("eni-1", ip(6));
    // A reply that lists every address of the ENI, primaries included.
    p.add_ips("eni-0", &[ip(5), ip(6), ip(7)]);
    p.add_prefixes("eni-1", &["10.0.0.0/28".parse().expect("net")]);
    let mut got = Vec::new();
    while let Some(a) = p.allocate("x", now) {
        got.push(a.ip);
    }
    assert!(!got.contains(&ip(5)) && !got.contains(&ip(6)), "{got:?}");
    assert_eq!(got.len(), 1 + 14);
    // A primary learnt after a pod got it: it leaves, the holder is named.
    let mut p = m5_large();
    p.add_eni("eni-0", 0, 254);
    p.add_ips("eni-0", &[ip(5)]);
    p.allocate("pw/c/eth0", now).expect("alloc");
    assert_eq!(p.set_primary("eni-0", ip(5)), Some("pw/c/eth0".to_string()));
    assert!(!p.contains(ip(5)));
}

#[test]
fn prefixes_take_one_slot_each_and_give_sixteen_addresses() {
    let mut p = EniPool::new(
        PoolLimits {
            max_enis: 1,
            secondary_per_eni: 2,
        },
        Duration::ZERO,
    );
    p.add_eni("eni-0", 0, 254);
    assert_eq!(
        p.plan(prefixes(1)),
        PoolPlan::AssignPrefixes {
            eni_id: "eni-0".into(),
            count: 1
        }
    );
    p.add_prefixes("eni-0", &["10.0.0.16/28".parse().expect("net")]);
    assert_eq!(p.total(), 16);
    assert_eq!(p.slots_left(), 1);
    p.add_ips("eni-0", &[ip(99)]);
    assert!(p.at_limit());
    assert_eq!(p.prefix_count(), 1);
    let a = p.allocate("x", Instant::now()).expect("alloc");
    assert_eq!(a.ip, ip(16), "the prefix's first address is a pod address");
}

/// Pods pack into the prefix already in use, whatever the addresses: a
/// lower prefix delegated later stays whole (found by a new user: 2 pods
/// held 3 prefixes, one per pod plus the warm one).
#[test]
fn pods_pack_into_the_prefix_in_use_before_a_lower_one() {
    let mut p = EniPool::new(
        PoolLimits {
            max_enis: 1,
            secondary_per_eni: 3,
        },
        Duration::ZERO,
    );
    p.add_eni("eni-0", 0, 254);
    p.add_prefixes("eni-0", &["10.0.0.32/28".parse().expect("net")]);
    let now = Instant::now();
    assert_eq!(p.allocate("a", now).expect("a").ip, ip(32));
    // The warm prefix arrives, lower in the subnet than the first.
    p.add_prefixes("eni-0", &["10.0.0.16/28".parse().expect("net")]);
    for (i, owner) in ["b", "c", "d"].into_iter().enumerate() {
        let got = p.allocate(owner, now).expect("alloc").ip;
        assert_eq!(got, ip(33 + u8::try_from(i).expect("small")), "{owner}");
    }
    // One whole /28 is still free: no third prefix is needed.
    assert_eq!(p.plan(prefixes(1)), PoolPlan::Satisfied);
}

// ---------------------------------------------------------------------
// The worked examples of the Amazon VPC CNI's documentation, as tables.
//
// aws/amazon-vpc-cni-k8s docs/eni-and-ip-target.md ("Some example cases")
// and docs/prefix-and-ip-target.md ("Examples"): t3.small has 3 ENIs of 4
// IPv4 addresses (3 slots each), p3dn.24xlarge 15 ENIs of 50 (49 slots).
// Each row: the pods on the node, then the steady state the pool reaches.
// ---------------------------------------------------------------------

const T3_SMALL: PoolLimits = PoolLimits {
    max_enis: 3,
    secondary_per_eni: 3,
};
const P3DN: PoolLimits = PoolLimits {
    max_enis: 15,
    secondary_per_eni: 49,
};

/// The pool manager and ADDs, without a cloud: every plan is granted at
/// once with fresh addresses (or aligned /28s), `pods` pods arrive one by
/// one, and the pool settles. Returns the pool.
fn simulate(limits: PoolLimits, t: PoolTargets, pods: u32) -> EniPool {
    let mut p = EniPool::new(limits, Duration::ZERO);
    let now = Instant::now();
    p.add_eni("eni-0", 0, 254);
    let mut next: u32 = u32::from(Ipv4Addr::new(10, 1, 0, 0));
    let mut settle = |p: &mut EniPool| {
        for _ in 0..1000 {
            let plan = p.plan(t);
            let (eni, count, pfx) = match plan {
                PoolPlan::Satisfied | PoolPlan::AtLimit => return,
                PoolPlan::AssignIps { eni_id, count } => (eni_id, count, false),
                PoolPlan::AssignPrefixes { eni_id, count } => (eni_id, count, true),
                PoolPlan::AttachEni {
                    device_index,
                    count,
                    prefixes,
                } => {
                    let id = format!("eni-{device_index}");
                    p.add_eni(&id, device_index, device_index + 1);
                    (id, count, prefixes)
                }
            };
            for _ in 0..count {
                if pfx {
                    let net = Ipv4Net::new(Ipv4Addr::from(next), 28).expect("net");
                    p.add_prefixes(&eni, &[net]);
                    next += 16;
                } else {
                    p.add_ips(&eni, &[Ipv4Addr::from(next)]);
                    next += 1;
                }
            }
        }
        panic!("the pool never settled");
    };
    settle(&mut p);
    for i in 0..pods {
        if p.allocate(&format!("pod{i}"), now).is_none() {
            settle(&mut p);
            p.allocate(&format!("pod{i}"), now)
                .expect("an address after growing");
        }
        settle(&mut p);
    }
    p
}

/// (ENIs, addresses held, unused addresses) of a settled pool.
fn secondary_row(p: &EniPool) -> (u32, usize, usize) {
    (p.eni_count(), p.total(), p.free_total())
}

#[test]
fn eni_and_ip_targets_match_the_vpc_cni_examples() {
    // (limits, targets, pods, ENIs, secondary IPs, unused IPs)
    let rows = [
        (T3_SMALL, enis(1), 0, 1, 3, 3),
        (T3_SMALL, enis(1), 5, 3, 9, 4),
        (T3_SMALL, enis(1), 9, 3, 9, 0),
        (T3_SMALL, ips(1, 1, false), 0, 1, 1, 1),
        (T3_SMALL, ips(1, 1, false), 5, 2, 6, 1),
        (T3_SMALL, ips(1, 1, false), 9, 3, 9, 0),
        (T3_SMALL, ips(2, 5, false), 0, 2, 5, 5),
        (T3_SMALL, ips(2, 5, false), 5, 3, 7, 2),
        (T3_SMALL, ips(2, 5, false), 9, 3, 9, 0),
        (P3DN, enis(1), 0, 1, 49, 49),
        (P3DN, enis(1), 3, 2, 98, 95),
        (P3DN, enis(1), 95, 3, 147, 52),
        (P3DN, ips(5, 10, false), 0, 1, 10, 10),
        (P3DN, ips(5, 10, false), 7, 1, 12, 5),
        (P3DN, ips(5, 10, false), 15, 1, 20, 5),
        (P3DN, ips(5, 10, false), 45, 2, 50, 5),
    ];
    for (i, (limits, t, pods, want_enis, want_ips, unused)) in rows.into_iter().enumerate() {
        let p = simulate(limits, t, pods);
        assert_eq!(
            secondary_row(&p),
            (want_enis, want_ips, unused),
            "row {i}: {t:?} with {pods} pods"
        );
    }
}

/// docs/prefix-and-ip-target.md. Two deviations, both where the table
/// contradicts its own text: the t3.small row "7 / 20 / 0 pods" lists one
/// attached prefix and 16 unused addresses but two prefixes per ENI, and
/// the text says a minimum of 20 acts as 32 (two prefixes) — two it is;
/// the p3dn.24xlarge rows list a second and third ENI with no prefix while
/// the text says "New ENI will only be allocated after we exhaust all the
/// prefixes allocated to existing ENIs" — the prefix and address counts
/// are checked there, the ENI count (always 1 on a 49-slot ENI) is not.
#[test]
fn prefix_targets_match_the_vpc_cni_examples() {
    // (limits, targets, pods, ENIs or None, prefixes, unused IPs)
    let rows = [
        (T3_SMALL, prefixes(1), 0, Some(1), 1, 16),
        (T3_SMALL, prefixes(1), 5, Some(1), 2, 27),
        (T3_SMALL, prefixes(1), 16, Some(1), 2, 16),
        (T3_SMALL, prefixes(1), 17, Some(1), 3, 31),
        (T3_SMALL, prefixes(1), 58, Some(2), 5, 22),
        (T3_SMALL, ips(1, 1, true), 0, Some(1), 1, 16),
        (T3_SMALL, ips(1, 1, true), 5, Some(1), 1, 11),
        (T3_SMALL, ips(1, 1, true), 17, Some(1), 2, 15),
        (T3_SMALL, ips(1, 1, true), 58, Some(2), 4, 6),
        (T3_SMALL, ips(7, 20, true), 0, Some(1), 2, 32),
        (T3_SMALL, ips(7, 20, true), 5, Some(1), 2, 27),
        (T3_SMALL, ips(7, 20, true), 17, Some(1), 2, 15),
        (T3_SMALL, ips(7, 20, true), 58, Some(2), 5, 22),
        (P3DN, prefixes(1), 0, None, 1, 16),
        (P3DN, prefixes(1), 3, None, 2, 29),
        (P3DN, prefixes(1), 95, None, 7, 17),
        (P3DN, ips(5, 10, true), 0, None, 1, 16),
        (P3DN, ips(5, 10, true), 7, None, 1, 9),
        (P3DN, ips(5, 10, true), 15, None, 2, 17),
        (P3DN, ips(5, 10, true), 45, None, 4, 19),
    ];
    for (i, (limits, t, pods, want_enis, want_prefixes, unused)) in rows.into_iter().enumerate() {
        let p = simulate(limits, t, pods);
        if let Some(e) = want_enis {
            assert_eq!(p.eni_count(), e, "row {i}: ENIs");
        }
        assert_eq!(
            (p.prefix_count(), p.free_total()),
            (want_prefixes, unused),
            "row {i}: {t:?} with {pods} pods"
        );
    }
}

/// After a burst of ADDs and then DELs, the surplus goes back until the
/// pool is what the targets want for no pods: whole ENIs detached, extra
/// addresses and prefixes returned; never the primary ENI.
#[test]
fn after_the_pods_leave_the_pool_shrinks_back_to_its_targets() {
    for (limits, t) in [
        (T3_SMALL, enis(1)),
        (T3_SMALL, ips(1, 1, false)),
        (T3_SMALL, ips(2, 5, false)),
        (T3_SMALL, prefixes(1)),
        (T3_SMALL, ips(7, 20, true)),
        (P3DN, enis(1)),
    ] {
        let idle = simulate(limits, t, 0);
        let mut p = simulate(limits, t, 9);
        let now = Instant::now();
        let held: Vec<Ipv4Addr> = p
            .view(now)
            .iter()
            .flat_map(|e| e.addresses.iter())
            .filter(|a| a.state == "assigned")
            .map(|a| a.ip)
            .collect();
        for a in held {
            assert!(p.release(a, now));
        }
        let mut rounds = 0;
        while let Some(s) = p.take_surplus(t, now) {
            if let Surplus::Eni { eni_id } = &s {
                assert_ne!(eni_id, "eni-0", "the primary ENI is never detached");
            }
            rounds += 1;
            assert!(rounds < 100, "no end to the surplus");
        }
        assert_eq!(p.plan(t), PoolPlan::Satisfied, "{t:?}");
        assert_eq!(
            (p.eni_count(), p.total(), p.prefix_count()),
            (idle.eni_count(), idle.total(), idle.prefix_count()),
            "{t:?}"
        );
    }
}
