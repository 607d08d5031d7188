//! Shared building blocks: the current socket key, the in-flight stash, tracking, events.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    maps::ring_buf::RingBufEntry,
};
use sockwatch_common::{
    flags::{PARTIAL, REPLACED},
    CallKind, CloseHow, Counter, EventKind, EventRecord, InflightCall, SocketKey, SocketState,
    TrackedSocket, COMM_LEN,
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
        daddr: [0; 4],
        dport: 0,
        _pad0: 0,
        _pad1: 0,
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
    let at = key(pid, fd);
    // The number's previous socket is still here: its close freed the number, another thread
    // got it, and that close's exit has not run yet. It ends now, with its counts, rather than
    // be overwritten (its close's exit then finds this entry, not its own).
    if let Some(old) = TRACKED.get_ptr(at) {
        // SAFETY: a valid map value pointer; fields read whole.
        let (ino, tid) = unsafe { ((*old).ino, (*old).tid) };
        if ino != 0 && socket.ino != 0 && ino != socket.ino {
            // Copied into the ring before the insert replaces it.
            emit(
                Head::now(EventKind::Close, at, tid).arg(CloseHow::Close as u32),
                old,
            );
        }
    }
    if TRACKED.insert(at, socket, 0).is_err() {
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
    daddr: [u32; 4],
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
        _pad0: 0,
        comm: comm(),
    }
}

/// Stops tracking `(pid, fd)` and reports its final record, counters included.
#[inline(always)]
pub fn untrack(pid: u32, fd: u32, tid: u32, how: CloseHow, (sk, ino): (u64, u64)) {
    let at = key(pid, fd);
    let Some(row) = TRACKED.get_ptr(at) else {
        return;
    };
    let head = Head::now(EventKind::Close, at, tid).arg(how as u32);
    // Another thread got the freed number and a socket tracked there before this exit: that
    // entry is not this close's. This socket ends with what is left of it: its identity and the
    // socket layer's counts (user space has the rest).
    // SAFETY: a valid map value pointer; a field read whole.
    let row_ino = unsafe { (*row).ino };
    if ino != 0 && row_ino != 0 && row_ino != ino {
        let socket = TrackedSocket {
            sk,
            ino,
            flags: REPLACED | PARTIAL,
            ..TrackedSocket::default()
        };
        emit(head, &socket);
        return;
    }
    if let Some(draft) = Draft::removing(head, at, row) {
        draft.send();
    }
}

/// Reports an event about a whole process (exit, exec, close_range): no socket, only the
/// caller's comm.
#[inline(always)]
pub fn emit_process(kind: EventKind, pid: u32, tid: u32, first_fd: u32, arg: u32) {
    let socket = TrackedSocket {
        comm: comm(),
        ..TrackedSocket::default()
    };
    emit(Head::now(kind, key(pid, first_fd), tid).arg(arg), &socket);
}

/// What an event says besides its socket's record (see `SocketEvent`): passed by value, so
/// that an event is never built whole on a program's stack. A program and the subprograms it
/// calls share 512 bytes of stack, and an event is a quarter of that.
#[derive(Clone, Copy)]
pub struct Head {
    kind: EventKind,
    key: SocketKey,
    tid: u32,
    ts_ns: u64,
    result: i32,
    arg: u32,
}

impl Head {
    /// An event of `kind` about the socket at `key`, made by thread `tid` now.
    #[inline(always)]
    pub fn now(kind: EventKind, key: SocketKey, tid: u32) -> Self {
        Self::at(kind, key, tid, now_ns())
    }

    #[inline(always)]
    pub fn at(kind: EventKind, key: SocketKey, tid: u32, ts_ns: u64) -> Self {
        Self {
            kind,
            key,
            tid,
            ts_ns,
            result: 0,
            arg: 0,
        }
    }

    /// The opening (connect, accept) of `socket`, at `key`: made by the thread that opened it,
    /// when its record was made.
    #[inline(always)]
    pub fn opened(kind: EventKind, key: SocketKey, socket: &TrackedSocket) -> Self {
        Self::at(kind, key, socket.tid, socket.connect_ns)
    }

    /// With `SocketEvent::result` (a connect's return value; a move's old fd).
    #[inline(always)]
    pub fn result(self, result: i32) -> Self {
        Self { result, ..self }
    }

    /// With `SocketEvent::arg`.
    #[inline(always)]
    pub fn arg(self, arg: u32) -> Self {
        Self { arg, ..self }
    }
}

/// An event written into its ring buffer record, not yet visible to user space: a caller may
/// still amend the socket's record in place ([`Draft::socket`]) or finish what must happen
/// before user space reads it, then [`Draft::send`]s it.
pub struct Draft(RingBufEntry<EventRecord>);

impl Draft {
    /// Reserves a record and writes `head`, the socket's record copied from `socket` (a map
    /// value, or a local), and its TCP fate. `None` (counted as lost) when the ring is full.
    #[inline(always)]
    pub fn new(head: Head, socket: *const TrackedSocket) -> Option<Self> {
        let Some(mut slot) = EVENTS.reserve::<EventRecord>(0) else {
            bump(Counter::RingbufDrops);
            return None;
        };
        let record = slot.as_mut_ptr();
        // SAFETY: `record` is the reserved slot, ours until submitted; every field is written
        // before it is; `socket` is valid for reads (the caller's word), and copied straight
        // from where it is into the ring.
        unsafe {
            let event = &raw mut (*record).event;
            core::ptr::copy_nonoverlapping(socket, &raw mut (*event).socket, 1);
            (*event).kind = head.kind as u32;
            (*event).tid = head.tid;
            (*event).key = head.key;
            (*event).ts_ns = head.ts_ns;
            (*event).result = head.result;
            (*event).arg = head.arg;
            let sk = (*event).socket.sk;
            crate::fate::annotate(head.kind, head.result, sk, &raw mut (*record).fate);
        }
        Some(Self(slot))
    }

    /// The end of the row at `at` (`row`: its `TRACKED` value): the record copied into the
    /// ring, then the row removed, so that user space never sees a closed socket still in the
    /// map.
    #[inline(always)]
    pub fn removing(head: Head, at: SocketKey, row: *const TrackedSocket) -> Option<Self> {
        let draft = Self::new(head, row);
        let _ = TRACKED.remove(at);
        draft
    }

    /// The socket's record in the ring, to amend before sending.
    #[inline(always)]
    pub fn socket(&mut self) -> *mut TrackedSocket {
        // SAFETY: a field of our reserved record.
        unsafe { &raw mut (*self.0.as_mut_ptr()).event.socket }
    }

    /// Hands the record to user space.
    #[inline(always)]
    pub fn send(self) {
        self.0.submit(submit_flags());
    }
}

/// Sends one event to user space (see [`Draft::new`]), counting it as lost when the ring
/// buffer is full.
#[inline(always)]
pub fn emit(head: Head, socket: *const TrackedSocket) {
    if let Some(draft) = Draft::new(head, socket) {
        draft.send();
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
