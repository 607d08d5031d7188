//! Shared helpers for the real-kernel tests: run `sockwatch-tui --json`, drive real sockets on
//! 127.0.0.1, and wait (bounded) for the records they cause.
//!
//! These tests never skip: they need root and a kernel that loads our programs, and they fail
//! loudly when either is missing, so a CI run cannot pass without exercising the kernel side.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod io;
pub mod net;
pub mod tmux;

use std::{
    io::{BufRead, BufReader, Read},
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

/// A running `sockwatch-tui --json`, killed when dropped.
pub struct Sockwatch {
    _turn: MutexGuard<'static, ()>,
    child: Child,
    records: Receiver<Value>,
    stderr: Receiver<String>,
    /// Records already received but not yet consumed by a wait.
    seen: Vec<Value>,
    pub start: Value,
}

impl Sockwatch {
    /// Starts it with `--json` plus `extra` arguments and waits for its `start` record.
    pub fn start(extra: &[&str]) -> Self {
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
                let _ = sockwatch.child.kill();
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
            let left = deadline.saturating_duration_since(Instant::now());
            match self.records.recv_timeout(left) {
                Ok(record) if pred(&record) => return record,
                Ok(record) => self.seen.push(record),
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
    }

    /// Every record received so far that matches `pred` (without waiting).
    pub fn received(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        while let Ok(record) = self.records.try_recv() {
            self.seen.push(record);
        }
        self.seen.iter().filter(|r| pred(r)).cloned().collect()
    }

    /// Stops it (SIGTERM) and returns every record not yet consumed, through the final `end`.
    pub fn stop(&mut self) -> Vec<Value> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
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

    /// Waits for the process to end by itself and returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for sockwatch-tui") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sockwatch-tui still running after {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sockwatch {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; SIGTERM lets it detach its probes cleanly.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A matcher for records of `event` from process `pid` on file descriptor `fd`.
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

pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}
