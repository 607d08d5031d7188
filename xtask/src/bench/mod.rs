//! `cargo xtask bench`: what sockwatch costs the programs it watches, and what it can take,
//! measured side by side in one run, as ratios of interleaved runs.
//!
//! 1. Per-syscall overhead (`overhead.rs`): four loops of `sockwatch-load` under four
//!    conditions (`conditions.rs`): nothing, the floor, sockwatch, the article's way; then the
//!    programs' own run time from the kernel's statistics.
//! 2. Throughput (`throughput.rs`): lifecycle events at rising rates, every record counted.
//! 3. User-space cost (`footprint.rs`): CPU and peak RSS idle, at 1k and 10k sockets, churning.
//! 4. Scale (`render.rs`): the criterion benchmark of the reducer and the table.
//!
//! The report (`report.rs`, `diagnosis.rs`) goes to the terminal, `bench/results.md` and
//! `bench/overhead.png` (`plot.rs`). `--smoke` runs everything once, tiny, from the debug
//! build, into `target/bench/smoke/`: the check `cargo xtask test` makes that the harness works.

mod conditions;
mod diagnosis;
mod footprint;
mod kernel;
mod machine;
mod overhead;
mod plot;
mod render;
mod report;
mod stats;
mod throughput;

use std::{fs, path::PathBuf, time::Duration, time::Instant};

use anyhow::{bail, Context, Result};

use crate::{
    cmd::{self, say},
    setup,
};

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// One tiny round of everything, debug build, results in target/bench/smoke.
    pub smoke: bool,
    /// Rounds of the overhead pass (default 5; 1 in a smoke run).
    pub rounds: Option<usize>,
}

/// Five rounds: with each loop pinned to its own CPU the spread is small, and the whole run,
/// builds included, stays within 10 minutes on the 2-core development machine.
const DEFAULT_ROUNDS: usize = 5;

pub fn run(options: Options) -> Result<()> {
    if !cmd::is_root()? {
        bail!("`cargo xtask bench` must run as root: it loads eBPF programs and runs bpftrace");
    }
    let started = Instant::now();
    setup::run()?;
    let bins = build(options.smoke)?;
    let machine = machine::describe();
    let busy_before = machine::Busy::sample(Duration::from_secs(1));
    if !busy_before.is_quiet() {
        cmd::warn(format!(
            "the machine is not idle ({}): the figures will show it",
            busy_before.describe()
        ));
    }
    // Anything else that runs while we measure is named in the report.
    let watcher = machine::Watcher::start();
    let rounds = options
        .rounds
        .unwrap_or(if options.smoke { 1 } else { DEFAULT_ROUNDS })
        .max(1);

    say("bench: 1. per-syscall overhead");
    watcher.set_phase("1. overhead");
    let overhead::Measured { samples, hooks } = overhead::run(
        &bins,
        &overhead::Plan {
            rounds,
            target_secs: (!options.smoke).then_some(0.4),
        },
    )?;
    watcher.set_phase("1. program run times");
    let costs = overhead::program_costs(&bins, &samples)?;

    say("bench: 2. pipeline throughput");
    watcher.set_phase("2. throughput");
    let throughput = throughput::run(&bins, &throughput_plan(options.smoke))?;

    say("bench: 3. user-space cost");
    watcher.set_phase("3. user-space cost");
    let footprint = footprint::run(&bins, &footprint_plan(options.smoke))?;

    say("bench: 4. table refresh and render");
    watcher.set_phase("4. render");
    let render = if options.smoke {
        render::smoke()?;
        None
    } else {
        Some(render::run(&bins.work)?)
    };
    let busy_during = watcher.stop();

    let results = report::Results {
        smoke: options.smoke,
        cpus: bins.cpus,
        hooks,
        machine,
        busy_before,
        busy_during,
        rounds,
        overhead: samples
            .iter()
            .map(overhead::WorkloadSamples::summary)
            .collect::<Option<_>>()
            .context("an overhead series has no samples")?,
        costs,
        throughput,
        footprint,
        render,
        minutes: started.elapsed().as_secs_f64() / 60.0,
    };
    let out = if options.smoke {
        bins.work.clone()
    } else {
        cmd::workspace_root().join("bench")
    };
    fs::create_dir_all(&out)?;
    let markdown = out.join("results.md");
    fs::write(&markdown, report::markdown(&results))
        .with_context(|| format!("writing {}", markdown.display()))?;
    let png = out.join("overhead.png");
    plot::overhead(
        &png,
        &results.overhead,
        &format!(
            "{} · kernel {} · {} · median of {} interleaved rounds, whiskers min–max{}",
            results.machine.cpu,
            results.machine.kernel,
            results.machine.date,
            rounds,
            if options.smoke { " · SMOKE RUN" } else { "" }
        ),
    )?;
    if !options.smoke {
        let readme = cmd::workspace_root().join("README.md");
        if let Err(e) = report::update_readme(&readme, &report::readme_block(&results)) {
            cmd::warn(format!("README figures not updated: {e:#}"));
        }
    }
    println!("{}", report::terminal(&results));
    say(format!(
        "bench: wrote {} and {} in {:.1} min",
        markdown.display(),
        png.display(),
        started.elapsed().as_secs_f64() / 60.0
    ));
    Ok(())
}

/// Builds what the benchmark runs: the release binaries and the criterion benchmark (before
/// anything is measured, so no compiler competes with the measurements), or for a smoke run
/// the debug binaries.
fn build(smoke: bool) -> Result<conditions::Binaries> {
    let mut build = cmd::cargo();
    build.args(["build", "-p", "sockwatch-tui", "--bins"]);
    if !smoke {
        build.arg("--release");
        cmd::run(&mut build)?;
        cmd::run(cmd::cargo().args([
            "bench",
            "-p",
            "sockwatch-tui",
            "--bench",
            "table",
            "--no-run",
        ]))?;
    } else {
        cmd::run(&mut build)?;
    }
    let profile = if smoke { "debug" } else { "release" };
    let dir = cmd::target_dir().join(profile);
    let work: PathBuf = if smoke {
        cmd::target_dir().join("bench/smoke")
    } else {
        cmd::target_dir().join("bench")
    };
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(conditions::Binaries {
        sockwatch: dir.join("sockwatch-tui"),
        load: dir.join("sockwatch-load"),
        work,
        cpus: conditions::Cpus::of_this_machine(),
    })
}

fn throughput_plan(smoke: bool) -> throughput::Plan {
    let udp = |target| throughput::Step {
        target,
        tcp: false,
        ring_kib: None,
    };
    if smoke {
        return throughput::Plan {
            steps: vec![udp(Some(10_000))],
            secs: 1.0,
            processes: 1,
        };
    }
    let mut steps: Vec<_> = [50_000, 100_000, 200_000]
        .into_iter()
        .map(|rate| udp(Some(rate)))
        .collect();
    steps.push(udp(None));
    steps.push(throughput::Step {
        target: None,
        tcp: true,
        ring_kib: None,
    });
    // Beyond capacity on purpose: a ring buffer too small for the bursts, so events are lost,
    // to show that the loss is counted and nothing breaks.
    steps.push(throughput::Step {
        target: None,
        tcp: false,
        ring_kib: Some(16),
    });
    throughput::Plan {
        steps,
        secs: 3.0,
        processes: 2,
    }
}

fn footprint_plan(smoke: bool) -> footprint::Plan {
    use footprint::Load;
    if smoke {
        return footprint::Plan {
            loads: vec![Load::Hold(20)],
            secs: 1.0,
        };
    }
    footprint::Plan {
        loads: vec![
            Load::Idle,
            Load::Hold(500),
            Load::Hold(5_000),
            Load::Churn(20_000),
        ],
        secs: 10.0,
    }
}
