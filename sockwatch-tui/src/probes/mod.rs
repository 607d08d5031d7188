//! Loading the eBPF object and attaching one of the two probe backends.

mod support;

use std::fmt;

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{KProbe, TracePoint},
    Ebpf, EbpfLoader,
};
use sockwatch_common::{globals, maps, Counter, SocketKey, TrackedSocket};

pub use support::{kprobes_available, syscall_tracepoints_available, SyscallSymbols};

use crate::{cli::ProbeChoice, events::TrackedEntry, reducer::KernelCounters};

/// The kernel programs, built by build.rs from `sockwatch-ebpf` and embedded in the binary.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockwatch.bpf.o"));

/// The syscalls each backend hooks at entry and exit, and the program names for them.
const SYSCALLS: [&str; 3] = ["connect", "sendto", "close"];

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

/// Why the probes could not be set up; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading eBPF programs needs root (or CAP_BPF and CAP_PERFMON): run it with sudo")]
    NotPermitted,
    #[error(
        "tracefs is not mounted and could not be mounted ({0}): run \
         `mount -t tracefs nodev /sys/kernel/tracing`, or use --probe kprobe"
    )]
    NoTracefs(String),
    #[error(
        "this kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS is not set): \
         use --probe kprobe"
    )]
    NoSyscallTracepoints,
    #[error(
        "this kernel has no kprobes (CONFIG_KPROBES is not set: no kprobe PMU in \
         /sys/bus/event_source/devices): use --probe tracepoint"
    )]
    NoKprobes,
    #[error("neither syscall tracepoints nor kprobes are available on this kernel")]
    NoBackend,
    #[error("kernel symbol for the {0} syscall not found in /proc/kallsyms")]
    MissingSymbol(&'static str),
    #[error("{context}: {source}")]
    Kernel {
        context: String,
        #[source]
        source: anyhow::Error,
    },
}

fn kernel_error(context: impl Into<String>, source: impl Into<anyhow::Error>) -> ProbeError {
    ProbeError::Kernel {
        context: context.into(),
        source: source.into(),
    }
}

/// Sizes of the kernel's maps.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub max_sockets: u32,
    pub ring_bytes: u32,
}

/// The attached programs. Dropping this detaches them.
pub struct Probes {
    _ebpf: Ebpf,
    pub backend: Backend,
}

/// The maps user space reads besides the ring buffer.
pub struct KernelTables {
    tracked: HashMap<MapData, SocketKey, TrackedSocket>,
    counters: PerCpuArray<MapData, u64>,
    max_sockets: u32,
}

impl KernelTables {
    /// Every socket the kernel tracks, with its counters as of now.
    ///
    /// Bounded by the map's size: iterating a hash map while the kernel deletes from it can
    /// restart from the first key, and this must never loop forever.
    pub fn snapshot(&self) -> Vec<TrackedEntry> {
        self.tracked
            .iter()
            .take(self.max_sockets as usize)
            .filter_map(Result::ok)
            .map(|(key, value)| TrackedEntry::from_map(key, &value))
            .collect()
    }

    /// Number of entries in the kernel's `TRACKED` map (for leak checks).
    pub fn tracked_len(&self) -> usize {
        self.tracked
            .keys()
            .take(self.max_sockets as usize)
            .filter(Result::is_ok)
            .count()
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
    sizes: MapSizes,
) -> Result<(Probes, RingBuf<MapData>, KernelTables), ProbeError> {
    support::check_privileges()?;
    if choice != ProbeChoice::Kprobe {
        // The tracepoint ids live in tracefs; auto detection looks there too.
        support::ensure_tracefs()?;
    }
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
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::TRACKED, sizes.max_sockets)
        .map_max_entries(maps::EVENTS, sizes.ring_bytes)
        .override_global(globals::SYSCALL_WRAPPER, &wrapper, true)
        .load(EBPF_OBJECT)
        .map_err(|e| permission_or(e, "loading the eBPF object"))?;

    match &symbols {
        None => attach_tracepoints(&mut ebpf)?,
        Some(symbols) => attach_kprobes(&mut ebpf, symbols)?,
    }

    let events = take_map(&mut ebpf, maps::EVENTS)?;
    let tables = KernelTables {
        tracked: take_map(&mut ebpf, maps::TRACKED)?,
        counters: take_map(&mut ebpf, maps::COUNTERS)?,
        max_sockets: sizes.max_sockets,
    };
    let probes = Probes {
        _ebpf: ebpf,
        backend,
    };
    Ok((probes, events, tables))
}

fn attach_tracepoints(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    for syscall in SYSCALLS {
        for phase in ["enter", "exit"] {
            let program_name = format!("{phase}_{syscall}");
            let event = format!("sys_{phase}_{syscall}");
            let program: &mut TracePoint = program(ebpf, &program_name)?;
            program
                .load()
                .map_err(|e| permission_or(e, format!("loading {program_name}")))?;
            program
                .attach("syscalls", &event)
                .map_err(|e| permission_or(e, format!("attaching to syscalls:{event}")))?;
        }
    }
    Ok(())
}

fn attach_kprobes(ebpf: &mut Ebpf, symbols: &SyscallSymbols) -> Result<(), ProbeError> {
    for (syscall, symbol) in SYSCALLS.iter().zip(&symbols.names) {
        for program_name in [format!("kp_{syscall}"), format!("kret_{syscall}")] {
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

/// Turns a kernel `EPERM`/`EACCES` anywhere in the error chain into [`ProbeError::NotPermitted`].
fn permission_or(error: impl Into<anyhow::Error>, context: impl Into<String>) -> ProbeError {
    let error = error.into();
    let denied = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::EPERM || code == libc::EACCES)
    });
    if denied {
        ProbeError::NotPermitted
    } else {
        kernel_error(context, error)
    }
}
