//! overlay mode end to end in the lab: SEED-NOTES §3 (VXLAN device, MTU,
//! blackhole, onlink routes, traces) and the overlay side of §4, node churn,
//! and 64 concurrent plugin calls.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ipnet::Ipv4Net;

/// Runs `f` on a thread of its own inside the named network namespace
/// (what it spawns, a store's runtime threads, stays there too).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// (block, tunnel address) of a node, read from its kernel.
fn block_and_tunnel(lab: &Lab, i: usize) -> (Ipv4Net, Ipv4Addr) {
    let ns = lab.node_ns(i);
    let routes = ip(&["-n", &ns, "route"]);
    let bh: Vec<&str> = routes
        .lines()
        .filter(|l| l.starts_with("blackhole "))
        .collect();
    assert_eq!(bh.len(), 1, "one block per node: {routes}");
    let block: Ipv4Net = bh[0]
        .split_whitespace()
        .nth(1)
        .expect("cidr")
        .parse()
        .expect("cidr");
    (block, tunnel_of(lab, i))
}

/// A node's tunnel address: the /32 on its VXLAN device.
fn tunnel_of(lab: &Lab, i: usize) -> Ipv4Addr {
    let addr = ip(&[
        "-n",
        &lab.node_ns(i),
        "-4",
        "-o",
        "addr",
        "show",
        "dev",
        "vxlan.podwire",
    ]);
    addr.split_whitespace()
        .nth(3)
        .expect("inet")
        .trim_end_matches("/32")
        .parse()
        .expect("tunnel")
}

/// Waits up to `limit` for `cond`; returns how long it took.
fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if cond() {
            return Some(t.elapsed());
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn article_shapes_traces_and_external_reachability() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-ov", &["--mode", "overlay"]);
    let a: Ipv4Addr = lab.pod_add("a", "node-1", true).parse().expect("a");
    let b: Ipv4Addr = lab.pod_add("b", "node-1", true).parse().expect("b");
    let c: Ipv4Addr = lab.pod_add("c", "node-2", true).parse().expect("c");
    let pool: Ipv4Net = "172.16.0.0/16".parse().expect("pool");
    let (block1, tun1) = block_and_tunnel(&lab, 1);
    let (block2, tun2) = block_and_tunnel(&lab, 2);
    for ip in [a, b, c] {
        assert!(pool.contains(&ip));
    }
    assert!(block1.contains(&a) && block1.contains(&b) && block2.contains(&c));
    assert_eq!(
        (block1.prefix_len(), tun1, tun2),
        (26, block1.network(), block2.network()),
        "tunnel = first address of the block"
    );

    let ns1 = lab.node_ns(1);
    let dev = ip(&["-n", &ns1, "-d", "link", "show", "vxlan.podwire"]);
    assert!(
        dev.contains("mtu 8951")
            && dev.contains("vxlan id 4096")
            && dev.contains("dstport 4789")
            && dev.contains("nolearning"),
        "{dev}"
    );
    let routes = ip(&["-n", &ns1, "route"]);
    assert!(
        routes.contains(&format!("blackhole {block1} proto 80")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!(
            "{block2} via {tun2} dev vxlan.podwire proto 80 onlink"
        )),
        "{routes}"
    );
    let veth = routes
        .lines()
        .find(|l| l.starts_with(&format!("{a} dev pw")))
        .expect("pod route")
        .split_whitespace()
        .nth(2)
        .expect("dev")
        .to_string();
    assert!(routes.contains(&format!("{a} dev {veth} scope link")));
    let link = ip(&["-n", &ns1, "link", "show", &veth]);
    assert!(
        link.contains("mtu 8951") && link.contains("ee:ee:ee:ee:ee:ee"),
        "{link}"
    );
    assert!(ip(&["-n", "pw-t-ov-pod-a", "link", "show", "eth0"]).contains("mtu 8951"));
    let neigh = ip(&["-n", &ns1, "neigh", "show", "dev", "vxlan.podwire"]);
    assert!(
        neigh.contains(&tun2.to_string()) && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    let n2_ip = lab.node_ip("node-2");
    let fdb = text(&run(std::process::Command::new("bridge").args([
        "-n",
        &ns1,
        "fdb",
        "show",
        "dev",
        "vxlan.podwire",
    ])));
    assert!(
        fdb.contains(&format!("dst {n2_ip} self permanent")),
        "{fdb}"
    );

    let n1_ip = lab.node_ip("node-1");
    assert_eq!(
        hop_ips(&lab.trace("a", "b")),
        vec![n1_ip.clone(), b.to_string()]
    );
    assert_eq!(
        hop_ips(&lab.trace("a", "c")),
        vec![n1_ip, tun2.to_string(), c.to_string()]
    );
    assert!(lab.ctl_ok(&["lab", "curl", "c", "a"]).contains("Welcome"));

    // Even with the node security group open, the external host reaches the
    // node but not the pod: the VPC has no route to the pod network.
    lab.ctl_ok(&["lab", "allow-external", "on"]);
    assert_eq!(lab.trace("external", "node-1")["reached"], true);
    assert!(!lab.ctl(&["lab", "curl", "external", "a"]).status.success());
    assert_eq!(lab.trace("external", "a")["reached"], false);
    // Pods reach the outside as their node (SNAT).
    let ext = lab.status()["external"]["ip"]
        .as_str()
        .expect("ext")
        .to_string();
    assert!(lab
        .ctl(&["lab", "exec", "a", "--", "ping", "-c", "1", "-W", "2", &ext])
        .status
        .success());
}

#[test]
fn nodes_join_and_leave_with_routes_converging_everywhere() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-ovnodes", &["--mode", "overlay"]);
    lab.pod_add("a", "node-1", true);
    lab.pod_add("b", "node-2", true);
    lab.ctl_ok(&["lab", "node", "add"]);
    let (block3, tun3) = block_and_tunnel(&lab, 3);
    let n3_ip = lab.node_ip("node-3");
    let route = format!("{block3} via {tun3} dev vxlan.podwire proto 80 onlink");
    for i in [1, 2] {
        let ns = lab.node_ns(i);
        let took = within(Duration::from_secs(1), || {
            ip(&["-n", &ns, "route"]).contains(&route)
                && ip(&["-n", &ns, "neigh", "show", "dev", "vxlan.podwire"])
                    .contains(&tun3.to_string())
                && text(&run(std::process::Command::new("bridge").args([
                    "-n",
                    &ns,
                    "fdb",
                    "show",
                    "dev",
                    "vxlan.podwire",
                ])))
                .contains(&format!("dst {n3_ip}"))
        });
        assert!(took.is_some(), "node-{i} did not learn node-3 within 1 s");
    }
    lab.pod_add("c", "node-3", true);
    for (from, to) in [("a", "c"), ("c", "b"), ("b", "a")] {
        assert!(
            lab.ctl_ok(&["lab", "curl", from, to]).contains("Welcome"),
            "{from} -> {to}"
        );
    }
    lab.ctl_ok(&["lab", "node", "del", "node-3"]);
    for i in [1, 2] {
        let ns = lab.node_ns(i);
        let gone = within(Duration::from_secs(1), || {
            !ip(&["-n", &ns, "route"]).contains(&block3.to_string())
                && !ip(&["-n", &ns, "neigh", "show", "dev", "vxlan.podwire"])
                    .contains(&tun3.to_string())
        });
        assert!(gone.is_some(), "node-{i} kept node-3's routes");
    }
    assert!(!lab.namespaces().contains("pw-t-ovnodes-node-3"));
}

#[test]
fn sixty_four_concurrent_plugin_adds_then_dels_leave_the_pool_as_before() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-ovpar", &["--mode", "overlay"]);
    let st = lab.status();
    let sockets: Vec<String> = st["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["agent_socket"].as_str().expect("sock").to_string())
        .collect();
    let store = podwire_store::SqliteStore::open(std::path::Path::new(
        "/run/podwire/lab/t-ovpar/datastore.db",
    ))
    .expect("datastore");
    let blocks = |s: &podwire_store::SqliteStore| -> Vec<(String, String)> {
        podwire_store::Datastore::list(s, "/podwire/ipam/blocks/")
            .expect("list")
            .entries
            .into_iter()
            .map(|e| {
                let b: podwire_ipam::block::Block =
                    serde_json::from_slice(&e.value).expect("block");
                (b.cidr.to_string(), format!("{:?}", b.allocations))
            })
            .collect()
    };
    let before = blocks(&store);
    let nss: Arc<Vec<Netns>> = Arc::new(
        (0..64)
            .map(|i| Netns::new(&format!("pw-t-ovpar-p{i}")))
            .collect(),
    );
    let call = |cmd: &'static str| -> Vec<PluginRun> {
        let threads: Vec<_> = (0..64)
            .map(|i| {
                let nss = Arc::clone(&nss);
                let sock = sockets[i % 2].clone();
                std::thread::spawn(move || {
                    let node_ns = format!("pw-t-ovpar-node-{}", i % 2 + 1);
                    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "podwire", "type": "podwire", "mode": "overlay", "agentSocket": sock});
                    let id = format!("par{i}");
                    let path = nss[i].path();
                    let args = format!("K8S_POD_NAMESPACE=par;K8S_POD_NAME=p{i}");
                    run_plugin(&node_ns, &[("CNI_COMMAND", cmd), ("CNI_CONTAINERID", &id), ("CNI_NETNS", &path), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", &args)], &conf.to_string())
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect()
    };
    let adds = call("ADD");
    let mut ips = BTreeSet::new();
    for (i, r) in adds.iter().enumerate() {
        assert!(r.ok, "ADD {i}: {} {}", r.stdout, r.stderr);
        assert!(
            ips.insert(
                r.json["ips"][0]["address"]
                    .as_str()
                    .expect("ip")
                    .to_string()
            ),
            "duplicate address"
        );
    }
    let ipam_handles: usize = blocks(&store)
        .iter()
        .map(|(_, a)| {
            a.matches(r#"network: "podwire", container_id: "par"#)
                .count()
        })
        .sum();
    assert_eq!(
        ipam_handles, 64,
        "every allocation recorded under its handle"
    );
    for (i, r) in call("DEL").iter().enumerate() {
        assert!(r.ok, "DEL {i}: {}", r.stdout);
    }
    let after: Vec<(String, String)> = blocks(&store)
        .into_iter()
        .filter(|(c, a)| before.iter().any(|(b, _)| b == c) || a != "{}")
        .collect();
    assert_eq!(after, before, "the pool is exactly as before");
}

#[test]
fn overlay_on_the_labs_etcd_converges_and_fails_cleanly_without_it() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-ovetcd", &["--mode", "overlay", "--datastore", "etcd"]);
    let st = lab.status();
    assert_eq!(st["datastore"], "etcd+https://169.254.169.251:2379");
    lab.pod_add("a", "node-1", true);
    lab.pod_add("b", "node-2", true);
    assert!(lab.ctl_ok(&["lab", "curl", "a", "b"]).contains("Welcome"));
    lab.ctl_ok(&["lab", "node", "add"]);
    let (block3, tun3) = block_and_tunnel(&lab, 3);
    let route = format!("{block3} via {tun3} dev vxlan.podwire proto 80 onlink");
    let ns1 = lab.node_ns(1);
    assert!(
        within(Duration::from_secs(1), || ip(&["-n", &ns1, "route"])
            .contains(&route))
        .is_some(),
        "node-1 did not learn node-3 within 1 s"
    );

    // `lab node del` removes the node from etcd (through the lab's own
    // store): the others drop its route, and no SQLite file appears.
    lab.ctl_ok(&["lab", "node", "del", "node-3"]);
    assert!(
        within(Duration::from_secs(2), || !ip(&["-n", &ns1, "route"])
            .contains(&block3.to_string()))
        .is_some(),
        "node-1 kept the deleted node-3's route: its record stayed in etcd"
    );
    let stray = std::path::Path::new("/run/podwire/lab")
        .join(&lab.name)
        .join("datastore.db");
    assert!(!stray.exists(), "a stray {} appeared", stray.display());

    // The lab's etcd takes only TLS clients with a certificate of its CA:
    // from a node, knowing the CA is not enough, and plain HTTP is refused.
    let tls_dir = std::path::Path::new("/run/podwire/lab")
        .join(&lab.name)
        .join("etcd-tls");
    for f in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    ] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(tls_dir.join(f))
                .expect("tls file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let no_cert = podwire_store::EtcdTls {
        ca_cert: Some(tls_dir.join("ca.pem")),
        cert: None,
        key: None,
    };
    let refused = in_netns(&ns1, move || {
        podwire_store::EtcdStore::connect_with(
            &["https://169.254.169.251:2379".to_string()],
            &no_cert,
        )
        .map(|_| ())
    });
    assert!(
        matches!(&refused, Err(podwire_store::StoreError::Tls(m)) if m.contains("requires a client certificate")),
        "{refused:?}"
    );
    let plain = in_netns(&ns1, || {
        podwire_store::EtcdStore::connect(&["http://169.254.169.251:2379".to_string()]).map(|_| ())
    });
    assert!(
        matches!(&plain, Err(podwire_store::StoreError::Tls(m)) if m.contains("speaks TLS")),
        "{plain:?}"
    );

    // etcd dies: ADD is "try again later" (11) and changes nothing.
    let pid = i32::try_from(st["etcd_pid"].as_i64().expect("etcd pid")).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill etcd");
    let before = pod_wiring_snapshot(&ns1);
    let o = lab.ctl(&["lab", "pod", "add", "c", "--node", "node-1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("CNI error 11"), "{err}");
    assert_eq!(pod_wiring_snapshot(&ns1), before);
    // Running pods do not depend on the datastore.
    assert!(lab.ctl_ok(&["lab", "curl", "b", "a"]).contains("Welcome"));
}

#[test]
fn overlay_across_two_subnets() {
    if !require_root() {
        return;
    }
    let lab = Lab::up(
        "t-ov2sub",
        &["--mode", "overlay", "--subnets", "10.0.0.0/20,10.0.16.0/20"],
    );
    assert!("10.0.16.0/20"
        .parse::<Ipv4Net>()
        .expect("s2")
        .contains(&lab.node_ip("node-2").parse::<Ipv4Addr>().expect("n2")));
    lab.pod_add("a", "node-1", true);
    let b: Ipv4Addr = lab.pod_add("b", "node-2", true).parse().expect("b");
    let (_, tun2) = block_and_tunnel(&lab, 2);
    assert_eq!(
        hop_ips(&lab.trace("a", "b")),
        vec![lab.node_ip("node-1"), tun2.to_string(), b.to_string()]
    );
    assert!(lab.ctl_ok(&["lab", "curl", "b", "a"]).contains("Welcome"));
}

#[test]
fn overlay_agent_restart_keeps_pods_and_addresses() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-ovrst", &["--mode", "overlay", "--nodes", "2"]);
    let a = lab.pod_add("a", "node-1", true);
    lab.pod_add("b", "node-2", true);
    let routes_before = ip(&["-n", &lab.node_ns(1), "route"]);
    lab.ctl_ok(&["lab", "agent", "stop", "node-1"]);
    assert!(
        lab.ctl_ok(&["lab", "curl", "b", "a"]).contains("Welcome"),
        "pods keep working without their agent"
    );
    lab.ctl_ok(&["lab", "agent", "start", "node-1"]);
    // The restarted agent finds its tunnel address, blocks and device again.
    assert_eq!(ip(&["-n", &lab.node_ns(1), "route"]), routes_before);
    let c = lab.pod_add("c", "node-1", false);
    assert_ne!(a, c, "an address was handed out twice");
    assert!(lab.ctl_ok(&["lab", "curl", "b", "a"]).contains("Welcome"));
    lab.ctl_ok(&["lab", "pod", "del", "a"]);
}

#[test]
fn a_node_without_a_block_borrows_addresses_that_everyone_routes() {
    if !require_root() {
        return;
    }
    // Two /26 blocks in the pool: node-1 and node-2 claim them; node-3 has
    // none left and borrows single addresses from theirs.
    let lab = Lab::up(
        "t-ovborrow",
        &[
            "--mode",
            "overlay",
            "--nodes",
            "3",
            "--pod-cidr",
            "172.16.0.0/25",
        ],
    );
    lab.pod_add("a", "node-1", true);
    lab.pod_add("b", "node-2", true);
    let c: Ipv4Addr = lab.pod_add("c", "node-3", true).parse().expect("c");
    let pool: Ipv4Net = "172.16.0.0/25".parse().expect("pool");
    assert!(pool.contains(&c));
    let tun3 = tunnel_of(&lab, 3);
    for i in [1, 2] {
        let ns = lab.node_ns(i);
        let want = format!("{c} via {tun3} dev vxlan.podwire proto 80 onlink");
        assert!(
            within(Duration::from_secs(1), || ip(&["-n", &ns, "route"])
                .contains(&want))
            .is_some(),
            "node-{i} has no /32 for the borrowed {c}"
        );
    }
    for (from, to) in [("a", "c"), ("c", "b"), ("b", "c")] {
        assert!(
            lab.ctl_ok(&["lab", "curl", from, to]).contains("Welcome"),
            "{from} -> {to}"
        );
    }
}

/// The datastore lost (its SQLite file deleted under the running agents):
/// a restarted agent refuses it, saying what happened and what to do,
/// instead of claiming a block again and handing out live pods' addresses
/// (issue 6 item 17).
#[test]
fn an_agent_refuses_a_datastore_that_lost_its_pods() {
    if !require_root() {
        return;
    }
    let lab = Lab::up("t-ovlost", &["--mode", "overlay", "--nodes", "2"]);
    lab.pod_add("a", "node-1", true);
    lab.pod_add("b", "node-2", true);
    lab.ctl_ok(&["lab", "agent", "stop", "node-1"]);
    let db = format!("/run/podwire/lab/{}/datastore.db", lab.name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{db}{suffix}"));
    }
    let o = lab.ctl(&["lab", "agent", "start", "node-1"]);
    let log = std::fs::read_to_string(format!("/run/podwire/lab/{}/node-1/agent.log", lab.name))
        .unwrap_or_default();
    assert!(
        !o.status.success(),
        "the agent started on a store that lost its pods"
    );
    assert!(
        log.contains("does not hold 1 address(es) that pods on this node are using")
            && log.contains("delete"),
        "the refusal must say what happened and what to do: {log}"
    );
    // Nothing was claimed in the new store in the meantime.
    let store = podwire_store::SqliteStore::open(std::path::Path::new(&db)).expect("store");
    let blocks = podwire_store::Datastore::list(&store, "/podwire/ipam/blocks/")
        .expect("list")
        .entries;
    assert!(
        blocks.is_empty(),
        "the refused agent claimed {} block(s)",
        blocks.len()
    );
    // The pods themselves keep working.
    assert!(lab.ctl_ok(&["lab", "curl", "b", "a"]).contains("Welcome"));
}
