//! The conditions a loop runs under and the tracers that make them: nothing; the floor (bpftrace,
//! empty actions on write, sendto and close: the hooks' price alone); sockwatch with each
//! backend; the article's way (bpftrace printing every `sendto` and `close`). And what the kernel
//! has attached and a tracer still holds: the facts the conditions wait on before measuring.

use std::time::Duration;
use std::{collections::BTreeSet, collections::HashMap, fs, fs::File, io::BufRead, io::BufReader};
use std::{path::Path, path::PathBuf, process::Child, process::Command, process::Stdio, thread};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use super::{field, Binaries};
use crate::cmd;

/// bpftrace compiles ~40 programs with LLVM before it attaches them, on a busy 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Detaching takes the kernel a grace period per tracepoint: seconds for ~40 of them.
const DETACH_TIMEOUT: Duration = Duration::from_secs(90);
/// Once the detaching process is gone, a little longer for deferred work (RCU callbacks).
const SETTLE: Duration = Duration::from_millis(250);

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
type Ready<'a> = &'a dyn Fn(u32) -> Result<bool>;

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
    pub fn available(self) -> bool {
        self != Kprobe || Path::new(KPROBE_PMU).exists()
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
        let event: String = field(line, r#"{"event":""#).unwrap_or_default();
        if event == "end" {
            self.end_lost = field(line, r#""lost":"#);
        } else if matches!(event.as_str(), "connect" | "accept" | "close" | "open") {
            let of_pid = self.by_pid.entry(field(line, r#""pid":"#).unwrap_or(0));
            let of_pid = of_pid.or_default();
            of_pid.open += u64::from(event == "open");
            of_pid.lifecycle += u64::from(event != "open");
            let sent = field(line, r#""bytes_sent":"#).unwrap_or(0);
            of_pid.max_sent = of_pid.max_sent.max(sent);
        }
    }

    pub fn of(&self, pid: u32) -> PidRecords {
        self.by_pid.get(&pid).copied().unwrap_or_default()
    }
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
        let cpu = bins.cpus.map(|c| c.1);
        match condition {
            Untraced => Ok(Self::default()),
            Floor => Self::bpftrace(bins, FLOOR_PROBES, ""),
            Sockwatch => Self::sockwatch(bins, cpu, "auto"),
            Tracepoint => Self::sockwatch(bins, cpu, "tracepoint"),
            Kprobe => Self::sockwatch(bins, cpu, "kprobe"),
            Article => Self::bpftrace(bins, ARTICLE_PROBES, ARTICLE_ACTION),
        }
    }

    /// `command`, its stderr in `work`, as a tracer named `comm`, once `ready` (given its pid)
    /// holds; an error if it exits first.
    fn spawn(work: &Path, mut command: Command, comm: &'static str, ready: Ready) -> Result<Self> {
        let path = work.join(format!("{comm}.stderr"));
        let stderr = File::create(&path).with_context(|| format!("creating {}", path.display()));
        command.stdin(Stdio::null()).stderr(stderr?);
        let mut tracer = Self::default();
        (tracer.child, tracer.comm) = (Some(spawn(&mut command)?), comm);
        // `Some(exited)` once it has exited or is ready, whichever comes first.
        let started = poll(START_TIMEOUT, || {
            let child = tracer.child.as_mut().context("no tracer")?;
            let exited = child.try_wait()?.is_some();
            Ok((exited || ready(child.id())?).then_some(exited))
        })?;
        let failed = || anyhow!("{comm} did not start; see {}", path.display());
        started.filter(|&exited| !exited).ok_or_else(failed)?;
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
        let mut tracer = Self::spawn(&bins.work, command, "sockwatch-tui", &|_| {
            let start = fs::read_to_string(&path).unwrap_or_default();
            Ok(start.starts_with(r#"{"event":"start""#))
        })?;
        let chosen = field(&fs::read_to_string(&path)?, r#""probe":""#);
        tracer.probe = chosen.context("no probe in sockwatch's start record")?;
        tracer.output = Some(path);
        let held = held_by(tracer.pid())?;
        // A stale or shared target dir's object attaches other events: another program's figures.
        let want = sockwatch_events(&tracer.probe);
        if let Some(want) = want.filter(|want| *want != held.events) {
            let (probe, held) = (&tracer.probe, &held.events);
            bail!("sockwatch ({probe}) attached {held:?}, not {want:?}");
        }
        (tracer.progs, tracer.hooks, tracer.expect) =
            (held.progs, held.links, (held.links, held.raw));
        Ok(tracer)
    }

    /// bpftrace running `action` on each of `probes`, once every probe has its program (an
    /// empty action still gets one: `r0 = 1; exit`).
    fn bpftrace(bins: &Binaries, probes: &str, action: &str) -> Result<Self> {
        let mut command = pinned(Path::new("bpftrace"), bins.cpus.map(|c| c.1));
        // Its output, and the blank lines it prints on Ctrl-C, go nowhere.
        command.args(["-o", "/dev/null", "-e", &format!("{probes} {{ {action} }}")]);
        command.stdout(Stdio::null());
        let want = probes.split(',').filter_map(|p| p.rsplit(':').next());
        let want: BTreeSet<&str> = want.collect();
        let mut tracer = Self::spawn(&bins.work, command, "bpftrace", &|pid| {
            let (_, perf) = attachments()?;
            let held = perf.iter().filter(|p| p["pid"] == u64::from(pid));
            let held = held.map(|p| p["tracepoint"].as_str().unwrap_or("?"));
            Ok(held.collect::<BTreeSet<_>>() == want)
        })?;
        (tracer.progs, tracer.hooks) = (held_by(tracer.pid())?.progs, want.len());
        tracer.expect = (0, tracer.hooks);
        Ok(tracer)
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
        let clean = poll(limit, || {
            let (links, perf) = attachments()?;
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
            let status = poll(EXIT_TIMEOUT, || Ok(child.try_wait()?))?;
            let status = status.with_context(|| format!("{} did not stop", self.comm))?;
            ensure!(status.success(), "{} exited with {status}", self.comm);
        }
        // Detached once none of its programs is loaded and no process of it is left: the last
        // one runs the detaches in its close or exit path, and syscalls stay slow until then.
        let (progs, comm) = (&self.progs, self.comm);
        let stuck = || anyhow!("{comm}'s programs were still attached after {DETACH_TIMEOUT:?}");
        poll(DETACH_TIMEOUT, || {
            let loaded = bpftool("prog show")?;
            let mut ids = loaded.iter().filter_map(|p| p["id"].as_u64());
            Ok((!ids.any(|id| progs.contains(&id)) && !child_running(comm)).then_some(()))
        })?
        .ok_or_else(stuck)?;
        thread::sleep(SETTLE);
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
    (command.spawn()).with_context(|| format!("cannot run {}", cmd::display(command)))
}

/// The events sockwatch's `probe` backend attaches, sorted, as its link fds name them (`None`
/// for kprobes, whose links name no event); optional syscalls only where this kernel has them.
pub fn sockwatch_events(probe: &str) -> Option<Vec<String>> {
    let socket = probe == "socket";
    if !socket && probe != "tracepoint" {
        return None;
    }
    let exists = |event: &str| Path::new("/sys/kernel/tracing/events").join(event).exists();
    // The socket backend's raw tracepoints (`sockwatch_tui::kernel::loader::SOCKET_TRACEPOINTS`);
    // for the syscall backends, the mark of what they cannot count (io_uring). Every backend
    // notes forks and follows TCP's state changes and resets (`FATE_TRACEPOINTS`).
    let extra = match (socket, exists("io_uring/io_uring_file_get")) {
        (true, _) => "sock_send_length sock_recv_length sched_process_exec",
        (false, true) => "io_uring_file_get",
        (false, false) => "",
    };
    let mut all: Vec<String> = extra.split_whitespace().map(str::to_owned).collect();
    all.extend(
        [
            "sched_process_exit",
            "sched_process_fork",
            "inet_sock_set_state",
            "tcp_receive_reset",
            "tcp_send_reset",
        ]
        .map(str::to_owned),
    );
    for syscall in sockwatch_common::SYSCALLS {
        for phase in ["enter", "exit"] {
            let event = format!("sys_{phase}_{}", syscall.name);
            // The socket backend hooks no syscall (its connects and releases are cgroup hooks,
            // whose links name no event).
            let hooked = !socket && (syscall.enter || phase == "exit");
            if hooked && (!syscall.optional || exists(&format!("syscalls/{event}"))) {
                all.push(event);
            }
        }
    }
    all.sort_unstable();
    Some(all)
}

/// `bpftool -j ARGS`: the list it prints (some versions print nothing for an empty one).
fn bpftool(args: &str) -> Result<Vec<Value>> {
    let mut command = Command::new("bpftool");
    let output = command.arg("-j").args(args.split(' ')).output();
    let output = output.context("cannot run bpftool (cargo xtask setup installs it)")?;
    ensure!(output.status.success(), "bpftool {args}: {}", output.status);
    let text = String::from_utf8_lossy(&output.stdout);
    let text = if text.trim().is_empty() { "[]" } else { &text };
    serde_json::from_str(text).with_context(|| format!("parsing `bpftool {args}`"))
}

/// Programs attached to events: BPF links of the kinds aya attaches by, and the perf event and
/// raw tracepoint fds processes hold (bpftrace's tracepoints, raw tracepoint links again).
pub fn attachments() -> Result<(usize, Vec<Value>)> {
    let hook = |l: &&Value| l["type"] == "perf_event" || l["type"] == "raw_tracepoint";
    let links = bpftool("link show")?;
    Ok((links.iter().filter(hook).count(), bpftool("perf show")?))
}

/// What a process holds (fdinfo): programs (prog and link fds name theirs), links (one per event
/// aya attached; not cgroup links), the events they name, and raw tracepoint links (`bpftool
/// perf` lists them too).
#[derive(Debug, Default)]
pub struct Held {
    pub progs: BTreeSet<u64>,
    pub links: usize,
    pub events: Vec<String>,
    pub raw: usize,
}

pub fn held_by(pid: u32) -> Result<Held> {
    let (mut held, dir) = (Held::default(), format!("/proc/{pid}/fdinfo"));
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let info = fs::read_to_string(entry?.path()).unwrap_or_default();
        for line in info.lines() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["prog_id:", id] => held.progs.extend(id.parse::<u64>().ok()),
                // Cgroup links (the socket backend's connects and releases) hook no tracepoint
                // and tax no syscall: not among the attachments `clean` counts.
                ["link_type:", "cgroup"] => {}
                ["link_type:", kind] => {
                    held.links += 1;
                    held.raw += usize::from(kind == "raw_tracepoint");
                }
                ["tp_name:", name] => held.events.push(name.to_owned()),
                _ => {}
            }
        }
    }
    held.events.sort_unstable();
    Ok(held)
}

/// While set, orphaned descendants (sockwatch's detaching child) become our children instead
/// of init's, so that we can tell when they are gone.
pub fn set_subreaper(on: bool) -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, libc::c_ulong::from(on)) };
    let error = std::io::Error::last_os_error();
    ensure!(set == 0, "prctl(PR_SET_CHILD_SUBREAPER): {error}");
    Ok(())
}

/// A process as `/proc/PID/stat` describes it.
pub struct Process {
    pub pid: libc::pid_t,
    pub state: char,
    pub parent: u32,
}

/// Every process named `comm` (the kernel keeps 15 bytes of a name), zombies included.
pub fn processes(comm: &str) -> impl Iterator<Item = Process> + '_ {
    let comm = comm.get(..15).unwrap_or(comm);
    let entries = fs::read_dir("/proc").into_iter().flatten().flatten();
    entries.filter_map(move |entry| {
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // "pid (name) state ppid ...": the name may hold spaces and parentheses.
        let (pid, rest) = stat.split_once(" (")?;
        let (name, rest) = rest.rsplit_once(") ")?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let parent = fields.next()?.parse().ok()?;
        let pid = pid.parse().ok()?;
        (name == comm).then_some(Process { pid, state, parent })
    })
}

/// Whether a child process of ours named `comm` is still running; exited ones are reaped.
fn child_running(comm: &str) -> bool {
    let (me, mut running) = (std::process::id(), false);
    for child in processes(comm).filter(|p| p.parent == me) {
        // SAFETY: waitpid(2), not blocking, on our child: 0 while it runs, else it reaps the
        // zombie, which no `Child` handle owns (the tracer's process was waited for before).
        running |= unsafe { libc::waitpid(child.pid, std::ptr::null_mut(), libc::WNOHANG) } == 0;
    }
    running
}

/// Polls `check` until it gives a value, for at most `limit`: `None` if it never did.
pub fn poll<T>(limit: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<Option<T>> {
    let start = std::time::Instant::now();
    loop {
        match check()? {
            None if start.elapsed() < limit => thread::sleep(Duration::from_millis(50)),
            value => return Ok(value),
        }
    }
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

    #[test]
    fn the_socket_backend_hooks_no_syscall() {
        let [tracepoint, socket] = ["tracepoint", "socket"].map(|p| sockwatch_events(p).unwrap());
        let has = |events: &[String], e: &str| events.iter().any(|x| x == e);
        for e in ["sys_enter_connect", "sys_exit_execve", "sys_enter_sendto"] {
            assert!(has(&tracepoint, e) && !has(&socket, e), "{e}");
        }
        assert!(!socket.iter().any(|e| e.starts_with("sys_")), "{socket:?}");
        for e in ["sched_process_exit", "sched_process_fork"] {
            assert!(has(&tracepoint, e) && has(&socket, e), "{e}");
        }
        assert!(has(&socket, "sock_send_length") && !has(&tracepoint, "sock_send_length"));
        assert!(!has(&tracepoint, "sys_enter_execve"));
        // Counting, both directions; fork, exec and exit; TCP's state changes and resets.
        assert_eq!(socket.len(), 8, "{socket:?}");
        for e in ["inet_sock_set_state", "tcp_receive_reset", "tcp_send_reset"] {
            assert!(has(&tracepoint, e) && has(&socket, e), "{e}");
        }
        assert_eq!(sockwatch_events("kprobe"), None);
    }
}
