//! nftables, with one owner: every rule podwire puts on a node lives in the
//! table `ip podwire`, in one named chain per concern, and every change is
//! one `nft -f -` transaction, so no packet ever sees a half-written state.
//!
//! The order is fixed and is the order of the jumps from the base chains:
//! [`Concern::PodEgressGuard`] (pods kept away from IMDS, the datastore, the
//! cloud API) first, then [`Concern::ExternalPosture`] (who from outside the
//! cluster may reach pods), then [`Concern::NetworkPolicy`]. A guard drops,
//! so no later chain can accept what it refused.
//!
//! Updating a concern flushes and refills its chain in the same
//! transaction; the table and the base chains are never deleted, so an
//! agent restart keeps the old rules in force until the new ones replace
//! them, and any chain of the table that podwire does not own is left
//! alone.

use std::fmt::Write as _;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use crate::{DataplaneError, Result};

mod policy;
mod posture;

pub use policy::{
    apply_policy, existing_helpers, parse_helpers, HelperChain, HelperSet, Helpers, PolicyRuleset,
    HELPER_PREFIX,
};
pub use posture::{cluster_nets_script, set_cluster_nets, ExternalPodAccess, CLUSTER_NETS};

/// The table every podwire rule lives in.
pub const TABLE: &str = "podwire";

/// One concern, one chain. The declaration order is the evaluation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Concern {
    PodEgressGuard,
    ExternalPosture,
    NetworkPolicy,
}

impl Concern {
    pub const ALL: [Concern; 3] = [
        Concern::PodEgressGuard,
        Concern::ExternalPosture,
        Concern::NetworkPolicy,
    ];

    pub fn chain(self) -> &'static str {
        match self {
            Concern::PodEgressGuard => "pod-egress-guard",
            Concern::ExternalPosture => "external-posture",
            Concern::NetworkPolicy => "network-policy",
        }
    }
}

/// A destination pods may not reach: a network, optionally one TCP/UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedDestination {
    pub net: Ipv4Net,
    pub port: Option<u16>,
}

impl std::str::FromStr for BlockedDestination {
    type Err = String;

    /// `CIDR`, `IP`, `CIDR:PORT` or `IP:PORT`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (addr, port) = match s.rsplit_once(':') {
            Some((a, p)) => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("{s:?}: port {p:?} must be 1-65535"))?;
                (a, Some(port))
            }
            None => (s, None),
        };
        let net = match addr.parse::<Ipv4Net>() {
            Ok(n) => n.trunc(),
            Err(_) => addr
                .parse::<Ipv4Addr>()
                .map(Ipv4Net::from)
                .map_err(|_| format!("{s:?} is not an IPv4 address or CIDR (optionally :PORT)"))?,
        };
        Ok(BlockedDestination { net, port })
    }
}

impl std::fmt::Display for BlockedDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.net),
            None => write!(f, "{}", self.net),
        }
    }
}

/// The interface group of pods' host veths (set by the plugin when it names
/// the veth). Matching it, rather than a name prefix, keeps the guard on
/// whatever `vethPrefix` a conflist chose. ("pw" in ASCII.)
pub const POD_IFGROUP: u32 = 0x7077;

/// The instance metadata service's address.
pub const IMDS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// What pods on this node may not reach.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodEgressGuard {
    /// Refuse the instance metadata service (169.254.169.254).
    pub deny_imds: bool,
    pub blocked: Vec<BlockedDestination>,
}

/// The node's whole podwire ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRules {
    /// Host-side interface names of pods start with this (`eni`, `pw`).
    /// Pods are known by [`POD_IFGROUP`]; the prefix also catches veths made
    /// by a plugin from before the group was set.
    pub pod_iface_prefix: String,
    /// overlay mode: what arrives decapsulated comes from other nodes' pods
    /// (or from whoever sent a VXLAN packet) and is guarded like a pod's; and
    /// pods may not send VXLAN themselves (an inner packet would enter the
    /// node through the tunnel, past the guard).
    pub tunnel: Option<Tunnel>,
    pub guard: PodEgressGuard,
    /// overlay mode: pods leaving the pod network are masqueraded as the
    /// node, except towards other pods (through `snat_keep_dev`).
    pub snat: Option<Snat>,
    /// Who from outside the cluster may open connections to pods.
    pub external_pod_access: ExternalPodAccess,
    /// The network-policy concern's content. `None`: the chain is created
    /// if missing but keeps what it holds (an agent that has not read the
    /// policies yet must not open what the last one closed).
    pub policy: Option<PolicyRuleset>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub dev: String,
    pub udp_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snat {
    pub pod_cidr: Ipv4Net,
    /// Traffic leaving through this device keeps the pod's address.
    pub keep_dev: String,
}

fn valid_iface_prefix(p: &str) -> bool {
    !p.is_empty() && p.len() < 15 && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
}

impl NodeRules {
    /// The guard chain's rules (pods → forbidden destinations).
    fn guard_rules(&self) -> String {
        let mut r = String::new();
        // A pod speaks only with its own address: the source must route back
        // through the interface the packet came in on (a strict reverse-path
        // check in nftables, whatever the node's rp_filter sysctls say). It
        // also holds for what leaves the tunnel: a remote pod's address
        // routes back through it.
        let _ = writeln!(
            r,
            "fib saddr . iif oif missing counter drop comment \"pods send only from their own address\""
        );
        if let Some(t) = &self.tunnel {
            let _ = writeln!(
                r,
                "udp dport {} counter reject with icmp type admin-prohibited comment \"pods do not send VXLAN\"",
                t.udp_port
            );
        }
        if self.guard.deny_imds {
            let _ = writeln!(
                r,
                "ip daddr {IMDS} counter reject with icmp type admin-prohibited comment \"pods do not reach instance metadata\""
            );
        }
        for b in &self.guard.blocked {
            match b.port {
                Some(p) => {
                    let _ = writeln!(
                        r,
                        "ip daddr {} tcp dport {p} counter reject with tcp reset comment \"blocked for pods: {b}\"",
                        b.net
                    );
                    let _ = writeln!(
                        r,
                        "ip daddr {} udp dport {p} counter reject with icmp type admin-prohibited comment \"blocked for pods: {b}\"",
                        b.net
                    );
                }
                None => {
                    let _ = writeln!(
                        r,
                        "ip daddr {} counter reject with icmp type admin-prohibited comment \"blocked for pods: {b}\"",
                        b.net
                    );
                }
            }
        }
        r
    }

    /// One transaction that creates what is missing and replaces the content
    /// of every chain podwire owns. Never deletes the table.
    pub fn script(&self) -> Result<String> {
        if !valid_iface_prefix(&self.pod_iface_prefix) {
            return Err(DataplaneError::Nft(format!(
                "pod interface prefix {:?} is not a usable interface name prefix",
                self.pod_iface_prefix
            )));
        }
        let pods = format!("\"{}*\"", self.pod_iface_prefix);
        let mut s = String::new();
        let _ = writeln!(s, "table ip {TABLE} {{}}");
        for c in [Concern::PodEgressGuard, Concern::ExternalPosture] {
            let _ = writeln!(s, "add chain ip {TABLE} {}", c.chain());
            let _ = writeln!(s, "flush chain ip {TABLE} {}", c.chain());
        }
        let _ = writeln!(s, "add chain ip {TABLE} {}", Concern::NetworkPolicy.chain());
        // The cluster's addresses: filled by the agent, kept across restarts.
        let _ = writeln!(
            s,
            "add set ip {TABLE} {CLUSTER_NETS} {{ type ipv4_addr; flags interval; }}"
        );
        // Base chains: created if missing, refilled in place. A priority just
        // before the filter hook's default so podwire's verdicts come first.
        let _ = writeln!(
            s,
            "add chain ip {TABLE} forward {{ type filter hook forward priority filter - 10; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain ip {TABLE} forward");
        let _ = writeln!(
            s,
            "add chain ip {TABLE} input {{ type filter hook input priority filter - 10; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain ip {TABLE} input");
        let _ = writeln!(
            s,
            "add chain ip {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain ip {TABLE} postrouting");
        // Guard: from pods, whether the destination is routed on (forward)
        // or answered by the node itself (input); and what comes out of the
        // tunnel.
        let mut from_pods = vec![format!("iifgroup {POD_IFGROUP}"), format!("iifname {pods}")];
        if let Some(t) = &self.tunnel {
            if !valid_iface_prefix(&t.dev) {
                return Err(DataplaneError::Nft(format!(
                    "device {:?} is not a usable interface name",
                    t.dev
                )));
            }
            from_pods.push(format!("iifname \"{}\"", t.dev));
        }
        for base in ["forward", "input"] {
            for m in &from_pods {
                let _ = writeln!(
                    s,
                    "add rule ip {TABLE} {base} {m} jump {}",
                    Concern::PodEgressGuard.chain()
                );
            }
        }
        if let Some(t) = &self.tunnel {
            // VXLAN only from the cluster's nodes: the set is kept by the
            // agent from the datastore (never flushed here, so a restart
            // keeps accepting the known nodes).
            let _ = writeln!(s, "add set ip {TABLE} {VXLAN_PEERS} {{ type ipv4_addr; }}");
            let _ = writeln!(
                s,
                "add rule ip {TABLE} input udp dport {} ip saddr != @{VXLAN_PEERS} counter drop comment \"VXLAN only from known nodes\"",
                t.udp_port
            );
        }
        for c in [Concern::ExternalPosture, Concern::NetworkPolicy] {
            let _ = writeln!(s, "add rule ip {TABLE} forward jump {}", c.chain());
        }
        for line in self.guard_rules().lines() {
            let _ = writeln!(
                s,
                "add rule ip {TABLE} {} {line}",
                Concern::PodEgressGuard.chain()
            );
        }
        let tunnel = self.tunnel.as_ref().map(|t| t.dev.as_str());
        for line in posture::rules(self.external_pod_access, &pods, tunnel).lines() {
            let _ = writeln!(
                s,
                "add rule ip {TABLE} {} {line}",
                Concern::ExternalPosture.chain()
            );
        }
        if let Some(n) = &self.snat {
            if !valid_iface_prefix(&n.keep_dev) {
                return Err(DataplaneError::Nft(format!(
                    "device {:?} is not a usable interface name",
                    n.keep_dev
                )));
            }
            let _ = writeln!(
                s,
                "add rule ip {TABLE} postrouting ip saddr {p} ip daddr != {p} oifname != \"{d}\" masquerade comment \"pods leave the pod network as the node\"",
                p = n.pod_cidr,
                d = n.keep_dev
            );
        }
        Ok(s)
    }

    /// The whole ruleset, the network-policy concern included when it is
    /// known, given the policy helpers the table holds now.
    pub fn script_with(&self, existing: &Helpers) -> Result<String> {
        let mut s = self.script()?;
        if let Some(p) = &self.policy {
            s.push_str(&p.script(existing)?);
        }
        Ok(s)
    }

    /// Applies the whole ruleset in one transaction.
    pub fn apply(&self) -> Result<()> {
        let existing = if self.policy.is_some() {
            existing_helpers()?
        } else {
            Helpers::default()
        };
        apply(&self.script_with(&existing)?)
    }
}

/// The set of the other nodes' underlay addresses (overlay mode).
pub const VXLAN_PEERS: &str = "vxlan-peers";

/// Makes the VXLAN peer set exactly `peers`, in one transaction.
pub fn set_vxlan_peers(peers: &std::collections::BTreeSet<Ipv4Addr>) -> Result<()> {
    let mut s = format!("flush set ip {TABLE} {VXLAN_PEERS}\n");
    if !peers.is_empty() {
        let list: Vec<String> = peers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "add element ip {TABLE} {VXLAN_PEERS} {{ {} }}",
            list.join(", ")
        );
    }
    apply(&s)
}

/// Applies `rules` (nft syntax) atomically in the caller's network namespace.
pub fn apply(rules: &str) -> Result<()> {
    let fail = DataplaneError::Nft;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("running nft: {e} (is nftables installed?)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "rejected the ruleset: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_destinations_parse_and_refuse_junk() {
        let b: BlockedDestination = "169.254.169.251:2379".parse().expect("ip:port");
        assert_eq!(b.to_string(), "169.254.169.251/32:2379");
        let b: BlockedDestination = "10.0.0.7/24".parse().expect("cidr");
        assert_eq!((b.net.to_string(), b.port), ("10.0.0.0/24".into(), None));
        for bad in [
            "",
            "x",
            "10.0.0.1:0",
            "10.0.0.1:70000",
            "10.0.0.1:",
            "1.2.3.4/40",
            "::1",
        ] {
            assert!(bad.parse::<BlockedDestination>().is_err(), "{bad}");
        }
    }

    fn rules() -> NodeRules {
        NodeRules {
            pod_iface_prefix: "eni".into(),
            guard: PodEgressGuard {
                deny_imds: true,
                blocked: vec!["169.254.169.251:2379".parse().expect("b")],
            },
            snat: None,
            tunnel: None,
            external_pod_access: ExternalPodAccess::Deny,
            policy: None,
        }
    }

    #[test]
    fn the_policy_chain_is_refilled_only_when_its_content_is_known() {
        let s = rules().script_with(&Helpers::default()).expect("script");
        assert!(s.contains("add chain ip podwire network-policy"), "{s}");
        assert!(
            !s.contains("flush chain ip podwire network-policy"),
            "a restart must keep the last policies until new ones replace them:\n{s}"
        );
        assert!(
            !s.contains("flush set ip podwire cluster-nets"),
            "a restart must keep the cluster's addresses:\n{s}"
        );
        let mut r = rules();
        r.policy = Some(PolicyRuleset {
            rules: vec!["ip daddr 10.0.0.5 counter drop".into()],
            ..PolicyRuleset::default()
        });
        let s = r.script_with(&Helpers::default()).expect("script");
        let flush = s
            .find("flush chain ip podwire network-policy")
            .expect("flush");
        let rule = s
            .find("add rule ip podwire network-policy ip daddr")
            .expect("rule");
        assert!(flush < rule, "{s}");
    }

    #[test]
    fn the_posture_follows_the_setting() {
        let s = rules().script().expect("script");
        assert!(
            s.contains("add rule ip podwire external-posture counter drop"),
            "{s}"
        );
        let mut r = rules();
        r.external_pod_access = ExternalPodAccess::Allow;
        let s = r.script().expect("script");
        assert!(s.contains("flush chain ip podwire external-posture"), "{s}");
        assert!(!s.contains("add rule ip podwire external-posture"), "{s}");
    }

    #[test]
    fn the_script_never_deletes_and_keeps_the_order() {
        let s = rules().script().expect("script");
        assert!(
            !s.contains("delete"),
            "a restart must not open a window:\n{s}"
        );
        let guard = s.find("jump pod-egress-guard").expect("guard jump");
        let posture = s.find("jump external-posture").expect("posture jump");
        let policy = s.find("jump network-policy").expect("policy jump");
        assert!(guard < posture && posture < policy, "{s}");
        assert!(s.contains("ip daddr 169.254.169.254"), "{s}");
        assert!(s.contains("tcp dport 2379"), "{s}");
    }

    #[test]
    fn names_that_could_inject_rules_are_refused() {
        let mut r = rules();
        r.pod_iface_prefix = "eni\" accept #".into();
        assert!(r.script().is_err());
        let mut r = rules();
        r.tunnel = Some(Tunnel {
            dev: "vx\" accept".into(),
            udp_port: 4789,
        });
        assert!(r.script().is_err());
        let mut r = rules();
        r.snat = Some(Snat {
            pod_cidr: "172.16.0.0/16".parse().expect("net"),
            keep_dev: "x\"; flush ruleset".into(),
        });
        assert!(r.script().is_err());
    }
}
