//! Scale: the criterion benchmark `sockwatch-tui/benches/table.rs` (reducer refresh, listing,
//! render at 100, 10k and 100k rows), read back from criterion's own sample files.

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::stats::Summary;
use crate::cmd;

pub const SIZES: [usize; 3] = [100, 10_000, 100_000];
/// The benchmark functions of each size, in the order the report shows them.
pub const PARTS: [&str; 3] = ["refresh", "visible", "render"];

#[derive(Clone, Debug)]
pub struct RenderResult {
    pub rows: usize,
    /// ns per iteration of each of [`PARTS`].
    pub parts: Vec<(&'static str, Summary)>,
}

impl RenderResult {
    pub fn part(&self, name: &str) -> Option<Summary> {
        self.parts.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }
}

/// Runs the benchmark (release, the `bench` profile) and reads its samples. Its output goes to
/// `work/criterion.log`.
pub fn run(work: &Path) -> Result<Vec<RenderResult>> {
    let home = work.join("criterion");
    let log = work.join("criterion.log");
    let mut bench = cmd::cargo();
    bench
        .args(["bench", "-p", "sockwatch-tui", "--bench", "table"])
        .env("CRITERION_HOME", &home)
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::create(work.join("criterion.stderr"))?);
    cmd::run(&mut bench)
        .with_context(|| format!("the table benchmark failed; see {}", log.display()))?;
    SIZES
        .iter()
        .map(|&rows| {
            let parts = PARTS
                .iter()
                .map(|&part| {
                    let file = home
                        .join(format!("table_{rows}"))
                        .join(part)
                        .join("new/sample.json");
                    Ok((part, read_samples(&file)?))
                })
                .collect::<Result<_>>()?;
            Ok(RenderResult { rows, parts })
        })
        .collect()
}

/// The smoke run: the benchmark built in the test profile and run once per function
/// (criterion's test mode), at 100 rows only.
pub fn smoke() -> Result<()> {
    cmd::run(cmd::cargo().args([
        "test",
        "-p",
        "sockwatch-tui",
        "--bench",
        "table",
        "--",
        "table/100/",
    ]))
}

/// Per-iteration times of a criterion `sample.json` (`iters` and total `times` per sample).
fn read_samples(file: &Path) -> Result<Summary> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    parse_samples(&text).with_context(|| format!("parsing {}", file.display()))
}

fn parse_samples(text: &str) -> Result<Summary> {
    let sample: Value = serde_json::from_str(text)?;
    let numbers = |key: &str| -> Vec<f64> {
        sample[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (iters, times) = (numbers("iters"), numbers("times"));
    if iters.is_empty() || iters.len() != times.len() {
        bail!("no samples");
    }
    let per_iter: Vec<f64> = iters.iter().zip(&times).map(|(i, t)| t / i).collect();
    Summary::of(&per_iter).context("no samples")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_per_iteration() {
        let s = parse_samples(
            r#"{"sampling_mode":"Flat","iters":[2.0,2.0,4.0],"times":[200.0,300.0,400.0]}"#,
        )
        .unwrap();
        assert_eq!((s.min, s.median, s.max), (100.0, 100.0, 150.0));
        assert!(parse_samples(r#"{"iters":[],"times":[]}"#).is_err());
    }
}
