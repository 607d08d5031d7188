//! `cargo xtask bench`: what sockwatch costs the programs it watches, and what it can take:
//! per-syscall overhead under six conditions (`overhead.rs`, `tracer.rs`), throughput, scale and
//! the table's criterion benchmark (`pipeline.rs`), the dashboard at 100k sockets in tmux
//! (`dashboard.rs`), as tables (`report.rs`) in bench/results.md.

mod dashboard;
mod overhead;
mod pipeline;
mod report;
mod tracer;

use std::time::{Duration, Instant};
use std::{fs, path::Path, path::PathBuf, process::Command, str::FromStr, thread};

use anyhow::{bail, Context, Result};

use crate::{cmd, cmd::say, setup};

/// The programs under test, where the logs go, and the overhead pass's CPUs: each loop alone on
/// `.0`, the tracer on `.1`, so a loop pays for the hooks, not for a share of its core.
pub struct Binaries {
    pub sockwatch: PathBuf,
    pub load: PathBuf,
    pub work: PathBuf,
    pub cpus: Option<(usize, usize)>,
}

/// The steps, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    Overhead,
    Throughput,
    Scale,
    Table,
    Dashboard,
}

/// `smoke` (`cargo xtask test`): one tiny round of everything, debug build, in target/bench/smoke.
/// `only`: that step alone, its results in target/bench.
pub fn run(smoke: bool, rounds: Option<usize>, only: Option<Step>) -> Result<()> {
    if !cmd::is_root()? {
        bail!("`cargo xtask bench` must run as root: it loads eBPF programs and runs bpftrace");
    }
    setup::run_for(&[setup::Need::Build, setup::Need::Bench])?;
    let bins = build(smoke)?;
    // Five: with pinned loops the spread is small; the whole run takes about 10 minutes on 2
    // cores, half of it the dashboard at scale.
    let rounds = rounds.unwrap_or(if smoke { 1 } else { 5 }).max(1);
    let (mut results, started, ticks) = (report::Results::default(), Instant::now(), cpu_ticks());
    tracer::set_subreaper(true)?;
    let measured = measure(&bins, smoke, rounds, only, &mut results);
    tracer::set_subreaper(false)?;
    measured?;
    let text = results.text(&header(smoke, rounds, started, ticks));
    println!("{text}");
    let out = (!smoke && only.is_none()).then(|| cmd::workspace_root().join("bench"));
    let path = out.unwrap_or(bins.work).join("results.md");
    let markdown = format!("{PREAMBLE}\n```text\n{text}```\n");
    fs::write(&path, markdown).with_context(|| format!("writing {}", path.display()))?;
    say(format!("bench: wrote {}", path.display()));
    Ok(())
}

fn measure(
    bins: &Binaries,
    smoke: bool,
    rounds: usize,
    only: Option<Step>,
    r: &mut report::Results,
) -> Result<()> {
    let runs = |step| only.is_none_or(|only| only == step);
    if runs(Step::Overhead) {
        say("bench: 1. per-syscall overhead");
        // Other tracers (tests in another worktree) come and go; a smoke run does not wait.
        let wait = Duration::from_secs(if smoke { 2 } else { 120 });
        r.overhead = overhead::run(bins, rounds, smoke, wait)?;
    }
    if runs(Step::Throughput) {
        throughput(bins, smoke, r)?;
    }
    if runs(Step::Scale) {
        say("bench: 3. scale");
        let sockets: &[u64] = if smoke { &[0, 20] } else { &[0, 1_000, 10_000] };
        r.scale = pipeline::scale(bins, sockets, if smoke { 1.0 } else { 10.0 })?;
    }
    if runs(Step::Table) {
        say("bench: 4. table refresh and render (criterion)");
        r.table = pipeline::table(&bins.work, smoke)?;
    }
    if runs(Step::Dashboard) {
        say("bench: 5. the dashboard at scale (tmux)");
        // 100,000 sockets: ten holders, as a process may hold 20,000 fds here. Measured over
        // 150 s: the TCP health reads are spaced to 1% of a core (one every 10 s or so at
        // 100k), the full reads and the checks against /proc to half a percent each (20 s, and
        // 140 s with its own full read): a window holds one check or two by chance (0.7 s each,
        // half a percent of the window), the rest many times over, near their share.
        let (holders, per_holder, secs) = if smoke {
            (1, 10, 1.0)
        } else {
            (10, 5_000, 150.0)
        };
        r.dashboard = Some(dashboard::run(bins, holders, per_holder, secs)?);
    }
    Ok(())
}

fn throughput(bins: &Binaries, smoke: bool, r: &mut report::Results) -> Result<()> {
    say("bench: 2. throughput");
    // `(lifecycle events/s, tcp)`, 0: flat out; 210k, as the load's pacing undershoots 200k.
    let udp = [50_000, 100_000, 210_000, 0].map(|rate| (rate, false));
    let steps = [&udp[..], &[(0, true)]].concat();
    let steps = if smoke { vec![(10_000, false)] } else { steps };
    let (secs, processes) = if smoke { (1.0, 1) } else { (3.0, 2) };
    r.throughput = pipeline::throughput(bins, &steps, secs, processes)?;
    Ok(())
}

const PREAMBLE: &str = "# sockwatch benchmark results

Written by `cargo xtask bench` (as root, release build; the README's Performance section says
what it runs).
Overhead: each `sockwatch-load` loop is timed under (a) nothing attached, (b) the floor:
bpftrace with empty actions on `sys_enter`/`sys_exit` of write, sendto and close (issue #10's
yardstick, the same for every backend), (c) `sockwatch-tui --json` with its default backend
(named in the column), (d) with `--probe tracepoint`, (e) with `--probe kprobe` (n/a where the
kernel has no kprobes), (f) bpftrace sending every `sendto` and `close` of every process to
user space and printing it. `events hooked` counts each condition's attached programs. Rounds
interleave a to f; an untraced run starts only once the previous tracer's programs are
detached and its processes gone. Figures are medians (min-max) over rounds; multiples are
taken round by round, `[k/n]`: valid in k rounds of n (the base's added cost positive, no other
tracer attached, sockwatch's send socket tracked). A verdict stands only on every round asked
for. Throughput (default backend) counts only the load's records; scale, the sockets sockwatch
really tracked. The dashboard at scale runs in tmux while ten processes open 5,000 loopback
connections each (100,000 sockets); its figures are read off its header and /proc.
";

/// Builds what the bench runs before anything is measured, so that no compiler competes.
fn build(smoke: bool) -> Result<Binaries> {
    let mut build = cmd::cargo();
    build.args(["build", "-p", "sockwatch-tui", "--bins"]);
    cmd::run(build.args((!smoke).then_some("--release")))?;
    if !smoke {
        let bench = "bench -p sockwatch-tui --bench table --no-run";
        cmd::run(cmd::cargo().args(bench.split(' ')))?;
    }
    let dir = cmd::target_dir().join(if smoke { "debug" } else { "release" });
    let work = cmd::target_dir().join(if smoke { "bench/smoke" } else { "bench" });
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let cpus = thread::available_parallelism().map_or(1, usize::from);
    Ok(Binaries {
        sockwatch: dir.join("sockwatch-tui"),
        load: dir.join("sockwatch-load"),
        work,
        cpus: (cpus >= 2).then_some((cpus - 1, 0)),
    })
}

/// Busy CPU ticks of the machine (/proc/stat: user nice system irq softirq steal) and of us and
/// our reaped children (/proc/self/stat, our name has no spaces: utime stime cutime cstime).
fn cpu_ticks() -> [u64; 2] {
    let machine = sum_fields("/proc/stat", &[1, 2, 3, 6, 7, 8]);
    [machine, sum_fields("/proc/self/stat", &[13, 14, 15, 16])]
}

/// The sum of the `wanted` whitespace-separated fields of a file (0 for any it lacks).
fn sum_fields(path: impl AsRef<Path>, wanted: &[usize]) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_default();
    let words = text.split_whitespace();
    let fields: Vec<u64> = words.map(|f| f.parse().unwrap_or(0)).collect();
    wanted.iter().map(|&i| fields.get(i).unwrap_or(&0)).sum()
}

/// The run's first lines: when, where, what, and how much CPU other processes took meanwhile.
fn header(smoke: bool, rounds: usize, started: Instant, ticks: [u64; 2]) -> String {
    let output = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output();
        let out = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        out.unwrap_or_else(|_| "?".into())
    };
    let root = cmd::workspace_root().to_string_lossy();
    let commit = output("git", &["-C", &root, "describe", "--always", "--dirty"]);
    let (date, kernel) = (output("date", &["-u", "+%F %R"]), output("uname", &["-r"]));
    let smoke = ["", "; SMOKE RUN (debug, tiny): the numbers mean nothing"][usize::from(smoke)];
    let (minutes, [all, ours]) = (started.elapsed().as_secs_f64() / 60.0, cpu_ticks());
    // A tick is 10 ms (USER_HZ is 100).
    let others = (all - ticks[0]).saturating_sub(ours - ticks[1]) as f64 / 100.0;
    let cpus = thread::available_parallelism().map_or(1, usize::from) as f64;
    let other = others / (minutes * 60.0 * cpus) * 100.0;
    format!(
        "sockwatch bench: {date} UTC, kernel {kernel}, {commit}{smoke}\n{rounds} rounds, \
         {minutes:.1} min; other processes used {other:.0}% of the machine's CPU meanwhile"
    )
}

/// The value after `key` up to a space, comma, quote or brace: `calls=` in a `sockwatch-load`
/// line, `"pid":` in a JSON record (no full parse: a throughput step prints ~700k of them).
fn field<T: FromStr>(line: &str, key: &str) -> Option<T> {
    let rest = line[line.find(key)? + key.len()..].trim_start();
    let end = rest.find(|c: char| matches!(c, ',' | '"' | '}') || c.is_whitespace());
    rest[..end.unwrap_or(rest.len())].parse().ok()
}
