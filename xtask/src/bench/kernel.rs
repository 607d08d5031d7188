//! What the kernel has attached and what a tracer still holds: the facts the conditions wait
//! on before anything is measured.

use std::{collections::BTreeSet, fs, path::Path, process::Command, thread, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// Detaching takes the kernel a grace period per tracepoint: seconds for ~40 of them.
const DETACH_TIMEOUT: Duration = Duration::from_secs(90);
/// Once the detaching process is gone, a little longer for deferred work (RCU callbacks).
const SETTLE: Duration = Duration::from_millis(250);

/// The events sockwatch's `probe` backend attaches, sorted, as its link fds name them: the exit of
/// every syscall in `SYSCALLS`, the entry of those with `enter` (the socket backend leaves out
/// those that move bytes), optional ones only where this kernel has them, `sched_process_exit`
/// and the extras below. `None` for kprobes, whose links name no event.
pub fn sockwatch_events(probe: &str) -> Option<Vec<String>> {
    let socket = match probe {
        "socket" => true,
        "tracepoint" => false,
        _ => return None,
    };
    let mut all = vec!["sched_process_exit".to_owned()];
    for syscall in sockwatch_common::SYSCALLS {
        for phase in ["enter", "exit"] {
            let event = format!("sys_{phase}_{}", syscall.name);
            let path = format!("/sys/kernel/tracing/events/syscalls/{event}");
            let hooked = !(socket && syscall.moves_bytes) && (syscall.enter || phase == "exit");
            if hooked && (!syscall.optional || Path::new(&path).exists()) {
                all.push(event);
            }
        }
    }
    // The socket layer's raw tracepoints (`sockwatch_tui::kernel::loader::SOCKET_TRACEPOINTS`);
    // for the syscall backends, the marks of what they cannot count (io_uring, a fork).
    let extra: &[&str] = if socket {
        &[
            "sock_send_length",
            "sock_recv_length",
            "inet_sock_set_state",
            "tcp_destroy_sock",
            "sched_process_fork",
        ]
    } else {
        &["io_uring_file_get", "sched_process_fork"]
    };
    let io_uring = Path::new("/sys/kernel/tracing/events/io_uring/io_uring_file_get").exists();
    all.extend(extra.iter().map(|e| (*e).to_owned()));
    all.retain(|e| io_uring || e != "io_uring_file_get");
    all.sort_unstable();
    Some(all)
}

/// `bpftool -j ARGS`: the list it prints (some versions print nothing for an empty one).
fn bpftool(args: &str) -> Result<Vec<Value>> {
    let mut command = Command::new("bpftool");
    let output = command.arg("-j").args(args.split(' ')).output();
    let output = output.context("cannot run bpftool (cargo xtask setup installs it)")?;
    ensure!(output.status.success(), "bpftool {args}: {}", output.status);
    let text = String::from_utf8_lossy(&output.stdout);
    let text = if text.trim().is_empty() { "[]" } else { &text };
    serde_json::from_str(text).with_context(|| format!("parsing `bpftool {args}`"))
}

/// Programs attached to events: BPF links of the kinds aya attaches by (`perf_event`,
/// `raw_tracepoint`), and the perf event and raw tracepoint fds processes hold (`bpftool perf`:
/// bpftrace's tracepoints, raw tracepoint links again) as `(holder's pid, event)`.
pub fn attachments() -> Result<(usize, Vec<(u64, String)>)> {
    let (links, perf) = (bpftool("link show")?, bpftool("perf show")?);
    let hook = |l: &&Value| l["type"] == "perf_event" || l["type"] == "raw_tracepoint";
    let links = links.iter().filter(hook).count();
    let perf = perf.into_iter().map(|p| {
        let name = p["tracepoint"].as_str().unwrap_or("?");
        (p["pid"].as_u64().unwrap_or(0), name.to_owned())
    });
    Ok((links, perf.collect()))
}

/// What a process holds: its programs (prog and link fds both name theirs in fdinfo), its
/// links (one per event aya attached), the events they name (tracepoints and raw tracepoints
/// do), and how many are raw tracepoint links (`bpftool perf` lists those too).
#[derive(Debug, Default)]
pub struct Held {
    pub progs: BTreeSet<u64>,
    pub links: usize,
    pub events: Vec<String>,
    pub raw: usize,
}

pub fn held_by(pid: u32) -> Result<Held> {
    let (mut held, dir) = (Held::default(), format!("/proc/{pid}/fdinfo"));
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let info = fs::read_to_string(entry?.path()).unwrap_or_default();
        for line in info.lines() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["prog_id:", id] => held.progs.extend(id.parse::<u64>().ok()),
                ["link_type:", kind] => {
                    held.links += 1;
                    held.raw += usize::from(kind == "raw_tracepoint");
                }
                ["tp_name:", name] => held.events.push(name.to_owned()),
                _ => {}
            }
        }
    }
    held.events.sort_unstable();
    Ok(held)
}

/// While set, orphaned descendants (sockwatch's detaching child) become our children instead
/// of init's, so that we can tell when they are gone.
pub fn set_subreaper(on: bool) -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, libc::c_ulong::from(on)) };
    let error = std::io::Error::last_os_error();
    ensure!(set == 0, "prctl(PR_SET_CHILD_SUBREAPER): {error}");
    Ok(())
}

/// Whether a child process of ours named `comm` is still running; exited ones are reaped.
fn child_running(comm: &str) -> bool {
    let (me, mut running) = (std::process::id().to_string(), false);
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // "pid (name) state ppid ...": the name may hold spaces and parentheses.
        let (pid, rest) = stat.split_once(" (").unwrap_or_default();
        let (name, rest) = rest.rsplit_once(") ").unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().take(2).collect();
        // The kernel keeps 15 bytes of a name.
        if fields.get(1) != Some(&me.as_str()) || comm.get(..15).unwrap_or(comm) != name {
            continue;
        }
        if fields[0] != "Z" {
            running = true;
        } else if let Ok(pid) = pid.parse::<libc::pid_t>() {
            // SAFETY: reaping a zombie child that no `Child` handle owns (the tracer's own
            // process was waited for before this is called).
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
    running
}

/// Polls `check` until it gives a value, for at most `limit`: `None` if it never did.
pub fn poll<T>(limit: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<Option<T>> {
    let start = std::time::Instant::now();
    loop {
        match check()? {
            None if start.elapsed() < limit => thread::sleep(Duration::from_millis(50)),
            value => return Ok(value),
        }
    }
}

/// Waits until a stopped tracer is fully detached: none of its programs is loaded any more
/// and no process of it (named `comm`) is left, for the last one runs the detaches in its
/// close or exit path, and syscalls stay slow until that is over.
pub fn wait_detached(progs: &BTreeSet<u64>, comm: &str) -> Result<()> {
    let detached = poll(DETACH_TIMEOUT, || {
        let loaded = bpftool("prog show")?;
        let mut ids = loaded.iter().filter_map(|p| p["id"].as_u64());
        Ok((!ids.any(|id| progs.contains(&id)) && !child_running(comm)).then_some(()))
    })?;
    if detached.is_none() {
        bail!("{comm}'s programs were still attached after {DETACH_TIMEOUT:?}");
    }
    thread::sleep(SETTLE);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_backend_hooks_lifecycle_syscalls_and_the_socket_layer() {
        let [tracepoint, socket] = ["tracepoint", "socket"].map(|p| sockwatch_events(p).unwrap());
        let has = |events: &[String], e: &str| events.iter().any(|x| x == e);
        for e in ["sys_enter_connect", "sys_exit_execve", "sched_process_exit"] {
            assert!(has(&tracepoint, e) && has(&socket, e), "{e}");
        }
        assert!(has(&tracepoint, "sys_enter_sendto") && !has(&socket, "sys_enter_sendto"));
        assert!(has(&socket, "sock_send_length") && !has(&tracepoint, "sock_send_length"));
        assert!(!has(&tracepoint, "sys_enter_execve"));
        // 14 syscalls that move bytes (or mark partial) leave with their entries and exits;
        // the socket backend's 4 raw tracepoints (bytes, and the release of a handed-off
        // socket) replace io_uring's mark; both note forks.
        assert_eq!(tracepoint.len() - socket.len(), 25);
        assert_eq!(sockwatch_events("kprobe"), None);
    }
}
