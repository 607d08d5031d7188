//! What the kernel has attached and what a tracer still holds: the facts the conditions wait
//! on before anything is measured.

use std::{collections::BTreeSet, fs, path::Path, process::Command, thread, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Detaching takes the kernel a grace period per tracepoint: seconds for ~40 of them.
const DETACH_TIMEOUT: Duration = Duration::from_secs(90);
/// Once the detaching process is gone, a little longer for deferred work (RCU callbacks).
const SETTLE: Duration = Duration::from_millis(250);

/// The tracepoints sockwatch's tracepoint backend attaches (`sockwatch-tui/src/probes`): the
/// exit of every syscall in `SYSCALLS`, the entry of those with `enter`, optional ones only
/// where this kernel has them (setup mounts tracefs), and `sched:sched_process_exit`.
pub fn sockwatch_tracepoints() -> Vec<String> {
    let mut all = Vec::new();
    for syscall in sockwatch_common::SYSCALLS {
        for phase in ["enter", "exit"] {
            let event = format!("sys_{phase}_{}", syscall.name);
            let path = format!("/sys/kernel/tracing/events/syscalls/{event}");
            let exists = !syscall.optional || Path::new(&path).exists();
            if exists && (syscall.enter || phase == "exit") {
                all.push(format!("tracepoint:syscalls:{event}"));
            }
        }
    }
    all.push("tracepoint:sched:sched_process_exit".into());
    all
}

/// `bpftool -j ARGS`: the list it prints (some versions print nothing for an empty one).
fn bpftool(args: &str) -> Result<Vec<Value>> {
    let mut command = Command::new("bpftool");
    let output = command.arg("-j").args(args.split(' ')).output();
    let output = output.context("cannot run bpftool (cargo xtask setup installs it)")?;
    anyhow::ensure!(output.status.success(), "bpftool {args}: {}", output.status);
    let text = String::from_utf8_lossy(&output.stdout);
    let text = if text.trim().is_empty() { "[]" } else { &text };
    serde_json::from_str(text).with_context(|| format!("parsing `bpftool {args}`"))
}

/// Programs attached to tracepoints: aya's BPF links (`bpftool link`), and the perf event
/// fds bpftrace attaches through (`bpftool perf`) as `(holder's pid, tracepoint)`.
pub fn attachments() -> Result<(usize, Vec<(u64, String)>)> {
    let (links, perf) = (bpftool("link show")?, bpftool("perf show")?);
    let links = links.iter().filter(|l| l["type"] == "perf_event").count();
    let perf = perf.into_iter().map(|p| {
        let name = p["tracepoint"].as_str().unwrap_or("?");
        (p["pid"].as_u64().unwrap_or(0), name.to_owned())
    });
    Ok((links, perf.collect()))
}

/// The programs `pid` holds (prog and link fds both name theirs in fdinfo), and how many of
/// its fds are perf links: one per tracepoint aya attached.
pub fn held_by(pid: u32) -> Result<(BTreeSet<u64>, usize)> {
    let (mut progs, mut links) = (BTreeSet::new(), 0);
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let info = fs::read_to_string(entry?.path()).unwrap_or_default();
        for line in info.lines() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["prog_id:", id] => progs.extend(id.parse::<u64>().ok()),
                ["link_type:", "perf"] => links += 1,
                _ => {}
            }
        }
    }
    Ok((progs, links))
}

/// While set, orphaned descendants (sockwatch's detaching child) become our children instead
/// of init's, so that we can tell when they are gone.
pub fn set_subreaper(on: bool) -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, libc::c_ulong::from(on)) };
    let error = std::io::Error::last_os_error();
    anyhow::ensure!(set == 0, "prctl(PR_SET_CHILD_SUBREAPER): {error}");
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
    fn the_floor_hooks_what_sockwatch_hooks() {
        let all = sockwatch_tracepoints().join(",");
        assert!(all.contains("tracepoint:syscalls:sys_enter_connect,"));
        assert!(all.contains("tracepoint:syscalls:sys_exit_execve,"));
        assert!(!all.contains("sys_enter_execve,"));
        assert!(all.ends_with(",tracepoint:sched:sched_process_exit"));
    }
}
