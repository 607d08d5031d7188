//! Per-syscall overhead on the traced program: each workload under each condition, the
//! conditions interleaved round by round (a, b, c, d, a, b, c, d, ...), so that drift on a
//! shared machine lands on every condition alike.

use std::{collections::BTreeMap, time::Instant};

use anyhow::{bail, Context, Result};

use super::{
    conditions::{Attached, Binaries, Condition, CONDITIONS},
    footprint,
    kernel::{self, BpfStats},
    stats::{self, Summary},
};
use crate::cmd::say;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    Send,
    WriteDevnull,
    Close,
    Churn,
}

pub const WORKLOADS: [Workload; 4] = [
    Workload::Send,
    Workload::WriteDevnull,
    Workload::Close,
    Workload::Churn,
];

impl Workload {
    /// The `sockwatch-load` mode.
    pub fn mode(self) -> &'static str {
        match self {
            Self::Send => "bench-send",
            Self::WriteDevnull => "bench-write-devnull",
            Self::Close => "bench-close",
            Self::Churn => "bench-churn",
        }
    }

    /// What one call of the loop is.
    pub fn label(self) -> &'static str {
        match self {
            Self::Send => "send() 64 B, tracked TCP socket",
            Self::WriteDevnull => "write() 64 B to /dev/null",
            Self::Close => "close() of a dup of /dev/null",
            Self::Churn => "TCP connect+accept+send+close",
        }
    }

    /// Calls per run when there is no calibration (smoke runs).
    fn smoke_calls(self) -> u64 {
        match self {
            Self::Send => 5_000,
            Self::WriteDevnull | Self::Close => 20_000,
            Self::Churn => 300,
        }
    }

    /// Calls of the calibration run.
    fn probe_calls(self) -> u64 {
        match self {
            Self::Send => 50_000,
            Self::WriteDevnull | Self::Close => 200_000,
            Self::Churn => 2_000,
        }
    }

    /// The programs whose run time is this workload's own (for the cost attribution).
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Self::Send => &["enter_sendto", "exit_sendto"],
            Self::WriteDevnull => &["enter_write", "exit_write"],
            Self::Close => &["enter_close", "exit_close"],
            Self::Churn => &[
                "enter_socket",
                "exit_socket",
                "enter_connect",
                "exit_connect",
                "enter_accept4",
                "exit_accept4",
                "enter_sendto",
                "exit_sendto",
                "enter_close",
                "exit_close",
            ],
        }
    }
}

/// What one run of a loop reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Run {
    pub ns_per_call: f64,
    /// Every call the run made, the untimed warm-up included.
    pub all_calls: u64,
}

/// Runs one workload: `sockwatch-load MODE --calls N`.
pub fn run_workload(bins: &Binaries, workload: Workload, calls: u64) -> Result<Run> {
    let output = Binaries::command(&bins.load, bins.workload_cpu())
        .args([workload.mode(), "--calls", &calls.to_string()])
        .output()
        .with_context(|| format!("running sockwatch-load {}", workload.mode()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "sockwatch-load {} failed ({}): {}",
            workload.mode(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_run(&stdout).with_context(|| {
        format!(
            "sockwatch-load {} printed no ns_per_call: {stdout}",
            workload.mode()
        )
    })
}

/// `mode=bench-send calls=N warmup=W secs=S ns_per_call=X` → X and N + W.
pub fn parse_run(line: &str) -> Option<Run> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
    };
    Some(Run {
        ns_per_call: field("ns_per_call")?.parse().ok()?,
        all_calls: field("calls")?.parse::<u64>().ok()?
            + field("warmup").map_or(Some(0), |w| w.parse().ok())?,
    })
}

/// Every sample of one workload: `samples[condition][round]` in ns per call.
#[derive(Clone, Debug)]
pub struct WorkloadSamples {
    pub workload: Workload,
    pub calls: u64,
    pub samples: [Vec<f64>; 4],
}

/// What the report shows for one workload.
#[derive(Clone, Debug)]
pub struct WorkloadSummary {
    pub workload: Workload,
    pub calls: u64,
    /// ns per call under each condition.
    pub ns: [Summary; 4],
    /// Per round, x / (a) for each condition.
    pub ratio: [Summary; 4],
    /// Per round, ((c) − (a)) / ((b) − (a)): sockwatch's added cost as a multiple of the floor's.
    pub sockwatch_vs_floor: Option<Summary>,
    /// Per round, ((d) − (a)) / ((c) − (a)): how much more the article's way adds than sockwatch.
    pub article_vs_sockwatch: Option<Summary>,
}

impl WorkloadSamples {
    pub fn summary(&self) -> Option<WorkloadSummary> {
        let [a, b, c, d] = &self.samples;
        let ns = [
            Summary::of(a)?,
            Summary::of(b)?,
            Summary::of(c)?,
            Summary::of(d)?,
        ];
        let ratio = |x: &[f64]| Summary::of(&stats::paired(a, x, |a, x| x / a));
        Some(WorkloadSummary {
            workload: self.workload,
            calls: self.calls,
            ns,
            ratio: [ratio(a)?, ratio(b)?, ratio(c)?, ratio(d)?],
            sockwatch_vs_floor: Summary::of(&stats::paired3(a, b, c, |a, b, c| {
                stats::multiple(c - a, b - a)
            })),
            article_vs_sockwatch: Summary::of(&stats::paired3(a, c, d, |a, c, d| {
                stats::multiple(d - a, c - a)
            })),
        })
    }
}

/// How the overhead pass runs.
pub struct Plan {
    pub rounds: usize,
    /// Calibrate each workload to run this long with nothing attached; `None`: smoke sizes.
    pub target_secs: Option<f64>,
}

/// Every sample, and how many tracepoints the floor and sockwatch had attached (the same, or
/// the floor would not be sockwatch's floor).
pub struct Measured {
    pub samples: Vec<WorkloadSamples>,
    pub hooks: usize,
}

pub fn run(bins: &Binaries, plan: &Plan) -> Result<Measured> {
    kernel::wait_detached(std::time::Duration::from_secs(90))?;
    if !kernel::bpf_stats_off() {
        bail!("kernel.bpf_stats_enabled is on: it would add to every program's cost; turn it off");
    }
    let mut calls = BTreeMap::new();
    for workload in WORKLOADS {
        let n = match plan.target_secs {
            None => workload.smoke_calls(),
            Some(secs) => calibrate(bins, workload, secs)?,
        };
        calls.insert(workload, n);
    }
    let mut results: Vec<WorkloadSamples> = WORKLOADS
        .iter()
        .map(|&workload| WorkloadSamples {
            workload,
            calls: calls[&workload],
            samples: Default::default(),
        })
        .collect();
    let mut hooks = [0usize; 4];
    for round in 1..=plan.rounds {
        let started = Instant::now();
        for condition in CONDITIONS {
            let attached = Attached::start(condition, bins).with_context(|| {
                format!("starting ({}) {}", condition.letter(), condition.name())
            })?;
            hooks[condition.index()] = attached.attachments;
            for result in &mut results {
                let ns = run_workload(bins, result.workload, result.calls)?.ns_per_call;
                result.samples[condition.index()].push(ns);
            }
            attached.stop().with_context(|| {
                format!("stopping ({}) {}", condition.letter(), condition.name())
            })?;
        }
        let (floor, sockwatch) = (
            hooks[Condition::Floor.index()],
            hooks[Condition::Sockwatch.index()],
        );
        if floor != sockwatch {
            bail!(
                "the floor attached {floor} programs and sockwatch {sockwatch}: the floor must \
                 hook exactly sockwatch's tracepoints (probes/floor.rs)"
            );
        }
        let line: Vec<String> = results
            .iter()
            .map(|r| {
                let ns: Vec<String> = r
                    .samples
                    .iter()
                    .map(|s| format!("{:.0}", s.last().copied().unwrap_or(f64::NAN)))
                    .collect();
                format!("{} {}", r.workload.mode(), ns.join("/"))
            })
            .collect();
        say(format!(
            "bench: round {round}/{} in {:.0} s, ns per call a/b/c/d: {}",
            plan.rounds,
            started.elapsed().as_secs_f64(),
            line.join(", ")
        ));
    }
    Ok(Measured {
        samples: results,
        hooks: hooks[Condition::Floor.index()],
    })
}

/// Calls that take about `secs` with nothing attached (the second of two probe runs: the
/// first warms caches).
fn calibrate(bins: &Binaries, workload: Workload, secs: f64) -> Result<u64> {
    let probe = workload.probe_calls();
    run_workload(bins, workload, probe)?;
    let ns = run_workload(bins, workload, probe)?.ns_per_call;
    let calls = (secs * 1e9 / ns.max(1.0)) as u64;
    Ok(calls.clamp(probe / 10, probe * 100))
}

/// Program run time per workload call, as the kernel's own statistics count it.
#[derive(Clone, Debug)]
pub struct ProgramCosts {
    pub workload: Workload,
    pub condition: Condition,
    /// `(program, runs per call, ns per run)` for the workload's own programs.
    pub programs: Vec<(String, f64, f64)>,
    /// Every attached program's run time, summed, per workload call (the sink thread and
    /// other processes included).
    pub total_ns_per_call: f64,
    /// How often the observer's user space was woken up, per workload call.
    pub wakeups_per_call: Option<f64>,
}

/// One extra pass, after the measurements, with `kernel.bpf_stats_enabled` on: how long each
/// of sockwatch's programs (and the floor's) runs per workload call. It tells which part of
/// the added cost is the programs' own work and which is the mechanism the floor pays too.
pub fn program_costs(bins: &Binaries, samples: &[WorkloadSamples]) -> Result<Vec<ProgramCosts>> {
    let mut costs = Vec::new();
    for condition in [Condition::Floor, Condition::Sockwatch] {
        let attached = Attached::start(condition, bins)?;
        {
            let _stats = BpfStats::enable()?;
            for sample in samples {
                let woken = |pid| footprint::wakeups(pid).ok();
                let wakeups_before = attached.pid().and_then(woken);
                let before = kernel::program_stats()?;
                let run = run_workload(bins, sample.workload, sample.calls)?;
                let after = kernel::program_stats()?;
                let wakeups_after = attached.pid().and_then(woken);
                let mut cost =
                    attribute(sample.workload, run.all_calls, condition, &before, &after);
                cost.wakeups_per_call = wakeups_before
                    .zip(wakeups_after)
                    .map(|(b, a)| a.saturating_sub(b) as f64 / run.all_calls.max(1) as f64);
                costs.push(cost);
            }
        }
        attached.stop()?;
    }
    Ok(costs)
}

/// The programs' run time over a run of `calls` calls of `workload`, from the statistics
/// before and after it.
fn attribute(
    workload: Workload,
    calls: u64,
    condition: Condition,
    before: &[kernel::ProgramStats],
    after: &[kernel::ProgramStats],
) -> ProgramCosts {
    let calls = calls.max(1) as f64;
    let delta = |p: &kernel::ProgramStats| {
        let old = before.iter().find(|b| b.id == p.id);
        (
            p.run_cnt - old.map_or(0, |o| o.run_cnt.min(p.run_cnt)),
            p.run_time_ns - old.map_or(0, |o| o.run_time_ns.min(p.run_time_ns)),
        )
    };
    let total: u64 = after.iter().map(|p| delta(p).1).sum();
    let wanted: &[&str] = match condition {
        Condition::Floor => &["floor"],
        _ => workload.programs(),
    };
    let mut programs = Vec::new();
    for name in wanted {
        let (runs, ns) = after
            .iter()
            .filter(|p| p.name == *name)
            .map(delta)
            .fold((0, 0), |(r, t), (dr, dt)| (r + dr, t + dt));
        if runs > 0 {
            programs.push((
                (*name).to_owned(),
                runs as f64 / calls,
                ns as f64 / runs as f64,
            ));
        }
    }
    ProgramCosts {
        workload,
        condition,
        programs,
        total_ns_per_call: total as f64 / calls,
        wakeups_per_call: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_load_generators_line() {
        assert_eq!(
            parse_run("mode=bench-send calls=1000 warmup=50 secs=0.001 ns_per_call=812.50\n"),
            Some(Run {
                ns_per_call: 812.5,
                all_calls: 1050
            })
        );
        assert_eq!(
            parse_run("mode=bench-send calls=10 secs=0.001 ns_per_call=1").map(|r| r.all_calls),
            Some(10)
        );
        assert_eq!(parse_run("cycles=10 secs=1"), None);
    }

    #[test]
    fn summaries_pair_each_round_with_its_own_baseline() {
        let samples = WorkloadSamples {
            workload: Workload::Send,
            calls: 10,
            samples: [
                vec![100.0, 200.0],
                vec![110.0, 220.0],
                vec![130.0, 240.0],
                vec![400.0, 600.0],
            ],
        };
        let s = samples.summary().unwrap();
        assert_eq!(s.ns[0].median, 150.0);
        // Round 1: 130/100, round 2: 240/200.
        assert_eq!((s.ratio[2].min, s.ratio[2].max), (1.2, 1.3));
        // Round 1: 30/10 = 3, round 2: 40/20 = 2.
        let vs_floor = s.sockwatch_vs_floor.unwrap();
        assert_eq!(
            (vs_floor.min, vs_floor.max, vs_floor.median),
            (2.0, 3.0, 2.5)
        );
        // Round 1: 300/30 = 10, round 2: 400/40 = 10.
        assert_eq!(s.article_vs_sockwatch.unwrap().median, 10.0);
    }

    #[test]
    fn program_costs_are_deltas_per_call() {
        let stats = |id, name: &str, run_cnt, run_time_ns| kernel::ProgramStats {
            id,
            name: name.into(),
            run_cnt,
            run_time_ns,
        };
        let before = [
            stats(1, "enter_write", 10, 1_000),
            stats(2, "exit_write", 10, 500),
        ];
        let after = [
            stats(1, "enter_write", 110, 6_000),
            stats(2, "exit_write", 110, 3_500),
        ];
        let costs = attribute(
            Workload::WriteDevnull,
            100,
            Condition::Sockwatch,
            &before,
            &after,
        );
        assert_eq!(
            costs.programs,
            [
                ("enter_write".to_owned(), 1.0, 50.0),
                ("exit_write".to_owned(), 1.0, 30.0)
            ]
        );
        assert_eq!(costs.total_ns_per_call, 80.0);
    }
}
