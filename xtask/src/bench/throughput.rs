//! Pipeline throughput: socket lifecycles (connect + close) at rising rates from several load
//! processes, while sockwatch runs with its JSON counted line by line; each step reports what
//! was offered, what sockwatch printed, and what it says it lost.

use std::{process::Stdio, thread, time::Duration};

use anyhow::{bail, Context, Result};

use super::{
    conditions::{self, Binaries, Output, Sockwatch},
    footprint, kernel,
};

/// One load level.
#[derive(Clone, Debug)]
pub struct Step {
    /// Lifecycle events per second offered, all processes together; `None`: as fast as the
    /// load processes can.
    pub target: Option<u64>,
    pub tcp: bool,
    /// A ring buffer smaller than the default, to show what an overflow does.
    pub ring_kib: Option<u32>,
}

impl Step {
    /// sockwatch's records per lifecycle: UDP connect + close; TCP connect, accept, 2 closes.
    pub fn events_per_cycle(&self) -> u64 {
        if self.tcp {
            4
        } else {
            2
        }
    }

    pub fn label(&self) -> String {
        let proto = if self.tcp { "TCP" } else { "UDP" };
        let rate = match self.target {
            Some(rate) => format!(
                "{} events/s",
                super::stats::rate(rate as f64).trim_end_matches("/s")
            ),
            None => "as fast as possible".into(),
        };
        match self.ring_kib {
            Some(kib) => format!("{proto}, {rate}, --ring-kib {kib}"),
            None => format!("{proto}, {rate}"),
        }
    }
}

pub struct Plan {
    pub steps: Vec<Step>,
    pub secs: f64,
    pub processes: usize,
}

#[derive(Clone, Debug)]
pub struct StepResult {
    pub step: Step,
    pub processes: usize,
    /// Lifecycle events the load made (cycles × events per cycle).
    pub offered: u64,
    pub secs: f64,
    /// Lifecycle records sockwatch printed (connect, accept, close).
    pub printed: u64,
    /// The `end` record's `lost` (ring buffer full).
    pub lost: u64,
    pub lost_records: u64,
    /// sockwatch exited 0 after an `end` record.
    pub clean_exit: bool,
    /// sockwatch's CPU time while the load ran, in percent of one core.
    pub cpu_percent: f64,
    /// How often sockwatch was woken up while the load ran.
    pub wakeups: u64,
}

impl StepResult {
    pub fn offered_per_sec(&self) -> f64 {
        self.offered as f64 / self.secs
    }

    pub fn printed_per_sec(&self) -> f64 {
        self.printed as f64 / self.secs
    }

    /// Every event arrived: nothing lost, every lifecycle printed, a clean exit.
    pub fn zero_loss(&self) -> bool {
        self.lost == 0 && self.lost_records == 0 && self.printed >= self.offered && self.clean_exit
    }
}

pub fn run(bins: &Binaries, plan: &Plan) -> Result<Vec<StepResult>> {
    let mut results = Vec::new();
    for step in &plan.steps {
        let result = run_step(bins, step, plan)
            .with_context(|| format!("throughput step {}", step.label()))?;
        crate::cmd::say(format!(
            "bench: throughput {}: offered {}, printed {}, lost {}, sockwatch CPU {:.0}%{}",
            step.label(),
            super::stats::rate(result.offered_per_sec()),
            super::stats::rate(result.printed_per_sec()),
            result.lost,
            result.cpu_percent,
            if result.clean_exit {
                ""
            } else {
                ", NOT a clean exit"
            }
        ));
        results.push(result);
    }
    Ok(results)
}

fn run_step(bins: &Binaries, step: &Step, plan: &Plan) -> Result<StepResult> {
    kernel::wait_detached(Duration::from_secs(90))?;
    let ring = step.ring_kib.map(|kib| kib.to_string());
    let mut extra = Vec::new();
    if let Some(ring) = &ring {
        extra.extend(["--ring-kib", ring.as_str()]);
    }
    let sockwatch = Sockwatch::start(bins, &extra, Output::Count, None)?;
    let per_process = step.target.map_or(0, |target| {
        target.div_ceil(plan.processes as u64 * step.events_per_cycle())
    });
    let mut loads = Vec::new();
    for _ in 0..plan.processes {
        let mut command = std::process::Command::new(&bins.load);
        command
            .args(["flood", "--secs", &plan.secs.to_string()])
            .args(["--rate", &per_process.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if step.tcp {
            command.arg("--tcp");
        }
        loads.push(conditions::spawn(&mut command)?);
    }
    let cpu_before = footprint::cpu_ns(sockwatch.pid())?;
    let wakeups_before = footprint::wakeups(sockwatch.pid())?;
    let wall = std::time::Instant::now();
    let mut cycles = 0u64;
    let mut secs = 0f64;
    for load in loads {
        let output = load.wait_with_output().context("waiting for a flood")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "sockwatch-load flood failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let (c, s) = parse_flood(&stdout).with_context(|| format!("flood printed {stdout:?}"))?;
        cycles += c;
        secs = secs.max(s);
    }
    let wakeups = footprint::wakeups(sockwatch.pid())? - wakeups_before;
    let cpu_percent = (footprint::cpu_ns(sockwatch.pid())? - cpu_before) as f64
        / wall.elapsed().as_nanos() as f64
        * 100.0;
    // What is still in the ring buffer is read before the end record.
    thread::sleep(Duration::from_millis(300));
    let (status, counts) = sockwatch.stop()?;
    let counts = counts.unwrap_or_default();
    let lost = counts
        .end
        .as_ref()
        .and_then(|end| end["lost"].as_u64())
        .unwrap_or(0);
    kernel::wait_detached(Duration::from_secs(90))?;
    Ok(StepResult {
        step: step.clone(),
        processes: plan.processes,
        offered: cycles * step.events_per_cycle(),
        secs,
        printed: counts.lifecycle,
        lost,
        lost_records: counts.lost_records,
        clean_exit: status.success() && counts.end.is_some(),
        cpu_percent,
        wakeups,
    })
}

/// `cycles=N secs=S per_sec=R` → (N, S).
fn parse_flood(line: &str) -> Option<(u64, f64)> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
    };
    Some((field("cycles")?.parse().ok()?, field("secs")?.parse().ok()?))
}

/// The highest rate of printed events among the steps without loss (forced overflows aside).
pub fn highest_lossless(results: &[StepResult]) -> Option<&StepResult> {
    results
        .iter()
        .filter(|r| r.step.ring_kib.is_none() && r.zero_loss())
        .max_by(|a, b| a.printed_per_sec().total_cmp(&b.printed_per_sec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(target: Option<u64>, offered: u64, printed: u64, lost: u64) -> StepResult {
        StepResult {
            step: Step {
                target,
                tcp: false,
                ring_kib: None,
            },
            processes: 2,
            offered,
            secs: 1.0,
            printed,
            lost,
            lost_records: u64::from(lost > 0),
            clean_exit: true,
            cpu_percent: 50.0,
            wakeups: 10,
        }
    }

    #[test]
    fn parses_the_flood_line() {
        assert_eq!(
            parse_flood("cycles=137872 secs=1.001 per_sec=137796\n"),
            Some((137_872, 1.001))
        );
        assert_eq!(parse_flood("held=5"), None);
    }

    #[test]
    fn the_highest_lossless_step_is_the_one_reported() {
        let results = [
            result(Some(50_000), 50_000, 50_000, 0),
            result(Some(100_000), 100_000, 100_010, 0),
            result(None, 300_000, 250_000, 50_000),
        ];
        assert_eq!(highest_lossless(&results).map(|r| r.offered), Some(100_000));
        assert!(!results[2].zero_loss());
        assert_eq!(
            result(None, 1, 1, 0).step.label(),
            "UDP, as fast as possible"
        );
        assert_eq!(
            result(Some(200_000), 1, 1, 0).step.label(),
            "UDP, 200k events/s"
        );
    }
}
