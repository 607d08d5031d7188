//! Shared helpers for the real-kernel tests: run `sockwatch-tui --json`, drive real sockets on
//! 127.0.0.1, and wait (bounded) for the records they cause.
//!
//! These tests never skip: they need root and a kernel that loads our programs, and they fail
//! loudly when either is missing, so a CI run cannot pass without exercising the kernel side.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod cgroup;
pub mod io;
pub mod load;
pub mod net;
pub mod netns;
pub mod process;
pub mod tmux;

use std::{
    io::{BufRead, BufReader, Read},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Command, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError},
        Mutex, MutexGuard, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Path of the binary under test, built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_sockwatch-tui");

/// How long loading and attaching may take (cold caches, a busy 2-core machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a record may take to arrive once its syscall has returned.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop may take to deliver every record before its `end` (see [`Sockwatch::stop`]).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(120);

pub fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the real-kernel tests load eBPF programs and must run as root (cargo xtask test)"
    );
}

/// Kernel tests of one binary run one at a time: every sockwatch sees every socket of the test
/// process, so a test running beside another could take that one's record (same pid, a reused
/// fd number) for its own.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Samples every 200 ms: a reading a test waits for comes soon.
/// A sample of each socket at every refresh; each refresh reads the maps whole, so that a
/// connect under way (in the map before any record tells of it) is sampled at once, and reads
/// TCP health, so that a mark that takes two readings comes within two refreshes: even where
/// a full read or a health read is slow (an emulated guest spaces them by their cost to seconds).
pub const SAMPLED: [&str; 7] = [
    "--json-samples",
    "--interval",
    "200",
    "--full-read-ms",
    "1",
    "--health-ms",
    "1",
];

/// A running `sockwatch-tui --json`, killed when dropped.
pub struct Sockwatch {
    _turn: MutexGuard<'static, ()>,
    child: Child,
    records: Receiver<Value>,
    stderr: Receiver<String>,
    /// Records already received but not yet consumed by a wait.
    seen: Vec<Value>,
    pub start: Value,
    /// When the process was spawned (before it loaded anything).
    pub spawned: Instant,
}

impl Sockwatch {
    /// Starts it with `--json --no-existing` plus `extra` arguments and waits for its `start`
    /// record. Without `--no-existing`, sockets an earlier test left open (and closes a moment
    /// later, its fd number then reused by this test) would be adopted and their records taken
    /// for this test's; only the test of adoption itself adopts ([`Self::start_adopting`]).
    pub fn start(extra: &[&str]) -> Self {
        let mut args = vec!["--no-existing"];
        args.extend(extra.iter().filter(|arg| **arg != "--no-existing"));
        Self::start_adopting(&args)
    }

    /// Starts it with `--json` plus `extra` arguments (sockets open before it are adopted
    /// unless `extra` says `--no-existing`) and waits for its `start` record.
    pub fn start_adopting(extra: &[&str]) -> Self {
        Self::launch(extra, false)
    }

    /// [`Self::start`] from a test in a network namespace of its own ([`netns`]): sockwatch
    /// runs in the namespace the test started in (its parent's), outside the one it watches.
    pub fn start_outside_netns(extra: &[&str]) -> Self {
        let mut args = vec!["--no-existing"];
        args.extend(extra.iter().filter(|arg| **arg != "--no-existing"));
        Self::launch(&args, true)
    }

    fn launch(extra: &[&str], outside_netns: bool) -> Self {
        assert_root();
        // A test that failed while holding the lock poisons it; the next one may still run.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let mut command = Command::new(BIN);
        command.arg("--json").args(extra);
        // The same tests run against each backend (e.g. `--probe kprobe` in a VM).
        let probe = std::env::var("SOCKWATCH_TEST_PROBE").ok();
        if let Some(probe) = &probe {
            command.args(["--probe", probe]);
        }
        if outside_netns {
            // SAFETY: getppid has no preconditions.
            let parent = unsafe { libc::getppid() };
            let init_netns = std::fs::File::open(format!("/proc/{parent}/ns/net"))
                .expect("the parent test process's namespace");
            // SAFETY: setns(2) between fork and exec, on a file this process keeps open until
            // the spawn returns.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(init_netns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let spawned = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning sockwatch-tui");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, records) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let (etx, stderr) = mpsc::channel();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            let _ = etx.send(text);
        });
        let mut sockwatch = Self {
            _turn: turn,
            child,
            records,
            stderr,
            seen: Vec::new(),
            start: Value::Null,
            spawned,
        };
        match sockwatch.records.recv_timeout(START_TIMEOUT) {
            Ok(start) if start["event"] == "start" => {
                if let Some(probe) = probe.filter(|p| p != "auto") {
                    assert_eq!(start["probe"], probe.as_str(), "backend in use");
                }
                sockwatch.start = start;
            }
            Ok(other) => panic!("first record is not `start`: {other}"),
            Err(_) => {
                process::kill_and_reap(&mut sockwatch.child);
                let stderr = sockwatch
                    .stderr
                    .recv_timeout(EVENT_TIMEOUT)
                    .unwrap_or_default();
                panic!("sockwatch-tui did not start within {START_TIMEOUT:?}; stderr: {stderr}");
            }
        }
        sockwatch
    }

    /// The first record (in arrival order) matching `pred`, waiting at most `timeout`.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let record = self.next_before(deadline, what);
            if pred(&record) {
                return record;
            }
            self.seen.push(record);
        }
    }

    /// The next record to arrive, by `deadline`; panics, saying what was awaited, if none
    /// comes or sockwatch exits.
    fn next_before(&mut self, deadline: Instant, what: &str) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.records.recv_timeout(left) {
            Ok(record) => record,
            Err(RecvTimeoutError::Timeout) => panic!(
                "no {what} record within {EVENT_TIMEOUT:?}; other records: {:#?}",
                self.seen
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "sockwatch-tui exited while waiting for {what}; stderr: {}",
                self.stderr.recv_timeout(EVENT_TIMEOUT).unwrap_or_default()
            ),
        }
    }

    /// Like [`Self::wait_for`], for a stream of `sample` records too long to keep: only
    /// records arriving from now on are looked at, and samples not matching are dropped (other
    /// records are kept, as `wait_for` keeps them). `wait_for` looks through every record kept
    /// before each wait: thousands of samples a second behind thousands of kept records made
    /// the test fall behind the stream until it ran out of memory, in an emulated guest.
    pub fn next_sample(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let record = self.next_before(deadline, what);
            if pred(&record) {
                return record;
            }
            if record["event"] != "sample" {
                self.seen.push(record);
            }
        }
    }

    /// Every record received so far that matches `pred` (without waiting).
    pub fn received(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        while let Ok(record) = self.records.try_recv() {
            self.seen.push(record);
        }
        self.seen.iter().filter(|r| pred(r)).cloned().collect()
    }

    /// Stops it (SIGTERM) and returns every record not yet consumed, through the final `end`.
    /// Every record sent before the stop comes first: a backlog (a churn's, in an emulated
    /// guest) may take a while, so the wait is for the next record, each within
    /// [`EVENT_TIMEOUT`], and for the whole at most [`STOP_TIMEOUT`].
    pub fn stop(&mut self) -> Vec<Value> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let last = Instant::now() + STOP_TIMEOUT;
        loop {
            let deadline = (Instant::now() + EVENT_TIMEOUT).min(last);
            let left = deadline.saturating_duration_since(Instant::now());
            match self.records.recv_timeout(left) {
                Ok(record) => {
                    let end = record["event"] == "end";
                    self.seen.push(record);
                    if end {
                        return std::mem::take(&mut self.seen);
                    }
                }
                Err(_) => panic!("no `end` record after SIGTERM; got {:#?}", self.seen),
            }
        }
    }

    /// Waits (bounded) for the process to end by itself and returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        process::wait_or_kill(&mut self.child, timeout, "sockwatch-tui")
    }

    /// The keys `(pid, fd)` in the kernel's map of tracked sockets right now, read with
    /// `bpftool map dump id <tracked_map_id>` (the key is `SocketKey`: pid, then fd, native
    /// endian).
    pub fn tracked_keys(&self) -> Vec<(u32, u32)> {
        let map_id = u64_of(&self.start, "tracked_map_id");
        let output = process::output_within(
            Command::new("bpftool").args(["-j", "map", "dump", "id", &map_id.to_string()]),
            process::COMMAND_TIMEOUT,
            "bpftool map dump",
        );
        assert!(
            output.status.success(),
            "bpftool map dump id {map_id}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let entries: Vec<Value> = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("bpftool's JSON: {e}"));
        entries
            .iter()
            .map(|entry| {
                let key: Vec<u8> = entry["key"]
                    .as_array()
                    .unwrap_or_else(|| panic!("no key in {entry}"))
                    .iter()
                    .map(|byte| {
                        byte.as_str()
                            .and_then(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
                            .unwrap_or_else(|| panic!("not a hex byte: {byte}"))
                    })
                    .collect();
                assert_eq!(key.len(), 8, "SocketKey is 8 bytes: {entry}");
                let word = |i: usize| u32::from_ne_bytes(key[i..i + 4].try_into().expect("4"));
                (word(0), word(4))
            })
            .collect()
    }
}

impl Drop for Sockwatch {
    fn drop(&mut self) {
        // A failed test shows every record sockwatch sent it, for the history behind a wrong one.
        if std::thread::panicking() {
            while let Ok(record) = self.records.try_recv() {
                self.seen.push(record);
            }
            eprintln!("sockwatch's records not taken by the test:");
            for record in &self.seen {
                eprintln!("  {record}");
            }
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, not reaped yet (so not reused); SIGTERM lets
        // it detach its probes cleanly.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if !matches!(
            process::wait_timeout(&mut self.child, Duration::from_secs(5)),
            Ok(Some(_))
        ) {
            process::kill_and_reap(&mut self.child);
        }
    }
}

/// A matcher for records of `event` about the outbound socket `fd` of process `pid`.
///
/// Direction matters: the test's own servers run in the same process, and their accepted
/// (inbound) sockets reuse the same fd numbers.
pub fn record_of(event: &'static str, pid: u32, fd: i32) -> impl Fn(&Value) -> bool {
    move |r| r["event"] == event && r["pid"] == pid && r["fd"] == fd && r["direction"] == "out"
}

/// Like [`record_of`], for an inbound (accepted) socket.
pub fn inbound_of(event: &'static str, pid: u32, fd: i32) -> impl Fn(&Value) -> bool {
    move |r| r["event"] == event && r["pid"] == pid && r["fd"] == fd && r["direction"] == "in"
}

/// The unsigned integer `field` of `record`; panics, showing the record, if it is missing or
/// not one.
pub fn u64_of(record: &Value, field: &str) -> u64 {
    record[field]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}` missing or not an unsigned integer in {record}"))
}

/// The number `field` of `record` (e.g. `time`); panics, showing the record, if it is missing.
pub fn f64_of(record: &Value, field: &str) -> f64 {
    record[field]
        .as_f64()
        .unwrap_or_else(|| panic!("`{field}` missing or not a number in {record}"))
}

pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}
