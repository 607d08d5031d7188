//! The socket backend's counting: raw tracepoints inside `sock_sendmsg` / `sock_recvmsg`
//! (`sock:sock_send_length`, `sock:sock_recv_length`, Linux ≥ 6.3). Every path that moves a
//! socket's bytes goes through them (write/read, send*/recv*, sendfile and splice into a socket,
//! io_uring), in the context of whichever task moves them, so the count is the kernel socket's,
//! whoever holds it. Only tracked sockets (with an `SK_BYTES` entry) are counted: one hash
//! lookup and an atomic add, and nothing at all for syscalls that are not about sockets.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use sockwatch_common::SkBytes;

use crate::{
    identity::inode_of_sock,
    maps::{ADOPTED, ADOPTED_PENDING, SK_BYTES, TRACKED},
    state::atomic_add,
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
    // aligned u64 fields, added atomically because tasks on every CPU may move bytes at once.
    unsafe {
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
    SK_BYTES.insert(sk, SkBytes::default(), 0).ok()?;
    SK_BYTES.get_ptr_mut(sk)
}
