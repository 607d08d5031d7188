//! Syscall exits: the stashed arguments plus the return value complete the picture.

use aya_ebpf::helpers::bpf_probe_read_user;
use sockwatch_common::{
    flags, same_address, CallKind, CloseHow, EventKind, InflightCall, SocketState, EINPROGRESS,
    IPPROTO_TCP, MAX_MMSG,
};

use crate::{
    enter::inet_sockaddr,
    identity::socket_of,
    maps::{family_in_scope, pid_in_scope, ports_in_scope, NEW_SOCKETS, SK_FATE, TRACKED},
    state::{
        atomic_add, current, emit, emit_process, key, new_socket, take_inflight, track, untrack,
        Head,
    },
};

/// What a syscall's return does, by the exit column of `sockwatch_common::for_each_syscall!`
/// (used by both backends' generated exit programs): exec's return is a process event; any
/// other return completes the call its entry stashed, which must be of the row's `CallKind`.
/// A macro rather than a function taking the kind, so that every exit program inlines
/// `syscall_exit` with its own constant kind and keeps only that kind's branch, as the
/// hand-written programs did: smaller programs, fewer paths for the verifier to walk.
macro_rules! on_return {
    (Exec, $ret:expr) => {
        $crate::process::exec_exit($ret)
    };
    ($kind:ident, $ret:expr) => {
        $crate::exit::syscall_exit($ret, sockwatch_common::CallKind::$kind)
    };
}
pub(crate) use on_return;

/// `CLOSE_RANGE_CLOEXEC`: the range is only marked close-on-exec, nothing is closed.
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;
/// `sizeof(struct mmsghdr)` and the offset of its `msg_len` on 64-bit kernels.
const MMSGHDR_SIZE: u64 = 64;
const MMSGHDR_MSG_LEN: u64 = 56;

/// The one exit handler: `expected` is what the exiting syscall can have stashed.
#[inline(always)]
pub fn syscall_exit(ret: i64, expected: CallKind) {
    let (pid_tgid, pid) = current();
    let Some(call) = take_inflight(pid_tgid, expected) else {
        return;
    };
    let tid = pid_tgid as u32;
    match expected {
        CallKind::Send if ret > 0 => add_bytes(pid, call.fd, ret as u64, true),
        CallKind::Recv if ret > 0 => add_bytes(pid, call.fd, ret as u64, false),
        CallKind::SendMmsg if ret > 0 => {
            add_bytes(pid, call.fd, mmsg_bytes(call.ptr, ret as u64), true)
        }
        CallKind::RecvMmsg if ret > 0 => {
            add_bytes(pid, call.fd, mmsg_bytes(call.ptr, ret as u64), false)
        }
        CallKind::Connect => connected(&call, ret, pid, tid),
        CallKind::Accept if ret >= 0 => accepted(&call, ret as u32, pid, tid),
        CallKind::Socket if ret >= 0 => {
            let _ = NEW_SOCKETS.insert(key(pid, ret as u32), call.arg as u32, 0);
        }
        // close() frees the fd whatever it returns, except for a bad fd.
        // `ptr`, `arg`: the socket the entry saw on the fd.
        CallKind::Close if ret != -EBADF => {
            untrack(pid, call.fd, tid, CloseHow::Close, (call.ptr, call.arg))
        }
        CallKind::DupOnto if ret >= 0 => {
            untrack(pid, call.fd, tid, CloseHow::DupOnto, (call.ptr, call.arg))
        }
        CallKind::CloseRange if ret == 0 && (call.arg >> 32) & CLOSE_RANGE_CLOEXEC == 0 => {
            let last = call.arg as u32;
            emit_process(EventKind::CloseRange, pid, tid, call.fd, last);
        }
        _ => {}
    }
}

/// `EBADF`: the one `close()` failure after which the fd was not released.
const EBADF: i64 = 9;

/// Adds a byte count to a tracked socket; every thread of the process may do so at once.
#[inline(always)]
fn add_bytes(pid: u32, fd: u32, bytes: u64, sent: bool) {
    let Some(sock) = TRACKED.get_ptr_mut(key(pid, fd)) else {
        return;
    };
    // SAFETY: `sock` points into a preallocated hash map value; the counters are 8-byte
    // aligned u64 fields, updated atomically because threads race on them.
    unsafe {
        if sent {
            atomic_add(&raw mut (*sock).bytes_sent, bytes);
            // Bytes went out, so a non-blocking connect has completed. An aligned 32-bit
            // store is atomic everywhere, and BPF has no 32-bit atomic ops to use instead.
            core::ptr::write_volatile(&raw mut (*sock).state, SocketState::Established as u32);
        } else {
            atomic_add(&raw mut (*sock).bytes_recv, bytes);
        }
    }
}

/// Bytes moved by the first `count` messages of an `mmsghdr` vector (the kernel wrote each
/// message's byte count into its `msg_len`). `count` never exceeds `UIO_MAXIOV`, our bound.
#[inline(always)]
fn mmsg_bytes(vector: u64, count: u64) -> u64 {
    let mut total = 0u64;
    for i in 0..u64::from(MAX_MMSG) {
        if i >= count {
            break;
        }
        let at = vector + i * MMSGHDR_SIZE + MMSGHDR_MSG_LEN;
        // SAFETY: a checked read of user memory.
        if let Ok(len) = unsafe { bpf_probe_read_user(at as *const u32) } {
            total += u64::from(len);
        }
    }
    total
}

fn connected(call: &InflightCall, ret: i64, pid: u32, tid: u32) {
    let socket_key = key(pid, call.fd);
    // Some programs call connect() again to learn how a non-blocking connect went: it returns
    // 0 once established, EALREADY while under way, EISCONN after, or the error that failed it.
    // The same socket: its counters must not restart, and no second connect is reported (its
    // close reports a failure). (Not for entries user space adopted from /proc: those never
    // went through connect here.)
    if let Some(sock) = TRACKED.get_ptr_mut(socket_key) {
        // SAFETY: a valid map value pointer; aligned fields, each read and stored whole.
        unsafe {
            if same_address(&(*sock).daddr, &call.daddr)
                && (*sock).dport == call.dport
                && (*sock).flags & flags::PREEXISTING == 0
            {
                if ret == 0 {
                    core::ptr::write_volatile(
                        &raw mut (*sock).state,
                        SocketState::Established as u32,
                    );
                }
                return;
            }
        }
    }
    // SAFETY: copied out at once.
    let proto = unsafe { NEW_SOCKETS.get(socket_key) }.copied().unwrap_or(0);
    let state = match ret {
        0 => Some(SocketState::Established),
        r if r == -i64::from(EINPROGRESS) => Some(SocketState::Connecting),
        _ => None,
    };
    if !pid_in_scope(pid) {
        return;
    }
    // Built once: the map entry and the event's record are copies of it.
    let socket = new_socket(tid, call.fd, call.daddr, call.dport, state, proto, 0);
    if !ports_in_scope(socket.dport, socket.lport) {
        // A socket tracked before (a UDP socket connected again, to a port out of scope)
        // ends here: what it moves from now on is not its row's.
        untrack(pid, call.fd, tid, CloseHow::Close, (socket.sk, socket.ino));
        return;
    }
    if state.is_some() {
        let _ = NEW_SOCKETS.remove(socket_key);
        track(pid, call.fd, &socket);
    }
    let head = Head::opened(EventKind::Connect, socket_key, &socket).result(ret as i32);
    emit(head, &socket);
}

fn accepted(call: &InflightCall, fd: u32, pid: u32, tid: u32) {
    // The kernel has written the peer's address into the caller's buffer. No buffer: user space
    // learns the peer (and whether the socket is IPv4 at all) from /proc.
    let (daddr, dport, flags) = if call.ptr == 0 {
        ([0; 4], 0, flags::INBOUND | flags::PEER_UNKNOWN)
    } else {
        match inet_sockaddr(call.ptr) {
            Some((addr, port)) if family_in_scope(&addr) => {
                (addr, u16::from_be(port), flags::INBOUND)
            }
            // A Unix socket peer, or a family out of `-4`/`-6`: not ours.
            _ => return,
        }
    };
    if !pid_in_scope(pid) {
        // Its fate was noted at its handshake (by its ports): it is never reported.
        let _ = SK_FATE.remove(socket_of(fd).0);
        return;
    }
    let socket = new_socket(
        tid,
        fd,
        daddr,
        dport,
        Some(SocketState::Established),
        IPPROTO_TCP,
        flags,
    );
    if !ports_in_scope(socket.dport, socket.lport) {
        return;
    }
    track(pid, fd, &socket);
    let head = Head::opened(EventKind::Accept, key(pid, fd), &socket).arg(call.fd);
    emit(head, &socket);
}
