//! The socket backend's counting: raw tracepoints inside `sock_sendmsg` / `sock_recvmsg`
//! (`sock:sock_send_length`, `sock:sock_recv_length`, Linux ≥ 6.3). Every path that moves a
//! socket's bytes goes through them (write/read, send*/recv*, sendfile and splice into a socket,
//! io_uring), in the context of whichever task moves them, so the count is the kernel socket's,
//! whoever holds it. Only tracked sockets (with an `SK_BYTES` entry) are counted: one hash
//! lookup and an atomic add, and nothing at all for syscalls that are not about sockets.
//!
//! The same hooks see who uses a socket:
//! - an accepted socket is tracked at its first use, in the process that uses it (no hook
//!   fires in the acceptor's context at accept without taxing every syscall);
//! - a tracked socket's bytes moved by another process, once the process its row shows no
//!   longer holds it (a forked worker after its parent's close, a program started on it, an fd
//!   passed over a Unix socket), move its row there.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use sockwatch_common::{
    flags, Counter, EventKind, HotCounts, SkBytes, SocketKey, SocketState, TrackedSocket,
    FD_UNKNOWN, IPPROTO_TCP,
};

use crate::{
    hot,
    identity::{
        current_files, current_is_user, fd_of_sock, file_of_sock, holds, inet_peer, inode_of_sock,
        local_port,
    },
    maps::{bump, pid_in_scope, ACCEPTED, ADOPTED, ADOPTED_PENDING, SK_BYTES, SK_FATE, TRACKED},
    state::{comm, current, emit, key, note_process, now_ns, Draft, Head},
};

/// `MSG_PEEK`: a receive that leaves the data queued moved nothing.
const MSG_PEEK: i32 = 2;

/// An accept's listening fd, which the socket backend does not see.
pub const NO_LISTENER: u32 = u32::MAX;

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

/// Counts `ret` bytes (when positive) on socket `sk`, tracking it first if this is an accepted
/// or adopted socket's first byte, and following it to the process that moves them.
#[inline(always)]
fn count(sk: u64, ret: i32, sent: bool) {
    // Nothing moved (an empty read, `EAGAIN`): no lookup at all.
    if ret <= 0 {
        return;
    }
    let pid_tgid = current().0;
    let hot = hot::find(sk);
    // The common case: a message of the process the row shows, nothing else to do.
    if let Some(slot) = hot {
        // SAFETY: a valid `SK_HOT` value pointer and its counters.
        unsafe {
            if hot::only_count(slot, (pid_tgid >> 32) as u32) {
                let (out, inb) = (&raw mut (*slot).bytes_sent, &raw mut (*slot).bytes_recv);
                hot::add(out, inb, ret as u64, sent);
                return;
            }
        }
    }
    count_fully(sk, ret as u64, sent, pid_tgid, hot);
}

/// [`count`]'s full path: the socket's first use, a UDP connect to report, another process
/// moving its bytes, or a socket without a hot slot (`hot`: its slot found before, if any).
#[inline(always)]
fn count_fully(sk: u64, len: u64, sent: bool, pid_tgid: u64, hot: Option<*mut HotCounts>) {
    let Some(bytes) = SK_BYTES.get_ptr_mut(sk).or_else(|| first_use(sk)) else {
        return;
    };
    // Tracked just now: its slot, if it got one.
    let hot = hot.or_else(|| hot::find(sk));
    // SAFETY: `bytes` points into a preallocated hash map value, `hot` (if any) into an array
    // map value; their counters are 8-byte aligned u64 fields; the key and the flag are read
    // and stored by the kernel only.
    unsafe {
        if core::ptr::read_volatile(&raw const (*bytes).unreported) != 0 {
            core::ptr::write_volatile(&raw mut (*bytes).unreported, 0);
            report_udp_connect(sk, (*bytes).key);
            if let Some(slot) = hot {
                hot::clear_slow(slot);
            }
        }
        if core::ptr::read_volatile(&raw const (*bytes).key.pid) != (pid_tgid >> 32) as u32 {
            follow(sk, bytes, pid_tgid);
        }
        match hot {
            Some(slot) => {
                let (out, inb) = (&raw mut (*slot).bytes_sent, &raw mut (*slot).bytes_recv);
                hot::add(out, inb, len, sent);
            }
            None => {
                let (out, inb) = (&raw mut (*bytes).bytes_sent, &raw mut (*bytes).bytes_recv);
                hot::add(out, inb, len, sent);
                // After the add: user space, seeing the generation move, reads the counts.
                hot::spilled(sk);
            }
        }
    }
}

/// Reports the connect of UDP socket `sk`, tracked at `key`, now that its local port is bound
/// (see `SkBytes::unreported`).
#[inline(always)]
pub fn report_udp_connect(sk: u64, key: SocketKey) {
    let Some(row) = TRACKED.get_ptr_mut(key) else {
        return;
    };
    let lport = local_port(sk);
    // SAFETY: a valid map value pointer; aligned fields read and stored whole; the record goes
    // from the map straight into the ring.
    unsafe {
        if (*row).sk != sk {
            return;
        }
        core::ptr::write_volatile(&raw mut (*row).lport, lport);
        emit(Head::opened(EventKind::Connect, key, &*row), row);
    }
}

/// An fd key for a socket whose fd is not known: unique per socket within a process (see
/// [`FD_UNKNOWN`]).
#[inline(always)]
pub fn unknown_fd(ino: u64) -> u32 {
    FD_UNKNOWN | (ino as u32 & !FD_UNKNOWN)
}

/// Starts tracking socket `socket.sk` under `key`: its counters (`SK_BYTES`, and a hot slot
/// when one is free) and its row (`TRACKED`); `unreported` as [`SkBytes::unreported`]. Returns
/// its `SK_BYTES` value.
#[inline(always)]
pub fn track_socket(
    key: SocketKey,
    socket: &TrackedSocket,
    unreported: u32,
) -> Option<*mut SkBytes> {
    make_room(key, socket.sk);
    let files = if key.fd & FD_UNKNOWN == 0 {
        current_files()
    } else {
        0
    };
    let bytes = SkBytes {
        ino: socket.ino,
        files,
        key,
        unreported,
        ..SkBytes::default()
    };
    // BPF_ANY: a kernel socket freed and reused at the same address starts from zero.
    if SK_BYTES.insert(socket.sk, bytes, 0).is_err() {
        bump(Counter::TrackedFull);
        return None;
    }
    if TRACKED.insert(key, socket, 0).is_err() {
        bump(Counter::TrackedFull);
        let _ = SK_BYTES.remove(socket.sk);
        // The slot an older socket at this address may have left.
        hot::free(socket.sk, &bytes);
        return None;
    }
    note_process(key.pid);
    with_hot_slot(socket.sk, key.pid, unreported)
}

/// The `SK_BYTES` value of socket `sk`, just tracked in process `pid`, once it has claimed a
/// hot slot (if one is free).
#[inline(always)]
fn with_hot_slot(sk: u64, pid: u32, unreported: u32) -> Option<*mut SkBytes> {
    let bytes = SK_BYTES.get_ptr_mut(sk)?;
    let slot = hot::claim(sk, pid, unreported);
    // SAFETY: a valid map value pointer; u32s read and stored whole.
    unsafe {
        core::ptr::write_volatile(&raw mut (*bytes).hot, slot);
        // A message of another thread reported the UDP connect while the slot was claimed.
        if unreported != 0 && core::ptr::read_volatile(&raw const (*bytes).unreported) == 0 {
            if let Some(slot) = hot::find(sk) {
                hot::clear_slow(slot);
            }
        }
    }
    Some(bytes)
}

/// A row of another socket at `key`, which `sk` takes now: the fd number was freed and reused
/// while that socket lives on (its fd was copied first: `dup2(3, 1); close(3)`; or its release,
/// run as the closing syscall returns, has not come yet). It moves to a key of its own, fd
/// unknown, and is reported (`Moved`); its release ends it there. A row whose socket is gone
/// (its counters point elsewhere) is simply replaced. Not inlined: its frame stays out of the
/// callers' stacks.
#[inline(never)]
fn make_room(key: SocketKey, sk: u64) {
    let Some(row) = TRACKED.get_ptr(key) else {
        return;
    };
    // SAFETY: a valid map value pointer; fields read whole.
    let (old, ino) = unsafe { ((*row).sk, (*row).ino) };
    if old == sk || old == 0 {
        return;
    }
    let Some(bytes) = SK_BYTES.get_ptr_mut(old) else {
        return;
    };
    // SAFETY: a valid map value pointer; fields read whole.
    if unsafe { core::ptr::read_volatile(&raw const (*bytes).key) } != key {
        return;
    }
    let to = SocketKey {
        pid: key.pid,
        fd: unknown_fd(ino),
    };
    // Copied from map memory to map memory: the row never sits on this program's stack.
    // SAFETY: a valid map value pointer, read by the helper.
    if TRACKED.insert(to, unsafe { &*row }, 0).is_err() {
        return;
    }
    // SAFETY: a valid map value pointer.
    unsafe { set_key(old, bytes, to) };
    emit_moved(old, to, key, bytes);
}

/// Reports the row of socket `sk` now at `to` (moved from `from`) with its counts (`bytes`:
/// its `SK_BYTES` value), copied from the map straight into the ring buffer.
#[inline(always)]
fn emit_moved(sk: u64, to: SocketKey, from: SocketKey, bytes: *const SkBytes) {
    let Some(row) = TRACKED.get_ptr(to) else {
        return;
    };
    let head = Head::now(EventKind::Moved, to, current().0 as u32)
        .arg(from.pid)
        .result(from.fd as i32);
    let Some(mut draft) = Draft::new(head, row) else {
        return;
    };
    let socket = draft.socket();
    // SAFETY: the record's socket in our reserved slot; `bytes` is a valid map value pointer.
    unsafe {
        ((*socket).bytes_sent, (*socket).bytes_recv) = hot::counts(sk, &*bytes);
    }
    draft.send();
}

/// The first use of a socket without counters: one found open at start, or one accepted.
#[inline(always)]
fn first_use(sk: u64) -> Option<*mut SkBytes> {
    if let Some(bytes) = adopt(sk) {
        return Some(bytes);
    }
    // SAFETY: copied out at once.
    unsafe { ACCEPTED.get(sk) }?;
    // A kernel thread using a socket is not the process that accepted it.
    if !current_is_user() {
        return None;
    }
    // Only the one caller that removes the note tracks it (first uses may race).
    if ACCEPTED.remove(sk).is_err() {
        return SK_BYTES.get_ptr_mut(sk);
    }
    accepted(sk)
}

/// Tracks an accepted socket in the process using it, at its fd there, and reports it.
#[inline(always)]
fn accepted(sk: u64) -> Option<*mut SkBytes> {
    // Out of `--pid`: its note is gone, so it is never looked at again.
    if !pid_in_scope(current().1) {
        let _ = SK_FATE.remove(sk);
        return None;
    }
    let socket = accepted_socket(sk, current().0 as u32)?;
    let fd = fd_of_sock(sk).unwrap_or_else(|| unknown_fd(socket.ino));
    let at = key(current().1, fd);
    let bytes = track_socket(at, &socket, 0)?;
    emit(
        Head::opened(EventKind::Accept, at, &socket).arg(NO_LISTENER),
        &socket,
    );
    Some(bytes)
}

/// The record of accepted socket `sk` as it starts being tracked (or is reported unused) by
/// thread `tid` now; `None` when its peer is not known.
#[inline(always)]
pub fn accepted_socket(sk: u64, tid: u32) -> Option<TrackedSocket> {
    let (daddr, dport) = inet_peer(sk)?;
    Some(TrackedSocket {
        connect_ns: now_ns(),
        sk,
        ino: inode_of_sock(sk),
        daddr,
        dport: u16::from_be(dport),
        lport: local_port(sk),
        tid,
        state: SocketState::Established as u32,
        proto: IPPROTO_TCP,
        flags: flags::INBOUND,
        comm: comm(),
        ..TrackedSocket::default()
    })
}

/// A socket found open at start is known to user space by its inode only: at its first byte,
/// its `struct sock` is learned here and it is counted from then on. Costs the walk only while
/// user space says such sockets are pending.
#[inline(always)]
pub fn adopt(sk: u64) -> Option<*mut SkBytes> {
    if *ADOPTED_PENDING.get(0)? == 0 {
        return None;
    }
    let inode = inode_of_sock(sk);
    // SAFETY: copied out at once.
    let key = *unsafe { ADOPTED.get(inode) }?;
    // Only the one caller that removes the note adopts it (first uses may race).
    ADOPTED.remove(inode).ok()?;
    let tracked = TRACKED.get_ptr_mut(key)?;
    let files = if current().1 == key.pid {
        current_files()
    } else {
        0
    };
    let bytes = SkBytes {
        ino: inode,
        files,
        key,
        ..SkBytes::default()
    };
    SK_BYTES.insert(sk, bytes, 0).ok()?;
    let bytes = with_hot_slot(sk, key.pid, 0);
    // The row names its socket last: user space, finding it named, finds its counters and
    // their slot in place.
    // SAFETY: a valid map value pointer; an aligned u64 stored whole.
    unsafe { core::ptr::write_volatile(&raw mut (*tracked).sk, sk) };
    bump(Counter::Adopted);
    bytes
}

/// Another process moves the bytes of tracked socket `sk`. Once the process its row shows no
/// longer holds it (its fd closed, or it exited), the row moves here: to this process's fd for
/// it, with this process's name. While both hold it, the row stays (the details list every
/// holder), so a socket two processes share does not flap between them.
///
/// # Safety
/// `bytes` must be `sk`'s valid `SK_BYTES` value pointer.
#[inline(always)]
unsafe fn follow(sk: u64, bytes: *mut SkBytes, pid_tgid: u64) {
    // A kernel thread moving a socket's bytes is not a holder.
    if !current_is_user() {
        return;
    }
    // SAFETY: per the caller; fields read whole.
    let (from, files) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*bytes).key),
            core::ptr::read_volatile(&raw const (*bytes).files),
        )
    };
    let file = file_of_sock(sk);
    if from.fd & FD_UNKNOWN == 0 && holds(files, from.fd, file) {
        return;
    }
    let pid = (pid_tgid >> 32) as u32;
    let ino = unsafe { core::ptr::read_volatile(&raw const (*bytes).ino) };
    let fd = fd_of_sock(sk).unwrap_or_else(|| unknown_fd(ino));
    let to = key(pid, fd);
    let here = |at: SocketKey| {
        // SAFETY: copied out at once.
        unsafe { TRACKED.get(at) }
            .copied()
            .filter(|entry| entry.sk == sk)
    };
    let Some(mut row) = here(from) else {
        // User space moved the row (a holder found when the process it showed exited, or by
        // its periodic check), or ended it: the kernel does not know where. It stops looking:
        // the release reports the socket by identity, and user space finds the row by inode.
        // SAFETY: per the caller.
        unsafe { set_key(sk, bytes, to) };
        return;
    };
    // Only the one caller that takes the row moves it (movers may race).
    if TRACKED.remove(from).is_err() {
        return;
    }
    row.comm = comm();
    if TRACKED.insert(to, row, 0).is_err() {
        bump(Counter::TrackedFull);
        return;
    }
    // SAFETY: per the caller.
    unsafe { set_key(sk, bytes, to) };
    note_process(pid);
    emit_moved(sk, to, from, bytes);
}

/// Records that the row of socket `sk`, whose `SK_BYTES` value is `bytes`, is at `to`, in this
/// process.
///
/// # Safety
/// `bytes` must be a valid `SK_BYTES` value pointer.
#[inline(always)]
unsafe fn set_key(sk: u64, bytes: *mut SkBytes, to: SocketKey) {
    // SAFETY: per the caller; aligned fields stored whole.
    unsafe {
        core::ptr::write_volatile(&raw mut (*bytes).key, to);
        core::ptr::write_volatile(&raw mut (*bytes).files, current_files());
    }
    hot::set_pid(sk, to.pid);
}
