//! Loading the eBPF object and attaching one of the two probe backends; the kernel's maps as
//! user space reads them.

use std::fmt;

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, KProbe, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use sockwatch_common::{
    globals, maps, scope, Counter, KernelOffsets, SkBytes, SocketKey, TrackedSocket, SYSCALLS,
};

use super::procfs;
use super::{
    btf, bulk,
    by_socket::{counts_of, Count, SocketCounters},
    decode::tracked_socket,
    ring::EventRing,
    support::{
        self, kernel_error, kprobes_available, socket_tracepoints_available,
        syscall_tracepoints_available, ProbeError, SyscallSymbols,
    },
};
use crate::socket::{Socket, SocketId};

/// The kernel programs, built by build.rs from `sockwatch-ebpf` and embedded in the binary.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockwatch.bpf.o"));

/// Which kernel mechanism carries the entry/exit probes (`--probe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeChoice {
    /// The socket layer where the kernel has it (≥ 6.3), else syscall tracepoints, else kprobes.
    Auto,
    /// Bytes counted at the socket layer (`sock:sock_send_length`/`sock_recv_length`) by the
    /// kernel's socket, whoever moves them; lifecycle from cgroup socket hooks and TCP state
    /// changes. No syscall is hooked.
    Socket,
    /// `syscalls:sys_enter_*` / `sys_exit_*` tracepoints.
    Tracepoint,
    /// kprobe + kretprobe on the syscall entry symbols (`__x64_sys_*`).
    Kprobe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Socket,
    Tracepoint,
    Kprobe,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Socket => "socket",
            Self::Tracepoint => "tracepoint",
            Self::Kprobe => "kprobe",
        })
    }
}

/// How the kernel side is set up: map sizes and what to track.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub max_sockets: u32,
    pub ring_bytes: u32,
    /// A `sockwatch_common::directions` mask.
    pub directions: u32,
    /// A `sockwatch_common::families` mask (`-4`, `-6`).
    pub families: u32,
    /// Entries a batched map read asks for per call (`bulk::BATCH`; tests make it small).
    pub read_batch: u32,
    /// `SK_HOT`'s size (even), if not [`hot_slots_for`] `max_sockets` (tests).
    pub hot_slots: Option<u32>,
    /// `--pid` and `--port`: the kernel tracks only the sockets within them.
    pub scope: KernelScope,
}

/// The processes and ports the kernel tracks sockets of (each list, when not empty): a socket
/// by its remote port or its local one; one whose local port is not bound yet (a connect's,
/// before the kernel picks one) by its remote port, unless a port listed is one the kernel
/// may pick (then it is decided once bound).
#[derive(Clone, Debug, Default)]
pub struct KernelScope {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
}

impl KernelScope {
    /// The `SCOPE` global: which lists apply.
    fn mask(&self) -> u32 {
        let given = |values: usize, bit: u32| if values > 0 { bit } else { 0 };
        let (low, high) = ephemeral_ports().unwrap_or((0, u16::MAX));
        let pickable = self.ports.iter().any(|port| (low..=high).contains(port));
        given(self.pids.len(), scope::PIDS)
            | given(self.ports.len(), scope::PORTS)
            | if pickable {
                scope::UNBOUND_MAY_MATCH
            } else {
                0
            }
    }

    /// Fills `SCOPE_PIDS` and `SCOPE_PORTS`, before any program runs (with `SCOPE` set and
    /// a list still empty, nothing would be tracked).
    fn fill(&self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        fill_set(ebpf, maps::SCOPE_PIDS, &self.pids)?;
        fill_set(ebpf, maps::SCOPE_PORTS, &self.ports)
    }
}

/// Puts each of `values` in the hash map `name` used as a set (values 1); nothing if none.
fn fill_set<K: aya::Pod>(ebpf: &mut Ebpf, name: &str, values: &[K]) -> Result<(), ProbeError> {
    if values.is_empty() {
        return Ok(());
    }
    let failed = |e: aya::maps::MapError| kernel_error(format!("map {name}"), e);
    let map = ebpf.map_mut(name).ok_or_else(|| missing(name))?;
    let mut set: HashMap<_, K, u8> = HashMap::try_from(map).map_err(failed)?;
    for value in values {
        set.insert(value, 1, 0).map_err(failed)?;
    }
    Ok(())
}

/// The attached programs. Dropping this detaches them.
pub struct Probes {
    _ebpf: Ebpf,
    pub backend: Backend,
    /// Whether the programs can name each socket's kernel identity (inode), and why not.
    pub identity: Result<(), btf::BtfError>,
    /// Whether the programs see how connects go and who ends connections, and why not.
    pub fate: Result<(), String>,
}

impl Probes {
    /// Detaches the programs without making the caller wait.
    ///
    /// Each tracepoint or kprobe detach waits for an RCU grace period in the kernel, which adds
    /// up to seconds for our ~40 programs: quitting would hang that long. A forked child keeps
    /// a copy of every fd and closes them after we are gone, so the detach happens in the
    /// background and the shell gets its prompt back at once.
    pub fn release(self) {
        // The child waits for our exit through this pipe: its read sees EOF once the write end,
        // held only by us, is closed by our exit. Only then are its fds the last references.
        let mut pipe = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array we own.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            drop(self);
            return;
        }
        // SAFETY: fork in a process that may have other threads: the child only makes
        // async-signal-safe calls (close, read, close_range, _exit) before it exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: plain fd syscalls on fds this process owns, then an exit without running
            // destructors.
            unsafe {
                // Our stdio must not keep a reader of our output waiting.
                for fd in [0, 1, 2, pipe[1]] {
                    libc::close(fd);
                }
                let mut byte = 0u8;
                while libc::read(pipe[0], (&raw mut byte).cast(), 1) < 0 {}
                if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
                    for fd in 0..65_536 {
                        libc::close(fd);
                    }
                }
                libc::_exit(0);
            }
        }
        // SAFETY: closing the read end we do not use.
        unsafe { libc::close(pipe[0]) };
        // In the parent (or if fork failed), dropping closes our copies: cheap while the child
        // holds the programs, the full detach otherwise.
        drop(self);
    }
}

/// Counters the kernel keeps about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Records the ring buffer had no room for: lost.
    pub ringbuf_drops: u64,
    /// Connects not tracked because the map was full.
    pub tracked_full: u64,
    /// Syscalls whose arguments could not be stashed from entry to exit.
    pub inflight_full: u64,
    /// Sockets found at start whose kernel socket the socket backend learned.
    pub adopted: u64,
}

/// What [`KernelTables::retrack`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retrack {
    /// Tracked under the new holder's fd from now on.
    Moved,
    /// Tracked under the new holder's fd, which closed it at once: its close record follows.
    ClosedThere,
    /// The holder does not hold it (any more): nothing changed.
    NotHeld,
}

/// The socket backend's counters by kernel socket (`struct sock *`).
pub type SkCounts = std::collections::HashMap<u64, SkBytes>;

/// The maps user space reads besides the ring buffer.
pub struct KernelTables {
    /// The kernel's id of the `TRACKED` map (for `bpftool map dump id N`).
    pub tracked_map_id: u32,
    tracked: HashMap<MapData, SocketKey, TrackedSocket>,
    procs: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    max_sockets: u32,
    read_batch: u32,
    /// The socket backend's counters, by kernel socket; `None` for the syscall backends.
    by_socket: Option<SocketCounters>,
}

impl KernelTables {
    /// Every socket the kernel tracks, with its counters as of now; and the socket backend's
    /// counters by kernel socket (empty for the syscall backends).
    ///
    /// Each map is read in bulk (`bulk`): a few syscalls for the whole map, not two an
    /// entry. Bounded by the map's size.
    pub fn snapshot(&mut self) -> (Vec<Socket>, SkCounts) {
        let (limit, batch) = (self.max_sockets as usize, self.read_batch);
        // Before the maps: whatever the kernel learns or counts after is read anew later.
        let adoptions = self.counters().adopted;
        let entries = bulk::hash_entries(&self.tracked, limit, batch).into_iter();
        let Some(by_socket) = &mut self.by_socket else {
            let sockets = entries
                .map(|(key, value)| tracked_socket(key, &value))
                .collect();
            return (sockets, SkCounts::new());
        };
        let generations = by_socket.generations();
        // One pass over each map rather than a lookup per socket.
        let raw: SkCounts = bulk::hash_entries(&by_socket.bytes, limit, batch)
            .into_iter()
            .collect();
        by_socket.relocate_all(adoptions);
        let mut sockets = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let bytes = raw.get(&value.sk);
            let id = SocketId::new(key, value.connect_ns);
            by_socket.locate(id, &value, bytes, &generations);
            let bytes = bytes.map(|bytes| by_socket.with_hot_counts(value.sk, *bytes));
            sockets.push(with_bytes(key, value, bytes.as_ref()));
        }
        by_socket.located_all();
        let bytes = raw
            .into_iter()
            .map(|(sk, bytes)| (sk, by_socket.with_hot_counts(sk, bytes)))
            .collect();
        (sockets, bytes)
    }

    /// The counters that moved since the last refresh, of the rows watched and of `fresh`
    /// (rows new to the model since), without reading the maps whole (see `by_socket`; `open`:
    /// how many rows the model has); `None` when only a full read ([`Self::snapshot`]) can
    /// tell: the syscall backends count in `TRACKED` itself, and a refresh with many rows to
    /// locate is cheaper as one (see [`super::by_socket::BUCKETS_PER_LOOKUP`]).
    pub fn read_counts(&mut self, fresh: &[SocketId], open: usize) -> Option<Vec<Count>> {
        let adoptions = self.counters().adopted;
        let by_socket = self.by_socket.as_mut()?;
        by_socket.read(&self.tracked, fresh, open, adoptions)
    }

    /// One tracked socket, if the kernel still has it.
    pub fn get(&self, key: SocketKey) -> Option<Socket> {
        self.entry(key).map(|(_, socket)| socket)
    }

    /// The map value of `key`, and the socket it makes with its counters.
    fn entry(&self, key: SocketKey) -> Option<(TrackedSocket, Socket)> {
        let value = self.tracked.get(&key, 0).ok()?;
        let bytes = self.by_socket.as_ref().and_then(|by_socket| {
            let bytes = by_socket.bytes.get(&value.sk, 0).ok()?;
            Some(by_socket.with_hot_counts(value.sk, bytes))
        });
        Some((value, with_bytes(key, value, bytes.as_ref())))
    }

    /// Stops tracking a socket user space found gone; returns its final counts.
    ///
    /// Only for sockets whose fd no longer exists (exit, exec, close_range, reconciliation) and
    /// that no other process holds (the tracker hands those on first): nothing can add to
    /// their counters any more, so reading then deleting loses nothing.
    pub fn take(&mut self, key: SocketKey) -> Option<Socket> {
        let (value, entry) = self.entry(key)?;
        self.tracked.remove(&key).ok()?;
        if let Some(by_socket) = &mut self.by_socket {
            // Only its own counters: not those of a newer socket at the same address.
            let own = |bytes: SkBytes| counts_of(&value, &bytes);
            // Read again now that the row is gone (not `entry`'s copy): a newer socket may
            // have taken the address since.
            let bytes = (value.sk != 0).then(|| by_socket.bytes.get(&value.sk, 0).ok());
            if let Some(bytes) = bytes.flatten().filter(|bytes| own(*bytes)) {
                if by_socket.bytes.remove(&value.sk).is_ok() {
                    by_socket.free_hot_slot(value.sk, &bytes);
                }
            }
            if value.ino != 0 {
                let _ = by_socket.adopted.remove(&value.ino);
            }
        }
        Some(entry)
    }

    /// Why the socket backend's hot counters are read slot by slot (a syscall per socket and
    /// refresh) rather than from memory; `None` when they are not.
    pub fn hot_counters_unmapped(&self) -> Option<&str> {
        let by_socket = self.by_socket.as_ref()?;
        by_socket.hot_mapped.as_ref().err().map(String::as_str)
    }

    /// Whether this backend counts by kernel socket (the socket backend).
    pub fn counts_by_socket(&self) -> bool {
        self.by_socket.is_some()
    }

    /// Moves the tracking of a socket from `from` (an fd gone with an exit, exec or
    /// close_range) to `to`, another process's fd holding the same socket: its counters stay
    /// (they are the kernel socket's), and the kernel reports `to`'s close, exit and exec from
    /// now on. Never replaces an entry the kernel made (BPF_NOEXIST).
    pub fn retrack(&mut self, from: SocketKey, to: SocketKey) -> Retrack {
        const BPF_NOEXIST: u64 = 1;
        let Ok(value) = self.tracked.get(&from, 0) else {
            return Retrack::NotHeld;
        };
        if self.tracked.insert(to, value, BPF_NOEXIST).is_err() {
            return Retrack::NotHeld;
        }
        let _ = self.procs.insert(to.pid, 1, 0);
        // The holder may have closed it meanwhile, its fd number now naming something else.
        let inode = procfs::socket_inode(to.pid, to.fd).ok().flatten();
        if value.ino != 0 && inode == Some(value.ino) {
            let _ = self.tracked.remove(&from);
            return Retrack::Moved;
        }
        if self.tracked.remove(&to).is_ok() {
            return Retrack::NotHeld;
        }
        // The kernel took the entry first: the holder's close came, and its record (with the
        // socket's counts) ends the socket under `to`.
        let _ = self.tracked.remove(&from);
        Retrack::ClosedThere
    }

    /// Starts tracking a socket found in /proc. Never replaces an entry the kernel made in the
    /// meantime (BPF_NOEXIST); returns whether it was inserted.
    pub fn adopt(&mut self, key: SocketKey, socket: &TrackedSocket) -> bool {
        const BPF_NOEXIST: u64 = 1;
        if self.tracked.insert(key, socket, BPF_NOEXIST).is_err() {
            return false;
        }
        // So the kernel reports this process's exit, exec and close_range.
        let _ = self.procs.insert(key.pid, 1, 0);
        // The socket layer learns its kernel socket at its first byte, by its inode.
        if let Some(by_socket) = &mut self.by_socket {
            if socket.ino != 0 && by_socket.adopted.insert(socket.ino, key, 0).is_ok() {
                let pending = by_socket.adopted_pending.get(&0, 0).unwrap_or(0);
                let _ = by_socket
                    .adopted_pending
                    .set(0, pending.saturating_add(1), 0);
            }
        }
        true
    }

    /// Forgets sockets found at start that closed before their first byte, and says how many
    /// are still to be learned (0 spares the socket layer a lookup per untracked socket).
    pub fn prune_adopted(&mut self) {
        let Some(by_socket) = &mut self.by_socket else {
            return;
        };
        let entries: Vec<(u64, SocketKey)> = by_socket
            .adopted
            .iter()
            .take(self.max_sockets as usize)
            .filter_map(Result::ok)
            .collect();
        let mut pending = 0u32;
        for (inode, key) in entries {
            if self
                .tracked
                .get(&key, 0)
                .is_ok_and(|value| value.ino == inode)
            {
                pending = pending.saturating_add(1);
            } else {
                let _ = by_socket.adopted.remove(&inode);
            }
        }
        let _ = by_socket.adopted_pending.set(0, pending, 0);
    }

    /// The kernel's own counters, summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        let sum = |counter: Counter| -> u64 {
            self.counters
                .get(&(counter as u32), 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            ringbuf_drops: sum(Counter::RingbufDrops),
            tracked_full: sum(Counter::TrackedFull),
            inflight_full: sum(Counter::InflightFull),
            adopted: sum(Counter::Adopted),
        }
    }
}

/// A map entry as a socket, with the socket backend's counters when it has them (and then
/// established once any byte moved: a non-blocking connect has completed).
fn with_bytes(key: SocketKey, value: TrackedSocket, bytes: Option<&SkBytes>) -> Socket {
    let mut socket = tracked_socket(key, &value);
    if let Some(bytes) = bytes.filter(|bytes| counts_of(&value, bytes)) {
        socket.bytes_sent = bytes.bytes_sent;
        socket.bytes_recv = bytes.bytes_recv;
        if bytes.bytes_sent > 0 || bytes.bytes_recv > 0 {
            socket.state = crate::socket::State::Established;
        }
    }
    socket
}

/// Picks the backend for `choice` on this kernel, with a clear error when it cannot run here.
pub fn choose_backend(choice: ProbeChoice) -> Result<Backend, ProbeError> {
    match choice {
        ProbeChoice::Socket if socket_tracepoints_available() => Ok(Backend::Socket),
        ProbeChoice::Socket => Err(ProbeError::NoSocketTracepoints),
        ProbeChoice::Tracepoint => Ok(Backend::Tracepoint),
        ProbeChoice::Kprobe if kprobes_available() => Ok(Backend::Kprobe),
        ProbeChoice::Kprobe => Err(ProbeError::NoKprobes),
        // The socket layer first: exact whoever moves the bytes, and the cheapest.
        ProbeChoice::Auto if socket_tracepoints_available() => Ok(Backend::Socket),
        ProbeChoice::Auto => choose_syscall_backend(),
    }
}

/// The article's entry/exit backends, tracepoints first: a stable kernel interface that needs
/// no symbol lookup.
fn choose_syscall_backend() -> Result<Backend, ProbeError> {
    if syscall_tracepoints_available() {
        Ok(Backend::Tracepoint)
    } else if kprobes_available() {
        Ok(Backend::Kprobe)
    } else {
        Err(ProbeError::NoBackend)
    }
}

/// Loads the object and attaches the chosen backend's programs.
pub fn attach(
    choice: ProbeChoice,
    options: LoadOptions,
) -> Result<(Probes, EventRing, KernelTables), ProbeError> {
    support::check_privileges()?;
    // Tracepoint ids live in tracefs: the syscall tracepoints, and sched_process_exit, which
    // both backends use.
    support::ensure_tracefs()?;
    // Without the kernel's BTF the programs cannot tell which socket an fd names: the syscall
    // backends run all the same (identities unknown), but the socket backend could count
    // nothing, so `auto` falls back and `--probe socket` says why.
    let (offsets, identity) = match btf::kernel_offsets() {
        Ok(offsets) => (offsets, Ok(())),
        Err(error) => (KernelOffsets::default(), Err(error)),
    };
    let backend = match (choose_backend(choice)?, &identity) {
        (Backend::Socket, Err(_)) if choice == ProbeChoice::Auto => choose_syscall_backend()?,
        (Backend::Socket, Err(error)) => return Err(ProbeError::NoBtf(error.to_string())),
        (backend, _) => backend,
    };
    if backend == Backend::Tracepoint && !syscall_tracepoints_available() {
        return Err(ProbeError::NoSyscallTracepoints);
    }
    let symbols = match backend {
        Backend::Kprobe => Some(SyscallSymbols::resolve(&SYSCALLS)?),
        Backend::Tracepoint | Backend::Socket => None,
    };
    let count_by_socket = u32::from(backend == Backend::Socket);
    support::raise_memlock_limit();

    let wrapper: u32 = symbols.as_ref().map_or(1, |s| u32::from(s.takes_pt_regs));
    // Two slots where nothing uses them.
    let hot_slots = match backend {
        Backend::Socket => options
            .hot_slots
            .unwrap_or_else(|| hot_slots_for(options.max_sockets)),
        Backend::Tracepoint | Backend::Kprobe => 2,
    };
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::TRACKED, options.max_sockets)
        .map_max_entries(maps::PROCS, options.max_sockets)
        .map_max_entries(maps::EVENTS, options.ring_bytes)
        .override_global(globals::SYSCALL_WRAPPER, &wrapper, true)
        .override_global(globals::DIRECTIONS, &options.directions, true)
        .override_global(globals::FAMILIES, &options.families, true)
        .override_global(globals::SCOPE, &options.scope.mask(), true)
        .override_global(globals::OFFSETS, &offsets, true)
        .override_global(globals::COUNT_BY_SOCKET, &count_by_socket, true)
        .map_max_entries(maps::SK_BYTES, options.max_sockets)
        .map_max_entries(maps::SK_FATE, options.max_sockets)
        .map_max_entries(maps::SK_HOT, hot_slots)
        .map_max_entries(maps::SK_SPILL, hot_slots / 2)
        .override_global(globals::HOT_PAIRS, &(hot_slots / 2), true)
        .load(EBPF_OBJECT)
        .map_err(|e| permission_or(e, "loading the eBPF object"))?;
    options.scope.fill(&mut ebpf)?;

    match (&symbols, backend) {
        (_, Backend::Socket) => attach_socket_hooks(&mut ebpf)?,
        (None, _) => attach_tracepoints(&mut ebpf)?,
        (Some(symbols), _) => attach_kprobes(&mut ebpf, symbols)?,
    }
    if backend != Backend::Socket {
        // The syscall backends cannot count what io_uring or a forked child moves: they say so.
        if support::tracepoint_exists("io_uring", IO_URING_FILE_GET) {
            attach_tracepoint(&mut ebpf, IO_URING_FILE_GET, "io_uring", IO_URING_FILE_GET)?;
        }
    }
    // Forks: a child holds its parent's sockets (the syscall backends flag them; the socket
    // backend looks for them in the child when the parent exits).
    attach_raw_tracepoint(&mut ebpf, SCHED_PROCESS_FORK)?;
    attach_tracepoint(&mut ebpf, SCHED_PROCESS_EXIT, "sched", SCHED_PROCESS_EXIT)?;
    // How connects go and who ends connections: TCP state changes and resets, every backend
    // (the socket backend attached `inet_sock_set_state` with its own hooks). Without them the
    // rest still works; the close log then cannot say who ended a connection.
    let fate = attach_fate(&mut ebpf, backend).map_err(|error| error.to_string());

    let tracked_map_id = match ebpf.map(maps::TRACKED) {
        Some(aya::maps::Map::HashMap(data)) => data.info().map(|info| info.id()).unwrap_or(0),
        _ => 0,
    };
    let events = match ebpf.take_map(maps::EVENTS) {
        Some(aya::maps::Map::RingBuf(data)) => EventRing::new(data, options.ring_bytes)
            .map_err(|e| kernel_error(format!("map {}", maps::EVENTS), e))?,
        _ => return Err(missing(maps::EVENTS)),
    };
    let tables = KernelTables {
        tracked_map_id,
        tracked: take_map(&mut ebpf, maps::TRACKED)?,
        procs: take_map(&mut ebpf, maps::PROCS)?,
        counters: take_map(&mut ebpf, maps::COUNTERS)?,
        max_sockets: options.max_sockets,
        read_batch: options.read_batch,
        by_socket: match backend {
            Backend::Socket => Some(SocketCounters::new(
                take_map(&mut ebpf, maps::SK_BYTES)?,
                take_map(&mut ebpf, maps::SK_HOT)?,
                take_map(&mut ebpf, maps::SK_SPILL)?,
                hot_slots,
                options.max_sockets,
                take_map(&mut ebpf, maps::ADOPTED)?,
                take_map(&mut ebpf, maps::ADOPTED_PENDING)?,
            )),
            Backend::Tracepoint | Backend::Kprobe => None,
        },
    };
    let probes = Probes {
        _ebpf: ebpf,
        backend,
        identity,
        fate,
    };
    Ok((probes, events, tables))
}

/// `SK_HOT`'s size for `max_sockets`: a slot and a half per socket, in whole pages of both
/// `SK_HOT` and `SK_SPILL` (pairs by the 512 generations of a page). A socket whose pair of
/// slots is taken counts in `SK_BYTES`, and each of its counts costs the next refresh a lookup
/// or two: at 100k sockets in as many slots a fifth of them did, 7% in twice as many (then a
/// power of two: 262,144 slots, 8 MiB resident), about a tenth in these 196,608 (6 MiB).
pub fn hot_slots_for(max_sockets: u32) -> u32 {
    const PAIRS_PER_PAGE: u32 = 512;
    let pairs = (max_sockets.clamp(1, 1 << 21) * 3).div_ceil(4);
    2 * pairs.next_multiple_of(PAIRS_PER_PAGE)
}

/// Raw tracepoints every backend attaches, each with a program of its name: resets sent and
/// received (Linux ≥ 4.15), for who ended a connection (`fate`).
pub const FATE_TRACEPOINTS: [&str; 2] = ["tcp_receive_reset", "tcp_send_reset"];

/// The TCP state changes (the socket backend's own hook, which also follows its handshakes)
/// and the resets.
fn attach_fate(ebpf: &mut Ebpf, backend: Backend) -> Result<(), ProbeError> {
    if backend != Backend::Socket {
        attach_raw_tracepoint(ebpf, "inet_sock_set_state")?;
    }
    for event in FATE_TRACEPOINTS {
        attach_raw_tracepoint(ebpf, event)?;
    }
    Ok(())
}

/// `sched:sched_process_exit`: the program's name and the event's (both backends use it).
const SCHED_PROCESS_EXIT: &str = "sched_process_exit";

/// `sched:sched_process_fork`, the raw tracepoint and its program's name: the syscall backends
/// flag the sockets of a process that forks; the socket backend notes the fork.
pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";

/// `io_uring:io_uring_file_get`, the program's name and the event's: the syscall backends mark
/// sockets used through io_uring partial.
pub const IO_URING_FILE_GET: &str = "io_uring_file_get";

/// The socket backend's raw tracepoints, each with a program of its name: the socket layer's
/// byte counts (Linux ≥ 6.3), and the TCP state changes that end a connect's or an accept's
/// handshake (Linux ≥ 4.16).
pub const SOCKET_TRACEPOINTS: [&str; 3] = [
    "sock_send_length",
    "sock_recv_length",
    "inet_sock_set_state",
];

/// The socket backend's cgroup programs, by name: `connect()` (IPv4, and IPv6 for IPv4-mapped
/// peers), and the release of a socket's last reference.
pub const SOCKET_CONNECT_HOOKS: [&str; 2] = ["connect4", "connect6"];
pub const SOCKET_RELEASE_HOOK: &str = "sock_release";

/// `sched:sched_process_exec`, the raw tracepoint and its program's name: the socket backend
/// tells an exec's releases of close-on-exec sockets from closes.
pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";

/// The socket backend: the socket layer's tracepoints and the cgroup hooks on the cgroup v2
/// root, which fire for every process. `Single`: a link of its own, beside any program others
/// attached (the kernel refuses `BPF_F_ALLOW_MULTI` on links here).
fn attach_socket_hooks(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    // Counting first: a socket tracked by the hooks below is counted from its first byte.
    for event in SOCKET_TRACEPOINTS {
        attach_raw_tracepoint(ebpf, event)?;
    }
    attach_raw_tracepoint(ebpf, SCHED_PROCESS_EXEC)?;
    let root = support::cgroup2_root()?;
    for name in SOCKET_CONNECT_HOOKS {
        let program: &mut CgroupSockAddr = program(ebpf, name)?;
        program
            .load()
            .map_err(|e| permission_or(e, format!("loading {name}")))?;
        program
            .attach(&root, CgroupAttachMode::Single)
            .map_err(|e| permission_or(e, format!("attaching {name} to the cgroup v2 root")))?;
    }
    let program: &mut CgroupSock = program(ebpf, SOCKET_RELEASE_HOOK)?;
    program
        .load()
        .map_err(|e| permission_or(e, format!("loading {SOCKET_RELEASE_HOOK}")))?;
    program
        .attach(&root, CgroupAttachMode::Single)
        .map_err(|e| {
            permission_or(
                e,
                format!("attaching {SOCKET_RELEASE_HOOK} to the cgroup v2 root"),
            )
        })?;
    Ok(())
}

/// The `(program, syscalls:event)` pairs of the tracepoint backend, in attach order. Exits
/// come before entries: an entry's stash must never wait for an exit program that is not there
/// yet.
fn syscall_tracepoints() -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for phase in ["exit", "enter"] {
        for syscall in SYSCALLS {
            if phase == "enter" && !syscall.enter {
                continue;
            }
            let event = format!("sys_{phase}_{}", syscall.name);
            // A syscall this kernel does not have (close_range before 5.9) cannot be called.
            if syscall.optional && !support::syscall_tracepoint_exists(&event) {
                continue;
            }
            pairs.push((format!("{phase}_{}", syscall.name), event));
        }
    }
    pairs
}

fn attach_tracepoints(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    for (program, event) in syscall_tracepoints() {
        attach_tracepoint(ebpf, &program, "syscalls", &event)?;
    }
    Ok(())
}

/// Loads the program named `event` and attaches it to the raw tracepoint of that name.
fn attach_raw_tracepoint(ebpf: &mut Ebpf, event: &str) -> Result<(), ProbeError> {
    let program: &mut RawTracePoint = program(ebpf, event)?;
    program
        .load()
        .map_err(|e| permission_or(e, format!("loading {event}")))?;
    program
        .attach(event)
        .map_err(|e| permission_or(e, format!("attaching to the raw tracepoint {event}")))?;
    Ok(())
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program_name: &str,
    category: &str,
    event: &str,
) -> Result<(), ProbeError> {
    let program: &mut TracePoint = program(ebpf, program_name)?;
    program
        .load()
        .map_err(|e| permission_or(e, format!("loading {program_name}")))?;
    program
        .attach(category, event)
        .map_err(|e| permission_or(e, format!("attaching to {category}:{event}")))?;
    Ok(())
}

fn attach_kprobes(ebpf: &mut Ebpf, symbols: &SyscallSymbols) -> Result<(), ProbeError> {
    for phase in ["kret", "kp"] {
        for (syscall, symbol) in &symbols.names {
            if phase == "kp" && !syscall.enter {
                continue;
            }
            let program_name = format!("{phase}_{}", syscall.name);
            let program: &mut KProbe = program(ebpf, &program_name)?;
            program
                .load()
                .map_err(|e| permission_or(e, format!("loading {program_name}")))?;
            program
                .attach(symbol, 0)
                .map_err(|e| permission_or(e, format!("attaching {program_name} to {symbol}")))?;
        }
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| kernel_error(format!("program {name}"), anyhow::anyhow!("not in object")))?;
    program
        .try_into()
        .map_err(|e| kernel_error(format!("program {name}"), e))
}

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| missing(name))?;
    T::try_from(map).map_err(|e| kernel_error(format!("map {name}"), e))
}

/// The local ports the kernel picks from (`net.ipv4.ip_local_port_range`), as sockwatch's own
/// network namespace has them; `None` if unreadable.
fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    Some((ports.next()?.ok()?, ports.next()?.ok()?))
}

/// A map the object should have and has not (a stale object).
fn missing(name: &str) -> ProbeError {
    kernel_error(format!("map {name}"), anyhow::anyhow!("not in object"))
}

/// Turns a kernel `EPERM` anywhere in the error chain into [`ProbeError::NotPermitted`].
///
/// Not `EACCES`: that is how the verifier rejects a program, and its log (kept in `error`)
/// is the message that matters then.
fn permission_or(error: impl Into<anyhow::Error>, context: impl Into<String>) -> ProbeError {
    let error = error.into();
    let denied = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::EPERM)
    });
    if denied {
        ProbeError::NotPermitted
    } else {
        kernel_error(context, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockwatch_common::hot_pair;

    /// A slot and a half a socket, in whole pages of `SK_HOT` (32-byte slots) and `SK_SPILL`
    /// (a generation of 8 bytes a pair).
    #[test]
    fn hot_slots_are_a_slot_and_a_half_a_socket_in_whole_pages() {
        assert_eq!(hot_slots_for(131_072), 196_608);
        assert_eq!(hot_slots_for(1), 1024);
        for max in [1, 1000, 65_536, 100_000, 1 << 21, u32::MAX] {
            let slots = hot_slots_for(max);
            assert!(
                u64::from(slots) * 2 >= 3 * u64::from(max.min(1 << 21)),
                "{max}"
            );
            assert_eq!(slots % (4096 / 32), 0, "{max}");
            assert_eq!((slots / 2) % (4096 / 8), 0, "{max}");
        }
    }

    /// Sockets spread evenly over the pairs: 100,000 `struct sock` addresses in the slots of
    /// `--max-sockets 131072` (0.51 sockets a slot) leave about a tenth of them without a slot
    /// of their pair, as sockets thrown at random would (a Poisson count of 1.02 a pair).
    #[test]
    fn sockets_spread_over_the_hot_pairs() {
        let pairs = hot_slots_for(131_072) / 2;
        let mut held = vec![0u8; pairs as usize];
        let mut without = 0;
        // Slab objects of 2.5 KiB in 32 KiB slabs, scattered over 64 GiB of the direct map.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let slab = 0xffff_8880_0000_0000 + (state % (1 << 21)) * 32 * 1024;
            let sk = slab + (state >> 40) % 12 * 2560;
            let pair = hot_pair(sk, pairs);
            assert!(pair < pairs);
            let held = &mut held[pair as usize];
            if *held < 2 {
                *held += 1;
            } else {
                without += 1;
            }
        }
        assert!(
            (7_000..14_000).contains(&without),
            "{without} of 100,000 without a slot"
        );
    }
}
