use std::net::IpAddr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::handle::{Batch, BatchOp, Op};
use crate::{Handle, Result};

/// An IPv4 policy-routing rule: `priority: from <src> to <dst> lookup <table>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub priority: u32,
    pub src: Option<Ipv4Net>,
    pub dst: Option<Ipv4Net>,
    pub table: u32,
}

impl Rule {
    pub(crate) fn to_message(&self) -> RuleMessage {
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.action = RuleAction::ToTable;
        // Tables above 255 do not fit the header: it then says
        // RT_TABLE_COMPAT (252) and the table attribute carries the number.
        msg.header.table = u8::try_from(self.table).unwrap_or(252);
        msg.attributes.push(RuleAttribute::Table(self.table));
        msg.attributes.push(RuleAttribute::Priority(self.priority));
        if let Some(src) = self.src {
            msg.header.src_len = src.prefix_len();
            msg.attributes
                .push(RuleAttribute::Source(IpAddr::V4(src.network())));
        }
        if let Some(dst) = self.dst {
            msg.header.dst_len = dst.prefix_len();
            msg.attributes
                .push(RuleAttribute::Destination(IpAddr::V4(dst.network())));
        }
        msg
    }

    /// Decodes a kernel rule (None: not IPv4, or malformed).
    pub(crate) fn from_message(msg: &RuleMessage) -> Option<Rule> {
        if msg.header.family != AddressFamily::Inet {
            return None;
        }
        let mut rule = Rule {
            priority: 0,
            src: None,
            dst: None,
            table: u32::from(msg.header.table),
        };
        let (mut src, mut dst) = (None, None);
        for attr in &msg.attributes {
            match attr {
                RuleAttribute::Priority(p) => rule.priority = *p,
                RuleAttribute::Table(t) => rule.table = *t,
                RuleAttribute::Source(IpAddr::V4(a)) => src = Some(*a),
                RuleAttribute::Destination(IpAddr::V4(a)) => dst = Some(*a),
                _ => {}
            }
        }
        // A selector that cannot be read makes the rule unreadable: read as
        // "from all" it would match (and be deleted as) another rule.
        rule.src = selector(src, msg.header.src_len)?;
        rule.dst = selector(dst, msg.header.dst_len)?;
        Some(rule)
    }
}

/// A rule's source or destination: none for /0, the prefix when the
/// address is there and the length valid, else malformed (outer None).
fn selector(addr: Option<std::net::Ipv4Addr>, len: u8) -> Option<Option<Ipv4Net>> {
    match (addr, len) {
        (None, 0) => Some(None),
        (Some(a), len) => Ipv4Net::new(a, len).ok().map(Some),
        (None, _) => None,
    }
}

impl Handle {
    /// Adds a rule; EEXIST if an identical rule exists.
    pub fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        self.apply(vec![add_rule_op(rule)])
    }

    /// Deletes a rule.
    pub fn delete_rule(&mut self, rule: &Rule) -> Result<()> {
        self.request(
            &format!("delete rule {rule:?}"),
            RouteNetlinkMessage::DelRule(rule.to_message()),
            0,
        )
    }

    /// IPv4 rules.
    pub fn rules(&mut self) -> Result<Vec<Rule>> {
        let mut req = RuleMessage::default();
        req.header.family = AddressFamily::Inet;
        let msgs = self.dump("list rules", RouteNetlinkMessage::GetRule(req))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Rule::from_message(r),
                _ => None,
            })
            .collect())
    }
}

pub(crate) fn add_rule_op(rule: &Rule) -> Op {
    Op {
        name: format!("add rule {rule:?}"),
        msg: RouteNetlinkMessage::NewRule(rule.to_message()),
        flags: NLM_F_CREATE | NLM_F_EXCL,
    }
}

impl Batch {
    /// See [`Handle::add_rule`].
    pub fn add_rule(mut self, rule: &Rule) -> Self {
        self.ops.push(BatchOp::AddRule(rule.clone()));
        self
    }
}
