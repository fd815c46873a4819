//! The netlink operations podwire's dataplane uses, as a trait: the real
//! [`Handle`] implements it by forwarding to its own methods (static
//! dispatch, nothing added on the way to the socket), and the test fake
//! (`fake::FakeKernel`, feature `test-util`) implements it over an
//! in-memory model, so pod wiring, its rollback, CHECK and overlay
//! convergence can be tested without root.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::{Batch, Error, FdbEntry, Handle, Link, Neighbour, Result, Route, Rule};
use crate::{VethSpec, VxlanSpec};

/// A route-netlink connection bound to one network namespace.
pub trait Netlink: Sized {
    /// An open network namespace: where a veth's peer can be created, and
    /// where another connection can be opened ([`Netlink::handle_in`]).
    type Netns;

    /// Opens the network namespace at `path` (checked to be one).
    fn open_netns(&mut self, path: &Path) -> Result<Self::Netns>;
    /// A connection inside `ns`.
    fn handle_in(&mut self, ns: &Self::Netns) -> Result<Self>;

    /// Every link in the namespace.
    fn links(&mut self) -> Result<Vec<Link>>;
    /// The link called `name`, if any (one targeted request).
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>>;
    /// The link called `name`, or a `NotFound` error.
    fn link(&mut self, name: &str) -> Result<Link> {
        self.link_by_name(name)?
            .ok_or_else(|| Error::NotFound(format!("link {name}")))
    }
    /// Creates a veth pair; its peer directly in `peer_netns` when given
    /// (which then takes the place of `spec.peer_netns`).
    fn add_veth_into(
        &mut self,
        spec: &VethSpec<'_>,
        peer_netns: Option<&Self::Netns>,
    ) -> Result<()>;
    fn add_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<()>;
    fn set_up(&mut self, index: u32) -> Result<()>;
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()>;
    /// Renames a link and sets its alias and group in one request; "exists" when
    /// another link has the name (nothing changes then).
    fn rename_with_alias(&mut self, index: u32, name: &str, alias: &str, group: u32) -> Result<()>;
    fn delete_link(&mut self, index: u32) -> Result<()>;
    /// Ok(false) when there was no such link.
    fn delete_link_by_name(&mut self, name: &str) -> Result<bool>;

    fn add_address(&mut self, index: u32, addr: Ipv4Net) -> Result<()>;
    fn delete_address(&mut self, index: u32, addr: Ipv4Net) -> Result<()>;
    /// IPv4 addresses of one link (all when `index` is None).
    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Net)>>;

    fn add_route(&mut self, route: &Route) -> Result<()>;
    fn replace_route(&mut self, route: &Route) -> Result<()>;
    fn delete_route(&mut self, route: &Route) -> Result<()>;
    fn routes(&mut self) -> Result<Vec<Route>>;

    fn add_rule(&mut self, rule: &Rule) -> Result<()>;
    fn delete_rule(&mut self, rule: &Rule) -> Result<()>;
    fn rules(&mut self) -> Result<Vec<Rule>>;

    fn replace_neighbour(&mut self, n: &Neighbour) -> Result<()>;
    fn delete_neighbour(&mut self, n: &Neighbour) -> Result<()>;
    fn permanent_neighbours(&mut self) -> Result<Vec<Neighbour>>;

    fn replace_fdb(&mut self, e: &FdbEntry) -> Result<()>;
    fn delete_fdb(&mut self, e: &FdbEntry) -> Result<()>;
    fn fdb(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>>;

    /// Sends a batch: every request is tried, in order; the first failure
    /// is returned.
    fn commit(&mut self, batch: Batch) -> Result<()>;
}

// `Handle::method(self, …)` names the inherent method (inherent functions
// win over trait ones in a path), so each of these is a direct call.
impl Netlink for Handle {
    type Netns = File;

    fn open_netns(&mut self, path: &Path) -> Result<File> {
        crate::netns::open_netns(path)
    }
    fn handle_in(&mut self, ns: &File) -> Result<Handle> {
        Handle::in_netns_file(ns)
    }
    fn links(&mut self) -> Result<Vec<Link>> {
        Handle::links(self)
    }
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        Handle::link_by_name(self, name)
    }
    fn link(&mut self, name: &str) -> Result<Link> {
        Handle::link(self, name)
    }
    fn add_veth_into(&mut self, spec: &VethSpec<'_>, peer_netns: Option<&File>) -> Result<()> {
        let spec = VethSpec {
            peer_netns: peer_netns.map(AsFd::as_fd).or(spec.peer_netns),
            ..*spec
        };
        Handle::add_veth(self, &spec)
    }
    fn add_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<()> {
        Handle::add_vxlan(self, spec)
    }
    fn set_up(&mut self, index: u32) -> Result<()> {
        Handle::set_up(self, index)
    }
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        Handle::set_mtu(self, index, mtu)
    }
    fn rename_with_alias(&mut self, index: u32, name: &str, alias: &str, group: u32) -> Result<()> {
        Handle::rename_with_alias(self, index, name, alias, group)
    }
    fn delete_link(&mut self, index: u32) -> Result<()> {
        Handle::delete_link(self, index)
    }
    fn delete_link_by_name(&mut self, name: &str) -> Result<bool> {
        Handle::delete_link_by_name(self, name)
    }
    fn add_address(&mut self, index: u32, addr: Ipv4Net) -> Result<()> {
        Handle::add_address(self, index, addr)
    }
    fn delete_address(&mut self, index: u32, addr: Ipv4Net) -> Result<()> {
        Handle::delete_address(self, index, addr)
    }
    fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Net)>> {
        Handle::addresses(self, index)
    }
    fn add_route(&mut self, route: &Route) -> Result<()> {
        Handle::add_route(self, route)
    }
    fn replace_route(&mut self, route: &Route) -> Result<()> {
        Handle::replace_route(self, route)
    }
    fn delete_route(&mut self, route: &Route) -> Result<()> {
        Handle::delete_route(self, route)
    }
    fn routes(&mut self) -> Result<Vec<Route>> {
        Handle::routes(self)
    }
    fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        Handle::add_rule(self, rule)
    }
    fn delete_rule(&mut self, rule: &Rule) -> Result<()> {
        Handle::delete_rule(self, rule)
    }
    fn rules(&mut self) -> Result<Vec<Rule>> {
        Handle::rules(self)
    }
    fn replace_neighbour(&mut self, n: &Neighbour) -> Result<()> {
        Handle::replace_neighbour(self, n)
    }
    fn delete_neighbour(&mut self, n: &Neighbour) -> Result<()> {
        Handle::delete_neighbour(self, n)
    }
    fn permanent_neighbours(&mut self) -> Result<Vec<Neighbour>> {
        Handle::permanent_neighbours(self)
    }
    fn replace_fdb(&mut self, e: &FdbEntry) -> Result<()> {
        Handle::replace_fdb(self, e)
    }
    fn delete_fdb(&mut self, e: &FdbEntry) -> Result<()> {
        Handle::delete_fdb(self, e)
    }
    fn fdb(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        Handle::fdb(self, ifindex)
    }
    fn commit(&mut self, batch: Batch) -> Result<()> {
        Handle::commit(self, batch)
    }
}
