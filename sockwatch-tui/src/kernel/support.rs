//! What the running kernel offers, and the preconditions for loading probes.

use std::{collections::HashSet, fs, io, path::Path};

use sockwatch_common::Syscall;

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
        "this kernel has no socket-layer tracepoints (sock:sock_send_length, Linux 6.3 or later) \
         or no cgroup socket hooks (CONFIG_CGROUP_BPF): use --probe tracepoint or --probe kprobe"
    )]
    NoSocketTracepoints,
    #[error("no cgroup v2 hierarchy for the socket backend's hooks ({0}): use --probe tracepoint")]
    NoCgroup2(String),
    #[error("the socket backend needs the kernel's BTF ({0}): use --probe tracepoint")]
    NoBtf(String),
    #[error(
        "this kernel has no kprobes (CONFIG_KPROBES is not set: no kprobe PMU in \
         /sys/bus/event_source/devices): use --probe tracepoint"
    )]
    NoKprobes,
    #[error(
        "neither the socket layer, syscall tracepoints nor kprobes are available on this kernel"
    )]
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

pub fn kernel_error(context: impl Into<String>, source: impl Into<anyhow::Error>) -> ProbeError {
    ProbeError::Kernel {
        context: context.into(),
        source: source.into(),
    }
}

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The kernel has the kprobe PMU (`CONFIG_KPROBES`), which aya attaches kprobes through.
pub fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// The kernel has syscall tracepoints (`CONFIG_FTRACE_SYSCALLS`), visible in a mounted tracefs.
pub fn syscall_tracepoints_available() -> bool {
    [TRACEFS, DEBUGFS_TRACING].iter().any(|root| {
        Path::new(root)
            .join("events/syscalls/sys_enter_connect/id")
            .exists()
    })
}

/// The kernel has the socket layer's length tracepoints (`sock:sock_send_length`, Linux ≥ 6.3)
/// that the socket backend counts on, and the cgroup socket hooks (`CONFIG_CGROUP_BPF`, seen
/// as the cgroup2 filesystem) its lifecycle comes from.
pub fn socket_tracepoints_available() -> bool {
    let cgroup2 = fs::read_to_string("/proc/filesystems")
        .is_ok_and(|text| text.lines().any(|line| line.ends_with("\tcgroup2")));
    cgroup2
        && [TRACEFS, DEBUGFS_TRACING].iter().any(|root| {
            ["sock_send_length", "sock_recv_length"]
                .iter()
                .all(|event| Path::new(root).join("events/sock").join(event).exists())
        })
}

/// The root of the cgroup v2 hierarchy, open, for the socket backend's cgroup hooks: programs
/// attached there see every process (every cgroup is below it). Where no cgroup2 is mounted (a
/// v1-only or minimal system), one is mounted for the moment of attaching and lazily unmounted
/// again: the attached programs keep the hierarchy, not the mount.
pub fn cgroup2_root() -> Result<fs::File, ProbeError> {
    if let Some(target) = mount_of("cgroup2") {
        return fs::File::open(&target)
            .map_err(|e| ProbeError::NoCgroup2(format!("{target}: {e}")));
    }
    let target = std::env::temp_dir().join(format!("sockwatch-cgroup2-{}", std::process::id()));
    fs::create_dir_all(&target).map_err(|e| ProbeError::NoCgroup2(e.to_string()))?;
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|e| ProbeError::NoCgroup2(e.to_string()))?;
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            path.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let error = io::Error::last_os_error();
        let _ = fs::remove_dir(&target);
        return Err(ProbeError::NoCgroup2(format!("mounting cgroup2: {error}")));
    }
    let root = fs::File::open(&target);
    // SAFETY: a valid path; MNT_DETACH leaves the open directory usable.
    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    let _ = fs::remove_dir(&target);
    root.map_err(|e| ProbeError::NoCgroup2(e.to_string()))
}

/// Where a filesystem of type `fstype` is mounted (the first, from /proc/self/mounts, which
/// anyone may read), if anywhere.
pub fn mount_of(fstype: &str) -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == fstype).then(|| target.replace("\\040", " "))
    })
}

/// The tracefs whose events this process can read (the tracepoint ids), if any.
pub fn tracefs_root() -> Option<&'static str> {
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .find(|root| Path::new(root).join("events").exists())
}

/// Whether `<category>:<event>` exists on this kernel.
pub fn tracepoint_exists(category: &str, event: &str) -> bool {
    [TRACEFS, DEBUGFS_TRACING].iter().any(|root| {
        Path::new(root)
            .join("events")
            .join(category)
            .join(event)
            .exists()
    })
}

/// Whether `syscalls:<event>` exists on this kernel.
pub fn syscall_tracepoint_exists(event: &str) -> bool {
    [TRACEFS, DEBUGFS_TRACING]
        .iter()
        .any(|root| Path::new(root).join("events/syscalls").join(event).exists())
}

/// Mounts tracefs at its usual place when no tracefs is mounted (as `perf` and bpftrace
/// expect root to be able to), since the tracepoint ids are read from there.
pub fn ensure_tracefs() -> Result<(), ProbeError> {
    if tracefs_root().is_some() {
        return Ok(());
    }
    if !Path::new(TRACEFS).exists() {
        return Err(ProbeError::NoTracefs(format!("{TRACEFS} does not exist")));
    }
    let source = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings and no data argument is passed.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::NoTracefs(
            io::Error::last_os_error().to_string(),
        ));
    }
    Ok(())
}

/// The capabilities loading the programs takes: CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON.
pub const CAPABILITIES: [(u32, &str); 3] = [
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    (CAP_BPF, "CAP_BPF"),
    (CAP_PERFMON, "CAP_PERFMON"),
];
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails early, with a useful message, when the process cannot load eBPF programs.
pub fn check_privileges() -> Result<(), ProbeError> {
    let Some(caps) = effective_capabilities() else {
        // Cannot tell: let the kernel decide, errors are translated on load.
        return Ok(());
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(ProbeError::NotPermitted)
    }
}

/// This process's effective capabilities (`CapEff:`), as a bit set; `None` when not readable.
pub fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so maps fit.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else. Failure is harmless on
    // modern kernels (memcg accounting), so the result is ignored.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// The kernel function behind each syscall, found as bcc's `get_syscall_fnname` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallSymbols {
    /// The symbol of each syscall this kernel has (optional ones it lacks are left out).
    pub names: Vec<(Syscall, String)>,
    /// Whether those functions take a `struct pt_regs *` of the user registers (the
    /// arch-prefixed wrappers of Linux 4.17+) rather than the arguments themselves.
    pub takes_pt_regs: bool,
}

/// The prefix of the syscall wrappers on this architecture.
const ARCH_PREFIX: &str = if cfg!(target_arch = "aarch64") {
    "__arm64_sys_"
} else {
    "__x64_sys_"
};

impl SyscallSymbols {
    pub fn resolve(syscalls: &[Syscall]) -> Result<Self, ProbeError> {
        let kallsyms = fs::read_to_string("/proc/kallsyms").map_err(|e| ProbeError::Kernel {
            context: "reading /proc/kallsyms".into(),
            source: e.into(),
        })?;
        Self::resolve_in(&kallsyms, syscalls)
    }

    /// Resolves against the text of `/proc/kallsyms`.
    pub fn resolve_in(kallsyms: &str, syscalls: &[Syscall]) -> Result<Self, ProbeError> {
        let symbols: HashSet<&str> = kallsyms
            .lines()
            .filter_map(|line| line.split_whitespace().nth(2))
            .collect();
        let wrapped = syscalls
            .first()
            .is_some_and(|first| symbols.contains(format!("{ARCH_PREFIX}{}", first.name).as_str()));
        let prefix = if wrapped { ARCH_PREFIX } else { "sys_" };
        let mut names = Vec::with_capacity(syscalls.len());
        for syscall in syscalls {
            let name = format!("{prefix}{}", syscall.name);
            if symbols.contains(name.as_str()) {
                names.push((*syscall, name));
            } else if !syscall.optional {
                return Err(ProbeError::MissingSymbol(syscall.name));
            }
        }
        Ok(Self {
            names,
            takes_pt_regs: wrapped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECT: Syscall = Syscall {
        name: "connect",
        enter: true,
        optional: false,
    };
    const CLOSE: Syscall = Syscall {
        name: "close",
        enter: true,
        optional: false,
    };
    const CLOSE_RANGE: Syscall = Syscall {
        name: "close_range",
        enter: true,
        optional: true,
    };

    #[test]
    fn prefers_the_arch_wrappers() {
        let kallsyms =
            format!("0000 T {ARCH_PREFIX}connect\n0000 T {ARCH_PREFIX}close\n0000 T sys_connect\n");
        let symbols = SyscallSymbols::resolve_in(&kallsyms, &[CONNECT, CLOSE]).expect("found");
        assert_eq!(
            symbols.names,
            [
                (CONNECT, format!("{ARCH_PREFIX}connect")),
                (CLOSE, format!("{ARCH_PREFIX}close"))
            ]
        );
        assert!(symbols.takes_pt_regs);
    }

    #[test]
    fn falls_back_to_plain_sys_symbols_and_skips_missing_optional_ones() {
        let kallsyms = "0000 T sys_connect\n0000 T sys_close\n";
        let symbols =
            SyscallSymbols::resolve_in(kallsyms, &[CONNECT, CLOSE, CLOSE_RANGE]).expect("found");
        assert_eq!(
            symbols.names,
            [
                (CONNECT, "sys_connect".to_owned()),
                (CLOSE, "sys_close".to_owned())
            ]
        );
        assert!(!symbols.takes_pt_regs);
    }

    #[test]
    fn a_missing_required_symbol_is_named() {
        let kallsyms = "0000 T sys_connect\n";
        let error = SyscallSymbols::resolve_in(kallsyms, &[CONNECT, CLOSE]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "kernel symbol for the close syscall not found in /proc/kallsyms"
        );
    }
}
