//! The one record of a socket, from decoding to render.
//!
//! The kernel side (`kernel/`) decodes ring-buffer records and map entries into [`Socket`]s; the
//! model (`model/`) keeps the open ones and a log of the closed ones, updating counters and rates
//! in place; the views (`view/`, `json`) read them. A field a later stage learns (the local port
//! of an accepted socket, rates, the close) is added to this record, never to a copy of it.
//!
//! This module depends on nothing else in the crate but `history` (a part of the record): every
//! stage may use it.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::{NonZeroI32, NonZeroU32},
    ops::Deref,
};

pub use crate::history::{History, Sample, HISTORY_LEN};
pub use crate::owner::{Owner, Process};
pub use sockwatch_common::SocketKey;
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

/// The name of a thread, as the kernel keeps it (`TASK_COMM_LEN`: 15 bytes and a NUL), kept in
/// place: a `String` would be a heap block on each of 100,000 rows. Text that is not UTF-8 is
/// kept as Rust reads it lossily, cut to what fits at a character boundary.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comm {
    /// UTF-8, padded with NULs (the kernel's names hold none).
    bytes: [u8; COMM_LEN],
}

const COMM_LEN: usize = 16;

impl Comm {
    pub fn new(text: &str) -> Self {
        let mut end = text.len().min(COMM_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; COMM_LEN];
        bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        Self { bytes }
    }

    /// From the kernel's bytes, up to the first NUL.
    pub fn from_kernel(raw: &[u8]) -> Self {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Self::new(&String::from_utf8_lossy(&raw[..len]))
    }

    pub fn as_str(&self) -> &str {
        let len = self.bytes.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        // Only `new` writes the bytes: UTF-8 cut at a character boundary.
        std::str::from_utf8(&self.bytes[..len]).unwrap_or_default()
    }
}

impl Deref for Comm {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Comm {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for Comm {
    fn from(text: String) -> Self {
        Self::new(&text)
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
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

/// The address families watched (`-4`, `-6`), by a socket's [`Socket::family`]: an IPv4-mapped
/// peer is IPv4. An enum rather than the kernel's mask, so that no value means "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Families {
    #[default]
    Both,
    Ipv4,
    Ipv6,
}

impl Families {
    /// From a `sockwatch_common::families` mask (`Args::families`). The flags never give one
    /// of neither family; it is taken as both.
    pub fn from_mask(mask: u32) -> Self {
        use sockwatch_common::families::{IPV4, IPV6};
        match mask {
            IPV4 => Self::Ipv4,
            IPV6 => Self::Ipv6,
            _ => Self::Both,
        }
    }

    /// Whether a socket of `family` (4 or 6, as [`Socket::family`]) is watched.
    pub fn contains(self, family: u8) -> bool {
        match self {
            Self::Both => true,
            Self::Ipv4 => family == 4,
            Self::Ipv6 => family == 6,
        }
    }

    /// `ipv4`, `ipv6`: the families watched, by name.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Self::Both => &["ipv4", "ipv6"],
            Self::Ipv4 => &["ipv4"],
            Self::Ipv6 => &["ipv6"],
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

/// Who ended a TCP connection, as the kernel's TCP saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedBy {
    /// This end closed first (sent the first FIN, or released the socket).
    Local,
    /// The peer's FIN came first.
    Peer,
    ResetSent,
    ResetReceived,
    /// Retransmissions or keepalives went unanswered.
    Timeout,
    /// The connect's handshake failed (`Socket::error` says why).
    Failed,
}

impl ClosedBy {
    /// As JSON's `closed_by` says it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Peer => "peer",
            Self::ResetSent => "reset_sent",
            Self::ResetReceived => "reset_received",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
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

/// What the kernel's TCP says of a socket (`struct tcp_info` and the queues, as `ss -ti` shows
/// them), read by `sock_diag` (`kernel/diag.rs`): the part every row keeps, what the table, its
/// marks, its filters and JSON read. The rest of a reading ([`TcpDetail`]) is kept only for
/// the socket the details view shows. Times in microseconds unless named otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpHealth {
    /// The kernel's TCP state number (1 ESTABLISHED, 2 SYN_SENT, 8 CLOSE_WAIT...).
    pub state: u8,
    /// The zero-window probe timer runs: the peer advertises no room (it is not reading).
    pub zero_window: bool,
    /// Received, not yet read by the application.
    pub recv_q: u32,
    /// Not yet acknowledged by the peer, sent or not.
    pub send_q: u32,
    pub rtt_us: u32,
    pub rttvar_us: u32,
    /// Congestion window, in segments.
    pub cwnd: u32,
    /// Retransmitted segments over the socket's life (`ss`: the second number of `retrans:`).
    pub retrans: u32,
    /// Since data last moved either way (the lesser of `tcp_info`'s `last_data_sent` and
    /// `last_data_recv`), in ms.
    pub quiet_ms: u32,
    /// The peer's advertised window, on kernels that report it.
    pub snd_wnd: PeerWindow,
}

/// The peer's advertised window in bytes, or none on kernels that do not report it: an
/// `Option<u32>` in 4 bytes rather than 8 (on each row), the window never being `u32::MAX`
/// (a 16-bit window scaled by at most 14 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerWindow(u32);

impl PeerWindow {
    const NONE: u32 = u32::MAX;

    pub fn get(self) -> Option<u32> {
        (self.0 != Self::NONE).then_some(self.0)
    }
}

impl Default for PeerWindow {
    fn default() -> Self {
        Self(Self::NONE)
    }
}

impl From<Option<u32>> for PeerWindow {
    fn from(window: Option<u32>) -> Self {
        Self(window.map_or(Self::NONE, |w| w.min(Self::NONE - 1)))
    }
}

/// The rest of a TCP reading: what only the details view shows, of the one socket it shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpDetail {
    /// Zero-window probes sent without an answer, and the retransmit timer's backoff.
    pub probes: u8,
    pub backoff: u8,
    pub min_rtt_us: u32,
    pub rto_us: u32,
    pub snd_mss: u32,
    /// Slow-start threshold, in segments.
    pub ssthresh: u32,
    /// Segments sent and not yet acknowledged, lost, and retransmitted still in flight.
    pub unacked: u32,
    pub lost: u32,
    pub retrans_out: u32,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// Bytes per second.
    pub pacing_rate: u64,
    pub delivery_rate: u64,
    /// Time spent sending, and limited by the peer's window or our send buffer.
    pub busy_us: u64,
    pub rwnd_limited_us: u64,
    pub sndbuf_limited_us: u64,
}

/// One socket in a reading of the kernel's TCP: its row's health and its local port (exact for
/// every socket; an outbound one's is not known before).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpReading {
    pub health: TcpHealth,
    pub lport: u16,
}

/// What the details view shows of one socket beyond its row, looked up only while it is shown:
/// who holds it, and the rest of its TCP reading. Kept on every row, these would cost some 130
/// bytes a row, 13 MB at 100,000 sockets, for the one row anyone looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookedUp {
    pub id: SocketId,
    /// Every (pid, fd) found holding it, its row's own included (a forked child, a `dup`, a
    /// program started on it); empty until looked up.
    pub holders: Vec<SocketKey>,
    /// The rest of its latest TCP reading while shown; `None` until one.
    pub tcp: Option<TcpDetail>,
}

impl LookedUp {
    pub fn new(id: SocketId) -> Self {
        Self {
            id,
            holders: Vec::new(),
            tcp: None,
        }
    }
}

/// The kernel's TCP states with a connection under way (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;

/// A retransmission this recent marks the socket as retransmitting.
pub const RETRANS_MARK_NS: u64 = 5 * SEC;
/// No data either way for this long marks it idle.
pub const IDLE_MARK_MS: u32 = 10_000;

/// What is wrong with a TCP connection, worst first: the table's HEALTH mark, and the
/// `health:` filter's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthMark {
    /// Its retransmit count rose in the last [`RETRANS_MARK_NS`].
    Retransmitting,
    /// The peer advertises a zero window: it is not reading what we send.
    PeerNotReading,
    /// Received data waits and grows: this application is not reading.
    AppNotReading,
    /// No data either way for [`IDLE_MARK_MS`] or more ([`Socket::idle_secs`] says how long).
    Idle,
}

impl HealthMark {
    /// From a reading, the one before it, and when retransmissions last rose.
    pub fn of(
        now: &TcpHealth,
        before: Option<&TcpHealth>,
        retrans_rose_ns: Option<u64>,
        now_ns: u64,
    ) -> Option<Self> {
        // Only a connection under way has a health: a socket still connecting has no window
        // yet (its snd_wnd is 0) and has never moved data.
        if !matches!(now.state, TCP_ESTABLISHED | TCP_CLOSE_WAIT) {
            return None;
        }
        let waiting = |h: &TcpHealth| h.recv_q > 0;
        if retrans_rose_ns.is_some_and(|at| now_ns.saturating_sub(at) < RETRANS_MARK_NS) {
            Some(Self::Retransmitting)
        } else if now.zero_window || (now.snd_wnd.get() == Some(0) && now.send_q > 0) {
            Some(Self::PeerNotReading)
        } else if waiting(now) && before.is_some_and(|b| waiting(b) && now.recv_q >= b.recv_q) {
            Some(Self::AppNotReading)
        } else {
            (now.quiet_ms >= IDLE_MARK_MS).then_some(Self::Idle)
        }
    }

    /// The filter word (`health:retrans`) and the column's text for the first three.
    pub fn word(self) -> &'static str {
        match self {
            Self::Retransmitting => "retrans",
            Self::PeerNotReading => "peer",
            Self::AppNotReading => "app",
            Self::Idle => "idle",
        }
    }

    /// The table's text, for a socket idle `idle_secs` ([`Socket::idle_secs`]).
    pub fn label(self, idle_secs: u32) -> String {
        match self {
            Self::Retransmitting => "retrans".into(),
            Self::PeerNotReading => "peer-stall".into(),
            Self::AppNotReading => "app-stall".into(),
            Self::Idle => format!("idle {idle_secs}s"),
        }
    }

    /// A mark of trouble, not of quiet.
    pub fn is_trouble(self) -> bool {
        self != Self::Idle
    }
}

/// Bytes per second, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throughput {
    pub send: u64,
    pub recv: u64,
}

impl Sample for Throughput {
    fn put(self, out: &mut crate::history::Run) {
        self.send.put(out);
        self.recv.put(out);
    }

    fn take(bytes: &mut &[u8]) -> Self {
        let send = u64::take(bytes);
        Self {
            send,
            recv: u64::take(bytes),
        }
    }
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
/// reading and the current one live on the record, as bpftop keeps them (the previous counts
/// are the socket's own until a reading replaces them: [`Socket::observe`]).
///
/// In declaration order (`repr(C)`): what each reading touches first, the history last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Rates {
    /// Over the latest interval between two readings; zero once closed.
    pub now: Throughput,
    last_ns: u64,
    bucket_start_ns: u64,
    bucket_sent: u64,
    bucket_recv: u64,
    /// One sample per second or more (as often as readings allow), oldest first.
    pub history: History<Throughput>,
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

    /// Catches up to `until_ns` a socket no reading looked at since its last one because its
    /// counters did not move (a refresh reads only what moved): as readings of the same
    /// counters every second would have, its bucket closes and each whole second after it is
    /// a zero.
    fn idle_until(&mut self, until_ns: u64) {
        if until_ns <= self.last_ns {
            return;
        }
        let seconds = until_ns.saturating_sub(self.bucket_start_ns) / SEC;
        if seconds > 0 {
            self.history.push(Throughput {
                send: per_second(self.bucket_sent, SEC),
                recv: per_second(self.bucket_recv, SEC),
            });
            let idle = usize::try_from(seconds - 1).unwrap_or(usize::MAX);
            self.history.push_n(Throughput::default(), idle);
            self.bucket_start_ns += seconds * SEC;
            self.bucket_sent = 0;
            self.bucket_recv = 0;
        }
        self.now = Throughput::default();
        self.last_ns = until_ns;
    }

    /// The history as of `now_ns`, with the seconds since the last reading that looked at the
    /// socket (it was idle then: see [`Self::idle_until`]).
    pub fn history_at(&self, now_ns: u64) -> History<Throughput> {
        let mut rates = self.clone();
        rates.idle_until(now_ns);
        rates.history
    }

    /// Counters read at `now_ns` as `(sent, recv)`, `before` at the previous reading.
    fn observe(&mut self, before: (u64, u64), (sent, recv): (u64, u64), now_ns: u64) {
        // Counters only grow; saturating keeps a surprise (a reused entry) from wrapping.
        let sent_delta = sent.saturating_sub(before.0);
        let recv_delta = recv.saturating_sub(before.1);
        self.bucket_sent = self.bucket_sent.saturating_add(sent_delta);
        self.bucket_recv = self.bucket_recv.saturating_add(recv_delta);
        let elapsed = now_ns.saturating_sub(self.last_ns);
        if elapsed == 0 {
            // A second reading at the same instant: its bytes moved by the first one's time,
            // in the second's bucket, not in the next interval's rate.
            return;
        }
        self.now = Throughput {
            send: per_second(sent_delta, elapsed),
            recv: per_second(recv_delta, elapsed),
        };
        self.last_ns = now_ns;
        let bucket = now_ns.saturating_sub(self.bucket_start_ns);
        if bucket + SECOND_SLACK_NS >= SEC {
            // Read once a second or less often, the bucket is this interval: its rate is the
            // one just taken (two divisions fewer for each of 100,000 rows a second).
            let just_now = bucket == elapsed
                && (self.bucket_sent, self.bucket_recv) == (sent_delta, recv_delta);
            let sample = if bucket.abs_diff(SEC) <= SECOND_SLACK_NS {
                // That second's bytes: a sender steady by the second has equal seconds, kept
                // as one run, not rates that differ by when each reading came (a run each,
                // some 10 MiB over five minutes for 20,000 such rows).
                Throughput {
                    send: self.bucket_sent,
                    recv: self.bucket_recv,
                }
            } else if just_now {
                self.now
            } else {
                Throughput {
                    send: per_second(self.bucket_sent, bucket),
                    recv: per_second(self.bucket_recv, bucket),
                }
            };
            self.history.push(sample);
            self.bucket_start_ns = now_ns;
            self.bucket_sent = 0;
            self.bucket_recv = 0;
        }
    }
}

/// A history bucket this close to a second, either way, is taken as the second: its bytes are
/// that second's rate (within 1% of the rate over its exact length). Readings a second apart
/// come a few ms early or late.
const SECOND_SLACK_NS: u64 = SEC / 100;

pub fn per_second(bytes: u64, elapsed_ns: u64) -> u64 {
    if elapsed_ns == 0 {
        return 0;
    }
    // In 64 bits when it fits (below 18 GB an interval): a 128-bit division costs several
    // times more, four times a socket and second.
    if let Some(scaled) = bytes.checked_mul(SEC) {
        return scaled / elapsed_ns;
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
///
/// In declaration order (`repr(C)`): what every refresh reads of each of 100k rows (identity,
/// counters, state, ports, rates, the newest second of history) in its first three cache lines,
/// so that a row costs the fewest memory reads; [`prefetch`] asks for those lines ahead. Aligned
/// to a line, so a row's lines are its own, and 256 bytes, so the alignment wastes none: what
/// fits a row of 100,000 in four lines is kept here (a remote address of either family in 16
/// bytes), the rest of what the details view shows only for the socket it shows
/// ([`LookedUp`]). Optional numbers use the niche of a value they never take (an inode or errno
/// of 0, a handshake of `u32::MAX` µs, a window of `u32::MAX`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Socket {
    pub id: SocketId,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub closed: Option<Closed>,
    pub state: State,
    pub proto: Proto,
    pub direction: Direction,
    pub origin: Origin,
    /// False when bytes may have moved where the backend could not count them (the syscall
    /// backends and io_uring, splice, a copied fd): the counts are then a lower bound.
    pub complete: bool,
    /// Who ended it (TCP; known at its close, or at a failed connect).
    pub closed_by: Option<ClosedBy>,
    /// What the latest TCP reading says is wrong, if anything.
    pub mark: Option<HealthMark>,
    /// A reading has rated its counters: the next rates them from the counts here. Until then
    /// they are what it had moved when it became a row, and are rated from zero.
    rated: bool,
    pub dport: u16,
    /// Local port; 0 when not known.
    pub lport: u16,
    /// The socket's inode number (`socket:[N]` in /proc, `ino:N` in `ss -e`): the kernel
    /// socket, whoever holds it. Not known without the kernel's BTF. 32 bits, as sockfs
    /// numbers its inodes (`get_next_ino`).
    inode: Option<NonZeroU32>,
    pub rates: Rates,
    /// The remote end: the destination of a connect, the peer of an accept ([`Self::daddr`]);
    /// IPv4 as IPv4-mapped IPv6, so that either fits in 16 bytes (an `IpAddr` takes 17).
    daddr: Ipv6Addr,
    pub comm: Comm,
    /// The thread that connected (or accepted); for a socket found at start, the process id.
    pub tid: u32,
    /// The errno that ended it: a failed connect's, a reset's, a timeout's.
    error: Option<NonZeroI32>,
    /// How long its connect's handshake took (SYN sent to established or failed), in µs;
    /// [`NO_CONNECT_US`] when not known.
    connect_us: u32,
    /// The second (of the kernel's monotonic clock) of the newest `tcp_history` sample.
    tcp_history_s: u32,
    /// TCP health at the latest refresh that found the socket in the kernel's diagnostics;
    /// once closed, the last reading. `None` for UDP, and before the first reading.
    pub tcp: Option<TcpHealth>,
    /// When its retransmit count last rose, in ms of the kernel's monotonic clock, wrapping
    /// (32 bits hold 49 days: it is compared only with readings a few seconds apart, and
    /// cleared once older than the mark lasts); 0: not lately.
    retrans_rose_ms: u32,
    /// (smoothed RTT in us, retransmits so far) at most once a second, oldest first, as
    /// long as [`Rates::history`].
    pub tcp_history: History<(u32, u32)>,
}

/// [`Socket::connect_us`] not known.
const NO_CONNECT_US: u32 = u32::MAX;

/// How a row keeps a remote address: IPv4 as IPv4-mapped IPv6.
fn mapped(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// How many rows ahead a pass over rows asks for them ([`prefetch`]): enough for a memory
/// read to arrive before the pass gets there, few enough not to evict what it still needs.
pub const PREFETCH_AHEAD: usize = 8;

/// `rows` in order, each yielded once the row [`PREFETCH_AHEAD`] places after it was asked
/// for ([`prefetch`]).
pub fn prefetched<'r, 'a>(rows: &'r [&'a Socket]) -> impl Iterator<Item = &'a Socket> + 'r {
    rows.iter().enumerate().map(|(i, row)| {
        if let Some(next) = rows.get(i + PREFETCH_AHEAD) {
            prefetch(next);
        }
        *row
    })
}

/// The bytes of a row every refresh reads: up to `rates.now`, the fields each reading updates
/// and the history's newest run (a reading a second after the last extends it).
const HOT: usize = std::mem::offset_of!(Socket, rates)
    + std::mem::offset_of!(Rates, history)
    + History::<Throughput>::HOT;

// A refresh reads three lines of each row; a row grown past 256 bytes pads to 320, a quarter
// more memory at 100k rows: either wants a look at the layout before it lands.
const _: () = assert!(HOT <= 3 * 64 && std::mem::size_of::<Socket>() == 256);

/// Asks the processor to start reading `socket`'s first lines (see [`Socket`]), for a pass
/// over many rows to issue a few rows ahead: rows taken in key order or sort order lie apart,
/// so each is a memory read the hardware cannot foresee, and a pass that waits for each in
/// turn spends most of its time waiting.
#[inline]
pub fn prefetch(socket: &Socket) {
    prefetch_lines(socket, HOT);
}

/// Asks the processor to start reading the cache lines of the first `bytes` of `item` (at
/// least its first line): a hint for a pass that will read it soon; a no-op elsewhere than on
/// x86_64.
#[inline]
pub fn prefetch_lines<T>(item: &T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = std::ptr::from_ref(item).cast::<i8>();
        for line in (0..bytes.max(1)).step_by(64) {
            // SAFETY: a prefetch is a hint: it reads nothing into the program and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(line)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (item, bytes);
}

impl Socket {
    /// An established outbound socket of unknown protocol and local port, nothing moved yet.
    pub fn new(
        key: SocketKey,
        opened_ns: u64,
        daddr: impl Into<IpAddr>,
        dport: u16,
        comm: impl Into<Comm>,
    ) -> Self {
        Self {
            id: SocketId::new(key, opened_ns),
            comm: comm.into(),
            tid: key.pid,
            proto: Proto::Unknown,
            direction: Direction::Out,
            origin: Origin::Connect,
            daddr: mapped(daddr.into()),
            dport,
            lport: 0,
            inode: None,
            state: State::Established,
            bytes_sent: 0,
            bytes_recv: 0,
            complete: true,
            rated: false,
            rates: Rates::starting(opened_ns),
            closed: None,
            tcp: None,
            retrans_rose_ms: 0,
            mark: None,
            connect_us: NO_CONNECT_US,
            closed_by: None,
            error: None,
            tcp_history: History::default(),
            tcp_history_s: 0,
        }
    }

    /// The remote end's address (an IPv4-mapped one as IPv4).
    pub fn daddr(&self) -> IpAddr {
        self.daddr.to_canonical()
    }

    pub fn set_daddr(&mut self, daddr: impl Into<IpAddr>) {
        self.daddr = mapped(daddr.into());
    }

    /// 4 or 6: the family of its remote end as shown (an IPv4-mapped peer is 4).
    pub fn family(&self) -> u8 {
        match self.daddr() {
            IpAddr::V4(_) => 4,
            IpAddr::V6(_) => 6,
        }
    }

    /// Its inode; `None` when not known.
    pub fn inode(&self) -> Option<u64> {
        self.inode.map(|inode| u64::from(inode.get()))
    }

    /// Sets its inode (0 is none; sockfs inodes are 32-bit: a larger number is no socket's, and
    /// none too).
    pub fn set_inode(&mut self, inode: Option<u64>) {
        self.inode = inode
            .and_then(|inode| u32::try_from(inode).ok())
            .and_then(NonZeroU32::new);
    }

    /// The errno that ended it, if one did.
    pub fn error(&self) -> Option<i32> {
        self.error.map(NonZeroI32::get)
    }

    pub fn set_error(&mut self, errno: Option<i32>) {
        self.error = errno.and_then(NonZeroI32::new);
    }

    /// How long its connect's handshake took, in µs, when known.
    pub fn connect_us(&self) -> Option<u64> {
        (self.connect_us != NO_CONNECT_US).then_some(u64::from(self.connect_us))
    }

    /// Sets how long its handshake took (more than 71 minutes is taken as just under).
    pub fn set_connect_us(&mut self, us: Option<u64>) {
        self.connect_us = us.map_or(NO_CONNECT_US, |us| {
            u32::try_from(us).unwrap_or(u32::MAX).min(NO_CONNECT_US - 1)
        });
    }

    /// For the idle mark: seconds since data last moved either way, at the latest reading.
    pub fn idle_secs(&self) -> u32 {
        self.tcp.map_or(0, |tcp| tcp.quiet_ms / 1000)
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

    /// `ip:port` of the remote end (`[ip]:port` for IPv6).
    pub fn remote(&self) -> String {
        SocketAddr::new(self.daddr(), self.dport).to_string()
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
        if record.connect_us != NO_CONNECT_US {
            self.connect_us = record.connect_us;
        }
    }

    /// A connect whose handshake failed with `errno`.
    pub fn failed(&self) -> Option<i32> {
        (self.closed_by == Some(ClosedBy::Failed)).then_some(self.error().unwrap_or(0))
    }

    /// Takes in counters read at `now_ns` (from the kernel's map), updating the rates.
    pub fn observe(&mut self, sent: u64, recv: u64, now_ns: u64) {
        let before = match self.rated {
            true => (self.bytes_sent, self.bytes_recv),
            false => (0, 0),
        };
        self.rated = true;
        self.bytes_sent = sent;
        self.bytes_recv = recv;
        self.rates.observe(before, (sent, recv), now_ns);
    }

    /// [`Self::observe`] by a refresh that reads only the sockets whose counters moved (or
    /// whose rate must fall back to zero): one it skipped since its last reading was idle until
    /// the previous refresh, at `since_ns`.
    pub fn observe_since(&mut self, sent: u64, recv: u64, since_ns: u64, now_ns: u64) {
        self.rates.idle_until(since_ns);
        self.observe(sent, recv, now_ns);
    }

    /// Takes in a TCP reading made at `now_ns`.
    pub fn observe_tcp(&mut self, reading: TcpReading, now_ns: u64) {
        let health = reading.health;
        let before = self.tcp;
        // Wrapping ms: only differences of a few seconds are taken from it. Never 0, which
        // stands for no rise (1 ms early once in 49 days).
        let now_ms = ((now_ns / 1_000_000) as u32).max(1);
        let rose_ago_ms = now_ms.wrapping_sub(self.retrans_rose_ms);
        if self.retrans_rose_ms != 0 && u64::from(rose_ago_ms) * 1_000_000 >= RETRANS_MARK_NS {
            self.retrans_rose_ms = 0;
        }
        if before.is_some_and(|before| health.retrans > before.retrans) {
            self.retrans_rose_ms = now_ms;
        }
        if reading.lport != 0 {
            self.lport = reading.lport;
        }
        self.proto = Proto::Tcp;
        self.tcp = Some(health);
        let rose_ns = (self.retrans_rose_ms != 0).then(|| {
            let ago_ms = now_ms.wrapping_sub(self.retrans_rose_ms);
            now_ns.saturating_sub(u64::from(ago_ms) * 1_000_000)
        });
        self.mark = HealthMark::of(&health, before.as_ref(), rose_ns, now_ns);
        // Seconds since boot fit 32 bits for 136 years.
        let second = u32::try_from(now_ns / SEC).unwrap_or(u32::MAX);
        if self.tcp_history.is_empty() || second > self.tcp_history_s {
            self.tcp_history.push((health.rtt_us, health.retrans));
            self.tcp_history_s = second;
        }
    }

    /// Marks it closed with its final counts; its rates drop to zero, its history stays.
    pub fn close(&mut self, closed: Closed, sent: u64, recv: u64) {
        // Idle since the last reading that looked at it: its history shows those seconds.
        if self.closed.is_none() && sent == self.bytes_sent && recv == self.bytes_recv {
            self.rates.idle_until(closed.at_ns);
        }
        self.bytes_sent = sent;
        self.bytes_recv = recv;
        self.rates.now = Throughput::default();
        self.closed = Some(closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn socket() -> Socket {
        Socket::new(
            SocketKey { pid: 7, fd: 3 },
            SEC,
            Ipv4Addr::LOCALHOST,
            80,
            "curl",
        )
    }

    /// An IPv6 peer is kept and shown as IPv6 (bracketed before its port, compressed); an
    /// IPv4-mapped one as IPv4, as the kernel's IPv6 sockets name their IPv4 peers.
    #[test]
    fn remote_ends_of_either_family() {
        let mut s = socket();
        assert_eq!((s.remote(), s.family()), ("127.0.0.1:80".to_owned(), 4));
        s.set_daddr(std::net::Ipv6Addr::LOCALHOST);
        assert_eq!((s.remote(), s.family()), ("[::1]:80".to_owned(), 6));
        s.set_daddr(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(s.daddr(), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(s.family(), 4);
        let long: std::net::Ipv6Addr = "2001:0db8:0000:0000:0000:8a2e:0370:7334".parse().unwrap();
        s.set_daddr(long);
        assert_eq!(s.remote(), "[2001:db8::8a2e:370:7334]:80");
    }

    /// `-4` and `-6` as the kernel's mask: one family each; both by default, and for a mask
    /// naming neither.
    #[test]
    fn families_from_the_mask() {
        use sockwatch_common::families::{BOTH, IPV4, IPV6};
        assert_eq!(Families::from_mask(IPV4), Families::Ipv4);
        assert_eq!(Families::from_mask(IPV6), Families::Ipv6);
        assert_eq!(Families::from_mask(BOTH), Families::Both);
        assert_eq!(Families::from_mask(0), Families::Both);
        assert_eq!(Families::default(), Families::Both);
        assert!(Families::Ipv6.contains(6) && !Families::Ipv6.contains(4));
        assert_eq!(Families::Both.labels(), ["ipv4", "ipv6"]);
    }

    /// Rows keep 32-bit inodes, as sockfs numbers them: a larger number names no socket.
    #[test]
    fn an_inode_is_a_32_bit_number() {
        let mut s = socket();
        s.set_inode(Some(u64::from(u32::MAX)));
        assert_eq!(s.inode(), Some(u64::from(u32::MAX)));
        s.set_inode(Some(1 << 32));
        assert_eq!(s.inode(), None);
        s.set_inode(Some(0));
        assert_eq!(s.inode(), None);
    }

    #[test]
    fn a_peer_window_not_reported_is_none_and_a_zero_one_is_zero() {
        assert_eq!(TcpHealth::default().snd_wnd.get(), None);
        for window in [None, Some(0), Some(65_535), Some(1 << 30)] {
            assert_eq!(PeerWindow::from(window).get(), window);
        }
        assert_eq!(PeerWindow::from(Some(u32::MAX)).get(), Some(u32::MAX - 1));
        assert_eq!(size_of::<Option<TcpHealth>>(), 36);
    }

    /// A rise of the retransmit count marks the row for 5 s from the reading that saw it,
    /// also across the wrap of the 32-bit millisecond clock the row keeps it in.
    #[test]
    fn a_retransmission_marks_the_row_for_five_seconds_across_the_clock_wrap() {
        // Two seconds before 2^32 ms of the monotonic clock.
        let base = (u64::from(u32::MAX) - 2_000) * 1_000_000;
        let reading = |retrans| TcpReading {
            health: TcpHealth {
                state: 1,
                retrans,
                ..TcpHealth::default()
            },
            lport: 0,
        };
        let mut s = socket();
        s.observe_tcp(reading(0), base);
        assert_eq!(s.mark, None);
        s.observe_tcp(reading(1), base + SEC);
        assert_eq!(s.mark, Some(HealthMark::Retransmitting));
        s.observe_tcp(reading(1), base + 5 * SEC);
        assert_eq!(
            s.mark,
            Some(HealthMark::Retransmitting),
            "4 s on, past the wrap"
        );
        s.observe_tcp(reading(1), base + 6 * SEC + 1_000_000);
        assert_eq!(s.mark, None, "5.001 s on");
        s.observe_tcp(reading(2), base + 7 * SEC);
        assert_eq!(s.mark, Some(HealthMark::Retransmitting), "a new rise");
        // Readings 2^32 ms (49.7 days) apart would find an old rise "4 s ago": it was cleared
        // at the reading that found it 5 s old.
        s.observe_tcp(reading(2), base + 13 * SEC);
        assert_eq!(s.mark, None);
        s.observe_tcp(reading(2), base + 11 * SEC + (1 << 32) * 1_000_000);
        assert_eq!(s.mark, None, "no rise since");
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
    fn a_steady_sender_read_a_few_ms_off_the_second_keeps_one_run() {
        let mut s = socket();
        // 64 bytes a second, read 3 ms late, then 2 ms early, and so on.
        let mut at = SEC;
        for second in 1..=60u64 {
            at += if second % 2 == 0 {
                SEC - 2_000_000
            } else {
                SEC + 3_000_000
            };
            s.observe(64 * second, 0, at);
        }
        assert!(
            s.rates.history.iter().all(|t| t.send == 64),
            "{:?}",
            s.rates.history
        );
        assert_eq!(s.rates.history.heap_bytes(), 0, "one run, inline");
        // A reading 1.5 s after the last: the rate over its length.
        s.observe(64 * 61 + 32, 0, at + SEC + SEC / 2);
        assert_eq!(s.rates.history.iter().last().map(|t| t.send), Some(64));
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
    fn health_marks_worst_first_and_only_for_connections_under_way() {
        let established = TcpHealth {
            state: 1,
            quiet_ms: 50,
            snd_wnd: Some(65_536).into(),
            ..TcpHealth::default()
        };
        let of = |now: &TcpHealth, before: Option<&TcpHealth>, rose: Option<u64>| {
            HealthMark::of(now, before, rose, 10 * SEC)
        };
        assert_eq!(of(&established, None, None), None);
        assert_eq!(
            of(&established, None, Some(6 * SEC)),
            Some(HealthMark::Retransmitting),
            "a rise 4 s ago"
        );
        assert_eq!(of(&established, None, Some(4 * SEC)), None, "6 s ago");
        let full = TcpHealth {
            snd_wnd: Some(0).into(),
            send_q: 1000,
            ..established
        };
        assert_eq!(of(&full, None, None), Some(HealthMark::PeerNotReading));
        let unread = TcpHealth {
            recv_q: 500,
            ..established
        };
        assert_eq!(of(&unread, None, None), None, "one reading is not a trend");
        assert_eq!(
            of(&unread, Some(&unread), None),
            Some(HealthMark::AppNotReading)
        );
        let read = TcpHealth {
            recv_q: 100,
            ..established
        };
        assert_eq!(of(&read, Some(&unread), None), None, "it shrank: read");
        let quiet = TcpHealth {
            quiet_ms: 12_500,
            ..established
        };
        assert_eq!(of(&quiet, None, None), Some(HealthMark::Idle));
        // Still connecting: no window yet and no data ever, but nothing is wrong.
        let connecting = TcpHealth {
            state: 2,
            snd_wnd: Some(0).into(),
            quiet_ms: 90_000,
            ..TcpHealth::default()
        };
        assert_eq!(of(&connecting, None, Some(9 * SEC)), None);
    }

    #[test]
    fn a_reading_at_the_same_instant_keeps_the_rate_and_counts_in_its_second() {
        let mut s = socket();
        s.observe(10, 0, 2 * SEC);
        let rate = s.rates.now;
        s.observe(20, 0, 2 * SEC);
        assert_eq!((s.rates.now, s.bytes_sent), (rate, 20));
        // The next interval's rate counts from 20; its second's bucket, open at 2 s, holds
        // the 10 bytes read at 2 s too: the history loses none.
        s.observe(50, 0, 3 * SEC);
        assert_eq!(s.rates.now.send, 30);
        assert_eq!(
            s.rates.history.iter().map(|t| t.send).collect::<Vec<_>>(),
            [10, 40]
        );
        assert_eq!(per_second(5, 0), 0);
    }

    #[test]
    fn a_row_that_had_moved_bytes_before_its_first_reading_is_rated_from_zero() {
        let mut s = socket();
        // Decoded from a record that had counted 1000 bytes already.
        s.bytes_sent = 1000;
        s.observe(1500, 0, 3 * SEC);
        assert_eq!(s.rates.now.send, 750, "1500 bytes since the connect at 1 s");
        s.observe(1700, 0, 4 * SEC);
        assert_eq!(s.rates.now.send, 200);
    }

    #[test]
    fn a_row_is_four_cache_lines_and_optional_numbers_round_trip() {
        assert_eq!(std::mem::size_of::<Socket>(), 256);
        let mut s = socket();
        assert_eq!((s.inode(), s.error(), s.connect_us()), (None, None, None));
        s.set_inode(Some(77));
        s.set_error(Some(libc::ECONNRESET));
        s.set_connect_us(Some(0));
        assert_eq!(
            (s.inode(), s.error(), s.connect_us()),
            (Some(77), Some(libc::ECONNRESET), Some(0))
        );
        s.set_connect_us(Some(u64::MAX));
        assert_eq!(s.connect_us(), Some(u64::from(u32::MAX - 1)));
    }

    #[test]
    fn a_comm_keeps_what_fits_at_a_character_boundary() {
        assert_eq!(Comm::new("curl"), "curl");
        assert_eq!(Comm::new("a-very-long-process-name"), "a-very-long-proc");
        // 'é' is two bytes: the 16th byte would split it.
        assert_eq!(Comm::new("ééééééééé"), "éééééééé");
        assert_eq!(Comm::from_kernel(b"nginx\0\0garbage"), "nginx");
        assert_eq!(Comm::from_kernel(&[0xff, b'x', 0]), "\u{fffd}x");
        assert_eq!(format!("{:<6}|", Comm::new("ab")), "ab    |");
    }
}
