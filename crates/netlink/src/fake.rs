//! An in-memory kernel for tests that must not need root (feature
//! `test-util`): [`FakeKernel`] holds network namespaces with their links,
//! addresses, routes, rules, neighbours and FDB entries; [`FakeNetlink`] is a
//! connection bound to one of them and implements [`Netlink`].
//!
//! It records every operation (batch requests one by one, as the kernel
//! handles them) and can be told to fail the Nth one from now, so a test can
//! walk a failure through every step of a procedure and check that nothing
//! is left behind. It keeps the kernel rules podwire's code depends on:
//! EEXIST/ENOENT/ENODEV as the kernel answers them, a renamed link must be
//! down (EBUSY), a route through a link needs it up (ENETDOWN), a gateway
//! without `onlink` needs a link-scope route to it (ENETUNREACH), deleting a
//! veth end deletes its peer and everything on both, and a batch tries every
//! request and returns the first failure. It does not add the routes the
//! kernel derives from addresses (local table, connected prefixes).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::Ipv4Net;
use nix::errno::Errno;

use crate::handle::BatchOp;
use crate::ops::Netlink;
use crate::route::RouteKind;
use crate::{Batch, Error, FdbEntry, Link, MacAddr, Neighbour, Result, Route, RouteScope, Rule};
use crate::{VethSpec, VxlanSpec};

/// The name of the namespace [`FakeKernel::host`] connects to.
pub const HOST_NS: &str = "host";

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// Longest alias the kernel takes (IFALIASZ - 1).
const MAX_ALIAS: usize = 255;

/// One operation a [`FakeNetlink`] was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The namespace it was sent in.
    pub ns: String,
    /// What, e.g. `add_route 10.0.0.5/32`.
    pub op: String,
    /// Whether it asks for a change (reads are false).
    pub mutates: bool,
    /// The errno it failed with, if it failed.
    pub failed: Option<Errno>,
}

/// A link as the fake keeps it: what [`Netlink::links`] reports, and the
/// other end of a veth.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FakeLink {
    link: Link,
    peer: Option<(String, u32)>,
}

/// One namespace's contents. Compared whole to check that a procedure left
/// nothing behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsState {
    links: BTreeMap<u32, FakeLink>,
    pub addresses: Vec<(u32, Ipv4Net)>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
}

impl NsState {
    /// Its links, by index.
    pub fn links(&self) -> Vec<Link> {
        self.links.values().map(|l| l.link.clone()).collect()
    }

    /// The link called `name`.
    pub fn link(&self, name: &str) -> Option<Link> {
        self.by_name(name).map(|l| l.link.clone())
    }

    fn by_name(&self, name: &str) -> Option<&FakeLink> {
        self.links.values().find(|l| l.link.name == name)
    }

    fn up(&self, index: u32) -> Result<bool, Errno> {
        self.links
            .get(&index)
            .map(|l| l.link.up)
            .ok_or(Errno::ENODEV)
    }
}

#[derive(Debug, Default)]
struct World {
    namespaces: BTreeMap<String, NsState>,
    next_index: u32,
    /// Operations so far.
    count: usize,
    /// The operation (by `count`) that fails, and how.
    fail_at: Option<(usize, Errno)>,
    calls: Vec<Call>,
}

/// The test's view of the fake kernel: sets it up, injects failures and
/// reads what happened. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct FakeKernel {
    world: Arc<Mutex<World>>,
}

impl Default for FakeKernel {
    fn default() -> Self {
        FakeKernel::new()
    }
}

fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    // A panicking test thread leaves data a test can still read.
    world.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeKernel {
    /// A kernel with one empty namespace, [`HOST_NS`] (plus `lo`, index 1).
    pub fn new() -> FakeKernel {
        let mut w = World {
            next_index: 1,
            ..World::default()
        };
        w.namespaces.insert(HOST_NS.into(), NsState::default());
        let k = FakeKernel {
            world: Arc::new(Mutex::new(w)),
        };
        k.add_link(HOST_NS, "lo", None);
        k
    }

    /// A connection in the host namespace.
    pub fn host(&self) -> FakeNetlink {
        self.connect(HOST_NS)
    }

    /// A connection in namespace `ns` (which need not exist yet: then its
    /// operations fail with EBADF, as a socket in a dead namespace would).
    pub fn connect(&self, ns: &str) -> FakeNetlink {
        FakeNetlink {
            world: self.world.clone(),
            ns: ns.to_string(),
        }
    }

    /// Creates an empty namespace reachable at `path` (with `lo`), as a
    /// runtime creates a sandbox; returns its name for [`FakeKernel::state`].
    pub fn add_netns(&self, path: &Path) -> String {
        let name = path.display().to_string();
        lock(&self.world)
            .namespaces
            .insert(name.clone(), NsState::default());
        self.add_link(&name, "lo", None);
        name
    }

    /// Destroys a namespace as the kernel does when its last user goes:
    /// a veth inside takes its peer (in another namespace) with it.
    pub fn remove_netns(&self, path: &Path) {
        let name = path.display().to_string();
        let mut w = lock(&self.world);
        if let Some(st) = w.namespaces.remove(&name) {
            for l in st.links.values() {
                if let Some((pns, pidx)) = &l.peer {
                    if let Some(p) = w.namespaces.get_mut(pns) {
                        remove_link(p, *pidx);
                    }
                }
            }
        }
    }

    /// Adds a plain link (a physical NIC, `lo`, an old plugin's leftover)
    /// without going through [`Netlink`] (not recorded, never failed).
    pub fn add_link(&self, ns: &str, name: &str, alias: Option<&str>) -> Link {
        let mut w = lock(&self.world);
        let index = w.next_index;
        w.next_index += 1;
        let link = Link {
            index,
            name: name.to_string(),
            mac: Some(mac_for(index)),
            mtu: 1500,
            up: true,
            kind: None,
            alias: alias.map(str::to_string),
            group: 0,
        };
        if let Some(st) = w.namespaces.get_mut(ns) {
            st.links.insert(
                index,
                FakeLink {
                    link: link.clone(),
                    peer: None,
                },
            );
        }
        link
    }

    /// Makes the `n`th operation from now fail with `errno` (1 = the next
    /// one); every operation counts, reads and each request of a batch.
    pub fn fail_nth(&self, n: usize, errno: Errno) {
        let mut w = lock(&self.world);
        w.fail_at = Some((w.count + n, errno));
    }

    /// Operations so far.
    pub fn op_count(&self) -> usize {
        lock(&self.world).count
    }

    /// Every operation since the last [`FakeKernel::take_calls`].
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut lock(&self.world).calls)
    }

    /// Whether the injected failure has happened (or none is pending).
    pub fn failure_consumed(&self) -> bool {
        let w = lock(&self.world);
        w.fail_at.is_none_or(|(at, _)| at <= w.count)
    }

    /// A copy of namespace `ns` (empty when it does not exist).
    pub fn state(&self, ns: &str) -> NsState {
        lock(&self.world)
            .namespaces
            .get(ns)
            .cloned()
            .unwrap_or_default()
    }

    /// Copies of every namespace, to compare before and after.
    pub fn snapshot(&self) -> BTreeMap<String, NsState> {
        lock(&self.world).namespaces.clone()
    }
}

/// A stable MAC for links created without one.
fn mac_for(index: u32) -> MacAddr {
    let b = index.to_be_bytes();
    MacAddr([0x02, 0xfa, b[0], b[1], b[2], b[3]])
}

/// A connection bound to one namespace of a [`FakeKernel`].
#[derive(Debug, Clone)]
pub struct FakeNetlink {
    world: Arc<Mutex<World>>,
    ns: String,
}

/// An open namespace of the fake: its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeNetns(pub String);

fn kernel(op: &str, errno: Errno) -> Error {
    Error::Kernel {
        op: op.to_string(),
        source: errno,
    }
}

/// Removes a link and everything on it (not its peer).
fn remove_link(st: &mut NsState, index: u32) -> Option<FakeLink> {
    let l = st.links.remove(&index)?;
    st.addresses.retain(|(i, _)| *i != index);
    st.routes.retain(|r| r.oif != Some(index));
    st.neighbours.retain(|n| n.ifindex != index);
    st.fdb.retain(|e| e.ifindex != index);
    Some(l)
}

impl FakeNetlink {
    /// The namespace this connection is bound to.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Runs one operation: counts and records it, fails it when told to,
    /// else applies `f` to the world.
    fn op<T>(
        &mut self,
        name: String,
        mutates: bool,
        f: impl FnOnce(&mut World, &str) -> Result<T, Errno>,
    ) -> Result<T> {
        let mut w = lock(&self.world);
        w.count += 1;
        let injected = match w.fail_at {
            Some((at, errno)) if at == w.count => Some(errno),
            _ => None,
        };
        let out = match injected {
            Some(e) => Err(e),
            None if !w.namespaces.contains_key(&self.ns) => Err(Errno::EBADF),
            None => f(&mut w, &self.ns),
        };
        w.calls.push(Call {
            ns: self.ns.clone(),
            op: name.clone(),
            mutates,
            failed: out.as_ref().err().copied(),
        });
        out.map_err(|e| kernel(&name, e))
    }

    fn apply(&mut self, op: &BatchOp) -> Result<()> {
        match op {
            BatchOp::SetUp(i) => self.set_up(*i),
            BatchOp::AddAddress(i, a) => self.add_address(*i, *a),
            BatchOp::AddRoute(r) => self.add_route(r),
            BatchOp::ReplaceRoute(r) => self.replace_route(r),
            BatchOp::DeleteRoute(r) => self.delete_route(r),
            BatchOp::AddRule(r) => self.add_rule(r),
            BatchOp::ReplaceNeighbour(n) => self.replace_neighbour(n),
            BatchOp::DeleteNeighbour(n) => self.delete_neighbour(n),
            BatchOp::ReplaceFdb(e) => self.replace_fdb(e),
            BatchOp::DeleteFdb(e) => self.delete_fdb(e),
        }
    }
}

fn ns_mut<'a>(w: &'a mut World, ns: &str) -> Result<&'a mut NsState, Errno> {
    w.namespaces.get_mut(ns).ok_or(Errno::EBADF)
}

fn check_name(name: &str) -> Result<(), Errno> {
    if name.is_empty() || name.len() > MAX_IFNAME || name.contains(['/', ' ']) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// The kernel's checks before a unicast route through a link is added.
fn check_route(st: &NsState, r: &Route) -> Result<(), Errno> {
    if r.kind != RouteKind::Unicast {
        return Ok(());
    }
    if let Some(oif) = r.oif {
        if !st.up(oif)? {
            return Err(Errno::ENETDOWN);
        }
    }
    if let (Some(gw), false) = (r.gateway, r.onlink) {
        let reachable = st.routes.iter().any(|x| {
            x.table == r.table
                && x.scope == RouteScope::Link
                && x.dst.contains(&gw)
                && (r.oif.is_none() || x.oif == r.oif)
        });
        if !reachable {
            return Err(Errno::ENETUNREACH);
        }
    }
    Ok(())
}

fn same_key(a: &Route, b: &Route) -> bool {
    a.dst == b.dst && a.table == b.table
}

impl Netlink for FakeNetlink {
    type Netns = FakeNetns;

    fn open_netns(&mut self, path: &Path) -> Result<FakeNetns> {
        let name = path.display().to_string();
        match self.op(format!("open_netns {name}"), false, |w, _| {
            if w.namespaces.contains_key(&name) {
                Ok(FakeNetns(name.clone()))
            } else {
                Err(Errno::ENOENT)
            }
        }) {
            Err(Error::Kernel { source, .. }) => Err(Error::Netns {
                path: path.display().to_string(),
                source,
            }),
            other => other,
        }
    }

    fn handle_in(&mut self, ns: &FakeNetns) -> Result<FakeNetlink> {
        let target = ns.0.clone();
        self.op(format!("handle_in {target}"), false, |w, _| {
            if w.namespaces.contains_key(&target) {
                Ok(())
            } else {
                Err(Errno::ENOENT)
            }
        })?;
        Ok(FakeNetlink {
            world: self.world.clone(),
            ns: ns.0.clone(),
        })
    }

    fn links(&mut self) -> Result<Vec<Link>> {
        self.op("links".into(), false, |w, ns| Ok(ns_mut(w, ns)?.links()))
    }

    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        self.op(format!("link_by_name {name}"), false, |w, ns| {
            Ok(ns_mut(w, ns)?.link(name))
        })
    }

    fn add_veth_into(&mut self, spec: &VethSpec<'_>, peer_netns: Option<&FakeNetns>) -> Result<()> {
        let op = format!("add_veth {} <-> {}", spec.name, spec.peer_name);
        self.op(op, true, |w, ns| {
            if spec.peer_netns.is_some() && peer_netns.is_none() {
                // A raw file descriptor means nothing to the fake.
                return Err(Errno::EINVAL);
            }
            check_name(spec.name)?;
            check_name(spec.peer_name)?;
            let peer_ns = peer_netns.map_or(ns.to_string(), |p| p.0.clone());
            if !w.namespaces.contains_key(&peer_ns) {
                return Err(Errno::EBADF);
            }
            let taken = |w: &World, n: &str, name: &str| {
                w.namespaces
                    .get(n)
                    .is_some_and(|s| s.by_name(name).is_some())
            };
            if taken(w, ns, spec.name)
                || taken(w, &peer_ns, spec.peer_name)
                || (peer_ns == ns && spec.name == spec.peer_name)
            {
                return Err(Errno::EEXIST);
            }
            let (a, b) = (w.next_index, w.next_index + 1);
            w.next_index += 2;
            let mk = |index, name: &str, mac: Option<MacAddr>| Link {
                index,
                name: name.to_string(),
                mac: Some(mac.unwrap_or_else(|| mac_for(index))),
                mtu: spec.mtu.unwrap_or(1500),
                up: false,
                kind: Some("veth".into()),
                alias: None,
                group: 0,
            };
            ns_mut(w, ns)?.links.insert(
                a,
                FakeLink {
                    link: mk(a, spec.name, spec.mac),
                    peer: Some((peer_ns.clone(), b)),
                },
            );
            ns_mut(w, &peer_ns)?.links.insert(
                b,
                FakeLink {
                    link: mk(b, spec.peer_name, spec.peer_mac),
                    peer: Some((ns.to_string(), a)),
                },
            );
            Ok(())
        })
    }

    fn add_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<()> {
        self.op(format!("add_vxlan {}", spec.name), true, |w, ns| {
            check_name(spec.name)?;
            let index = w.next_index;
            let st = ns_mut(w, ns)?;
            if st.by_name(spec.name).is_some() {
                return Err(Errno::EEXIST);
            }
            if !st.links.contains_key(&spec.underlay_index) {
                return Err(Errno::ENODEV);
            }
            st.links.insert(
                index,
                FakeLink {
                    link: Link {
                        index,
                        name: spec.name.to_string(),
                        mac: Some(spec.mac.unwrap_or_else(|| mac_for(index))),
                        mtu: spec.mtu,
                        up: false,
                        kind: Some("vxlan".into()),
                        alias: None,
                        group: 0,
                    },
                    peer: None,
                },
            );
            w.next_index += 1;
            Ok(())
        })
    }

    fn set_up(&mut self, index: u32) -> Result<()> {
        self.op(format!("set_up {index}"), true, |w, ns| {
            let l = ns_mut(w, ns)?.links.get_mut(&index).ok_or(Errno::ENODEV)?;
            l.link.up = true;
            Ok(())
        })
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.op(format!("set_mtu {index} {mtu}"), true, |w, ns| {
            let l = ns_mut(w, ns)?.links.get_mut(&index).ok_or(Errno::ENODEV)?;
            l.link.mtu = mtu;
            Ok(())
        })
    }

    fn rename_with_alias(&mut self, index: u32, name: &str, alias: &str, group: u32) -> Result<()> {
        let op = format!("rename_with_alias {index} {name} {alias:?} group {group}");
        self.op(op, true, |w, ns| {
            check_name(name)?;
            if alias.len() > MAX_ALIAS {
                return Err(Errno::EINVAL);
            }
            let st = ns_mut(w, ns)?;
            if st.by_name(name).is_some_and(|l| l.link.index != index) {
                return Err(Errno::EEXIST);
            }
            let l = st.links.get_mut(&index).ok_or(Errno::ENODEV)?;
            if l.link.up && l.link.name != name {
                return Err(Errno::EBUSY);
            }
            l.link.name = name.to_string();
            l.link.alias = (!alias.is_empty()).then(|| alias.to_string());
            l.link.group = group;
            Ok(())
        })
    }

    fn delete_link(&mut self, index: u32) -> Result<()> {
        self.op(format!("delete_link {index}"), true, |w, ns| {
            let l = remove_link(ns_mut(w, ns)?, index).ok_or(Errno::ENODEV)?;
            if let Some((pns, pidx)) = l.peer {
                if let Some(p) = w.namespaces.get_mut(&pns) {
                    remove_link(p, pidx);
                }
            }
            Ok(())
        })
    }

    fn delete_link_by_name(&mut self, name: &str) -> Result<bool> {
        let found = self.op(format!("delete_link_by_name {name}"), true, |w, ns| {
            let st = ns_mut(w, ns)?;
            let Some(index) = st.by_name(name).map(|l| l.link.index) else {
                return Ok(None);
            };
            let l = remove_link(st, index);
            if let Some((pns, pidx)) = l.and_then(|l| l.peer) {
                if let Some(p) = w.namespaces.get_mut(&pns) {
                    remove_link(p, pidx);
                }
            }
            Ok(Some(index))
        })?;
        Ok(found.is_some())
    }

    fn add_address(&mut self, index: u32, addr: Ipv4Net) -> Result<()> {
        self.op(format!("add_address {index} {addr}"), true, |w, ns| {
            let st = ns_mut(w, ns)?;
            if !st.links.contains_key(&index) {
                return Err(Errno::ENODEV);
            }
            if st.addresses.contains(&(index, addr)) {
                return Err(Errno::EEXIST);
            }
            st.addresses.push((index, addr));
            Ok(())
        })
    }

    fn delete_address(&mut self, index: u32, addr: Ipv4Net) -> Result<()> {
        self.op(format!("delete_address {index} {addr}"), true, |w, ns| {
            let st = ns_mut(w, ns)?;
            let before = st.addresses.len();
            st.addresses.retain(|a| *a != (index, addr));
            if st.addresses.len() == before {
                return Err(Errno::EADDRNOTAVAIL);
            }
            Ok(())
        })
    }

    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Net)>> {
        self.op("addresses".into(), false, |w, ns| {
            Ok(ns_mut(w, ns)?
                .addresses
                .iter()
                .filter(|(i, _)| index.is_none_or(|x| x == *i))
                .copied()
                .collect())
        })
    }

    fn add_route(&mut self, route: &Route) -> Result<()> {
        self.op(format!("add_route {}", describe(route)), true, |w, ns| {
            let st = ns_mut(w, ns)?;
            if st.routes.iter().any(|r| same_key(r, route)) {
                return Err(Errno::EEXIST);
            }
            check_route(st, route)?;
            st.routes.push(route.clone());
            Ok(())
        })
    }

    fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.op(
            format!("replace_route {}", describe(route)),
            true,
            |w, ns| {
                let st = ns_mut(w, ns)?;
                check_route(st, route)?;
                match st.routes.iter_mut().find(|r| same_key(r, route)) {
                    Some(r) => *r = route.clone(),
                    None => st.routes.push(route.clone()),
                }
                Ok(())
            },
        )
    }

    fn delete_route(&mut self, route: &Route) -> Result<()> {
        self.op(
            format!("delete_route {}", describe(route)),
            true,
            |w, ns| {
                let st = ns_mut(w, ns)?;
                // Matched as the kernel does for a delete request: key, type,
                // and the gateway and device when given; any protocol/scope.
                let hit = st.routes.iter().position(|r| {
                    same_key(r, route)
                        && (r.kind == RouteKind::Blackhole) == (route.kind == RouteKind::Blackhole)
                        && route.gateway.is_none_or(|g| r.gateway == Some(g))
                        && route.oif.is_none_or(|o| r.oif == Some(o))
                });
                match hit {
                    Some(i) => {
                        st.routes.remove(i);
                        Ok(())
                    }
                    None => Err(Errno::ESRCH),
                }
            },
        )
    }

    fn routes(&mut self) -> Result<Vec<Route>> {
        self.op("routes".into(), false, |w, ns| {
            Ok(ns_mut(w, ns)?.routes.clone())
        })
    }

    fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        self.op(format!("add_rule {rule:?}"), true, |w, ns| {
            let st = ns_mut(w, ns)?;
            if st.rules.contains(rule) {
                return Err(Errno::EEXIST);
            }
            st.rules.push(rule.clone());
            Ok(())
        })
    }

    fn delete_rule(&mut self, rule: &Rule) -> Result<()> {
        self.op(format!("delete_rule {rule:?}"), true, |w, ns| {
            let st = ns_mut(w, ns)?;
            match st.rules.iter().position(|r| r == rule) {
                Some(i) => {
                    st.rules.remove(i);
                    Ok(())
                }
                None => Err(Errno::ENOENT),
            }
        })
    }

    fn rules(&mut self) -> Result<Vec<Rule>> {
        self.op("rules".into(), false, |w, ns| {
            Ok(ns_mut(w, ns)?.rules.clone())
        })
    }

    fn replace_neighbour(&mut self, n: &Neighbour) -> Result<()> {
        let op = format!("replace_neighbour {} {} {}", n.ifindex, n.ip, n.mac);
        self.op(op, true, |w, ns| {
            let st = ns_mut(w, ns)?;
            if !st.links.contains_key(&n.ifindex) {
                return Err(Errno::ENODEV);
            }
            match st
                .neighbours
                .iter_mut()
                .find(|x| x.ifindex == n.ifindex && x.ip == n.ip)
            {
                Some(x) => *x = n.clone(),
                None => st.neighbours.push(n.clone()),
            }
            Ok(())
        })
    }

    fn delete_neighbour(&mut self, n: &Neighbour) -> Result<()> {
        let op = format!("delete_neighbour {} {}", n.ifindex, n.ip);
        self.op(op, true, |w, ns| {
            let st = ns_mut(w, ns)?;
            match st
                .neighbours
                .iter()
                .position(|x| x.ifindex == n.ifindex && x.ip == n.ip)
            {
                Some(i) => {
                    st.neighbours.remove(i);
                    Ok(())
                }
                None => Err(Errno::ENOENT),
            }
        })
    }

    fn permanent_neighbours(&mut self) -> Result<Vec<Neighbour>> {
        self.op("permanent_neighbours".into(), false, |w, ns| {
            Ok(ns_mut(w, ns)?.neighbours.clone())
        })
    }

    fn replace_fdb(&mut self, e: &FdbEntry) -> Result<()> {
        let op = format!("replace_fdb {} {} {}", e.ifindex, e.mac, e.dst);
        self.op(op, true, |w, ns| {
            let st = ns_mut(w, ns)?;
            if !st.links.contains_key(&e.ifindex) {
                return Err(Errno::ENODEV);
            }
            match st
                .fdb
                .iter_mut()
                .find(|x| x.ifindex == e.ifindex && x.mac == e.mac)
            {
                Some(x) => *x = e.clone(),
                None => st.fdb.push(e.clone()),
            }
            Ok(())
        })
    }

    fn delete_fdb(&mut self, e: &FdbEntry) -> Result<()> {
        let op = format!("delete_fdb {} {} {}", e.ifindex, e.mac, e.dst);
        self.op(op, true, |w, ns| {
            let st = ns_mut(w, ns)?;
            // A VXLAN device matches the remote too: a delete naming
            // another destination finds nothing.
            match st.fdb.iter().position(|x| x == e) {
                Some(i) => {
                    st.fdb.remove(i);
                    Ok(())
                }
                None => Err(Errno::ENOENT),
            }
        })
    }

    fn fdb(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        self.op(format!("fdb {ifindex}"), false, |w, ns| {
            Ok(ns_mut(w, ns)?
                .fdb
                .iter()
                .filter(|e| e.ifindex == ifindex)
                .cloned()
                .collect())
        })
    }

    fn commit(&mut self, batch: Batch) -> Result<()> {
        // The kernel handles every request of a datagram, in order, even
        // after one failed; the first failure is reported.
        let mut first = None;
        for op in batch.ops() {
            if let Err(e) = self.apply(op) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn describe(r: &Route) -> String {
    let mut s = format!("{}", r.dst);
    if r.kind == RouteKind::Blackhole {
        s = format!("blackhole {s}");
    }
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(o) = r.oif {
        s.push_str(&format!(" dev {o}"));
    }
    if r.table != crate::TABLE_MAIN {
        s.push_str(&format!(" table {}", r.table));
    }
    s
}
