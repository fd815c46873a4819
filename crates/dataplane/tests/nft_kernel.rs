//! The nftables owner against a real `nft` in a private network namespace
//! per test (needs root; the namespace vanishes with the test's thread).

use std::process::Command;

use podwire_dataplane::nft::{NodeRules, PodEgressGuard, Snat, Tunnel};

fn private_netns() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var_os("PODWIRE_SKIP_ROOT_TESTS").is_some(),
            "kernel tests need root (PODWIRE_SKIP_ROOT_TESTS=1 skips them)"
        );
        return false;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
    true
}

fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rules(blocked: &[&str]) -> NodeRules {
    NodeRules {
        pod_iface_prefix: "pw".into(),
        guard: PodEgressGuard {
            deny_imds: true,
            blocked: blocked.iter().map(|b| b.parse().expect("dest")).collect(),
        },
        snat: Some(Snat {
            pod_cidr: "172.16.0.0/16".parse().expect("net"),
            keep_dev: "vxlan.podwire".into(),
        }),
        tunnel: Some(Tunnel {
            dev: "vxlan.podwire".into(),
            udp_port: 4789,
        }),
        external_pod_access: podwire_dataplane::nft::ExternalPodAccess::Deny,
        policy: None,
    }
}

#[test]
fn reapplying_replaces_podwire_chains_and_keeps_what_others_put_there() {
    if !private_netns() {
        return;
    }
    rules(&["169.254.169.251:2379"])
        .apply()
        .expect("first apply");
    // Someone else's chain in the same table must survive podwire's updates.
    nft(&["add", "chain", "ip", "podwire", "operator-extra"]);
    nft(&[
        "add",
        "rule",
        "ip",
        "podwire",
        "operator-extra",
        "counter",
        "comment",
        "\"kept\"",
    ]);
    rules(&["10.9.0.0/16"]).apply().expect("second apply");
    let listed = nft(&["list", "table", "ip", "podwire"]);
    assert!(listed.contains("\"kept\""), "{listed}");
    assert!(listed.contains("10.9.0.0/16"), "{listed}");
    assert!(
        !listed.contains("2379"),
        "the old guard must be replaced:\n{listed}"
    );
    // Once each: refilled, not appended to.
    // forward and input, each for the pod group, the legacy prefix and the
    // tunnel.
    assert_eq!(
        listed.matches("jump pod-egress-guard").count(),
        6,
        "{listed}"
    );
    assert_eq!(listed.matches("masquerade").count(), 1, "{listed}");
    assert_eq!(listed.matches("169.254.169.254").count(), 1, "{listed}");
    // The VXLAN peer set is the agent's: filled, then kept by a re-apply.
    let peers = [
        "10.0.0.5".parse().expect("ip"),
        "10.0.0.6".parse().expect("ip"),
    ]
    .into_iter()
    .collect();
    podwire_dataplane::nft::set_vxlan_peers(&peers).expect("peers");
    rules(&[]).apply().expect("third apply");
    let set = nft(&["list", "set", "ip", "podwire", "vxlan-peers"]);
    assert!(
        set.contains("10.0.0.5") && set.contains("10.0.0.6"),
        "{set}"
    );
    podwire_dataplane::nft::set_vxlan_peers(&std::collections::BTreeSet::new()).expect("none");
    let set = nft(&["list", "set", "ip", "podwire", "vxlan-peers"]);
    assert!(!set.contains("10.0.0.5"), "{set}");
}

#[test]
fn an_older_agents_table_is_taken_over_without_deleting_it() {
    if !private_netns() {
        return;
    }
    // What a v1 overlay agent left: the table with its SNAT chain.
    let old = "table ip podwire {\n chain postrouting {\n type nat hook postrouting priority srcnat; policy accept;\n ip saddr 172.16.0.0/16 ip daddr != 172.16.0.0/16 oifname != \"vxlan.podwire\" masquerade\n }\n}\n";
    podwire_dataplane::nft::apply(old).expect("old ruleset");
    rules(&[]).apply().expect("take over");
    let listed = nft(&["list", "table", "ip", "podwire"]);
    assert_eq!(listed.matches("masquerade").count(), 1, "{listed}");
    assert!(listed.contains("pod-egress-guard"), "{listed}");
}

#[test]
fn policy_helpers_are_replaced_in_one_transaction_and_old_ones_deleted() {
    use podwire_dataplane::nft::{apply_policy, HelperChain, HelperSet, PolicyRuleset};
    if !private_netns() {
        return;
    }
    let ruleset = |n: &str, ip: &str| PolicyRuleset {
        rules: vec![format!("ip daddr vmap @np-map-{n}")],
        chains: vec![HelperChain {
            name: format!("np-in-{n}"),
            fixed: true,
            rules: vec![
                format!("ip saddr @np-src-{n} return"),
                "counter drop".into(),
            ],
        }],
        sets: vec![
            HelperSet {
                name: format!("np-src-{n}"),
                map: false,
                fixed: true,
                decl: "type ipv4_addr; flags interval;".into(),
                elements: vec!["10.1.0.0/16".into(), "10.2.0.7".into()],
            },
            HelperSet {
                name: format!("np-map-{n}"),
                map: true,
                fixed: false,
                decl: "type ipv4_addr : verdict;".into(),
                elements: vec![format!("{ip} : jump np-in-{n}")],
            },
        ],
    };
    // The node's rules first, then the policies, then a restart's re-apply
    // without policies: the policies stay.
    rules(&[]).apply().expect("node rules");
    apply_policy(&ruleset("a", "10.0.0.5")).expect("first");
    // Applying the same again keeps the content-named helpers as they are.
    apply_policy(&ruleset("a", "10.0.0.5")).expect("again");
    rules(&[]).apply().expect("re-apply");
    let listed = nft(&["list", "table", "ip", "podwire"]);
    assert!(
        listed.contains("jump np-in-a") && listed.contains("vmap @np-map-a"),
        "{listed}"
    );
    apply_policy(&ruleset("b", "10.0.0.6")).expect("second");
    let listed = nft(&["list", "table", "ip", "podwire"]);
    assert!(listed.contains("jump np-in-b"), "{listed}");
    assert!(
        !listed.contains("np-in-a") && !listed.contains("np-src-a") && !listed.contains("np-map-a"),
        "old helpers must be deleted:\n{listed}"
    );
    apply_policy(&PolicyRuleset::default()).expect("none");
    let listed = nft(&["list", "table", "ip", "podwire"]);
    assert!(!listed.contains("np-"), "{listed}");
}
