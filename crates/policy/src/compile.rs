//! What one node enforces: for each local endpoint, the chain of its
//! ingress and egress checks (shared between pods whose checks are the
//! same), and the address sets those chains match. Named ports are
//! resolved here: ingress against the local pod, egress against each
//! destination pod (as address . port pairs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use podwire_cluster::Protocol;

use crate::model::{PolicyPeer, PortRef, Rule};
use crate::view::{Index, PodInfo};
use crate::{ClusterView, NetworkPolicy, PolicyType};

/// An inclusive range of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

/// Which far ends a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerMatch {
    Any,
    /// Index into [`NodeRules::addr_sets`].
    Set(usize),
}

/// Which ports a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortMatch {
    Any,
    /// (protocol, first, last); `None` = every port of the protocol.
    Ports(Vec<(Protocol, Option<(u16, u16)>)>),
    /// Egress to named ports: (destination address, port) pairs, index
    /// into [`NodeRules::pair_sets`], for one protocol.
    Pairs(Protocol, usize),
}

/// One allow rule of a chain: the far end and the ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleMatch {
    pub peer: PeerMatch,
    pub ports: PortMatch,
    /// `namespace/name ingress[i]`.
    pub comment: String,
}

/// The checks of one direction for the pods that share them: each rule
/// allows (returns); what no rule allows is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChainRules {
    pub isolated_by: Vec<String>,
    pub rules: Vec<RuleMatch>,
}

/// What one node enforces for its local endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeRules {
    pub node: String,
    /// Drop traffic to and from a pod interface whose address is not a
    /// known local endpoint (a pod whose rules do not exist yet).
    pub closed_until_known: bool,
    /// Every local endpoint address.
    pub local: BTreeSet<Ipv4Addr>,
    /// Local pod address → index into `ingress_chains` (isolated pods only).
    pub ingress: BTreeMap<Ipv4Addr, usize>,
    pub egress: BTreeMap<Ipv4Addr, usize>,
    pub ingress_chains: Vec<ChainRules>,
    pub egress_chains: Vec<ChainRules>,
    /// Address sets, merged and sorted ranges, none empty.
    pub addr_sets: Vec<Vec<AddrRange>>,
    /// What each of `addr_sets` stands for (the peers, and the namespace
    /// when it matters): stable while the policies are, whatever pods come
    /// and go. The set's name derives from it, so a pod that joins a set
    /// changes its elements, not the chains that refer to it.
    pub addr_set_keys: Vec<String>,
    /// (address, port) sets, sorted, none empty.
    pub pair_sets: Vec<Vec<(Ipv4Addr, u16)>>,
    /// What each of `pair_sets` stands for, as `addr_set_keys`.
    pub pair_set_keys: Vec<String>,
}

/// Sets interned by what they stand for, with their current elements.
struct Keyed<T> {
    keys: Interner<String>,
    items: Vec<T>,
}

impl<T> Default for Keyed<T> {
    fn default() -> Self {
        Keyed {
            keys: Interner::default(),
            items: Vec::new(),
        }
    }
}

impl<T> Keyed<T> {
    fn get(&mut self, key: String, items: T) -> usize {
        let i = self.keys.get(key);
        if i == self.items.len() {
            self.items.push(items);
        }
        i
    }
}

struct Interner<T: std::hash::Hash + Eq + Clone> {
    items: Vec<T>,
    index: HashMap<T, usize>,
}

impl<T: std::hash::Hash + Eq + Clone> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            items: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<T: std::hash::Hash + Eq + Clone> Interner<T> {
    fn get(&mut self, t: T) -> usize {
        if let Some(i) = self.index.get(&t) {
            return *i;
        }
        self.items.push(t.clone());
        self.index.insert(t, self.items.len() - 1);
        self.items.len() - 1
    }
}

/// Compiles what `node` enforces for its endpoints.
pub fn compile(view: &ClusterView, node: &str) -> NodeRules {
    let idx = Index::new(view);
    let mut c = Compiler {
        idx: &idx,
        addr_sets: Keyed::default(),
        pair_sets: Keyed::default(),
        peer_cache: HashMap::new(),
        peers_cache: HashMap::new(),
        pair_cache: HashMap::new(),
        pairs_cache: HashMap::new(),
        range_cache: HashMap::new(),
    };
    let mut ingress_chains = Interner::default();
    let mut egress_chains = Interner::default();
    let mut out = NodeRules {
        node: node.to_string(),
        closed_until_known: true,
        ..NodeRules::default()
    };
    for e in view.endpoints.iter().filter(|e| e.node == node) {
        out.local.insert(e.ip);
        let Some(pod) = e
            .pod
            .as_ref()
            .and_then(|r| idx.by_ref.get(r))
            .and_then(|i| idx.pod(*i))
        else {
            continue;
        };
        if let Some(ch) = c.chain(pod, PolicyType::Ingress) {
            out.ingress.insert(e.ip, ingress_chains.get(ch));
        }
        if let Some(ch) = c.chain(pod, PolicyType::Egress) {
            out.egress.insert(e.ip, egress_chains.get(ch));
        }
    }
    out.ingress_chains = ingress_chains.items;
    out.egress_chains = egress_chains.items;
    out.addr_sets = c.addr_sets.items;
    out.addr_set_keys = c.addr_sets.keys.items;
    out.pair_sets = c.pair_sets.items;
    out.pair_set_keys = c.pair_sets.keys.items;
    out
}

type PeersCache = HashMap<(Option<String>, Vec<PolicyPeer>), Option<PeerMatch>>;

struct Compiler<'i, 'a> {
    idx: &'i Index<'a>,
    addr_sets: Keyed<Vec<AddrRange>>,
    pair_sets: Keyed<Vec<(Ipv4Addr, u16)>>,
    /// (policy index, direction, rule index) → peer match: computed once.
    peer_cache: HashMap<(usize, PolicyType, usize), Option<PeerMatch>>,
    /// (namespace if it matters, peer list) → peer match.
    peers_cache: PeersCache,
    /// (policy index, egress rule index, protocol) → the pair set of its
    /// named ports (independent of the source pod): computed once.
    pair_cache: HashMap<(usize, usize, Protocol), Option<usize>>,
    /// (peer match, protocol, port names) → pair set: rules repeat them.
    pairs_cache: HashMap<(PeerMatch, Protocol, Vec<String>), Option<usize>>,
    /// (the policy's namespace for a podSelector-only peer, peer) → its
    /// addresses: policies repeat peers.
    range_cache: HashMap<(Option<String>, PolicyPeer), Vec<AddrRange>>,
}

impl Compiler<'_, '_> {
    fn chain(&mut self, pod: &PodInfo, t: PolicyType) -> Option<ChainRules> {
        let view = self.idx.view;
        let mut chain = ChainRules {
            isolated_by: Vec::new(),
            rules: Vec::new(),
        };
        for (pi, p) in view.policies.iter().enumerate() {
            if p.namespace != pod.r.namespace
                || !p.applies_to(t)
                || !p.pod_selector.matches(&pod.labels)
            {
                continue;
            }
            chain.isolated_by.push(p.key());
            let rules = match t {
                PolicyType::Ingress => &p.ingress,
                PolicyType::Egress => &p.egress,
            };
            for (ri, r) in rules.iter().enumerate() {
                let dir = match t {
                    PolicyType::Ingress => "ingress",
                    PolicyType::Egress => "egress",
                };
                let comment = format!("{} {dir}[{ri}]", p.key());
                let Some(peer) = self.peer(pi, p, t, ri, r) else {
                    continue; // matches no address
                };
                self.rule_ports(pod, (pi, ri), t, r, peer, comment, &mut chain.rules);
            }
        }
        if chain.isolated_by.is_empty() {
            None
        } else {
            Some(chain)
        }
    }

    /// The addresses a rule's peers match; `None` when none.
    fn peer(
        &mut self,
        pi: usize,
        p: &NetworkPolicy,
        t: PolicyType,
        ri: usize,
        r: &Rule,
    ) -> Option<PeerMatch> {
        if let Some(m) = self.peer_cache.get(&(pi, t, ri)) {
            return m.clone();
        }
        // Policies repeat whole peer lists: the same list (in the same
        // namespace, when a podSelector alone refers to it) is one set.
        let ns_matters = r
            .peers
            .iter()
            .any(|pe| pe.ip_block.is_none() && pe.namespace_selector.is_none());
        let key = (ns_matters.then(|| p.namespace.clone()), r.peers.clone());
        if let Some(m) = self.peers_cache.get(&key) {
            self.peer_cache.insert((pi, t, ri), m.clone());
            return m.clone();
        }
        let m = if r.peers.is_empty() {
            Some(PeerMatch::Any)
        } else {
            let ranges = merge(self.rule_ranges(p, r));
            if ranges.is_empty() {
                None
            } else {
                // The peers (and the namespace when it matters) say what
                // the set is; the same list in another policy is the same
                // set.
                let what = format!("{:?} {:?}", key.0, key.1);
                Some(PeerMatch::Set(self.addr_sets.get(what, ranges)))
            }
        };
        self.peer_cache.insert((pi, t, ri), m.clone());
        self.peers_cache.insert(key, m.clone());
        m
    }

    fn rule_ranges(&mut self, p: &NetworkPolicy, r: &Rule) -> Vec<AddrRange> {
        let mut out = Vec::new();
        for peer in &r.peers {
            // The policy's namespace matters only to a podSelector alone.
            let ns = peer
                .namespace_selector
                .is_none()
                .then(|| p.namespace.clone());
            let key = (ns, peer.clone());
            if let Some(v) = self.range_cache.get(&key) {
                out.extend_from_slice(v);
                continue;
            }
            let v: Vec<AddrRange> = match &peer.ip_block {
                Some(b) => block_ranges(&b.cidr, &b.except),
                None => self
                    .idx
                    .selected_pods(p, peer)
                    .into_iter()
                    .flat_map(|pod| pod.addrs.iter())
                    .map(|(ip, _)| AddrRange {
                        first: *ip,
                        last: *ip,
                    })
                    .collect(),
            };
            out.extend_from_slice(&v);
            self.range_cache.insert(key, v);
        }
        out
    }

    /// Adds the rule's allow entries (one per kind of port match).
    #[allow(clippy::too_many_arguments)]
    fn rule_ports(
        &mut self,
        pod: &PodInfo,
        (pi, ri): (usize, usize),
        t: PolicyType,
        r: &Rule,
        peer: PeerMatch,
        comment: String,
        out: &mut Vec<RuleMatch>,
    ) {
        if r.ports.is_empty() {
            out.push(RuleMatch {
                peer,
                ports: PortMatch::Any,
                comment,
            });
            return;
        }
        let mut plain = Vec::new();
        let mut named: BTreeMap<Protocol, BTreeSet<&str>> = BTreeMap::new();
        for pp in &r.ports {
            match &pp.port {
                None => plain.push((pp.protocol, None)),
                Some(PortRef::Number(n)) => {
                    plain.push((pp.protocol, Some((*n, pp.end_port.unwrap_or(*n)))))
                }
                Some(PortRef::Name(name)) => match t {
                    // Ingress: the port is this pod's.
                    PolicyType::Ingress => {
                        if let Some(n) = pod.named_port(name, pp.protocol) {
                            plain.push((pp.protocol, Some((n, n))));
                        }
                    }
                    PolicyType::Egress => {
                        named.entry(pp.protocol).or_default().insert(name);
                    }
                },
            }
        }
        plain.sort();
        plain.dedup();
        if !plain.is_empty() {
            out.push(RuleMatch {
                peer: peer.clone(),
                ports: PortMatch::Ports(plain),
                comment: comment.clone(),
            });
        }
        for (proto, names) in named {
            let set = match self.pair_cache.get(&(pi, ri, proto)) {
                Some(set) => *set,
                None => {
                    let set = self.pairs(&peer, proto, &names);
                    self.pair_cache.insert((pi, ri, proto), set);
                    set
                }
            };
            if let Some(set) = set {
                out.push(RuleMatch {
                    peer: peer.clone(),
                    ports: PortMatch::Pairs(proto, set),
                    comment: comment.clone(),
                });
            }
        }
    }

    /// (address, port) of every pod the peers match that names one of
    /// `names` for `proto`; `None` when there is none.
    fn pairs(
        &mut self,
        peer: &PeerMatch,
        proto: Protocol,
        names: &BTreeSet<&str>,
    ) -> Option<usize> {
        let key = (
            peer.clone(),
            proto,
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        );
        if let Some(set) = self.pairs_cache.get(&key) {
            return *set;
        }
        let set = self.pairs_uncached(peer, proto, names);
        self.pairs_cache.insert(key, set);
        set
    }

    fn pairs_uncached(
        &mut self,
        peer: &PeerMatch,
        proto: Protocol,
        names: &BTreeSet<&str>,
    ) -> Option<usize> {
        let ranges = match peer {
            PeerMatch::Any => None,
            PeerMatch::Set(i) => self.addr_sets.items.get(*i).cloned(),
        };
        let mut pairs = BTreeSet::new();
        for dst in &self.idx.pods {
            for (ip, _) in &dst.addrs {
                let inside = ranges.as_ref().is_none_or(|rs| in_ranges(rs, *ip));
                if !inside {
                    continue;
                }
                for n in names {
                    if let Some(port) = dst.named_port(n, proto) {
                        pairs.insert((*ip, port));
                    }
                }
            }
        }
        if pairs.is_empty() {
            None
        } else {
            let peers = match peer {
                PeerMatch::Any => "any",
                PeerMatch::Set(i) => self.addr_sets.keys.items.get(*i).map_or("", String::as_str),
            };
            let what = format!("{peers} {proto:?} {names:?}");
            Some(self.pair_sets.get(what, pairs.into_iter().collect()))
        }
    }
}

/// A v4 block minus its exceptions, as ranges (v6 blocks: none).
pub(crate) fn block_ranges(cidr: &str, except: &[String]) -> Vec<AddrRange> {
    let v4 = |s: &str| match crate::validate::cidr(s) {
        Some(ipnet::IpNet::V4(n)) => {
            let n = n.trunc();
            Some((u32::from(n.network()), u32::from(n.broadcast())))
        }
        _ => None,
    };
    let Some(block) = v4(cidr) else {
        return Vec::new();
    };
    let mut parts = vec![block];
    for e in except.iter().filter_map(|e| v4(e)) {
        let mut next = Vec::new();
        for (a, b) in parts {
            if e.1 < a || e.0 > b {
                next.push((a, b));
                continue;
            }
            if e.0 > a {
                next.push((a, e.0 - 1));
            }
            if e.1 < b {
                next.push((e.1 + 1, b));
            }
        }
        parts = next;
    }
    parts
        .into_iter()
        .map(|(a, b)| AddrRange {
            first: Ipv4Addr::from(a),
            last: Ipv4Addr::from(b),
        })
        .collect()
}

/// Is `ip` in one of the sorted, disjoint `ranges`?
pub(crate) fn in_ranges(ranges: &[AddrRange], ip: Ipv4Addr) -> bool {
    // The last range starting at or before ip is the only candidate.
    let i = ranges.partition_point(|r| r.first <= ip);
    i > 0 && ranges.get(i - 1).is_some_and(|r| ip <= r.last)
}

/// Sorts and merges overlapping or adjacent ranges (nft interval sets
/// refuse overlaps).
pub(crate) fn merge(mut v: Vec<AddrRange>) -> Vec<AddrRange> {
    v.sort();
    let mut out: Vec<AddrRange> = Vec::with_capacity(v.len());
    for r in v {
        if let Some(last) = out.last_mut() {
            let end = u32::from(last.last);
            if u32::from(r.first) <= end.saturating_add(1) {
                if r.last > last.last {
                    last.last = r.last;
                }
                continue;
            }
        }
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &str, b: &str) -> AddrRange {
        AddrRange {
            first: a.parse().expect("ip"),
            last: b.parse().expect("ip"),
        }
    }

    #[test]
    fn blocks_minus_exceptions_are_ranges() {
        let v = block_ranges(
            "10.0.0.0/24",
            &[
                "10.0.0.0/30".into(),
                "10.0.0.128/25".into(),
                "10.0.0.9/32".into(),
            ],
        );
        assert_eq!(
            v,
            vec![r("10.0.0.4", "10.0.0.8"), r("10.0.0.10", "10.0.0.127")]
        );
        // Host bits in the cidr are ignored; everything of 0.0.0.0/0.
        assert_eq!(
            block_ranges("10.1.2.3/8", &[]),
            vec![r("10.0.0.0", "10.255.255.255")]
        );
        assert_eq!(
            block_ranges("0.0.0.0/0", &["255.255.255.255/32".into()]),
            vec![r("0.0.0.0", "255.255.255.254")]
        );
        assert!(block_ranges("fd00::/8", &[]).is_empty());
    }

    #[test]
    fn membership_in_sorted_ranges() {
        let v = vec![r("10.0.0.1", "10.0.0.5"), r("10.0.0.9", "10.0.0.9")];
        for (ip, want) in [
            ("10.0.0.0", false),
            ("10.0.0.1", true),
            ("10.0.0.5", true),
            ("10.0.0.6", false),
            ("10.0.0.9", true),
            ("10.0.0.10", false),
        ] {
            assert_eq!(in_ranges(&v, ip.parse().expect("ip")), want, "{ip}");
        }
        assert!(!in_ranges(&[], "10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn ranges_merge_when_they_touch_or_overlap() {
        let v = merge(vec![
            r("10.0.0.5", "10.0.0.5"),
            r("10.0.0.1", "10.0.0.4"),
            r("10.0.0.3", "10.0.0.3"),
            r("10.0.0.9", "10.0.0.9"),
            r("255.255.255.255", "255.255.255.255"),
            r("255.255.255.0", "255.255.255.255"),
        ]);
        assert_eq!(
            v,
            vec![
                r("10.0.0.1", "10.0.0.5"),
                r("10.0.0.9", "10.0.0.9"),
                r("255.255.255.0", "255.255.255.255")
            ]
        );
    }
}
