//! The results as Markdown (bench/results.md, also printed), with each target's verdict and,
//! for a missed one, the cause the measurements point to.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{bail, Context, Result};

use super::{
    conditions::{Condition, BPFTRACE_SCRIPT, CONDITIONS},
    footprint::{Load, PhaseResult},
    machine::{Busy, Machine},
    overhead::{ProgramCosts, Workload, WorkloadSummary},
    render::RenderResult,
    stats::{self, Summary},
    throughput::{self, StepResult},
};

pub struct Results {
    pub smoke: bool,
    pub cpus: Option<super::conditions::Cpus>,
    /// Tracepoints hooked by the floor, and by sockwatch (checked equal).
    pub hooks: usize,
    pub machine: Machine,
    pub busy_before: Busy,
    /// Other processes that were busy at any time during the run.
    pub busy_during: Busy,
    pub rounds: usize,
    pub overhead: Vec<WorkloadSummary>,
    pub costs: Vec<ProgramCosts>,
    pub throughput: Vec<StepResult>,
    pub footprint: Vec<PhaseResult>,
    pub render: Option<Vec<RenderResult>>,
    pub minutes: f64,
}

/// One target and where we stand.
pub struct Verdict {
    pub target: &'static str,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

impl Results {
    fn workload(&self, workload: Workload) -> Option<&WorkloadSummary> {
        self.overhead.iter().find(|s| s.workload == workload)
    }

    fn phase(&self, matches: impl Fn(&Load) -> bool) -> Option<&PhaseResult> {
        self.footprint.iter().find(|p| matches(&p.load))
    }

    fn render_of(&self, rows: usize) -> Option<&RenderResult> {
        self.render.as_ref()?.iter().find(|r| r.rows == rows)
    }

    /// Each target's verdict; none in a smoke run, whose numbers mean nothing.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut verdicts = self.measured_verdicts();
        if self.smoke {
            for verdict in &mut verdicts {
                verdict.met = None;
            }
        }
        verdicts
    }

    fn measured_verdicts(&self) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        let multiple = |workload| self.workload(workload).and_then(|s| s.sockwatch_vs_floor);
        for (target, workload, limit) in [
            (
                "added cost per tracked send() ≤ 1.5x the floor's",
                Workload::Send,
                1.5,
            ),
            (
                "added cost per ignored write() ≤ 1.2x the floor's",
                Workload::WriteDevnull,
                1.2,
            ),
            (
                "added cost per ignored close() ≤ 1.2x the floor's",
                Workload::Close,
                1.2,
            ),
        ] {
            let m = multiple(workload);
            verdicts.push(Verdict {
                target,
                measured: m.map_or("not measured".into(), |m| m.show(stats::times)),
                met: m.map(|m| m.median <= limit),
            });
        }
        let article = self
            .workload(Workload::Send)
            .and_then(|s| s.article_vs_sockwatch);
        verdicts.push(Verdict {
            target: "≥ 10x less overhead than the article's way on send()",
            measured: article.map_or("not measured".into(), |m| {
                format!("{} less", m.show(stats::times))
            }),
            met: article.map(|m| m.median >= 10.0),
        });
        let lossless = throughput::highest_lossless(&self.throughput);
        let all_lossless = self
            .throughput
            .iter()
            .filter(|r| r.step.ring_kib.is_none())
            .all(StepResult::zero_loss);
        verdicts.push(Verdict {
            target: "≥ 200k lifecycle events/s consumed with zero loss",
            measured: match lossless {
                Some(r) if all_lossless => format!(
                    "≥ {} (every step lossless: the load generators' limit, not sockwatch's)",
                    stats::rate(r.printed_per_sec())
                ),
                Some(r) => stats::rate(r.printed_per_sec()),
                None => "no lossless step".into(),
            },
            met: match lossless {
                _ if self.throughput.is_empty() => None,
                Some(r) if r.printed_per_sec() >= 200_000.0 => Some(true),
                // Nothing lost anywhere, but the load never got there: not shown either way.
                Some(_) if all_lossless => None,
                _ => Some(false),
            },
        });
        let idle = self.phase(|l| matches!(l, Load::Idle));
        verdicts.push(Verdict {
            target: "idle CPU < 0.5% of a core",
            measured: idle.map_or("not measured".into(), |p| {
                if p.wakeups_per_sec > 5.0 {
                    format!(
                        "{:.2}% (woken {:.0}/s: other processes made sockets meanwhile)",
                        p.cpu_percent, p.wakeups_per_sec
                    )
                } else {
                    format!("{:.2}%", p.cpu_percent)
                }
            }),
            met: idle.map(|p| p.cpu_percent < 0.5),
        });
        let ten_k = self.phase(|l| matches!(l, Load::Hold(n) if *n >= 5000));
        verdicts.push(Verdict {
            target: "RSS < 30 MiB at 10k sockets",
            measured: ten_k.map_or("not measured".into(), |p| {
                format!(
                    "{:.1} MiB peak ({} tracked)",
                    mib(p.peak_rss_kib),
                    p.tracked
                )
            }),
            met: ten_k.map(|p| mib(p.peak_rss_kib) < 30.0),
        });
        let render = self.render_of(100_000).and_then(|r| r.part("render"));
        verdicts.push(Verdict {
            target: "render of 100k rows < 5 ms",
            measured: render.map_or("not measured".into(), |s| s.show(stats::duration_ns)),
            met: render.map(|s| s.median < 5e6),
        });
        verdicts
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict_word(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "meets",
        Some(false) => "**misses**",
        None => "not determined",
    }
}

/// The whole report, as Markdown.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# sockwatch benchmark results\n");
    if r.smoke {
        let _ = writeln!(
            md,
            "**Smoke run** (`cargo xtask bench --smoke`): one tiny round of everything, debug \
             build, to check the harness. These numbers mean nothing.\n"
        );
    }
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` (as root; {:.1} minutes this time). Every figure is a \
         median over interleaved runs, with the range (min–max) in parentheses.\n",
        r.minutes
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| date | {} |", m.date);
    let _ = writeln!(
        md,
        "| machine | {}, {} cores, {:.0} GiB |",
        m.cpu, m.cores, m.memory_gib
    );
    let _ = writeln!(md, "| kernel | {} |", m.kernel);
    let _ = writeln!(md, "| compiler | {} |", m.rustc);
    let _ = writeln!(
        md,
        "| sockwatch | {} ({} build, tracepoint backend, default flags) |",
        m.commit,
        if r.smoke { "debug" } else { "release" }
    );
    let _ = writeln!(
        md,
        "| (d) the article's way | stand-in: {} (script below), output to /dev/null |",
        m.bpftrace
    );
    let _ = writeln!(md, "| rounds | {} |", r.rounds);
    let _ = writeln!(
        md,
        "| other load | before the run: {}; during it: {} |",
        r.busy_before.describe(),
        r.busy_during.describe()
    );
    let _ = writeln!(md);

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | measured | verdict |\n|---|---|---|");
    for v in r.verdicts() {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            v.target,
            v.measured,
            verdict_word(v.met)
        );
    }
    let _ = writeln!(md);
    overhead_section(&mut md, r);
    costs_section(&mut md, r);
    throughput_section(&mut md, r);
    footprint_section(&mut md, r);
    render_section(&mut md, r);
    diagnosis_section(&mut md, r);
    method_section(&mut md, r);
    md
}

fn overhead_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 1. Per-syscall overhead on the traced program\n");
    let _ = writeln!(
        md,
        "Each loop (a mode of `sockwatch-load`) runs under each condition in turn: (a) nothing \
         attached; (b) the floor, an empty BPF program on every tracepoint sockwatch uses \
         ({} of them, checked against sockwatch's own count; `sockwatch-tui \
         --attach-floor`); (c) `sockwatch-tui --json > /dev/null`; (d) an event per `sendto` \
         and `close` of every process, formatted and printed by user space. \"× (a)\" and the \
         multiples are taken round by round (each round's run against the same round's (a)), \
         then summarised.\n",
        r.hooks
    );
    let _ = writeln!(
        md,
        "| loop (one call) | condition | ns per call | × (a) | added per call |\n|---|---|---|---|---|"
    );
    for s in &r.overhead {
        for condition in CONDITIONS {
            let i = condition.index();
            let added = s.ns[i].median - s.ns[0].median;
            let _ = writeln!(
                md,
                "| {} | ({}) {} | {} | {} | {} |",
                if condition == Condition::Bare {
                    s.workload.label()
                } else {
                    ""
                },
                condition.letter(),
                condition.name(),
                s.ns[i].show(|x| format!("{x:.0}")),
                if condition == Condition::Bare {
                    "1".into()
                } else {
                    s.ratio[i].show(stats::times)
                },
                if condition == Condition::Bare {
                    String::new()
                } else {
                    stats::duration_ns(added)
                }
            );
        }
    }
    let _ = writeln!(
        md,
        "\n| loop | sockwatch's added cost ÷ the floor's: ((c)−(a)) ÷ ((b)−(a)) | the article's added cost ÷ sockwatch's: ((d)−(a)) ÷ ((c)−(a)) |\n|---|---|---|"
    );
    for s in &r.overhead {
        let show = |x: Option<Summary>| x.map_or("n/a".into(), |x| x.show(stats::times));
        let article = if s.workload == Workload::WriteDevnull {
            "— ((d) hooks only `sendto` and `close`)".into()
        } else {
            show(s.article_vs_sockwatch)
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            s.workload.label(),
            show(s.sockwatch_vs_floor),
            article
        );
    }
    let calls: Vec<String> = r
        .overhead
        .iter()
        .map(|s| format!("`{}` {}", s.workload.mode(), s.calls))
        .collect();
    let _ = writeln!(md, "\nCalls per run: {}.\n", calls.join(", "));
    let _ = writeln!(md, "![overhead per condition](overhead.png)\n");
}

fn costs_section(md: &mut String, r: &Results) {
    if r.costs.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### Where the added time goes: the programs' own run time\n"
    );
    let _ = writeln!(
        md,
        "One more pass with `kernel.bpf_stats_enabled=1` (off during the measurements above): \
         the kernel's count and total run time of each program, per call of the loop. A \
         program's run time is its own instructions and helper calls; what the floor adds \
         (b − a) is the mechanism: the tracepoint firing, its perf trace buffer and the call \
         into BPF, paid by an empty program too. The statistics time each run with two clock \
         reads, which an empty program shows alone: {}.\n",
        super::diagnosis::stats_floor_ns(&r.costs).map_or("not measured".into(), |ns| format!(
            "{ns:.0} ns per run here, to be subtracted from every figure of the table"
        ))
    );
    let _ = writeln!(
        md,
        "| loop | condition | program: runs per call × ns per run | all programs, ns per call | observer woken up, per call |\n|---|---|---|---|---|"
    );
    for c in &r.costs {
        let programs: Vec<String> = c
            .programs
            .iter()
            .map(|(name, runs, ns)| format!("`{name}` {runs:.2} × {ns:.0}"))
            .collect();
        let _ = writeln!(
            md,
            "| {} | ({}) | {} | {:.0} | {} |",
            c.workload.label(),
            c.condition.letter(),
            programs.join(", "),
            c.total_ns_per_call,
            c.wakeups_per_call
                .map_or(String::new(), |w| format!("{w:.3}"))
        );
    }
    let _ = writeln!(md);
}

fn throughput_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 2. Pipeline throughput\n");
    let _ = writeln!(
        md,
        "`sockwatch-load flood` processes make socket lifecycles (UDP: `socket`, `connect`, \
         `close`: a `connect` and a `close` record; TCP: also the `accept` and the server's \
         `close`) at a set rate while `sockwatch-tui --json` runs, its stdout read and counted \
         line by line. \"Printed\" is lifecycle records on stdout; \"lost\" is the `end` \
         record's `lost` (the ring buffer was full).\n"
    );
    let _ = writeln!(
        md,
        "| load | processes | offered | printed | lost (`end`) | `lost` records | sockwatch CPU | events per wake-up | sockwatch |\n|---|---|---|---|---|---|---|---|---|"
    );
    for s in &r.throughput {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.0}% | {:.0} | {} |",
            s.step.label(),
            s.processes,
            stats::rate(s.offered_per_sec()),
            stats::rate(s.printed_per_sec()),
            s.lost,
            s.lost_records,
            s.cpu_percent,
            s.printed as f64 / s.wakeups.max(1) as f64,
            if s.clean_exit {
                "exit 0, `end` record"
            } else {
                "**no clean exit**"
            }
        );
    }
    let _ = writeln!(md);
}

fn footprint_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 3. User-space cost\n");
    let _ = writeln!(
        md,
        "A fresh `sockwatch-tui --json` (stdout to a file) for each state; CPU is the time of \
         all its threads (`/proc/PID/task/*/schedstat`) over the window, peak RSS is `VmHWM`. \
         Open sockets are loopback connections held by `sockwatch-load hold` (both ends are \
         tracked: one connect, one accept). The kernel's maps are not in the RSS. The \
         dashboard (not measured here) does more each `--interval`: it reads the whole \
         `TRACKED` map (two system calls per entry: next key, lookup) and pays the refresh and \
         render of section 4.\n"
    );
    let _ = writeln!(
        md,
        "| state | tracked at the end | CPU, % of a core | woken up | peak RSS | RSS at the end: anon + file + shmem | window |\n|---|---|---|---|---|---|---|"
    );
    for p in &r.footprint {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2}% | {:.1}/s | {:.1} MiB | {:.1} = {:.1} + {:.1} + {:.1} MiB | {:.0} s |",
            p.load.label(),
            p.tracked,
            p.cpu_percent,
            p.wakeups_per_sec,
            mib(p.peak_rss_kib),
            mib(p.rss_kib),
            mib(p.rss_anon_kib),
            mib(p.rss_file_kib),
            mib(p.rss_shmem_kib),
            p.secs
        );
    }
    let _ = writeln!(md);
}

fn render_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 4. Scale: table refresh and render\n");
    let Some(render) = &r.render else {
        let _ = writeln!(
            md,
            "Not measured in a smoke run (the benchmark ran once per function, in test mode).\n"
        );
        return;
    };
    let _ = writeln!(
        md,
        "criterion (`sockwatch-tui/benches/table.rs`) on synthetic data, 200x50 terminal: \
         `refresh` is one tick's `Model::update(Action::Snapshot{{..}})` with every row's \
         counters changed; `render` is one `ui::view` of the model that refresh left, into a \
         ratatui `TestBackend`; `listing` is `view_state::visible` alone, the filtered and \
         sorted rows the table is drawn from (whichever of the two computes it). The dashboard \
         pays refresh + render each `--interval` (1 s by default).\n"
    );
    let _ = writeln!(
        md,
        "| rows | refresh | listing | render | refresh + render |\n|---|---|---|---|---|"
    );
    for x in render {
        let show = |part| {
            x.part(part)
                .map_or("n/a".into(), |s| s.show(stats::duration_ns))
        };
        let total = x
            .part("refresh")
            .zip(x.part("render"))
            .map_or("n/a".into(), |(a, b)| {
                stats::duration_ns(a.median + b.median)
            });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            x.rows,
            show("refresh"),
            show("visible"),
            show("render"),
            total
        );
    }
    let _ = writeln!(md);
}

fn diagnosis_section(md: &mut String, r: &Results) {
    let notes = super::diagnosis::notes(r);
    if notes.is_empty() || r.smoke {
        return;
    }
    let _ = writeln!(md, "## Diagnosis\n");
    for note in notes {
        let _ = writeln!(md, "- {note}");
    }
    let _ = writeln!(md);
}

fn method_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## How it is measured\n");
    let _ = writeln!(
        md,
        "- Loops: `sockwatch-load bench-send` (64-byte `send()` on a loopback TCP connection \
         opened after the condition started, so sockwatch tracks it; a thread of the same \
         process reads the other end), `bench-write-devnull`, `bench-close` (`dup` + `close` of \
         /dev/null; `dup` is not hooked), `bench-churn` (one thread: `socket`, `connect`, \
         `accept`, `send` 64 B, `close` of both ends, abortive so that no TIME_WAIT piles up). \
         Each prints ns per call over its timed loop, after a warm-up; run lengths are \
         calibrated once with nothing attached."
    );
    let _ = writeln!(
        md,
        "- CPUs: {}",
        match r.cpus {
            Some(cpus) => format!(
                "each loop runs pinned to CPU {} (`taskset`; its reader thread too) and the \
                 observer (sockwatch, the floor, bpftrace) to CPU {}: what a loop pays is the \
                 hooks and the kernel programs, not a share of its core taken by the observer's \
                 user space (that is measured in section 3), and the scheduler's placement \
                 does not change from run to run. The throughput and user-space passes do not \
                 pin.",
                cpus.workload, cpus.observer
            ),
            None => "one CPU: nothing is pinned.".into(),
        }
    );
    let _ = writeln!(
        md,
        "- Rounds: a, b, c, d, a, b, c, d, ... ({} rounds); before each condition starts, \
         `bpftool link show` and `bpftool perf show` must list nothing attached (sockwatch \
         detaches in a background child after it exits; a detach takes the kernel an RCU \
         grace period per program), and each condition must show exactly its own programs.",
        r.rounds
    );
    let _ = writeln!(
        md,
        "- (d) stand-in: `bpftrace -o /dev/null -e '{}'`. bpftrace sends each event through \
         a perf buffer and formats it in user space, as the article's tools do.",
        BPFTRACE_SCRIPT
    );
    let _ = writeln!(
        md,
        "- Reproduce: `cargo xtask bench` (as root; builds in release first). The raw outputs \
         and logs are in `target/bench/`; the loops run alone too, e.g. \
         `target/release/sockwatch-load bench-send --calls 1000000`."
    );
}

/// The summary printed at the end of a run: the targets and the overhead table.
pub fn terminal(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsockwatch bench ({}, kernel {})",
        r.machine.date, r.machine.kernel
    );
    let _ = writeln!(
        out,
        "{:<32} {:>24} {:>24} {:>24} {:>24}",
        "loop: ns/call (x (a))", "(a) nothing", "(b) floor", "(c) sockwatch", "(d) bpftrace"
    );
    for s in &r.overhead {
        let cells: Vec<String> = CONDITIONS
            .iter()
            .map(|c| {
                let i = c.index();
                format!(
                    "{:.0} ({})",
                    s.ns[i].median,
                    stats::times(s.ratio[i].median)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<32} {:>24} {:>24} {:>24} {:>24}",
            s.workload.label(),
            cells[0],
            cells[1],
            cells[2],
            cells[3]
        );
    }
    let _ = writeln!(
        out,
        "\nother load during the run: {}",
        r.busy_during.describe()
    );
    for v in r.verdicts() {
        let word = match v.met {
            Some(true) => "meets ",
            Some(false) => "MISSES",
            None if r.smoke => "smoke ",
            None => "  ??  ",
        };
        let _ = writeln!(out, "{word}  {:<55} {}", v.target, v.measured);
    }
    out
}

const README_START: &str = "<!-- bench:start -->";
const README_END: &str = "<!-- bench:end -->";

/// The README's figures: the targets and the overhead per call, from the latest full run.
pub fn readme_block(r: &Results) -> String {
    let m = &r.machine;
    let mut block = String::new();
    let _ = writeln!(
        block,
        "Latest run: {}, {} ({} cores), kernel {}, {} rounds; the other load during it: {}. \
         Medians, with min–max; causes of the misses in [bench/results.md](bench/results.md).\n",
        m.date,
        m.cpu,
        m.cores,
        m.kernel,
        r.rounds,
        r.busy_during.describe()
    );
    let _ = writeln!(block, "| target | measured | verdict |\n|---|---|---|");
    for v in r.verdicts() {
        let _ = writeln!(
            block,
            "| {} | {} | {} |",
            v.target,
            v.measured,
            verdict_word(v.met)
        );
    }
    let _ = writeln!(
        block,
        "\n| time per call (× nothing attached) | (a) nothing | (b) floor | (c) sockwatch | (d) per-event printf |\n|---|---|---|---|---|"
    );
    for s in &r.overhead {
        let cells: Vec<String> = CONDITIONS
            .iter()
            .map(|c| {
                let i = c.index();
                if *c == Condition::Bare {
                    stats::duration_ns(s.ns[i].median)
                } else {
                    format!(
                        "{} ({})",
                        stats::duration_ns(s.ns[i].median),
                        stats::times(s.ratio[i].median)
                    )
                }
            })
            .collect();
        let _ = writeln!(block, "| {} | {} |", s.workload.label(), cells.join(" | "));
    }
    let _ = writeln!(block, "\n![overhead per condition](bench/overhead.png)");
    block
}

/// Rewrites what is between the README's bench markers.
pub fn update_readme(readme: &Path, block: &str) -> Result<()> {
    let text =
        fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let updated = replace_between(&text, block).with_context(|| {
        format!(
            "{} has no {README_START} ... {README_END}",
            readme.display()
        )
    })?;
    fs::write(readme, updated).with_context(|| format!("writing {}", readme.display()))
}

fn replace_between(text: &str, block: &str) -> Result<String> {
    let (Some(start), Some(end)) = (text.find(README_START), text.find(README_END)) else {
        bail!("markers missing");
    };
    if end < start {
        bail!("markers out of order");
    }
    let head = &text[..start + README_START.len()];
    Ok(format!("{head}\n{}{}", block, &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_text_between_the_markers_changes() {
        let text = "intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nrest\n";
        assert_eq!(
            replace_between(text, "new\n").unwrap(),
            "intro\n<!-- bench:start -->\nnew\n<!-- bench:end -->\nrest\n"
        );
        assert!(replace_between("no markers", "x").is_err());
    }
}
