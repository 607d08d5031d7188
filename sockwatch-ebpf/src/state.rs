//! Shared building blocks: the current socket key, the in-flight stash, tracking, events.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use sockwatch_common::{
    flags::{PARTIAL, REPLACED},
    CallKind, CloseHow, Counter, EventKind, EventRecord, InflightCall, SocketEvent, SocketKey,
    SocketState, TrackedSocket, COMM_LEN,
};

use crate::{
    identity::{local_port, socket_of},
    maps::{bump, submit_flags, EVENTS, INFLIGHT, INFLIGHT_COUNT, PROCS, TRACKED, TRACKED_PROC},
};

/// `(pid_tgid, pid)` of the calling thread.
#[inline(always)]
pub fn current() -> (u64, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    (pid_tgid, (pid_tgid >> 32) as u32)
}

#[inline(always)]
pub fn key(pid: u32, fd: u32) -> SocketKey {
    SocketKey { pid, fd }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

#[inline(always)]
pub fn is_tracked(pid: u32, fd: u32) -> bool {
    TRACKED.get_ptr(key(pid, fd)).is_some()
}

#[inline(always)]
pub fn has_tracked_sockets(pid: u32) -> bool {
    PROCS.get_ptr(pid).is_some()
}

/// Marks a tracked socket's counts partial: bytes may now move where this backend cannot see
/// them (io_uring, splice, a copied fd). Costs one lookup on untracked fds.
#[inline(always)]
pub fn mark_partial(pid: u32, fd: u32) {
    if let Some(sock) = TRACKED.get_ptr_mut(key(pid, fd)) {
        // SAFETY: a valid map value pointer.
        unsafe { set_flag(sock, PARTIAL) };
    }
}

/// # Safety
/// `sock` must be a valid `TRACKED` value pointer. Flags are only ever set, so a lost race
/// with another setter loses nothing that matters.
#[inline(always)]
unsafe fn set_flag(sock: *mut TrackedSocket, flag: u32) {
    // SAFETY: an aligned u32 read and stored whole, per the caller's guarantee.
    unsafe {
        let flags = core::ptr::read_volatile(&raw const (*sock).flags);
        core::ptr::write_volatile(&raw mut (*sock).flags, flags | flag);
    }
}

/// Remembers this thread's call until its exit.
#[inline(always)]
pub fn stash(pid_tgid: u64, call: InflightCall) {
    // Counted before the insert, so the count never falls below the map's content.
    // SAFETY: an atomic add on our own 8-byte aligned global.
    unsafe { atomic_add(&raw mut INFLIGHT_COUNT, 1) };
    if INFLIGHT.insert(pid_tgid, call, 0).is_err() {
        bump(Counter::InflightFull);
        // SAFETY: as above (adding -1).
        unsafe { atomic_add(&raw mut INFLIGHT_COUNT, u64::MAX) };
    }
}

/// A stash of `kind` on `fd` with `ptr` and `arg`.
#[inline(always)]
pub fn call(kind: CallKind, fd: u32, ptr: u64, arg: u64) -> InflightCall {
    InflightCall {
        kind: kind as u32,
        fd,
        daddr: 0,
        dport: 0,
        _pad0: 0,
        ptr,
        arg,
    }
}

/// Takes this thread's stashed call out of `INFLIGHT`, if it is of the kind this exit expects
/// (a stale stash of another kind is dropped, never misread).
#[inline(always)]
pub fn take_inflight(pid_tgid: u64, expected: CallKind) -> Option<InflightCall> {
    // Nothing stashed anywhere: the common case of a call on an untracked fd costs no lookup.
    // SAFETY: a plain read of our own global; a stale value only costs a lookup.
    if unsafe { core::ptr::read_volatile(&raw const INFLIGHT_COUNT) } == 0 {
        return None;
    }
    // SAFETY: the entry belongs to this thread, the only writer of its key; it is copied out
    // before being removed.
    let call = *unsafe { INFLIGHT.get(pid_tgid) }?;
    if INFLIGHT.remove(pid_tgid).is_ok() {
        // SAFETY: an atomic add of -1 on our own global.
        unsafe { atomic_add(&raw mut INFLIGHT_COUNT, u64::MAX) };
    }
    (call.kind == expected as u32).then_some(call)
}

/// Starts tracking `(pid, fd)`. BPF_ANY: a reused fd replaces the old entry, so counters
/// restart from zero.
#[inline(always)]
pub fn track(pid: u32, fd: u32, socket: &TrackedSocket) {
    // The number's previous socket is still here: its close freed the number, another thread
    // got it, and that close's exit has not run yet. It ends now, with its counts, rather than
    // be overwritten (its close's exit then finds this entry, not its own).
    // SAFETY: copied out at once.
    if let Some(old) = unsafe { TRACKED.get(key(pid, fd)) }.copied() {
        if old.ino != 0 && socket.ino != 0 && old.ino != socket.ino {
            end_entry(key(pid, fd), old, old.tid, CloseHow::Close);
        }
    }
    if TRACKED.insert(key(pid, fd), socket, 0).is_err() {
        bump(Counter::TrackedFull);
        return;
    }
    note_process(pid);
}

/// Lists `pid` among the processes with tracked sockets: only theirs have their exit, exec and
/// close_range reported (and, on the socket backend, their forks noted).
#[inline(always)]
pub fn note_process(pid: u32) {
    if PROCS.get_ptr(pid).is_none() {
        let _ = PROCS.insert(pid, TRACKED_PROC, 0);
    }
}

/// The record of the socket on `fd` that starts being tracked now (connect, accept) by thread
/// `tid`: no bytes counted yet. `state` is `None` for a connect that failed (reported, never
/// tracked).
#[inline(always)]
pub fn new_socket(
    tid: u32,
    fd: u32,
    daddr: u32,
    dport: u16,
    state: Option<SocketState>,
    proto: u32,
    flags: u32,
) -> TrackedSocket {
    let (sk, ino) = socket_of(fd);
    TrackedSocket {
        bytes_sent: 0,
        bytes_recv: 0,
        connect_ns: now_ns(),
        sk,
        ino,
        daddr,
        dport,
        lport: if sk != 0 { local_port(sk) } else { 0 },
        tid,
        state: match state {
            Some(state) => state as u32,
            None => 0,
        },
        proto,
        flags,
        comm: comm(),
    }
}

/// The event of a socket that starts being tracked (connect, accept): made by the thread that
/// opened it, at the moment its record was made.
#[inline(always)]
pub fn opened(kind: EventKind, key: SocketKey, socket: TrackedSocket) -> SocketEvent {
    SocketEvent::new(kind, key, socket.tid, socket.connect_ns, socket)
}

/// Stops tracking `(pid, fd)` and reports its final record, counters included.
#[inline(always)]
pub fn untrack(pid: u32, fd: u32, tid: u32, how: CloseHow, (sk, ino): (u64, u64)) {
    let key = key(pid, fd);
    // SAFETY: copied out at once; the entry is removed right after.
    let Some(socket) = (unsafe { TRACKED.get(key) }).copied() else {
        return;
    };
    // Another thread got the freed number and a socket tracked there before this exit: that
    // entry is not this close's. This socket ends with what is left of it: its identity and the
    // socket layer's counts (user space has the rest).
    if ino != 0 && socket.ino != 0 && socket.ino != ino {
        end_replaced(key, tid, how, sk, ino);
        return;
    }
    // Removed before the event is sent: user space never sees a closed socket still in the map.
    let _ = TRACKED.remove(key);
    end_entry(key, socket, tid, how);
}

/// Reports the end of `socket`, whose `TRACKED` entry at `key` was just removed (or is about to
/// be replaced), with its final counts.
#[inline(always)]
fn end_entry(key: SocketKey, socket: TrackedSocket, tid: u32, how: CloseHow) {
    emit(&SocketEvent {
        arg: how as u32,
        ..SocketEvent::new(EventKind::Close, key, tid, now_ns(), socket)
    });
}

/// The close of a socket whose `TRACKED` entry a newer socket on the same fd replaced.
#[inline(always)]
fn end_replaced(key: SocketKey, tid: u32, how: CloseHow, sk: u64, ino: u64) {
    let socket = TrackedSocket {
        sk,
        ino,
        flags: REPLACED | PARTIAL,
        ..TrackedSocket::default()
    };
    emit(&SocketEvent {
        arg: how as u32,
        ..SocketEvent::new(EventKind::Close, key, tid, now_ns(), socket)
    });
}

/// An event about a whole process (exit, exec, close_range): no socket, only the caller's comm.
#[inline(always)]
pub fn process_event(kind: EventKind, pid: u32, tid: u32, first_fd: u32, arg: u32) -> SocketEvent {
    let socket = TrackedSocket {
        comm: comm(),
        ..TrackedSocket::default()
    };
    SocketEvent {
        arg,
        ..SocketEvent::new(kind, key(pid, first_fd), tid, now_ns(), socket)
    }
}

/// Sends one event to user space, counting it as lost when the ring buffer is full.
#[inline(always)]
pub fn emit(event: &SocketEvent) {
    match EVENTS.reserve::<EventRecord>(0) {
        Some(mut slot) => {
            let record = slot.as_mut_ptr();
            // SAFETY: `record` is the reserved slot, ours until submitted; every field is
            // written before it is.
            unsafe {
                (*record).event = *event;
                crate::fate::annotate(event, &raw mut (*record).fate);
            }
            slot.submit(submit_flags());
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
pub unsafe fn atomic_add(counter: *mut u64, value: u64) {
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
