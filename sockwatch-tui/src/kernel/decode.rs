//! Kernel records decoded into [`Socket`]s: ring buffer records, and entries of the kernel's
//! `TRACKED` map.

use std::net::{IpAddr, Ipv6Addr};

use sockwatch_common::{
    flags, CloseHow, ClosedBy as KernelClosedBy, EventKind, EventRecord, RecordFate, SocketEvent,
    SocketKey, SocketState, TrackedSocket, COMM_LEN, EINPROGRESS, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::socket::{CloseCause, Closed, ClosedBy, Comm, Direction, Origin, Proto, Socket, State};

/// How a `connect()` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectResult {
    /// Returned 0: connected.
    Ok,
    /// Returned `-EINPROGRESS`: a non-blocking connect under way (tracked).
    InProgress,
    /// Returned `-errno` (positive errno here): failed, not tracked.
    Failed(i32),
}

impl ConnectResult {
    pub fn from_return(ret: i32) -> Self {
        match ret {
            0 => Self::Ok,
            r if r == -EINPROGRESS => Self::InProgress,
            r => Self::Failed(r.saturating_neg()),
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

/// Why a ring buffer record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {0} bytes, expected {expected}", expected = size_of::<EventRecord>())]
    WrongSize(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// One ring buffer record, decoded. Some are about one socket; others are hints about a whole
/// process that the tracker settles from the kernel's map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelRecord {
    /// A `connect()` on an IPv4 destination returned (the socket is tracked unless it failed).
    Connect {
        socket: Socket,
        result: ConnectResult,
    },
    /// An accepted socket; `listener` is the listening fd (for the local port), and
    /// `peer_unknown` says the caller passed no address buffer.
    Accept {
        socket: Socket,
        listener: u32,
        peer_unknown: bool,
    },
    /// A tracked socket was closed: `socket.closed` is set, its counts are final.
    Close(Socket),
    /// A tracked socket was closed after a newer socket had taken its fd number and its map
    /// entry (another thread got the freed number first): only its identity is known, and its
    /// final counts on the socket backend.
    CloseReplaced {
        key: SocketKey,
        inode: u64,
        closed: Closed,
        counts: Option<(u64, u64)>,
    },
    /// The process exited; `forked`: it forked since it had tracked sockets (the socket
    /// backend says so: a child may hold them still).
    ProcessExit {
        pid: u32,
        ts_ns: u64,
        forked: bool,
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
    /// The process forked a child with its own fd table, holding its sockets too.
    Fork {
        pid: u32,
    },
    /// Another process moves the socket's bytes (the socket backend): its row is under that
    /// process's fd from now on. `socket` is at its new key, with its counts so far.
    Moved {
        socket: Socket,
        from: SocketKey,
    },
}

impl KernelRecord {
    /// Decodes one ring buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != size_of::<EventRecord>() {
            return Err(DecodeError::WrongSize(bytes.len()));
        }
        // SAFETY: the length was checked, EventRecord is plain old data without padding (any
        // bit pattern is valid), and read_unaligned makes no assumption about the buffer's
        // alignment.
        let record: EventRecord = unsafe { bytes.as_ptr().cast::<EventRecord>().read_unaligned() };
        Self::from_raw(&record.event, &record.fate)
    }

    /// An event and, for a connect or a close, its socket's TCP fate.
    pub fn from_raw(raw: &SocketEvent, fate: &RecordFate) -> Result<Self, DecodeError> {
        let kind = EventKind::from_u32(raw.kind).ok_or(DecodeError::UnknownKind(raw.kind))?;
        // The event carries the socket's map record: as it starts being tracked, or final.
        // A fate is TCP's: at a UDP socket's address it is another socket's, left over. (A
        // protocol of 0 is not known, not UDP: the syscall backends missed its socket().)
        let fate = if raw.socket.proto != IPPROTO_UDP {
            *fate
        } else {
            RecordFate::default()
        };
        let socket = || {
            let mut socket = tracked_socket(raw.key, &raw.socket);
            socket.set_connect_us(connect_us(&fate));
            socket
        };
        Ok(match kind {
            EventKind::Connect => {
                let result = ConnectResult::from_return(raw.result);
                let mut socket = socket();
                socket.state = match result {
                    ConnectResult::InProgress => State::Connecting,
                    ConnectResult::Ok | ConnectResult::Failed(_) => State::Established,
                };
                Self::Connect { socket, result }
            }
            EventKind::Accept => Self::Accept {
                socket: socket(),
                listener: raw.arg,
                peer_unknown: raw.socket.flags & flags::PEER_UNKNOWN != 0,
            },
            EventKind::Close => {
                let cause = match raw.arg {
                    a if a == CloseHow::DupOnto as u32 => CloseCause::DupOnto,
                    a if a == CloseHow::Exit as u32 => CloseCause::Exit,
                    a if a == CloseHow::Exec as u32 => CloseCause::Exec,
                    _ => CloseCause::Close,
                };
                if raw.socket.flags & flags::REPLACED != 0 {
                    let counts = raw.socket.flags & flags::PARTIAL == 0;
                    return Ok(Self::CloseReplaced {
                        key: raw.key,
                        inode: raw.socket.ino,
                        closed: Closed {
                            at_ns: raw.ts_ns,
                            tid: raw.tid,
                            cause,
                        },
                        counts: counts.then_some((raw.socket.bytes_sent, raw.socket.bytes_recv)),
                    });
                }
                let mut socket = socket();
                let (by, error) = ended(&fate, socket.proto);
                socket.closed_by = by;
                socket.set_error(error);
                let (sent, recv) = (socket.bytes_sent, socket.bytes_recv);
                socket.close(
                    Closed {
                        at_ns: raw.ts_ns,
                        tid: raw.tid,
                        cause,
                    },
                    sent,
                    recv,
                );
                Self::Close(socket)
            }
            EventKind::ProcessExit => Self::ProcessExit {
                pid: raw.key.pid,
                ts_ns: raw.ts_ns,
                forked: raw.arg != 0,
            },
            EventKind::Exec => Self::Exec {
                pid: raw.key.pid,
                ts_ns: raw.ts_ns,
            },
            EventKind::Fork => Self::Fork { pid: raw.key.pid },
            EventKind::Moved => Self::Moved {
                socket: socket(),
                from: SocketKey {
                    pid: raw.arg,
                    fd: raw.result as u32,
                },
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

/// How long the handshake took, when the kernel saw it start and end.
fn connect_us(fate: &RecordFate) -> Option<u64> {
    (fate.connect_us != RecordFate::NO_CONNECT_US).then_some(u64::from(fate.connect_us))
}

/// Who ended a closed socket, and the errno that did. A socket released while followed and
/// before any sign (no FIN, no reset seen yet) was let go of here first: `Local`.
fn ended(fate: &RecordFate, proto: Proto) -> (Option<ClosedBy>, Option<i32>) {
    let by = match KernelClosedBy::from_u32(u32::from(fate.closed_by)) {
        KernelClosedBy::Local => Some(ClosedBy::Local),
        KernelClosedBy::Peer => Some(ClosedBy::Peer),
        KernelClosedBy::ResetSent => Some(ClosedBy::ResetSent),
        KernelClosedBy::ResetReceived => Some(ClosedBy::ResetReceived),
        KernelClosedBy::Timeout => Some(ClosedBy::Timeout),
        KernelClosedBy::Failed => Some(ClosedBy::Failed),
        // Followed, and released before any sign: this end let go of it first.
        KernelClosedBy::Followed => (proto != Proto::Udp).then_some(ClosedBy::Local),
        // Its SYN never went out: the connect failed at once (the socket backend, which
        // cannot see the errno).
        KernelClosedBy::Pending => Some(ClosedBy::Failed),
        // Not followed (older than sockwatch, or evicted from the map): not known.
        KernelClosedBy::Unknown => None,
    };
    let error = (fate.error != 0).then_some(i32::from(fate.error));
    (by, error)
}

/// One entry of the kernel's `TRACKED` map as a socket, its counters as of the read.
pub fn tracked_socket(key: SocketKey, value: &TrackedSocket) -> Socket {
    let mut socket = Socket::new(
        key,
        value.connect_ns,
        address(value.daddr),
        value.dport,
        Comm::from_kernel(&value.comm),
    );
    socket.tid = value.tid;
    socket.lport = value.lport;
    socket.set_inode((value.ino != 0).then_some(value.ino));
    socket.proto = proto(value.proto);
    socket.direction = direction(value.flags);
    socket.origin = origin(value.flags);
    socket.state = match SocketState::from_u32(value.state) {
        Some(SocketState::Established) => State::Established,
        _ => State::Connecting,
    };
    socket.bytes_sent = value.bytes_sent;
    socket.bytes_recv = value.bytes_recv;
    socket.complete = value.flags & flags::PARTIAL == 0;
    socket
}

/// The map value user space inserts for a socket found open at start.
pub fn tracked_value(socket: &Socket) -> TrackedSocket {
    TrackedSocket {
        bytes_sent: socket.bytes_sent,
        bytes_recv: socket.bytes_recv,
        connect_ns: socket.id.opened_ns,
        // The kernel's own address of it is not in /proc; the inode is.
        sk: 0,
        ino: socket.inode().unwrap_or(0),
        daddr: words(socket.daddr()),
        dport: socket.dport,
        lport: socket.lport,
        tid: socket.tid,
        state: match socket.state {
            State::Connecting => SocketState::Connecting as u32,
            State::Established => SocketState::Established as u32,
        },
        proto: match socket.proto {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
            Proto::Unknown => 0,
        },
        flags: match socket.origin {
            Origin::Existing => flags::PREEXISTING,
            _ => 0,
        } | match socket.direction {
            Direction::In => flags::INBOUND,
            Direction::Out => 0,
        },
        _pad0: 0,
        comm: comm_bytes(&socket.comm),
    }
}

fn proto(value: u32) -> Proto {
    match value {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        _ => Proto::Unknown,
    }
}

fn direction(bits: u32) -> Direction {
    if bits & flags::INBOUND != 0 {
        Direction::In
    } else {
        Direction::Out
    }
}

fn origin(bits: u32) -> Origin {
    if bits & flags::PREEXISTING != 0 {
        Origin::Existing
    } else if bits & flags::INBOUND != 0 {
        Origin::Accept
    } else {
        Origin::Connect
    }
}

/// The kernel keeps addresses as `struct in6_addr` does (network byte order), an IPv4 one
/// IPv4-mapped: the row shows that as IPv4.
fn address(words: [u32; 4]) -> Ipv6Addr {
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(bytes)
}

/// [`address`] the other way.
fn words(address: IpAddr) -> [u32; 4] {
    let bytes = match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
    .octets();
    let word = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

fn comm_bytes(comm: &str) -> [u8; COMM_LEN] {
    let mut bytes = [0u8; COMM_LEN];
    let len = comm.len().min(COMM_LEN - 1);
    bytes[..len].copy_from_slice(&comm.as_bytes()[..len]);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockwatch_common::TcpFate;
    use std::net::Ipv4Addr;

    fn raw(kind: EventKind) -> SocketEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let socket = TrackedSocket {
            bytes_sent: 77,
            bytes_recv: 12,
            connect_ns: 500,
            sk: 0xffff_8880_1234_5600,
            ino: 4242,
            daddr: sockwatch_common::ipv4_mapped(u32::from_ne_bytes([127, 0, 0, 1])),
            dport: 8080,
            lport: 0,
            tid: 44,
            state: SocketState::Established as u32,
            proto: IPPROTO_TCP,
            flags: 0,
            _pad0: 0,
            comm,
        };
        SocketEvent {
            result: -libc::ECONNREFUSED,
            ..SocketEvent::new(kind, SocketKey { pid: 42, fd: 5 }, 43, 2_000, socket)
        }
    }

    #[test]
    fn decodes_a_failed_connect() {
        let record = KernelRecord::from_raw(&raw(EventKind::Connect), &RecordFate::default())
            .expect("valid");
        let KernelRecord::Connect { socket, result } = record else {
            panic!("not a connect: {record:?}")
        };
        assert_eq!(socket.key(), SocketKey { pid: 42, fd: 5 });
        assert_eq!(socket.daddr(), Ipv4Addr::LOCALHOST);
        assert_eq!(
            (socket.dport, socket.proto, socket.direction, socket.origin),
            (8080, Proto::Tcp, Direction::Out, Origin::Connect)
        );
        assert_eq!((socket.comm.as_str(), socket.tid), ("curl", 44));
        assert_eq!(socket.inode(), Some(4242));
        assert_eq!(socket.id.opened_ns, 500);
        assert_eq!(result, ConnectResult::Failed(libc::ECONNREFUSED));
        assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
    }

    #[test]
    fn an_in_progress_connect_is_connecting() {
        let mut connect = raw(EventKind::Connect);
        connect.result = -EINPROGRESS;
        let record = KernelRecord::from_raw(&connect, &RecordFate::default()).expect("valid");
        let KernelRecord::Connect { socket, result } = record else {
            panic!("not a connect: {record:?}")
        };
        assert_eq!(
            (result, socket.state),
            (ConnectResult::InProgress, State::Connecting)
        );
    }

    #[test]
    fn decodes_a_close_with_lifetime_and_cause() {
        let mut dup = raw(EventKind::Close);
        dup.arg = CloseHow::DupOnto as u32;
        let record = KernelRecord::from_raw(&dup, &RecordFate::default()).expect("valid");
        let KernelRecord::Close(socket) = record else {
            panic!("not a close: {record:?}")
        };
        assert_eq!((socket.bytes_sent, socket.bytes_recv), (77, 12));
        assert_eq!(socket.tid, 44, "the connecting thread");
        assert_eq!(
            socket.closed,
            Some(Closed {
                at_ns: 2_000,
                tid: 43,
                cause: CloseCause::DupOnto
            })
        );
        assert_eq!(socket.age_ns(u64::MAX), 1_500, "its lifetime");
        assert_eq!(socket.comm, "curl");
    }

    #[test]
    fn a_close_carries_who_ended_it_and_the_connect_latency() {
        let close = raw(EventKind::Close);
        let fate = TcpFate {
            syn_ns: 1_000,
            handshake_ns: 53_000,
            closed_by: KernelClosedBy::ResetReceived as u32,
            error: libc::ECONNRESET as u32,
        };
        let Ok(KernelRecord::Close(socket)) =
            KernelRecord::from_raw(&close, &RecordFate::of(&fate))
        else {
            panic!("not a close")
        };
        assert_eq!(socket.connect_us(), Some(52));
        assert_eq!(socket.closed_by, Some(ClosedBy::ResetReceived));
        assert_eq!(socket.error(), Some(libc::ECONNRESET));
        // Followed, nothing seen of its end: it was released here first.
        let followed = TcpFate {
            closed_by: KernelClosedBy::Followed as u32,
            ..TcpFate::default()
        };
        let Ok(KernelRecord::Close(socket)) =
            KernelRecord::from_raw(&close, &RecordFate::of(&followed))
        else {
            panic!("not a close")
        };
        assert_eq!(
            (socket.closed_by, socket.error(), socket.connect_us()),
            (Some(ClosedBy::Local), None, None)
        );
        // Not followed (older than sockwatch): not known.
        let Ok(KernelRecord::Close(socket)) =
            KernelRecord::from_raw(&close, &RecordFate::default())
        else {
            panic!("not a close")
        };
        assert_eq!(socket.closed_by, None);
        // Tracked before its SYN, which never left (no route...): failed, errno not seen.
        let pending = TcpFate {
            closed_by: KernelClosedBy::Pending as u32,
            ..TcpFate::default()
        };
        let Ok(KernelRecord::Close(socket)) =
            KernelRecord::from_raw(&close, &RecordFate::of(&pending))
        else {
            panic!("not a close")
        };
        assert_eq!(
            (socket.closed_by, socket.error()),
            (Some(ClosedBy::Failed), None)
        );
        // A handshake that failed after a non-blocking connect returned.
        let failed = TcpFate {
            closed_by: KernelClosedBy::Failed as u32,
            error: libc::ECONNREFUSED as u32,
            ..fate
        };
        let Ok(KernelRecord::Close(socket)) =
            KernelRecord::from_raw(&close, &RecordFate::of(&failed))
        else {
            panic!("not a close")
        };
        assert_eq!(socket.failed(), Some(libc::ECONNREFUSED));
    }

    #[test]
    fn decodes_an_accept_as_inbound() {
        let mut accept = raw(EventKind::Accept);
        accept.socket.flags = flags::INBOUND | flags::PEER_UNKNOWN;
        accept.arg = 3;
        let record = KernelRecord::from_raw(&accept, &RecordFate::default()).expect("valid");
        let KernelRecord::Accept {
            socket,
            listener,
            peer_unknown,
        } = record
        else {
            panic!("not an accept: {record:?}")
        };
        assert_eq!(
            (socket.direction, socket.origin, listener, peer_unknown),
            (Direction::In, Origin::Accept, 3, true)
        );
    }

    #[test]
    fn decodes_process_hints() {
        let mut range = raw(EventKind::CloseRange);
        range.key.fd = 3;
        range.arg = u32::MAX;
        assert_eq!(
            KernelRecord::from_raw(&range, &RecordFate::default()),
            Ok(KernelRecord::CloseRange {
                pid: 42,
                first: 3,
                last: u32::MAX,
                ts_ns: 2_000
            })
        );
        assert_eq!(
            KernelRecord::from_raw(&raw(EventKind::ProcessExit), &RecordFate::default()),
            Ok(KernelRecord::ProcessExit {
                pid: 42,
                ts_ns: 2_000,
                forked: false,
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
            KernelRecord::from_raw(&bad, &RecordFate::default()),
            Err(DecodeError::UnknownKind(99))
        );
    }

    #[test]
    fn connect_results_map_from_return_values() {
        assert_eq!(ConnectResult::from_return(0), ConnectResult::Ok);
        assert_eq!(
            ConnectResult::from_return(-EINPROGRESS),
            ConnectResult::InProgress
        );
        assert_eq!(errno_name(9999), "E9999");
    }

    #[test]
    fn map_values_round_trip_through_sockets() {
        let mut socket = Socket::new(
            SocketKey { pid: 9, fd: 4 },
            1_000,
            Ipv4Addr::new(10, 0, 0, 1),
            5432,
            "a-very-long-process-name",
        );
        socket.origin = Origin::Existing;
        socket.direction = Direction::In;
        socket.proto = Proto::Udp;
        socket.lport = 40_000;
        socket.set_inode(Some(77));
        let value = tracked_value(&socket);
        let back = tracked_socket(socket.key(), &value);
        assert_eq!(
            back.comm, "a-very-long-pro",
            "comm is cut as the kernel cuts it"
        );
        assert_eq!(
            (back.id, back.daddr(), back.dport, back.lport, back.proto),
            (socket.id, socket.daddr(), 5432, 40_000, Proto::Udp)
        );
        assert_eq!(back.inode(), Some(77));
        assert_eq!(
            (back.direction, back.origin, back.state),
            (Direction::In, Origin::Existing, State::Established)
        );
    }
}
