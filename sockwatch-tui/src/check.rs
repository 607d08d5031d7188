//! `sockwatch-tui check`: what this machine offers and what sockwatch will use, asked before a
//! run rather than learned from its error. Each line is a fact read from the kernel (a file in
//! /proc or /sys, a map it agrees to create) and what it means for sockwatch.

use std::{fmt::Write as _, fs};

use crate::kernel::{
    btf,
    loader::{choose_backend, ProbeChoice},
    support::{self, ProbeError},
};

/// One line of the report: what, whether it is fine, and the detail.
struct Line {
    what: &'static str,
    ok: bool,
    detail: String,
}

/// The report, and whether a backend can attach (the exit status).
pub struct Report {
    lines: Vec<Line>,
    pub usable: bool,
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = String::from("sockwatch-tui check: what this machine offers\n");
        for line in &self.lines {
            let mark = if line.ok { "ok " } else { "-- " };
            let _ = writeln!(out, "  {mark} {:<20} {}", line.what, line.detail);
        }
        let _ = writeln!(
            out,
            "{}",
            if self.usable {
                "sockwatch can run here."
            } else {
                "sockwatch cannot run here as things are: see the lines marked --."
            }
        );
        out
    }
}

/// Reads the machine. As root it mounts tracefs where it is not mounted, as a run would.
pub fn run() -> Report {
    let mut lines = Vec::new();
    let mut push = |what, ok, detail: String| lines.push(Line { what, ok, detail });

    push("kernel", true, kernel_release());
    let privileged = support::check_privileges();
    push(
        "privileges",
        privileged.is_ok(),
        match &privileged {
            Ok(()) => "can load eBPF programs (CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON)".into(),
            Err(_) => format!("{}: {}", missing_capabilities(), ProbeError::NotPermitted),
        },
    );
    let btf = btf::kernel_offsets();
    push(
        "BTF",
        btf.is_ok(),
        match &btf {
            Ok(_) => {
                "/sys/kernel/btf/vmlinux: socket identities (inodes) and the socket backend".into()
            }
            Err(error) => format!(
                "{error}: socket identities unknown, no socket backend (CONFIG_DEBUG_INFO_BTF)"
            ),
        },
    );
    let tracefs = if privileged.is_ok() {
        support::ensure_tracefs()
    } else {
        Ok(())
    };
    let tracefs_root = support::tracefs_root();
    let mounted = support::mount_of("tracefs");
    push(
        "tracefs",
        tracefs.is_ok() && (tracefs_root.is_some() || mounted.is_some()),
        match (&tracefs, tracefs_root, &mounted) {
            (Ok(()), Some(root), _) => format!("{root} (tracepoint ids)"),
            (Ok(()), None, Some(at)) => format!("{at}, readable by root only"),
            (Ok(()), None, None) => "not mounted (a run as root mounts it)".into(),
            (Err(error), _, _) => error.to_string(),
        },
    );
    let ring = ring_buffer();
    push(
        "ring buffer",
        ring.is_ok(),
        match &ring {
            Ok(()) => "BPF ring buffer maps (Linux 5.8 or later)".into(),
            Err(why) => why.clone(),
        },
    );
    let paranoid = fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok());
    push(
        "perf_event_paranoid",
        true,
        match paranoid {
            Some(level) if level >= 3 => format!(
                "{level}: perf events only with CAP_SYS_ADMIN (Debian's level 3): run as root, \
                 CAP_BPF with CAP_PERFMON is not enough"
            ),
            Some(level) => format!("{level}: no limit on root or CAP_PERFMON"),
            None => "not readable (no perf events?)".into(),
        },
    );
    let lockdown = lockdown();
    push(
        "lockdown",
        lockdown.as_deref() != Some("confidentiality"),
        match lockdown.as_deref() {
            None => "none (no lockdown LSM)".into(),
            Some("none") => "none".into(),
            Some("integrity") => "integrity: eBPF programs may read kernel memory".into(),
            Some(mode) => format!(
                "{mode}: eBPF programs cannot read kernel memory (bpf_probe_read_kernel), which \
                 every backend needs"
            ),
        },
    );
    let nested = !in_initial_pid_namespace();
    push(
        "pid namespace",
        true,
        if nested {
            "not the host's: the kernel's records carry host pids, which this namespace's /proc \
             cannot name (run sockwatch in the host's pid namespace)"
                .into()
        } else {
            "the host's".into()
        },
    );

    let mut any = false;
    for (what, choice) in [
        ("backend socket", ProbeChoice::Socket),
        ("backend tracepoint", ProbeChoice::Tracepoint),
        ("backend kprobe", ProbeChoice::Kprobe),
    ] {
        let available =
            if tracefs_root.is_none() && privileged.is_err() && choice != ProbeChoice::Kprobe {
                Err("cannot tell without root (tracefs is root's to read)".into())
            } else {
                available(choice, btf.is_ok(), tracefs_root.is_some())
            };
        any |= available.is_ok();
        push(
            what,
            available.is_ok(),
            match available {
                Ok(()) => "available".into(),
                Err(why) if why.starts_with("cannot tell") => why,
                Err(why) => format!("not available: {why}"),
            },
        );
    }
    let auto = choose_backend(ProbeChoice::Auto).ok().filter(|_| any);
    push(
        "--probe auto",
        auto.is_some(),
        match auto {
            Some(backend) => format!("uses {backend}"),
            None if privileged.is_err() => "cannot tell without root".into(),
            None => "no backend".into(),
        },
    );
    let usable =
        any && privileged.is_ok() && ring.is_ok() && lockdown.as_deref() != Some("confidentiality");
    Report { lines, usable }
}

/// Whether `choice` can attach here, or why not.
fn available(choice: ProbeChoice, btf: bool, tracefs: bool) -> Result<(), String> {
    match choice {
        ProbeChoice::Socket if !btf => Err("it needs the kernel's BTF".into()),
        ProbeChoice::Tracepoint if !tracefs => Err("tracefs is not mounted".into()),
        ProbeChoice::Tracepoint if !support::syscall_tracepoints_available() => {
            Err(ProbeError::NoSyscallTracepoints.to_string())
        }
        _ => choose_backend(choice)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}

fn kernel_release() -> String {
    // SAFETY: uname(2) fills the struct we pass.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("Linux {} ({})", text(&uts.release), text(&uts.machine))
}

/// The capabilities a run needs that this process lacks.
fn missing_capabilities() -> String {
    let caps = support::effective_capabilities().unwrap_or(0);
    let missing: Vec<&str> = support::CAPABILITIES
        .into_iter()
        .filter(|(bit, _)| caps & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    format!("missing {}", missing.join(", "))
}

/// Whether the kernel creates a BPF ring buffer map (the channel every backend reports on).
fn ring_buffer() -> Result<(), String> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    // `union bpf_attr` for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, then
    // fields left zero.
    let mut attr = [0u32; 16];
    attr[0] = BPF_MAP_TYPE_RINGBUF;
    // A page: the size must be a multiple of it (16 KiB, 64 KiB on some arm64 kernels).
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    attr[3] = u32::try_from(page).unwrap_or(4096);
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of `attr`; the fd it returns is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd >= 0 {
        // SAFETY: closing the fd just created.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    Err(match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => "cannot tell without privileges".into(),
        Some(libc::EINVAL) => "this kernel has no BPF ring buffer (Linux 5.8 or later)".into(),
        _ => format!("creating one failed: {error}"),
    })
}

/// The active lockdown mode (`none`, `integrity`, `confidentiality`); `None` without the LSM.
fn lockdown() -> Option<String> {
    let text = fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    let start = text.find('[')?;
    let end = text[start..].find(']')?;
    Some(text[start + 1..start + end].to_owned())
}

/// Whether this process is in the host's pid namespace: the initial one has a fixed inode
/// (`PROC_PID_INIT_INO`). (`NSpid:` would not tell inside a container with its own /proc.)
fn in_initial_pid_namespace() -> bool {
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/pid").map_or(true, |m| m.ino() == PROC_PID_INIT_INO)
}
