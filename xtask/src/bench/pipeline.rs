//! What sockwatch can take. Throughput: socket lifecycles at set rates from `sockwatch-load
//! flood` processes; only the records of the load's pids count, against what the load made and
//! what sockwatch says it lost. Scale: CPU and peak RSS while N idle sockets are tracked (held
//! open by `sockwatch-load hold`), counted from sockwatch's `open` records. The table: criterion's
//! `sockwatch-tui/benches/table.rs` (refresh, filtered listing, render), from its sample files.

use std::time::{Duration, Instant};
use std::{fs, path::Path, process::Child, process::Command, process::Stdio, thread};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use super::{field, sum_fields, tracer, tracer::Tracer, Binaries};
use crate::cmd;

/// Opening 5,000 connections (and sockwatch taking in their 10,000 records) on a busy machine.
const HOLD_TIMEOUT: Duration = Duration::from_secs(60);

/// A throughput step: `rate` lifecycle events/s of all processes (0: flat out); `offered`, the
/// load's lifecycle events; `printed`, sockwatch's records of its pids; `lost`, the `end`
/// record's (any process; `None` without one); `cpu`, sockwatch's, in percent of one core.
#[derive(Clone, Copy, Debug, Default)]
pub struct Step {
    pub rate: u64,
    pub tcp: bool,
    pub offered: u64,
    pub printed: u64,
    pub secs: f64,
    pub lost: Option<u64>,
    pub cpu: f64,
}

impl Step {
    pub fn label(&self) -> String {
        let proto = if self.tcp { "TCP" } else { "UDP" };
        match self.rate {
            0 => format!("{proto}, flat out"),
            rate => format!("{proto}, {}k/s", rate / 1000),
        }
    }

    pub fn lossless(&self) -> bool {
        self.lost == Some(0) && self.printed == self.offered
    }

    pub fn offered_per_sec(&self) -> f64 {
        self.offered as f64 / self.secs
    }
}

pub fn throughput(bins: &Binaries, steps: &[(u64, bool)], secs: f64, n: u64) -> Result<Vec<Step>> {
    let run = |&(rate, tcp): &(u64, bool)| {
        let mut step = Step::default();
        (step.rate, step.tcp) = (rate, tcp);
        run_step(bins, step, secs, n).context(step.label())
    };
    steps.iter().map(run).collect()
}

fn run_step(bins: &Binaries, mut step: Step, secs: f64, processes: u64) -> Result<Step> {
    let sockwatch = Tracer::sockwatch(bins, None, "auto")?;
    // sockwatch's records per lifecycle: TCP connect, accept, two closes; UDP connect, close.
    let per_cycle = if step.tcp { 4 } else { 2 };
    let rate = step.rate.div_ceil(processes * per_cycle).to_string();
    let mut command = Command::new(&bins.load);
    command.args(["flood", "--secs", &secs.to_string(), "--rate", &rate]);
    command.args(step.tcp.then_some("--tcp"));
    command.stdout(Stdio::piped());
    let loads = (0..processes).map(|_| tracer::spawn(&mut command));
    let loads = loads.collect::<Result<Vec<_>>>()?;
    let (cpu_before, wall) = (cpu_ns(sockwatch.pid())?, Instant::now());
    let pids: Vec<u32> = loads.iter().map(Child::id).collect();
    for load in loads {
        let output = load.wait_with_output().context("waiting for a flood")?;
        let (status, stdout) = (output.status, String::from_utf8_lossy(&output.stdout));
        ensure!(status.success(), "sockwatch-load flood failed ({status})");
        let printed = field::<u64>(&stdout, "cycles=").zip(field(&stdout, "secs="));
        let (cycles, took) = printed.with_context(|| format!("flood printed {stdout:?}"))?;
        step.offered += cycles * per_cycle;
        step.secs = step.secs.max(took);
    }
    let cpu = cpu_ns(sockwatch.pid())?.saturating_sub(cpu_before);
    step.cpu = cpu as f64 / wall.elapsed().as_nanos() as f64 * 100.0;
    // sockwatch reads what is left in its ring buffer before its `end` record.
    let records = sockwatch.stop()?;
    step.printed = pids.iter().map(|&pid| records.of(pid).lifecycle).sum();
    step.lost = records.end_lost;
    Ok(step)
}

/// A scale phase: sockets held open, those sockwatch tracked (its `open` records for the
/// holder), lifecycle records of other processes (zero: the idle phase was idle), sockwatch's
/// CPU over the window in percent of one core, and its peak RSS in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phase {
    pub sockets: u64,
    pub tracked: u64,
    pub others: u64,
    pub cpu_percent: f64,
    pub peak_rss_kib: u64,
}

/// A fresh sockwatch per count of `sockets` (so each peak is its own), measured over `secs`.
pub fn scale(bins: &Binaries, sockets: &[u64], secs: f64) -> Result<Vec<Phase>> {
    let phase = |&n: &u64| run_phase(bins, n, secs).with_context(|| format!("{n} sockets"));
    sockets.iter().map(phase).collect()
}

fn run_phase(bins: &Binaries, sockets: u64, secs: f64) -> Result<Phase> {
    let sockwatch = Tracer::sockwatch(bins, None, "auto")?;
    let mut phase = Phase::default();
    // Both ends of each loopback connection are tracked: half as many connections. It holds
    // them until its stdin closes.
    let mut command = Command::new(&bins.load);
    command.args(["hold", "--connections", &(sockets / 2).to_string()]);
    let mut holder = tracer::spawn(command.stdin(Stdio::piped()).stdout(Stdio::null()))?;
    // The window starts once sockwatch has taken in every connect and accept of the holder
    // (if it never does, `tracked` tells).
    tracer::poll(HOLD_TIMEOUT, || {
        let seen = sockwatch.records()?.of(holder.id()).lifecycle >= sockets;
        Ok((seen || holder.try_wait()?.is_some()).then_some(()))
    })?;
    let (pid, wall) = (sockwatch.pid(), Instant::now());
    let cpu_before = cpu_ns(pid)?;
    thread::sleep(Duration::from_secs_f64(secs));
    let cpu = cpu_ns(pid)?.saturating_sub(cpu_before);
    phase.cpu_percent = cpu as f64 / wall.elapsed().as_nanos() as f64 * 100.0;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    phase.peak_rss_kib = field(&status, "VmHWM:").context("no VmHWM in /proc/PID/status")?;
    // Stopped while the sockets are open: its `open` records list those it tracks.
    let records = sockwatch.stop()?;
    drop(holder.stdin.take());
    let held = holder.wait()?;
    ensure!(held.success(), "sockwatch-load hold failed ({held})");
    let all: u64 = records.by_pid.values().map(|r| r.lifecycle).sum();
    let holders = records.of(holder.id());
    (phase.sockets, phase.tracked, phase.others) = (sockets, holders.open, all - holders.lifecycle);
    Ok(phase)
}

/// CPU time of every thread of `pid` so far, in ns (the first field of each schedstat).
pub(super) fn cpu_ns(pid: u32) -> Result<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))?;
    let ns = tasks.map(|task| Ok(sum_fields(task?.path().join("schedstat"), &[0])));
    ns.sum()
}

/// One size: ns per iteration of `refresh`, `refresh_tenth`, `visible` and `render`, every
/// sample.
#[derive(Clone, Debug)]
pub struct Rows {
    pub rows: usize,
    pub parts: [Vec<f64>; 4],
}

/// Runs the benchmark; a smoke run measures 100 rows briefly (dev profile), through the same files.
pub fn table(work: &Path, smoke: bool) -> Result<Vec<Rows>> {
    let (home, log) = (work.join("criterion"), work.join("criterion.log"));
    let mut bench = cmd::cargo();
    bench.args(["bench", "-p", "sockwatch-tui", "--bench", "table"]);
    let mut sizes: &[usize] = &[100, 10_000, 100_000];
    if smoke {
        sizes = &[100];
        bench.args(["--profile", "dev", "--", "--warm-up-time", "0.05"]);
        bench.args(["--measurement-time", "0.1", "table/100/"]);
    }
    let stderr = fs::File::create(work.join("criterion.stderr"))?;
    bench.env("CRITERION_HOME", &home).stderr(stderr);
    let ran = cmd::run(bench.stdout(fs::File::create(&log)?));
    ran.with_context(|| format!("the table benchmark failed; see {}", log.display()))?;
    let read = |rows: usize, part: &str| {
        let file = home.join(format!("table_{rows}/{part}/new/sample.json"));
        let text = fs::read_to_string(&file);
        let text = text.with_context(|| format!("reading {}", file.display()))?;
        per_iteration(&text).with_context(|| format!("parsing {}", file.display()))
    };
    let size = |&rows: &usize| -> Result<Rows> {
        let parts = ["refresh", "refresh_tenth", "visible", "render"].map(|p| read(rows, p));
        let [refresh, tenth, visible, render] = parts;
        let parts = [refresh?, tenth?, visible?, render?];
        Ok(Rows { rows, parts })
    };
    sizes.iter().map(size).collect()
}

/// Per-iteration times from a criterion `sample.json` (`iters` and total `times` per sample).
fn per_iteration(text: &str) -> Result<Vec<f64>> {
    let sample: Value = serde_json::from_str(text)?;
    let numbers = |key: &str| -> Vec<f64> {
        let all = sample[key].as_array().into_iter().flatten();
        all.filter_map(Value::as_f64).collect()
    };
    let (iters, times) = (numbers("iters"), numbers("times"));
    let complete = !iters.is_empty() && iters.len() == times.len();
    ensure!(complete, "no samples");
    Ok(iters.iter().zip(&times).map(|(i, t)| t / i).collect())
}
