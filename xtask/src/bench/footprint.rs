//! User-space cost: the CPU time and memory of `sockwatch-tui --json` (stdout to a file)
//! while idle, while many sockets are open, and under churn. A fresh sockwatch for each phase,
//! so each peak RSS is that phase's own.

use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{
    conditions::{self, Binaries, Output, Sockwatch},
    kernel,
};

#[derive(Clone, Debug)]
pub enum Load {
    Idle,
    /// This many loopback connections held open (two tracked sockets each).
    Hold(usize),
    /// TCP lifecycles at this many events per second (4 events per connection).
    Churn(u64),
}

impl Load {
    pub fn label(&self) -> String {
        match self {
            Self::Idle => "idle".into(),
            Self::Hold(connections) => format!("{} open sockets", 2 * connections),
            Self::Churn(rate) => format!(
                "churn, {} events/s",
                super::stats::rate(*rate as f64).trim_end_matches("/s")
            ),
        }
    }
}

pub struct Plan {
    pub loads: Vec<Load>,
    pub secs: f64,
}

#[derive(Clone, Debug)]
pub struct PhaseResult {
    pub load: Load,
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
    pub peak_rss_kib: u64,
    /// The peak as it was right after start-up (attached, /proc scanned), before any load.
    pub startup_peak_kib: u64,
    pub rss_kib: u64,
    /// The current RSS by kind: anonymous (heap), file-backed (the binary), shared memory
    /// (the ring buffer's mapping).
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub rss_shmem_kib: u64,
    /// How often sockwatch was woken up, per second.
    pub wakeups_per_sec: f64,
    /// Sockets sockwatch tracked at the end (its `end` record's `open`).
    pub tracked: u64,
    pub secs: f64,
}

pub fn run(bins: &Binaries, plan: &Plan) -> Result<Vec<PhaseResult>> {
    let mut results = Vec::new();
    for (i, load) in plan.loads.iter().enumerate() {
        let result = run_phase(bins, load, plan.secs, i)
            .with_context(|| format!("user-space cost, {}", load.label()))?;
        crate::cmd::say(format!(
            "bench: user space, {}: CPU {:.2}% of a core, peak RSS {:.1} MiB, {} tracked",
            load.label(),
            result.cpu_percent,
            result.peak_rss_kib as f64 / 1024.0,
            result.tracked
        ));
        results.push(result);
    }
    Ok(results)
}

fn run_phase(bins: &Binaries, load: &Load, secs: f64, index: usize) -> Result<PhaseResult> {
    kernel::wait_detached(Duration::from_secs(90))?;
    let output = bins.work.join(format!("footprint-{index}.jsonl"));
    let sockwatch = Sockwatch::start(bins, &[], Output::File(output.clone()), None)?;
    let pid = sockwatch.pid();
    let startup_peak_kib = memory_kib(pid)?.peak;
    let mut holder = None;
    let mut churn = None;
    match load {
        Load::Idle => {}
        Load::Hold(connections) => holder = Some(hold(bins, *connections)?),
        Load::Churn(rate) => {
            let mut command = Command::new(&bins.load);
            command
                .args(["flood", "--tcp", "--secs", &(secs + 2.0).to_string()])
                .args(["--rate", &(rate / 4).max(1).to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            churn = Some(conditions::spawn(&mut command)?);
        }
    }
    // The burst of opening connections (or the churn's start) settles first.
    thread::sleep(Duration::from_secs(1));
    let cpu_before = cpu_ns(pid)?;
    let wakeups_before = wakeups(pid)?;
    let wall = Instant::now();
    thread::sleep(Duration::from_secs_f64(secs));
    let cpu = cpu_ns(pid)? - cpu_before;
    let woken = wakeups(pid)? - wakeups_before;
    let elapsed = wall.elapsed();
    let memory = memory_kib(pid)?;
    // Stopped while the sockets are still open: its end record counts them.
    let (status, _) = sockwatch.stop()?;
    if let Some(mut holder) = holder {
        drop(holder.stdin.take());
        holder.wait()?;
    }
    if let Some(churn) = churn {
        conditions::terminate(churn, libc::SIGTERM)?;
    }
    if !status.success() {
        bail!("sockwatch exited with {status}");
    }
    let tracked = end_record(&output)?["open"].as_u64().unwrap_or(0);
    Ok(PhaseResult {
        load: load.clone(),
        cpu_percent: cpu as f64 / elapsed.as_nanos() as f64 * 100.0,
        wakeups_per_sec: woken as f64 / elapsed.as_secs_f64(),
        peak_rss_kib: memory.peak,
        startup_peak_kib,
        rss_kib: memory.rss,
        rss_anon_kib: memory.anon,
        rss_file_kib: memory.file,
        rss_shmem_kib: memory.shmem,
        tracked,
        secs: elapsed.as_secs_f64(),
    })
}

/// `sockwatch-load hold`, once it says its connections are open.
fn hold(bins: &Binaries, connections: usize) -> Result<Child> {
    let mut command = Command::new(&bins.load);
    command
        .args(["hold", "--connections", &connections.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = conditions::spawn(&mut command)?;
    let stdout = child.stdout.take().context("hold's stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    if !line.starts_with("held=") {
        let _ = child.kill();
        bail!("sockwatch-load hold did not open its connections (it printed {line:?})");
    }
    Ok(child)
}

/// CPU time of every thread of `pid`, in ns (from schedstat; from stat's ticks without it).
pub fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0u64;
    let mut found = false;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        if let Ok(text) = fs::read_to_string(path) {
            if let Some(ns) = text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
            {
                total += ns;
                found = true;
            }
        }
    }
    if found {
        return Ok(total);
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = stat_ticks(&stat).context("parsing /proc/PID/stat")?;
    // USER_HZ is 100 on Linux.
    Ok(ticks * 10_000_000)
}

/// How often the threads of `pid` have gone to sleep and been woken up since they started
/// (the sum of their `voluntary_ctxt_switches`).
pub fn wakeups(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(status) = fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// utime + stime from a /proc/PID/stat line (fields 14 and 15; the name may hold spaces).
fn stat_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

struct Memory {
    peak: u64,
    rss: u64,
    anon: u64,
    file: u64,
    shmem: u64,
}

/// From /proc/PID/status, in KiB: VmHWM, VmRSS and its parts.
fn memory_kib(pid: u32) -> Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("no {name} in /proc/PID/status"))
    };
    Ok(Memory {
        peak: field("VmHWM:")?,
        rss: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
        shmem: field("RssShmem:")?,
    })
}

fn end_record(path: &std::path::Path) -> Result<Value> {
    let text = fs::read_to_string(path)?;
    let last = text.lines().last().context("sockwatch printed nothing")?;
    let end: Value = serde_json::from_str(last).context("parsing the last record")?;
    if end["event"] != "end" {
        bail!("sockwatch's last record is not `end`: {last}");
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skip_a_name_with_spaces() {
        let stat = "1234 (tokio (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0";
        assert_eq!(stat_ticks(stat), Some(22));
    }

    #[test]
    fn labels() {
        assert_eq!(Load::Hold(5000).label(), "10000 open sockets");
        assert_eq!(Load::Churn(20_000).label(), "churn, 20k events/s");
        assert_eq!(Load::Idle.label(), "idle");
    }
}
