//! Every map and global the programs use. Names and value types come from `sockwatch-common`.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sockwatch_common::{
    directions, families, is_ipv4, scope, Counter, HotCounts, InflightCall, SkBytes, SocketKey,
    TcpFate, TrackedSocket, COUNTER_COUNT,
};

/// Default sizes; user space overrides them at load time from its flags.
const TRACKED_DEFAULT: u32 = 65_536;
const INFLIGHT_SIZE: u32 = 16_384;
const NEW_SOCKETS_SIZE: u32 = 16_384;
const EVENTS_DEFAULT_BYTES: u32 = 1 << 22;
const ADOPTED_SIZE: u32 = 16_384;

#[map(name = "TRACKED")]
pub static TRACKED: HashMap<SocketKey, TrackedSocket> =
    HashMap::with_max_entries(TRACKED_DEFAULT, 0);

/// A plain (preallocated) hash: cheaper per update than an LRU one, and every syscall exit
/// fires, so entries do not leak; a thread's next call overwrites whatever it left.
#[map(name = "INFLIGHT")]
pub static INFLIGHT: HashMap<u64, InflightCall> = HashMap::with_max_entries(INFLIGHT_SIZE, 0);

/// How many stashes may be in `INFLIGHT`: never less than the true number (it may drift
/// above it when a stash overwrites another). While it is 0, exits skip the lookup.
#[unsafe(no_mangle)]
pub static mut INFLIGHT_COUNT: u64 = 0;

/// LRU: sockets that are never connected (listeners, unconnected UDP) age out.
#[map(name = "NEW_SOCKETS")]
pub static NEW_SOCKETS: LruHashMap<SocketKey, u32> =
    LruHashMap::with_max_entries(NEW_SOCKETS_SIZE, 0);

/// Processes with tracked sockets: [`TRACKED_PROC`], and [`FORKED`] once they fork (the socket
/// backend).
#[map(name = "PROCS")]
pub static PROCS: HashMap<u32, u32> = HashMap::with_max_entries(TRACKED_DEFAULT, 0);

/// `PROCS` value bits.
pub const TRACKED_PROC: u32 = 1;
pub const FORKED: u32 = 2;

/// The socket backend's counters, by `struct sock *`: an entry exists from the connect or
/// first use that tracks the socket to the kernel's release of it, so the socket layer counts
/// only tracked sockets.
#[map(name = "SK_BYTES")]
pub static SK_BYTES: HashMap<u64, SkBytes> = HashMap::with_max_entries(TRACKED_DEFAULT, 0);

/// The socket backend's hot counters (see `hot`), in pairs; user space sizes it to the sockets
/// (two slots where the syscall backends load it unused). Mmapable: user space reads every slot
/// each refresh from memory, not with a syscall per socket.
#[map(name = "SK_HOT")]
pub static SK_HOT: Array<HotCounts> = Array::with_max_entries(2, BPF_F_MMAPABLE);

/// One generation per pair of `SK_HOT` slots, raised when a socket of that pair counts in
/// `SK_BYTES` (see `sockwatch_common::maps::SK_SPILL`); user space sizes it to half `SK_HOT`.
#[map(name = "SK_SPILL")]
pub static SK_SPILL: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Sockets found open at start, by inode, until the socket layer learns their `struct sock`.
#[map(name = "ADOPTED")]
pub static ADOPTED: HashMap<u64, SocketKey> = HashMap::with_max_entries(ADOPTED_SIZE, 0);

/// Accepted sockets not used yet (the socket backend), with when their handshake ended (for
/// `bpftool map dump`). LRU: one never accepted (its listener closed first) ages out.
#[map(name = "ACCEPTED")]
pub static ACCEPTED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(NEW_SOCKETS_SIZE, 0);

/// Threads of processes with tracked sockets that exec'd (the socket backend), with when: the
/// socket releases that follow at once are the exec's close-on-exec fds.
#[map(name = "EXECS")]
pub static EXECS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(1024, 0);

/// How many `ADOPTED` entries may be unresolved (set by user space).
#[map(name = "ADOPTED_PENDING")]
pub static ADOPTED_PENDING: Array<u32> = Array::with_max_entries(1, 0);

/// Set by user space at load time: 1 when counting happens at the socket layer (`SK_BYTES`).
#[unsafe(no_mangle)]
pub static COUNT_BY_SOCKET: u32 = 0;

/// Whether this load counts by socket (read volatile: user space sets it at load time).
#[inline(always)]
pub fn count_by_socket() -> bool {
    // SAFETY: a volatile read of our own read-only global.
    unsafe { core::ptr::read_volatile(&raw const COUNT_BY_SOCKET) != 0 }
}

/// How many fd-table entries one step of an fd scan reads (see `identity::fd_of_sock`).
pub const FD_CHUNK: usize = 64;

/// A scan's scratch buffer: one step's fd-table entries.
#[map(name = "FD_SCAN")]
pub static FD_SCAN: PerCpuArray<[u64; FD_CHUNK]> = PerCpuArray::with_max_entries(1, 0);

/// How each TCP socket's connect went and who ended it, by `struct sock *` (see `fate`).
/// LRU: every TCP socket that changes state has an entry, tracked or not, and the ones never
/// reported age out.
#[map(name = "SK_FATE")]
pub static SK_FATE: LruHashMap<u64, TcpFate> = LruHashMap::with_max_entries(TRACKED_DEFAULT, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_DEFAULT_BYTES, 0);

/// `bpf_ringbuf_query` and `bpf_ringbuf_submit` flags (`include/uapi/linux/bpf.h`).
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// How to submit a record to `EVENTS`: without waking user space, which drains the ring on a
/// short timer of its own (so a traced program does not pay a wake-up, an IPI to the reader's
/// core, per record), unless a sixteenth of the ring waits already: then at once, so that a
/// storm cannot fill it between two drains.
#[inline(always)]
pub fn submit_flags() -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    if waiting >= EVENTS.query(BPF_RB_RING_SIZE) / 16 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Which directions to track; set by user space at load time (`--direction`).
#[unsafe(no_mangle)]
static DIRECTIONS: u32 = directions::OUTBOUND | directions::INBOUND;

#[inline(always)]
pub fn tracking(direction: u32) -> bool {
    // SAFETY: a volatile read of our own read-only global, so the value user space set at load
    // time is used rather than the compile-time constant.
    unsafe { core::ptr::read_volatile(&DIRECTIONS) & direction != 0 }
}

/// Which address families to track; set by user space at load time (`-4`, `-6`).
#[unsafe(no_mangle)]
static FAMILIES: u32 = families::BOTH;

/// Whether a socket whose remote end is `addr` (as `TrackedSocket::daddr`) is of a family
/// tracked: an IPv4-mapped peer is IPv4, as it is shown.
#[inline(always)]
pub fn family_in_scope(addr: &[u32; 4]) -> bool {
    let family = if is_ipv4(addr) {
        families::IPV4
    } else {
        families::IPV6
    };
    // SAFETY: as in `tracking`.
    unsafe { core::ptr::read_volatile(&FAMILIES) & family != 0 }
}

/// `--pid` and `--port`, when given (`SCOPE` says which): a socket of another process or port is
/// not tracked where it starts (its connect, its accept or first use), and costs no record or
/// count (see `ports_in_scope` for one whose local port is not bound yet).
#[map(name = "SCOPE_PIDS")]
pub static SCOPE_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(scope::MAX_VALUES, 0);

#[map(name = "SCOPE_PORTS")]
pub static SCOPE_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(scope::MAX_VALUES, 0);

/// Which of `SCOPE_PIDS` and `SCOPE_PORTS` apply; set by user space at load time.
#[unsafe(no_mangle)]
static SCOPE: u32 = 0;

/// Whether a socket of process `pid` is within `--pid`.
#[inline(always)]
pub fn pid_in_scope(pid: u32) -> bool {
    // SAFETY: a volatile read of our own read-only global (as `tracking`).
    let scope = unsafe { core::ptr::read_volatile(&SCOPE) };
    // SAFETY: only tested for presence.
    scope & scope::PIDS == 0 || unsafe { SCOPE_PIDS.get(&pid) }.is_some()
}

/// Whether a socket with remote port `dport` and local port `lport` is within `--port`: either
/// is one of its ports. A local port not bound yet (0) can only become one of them if one lies
/// in the ephemeral range (`UNBOUND_MAY_MATCH`): then the socket is kept until it is bound.
#[inline(always)]
pub fn ports_in_scope(dport: u16, lport: u16) -> bool {
    // SAFETY: as in `pid_in_scope`.
    let scope = unsafe { core::ptr::read_volatile(&SCOPE) };
    // SAFETY: only tested for presence.
    let listed = |port: u16| unsafe { SCOPE_PORTS.get(&port) }.is_some();
    if scope & scope::PORTS == 0 || listed(dport) {
        return true;
    }
    match lport {
        0 => scope & scope::UNBOUND_MAY_MATCH != 0,
        port => listed(port),
    }
}

/// Adds one to a per-CPU counter. Per-CPU, so no atomics are needed.
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it is valid
        // and only this CPU (with preemption disabled while we run) touches it.
        unsafe { *slot += 1 };
    }
}
