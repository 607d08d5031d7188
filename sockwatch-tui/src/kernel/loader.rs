//! Loading the eBPF object and attaching one of the two probe backends; the kernel's maps as
//! user space reads them.

use std::fmt;

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{KProbe, TracePoint},
    Ebpf, EbpfLoader,
};
use sockwatch_common::{globals, maps, Counter, KernelOffsets, SocketKey, TrackedSocket, SYSCALLS};

use super::{
    btf,
    decode::tracked_socket,
    support::{
        self, kernel_error, kprobes_available, syscall_tracepoints_available, ProbeError,
        SyscallSymbols,
    },
};
use crate::socket::Socket;

/// The kernel programs, built by build.rs from `sockwatch-ebpf` and embedded in the binary.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockwatch.bpf.o"));

/// Which kernel mechanism carries the entry/exit probes (`--probe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeChoice {
    /// Syscall tracepoints when the kernel has them, kprobes otherwise.
    Auto,
    /// `syscalls:sys_enter_*` / `sys_exit_*` tracepoints.
    Tracepoint,
    /// kprobe + kretprobe on the syscall entry symbols (`__x64_sys_*`).
    Kprobe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Tracepoint,
    Kprobe,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tracepoint => "tracepoint",
            Self::Kprobe => "kprobe",
        })
    }
}

/// How the kernel side is set up: map sizes and what to track.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub max_sockets: u32,
    pub ring_bytes: u32,
    /// A `sockwatch_common::directions` mask.
    pub directions: u32,
}

/// The attached programs. Dropping this detaches them.
pub struct Probes {
    _ebpf: Ebpf,
    pub backend: Backend,
    /// Whether the programs can name each socket's kernel identity (inode), and why not.
    pub identity: Result<(), btf::BtfError>,
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
}

/// The maps user space reads besides the ring buffer.
pub struct KernelTables {
    /// The kernel's id of the `TRACKED` map (for `bpftool map dump id N`).
    pub tracked_map_id: u32,
    tracked: HashMap<MapData, SocketKey, TrackedSocket>,
    procs: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    max_sockets: u32,
}

impl KernelTables {
    /// Every socket the kernel tracks, with its counters as of now.
    ///
    /// Bounded by the map's size: iterating a hash map while the kernel deletes from it can
    /// restart from the first key, and this must never loop forever.
    pub fn snapshot(&self) -> Vec<Socket> {
        self.tracked
            .iter()
            .take(self.max_sockets as usize)
            .filter_map(Result::ok)
            .map(|(key, value)| tracked_socket(key, &value))
            .collect()
    }

    /// One tracked socket, if the kernel still has it.
    pub fn get(&self, key: SocketKey) -> Option<Socket> {
        self.tracked
            .get(&key, 0)
            .ok()
            .map(|value| tracked_socket(key, &value))
    }

    /// Stops tracking a socket user space found gone; returns its final counts.
    ///
    /// Only for sockets whose fd no longer exists (exit, exec, close_range, reconciliation):
    /// nothing can add to their counters any more, so reading then deleting loses nothing.
    pub fn take(&mut self, key: SocketKey) -> Option<Socket> {
        let entry = self.get(key)?;
        self.tracked.remove(&key).ok()?;
        Some(entry)
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
        true
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
        }
    }
}

/// Picks the backend for `choice` on this kernel, with a clear error when it cannot run here.
pub fn choose_backend(choice: ProbeChoice) -> Result<Backend, ProbeError> {
    match choice {
        ProbeChoice::Tracepoint => Ok(Backend::Tracepoint),
        ProbeChoice::Kprobe if kprobes_available() => Ok(Backend::Kprobe),
        ProbeChoice::Kprobe => Err(ProbeError::NoKprobes),
        // Tracepoints first: a stable kernel interface that needs no symbol lookup.
        ProbeChoice::Auto if syscall_tracepoints_available() => Ok(Backend::Tracepoint),
        ProbeChoice::Auto if kprobes_available() => Ok(Backend::Kprobe),
        ProbeChoice::Auto => Err(ProbeError::NoBackend),
    }
}

/// Loads the object and attaches the chosen backend's programs.
pub fn attach(
    choice: ProbeChoice,
    options: LoadOptions,
) -> Result<(Probes, RingBuf<MapData>, KernelTables), ProbeError> {
    support::check_privileges()?;
    // Tracepoint ids live in tracefs: the syscall tracepoints, and sched_process_exit, which
    // both backends use.
    support::ensure_tracefs()?;
    let backend = choose_backend(choice)?;
    if backend == Backend::Tracepoint && !syscall_tracepoints_available() {
        return Err(ProbeError::NoSyscallTracepoints);
    }
    let symbols = match backend {
        Backend::Kprobe => Some(SyscallSymbols::resolve(&SYSCALLS)?),
        Backend::Tracepoint => None,
    };
    support::raise_memlock_limit();

    let wrapper: u32 = symbols.as_ref().map_or(1, |s| u32::from(s.takes_pt_regs));
    // Without the kernel's BTF the programs cannot tell which socket an fd names: they run all
    // the same, with socket identities unknown (0), and the caller is told why.
    let (offsets, identity) = match btf::kernel_offsets() {
        Ok(offsets) => (offsets, Ok(())),
        Err(error) => (KernelOffsets::default(), Err(error)),
    };
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::TRACKED, options.max_sockets)
        .map_max_entries(maps::PROCS, options.max_sockets)
        .map_max_entries(maps::EVENTS, options.ring_bytes)
        .override_global(globals::SYSCALL_WRAPPER, &wrapper, true)
        .override_global(globals::DIRECTIONS, &options.directions, true)
        .override_global(globals::OFFSETS, &offsets, true)
        .load(EBPF_OBJECT)
        .map_err(|e| permission_or(e, "loading the eBPF object"))?;

    match &symbols {
        None => attach_tracepoints(&mut ebpf)?,
        Some(symbols) => attach_kprobes(&mut ebpf, symbols)?,
    }
    attach_tracepoint(&mut ebpf, SCHED_PROCESS_EXIT, "sched", SCHED_PROCESS_EXIT)?;

    let tracked_map_id = match ebpf.map(maps::TRACKED) {
        Some(aya::maps::Map::HashMap(data)) => data.info().map(|info| info.id()).unwrap_or(0),
        _ => 0,
    };
    let events = take_map(&mut ebpf, maps::EVENTS)?;
    let tables = KernelTables {
        tracked_map_id,
        tracked: take_map(&mut ebpf, maps::TRACKED)?,
        procs: take_map(&mut ebpf, maps::PROCS)?,
        counters: take_map(&mut ebpf, maps::COUNTERS)?,
        max_sockets: options.max_sockets,
    };
    let probes = Probes {
        _ebpf: ebpf,
        backend,
        identity,
    };
    Ok((probes, events, tables))
}

/// `sched:sched_process_exit`: the program's name and the event's (both backends use it).
const SCHED_PROCESS_EXIT: &str = "sched_process_exit";

/// The tracepoint backend's `(program, syscalls:event)` pairs, in attach order. Exits come
/// before entries: an entry's stash must never wait for an exit program that is not there
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
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| kernel_error(format!("map {name}"), anyhow::anyhow!("not in object")))?;
    T::try_from(map).map_err(|e| kernel_error(format!("map {name}"), e))
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
