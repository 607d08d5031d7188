//! Per-syscall overhead: five `sockwatch-load` loops, each timed under every condition,
//! interleaved round by round (a, b, c, ..., a, b, ...) so that drift on a shared machine lands
//! on every condition alike. Each run keeps the reason it cannot be trusted, if any.

use std::{process::Stdio, time::Duration, time::Instant};

use anyhow::{Context, Result};

use super::{tracer, tracer::Condition, tracer::Tracer, tracer::CONDITIONS, Binaries};

/// `(sockwatch-load mode, what one call is, calls per run)`: about 0.4 s untraced on the
/// development machine, long enough to dwarf start-up; a smoke run makes 1/40 of them.
pub const LOOPS: [(&str, &str, u64); 5] = [
    ("bench-send", "send() 64 B, tracked TCP socket", 175_000),
    ("bench-write-devnull", "write() to /dev/null", 1_600_000),
    ("bench-getppid", "getppid()", 1_600_000),
    ("bench-close", "close() of a dup of /dev/null", 900_000),
    ("bench-churn", "TCP connect+accept+send+close", 12_000),
];
const SEND_BYTES: u64 = 64;

/// Every run of one loop, `[condition][round]`: ns per call, and why the run cannot be
/// trusted (`None`: it can). A condition this kernel cannot run has no runs.
pub type Series = [Vec<(f64, Option<String>)>; CONDITIONS.len()];

/// A [`Series`] per loop ([`LOOPS`] order), each condition's hooked events, the default backend.
#[derive(Default)]
pub struct Overhead {
    pub loops: Vec<Series>,
    pub hooks: [usize; CONDITIONS.len()],
    pub default_probe: String,
}

/// Per round, `(x − a) / (y − a)`: x's added cost as a multiple of y's; valid only if all three
/// runs are and y's added cost is positive (else it is noise, and so is a ratio of it). x's may
/// be 0 or below: a cost lost in the noise, a multiple of at most 0.
pub fn multiples(series: &Series, x: Condition, y: Condition) -> Vec<Result<f64, String>> {
    let [a, x, y] = [0, x as usize, y as usize].map(|c| &series[c]);
    let rounds = a.iter().zip(x).zip(y);
    (rounds.map(|((a, x), y)| {
        if let Some(why) = [a, x, y].iter().find_map(|cell| cell.1.as_ref()) {
            return Err(why.clone());
        }
        match (x.0 - a.0, y.0 - a.0) {
            (added, base) if added.is_nan() || base.is_nan() => Err("no figure".into()),
            (added, base) if base > 0.0 => Ok(added / base),
            _ => Err("the base's added cost <= 0 (noise)".into()),
        }
    }))
    .collect()
}

/// Runs `rounds` rounds (`smoke`: tiny ones) of every loop under every condition this kernel
/// can run; before each condition's runs, other tracers get `wait` to go.
pub fn run(bins: &Binaries, rounds: usize, smoke: bool, wait: Duration) -> Result<Overhead> {
    let share = if smoke { 40 } else { 1 };
    let mut all = Overhead::default();
    all.loops.resize(LOOPS.len(), Series::default());
    for round in 1..=rounds {
        let started = Instant::now();
        for condition in CONDITIONS.into_iter().filter(|c| c.available()) {
            let tracer = Tracer::start(condition, bins)
                .with_context(|| format!("starting {condition:?}"))?;
            all.hooks[condition as usize] = tracer.hooks;
            if condition == Condition::Sockwatch {
                all.default_probe.clone_from(&tracer.probe);
            }
            let sockwatch = !tracer.probe.is_empty();
            let clean_before = tracer.clean(wait)?;
            let runs = LOOPS.iter().map(|l| run_loop(bins, l.0, l.2 / share));
            let runs = runs.collect::<Result<Vec<_>>>()?;
            let clean = clean_before && tracer.clean(Duration::ZERO)?;
            let records = tracer.stop()?;
            for (i, (pid, ns, all_calls)) in runs.into_iter().enumerate() {
                let sent = records.of(pid).max_sent >= all_calls * SEND_BYTES;
                let untracked = sockwatch && i == 0 && !sent;
                let invalid = (!clean).then_some("another tracer was attached");
                let invalid = invalid.or(untracked.then_some("the send socket was not tracked"));
                all.loops[i][condition as usize].push((ns, invalid.map(String::from)));
            }
        }
        let secs = started.elapsed().as_secs_f64();
        crate::cmd::say(format!("bench: round {round}/{rounds}: {secs:.0} s"));
    }
    Ok(all)
}

/// Runs the loop `mode` for `calls` calls on the workload CPU: its pid, ns per call, and
/// every call it made (the untimed warm-up included).
fn run_loop(bins: &Binaries, mode: &str, calls: u64) -> Result<(u32, f64, u64)> {
    let mut command = tracer::pinned(&bins.load, bins.cpus.map(|c| c.0));
    command.args([mode, "--calls", &calls.to_string()]);
    let child = command.stdout(Stdio::piped()).spawn();
    let child = child.with_context(|| format!("running sockwatch-load {mode}"))?;
    let (pid, output) = (child.id(), child.wait_with_output()?);
    let (status, stdout) = (output.status, String::from_utf8_lossy(&output.stdout));
    anyhow::ensure!(status.success(), "sockwatch-load {mode}: {status}");
    // `mode=bench-send calls=N warmup=W secs=S ns_per_call=X`
    let field = |name| super::field(&stdout, name);
    let (ns, calls) = (field("ns_per_call="), field("calls=").zip(field("warmup=")));
    let run = ns.zip(calls);
    let (ns, calls) = run.with_context(|| format!("{mode} printed {stdout:?}"))?;
    Ok((pid, ns, (calls.0 + calls.1) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiples_pair_each_round_and_refuse_noise() {
        let cells = |ns: [f64; 4]| ns.map(|ns| (ns, None)).to_vec();
        let mut series = Series::default();
        series[0] = cells([100.0, 100.0, 100.0, 100.0]);
        series[1] = cells([110.0, 90.0, 120.0, 110.0]);
        series[2] = cells([130.0, 130.0, f64::NAN, 140.0]);
        series[5] = cells([400.0, 400.0, 400.0, 400.0]);
        series[2][3].1 = Some("the send socket was not tracked".into());
        let m = multiples(&series, Condition::Sockwatch, Condition::Floor);
        assert_eq!(m[0], Ok(3.0));
        assert_eq!(m[1], Err("the base's added cost <= 0 (noise)".into()));
        assert_eq!(m[2], Err("no figure".into()));
        assert_eq!(m[3], Err("the send socket was not tracked".into()));
        let article = multiples(&series, Condition::Article, Condition::Sockwatch);
        assert_eq!(article[0], Ok(10.0));
        // A condition that did not run has no rounds.
        assert!(multiples(&series, Condition::Kprobe, Condition::Floor).is_empty());
    }
}
