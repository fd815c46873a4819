use std::fs::File;
use std::path::Path;

use ipnet::Ipv4Net;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::{netns, Error, FdbEntry, Neighbour, Result, Route, Rule};

/// One request on the wire: the message, its extra flags, and a name for
/// errors.
#[derive(Debug)]
pub(crate) struct Op {
    pub(crate) name: String,
    pub(crate) msg: RouteNetlinkMessage,
    pub(crate) flags: u16,
}

/// One request of a [`Batch`], as the caller asked for it. Kept typed (not
/// as a wire message) so that a [`crate::Netlink`] implementation other
/// than [`Handle`] (the test fake) can read what it is asked to do; the
/// handle encodes each exactly once, when the batch is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    SetUp(u32),
    AddAddress(u32, Ipv4Net),
    AddRoute(Route),
    ReplaceRoute(Route),
    DeleteRoute(Route),
    AddRule(Rule),
    ReplaceNeighbour(Neighbour),
    DeleteNeighbour(Neighbour),
    ReplaceFdb(FdbEntry),
    DeleteFdb(FdbEntry),
}

impl BatchOp {
    fn to_op(&self) -> Op {
        match self {
            BatchOp::SetUp(index) => crate::link::set_up_op(*index),
            BatchOp::AddAddress(index, addr) => crate::addr::add_address_op(*index, *addr),
            BatchOp::AddRoute(r) => crate::route::add_route_op(r),
            BatchOp::ReplaceRoute(r) => crate::route::replace_route_op(r),
            BatchOp::DeleteRoute(r) => crate::route::delete_route_op(r),
            BatchOp::AddRule(r) => crate::rule::add_rule_op(r),
            BatchOp::ReplaceNeighbour(n) => crate::neigh::replace_neighbour_op(n),
            BatchOp::DeleteNeighbour(n) => crate::neigh::delete_neighbour_op(n),
            BatchOp::ReplaceFdb(e) => crate::neigh::replace_fdb_op(e),
            BatchOp::DeleteFdb(e) => crate::neigh::delete_fdb_op(e),
        }
    }
}

/// Requests to send together with [`Handle::commit`]: one system call for
/// what would otherwise be one round trip each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub(crate) ops: Vec<BatchOp>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// The requests, in the order they will be sent.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }
}

/// A route-netlink socket bound to one network namespace.
#[derive(Debug)]
pub struct Handle {
    socket: Socket,
    seq: u32,
}

impl Handle {
    /// Opens a handle in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Extended acks make kernel errors carry their reason; harmless if
        // unsupported.
        let _ = socket.set_ext_ack(true);
        Ok(Handle { socket, seq: 0 })
    }

    /// Opens a handle inside the network namespace at `path` (for example
    /// `/run/netns/x`). The socket stays bound to that namespace, so the
    /// handle can be used from any thread afterwards.
    pub fn in_netns(path: &Path) -> Result<Self> {
        netns::switch_in(path, Handle::new)?
    }

    /// Opens a handle inside the already opened network namespace `ns` (see
    /// [`netns::open_netns`]); like [`Handle::in_netns`] without opening the
    /// path again.
    pub fn in_netns_file(ns: &File) -> Result<Self> {
        netns::switch_into(ns, Handle::new)?
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends a batch and waits for every answer; the first failure is
    /// returned.
    pub fn commit(&mut self, batch: Batch) -> Result<()> {
        self.apply(batch.ops.iter().map(BatchOp::to_op).collect())
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        let seq = self.next_seq();
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(seq)
    }

    /// Sends a request that expects an ACK; `op` names it in errors.
    pub(crate) fn request(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.apply(vec![Op {
            name: op.to_string(),
            msg,
            flags,
        }])
    }

    /// Sends several requests in one datagram (the kernel handles them in
    /// order, in one system call) and waits for every ACK. Returns the first
    /// failure; later requests have still been tried by the kernel.
    pub(crate) fn apply(&mut self, ops: Vec<Op>) -> Result<()> {
        // Bounded datagrams: the kernel's answers to one must fit the
        // socket's receive buffer.
        const CHUNK: usize = 256;
        let mut first_error = None;
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let mut buf = Vec::new();
            let mut pending: Vec<(u32, String)> = Vec::with_capacity(CHUNK);
            for op in ops.by_ref().take(CHUNK) {
                let mut header = NetlinkHeader::default();
                header.flags = NLM_F_REQUEST | NLM_F_ACK | op.flags;
                let seq = self.next_seq();
                header.sequence_number = seq;
                let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(op.msg));
                packet.finalize();
                let start = buf.len();
                buf.resize(start + packet.buffer_len(), 0);
                packet.serialize(&mut buf[start..]);
                pending.push((seq, op.name));
            }
            self.socket.send(&buf, 0)?;
            let mut acked = 0;
            self.receive(|msg| {
                if let NetlinkPayload::Error(err) = &msg.payload {
                    if let Some((_, name)) = pending
                        .iter()
                        .find(|(s, _)| *s == msg.header.sequence_number)
                    {
                        acked += 1;
                        if let (Some(code), None) = (err.code, &first_error) {
                            first_error = Some(Error::Kernel {
                                op: name.clone(),
                                source: errno_of(code),
                            });
                        }
                    }
                }
                acked == pending.len()
            })?;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends a request that is answered by one message (a GET without dump).
    pub(crate) fn request_one(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<RouteNetlinkMessage> {
        let seq = self.send(msg, 0)?;
        let mut answer = None;
        self.receive(|msg| {
            if msg.header.sequence_number != seq {
                return false;
            }
            answer = match msg.payload {
                NetlinkPayload::InnerMessage(inner) => Some(Ok(inner)),
                NetlinkPayload::Error(err) => Some(Err(Error::Kernel {
                    op: op.to_string(),
                    source: err.code.map_or(nix::errno::Errno::EPROTO, errno_of),
                })),
                _ => None,
            };
            answer.is_some()
        })?;
        answer.unwrap_or_else(|| Err(Error::Decode(format!("no answer to {op}"))))
    }

    /// Sends a dump request and collects every answer.
    pub(crate) fn dump(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        let mut failure = None;
        self.receive(|msg| {
            if msg.header.sequence_number != seq {
                return false;
            }
            match msg.payload {
                NetlinkPayload::Done(_) => true,
                NetlinkPayload::Error(err) => {
                    failure = err.code.map(|code| Error::Kernel {
                        op: op.to_string(),
                        source: errno_of(code),
                    });
                    true
                }
                NetlinkPayload::InnerMessage(inner) => {
                    out.push(inner);
                    false
                }
                _ => false,
            }
        })?;
        failure.map_or(Ok(out), Err)
    }

    /// Reads answers and hands each message to `f` until it returns true.
    fn receive(
        &mut self,
        mut f: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> bool,
    ) -> Result<()> {
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            for msg in Messages::new(&buf) {
                if f(msg?) {
                    return Ok(());
                }
            }
        }
    }
}

/// The messages of one datagram from the kernel, in order; decoding stops
/// at the first that does not decode.
#[derive(Debug)]
pub(crate) struct Messages<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Messages<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Messages<'a> {
        Messages { buf, failed: false }
    }
}

/// Messages start on 4-byte boundaries (NLMSG_ALIGN): a message whose
/// length is not a multiple of 4 is followed by padding.
fn nlmsg_align(len: usize) -> usize {
    len.saturating_add(3) & !3
}

impl Iterator for Messages<'_> {
    type Item = Result<NetlinkMessage<RouteNetlinkMessage>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(self.buf) {
            Ok(msg) => {
                // The decoder checked 16 <= length <= what is left.
                let len = usize::try_from(msg.header.length).unwrap_or(usize::MAX);
                let step = nlmsg_align(len).max(1).min(self.buf.len());
                self.buf = self.buf.get(step..).unwrap_or_default();
                Some(Ok(msg))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(Error::Decode(e.to_string())))
            }
        }
    }
}

/// The errno of an NLMSG_ERROR (the kernel sends it negated). A code with
/// no negation (i32::MIN) is a protocol error, not an overflow.
pub(crate) fn errno_of(code: std::num::NonZeroI32) -> nix::errno::Errno {
    code.get()
        .checked_neg()
        .map_or(nix::errno::Errno::EPROTO, nix::errno::Errno::from_raw)
}
