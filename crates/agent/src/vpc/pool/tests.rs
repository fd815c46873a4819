//! The pool manager against a fake EC2 on loopback (no root, no kernel):
//! what it does with replies that lie, addresses unassigned out of band,
//! foreign and leftover ENIs, a hung cloud, and a subnet without /28s.

use std::net::Ipv4Addr;

use podwire_cloud::testing::Answer;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podwire_ipam::{EniPool, PoolLimits};
use podwire_proto::{ErrorKind, Response};

use super::super::testing::{config, node, req, state_dir, StateDir};
use super::super::VpcAgent;
use super::*;

type Handler = dyn Fn(&str, &[(String, String)]) -> (u16, String) + Send + Sync;
/// Every request seen: (action, its parameters).
type Log = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// A fake EC2 (podwire-cloud's loopback server): answers each request
/// with `handler(action, params)` (status 0: never answers); every
/// (action, params) seen is logged.
fn fake_ec2(handler: Arc<Handler>) -> (String, Log) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let endpoint = podwire_cloud::testing::serve(move |body, _| {
        let params: Vec<(String, String)> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let action = params
            .iter()
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        seen.lock()
            .expect("log")
            .push((action.clone(), params.clone()));
        match handler(&action, &params) {
            (0, _) => Answer::Hang,
            (status, body) => Answer::Reply(status, body),
        }
    });
    (endpoint, log)
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, n)
}

/// One ENI item as EC2 lists it.
fn eni_item(id: &str, device: Option<u32>, primary: u8, secondary: &[u8], extra: &str) -> String {
    let mut ips = format!(
        "<item><privateIpAddress>{}</privateIpAddress><primary>true</primary></item>",
        ip(primary)
    );
    for s in secondary {
        ips.push_str(&format!(
            "<item><privateIpAddress>{}</privateIpAddress><primary>false</primary></item>",
            ip(*s)
        ));
    }
    let (status, attachment) = match device {
        Some(d) => (
            "in-use",
            format!("<attachment><attachmentId>att-{id}</attachmentId><instanceId>i-pwt</instanceId><deviceIndex>{d}</deviceIndex><status>attached</status></attachment>"),
        ),
        None => ("available", String::new()),
    };
    format!(
        "<item><networkInterfaceId>{id}</networkInterfaceId><status>{status}</status><macAddress>02:00:00:00:00:0{primary}</macAddress><privateIpAddress>{}</privateIpAddress>{attachment}<privateIpAddressesSet>{ips}</privateIpAddressesSet>{extra}</item>",
        ip(primary)
    )
}

fn dni(items: &str) -> (u16, String) {
    (
        200,
        format!("<DescribeNetworkInterfacesResponse><networkInterfaceSet>{items}</networkInterfaceSet></DescribeNetworkInterfacesResponse>"),
    )
}

fn subnets() -> (u16, String) {
    (200, "<DescribeSubnetsResponse><subnetSet><item><subnetId>subnet-pwt</subnetId><cidrBlock>10.0.0.0/16</cidrBlock><availableIpAddressCount>321</availableIpAddressCount></item></subnetSet></DescribeSubnetsResponse>".into())
}

fn error(status: u16, code: &str) -> (u16, String) {
    (
        status,
        format!("<Response><Errors><Error><Code>{code}</Code><Message>pwt</Message></Error></Errors></Response>"),
    )
}

const LIMITS: PoolLimits = PoolLimits {
    max_enis: 3,
    secondary_per_eni: 9,
};

/// An agent whose pool has eni-0 (device 0, primary 10.0.1.10) and
/// `secondary` on it, talking to `endpoint`.
fn agent_on(endpoint: &str, secondary: &[u8], dir: &StateDir) -> VpcAgent {
    let mut pool = EniPool::new(LIMITS, Duration::from_secs(30));
    pool.add_eni("eni-0", 0, podwire_proto::TABLE_MAIN);
    pool.set_primary("eni-0", ip(10));
    pool.add_ips(
        "eni-0",
        &secondary.iter().map(|n| ip(*n)).collect::<Vec<_>>(),
    );
    let mut c = config(None, 0);
    c.eni_gc_grace = Duration::from_secs(300);
    VpcAgent::for_test_with_ec2(node(&pool), c, pool, &dir.0, endpoint).expect("agent")
}

/// Issue 9: against an EC2 whose Assign reply lists all of the ENI's
/// addresses (the primary included), the node's primary went to a pod.
/// Now the reply is a claim; only what the Describe lists as secondary is
/// used, and the primary never.
#[test]
fn an_assign_reply_listing_the_primary_never_gives_it_to_a_pod() {
    let handler: Arc<Handler> = Arc::new(|action, _| {
        match action {
        "AssignPrivateIpAddresses" => (200, format!(
            "<AssignPrivateIpAddressesResponse><assignedPrivateIpAddressesSet>{}</assignedPrivateIpAddressesSet></AssignPrivateIpAddressesResponse>",
            [10u8, 11, 12].iter().map(|n| format!("<item><privateIpAddress>{}</privateIpAddress></item>", ip(*n))).collect::<String>()
        )),
        "DescribeNetworkInterfaces" => dni(&eni_item("eni-0", Some(0), 10, &[11, 12], "")),
        "DescribeSubnets" => subnets(),
        _ => error(400, "InvalidAction"),
    }
    });
    let (endpoint, _log) = fake_ec2(handler);
    let dir = state_dir();
    let a = agent_on(&endpoint, &[], &dir);
    let mut pending = Pending::default();
    assign(&a, &mut pending, "eni-0", AddressRequest::Ips(2)).expect("assign");
    // Not used before the cloud confirms it.
    assert_eq!(a.lock().pool.total(), 0);
    confirm(&a, &mut pending).expect("confirm");
    let mut got = Vec::new();
    for i in 0..4 {
        if let Response::Allocated { allocation } = a.add(
            req(&format!("c{i}")),
            Instant::now() + Duration::from_millis(50),
        ) {
            got.push(allocation.ip);
        }
    }
    assert_eq!(got, vec![ip(11), ip(12)], "never the primary 10.0.1.10");
    // The subnet's figures came with the reconcile.
    assert_eq!(
        a.introspect(Instant::now())
            .capacity
            .and_then(|c| c.subnet)
            .map(|s| s.available),
        Some(321)
    );
}

/// Issue 9: an address unassigned out of band stayed in the pool. Now the
/// reconcile drops it; a pod holding one is logged and counted.
#[test]
fn an_address_unassigned_out_of_band_leaves_the_pool_and_is_counted() {
    let listed = Arc::new(Mutex::new(vec![11u8, 12, 13]));
    let l = listed.clone();
    let handler: Arc<Handler> = Arc::new(move |action, _| match action {
        "DescribeNetworkInterfaces" => dni(&eni_item(
            "eni-0",
            Some(0),
            10,
            &l.lock().expect("listed"),
            "",
        )),
        "DescribeSubnets" => subnets(),
        _ => error(400, "InvalidAction"),
    });
    let (endpoint, _log) = fake_ec2(handler);
    let dir = state_dir();
    let a = agent_on(&endpoint, &[11, 12, 13], &dir);
    let told = Arc::new(Mutex::new(Vec::new()));
    let t = told.clone();
    a.on_lost_address(Box::new(move |key| {
        t.lock().expect("told").push(key.container_id.clone())
    }));
    let r = a.add(req("held"), Instant::now() + Duration::from_secs(1));
    let Response::Allocated { allocation } = r else {
        panic!("{r:?}")
    };
    assert_eq!(allocation.ip, ip(11));
    // Out of band: 11 (held) and 12 (free) are unassigned.
    *listed.lock().expect("listed") = vec![13];
    reconcile_now(&a, &mut Pending::default()).expect("reconcile");
    // The holder is told (its endpoint record goes: the address must not
    // stay in the cluster and policy sets for whoever gets it next).
    assert_eq!(*told.lock().expect("told"), vec!["held".to_string()]);
    let text = a.metrics.render(&a.introspect(Instant::now()));
    assert!(
        text.contains("podwire_pool_lost_addresses_total 1"),
        "{text}"
    );
    let st = a.lock();
    assert!(!st.pool.contains(ip(11)) && !st.pool.contains(ip(12)));
    drop(st);
    let r = a.add(req("next"), Instant::now() + Duration::from_secs(1));
    assert!(matches!(r, Response::Allocated { allocation } if allocation.ip == ip(13)));
}

/// A leftover ENI of this instance (tagged, old) is deleted; a young one
/// (a create-then-attach may be in flight) and a foreign one are not.
#[test]
fn the_sweep_deletes_only_this_instance_s_old_tagged_enis() {
    let tags = |owner: &str, at: &str| {
        format!("<tagSet><item><key>podwire.io/instance-id</key><value>{owner}</value></item><item><key>podwire.io/created-at</key><value>{at}</value></item></tagSet>")
    };
    let now = unix_now();
    let old = format_rfc3339(now - 600);
    let young = format_rfc3339(now - 5);
    let items = [
        eni_item("eni-old", None, 40, &[41], &tags("i-pwt", &old)),
        eni_item("eni-young", None, 50, &[], &tags("i-pwt", &young)),
        eni_item("eni-other-node", None, 60, &[], &tags("i-other", &old)),
        eni_item(
            "eni-foreign",
            None,
            70,
            &[],
            "<tagSet><item><key>Name</key><value>db</value></item></tagSet>",
        ),
    ]
    .concat();
    // A fake that ignores the filters, as a worst case: the decision must
    // rest on the reply, not on the filter.
    let handler: Arc<Handler> = Arc::new(move |action, _| {
        match action {
        "DescribeNetworkInterfaces" => dni(&items),
        "DeleteNetworkInterface" => (200, "<DeleteNetworkInterfaceResponse><return>true</return></DeleteNetworkInterfaceResponse>".into()),
        _ => error(400, "InvalidAction"),
    }
    });
    let (endpoint, log) = fake_ec2(handler);
    let dir = state_dir();
    let a = agent_on(&endpoint, &[], &dir);
    let left = sweep_unattached(&a, &mut BTreeSet::new()).expect("sweep");
    assert_eq!(left, 1, "the young one is left for later");
    let deleted: Vec<String> = log
        .lock()
        .expect("log")
        .iter()
        .filter(|(action, _)| action == "DeleteNetworkInterface")
        .filter_map(|(_, p)| {
            p.iter()
                .find(|(k, _)| k == "NetworkInterfaceId")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(deleted, vec!["eni-old".to_string()]);
    // The filters asked for are EC2's: this instance's tag, available.
    let filters: Vec<String> = log
        .lock()
        .expect("log")
        .iter()
        .filter(|(action, _)| action == "DescribeNetworkInterfaces")
        .flat_map(|(_, p)| {
            p.iter()
                .filter(|(k, _)| k.ends_with(".Name"))
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(
        filters.contains(&"tag:podwire.io/instance-id".to_string()),
        "{filters:?}"
    );
}

/// A DEL never waits on EC2: while the pool manager is stuck in a call,
/// DEL (and an ADD with a free address) answer at once.
#[test]
fn a_hung_cloud_never_blocks_a_del() {
    let handler: Arc<Handler> = Arc::new(|_, _| (0, String::new()));
    let (endpoint, _log) = fake_ec2(handler);
    let dir = state_dir();
    let a = Arc::new(agent_on(&endpoint, &[11, 12], &dir));
    let r = a.add(req("c1"), Instant::now() + Duration::from_secs(1));
    assert!(matches!(r, Response::Allocated { .. }), "{r:?}");
    let stuck = {
        let a = a.clone();
        std::thread::spawn(move || {
            let mut pending = Pending::default();
            let _ = assign(&a, &mut pending, "eni-0", AddressRequest::Ips(1));
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let r = a.del(&req("c1").key);
    assert!(matches!(r, Response::Released { allocations } if allocations.len() == 1));
    let r = a.add(req("c2"), Instant::now() + Duration::from_secs(1));
    assert!(matches!(r, Response::Allocated { .. }), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    drop(stuck);
}

/// With prefix delegation, a subnet without a free aligned /28 is said
/// plainly; with the fallback, single addresses are asked for instead.
#[test]
fn no_free_28_is_a_clear_error_or_the_fallback() {
    let handler: Arc<Handler> = Arc::new(|action, _| match action {
        "AssignPrivateIpAddresses" => error(400, "InsufficientCidrBlocks"),
        _ => error(400, "InvalidAction"),
    });
    let (endpoint, _log) = fake_ec2(handler);
    let dir = state_dir();
    let mut a = agent_on(&endpoint, &[], &dir);
    a.config.prefix_delegation = true;
    let e = assign(
        &a,
        &mut Pending::default(),
        "eni-0",
        AddressRequest::Prefixes(1),
    )
    .expect_err("refused");
    let (kind, msg) = describe_failure(&a, &e);
    assert_eq!(kind, ErrorKind::Exhausted);
    assert!(
        msg.contains("no free aligned /28 in subnet subnet-pwt (10.0.0.0/16)"),
        "{msg}"
    );
    a.lock().cloud_error = Some((kind, msg));
    let r = a.add(req("c1"), Instant::now() + Duration::from_secs(5));
    assert!(
        matches!(&r, Response::Error { kind: ErrorKind::Exhausted, message } if message.contains("no free aligned /28")),
        "{r:?}"
    );

    a.config.prefix_fallback_to_secondary_ips = true;
    a.lock().cloud_error = None;
    let n = assign(
        &a,
        &mut Pending::default(),
        "eni-0",
        AddressRequest::Prefixes(1),
    )
    .expect("handled by the fallback");
    assert_eq!(n, 0);
    let st = a.lock();
    let t = a.current_targets(&st, Instant::now());
    assert!(!t.prefixes, "single addresses for a while");
}

#[test]
fn new_enis_are_tagged_with_their_owner_and_creation_time() {
    let t = eni_tags("i-pwt", 1_795_957_200);
    assert_eq!(
        t,
        vec![
            (TAG_INSTANCE_ID.to_string(), "i-pwt".to_string()),
            (
                TAG_CREATED_AT.to_string(),
                "2026-11-29T13:00:00Z".to_string()
            ),
        ]
    );
}

/// The pool manager reconciles every --reconcile-interval on its own, with
/// nothing to ask for: an address unassigned out of band leaves the pool
/// without any pod coming or going.
#[test]
fn the_loop_reconciles_every_interval() {
    let listed = Arc::new(Mutex::new((11u8..=19).collect::<Vec<_>>()));
    let l = listed.clone();
    let handler: Arc<Handler> = Arc::new(move |action, params| match action {
        "DescribeNetworkInterfaces"
            if params.iter().any(|(_, v)| v == "attachment.instance-id") =>
        {
            dni(&eni_item(
                "eni-0",
                Some(0),
                10,
                &l.lock().expect("listed"),
                "",
            ))
        }
        // The sweep finds nothing unattached.
        "DescribeNetworkInterfaces" => dni(""),
        "DescribeSubnets" => subnets(),
        _ => error(400, "InvalidAction"),
    });
    let (endpoint, _log) = fake_ec2(handler);
    let dir = state_dir();
    let mut a = agent_on(&endpoint, &(11u8..=19).collect::<Vec<_>>(), &dir);
    a.config.reconcile_interval = Duration::from_secs(1);
    let a = Arc::new(a);
    {
        let a = a.clone();
        // Runs until the test process ends (the loop never returns).
        std::thread::spawn(move || run(&a));
    }
    // The reconcile at start has run (it reads the subnet's figures too).
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.lock().subnet.is_none() {
        assert!(Instant::now() < deadline, "no reconcile at start");
        std::thread::sleep(Duration::from_millis(20));
    }
    listed.lock().expect("listed").retain(|n| *n != 11);
    let changed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.lock().pool.contains(ip(11)) {
        assert!(Instant::now() < deadline, "the loop never reconciled");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(a.lock().pool.total(), 8);
    assert!(
        changed.elapsed() >= Duration::from_millis(500),
        "dropped before an interval passed: not the periodic reconcile"
    );
}

/// Newuser F2: the subnet's figures were described once per
/// `--reconcile-interval` only, so `capacity --live` lagged a scaling
/// cluster by up to a minute. Now an Assign the cloud answered brings a
/// DescribeSubnets at the next reconcile once the short gap has passed, and
/// a burst of Assigns inside the gap asks only once.
#[test]
fn the_subnet_is_described_again_soon_after_the_pool_grows() {
    let handler: Arc<Handler> = Arc::new(|action, _| {
        match action {
        "AssignPrivateIpAddresses" => (200, format!(
            "<AssignPrivateIpAddressesResponse><assignedPrivateIpAddressesSet><item><privateIpAddress>{}</privateIpAddress></item></assignedPrivateIpAddressesSet></AssignPrivateIpAddressesResponse>",
            ip(11)
        )),
        "DescribeNetworkInterfaces" => dni(&eni_item("eni-0", Some(0), 10, &[11], "")),
        "DescribeSubnets" => subnets(),
        _ => error(400, "InvalidAction"),
    }
    });
    let (endpoint, log) = fake_ec2(handler);
    let describes = || {
        log.lock()
            .expect("log")
            .iter()
            .filter(|(a, _)| a == "DescribeSubnets")
            .count()
    };
    let dir = state_dir();
    let a = agent_on(&endpoint, &[], &dir);
    let interval = a.config.reconcile_interval;
    assert!(interval > SUBNET_REFRESH_AFTER_GROWTH * 2, "{interval:?}");
    let now = Instant::now();
    let Some(past_gap) = now.checked_sub(SUBNET_REFRESH_AFTER_GROWTH + Duration::from_secs(1))
    else {
        return; // a clock this young cannot express the case
    };
    // Described a moment ago, nothing grew: no DescribeSubnets.
    let mut pending = Pending {
        subnet_at: Some(past_gap),
        ..Pending::default()
    };
    reconcile_now(&a, &mut pending).expect("reconcile");
    assert_eq!(describes(), 0, "no growth, inside the interval");
    assert_eq!(pending.subnet_refresh_at(), None);
    // The pool grew: the next reconcile describes the subnet.
    assign(&a, &mut pending, "eni-0", AddressRequest::Ips(1)).expect("assign");
    reconcile_now(&a, &mut pending).expect("reconcile");
    assert_eq!(describes(), 1, "growth past the gap");
    // Growth again right away: not yet, but due at the end of the gap.
    assign(&a, &mut pending, "eni-0", AddressRequest::Ips(1)).expect("assign");
    reconcile_now(&a, &mut pending).expect("reconcile");
    assert_eq!(describes(), 1, "inside the gap");
    let due = pending.subnet_refresh_at().expect("a refresh is owed");
    assert!(due > Instant::now() && due <= Instant::now() + SUBNET_REFRESH_AFTER_GROWTH);
    assert!(pending.subnet_due(due, interval));
}

/// An idle ENI above the targets is detached and deleted; when the delete
/// fails after the detach, the ENI is unattached and young, and only the
/// no-grace list gets it swept at once (a fault soak found such ENIs left
/// for the whole grace).
#[test]
fn an_idle_eni_whose_delete_fails_is_swept_without_the_grace() {
    let detached = Arc::new(Mutex::new(false));
    let deletes_fail = Arc::new(Mutex::new(true));
    let (d, f) = (detached.clone(), deletes_fail.clone());
    let young = format_rfc3339(unix_now());
    let handler: Arc<Handler> = Arc::new(move |action, _| {
        match action {
        "DescribeNetworkInterfaces" => {
            let tags = format!("<tagSet><item><key>podwire.io/instance-id</key><value>i-pwt</value></item><item><key>podwire.io/created-at</key><value>{young}</value></item></tagSet>");
            let device = if *d.lock().expect("d") { None } else { Some(1) };
            dni(&eni_item("eni-1", device, 20, &[21, 22, 23, 24, 25, 26, 27, 28, 29], &tags))
        }
        "DetachNetworkInterface" => {
            *d.lock().expect("d") = true;
            (200, "<DetachNetworkInterfaceResponse><return>true</return></DetachNetworkInterfaceResponse>".into())
        }
        "DeleteNetworkInterface" if *f.lock().expect("f") => error(500, "InternalError"),
        "DeleteNetworkInterface" => (200, "<DeleteNetworkInterfaceResponse><return>true</return></DeleteNetworkInterfaceResponse>".into()),
        _ => error(400, "InvalidAction"),
    }
    });
    let (endpoint, log) = fake_ec2(handler);
    let dir = state_dir();
    let a = agent_on(&endpoint, &[11, 12, 13, 14, 15, 16, 17, 18, 19], &dir);
    {
        let mut st = a.lock();
        st.pool.add_eni("eni-1", 1, 2);
        st.pool
            .add_ips("eni-1", &(21..=29).map(ip).collect::<Vec<_>>());
    }
    let mut leftovers = BTreeSet::new();
    let mut last = Instant::now()
        .checked_sub(Duration::from_secs(3600))
        .expect("an hour ago");
    let r = release_surplus(&a, &mut last, &mut leftovers).expect("a surplus ENI");
    assert!(r.is_err(), "the delete failed");
    assert!(*detached.lock().expect("d"), "it was detached first");
    assert!(leftovers.contains("eni-1"), "{leftovers:?}");
    // The sweep deletes it although its created-at is younger than the grace.
    *deletes_fail.lock().expect("f") = false;
    assert_eq!(sweep_unattached(&a, &mut leftovers).expect("sweep"), 0);
    let deleted = log
        .lock()
        .expect("log")
        .iter()
        .filter(|(action, _)| action == "DeleteNetworkInterface")
        .count();
    assert_eq!(deleted, 2, "one failed delete, then the sweep's");
    assert!(leftovers.is_empty());
}
