//! The one record of a socket, from decoding to render.
//!
//! The kernel side (`kernel/`) decodes ring-buffer records and map entries into [`Socket`]s; the
//! model (`model/`) keeps the open ones and a log of the closed ones, updating counters and rates
//! in place; the views (`view/`, `json`) read them. A field a later stage learns (the local port
//! of an accepted socket, rates, the close) is added to this record, never to a copy of it.
//!
//! This module depends on nothing else in the crate: every stage may use it.

use std::{collections::VecDeque, net::Ipv4Addr};

pub use sockwatch_common::SocketKey;

/// Seconds of per-second history kept per socket (the details view's sparklines).
pub const HISTORY_LEN: usize = 300;
const SEC: u64 = 1_000_000_000;

/// A (pid, fd) names a socket only until the fd is closed and reused; adding the time it was
/// opened names one socket for good, so a closed socket and its fd's next owner never mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub key: SocketKey,
    /// Kernel monotonic time (ns) of its connect, accept, or adoption at start.
    pub opened_ns: u64,
}

impl SocketId {
    pub fn new(key: SocketKey, opened_ns: u64) -> Self {
        Self { key, opened_ns }
    }
}

/// The transport protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    /// The socket was created before sockwatch started (its `socket()` call was not seen) and
    /// /proc did not say either.
    #[default]
    Unknown,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Unknown => "unknown",
        }
    }
}

/// Who opened the connection: this machine (connect) or the peer (accept).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    #[default]
    Out,
    In,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Self::Out => "out",
            Self::In => "in",
        }
    }
}

/// How sockwatch came to know the socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// A `connect()` seen while running.
    #[default]
    Connect,
    /// An `accept()` seen while running.
    Accept,
    /// Found open in /proc when sockwatch started: counters start at zero then.
    Existing,
}

/// Where an open socket stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum State {
    /// A non-blocking connect under way (`-EINPROGRESS`), nothing sent yet.
    Connecting,
    #[default]
    Established,
}

/// Why a socket is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// `close()`.
    Close,
    /// `dup2`/`dup3` put another file on its fd.
    DupOnto,
    /// `close_range()`.
    CloseRange,
    /// Closed on `execve` (close-on-exec).
    Exec,
    /// The process exited without closing it.
    Exit,
    /// The periodic check against /proc found its fd gone or reused: an event was missed.
    Reconciled,
    /// It left the kernel's map without its close record reaching user space (the ring buffer
    /// dropped it): its counts are the last ones read from the map.
    Vanished,
}

impl CloseCause {
    pub fn label(self) -> &'static str {
        match self {
            Self::Close => "close",
            Self::DupOnto => "dup2",
            Self::CloseRange => "close_range",
            Self::Exec => "exec",
            Self::Exit => "exit",
            Self::Reconciled => "reconciled",
            Self::Vanished => "vanished",
        }
    }
}

/// How a socket ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// Kernel monotonic time (ns).
    pub at_ns: u64,
    /// The thread that closed it (for an exit, exec or a repair: the process id).
    pub tid: u32,
    pub cause: CloseCause,
}

/// Bytes per second, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throughput {
    pub send: u64,
    pub recv: u64,
}

impl Throughput {
    pub fn saturating_add(self, other: Self) -> Self {
        Self {
            send: self.send.saturating_add(other.send),
            recv: self.recv.saturating_add(other.recv),
        }
    }
}

/// A socket's rates, derived from its counters as successive map reads see them: the previous
/// reading and the current one live on the record, as bpftop keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rates {
    /// Over the latest interval between two readings; zero once closed.
    pub now: Throughput,
    /// One sample per second or more (as often as readings allow), oldest first.
    pub history: VecDeque<Throughput>,
    last_ns: u64,
    last_sent: u64,
    last_recv: u64,
    bucket_start_ns: u64,
    bucket_sent: u64,
    bucket_recv: u64,
}

impl Rates {
    /// A socket opened at `opened_ns` had moved nothing then: its first rate counts from then.
    fn starting(opened_ns: u64) -> Self {
        Self {
            last_ns: opened_ns,
            bucket_start_ns: opened_ns,
            ..Self::default()
        }
    }

    fn observe(&mut self, sent: u64, recv: u64, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        if elapsed == 0 {
            return;
        }
        // Counters only grow; saturating keeps a surprise (a reused entry) from wrapping.
        let sent_delta = sent.saturating_sub(self.last_sent);
        let recv_delta = recv.saturating_sub(self.last_recv);
        self.now = Throughput {
            send: per_second(sent_delta, elapsed),
            recv: per_second(recv_delta, elapsed),
        };
        self.last_ns = now_ns;
        self.last_sent = sent;
        self.last_recv = recv;
        self.bucket_sent = self.bucket_sent.saturating_add(sent_delta);
        self.bucket_recv = self.bucket_recv.saturating_add(recv_delta);
        let bucket = now_ns.saturating_sub(self.bucket_start_ns);
        if bucket >= SEC {
            if self.history.len() == HISTORY_LEN {
                self.history.pop_front();
            }
            self.history.push_back(Throughput {
                send: per_second(self.bucket_sent, bucket),
                recv: per_second(self.bucket_recv, bucket),
            });
            self.bucket_start_ns = now_ns;
            self.bucket_sent = 0;
            self.bucket_recv = 0;
        }
    }
}

pub fn per_second(bytes: u64, elapsed_ns: u64) -> u64 {
    if elapsed_ns == 0 {
        return 0;
    }
    let rate = u128::from(bytes) * u128::from(SEC) / u128::from(elapsed_ns);
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// The `pid` of a socket's key when no process is known to hold it (the socket backend: an
/// accepted socket nobody used, released by a kernel thread). Its key's `fd` then only keeps
/// such rows apart. No user process has pid 0.
pub const NO_HOLDER: u32 = 0;

/// The `fd` of a socket's key when its holder is known but not the fd: any value from
/// [`sockwatch_common::FD_UNKNOWN`] up (the kernel keeps such keys apart by their low bits).
pub const NO_FD: u32 = u32::MAX;

/// The process a key names; `None` for [`NO_HOLDER`].
pub fn holder_pid(key: SocketKey) -> Option<u32> {
    (key.pid != NO_HOLDER).then_some(key.pid)
}

/// The fd a key names; `None` when not known ([`NO_HOLDER`], [`NO_FD`]).
pub fn holder_fd(key: SocketKey) -> Option<u32> {
    (key.pid != NO_HOLDER && key.fd < sockwatch_common::FD_UNKNOWN).then_some(key.fd)
}

/// One socket: who holds it, both ends, its state, its counters and rates, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    pub id: SocketId,
    pub comm: String,
    /// The thread that connected (or accepted); for a socket found at start, the process id.
    pub tid: u32,
    pub proto: Proto,
    pub direction: Direction,
    pub origin: Origin,
    /// The remote end: the destination of a connect, the peer of an accept.
    pub daddr: Ipv4Addr,
    pub dport: u16,
    /// Local port; 0 when not known.
    pub lport: u16,
    /// The socket's inode number (`socket:[N]` in /proc, `ino:N` in `ss -e`): the kernel
    /// socket, whoever holds it. Not known without the kernel's BTF.
    pub inode: Option<u64>,
    pub state: State,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    /// False when bytes may have moved where the backend could not count them (the syscall
    /// backends and io_uring, splice, a copied fd): the counts are then a lower bound.
    pub complete: bool,
    pub rates: Rates,
    pub closed: Option<Closed>,
    /// Every (pid, fd) found holding this socket, this row's own included (a forked child, a
    /// `dup`, a program started on it): looked up in /proc while the dashboard shows the
    /// socket's details; empty when not looked up.
    pub holders: Vec<SocketKey>,
}

impl Socket {
    /// An established outbound socket of unknown protocol and local port, nothing moved yet.
    pub fn new(
        key: SocketKey,
        opened_ns: u64,
        daddr: Ipv4Addr,
        dport: u16,
        comm: impl Into<String>,
    ) -> Self {
        Self {
            id: SocketId::new(key, opened_ns),
            comm: comm.into(),
            tid: key.pid,
            proto: Proto::Unknown,
            direction: Direction::Out,
            origin: Origin::Connect,
            daddr,
            dport,
            lport: 0,
            inode: None,
            state: State::Established,
            bytes_sent: 0,
            bytes_recv: 0,
            complete: true,
            rates: Rates::starting(opened_ns),
            closed: None,
            holders: Vec::new(),
        }
    }

    pub fn key(&self) -> SocketKey {
        self.id.key
    }

    pub fn pid(&self) -> u32 {
        self.id.key.pid
    }

    pub fn fd(&self) -> u32 {
        self.id.key.fd
    }

    /// The process holding it; `None` when no process is known to (see [`NO_HOLDER`]).
    pub fn holder_pid(&self) -> Option<u32> {
        holder_pid(self.key())
    }

    /// Its fd in that process; `None` when not known (see [`NO_HOLDER`], [`NO_FD`]).
    pub fn holder_fd(&self) -> Option<u32> {
        holder_fd(self.key())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// How long it has been open at `now_ns`; for a closed socket, how long it lived.
    pub fn age_ns(&self, now_ns: u64) -> u64 {
        let end = self.closed.map_or(now_ns, |closed| closed.at_ns);
        end.saturating_sub(self.id.opened_ns)
    }

    /// `ip:port` of the remote end.
    pub fn remote(&self) -> String {
        format!("{}:{}", self.daddr, self.dport)
    }

    /// Takes what an open record says of this very socket (the same id) that a map read did
    /// not: who opened it, its local port and remote end as the tracker completed them. The
    /// counters and rates stay.
    pub fn learn(&mut self, record: &Socket) {
        self.tid = record.tid;
        self.origin = record.origin;
        self.direction = record.direction;
        self.daddr = record.daddr;
        self.dport = record.dport;
        if record.lport != 0 {
            self.lport = record.lport;
        }
        if record.inode.is_some() {
            self.inode = record.inode;
        }
        if record.proto != Proto::Unknown {
            self.proto = record.proto;
        }
    }

    /// Takes in counters read at `now_ns` (from the kernel's map), updating the rates.
    pub fn observe(&mut self, sent: u64, recv: u64, now_ns: u64) {
        self.bytes_sent = sent;
        self.bytes_recv = recv;
        self.rates.observe(sent, recv, now_ns);
    }

    /// Marks it closed with its final counts; its rates drop to zero, its history stays.
    pub fn close(&mut self, closed: Closed, sent: u64, recv: u64) {
        self.bytes_sent = sent;
        self.bytes_recv = recv;
        self.rates.now = Throughput::default();
        self.closed = Some(closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> Socket {
        Socket::new(
            SocketKey { pid: 7, fd: 3 },
            SEC,
            Ipv4Addr::LOCALHOST,
            80,
            "curl",
        )
    }

    #[test]
    fn rates_are_byte_deltas_over_time_deltas() {
        let mut s = socket();
        // From the connect (1 s) to the first reading (3 s): 2000 bytes in 2 s.
        s.observe(2000, 500, 3 * SEC);
        assert_eq!(
            s.rates.now,
            Throughput {
                send: 1000,
                recv: 250
            }
        );
        // Half a second later, 600 more bytes sent: 1200 B/s.
        s.observe(2600, 500, 3 * SEC + SEC / 2);
        assert_eq!(s.rates.now.send, 1200);
        assert_eq!(s.bytes_sent, 2600);
    }

    #[test]
    fn history_has_one_sample_per_second_and_is_bounded() {
        let mut s = socket();
        for tick in 0..(HISTORY_LEN as u64 * 4 + 10) {
            // Readings every 250 ms, 100 bytes each: 400 B/s.
            s.observe(100 * (tick + 1), 0, 2 * SEC + tick * SEC / 4);
        }
        assert_eq!(s.rates.history.len(), HISTORY_LEN);
        assert!(
            s.rates.history.iter().skip(1).all(|t| t.send == 400),
            "{:?}",
            s.rates.history
        );
    }

    #[test]
    fn a_closed_socket_keeps_its_history_with_zero_rate_and_its_lifetime() {
        let mut s = socket();
        s.observe(1000, 0, 2 * SEC);
        s.close(
            Closed {
                at_ns: 5 * SEC,
                tid: 7,
                cause: CloseCause::Close,
            },
            1200,
            10,
        );
        assert_eq!(s.rates.now, Throughput::default());
        assert_eq!(s.rates.history.len(), 1);
        assert_eq!((s.bytes_sent, s.bytes_recv), (1200, 10));
        assert_eq!(s.age_ns(100 * SEC), 4 * SEC, "lifetime, whatever now is");
    }

    #[test]
    fn readings_at_the_same_instant_change_nothing() {
        let mut s = socket();
        s.observe(10, 0, 2 * SEC);
        let before = s.rates.clone();
        s.observe(20, 0, 2 * SEC);
        assert_eq!(s.rates, before);
        assert_eq!(per_second(5, 0), 0);
    }
}
