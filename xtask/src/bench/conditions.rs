//! The four conditions a workload runs under, and the processes that make them: sockwatch
//! itself, the floor (`sockwatch-tui --attach-floor`), and the article's way (bpftrace).

use std::{
    fs::{self, File},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::kernel;
use crate::cmd;

/// Loading and attaching ~40 programs, or starting bpftrace (it compiles its script with
/// LLVM first), on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Detaching takes the kernel an RCU grace period per program: seconds for ~40.
const DETACH_TIMEOUT: Duration = Duration::from_secs(90);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The article's way, with bpftrace as the stand-in: an event to user space for every
/// `sendto` and every `close` of every process, formatted and printed there.
pub const BPFTRACE_SCRIPT: &str = "tracepoint:syscalls:sys_enter_sendto,\
tracepoint:syscalls:sys_enter_close { printf(\"%s pid=%d tid=%d fd=%d\\n\", comm, pid, tid, args->fd); }";

/// The programs under test, and where the benchmark keeps its logs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub sockwatch: PathBuf,
    pub load: PathBuf,
    /// `target/bench` (or its `smoke` subdirectory): logs and raw outputs.
    pub work: PathBuf,
    /// Where the overhead pass pins its processes (`None` on a single-CPU machine).
    pub cpus: Option<Cpus>,
}

/// The overhead pass runs each loop alone on one CPU and the observer (sockwatch, the floor,
/// bpftrace) on another, so that what a loop pays is what the hooks and the kernel programs
/// cost it, not a share of its core taken by the observer's user space (measured on its own in
/// the user-space pass), and so that the scheduler's placement does not change from run to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpus {
    pub workload: usize,
    pub observer: usize,
}

impl Cpus {
    /// The last CPU for the loops, the first for the observer; `None` with a single CPU.
    pub fn of_this_machine() -> Option<Self> {
        let n = thread::available_parallelism().map_or(1, usize::from);
        (n >= 2).then_some(Self {
            workload: n - 1,
            observer: 0,
        })
    }
}

impl Binaries {
    /// `program`, pinned to `cpu` with taskset (which execs it: the pid is the program's).
    pub fn command(program: &Path, cpu: Option<usize>) -> Command {
        match cpu {
            Some(cpu) => {
                let mut command = Command::new("taskset");
                command.args(["-c", &cpu.to_string()]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn observer_cpu(&self) -> Option<usize> {
        self.cpus.map(|c| c.observer)
    }

    pub fn workload_cpu(&self) -> Option<usize> {
        self.cpus.map(|c| c.workload)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    Bare,
    Floor,
    Sockwatch,
    Article,
}

/// In the order each round runs them.
pub const CONDITIONS: [Condition; 4] = [
    Condition::Bare,
    Condition::Floor,
    Condition::Sockwatch,
    Condition::Article,
];

impl Condition {
    pub fn letter(self) -> char {
        match self {
            Self::Bare => 'a',
            Self::Floor => 'b',
            Self::Sockwatch => 'c',
            Self::Article => 'd',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bare => "nothing attached",
            Self::Floor => "floor: empty programs",
            Self::Sockwatch => "sockwatch --json",
            Self::Article => "per-event printf (bpftrace)",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Self::Bare => 0,
            Self::Floor => 1,
            Self::Sockwatch => 2,
            Self::Article => 3,
        }
    }
}

/// A condition in force; `stop` ends it and waits until the kernel has detached everything.
pub struct Attached {
    process: Option<Child>,
    /// Programs attached (links or perf events), as counted once the condition was ready.
    pub attachments: usize,
}

impl Attached {
    /// Starts `condition` from a kernel with nothing attached.
    pub fn start(condition: Condition, bins: &Binaries) -> Result<Self> {
        kernel::wait_detached(DETACH_TIMEOUT)?;
        match condition {
            Condition::Bare => Ok(Self {
                process: None,
                attachments: 0,
            }),
            Condition::Floor => start_floor(bins),
            Condition::Sockwatch => {
                let sockwatch = Sockwatch::start(bins, &[], Output::Null, bins.observer_cpu())?;
                Ok(Self {
                    attachments: sockwatch.attachments,
                    process: Some(sockwatch.into_child()),
                })
            }
            Condition::Article => start_bpftrace(bins),
        }
    }

    /// The observer's pid (none for nothing attached).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// Ends the condition: SIGINT (bpftrace's Ctrl-C) or SIGTERM, then waits for the process
    /// and for the kernel to have detached every program.
    pub fn stop(mut self) -> Result<()> {
        if let Some(child) = self.process.take() {
            let status = terminate(child, libc::SIGINT)?;
            if !status.success() {
                bail!("a benchmark condition's process exited with {status}");
            }
        }
        kernel::wait_detached(DETACH_TIMEOUT)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_floor(bins: &Binaries) -> Result<Attached> {
    let mut command = Binaries::command(&bins.sockwatch, bins.observer_cpu());
    command
        .arg("--attach-floor")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(&bins.work, "floor.stderr")?);
    let mut child = spawn(&mut command)?;
    let stdout = child.stdout.take().context("the floor's stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
    let start: Value = serde_json::from_str(&line).with_context(|| {
        format!(
            "the floor did not start (first line {line:?}; see {})",
            bins.work.join("floor.stderr").display()
        )
    })?;
    let attached = start["attached"]
        .as_u64()
        .context("the floor's start line has no `attached`")? as usize;
    // Owned from here on, so that an error below still kills it.
    let floor = Attached {
        process: Some(child),
        attachments: attached,
    };
    kernel::wait_until("the floor's programs", START_TIMEOUT, |a| {
        a.links == attached && a.perf.is_empty()
    })?;
    Ok(floor)
}

fn start_bpftrace(bins: &Binaries) -> Result<Attached> {
    let mut command = Binaries::command(Path::new("bpftrace"), bins.observer_cpu());
    command
        .args(["-o", "/dev/null", "-e", BPFTRACE_SCRIPT])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(&bins.work, "bpftrace.stderr")?);
    let child = spawn(&mut command)?;
    let pid = u64::from(child.id());
    let mut attached = Attached {
        process: Some(child),
        attachments: 0,
    };
    let now = kernel::wait_until("bpftrace's two probes", START_TIMEOUT, |a| {
        a.links == 0 && a.perf.iter().filter(|(p, _)| *p == pid).count() == 2
    })?;
    attached.attachments = now.total();
    // Its BEGIN-time setup (perf buffer readers) follows the attach.
    thread::sleep(Duration::from_millis(300));
    Ok(attached)
}

/// Where a sockwatch run's JSON goes.
pub enum Output {
    /// `/dev/null`, as a user piping it away would.
    Null,
    /// Counted line by line by a thread of ours (throughput: every record must arrive).
    Count,
    /// A file (small outputs whose `end` record we read).
    File(PathBuf),
}

/// The records of a counted run.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// `connect`, `accept` and `close` records.
    pub lifecycle: u64,
    /// `lost` records.
    pub lost_records: u64,
    pub end: Option<Value>,
}

impl Counts {
    fn add_line(&mut self, line: &str) {
        // `event` is always the first key.
        let event = line
            .strip_prefix("{\"event\":\"")
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("");
        match event {
            "connect" | "accept" | "close" => self.lifecycle += 1,
            "lost" => self.lost_records += 1,
            "end" => self.end = serde_json::from_str(line).ok(),
            _ => {}
        }
    }
}

/// A running `sockwatch-tui --json` (killed if dropped before `stop`).
pub struct Sockwatch {
    /// `None` once handed over or stopped.
    child: Option<Child>,
    counter: Option<JoinHandle<Counts>>,
    pub attachments: usize,
}

impl Sockwatch {
    /// Starts it with `extra` arguments (pinned to `cpu`, if any) and waits until its probes
    /// are attached and its start-up scan of /proc is done.
    pub fn start(
        bins: &Binaries,
        extra: &[&str],
        output: Output,
        cpu: Option<usize>,
    ) -> Result<Self> {
        let log = bins.work.join("sockwatch.log");
        let _ = fs::remove_file(&log);
        let mut command = Binaries::command(&bins.sockwatch, cpu);
        command
            .arg("--json")
            .arg("--log-file")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(log_file(&bins.work, "sockwatch.stderr")?);
        match &output {
            Output::Null => command.stdout(Stdio::null()),
            Output::Count => command.stdout(Stdio::piped()),
            Output::File(path) => command.stdout(
                File::create(path).with_context(|| format!("creating {}", path.display()))?,
            ),
        };
        let mut child = spawn(&mut command)?;
        let counter = match output {
            Output::Count => {
                let stdout = child.stdout.take().context("sockwatch's stdout")?;
                Some(thread::spawn(move || {
                    let mut counts = Counts::default();
                    let mut reader = BufReader::with_capacity(1 << 20, stdout);
                    let mut line = String::new();
                    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                        counts.add_line(&line);
                        line.clear();
                    }
                    counts
                }))
            }
            _ => None,
        };
        let mut sockwatch = Self {
            child: Some(child),
            counter,
            attachments: 0,
        };
        sockwatch.wait_attached(&log, bins)?;
        let now = kernel::wait_until("sockwatch's programs", START_TIMEOUT, |a| a.links > 0)?;
        sockwatch.attachments = now.total();
        // The `existing` scan of /proc follows the start record.
        thread::sleep(Duration::from_millis(500));
        Ok(sockwatch)
    }

    fn wait_attached(&mut self, log: &Path, bins: &Binaries) -> Result<()> {
        let start = Instant::now();
        loop {
            if fs::read_to_string(log).is_ok_and(|text| text.contains("attached the")) {
                return Ok(());
            }
            let child = self.child.as_mut().context("sockwatch was stopped")?;
            if let Some(status) = child.try_wait()? {
                bail!(
                    "sockwatch exited with {status} before attaching; see {}",
                    bins.work.join("sockwatch.stderr").display()
                );
            }
            if start.elapsed() > START_TIMEOUT {
                bail!("sockwatch did not attach within {START_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The process, to be stopped by its new owner (only `Output::Null` runs: no counter).
    fn into_child(mut self) -> Child {
        self.child
            .take()
            .expect("a started sockwatch has its process")
    }

    /// SIGTERM, then its exit status and (for a counted run) its records. Does not wait for
    /// the detach, which sockwatch leaves to a background child.
    pub fn stop(mut self) -> Result<(ExitStatus, Option<Counts>)> {
        let child = self.child.take().context("sockwatch was stopped")?;
        let status = terminate(child, libc::SIGTERM)?;
        let counts = self
            .counter
            .take()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("the counting thread panicked"))
            })
            .transpose()?;
        Ok((status, counts))
    }
}

impl Drop for Sockwatch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` and waits for the exit (SIGKILL after a timeout, which is an error).
pub fn terminate(mut child: Child, signal: libc::c_int) -> Result<ExitStatus> {
    if child.try_wait()?.is_none() {
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, signal) };
    }
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > EXIT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "process {} did not exit within {EXIT_TIMEOUT:?} of a signal",
                child.id()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn spawn(command: &mut Command) -> Result<Child> {
    cmd::say(cmd::display(command));
    command
        .spawn()
        .with_context(|| format!("cannot run {}", cmd::display(command)))
}

/// A log file in the benchmark's work directory, for a child's stderr.
pub fn log_file(work: &Path, name: &str) -> Result<File> {
    let path = work.join(name);
    File::create(&path).with_context(|| format!("creating {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_records_by_event() {
        let mut counts = Counts::default();
        for line in [
            r#"{"event":"start","time":1.0,"probe":"tracepoint","pid":1,"tracked_map_id":2}"#,
            r#"{"event":"connect","time":1.0,"pid":5}"#,
            r#"{"event":"accept","time":1.0,"pid":5}"#,
            r#"{"event":"close","time":1.0,"pid":5}"#,
            r#"{"event":"lost","time":1.0,"count":3,"total":3}"#,
            r#"{"event":"end","time":2.0,"open":0,"lost":3,"untracked":0,"repairs":0}"#,
        ] {
            counts.add_line(line);
        }
        assert_eq!((counts.lifecycle, counts.lost_records), (3, 1));
        assert_eq!(
            counts.end.as_ref().map(|e| e["lost"].as_u64()),
            Some(Some(3))
        );
    }

    #[test]
    fn conditions_run_in_article_order() {
        let letters: String = CONDITIONS.iter().map(|c| c.letter()).collect();
        assert_eq!(letters, "abcd");
        assert!(CONDITIONS.iter().enumerate().all(|(i, c)| c.index() == i));
    }
}
