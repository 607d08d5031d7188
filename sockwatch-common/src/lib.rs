//! Types shared by sockwatch's kernel programs and its user space.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and free of implicit padding (explicit `_pad`
//! fields instead), so the bytes the kernel writes are exactly the bytes user space reads.
//! Map names are defined once here so the loader and the kernel side cannot disagree.
#![no_std]

/// `AF_INET` from `<sys/socket.h>`.
pub const AF_INET: u16 = 2;
/// `EINPROGRESS`: a non-blocking `connect()` that is still under way.
pub const EINPROGRESS: i32 = 115;
/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Names of the maps in the eBPF object, shared by both sides.
pub mod maps {
    /// `HashMap<SocketKey, TrackedSocket>`: the sockets being watched, with their counters.
    pub const TRACKED: &str = "TRACKED";
    /// `HashMap<u64 /* pid_tgid */, InflightCall>`: a syscall's arguments, from entry to exit.
    pub const INFLIGHT: &str = "INFLIGHT";
    /// `RingBuf` of [`super::SocketEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<u64>` indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
}

/// Names of the global variables user space sets at load time.
pub mod globals {
    /// `u32`: 1 when the kprobe backend's syscall symbols take a `struct pt_regs *` of the
    /// user registers (x86_64's `__x64_sys_*` wrappers), 0 when they take the arguments directly.
    pub const SYSCALL_WRAPPER: &str = "SYSCALL_WRAPPER";
}

/// A socket is identified by the process that owns the fd table and the fd number.
/// Not by thread (fds belong to the process) and not by comm.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketKey {
    /// Process id (the kernel's tgid).
    pub pid: u32,
    pub fd: u32,
}

/// Where a tracked socket stands, as far as the syscalls we watch can tell.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketState {
    /// A non-blocking `connect()` returned `-EINPROGRESS` and nothing has been sent yet.
    Connecting = 1,
    /// `connect()` returned 0, or a send on the socket succeeded.
    Established = 2,
}

impl SocketState {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Connecting),
            2 => Some(Self::Established),
            _ => None,
        }
    }
}

/// The kernel's record of one watched socket: the value of the `TRACKED` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedSocket {
    /// Sum of successful send return values (bytes), added atomically by every thread.
    pub bytes_sent: u64,
    /// Sum of successful receive return values (bytes).
    pub bytes_recv: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the connect returned.
    pub connect_ns: u64,
    /// Destination IPv4 address, in network byte order (as in `sockaddr_in`).
    pub daddr: u32,
    /// Destination port, host byte order.
    pub dport: u16,
    pub _pad0: u16,
    /// The thread that connected.
    pub tid: u32,
    /// A [`SocketState`] value.
    pub state: u32,
    pub comm: [u8; COMM_LEN],
}

/// What a thread is in the middle of: the value of the `INFLIGHT` map, written at syscall
/// entry and consumed (deleted) at exit, so the exit sees both the arguments and the result.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InflightCall {
    /// A [`CallKind`] value; the exit handler checks it so a stale entry is never misread.
    pub kind: u32,
    pub fd: u32,
    /// For connect: destination address (network order) and port (host order).
    pub daddr: u32,
    pub dport: u16,
    pub _pad0: u16,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Connect = 1,
    Send = 2,
    Close = 3,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An `AF_INET` `connect()` returned; `result` holds its return value.
    Connect = 1,
    /// A tracked socket was closed; byte counts are final.
    Close = 2,
}

impl EventKind {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Connect),
            2 => Some(Self::Close),
            _ => None,
        }
    }
}

/// One record in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEvent {
    /// An [`EventKind`] value.
    pub kind: u32,
    pub pid: u32,
    /// The thread that made the call (for a close: the closing thread).
    pub tid: u32,
    pub fd: u32,
    /// `bpf_ktime_get_ns()` when the event happened.
    pub ts_ns: u64,
    /// `bpf_ktime_get_ns()` when the socket's connect returned (equals `ts_ns` for a connect).
    pub connect_ns: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    /// Network byte order.
    pub daddr: u32,
    /// Host byte order.
    pub dport: u16,
    pub _pad0: u16,
    /// For a connect: the syscall's return value (0, `-EINPROGRESS` or `-errno`). 0 otherwise.
    pub result: i32,
    /// For a close: the thread that connected the socket.
    pub connect_tid: u32,
    pub comm: [u8; COMM_LEN],
}

/// Indices into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An event could not be reserved in the ring buffer: it was lost.
    RingbufDrops = 0,
    /// A connect could not be tracked because `TRACKED` was full.
    TrackedFull = 1,
    /// A syscall's arguments could not be stashed because `INFLIGHT` was full.
    InflightFull = 2,
}

/// Number of entries in the `COUNTERS` array.
pub const COUNTER_COUNT: u32 = 3;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding, so any bit
    // pattern the kernel writes is a valid value.
    unsafe impl aya::Pod for super::SocketKey {}
    unsafe impl aya::Pod for super::TrackedSocket {}
    unsafe impl aya::Pod for super::InflightCall {}
    unsafe impl aya::Pod for super::SocketEvent {}
}

// Layout checks: the kernel and user space must agree byte for byte.
const _: () = {
    assert!(core::mem::size_of::<SocketKey>() == 8);
    assert!(core::mem::size_of::<TrackedSocket>() == 56);
    assert!(core::mem::size_of::<InflightCall>() == 16);
    assert!(core::mem::size_of::<SocketEvent>() == 80);
};
