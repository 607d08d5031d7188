//! The socket backend's counting: raw tracepoints inside `sock_sendmsg` / `sock_recvmsg`
//! (`sock:sock_send_length`, `sock:sock_recv_length`, Linux ≥ 6.3). Every path that moves a
//! socket's bytes goes through them (write/read, send*/recv*, sendfile and splice into a socket,
//! io_uring), in the context of whichever task moves them, so the count is the kernel socket's,
//! whoever holds it. Only tracked sockets (with an `SK_BYTES` entry) are counted: one hash
//! lookup and an atomic add, and nothing at all for syscalls that are not about sockets.

//!
//! A TCP socket whose tracking fd was closed while others held it (see `state::hand_off`) is
//! ended here too: its state change or destruction as the kernel releases it (the last holder
//! closed it, or exited) reports it with its final counts.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use sockwatch_common::{EventKind, SkBytes, SocketEvent, SocketKey, TrackedSocket, COMM_LEN};

use crate::{
    identity::{current_is_user, inode_of_sock, release_of, Release},
    maps::{ADOPTED, ADOPTED_PENDING, HANDED_OFF_COUNT, SK_BYTES, TRACKED},
    state::{atomic_add, comm, current, emit, now_ns},
};

/// `MSG_PEEK`: a receive that leaves the data queued moved nothing.
const MSG_PEEK: i32 = 2;

/// `TP_PROTO(struct sock *sk, int ret, int flags)`: `ret` is the length moved, or `-errno`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    let (sk, ret): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    count(sk, ret as i32, true);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    let (sk, ret, flags): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if flags as i32 & MSG_PEEK == 0 {
        count(sk, ret as i32, false);
    }
    0
}

#[inline(always)]
fn count(sk: u64, ret: i32, sent: bool) {
    if ret <= 0 {
        return;
    }
    let Some(bytes) = SK_BYTES.get_ptr_mut(sk).or_else(|| adopt(sk)) else {
        return;
    };
    // SAFETY: `bytes` points into a preallocated hash map value; the counters are 8-byte
    // aligned u64 fields, added atomically because tasks on every CPU may move bytes at once;
    // the u32 fields are read and stored whole.
    unsafe {
        if core::ptr::read_volatile(&raw const (*bytes).handed_off) != 0 {
            core::ptr::write_volatile(&raw mut (*bytes).mover, current().1);
        }
        if sent {
            atomic_add(&raw mut (*bytes).bytes_sent, ret as u64);
        } else {
            atomic_add(&raw mut (*bytes).bytes_recv, ret as u64);
        }
    }
}

/// A socket found open at start is known to user space by its inode only: at its first byte,
/// its `struct sock` is learned here and it is counted from then on. Costs the walk only while
/// user space says such sockets are pending.
#[inline(always)]
fn adopt(sk: u64) -> Option<*mut SkBytes> {
    if *ADOPTED_PENDING.get(0)? == 0 {
        return None;
    }
    let inode = inode_of_sock(sk);
    // SAFETY: copied out at once.
    let key = *unsafe { ADOPTED.get(inode) }?;
    let _ = ADOPTED.remove(inode);
    let tracked = TRACKED.get_ptr_mut(key)?;
    // SAFETY: a valid map value pointer; an aligned u64 stored whole.
    unsafe { core::ptr::write_volatile(&raw mut (*tracked).sk, sk) };
    let bytes = SkBytes {
        ino: inode,
        ..SkBytes::default()
    };
    SK_BYTES.insert(sk, bytes, 0).ok()?;
    SK_BYTES.get_ptr_mut(sk)
}

/// `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`: the last holder's
/// close (or exit) of a connected TCP socket changes its state as the kernel releases it.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    release(ctx.arg(0));
    0
}

/// `TP_PROTO(struct sock *sk)`: a socket already closed (reset, or both ends shut down) has no
/// state left to change; its release destroys it.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    release(ctx.arg(0));
    0
}

/// Reports a handed-off socket that the kernel is releasing, with its final counts.
#[inline(always)]
fn release(sk: u64) {
    // Nothing handed off: every other socket's state changes cost no lookup.
    // SAFETY: a plain read of our own global; a stale value only costs a lookup.
    if unsafe { core::ptr::read_volatile(&raw const HANDED_OFF_COUNT) } == 0 {
        return;
    }
    // SAFETY: copied out at once.
    let Some(bytes) = (unsafe { SK_BYTES.get(sk) }).copied() else {
        return;
    };
    if bytes.handed_off == 0 {
        return;
    }
    let by_caller = match release_of(sk) {
        Release::Held => return,
        // A kernel thread (a deferred file release) is not the process that let go of it.
        Release::ByCaller => current_is_user(),
        Release::Done => false,
    };
    // Only the one caller that removes the entry reports it (state changes may race).
    if SK_BYTES.remove(sk).is_err() {
        return;
    }
    // SAFETY: an atomic add of -1 on our own global.
    unsafe { atomic_add(&raw mut HANDED_OFF_COUNT, u64::MAX) };
    // The releasing process, when it is the caller; else pid 0 (not known).
    let (pid_tgid, pid, comm) = if by_caller {
        let (pid_tgid, pid) = current();
        (pid_tgid, pid, comm())
    } else {
        (0, 0, [0; COMM_LEN])
    };
    let ts = now_ns();
    let socket = TrackedSocket {
        bytes_sent: bytes.bytes_sent,
        bytes_recv: bytes.bytes_recv,
        sk,
        ino: bytes.ino,
        comm,
        ..TrackedSocket::default()
    };
    // The fd was closed before the release began: not known.
    let key = SocketKey { pid, fd: u32::MAX };
    emit(&SocketEvent::new(
        EventKind::Release,
        key,
        pid_tgid as u32,
        ts,
        socket,
    ));
}
