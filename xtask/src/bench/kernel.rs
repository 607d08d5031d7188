//! What the kernel has attached, as bpftool reports it, and its per-program run statistics.
//!
//! Every measurement starts only when the kernel's hooks are exactly those of the condition
//! being measured: nothing left over from the previous condition (detaching ~40 programs
//! takes the kernel seconds, and sockwatch does it in a background child after it exits), and
//! nothing from another tool running beside the benchmark.

use std::{
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Programs attached to tracepoints or kprobes: aya attaches through BPF links (`bpftool
/// link`), bpftrace through perf event fds (`bpftool perf`); each lists what the other does not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachments {
    pub links: usize,
    /// `(pid, what)` of each perf event with a program.
    pub perf: Vec<(u64, String)>,
}

impl Attachments {
    pub fn total(&self) -> usize {
        self.links + self.perf.len()
    }

    fn parse(links: &str, perf: &str) -> Result<Self> {
        let links: Value = serde_json::from_str(links).context("parsing `bpftool link show`")?;
        let perf: Value = serde_json::from_str(perf).context("parsing `bpftool perf show`")?;
        let links = links.as_array().map_or(0, |all| {
            all.iter().filter(|l| l["type"] == "perf_event").count()
        });
        let perf = perf
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|p| {
                        let what = p["tracepoint"]
                            .as_str()
                            .or_else(|| p["func"].as_str())
                            .unwrap_or("?");
                        (p["pid"].as_u64().unwrap_or(0), what.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self { links, perf })
    }
}

fn bpftool(args: &[&str]) -> Result<String> {
    let output = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("cannot run bpftool (cargo xtask setup installs it)")?;
    if !output.status.success() {
        bail!(
            "bpftool {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // An empty listing prints nothing on some versions.
    Ok(if text.is_empty() { "[]".into() } else { text })
}

pub fn attachments() -> Result<Attachments> {
    Attachments::parse(&bpftool(&["link", "show"])?, &bpftool(&["perf", "show"])?)
}

/// Waits until `ready` holds for what is attached, at most `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    ready: impl Fn(&Attachments) -> bool,
) -> Result<Attachments> {
    let start = Instant::now();
    loop {
        let now = attachments()?;
        if ready(&now) {
            return Ok(now);
        }
        if start.elapsed() > timeout {
            bail!(
                "timed out after {:.0} s waiting for {what}: {} BPF links and {} perf events with \
                 programs are attached ({:?}); is another BPF tool (or a test) running?",
                timeout.as_secs_f64(),
                now.links,
                now.perf.len(),
                now.perf
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until no program is attached anywhere, then a little longer: the kernel finishes a
/// detach (an RCU grace period) after the link is gone from its list.
pub fn wait_detached(timeout: Duration) -> Result<()> {
    wait_until("every program to be detached", timeout, |a| a.total() == 0)?;
    thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// One loaded program's run statistics (counted only while `kernel.bpf_stats_enabled` is 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub id: u64,
    /// As the kernel keeps it: at most 15 characters.
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

pub fn program_stats() -> Result<Vec<ProgramStats>> {
    parse_program_stats(&bpftool(&["prog", "show"])?)
}

fn parse_program_stats(text: &str) -> Result<Vec<ProgramStats>> {
    let all: Value = serde_json::from_str(text).context("parsing `bpftool prog show`")?;
    Ok(all
        .as_array()
        .map(|all| {
            all.iter()
                .map(|p| ProgramStats {
                    id: p["id"].as_u64().unwrap_or(0),
                    name: p["name"].as_str().unwrap_or("?").to_owned(),
                    run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                    run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default())
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` on while this lives; the old value is put back on drop. The
/// statistics cost two clock reads per program run, so they are on only for the pass that
/// attributes costs to programs, never while overhead is measured.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let previous =
            fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.previous.trim());
    }
}

/// Whether the statistics are off, as they must be while overhead is measured.
pub fn bpf_stats_off() -> bool {
    fs::read_to_string(BPF_STATS).is_ok_and(|v| v.trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_count_perf_links_and_perf_events() {
        let links = r#"[{"id":1,"type":"perf_event","prog_id":5},{"id":2,"type":"cgroup","prog_id":6},
                        {"id":3,"type":"perf_event","prog_id":7}]"#;
        let perf = r#"[{"pid":42,"fd":8,"prog_id":9,"fd_type":"tracepoint","tracepoint":"sys_enter_close"}]"#;
        let a = Attachments::parse(links, perf).unwrap();
        assert_eq!(a.links, 2);
        assert_eq!(a.perf, [(42, "sys_enter_close".to_owned())]);
        assert_eq!(a.total(), 3);
        assert_eq!(Attachments::parse("[]", "[]").unwrap().total(), 0);
    }

    #[test]
    fn program_stats_are_read_from_bpftool_json() {
        let text = r#"[{"id":12,"type":"tracepoint","name":"exit_write","run_time_ns":5000,"run_cnt":100},
                       {"id":13,"type":"tracepoint","name":"floor"}]"#;
        let stats = parse_program_stats(text).unwrap();
        assert_eq!(stats[0].name, "exit_write");
        assert_eq!((stats[0].run_cnt, stats[0].run_time_ns), (100, 5000));
        assert_eq!((stats[1].run_cnt, stats[1].run_time_ns), (0, 0));
    }
}
