//! Named, timed steps for multi-step tasks (`test`, later `vm-test` and `bench`): each step
//! announces itself, a failing step does not hide the results of the others, and a summary line
//! ends the log.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::cmd::say;

pub struct Steps {
    task: &'static str,
    done: Vec<Outcome>,
}

struct Outcome {
    name: &'static str,
    elapsed: Duration,
    ok: bool,
}

impl Steps {
    pub fn new(task: &'static str) -> Self {
        Self {
            task,
            done: Vec::new(),
        }
    }

    /// Runs one step, prints its error if any, and returns whether it passed.
    pub fn run(&mut self, name: &'static str, step: impl FnOnce() -> Result<()>) -> bool {
        say(format!("==> {name}"));
        let start = Instant::now();
        let result = step();
        let elapsed = start.elapsed();
        let ok = result.is_ok();
        if let Err(e) = result {
            say(format!("{e:#}"));
        }
        say(format!(
            "<== {name} {} after {:.1} s",
            if ok { "passed" } else { "FAILED" },
            elapsed.as_secs_f64()
        ));
        self.done.push(Outcome { name, elapsed, ok });
        ok
    }

    /// Prints the summary line; an error names the failed steps.
    pub fn finish(self) -> Result<()> {
        say(summary(self.task, &self.done));
        let failed: Vec<_> = self.done.iter().filter(|o| !o.ok).map(|o| o.name).collect();
        if !failed.is_empty() {
            bail!("{} failed: {}", self.task, failed.join(", "));
        }
        Ok(())
    }
}

/// "test: 2 of 3 steps passed in 12.0 s (setup ok 0.1 s, lint FAILED 2.0 s, ...)".
fn summary(task: &str, done: &[Outcome]) -> String {
    let passed = done.iter().filter(|o| o.ok).count();
    let total: Duration = done.iter().map(|o| o.elapsed).sum();
    let steps: Vec<_> = done
        .iter()
        .map(|o| {
            let verdict = if o.ok { "ok" } else { "FAILED" };
            format!("{} {verdict} {:.1} s", o.name, o.elapsed.as_secs_f64())
        })
        .collect();
    format!(
        "{task}: {passed} of {} steps passed in {:.1} s ({})",
        done.len(),
        total.as_secs_f64(),
        steps.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_every_step_with_its_verdict() {
        let done = [
            Outcome {
                name: "setup",
                elapsed: Duration::from_millis(100),
                ok: true,
            },
            Outcome {
                name: "lint",
                elapsed: Duration::from_millis(2000),
                ok: false,
            },
        ];
        assert_eq!(
            summary("test", &done),
            "test: 1 of 2 steps passed in 2.1 s (setup ok 0.1 s, lint FAILED 2.0 s)"
        );
    }
}
