//! The benchmark's floor (hidden flag `--attach-floor`, for `cargo xtask bench` only).
//!
//! One empty program (`floor` in sockwatch-ebpf, `return 0`) attached to exactly the
//! tracepoints the tracepoint backend uses. What a traced program pays with the floor attached
//! is the cost of the attach mechanism alone (the kernel entering a BPF program at each hooked
//! syscall entry and exit), so the benchmark can report sockwatch's own cost as a multiple of
//! it. Nothing else in sockwatch uses this module.

use std::{io::Write, time::Duration};

use aya::{programs::TracePoint, Ebpf, EbpfLoader};
use tokio::signal::unix::{signal, SignalKind};

use super::{
    permission_or, program, support, syscall_tracepoints, ProbeError, EBPF_OBJECT,
    SCHED_PROCESS_EXIT,
};

/// The floor program, attached. Dropping this detaches it.
pub struct Floor {
    _ebpf: Ebpf,
    /// How many tracepoints it is attached to.
    pub attached: usize,
}

/// Attaches the empty program to every syscall tracepoint sockwatch attaches to, and to
/// `sched:sched_process_exit`.
pub fn attach() -> Result<Floor, ProbeError> {
    support::check_privileges()?;
    support::ensure_tracefs()?;
    if !super::syscall_tracepoints_available() {
        return Err(ProbeError::NoSyscallTracepoints);
    }
    support::raise_memlock_limit();
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .map_err(|e| permission_or(e, "loading the eBPF object"))?;
    let floor: &mut TracePoint = program(&mut ebpf, "floor")?;
    floor
        .load()
        .map_err(|e| permission_or(e, "loading floor"))?;
    let mut events: Vec<(&str, String)> = syscall_tracepoints()
        .into_iter()
        .map(|(_program, event)| ("syscalls", event))
        .collect();
    events.push(("sched", SCHED_PROCESS_EXIT.to_owned()));
    for (category, event) in &events {
        floor
            .attach(category, event)
            .map_err(|e| permission_or(e, format!("attaching floor to {category}:{event}")))?;
    }
    Ok(Floor {
        _ebpf: ebpf,
        attached: events.len(),
    })
}

/// `sockwatch-tui --attach-floor`: attaches, prints one JSON line
/// (`{"event":"start","probe":"floor","pid":N,"attached":N}`), and holds the programs until
/// SIGTERM, SIGINT or `duration`. They are detached before the process exits.
pub async fn hold(duration: Option<Duration>) -> anyhow::Result<()> {
    let floor = attach()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{{\"event\":\"start\",\"probe\":\"floor\",\"pid\":{},\"attached\":{}}}",
        std::process::id(),
        floor.attached
    )?;
    out.flush()?;
    drop(out);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let deadline = tokio::time::sleep(duration.unwrap_or(Duration::from_secs(86_400)));
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        () = deadline => {}
    }
    drop(floor);
    Ok(())
}
