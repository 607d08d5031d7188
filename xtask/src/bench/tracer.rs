//! The conditions a loop runs under and the tracers that make them: nothing; the floor (bpftrace,
//! empty actions on write, sendto and close: the hooks' price alone); sockwatch with each
//! backend; the article's way (bpftrace printing every `sendto` and `close`).

use std::time::Duration;
use std::{collections::BTreeSet, collections::HashMap, fs, fs::File, io::BufRead, io::BufReader};
use std::{path::Path, path::PathBuf, process::Child, process::Command, process::Stdio};

use anyhow::{anyhow, bail, Context, Result};

use super::{kernel, Binaries};
use crate::cmd;

/// bpftrace compiles ~40 programs with LLVM before it attaches them, on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The floor as issue #10 defines it, the same whatever sockwatch hooks.
const FLOOR_PROBES: &str =
    "tracepoint:syscalls:sys_enter_write,tracepoint:syscalls:sys_exit_write,\
     tracepoint:syscalls:sys_enter_sendto,tracepoint:syscalls:sys_exit_sendto,\
     tracepoint:syscalls:sys_enter_close,tracepoint:syscalls:sys_exit_close";
const ARTICLE_PROBES: &str =
    "tracepoint:syscalls:sys_enter_sendto,tracepoint:syscalls:sys_enter_close";
const ARTICLE_ACTION: &str = r#"printf("%s pid=%d tid=%d fd=%d\n", comm, pid, tid, args->fd);"#;
/// The kprobe PMU (`CONFIG_KPROBES`), which aya attaches kprobes through (as sockwatch checks).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// The conditions, in the order each round runs them; `as usize` indexes their figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Untraced,
    Floor,
    /// sockwatch with `--probe auto` (the socket backend where the kernel has the socket layer).
    Sockwatch,
    Tracepoint,
    Kprobe,
    Article,
}
use Condition::{Article, Floor, Kprobe, Sockwatch, Tracepoint, Untraced};

/// Sockwatch's backends side by side, the default first.
pub const CONDITIONS: [Condition; 6] = [Untraced, Floor, Sockwatch, Tracepoint, Kprobe, Article];

impl Condition {
    /// Its `--probe`, if it is sockwatch.
    pub fn probe(self) -> Option<&'static str> {
        match self {
            Sockwatch => Some("auto"),
            Tracepoint => Some("tracepoint"),
            Kprobe => Some("kprobe"),
            Untraced | Floor | Article => None,
        }
    }

    /// Why it cannot run on this kernel, if it cannot.
    pub fn unavailable(self) -> Option<&'static str> {
        let kprobes = Path::new(KPROBE_PMU).exists();
        (self == Kprobe && !kprobes).then_some("no kprobes in this kernel")
    }
}

/// What sockwatch printed about one process: lifecycle records (connect, accept, close),
/// `open` records (its sockets still tracked at the end), the most one of its sockets sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidRecords {
    pub lifecycle: u64,
    pub open: u64,
    pub max_sent: u64,
}

/// sockwatch's JSON records, tallied; `end_lost` is the `end` record's `lost`.
#[derive(Debug, Default)]
pub struct Records {
    pub by_pid: HashMap<u32, PidRecords>,
    pub end_lost: Option<u64>,
}

impl Records {
    fn add(&mut self, line: &str) {
        // `event` is always the first key.
        let event = line.strip_prefix(r#"{"event":""#).unwrap_or("");
        let event = event.split('"').next().unwrap_or("");
        if event == "end" {
            self.end_lost = number(line, r#""lost":"#);
        }
        if !matches!(event, "connect" | "accept" | "close" | "open") {
            return;
        }
        let pid = number(line, r#""pid":"#).and_then(|p| u32::try_from(p).ok());
        let of_pid = self.by_pid.entry(pid.unwrap_or(0)).or_default();
        of_pid.open += u64::from(event == "open");
        of_pid.lifecycle += u64::from(event != "open");
        let sent = number(line, r#""bytes_sent":"#).unwrap_or(0);
        of_pid.max_sent = of_pid.max_sent.max(sent);
    }

    pub fn of(&self, pid: u32) -> PidRecords {
        self.by_pid.get(&pid).copied().unwrap_or_default()
    }
}

/// The number after `key` (`"pid":`) in a JSON line (no full parse: a step prints ~700k).
fn number(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit());
    rest[..end.unwrap_or(rest.len())].parse().ok()
}

/// A condition in force; `stop` ends it and waits until the kernel has detached everything.
#[derive(Default)]
pub struct Tracer {
    child: Option<Child>,
    /// The tracer's process name, which its detaching descendants share.
    comm: &'static str,
    /// Its programs, whose detach `stop` waits for.
    progs: BTreeSet<u64>,
    /// Events it attached, and the backend sockwatch reports in its start record.
    pub hooks: usize,
    pub probe: String,
    /// The kernel's hook links and perf event fds with programs while it alone is attached.
    expect: (usize, usize),
    output: Option<PathBuf>,
}

impl Tracer {
    /// Starts `condition`, its tracer pinned to the observer CPU.
    pub fn start(condition: Condition, bins: &Binaries) -> Result<Self> {
        match (condition, condition.probe()) {
            (Floor, _) => Self::bpftrace(bins, FLOOR_PROBES, ""),
            (Article, _) => Self::bpftrace(bins, ARTICLE_PROBES, ARTICLE_ACTION),
            (_, Some(probe)) => Self::sockwatch(bins, bins.cpus.map(|c| c.1), probe),
            _ => Ok(Self::default()),
        }
    }

    /// `command`, its stderr in the work directory, as a tracer named `comm`.
    fn spawn(bins: &Binaries, mut command: Command, comm: &'static str) -> Result<Self> {
        let path = bins.work.join(format!("{comm}.stderr"));
        let stderr = File::create(&path).with_context(|| format!("creating {}", path.display()));
        command.stdin(Stdio::null()).stderr(stderr?);
        let (mut tracer, child) = (Self::default(), spawn(&mut command)?);
        (tracer.child, tracer.comm) = (Some(child), comm);
        Ok(tracer)
    }

    /// `sockwatch-tui --json --probe PROBE` (pinned to `cpu`, if any), once attached, checked to
    /// hold exactly its backend's events. Its records go to a file (`--json > file`): a pipe to
    /// a reader of ours competed for the 2 cores and blocked its writes, and it lost events.
    pub fn sockwatch(bins: &Binaries, cpu: Option<usize>, probe: &str) -> Result<Self> {
        let path = bins.work.join("sockwatch.jsonl");
        let out = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut command = pinned(&bins.sockwatch, cpu);
        // Every socket the bench measures is opened after the start; without the /proc scan
        // for older ones, the start record (flushed at once) is the moment sockwatch is ready.
        command.args(["--json", "--no-existing", "--probe", probe]);
        command.stdout(out);
        let mut tracer = Self::spawn(bins, command, "sockwatch-tui")?;
        tracer.output = Some(path.clone());
        tracer.wait_started(bins, || {
            let start = fs::read_to_string(&path).unwrap_or_default();
            Ok(start.starts_with(r#"{"event":"start""#))
        })?;
        let start = fs::read_to_string(&path)?;
        let chosen = start.split(r#""probe":""#).nth(1);
        let chosen = chosen.context("no probe in sockwatch's start record")?;
        tracer.probe = chosen.split('"').next().unwrap_or_default().to_owned();
        let held = kernel::held_by(tracer.pid())?;
        // A stale or shared target dir's object attaches other events: another program's figures.
        let want = kernel::sockwatch_events(&tracer.probe);
        if let Some(want) = want.filter(|want| *want != held.events) {
            let (probe, held) = (&tracer.probe, &held.events);
            bail!("sockwatch ({probe}) attached {held:?}, not {want:?}");
        }
        (tracer.progs, tracer.hooks) = (held.progs, held.links);
        tracer.expect = (held.links, held.raw);
        Ok(tracer)
    }

    /// bpftrace running `action` on each of `probes`, once every probe has its program (an
    /// empty action still gets one: `r0 = 1; exit`).
    fn bpftrace(bins: &Binaries, probes: &str, action: &str) -> Result<Self> {
        let mut command = pinned(Path::new("bpftrace"), bins.cpus.map(|c| c.1));
        // Its output, and the blank lines it prints on Ctrl-C, go nowhere.
        let script = format!("{probes} {{ {action} }}");
        command.args(["-o", "/dev/null", "-e", &script]);
        command.stdout(Stdio::null());
        let mut tracer = Self::spawn(bins, command, "bpftrace")?;
        let want = probes.split(',').filter_map(|p| p.rsplit(':').next());
        let mut want: Vec<&str> = want.collect();
        want.sort_unstable();
        let pid = u64::from(tracer.pid());
        tracer.wait_started(bins, || {
            let (_, perf) = kernel::attachments()?;
            let held = perf.iter().filter(|(p, _)| *p == pid);
            let mut held: Vec<&str> = held.map(|(_, name)| name.as_str()).collect();
            held.sort_unstable();
            Ok(held == want)
        })?;
        (tracer.progs, tracer.hooks) = (kernel::held_by(tracer.pid())?.progs, want.len());
        tracer.expect = (0, tracer.hooks);
        Ok(tracer)
    }

    /// Waits until `ready` holds, failing if the tracer exits first.
    fn wait_started(&mut self, bins: &Binaries, ready: impl Fn() -> Result<bool>) -> Result<()> {
        let stderr = bins.work.join(format!("{}.stderr", self.comm));
        let failed = || anyhow!("{} did not start; see {}", self.comm, stderr.display());
        let started = kernel::poll(START_TIMEOUT, || {
            let child = self.child.as_mut().context("no tracer")?;
            if child.try_wait()?.is_some() {
                return Err(failed());
            }
            Ok(ready()?.then_some(()))
        })?;
        started.ok_or_else(failed)
    }

    /// What sockwatch has printed so far (nothing for the other tracers).
    pub fn records(&self) -> Result<Records> {
        let mut records = Records::default();
        if let Some(path) = &self.output {
            let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
            for line in BufReader::with_capacity(1 << 20, file).lines() {
                records.add(&line?);
            }
        }
        Ok(records)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits, at most `limit`, until the kernel's tracepoint programs are exactly this
    /// condition's (no other tracer slowing syscalls beside it); whether they are.
    pub fn clean(&self, limit: Duration) -> Result<bool> {
        let clean = kernel::poll(limit, || {
            let (links, perf) = kernel::attachments()?;
            Ok(((links, perf.len()) == self.expect).then_some(()))
        });
        Ok(clean?.is_some())
    }

    /// Ends the condition (SIGINT: bpftrace's Ctrl-C, and one of sockwatch's stops), then
    /// waits until its programs are detached. Returns what sockwatch printed.
    pub fn stop(mut self) -> Result<Records> {
        if let Some(mut child) = self.child.take() {
            let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
            // SAFETY: kill(2) on our own child, not reaped yet, so the pid is still its.
            unsafe { libc::kill(pid, libc::SIGINT) };
            let status = kernel::poll(EXIT_TIMEOUT, || Ok(child.try_wait()?))?;
            let status = status.with_context(|| format!("{} did not stop", self.comm))?;
            anyhow::ensure!(status.success(), "{} exited with {status}", self.comm);
        }
        kernel::wait_detached(&self.progs, self.comm)?;
        self.records()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `program`, pinned to `cpu` with taskset (which execs it: the pid is the program's).
pub fn pinned(program: &Path, cpu: Option<usize>) -> Command {
    let mut command = Command::new(cpu.map_or(program, |_| Path::new("taskset")));
    if let Some(cpu) = cpu {
        command.args(["-c", &cpu.to_string()]).arg(program);
    }
    command
}

pub fn spawn(command: &mut Command) -> Result<Child> {
    cmd::say(cmd::display(command));
    let child = command.spawn();
    child.with_context(|| format!("cannot run {}", cmd::display(command)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_tallied_per_process() {
        let mut records = Records::default();
        for line in [
            r#"{"event":"start","time":1.0,"probe":"tracepoint","pid":9,"tracked_map_id":3}"#,
            r#"{"event":"connect","time":1.0,"tid":8,"pid":7,"fd":3,"bytes_sent":0}"#,
            r#"{"event":"close","time":2.0,"tid":8,"connect_tid":8,"pid":7,"bytes_sent":640}"#,
            r#"{"event":"open","time":3.0,"pid":5,"fd":4,"bytes_sent":10}"#,
            r#"{"event":"end","time":3.0,"open":1,"lost":3,"untracked":0,"repairs":0}"#,
        ] {
            records.add(line);
        }
        assert_eq!((records.of(7).lifecycle, records.of(7).max_sent), (2, 640));
        assert_eq!((records.of(5).lifecycle, records.of(5).open), (0, 1));
        assert_eq!((records.of(9).lifecycle, records.end_lost), (0, Some(3)));
    }
}
