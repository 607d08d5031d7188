//! Kernel records decoded into the user-space domain.

use std::net::Ipv4Addr;

use sockwatch_common::{EventKind, SocketEvent, SocketKey, TrackedSocket, COMM_LEN, EINPROGRESS};

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

    pub fn is_tracked(self) -> bool {
        !matches!(self, Self::Failed(_))
    }

    /// `ok`, `in_progress`, or the errno's name (`ECONNREFUSED`).
    pub fn label(self) -> String {
        match self {
            Self::Ok => "ok".into(),
            Self::InProgress => "in_progress".into(),
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

/// What a socket's identity and destination are, as both events and snapshots carry them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub key: SocketKey,
    pub daddr: Ipv4Addr,
    pub dport: u16,
    pub comm: String,
}

/// A `connect()` on an `AF_INET` socket returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    pub socket: Endpoint,
    pub tid: u32,
    pub result: ConnectResult,
    /// Kernel monotonic time (ns).
    pub ts_ns: u64,
}

/// A tracked socket was closed; counts are final.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseEvent {
    pub socket: Endpoint,
    /// The thread that closed it.
    pub tid: u32,
    /// The thread that connected it.
    pub connect_tid: u32,
    pub ts_ns: u64,
    pub connect_ns: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
}

impl CloseEvent {
    pub fn lifetime_ns(&self) -> u64 {
        self.ts_ns.saturating_sub(self.connect_ns)
    }
}

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

impl KernelEvent {
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
        let socket = Endpoint {
            key: SocketKey {
                pid: raw.pid,
                fd: raw.fd,
            },
            daddr: ipv4(raw.daddr),
            dport: raw.dport,
            comm: comm_string(&raw.comm),
        };
        match EventKind::from_u32(raw.kind) {
            Some(EventKind::Connect) => Ok(Self::Connect(ConnectEvent {
                socket,
                tid: raw.tid,
                result: ConnectResult::from_return(raw.result),
                ts_ns: raw.ts_ns,
            })),
            Some(EventKind::Close) => Ok(Self::Close(CloseEvent {
                socket,
                tid: raw.tid,
                connect_tid: raw.connect_tid,
                ts_ns: raw.ts_ns,
                connect_ns: raw.connect_ns,
                bytes_sent: raw.bytes_sent,
                bytes_recv: raw.bytes_recv,
            })),
            None => Err(DecodeError::UnknownKind(raw.kind)),
        }
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
}

impl TrackedEntry {
    pub fn from_map(key: SocketKey, value: &TrackedSocket) -> Self {
        Self {
            socket: Endpoint {
                key,
                daddr: ipv4(value.daddr),
                dport: value.dport,
                comm: comm_string(&value.comm),
            },
            tid: value.tid,
            connect_ns: value.connect_ns,
            bytes_sent: value.bytes_sent,
            bytes_recv: value.bytes_recv,
            established: sockwatch_common::SocketState::from_u32(value.state)
                == Some(sockwatch_common::SocketState::Established),
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

    fn raw(kind: u32) -> SocketEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        SocketEvent {
            kind,
            pid: 42,
            tid: 43,
            fd: 5,
            ts_ns: 2_000,
            connect_ns: 500,
            bytes_sent: 77,
            bytes_recv: 0,
            daddr: u32::from_ne_bytes([127, 0, 0, 1]),
            dport: 8080,
            _pad0: 0,
            result: -libc::ECONNREFUSED,
            connect_tid: 44,
            comm,
        }
    }

    #[test]
    fn decodes_a_failed_connect() {
        let event = KernelEvent::from_raw(&raw(EventKind::Connect as u32)).expect("valid");
        let KernelEvent::Connect(c) = event else {
            panic!("not a connect: {event:?}")
        };
        assert_eq!(c.socket.key, SocketKey { pid: 42, fd: 5 });
        assert_eq!(c.socket.daddr, Ipv4Addr::LOCALHOST);
        assert_eq!(c.socket.dport, 8080);
        assert_eq!(c.socket.comm, "curl");
        assert_eq!(c.result, ConnectResult::Failed(libc::ECONNREFUSED));
        assert_eq!(c.result.label(), "ECONNREFUSED");
        assert!(!c.result.is_tracked());
    }

    #[test]
    fn decodes_a_close_with_lifetime() {
        let event = KernelEvent::from_raw(&raw(EventKind::Close as u32)).expect("valid");
        let KernelEvent::Close(c) = event else {
            panic!("not a close: {event:?}")
        };
        assert_eq!(c.bytes_sent, 77);
        assert_eq!(c.connect_tid, 44);
        assert_eq!(c.lifetime_ns(), 1_500);
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(KernelEvent::decode(&[0; 3]), Err(DecodeError::WrongSize(3)));
        assert_eq!(
            KernelEvent::from_raw(&raw(9)),
            Err(DecodeError::UnknownKind(9))
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
    }
}
