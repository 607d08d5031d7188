//! `sockwatch-load` as a child of a test: its output lines and its exit awaited with deadlines,
//! and killed (bounded) when dropped.

use std::{
    io::Write,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use super::{
    cgroup::Cgroup,
    process::{self, Lines},
};

/// Path of the traffic helper, built by cargo for this test run.
pub const LOAD: &str = env!("CARGO_BIN_EXE_sockwatch-load");

/// How long a line or the exit of `sockwatch-load` may take (cold start, a busy machine).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Load {
    child: Child,
    lines: Lines,
}

impl Load {
    /// Starts `sockwatch-load ARGS` with pipes on stdin and stdout (stderr is the test's).
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with(Command::new(LOAD).args(args))
    }

    /// Like `spawn`, in `cgroup` from its start.
    pub fn spawn_in(cgroup: &Cgroup, args: &[&str]) -> Self {
        let mut command = Command::new(LOAD);
        command.args(args);
        cgroup.run_in(&mut command);
        Self::spawn_with(&mut command)
    }

    fn spawn_with(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning sockwatch-load");
        let lines = Lines::of(child.stdout.take().expect("piped stdout"), "sockwatch-load");
        Self { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its next output line, waiting at most `timeout`.
    pub fn line(&self, timeout: Duration) -> String {
        self.lines.next(timeout)
    }

    /// Writes `line` to its stdin (the modes that wait for a line go on).
    pub fn tell(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}").expect("writing to sockwatch-load's stdin");
        stdin.flush().expect("writing to sockwatch-load's stdin");
    }

    /// Sends it SIGKILL (it must still be running).
    pub fn kill(&mut self) {
        self.child.kill().expect("killing sockwatch-load");
    }

    /// Waits for it to exit, at most `timeout`; past that it is killed and the test panics.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        process::wait_or_kill(&mut self.child, timeout, "sockwatch-load")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

/// The value of `name=VALUE` in a line of `sockwatch-load`'s output.
pub fn field(line: &str, name: &str) -> u32 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}
