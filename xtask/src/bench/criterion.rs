//! The criterion benchmark `sockwatch-tui/benches/table.rs` (the reducer's refresh, the
//! filtered listing, the table's render, at 100, 10k and 100k rows), read back from
//! criterion's own sample files.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cmd;

/// One size: ns per iteration of `refresh`, `visible` and `render`, every sample.
#[derive(Clone, Debug)]
pub struct Rows {
    pub rows: usize,
    pub parts: [Vec<f64>; 3],
}

/// Runs the benchmark, samples under `work/criterion`, output in `work/criterion.log`; a smoke
/// run builds it in the dev profile and measures 100 rows briefly, through the same files.
pub fn run(work: &Path, smoke: bool) -> Result<Vec<Rows>> {
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
        let [refresh, visible, render] = ["refresh", "visible", "render"].map(|p| read(rows, p));
        let parts = [refresh?, visible?, render?];
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
    anyhow::ensure!(complete, "no samples");
    Ok(iters.iter().zip(&times).map(|(i, t)| t / i).collect())
}
