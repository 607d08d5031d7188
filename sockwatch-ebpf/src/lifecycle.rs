//! The backend-independent half of every probe: what to do at a syscall's entry and exit.
//!
//! The tracepoint and kprobe backends only extract arguments and return values and call in
//! here, so both backends reach the same numbers by construction.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
};
use sockwatch_common::{
    CallKind, Counter, EventKind, InflightCall, SocketEvent, SocketKey, SocketState, TrackedSocket,
    AF_INET, COMM_LEN, EINPROGRESS,
};

use crate::maps::{bump, EVENTS, INFLIGHT, TRACKED};

/// `EBADF`: the only `close()` failure after which the fd was not released.
const EBADF: i64 = 9;

/// The leading fields of `struct sockaddr_in`, read from user memory in one go.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrIn {
    family: u16,
    /// Network byte order.
    port: u16,
    /// Network byte order.
    addr: u32,
}

#[inline(always)]
fn current_key(fd: u32) -> (u64, SocketKey) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = SocketKey {
        pid: (pid_tgid >> 32) as u32,
        fd,
    };
    (pid_tgid, key)
}

/// Takes this thread's stashed call out of `INFLIGHT` if it is of the expected kind.
#[inline(always)]
fn take_inflight(pid_tgid: u64, kind: CallKind) -> Option<InflightCall> {
    // SAFETY: the entry belongs to this thread, which is the only writer of its key, and it is
    // copied out before being removed.
    let call = *unsafe { INFLIGHT.get(pid_tgid) }?;
    let _ = INFLIGHT.remove(pid_tgid);
    (call.kind == kind as u32).then_some(call)
}

#[inline(always)]
fn stash(pid_tgid: u64, call: InflightCall) {
    if INFLIGHT.insert(pid_tgid, call, 0).is_err() {
        bump(Counter::InflightFull);
    }
}

/// Stashes the fd of a call on a tracked socket. Untracked fds cost this one lookup only.
#[inline(always)]
fn stash_if_tracked(fd: u64, kind: CallKind) {
    let (pid_tgid, key) = current_key(fd as u32);
    if TRACKED.get_ptr(key).is_none() {
        return;
    }
    stash(
        pid_tgid,
        InflightCall {
            kind: kind as u32,
            fd: fd as u32,
            daddr: 0,
            dport: 0,
            _pad0: 0,
        },
    );
}

pub fn connect_enter(fd: u64, uservaddr: u64) {
    // SAFETY: a checked read of user memory; a bad pointer gives an error, never a fault.
    let Ok(sa) = (unsafe { bpf_probe_read_user(uservaddr as *const SockaddrIn) }) else {
        return;
    };
    if sa.family != AF_INET {
        return;
    }
    let (pid_tgid, _) = current_key(fd as u32);
    stash(
        pid_tgid,
        InflightCall {
            kind: CallKind::Connect as u32,
            fd: fd as u32,
            daddr: sa.addr,
            dport: u16::from_be(sa.port),
            _pad0: 0,
        },
    );
}

pub fn connect_exit(ret: i64) {
    let (pid_tgid, _) = current_key(0);
    let Some(call) = take_inflight(pid_tgid, CallKind::Connect) else {
        return;
    };
    let (_, key) = current_key(call.fd);
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let state = match ret {
        0 => Some(SocketState::Established),
        r if r == -(EINPROGRESS as i64) => Some(SocketState::Connecting),
        _ => None,
    };
    if let Some(state) = state {
        let tracked = TrackedSocket {
            bytes_sent: 0,
            bytes_recv: 0,
            connect_ns: now,
            daddr: call.daddr,
            dport: call.dport,
            _pad0: 0,
            tid: pid_tgid as u32,
            state: state as u32,
            comm,
        };
        // BPF_ANY: a reused fd replaces the old entry, so counters restart from zero.
        if TRACKED.insert(key, tracked, 0).is_err() {
            bump(Counter::TrackedFull);
        }
    }
    emit(SocketEvent {
        kind: EventKind::Connect as u32,
        pid: key.pid,
        tid: pid_tgid as u32,
        fd: call.fd,
        ts_ns: now,
        connect_ns: now,
        bytes_sent: 0,
        bytes_recv: 0,
        daddr: call.daddr,
        dport: call.dport,
        _pad0: 0,
        result: ret as i32,
        connect_tid: pid_tgid as u32,
        comm,
    });
}

pub fn send_enter(fd: u64) {
    stash_if_tracked(fd, CallKind::Send);
}

pub fn send_exit(ret: i64) {
    let (pid_tgid, _) = current_key(0);
    let Some(call) = take_inflight(pid_tgid, CallKind::Send) else {
        return;
    };
    if ret <= 0 {
        return;
    }
    let (_, key) = current_key(call.fd);
    let Some(sock) = TRACKED.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: `sock` points into a preallocated hash map value. Other threads of the process
    // may send on the same socket at the same time, hence atomic updates; the fields are
    // naturally aligned for their atomic types.
    unsafe {
        atomic_add(&raw mut (*sock).bytes_sent, ret as u64);
        // A successful send means the (possibly non-blocking) connect has completed. An aligned
        // 32-bit store is atomic on every architecture, and BPF has no 32-bit atomic ops.
        core::ptr::write_volatile(&raw mut (*sock).state, SocketState::Established as u32);
    }
}

pub fn close_enter(fd: u64) {
    stash_if_tracked(fd, CallKind::Close);
}

pub fn close_exit(ret: i64) {
    let (pid_tgid, _) = current_key(0);
    let Some(call) = take_inflight(pid_tgid, CallKind::Close) else {
        return;
    };
    if ret == -EBADF {
        return;
    }
    let (_, key) = current_key(call.fd);
    // SAFETY: copied out at once; the entry is removed right after.
    let Some(sock) = (unsafe { TRACKED.get(key) }).copied() else {
        return;
    };
    let _ = TRACKED.remove(key);
    emit(SocketEvent {
        kind: EventKind::Close as u32,
        pid: key.pid,
        tid: pid_tgid as u32,
        fd: call.fd,
        // SAFETY: a helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        connect_ns: sock.connect_ns,
        bytes_sent: sock.bytes_sent,
        bytes_recv: sock.bytes_recv,
        daddr: sock.daddr,
        dport: sock.dport,
        _pad0: 0,
        result: 0,
        connect_tid: sock.tid,
        comm: sock.comm,
    });
}

/// Sends one event to user space, counting it as dropped when the ring buffer is full.
#[inline(always)]
fn emit(event: SocketEvent) {
    match EVENTS.reserve::<SocketEvent>(0) {
        Some(mut slot) => {
            slot.write(event);
            slot.submit(0);
        }
        None => bump(Counter::RingbufDrops),
    }
}

/// `*counter += value`, atomically (BPF_ATOMIC BPF_ADD, "xadd").
///
/// Rust's `AtomicU64::fetch_add` is not available for the BPF targets, and the plain BPF
/// atomic add (without BPF_FETCH) is what every kernel with BPF supports, so it is spelled out.
///
/// # Safety
/// `counter` must be valid, 8-byte aligned, and point into map memory.
#[inline(always)]
unsafe fn atomic_add(counter: *mut u64, value: u64) {
    // SAFETY: guaranteed by the caller; the instruction only touches `*counter`.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({ptr} + 0) += {value}",
            ptr = in(reg) counter,
            value = in(reg) value,
            options(nostack),
        );
    }
}
