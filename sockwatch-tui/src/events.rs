//! Kernel records decoded into the user-space domain.

use std::net::Ipv4Addr;

use sockwatch_common::{
    flags, CloseHow, EventKind, SocketEvent, SocketKey, SocketState, TrackedSocket, COMM_LEN,
    EINPROGRESS, IPPROTO_TCP, IPPROTO_UDP,
};

/// How a `connect()` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectResult {
    /// Returned 0: connected.
    Ok,
    /// Returned `-EINPROGRESS`: a non-blocking connect under way (tracked).
    InProgress,
    /// Returned `-errno` (positive errno here): failed, not tracked.
    Failed(i32),
    /// Found open when sockwatch started.
    Existing,
}

impl ConnectResult {
    pub fn from_return(ret: i32) -> Self {
        match ret {
            0 => Self::Ok,
            r if r == -EINPROGRESS => Self::InProgress,
            r => Self::Failed(r.saturating_neg()),
        }
    }

    pub fn is_tracked(self) -> bool {
        !matches!(self, Self::Failed(_))
    }

    /// `ok`, `in_progress`, or the errno's name (`ECONNREFUSED`).
    pub fn label(self) -> String {
        match self {
            Self::Ok => "ok".into(),
            Self::InProgress => "in_progress".into(),
            Self::Existing => "existing".into(),
            Self::Failed(errno) => errno_name(errno),
        }
    }
}

/// The symbolic name of the errnos a `connect()` can return.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EISCONN => "EISCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        other => return format!("E{other}"),
    };
    name.to_owned()
}

/// The transport protocol of a tracked socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    /// Created before we started and not (yet) found in /proc.
    #[default]
    Unknown,
}

impl Proto {
    pub fn from_ipproto(value: u32) -> Self {
        match value {
            IPPROTO_TCP => Self::Tcp,
            IPPROTO_UDP => Self::Udp,
            _ => Self::Unknown,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Unknown => "unknown",
        }
    }
}

/// Who opened the connection: we (connect) or the peer (accept).
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

/// A socket's identity and its two ends, as events and snapshots carry them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub key: SocketKey,
    /// The remote end: the destination of a connect, the peer of an accept.
    pub daddr: Ipv4Addr,
    pub dport: u16,
    /// Local port; 0 when not known.
    pub lport: u16,
    pub comm: String,
    pub proto: Proto,
    pub direction: Direction,
}

impl Endpoint {
    /// An outbound socket of unknown protocol and local port.
    pub fn new(key: SocketKey, daddr: Ipv4Addr, dport: u16, comm: impl Into<String>) -> Self {
        Self {
            key,
            daddr,
            dport,
            lport: 0,
            comm: comm.into(),
            proto: Proto::Unknown,
            direction: Direction::Out,
        }
    }

    fn from_kernel(key: SocketKey, socket: &TrackedSocket) -> Self {
        Self {
            key,
            daddr: ipv4(socket.daddr),
            dport: socket.dport,
            lport: socket.lport,
            comm: comm_string(&socket.comm),
            proto: Proto::from_ipproto(socket.proto),
            direction: if socket.flags & flags::INBOUND != 0 {
                Direction::In
            } else {
                Direction::Out
            },
        }
    }
}

/// A socket became tracked: a `connect()` on an IPv4 destination returned (or failed), an
/// `accept()` returned an IPv4 peer, or a socket was found open at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    pub socket: Endpoint,
    pub tid: u32,
    pub result: ConnectResult,
    /// Kernel monotonic time (ns).
    pub ts_ns: u64,
}

/// Why a tracked socket is gone.
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
    /// The periodic check against /proc found the fd gone or reused: an event was missed.
    Reconciled,
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
        }
    }
}

/// A tracked socket is gone; counts are final.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseEvent {
    pub socket: Endpoint,
    /// The thread that closed it (for an exit: the process id).
    pub tid: u32,
    /// The thread that connected it.
    pub connect_tid: u32,
    pub ts_ns: u64,
    pub connect_ns: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub cause: CloseCause,
    pub preexisting: bool,
}

impl CloseEvent {
    pub fn lifetime_ns(&self) -> u64 {
        self.ts_ns.saturating_sub(self.connect_ns)
    }
}

/// What user space reports: sockets appearing and disappearing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    Connect(ConnectEvent),
    Close(CloseEvent),
}

/// Why a ring buffer record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {0} bytes, expected {expected}", expected = size_of::<SocketEvent>())]
    WrongSize(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// One ring buffer record, decoded. Some are complete events; others are hints about a whole
/// process that user space settles from the kernel's map (see `tracker`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelRecord {
    Connect(ConnectEvent),
    /// An accepted socket; `listener` is the listening fd (for the local port), and
    /// `peer_unknown` says the caller passed no address buffer.
    Accept {
        event: ConnectEvent,
        listener: u32,
        peer_unknown: bool,
    },
    Close(CloseEvent),
    ProcessExit {
        pid: u32,
        ts_ns: u64,
    },
    Exec {
        pid: u32,
        ts_ns: u64,
    },
    CloseRange {
        pid: u32,
        first: u32,
        last: u32,
        ts_ns: u64,
    },
}

impl KernelRecord {
    /// Decodes one ring buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != size_of::<SocketEvent>() {
            return Err(DecodeError::WrongSize(bytes.len()));
        }
        // SAFETY: the length was checked, SocketEvent is plain old data without padding (any bit
        // pattern is valid), and read_unaligned makes no assumption about the buffer's alignment.
        let raw: SocketEvent = unsafe { bytes.as_ptr().cast::<SocketEvent>().read_unaligned() };
        Self::from_raw(&raw)
    }

    pub fn from_raw(raw: &SocketEvent) -> Result<Self, DecodeError> {
        let socket = Endpoint::from_kernel(raw.key, &raw.socket);
        let kind = EventKind::from_u32(raw.kind).ok_or(DecodeError::UnknownKind(raw.kind))?;
        Ok(match kind {
            EventKind::Connect => Self::Connect(ConnectEvent {
                socket,
                tid: raw.tid,
                result: ConnectResult::from_return(raw.result),
                ts_ns: raw.ts_ns,
            }),
            EventKind::Accept => Self::Accept {
                event: ConnectEvent {
                    socket,
                    tid: raw.tid,
                    result: ConnectResult::Ok,
                    ts_ns: raw.ts_ns,
                },
                listener: raw.arg,
                peer_unknown: raw.socket.flags & flags::PEER_UNKNOWN != 0,
            },
            // The event carries the socket's final map entry.
            EventKind::Close => Self::Close(TrackedEntry::from_map(raw.key, &raw.socket).closed(
                if raw.arg == CloseHow::DupOnto as u32 {
                    CloseCause::DupOnto
                } else {
                    CloseCause::Close
                },
                raw.tid,
                raw.ts_ns,
            )),
            EventKind::ProcessExit => Self::ProcessExit {
                pid: raw.key.pid,
                ts_ns: raw.ts_ns,
            },
            EventKind::Exec => Self::Exec {
                pid: raw.key.pid,
                ts_ns: raw.ts_ns,
            },
            EventKind::CloseRange => Self::CloseRange {
                pid: raw.key.pid,
                first: raw.key.fd,
                last: raw.arg,
                ts_ns: raw.ts_ns,
            },
        })
    }
}

/// One entry of the kernel's `TRACKED` map, read by user space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedEntry {
    pub socket: Endpoint,
    pub tid: u32,
    pub connect_ns: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub established: bool,
    pub preexisting: bool,
}

impl TrackedEntry {
    pub fn from_map(key: SocketKey, value: &TrackedSocket) -> Self {
        Self {
            socket: Endpoint::from_kernel(key, value),
            tid: value.tid,
            connect_ns: value.connect_ns,
            bytes_sent: value.bytes_sent,
            bytes_recv: value.bytes_recv,
            established: SocketState::from_u32(value.state) == Some(SocketState::Established),
            preexisting: value.flags & flags::PREEXISTING != 0,
        }
    }

    /// The close record of this entry, removed from the map by user space at `ts_ns`.
    pub fn closed(self, cause: CloseCause, tid: u32, ts_ns: u64) -> CloseEvent {
        CloseEvent {
            socket: self.socket,
            tid,
            connect_tid: self.tid,
            ts_ns,
            connect_ns: self.connect_ns,
            bytes_sent: self.bytes_sent,
            bytes_recv: self.bytes_recv,
            cause,
            preexisting: self.preexisting,
        }
    }
}

/// The kernel keeps addresses in network byte order, as `sockaddr_in` does.
fn ipv4(network_order: u32) -> Ipv4Addr {
    Ipv4Addr::from(network_order.to_ne_bytes())
}

fn comm_string(comm: &[u8; COMM_LEN]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: EventKind) -> SocketEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let socket = TrackedSocket {
            bytes_sent: 77,
            bytes_recv: 12,
            connect_ns: 500,
            daddr: u32::from_ne_bytes([127, 0, 0, 1]),
            dport: 8080,
            lport: 0,
            tid: 44,
            state: SocketState::Established as u32,
            proto: IPPROTO_TCP,
            flags: 0,
            comm,
        };
        SocketEvent {
            result: -libc::ECONNREFUSED,
            ..SocketEvent::new(kind, SocketKey { pid: 42, fd: 5 }, 43, 2_000, socket)
        }
    }

    #[test]
    fn decodes_a_failed_connect() {
        let record = KernelRecord::from_raw(&raw(EventKind::Connect)).expect("valid");
        let KernelRecord::Connect(c) = record else {
            panic!("not a connect: {record:?}")
        };
        assert_eq!(c.socket.key, SocketKey { pid: 42, fd: 5 });
        assert_eq!(c.socket.daddr, Ipv4Addr::LOCALHOST);
        assert_eq!(
            (c.socket.dport, c.socket.proto, c.socket.direction),
            (8080, Proto::Tcp, Direction::Out)
        );
        assert_eq!(c.socket.comm, "curl");
        assert_eq!(c.result, ConnectResult::Failed(libc::ECONNREFUSED));
        assert_eq!(c.result.label(), "ECONNREFUSED");
        assert!(!c.result.is_tracked());
    }

    #[test]
    fn decodes_a_close_with_lifetime_and_cause() {
        let mut dup = raw(EventKind::Close);
        dup.arg = CloseHow::DupOnto as u32;
        let record = KernelRecord::from_raw(&dup).expect("valid");
        let KernelRecord::Close(c) = record else {
            panic!("not a close: {record:?}")
        };
        assert_eq!((c.bytes_sent, c.bytes_recv), (77, 12));
        assert_eq!(c.connect_tid, 44);
        assert_eq!(c.lifetime_ns(), 1_500);
        assert_eq!(c.cause, CloseCause::DupOnto);
    }

    #[test]
    fn decodes_an_accept_as_inbound() {
        let mut accept = raw(EventKind::Accept);
        accept.socket.flags = flags::INBOUND | flags::PEER_UNKNOWN;
        accept.arg = 3;
        let record = KernelRecord::from_raw(&accept).expect("valid");
        let KernelRecord::Accept {
            event,
            listener,
            peer_unknown,
        } = record
        else {
            panic!("not an accept: {record:?}")
        };
        assert_eq!(
            (event.socket.direction, listener, peer_unknown),
            (Direction::In, 3, true)
        );
    }

    #[test]
    fn decodes_process_hints() {
        let mut range = raw(EventKind::CloseRange);
        range.key.fd = 3;
        range.arg = u32::MAX;
        assert_eq!(
            KernelRecord::from_raw(&range),
            Ok(KernelRecord::CloseRange {
                pid: 42,
                first: 3,
                last: u32::MAX,
                ts_ns: 2_000
            })
        );
        assert_eq!(
            KernelRecord::from_raw(&raw(EventKind::ProcessExit)),
            Ok(KernelRecord::ProcessExit {
                pid: 42,
                ts_ns: 2_000
            })
        );
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(
            KernelRecord::decode(&[0; 3]),
            Err(DecodeError::WrongSize(3))
        );
        let mut bad = raw(EventKind::Connect);
        bad.kind = 99;
        assert_eq!(
            KernelRecord::from_raw(&bad),
            Err(DecodeError::UnknownKind(99))
        );
    }

    #[test]
    fn connect_results_map_from_return_values() {
        assert_eq!(ConnectResult::from_return(0).label(), "ok");
        assert_eq!(
            ConnectResult::from_return(-EINPROGRESS).label(),
            "in_progress"
        );
        assert!(ConnectResult::from_return(-EINPROGRESS).is_tracked());
        assert_eq!(ConnectResult::from_return(-9999).label(), "E9999");
        assert_eq!(ConnectResult::Existing.label(), "existing");
    }
}
