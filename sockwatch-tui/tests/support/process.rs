//! Bounded waits on child processes. Every wait has a deadline; a child that outstays it is
//! killed and reaped, then the test panics saying what it was waiting for. Exits are awaited
//! (a pidfd polled for the time left), never slept for.

use std::{
    io::{BufRead, BufReader, Read},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

/// How long a short command (ss, tmux, bpftool, curl, a CLI error run) may take on a busy
/// 2-core machine.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits for `child` to exit for at most `timeout`: its status, or `None` if it still runs.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    // SAFETY: pidfd_open(2) on our own child, which is not reaped yet (try_wait said so), so
    // its pid cannot have been reused. The new fd is ours alone (pidfds are close-on-exec).
    let pidfd = unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, child.id(), 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd as i32)
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up, so the poll never returns before the deadline.
        let ms = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a pidfd turns readable when the process exits.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if rc == 0 && Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// Kills and reaps `child` (bounded, best effort: for clean-up and before panicking).
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = wait_timeout(child, Duration::from_secs(5));
}

/// Waits for `child` to exit within `timeout`; past it, kills it and panics naming `what`.
pub fn wait_or_kill(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    match wait_timeout(child, timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_and_reap(child);
            panic!(
                "{what} (pid {}) still running after {timeout:?}; killed it",
                child.id()
            );
        }
        Err(error) => {
            kill_and_reap(child);
            panic!("waiting for {what} (pid {}): {error}", child.id());
        }
    }
}

/// Everything a pipe delivers until EOF, read by a thread so it can be awaited with a deadline.
fn read_to_end_in_thread(mut pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}

/// Like `Command::output` (stdin from /dev/null), but bounded: past `timeout` the command is
/// killed and the test panics naming `what`.
pub fn output_within(command: &mut Command, timeout: Duration, what: &str) -> Output {
    let deadline = Instant::now() + timeout;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let stdout = read_to_end_in_thread(child.stdout.take().expect("piped stdout"));
    let stderr = read_to_end_in_thread(child.stderr.take().expect("piped stderr"));
    let status = wait_or_kill(&mut child, timeout, what);
    // A grandchild that kept the pipes open would hold them past the exit: bounded too.
    let collect = |pipe: Receiver<Vec<u8>>, name: &str| {
        pipe.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("{what} exited ({status}) but its {name} stayed open"))
    };
    Output {
        status,
        stdout: collect(stdout, "stdout"),
        stderr: collect(stderr, "stderr"),
    }
}

/// The lines a child writes to a pipe, read by a thread so each one is awaited with a deadline.
pub struct Lines {
    what: String,
    lines: Receiver<String>,
}

impl Lines {
    pub fn of(pipe: impl Read + Send + 'static, what: &str) -> Self {
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            what: what.to_owned(),
            lines,
        }
    }

    /// The next line, waiting at most `timeout`; panics on a timeout or an early EOF.
    pub fn next(&self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no line from {} within {timeout:?}", self.what)
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{} closed its output before the expected line", self.what)
            }
        }
    }
}

/// Waits at most `timeout` for the forked child `pid` to exit and reaps it: its exit code.
/// Panics (after killing it) when it does not exit in time.
#[allow(dead_code, reason = "not every test binary forks")]
pub fn wait_pid(pid: libc::pid_t, timeout: Duration, what: &str) -> i32 {
    // SAFETY: pidfd_open(2) on our own unreaped child (so its pid is still its own), then poll
    // on the fd we own, and waitpid on our child.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        let pidfd = OwnedFd::from_raw_fd(fd as i32);
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        if libc::poll(&mut pfd, 1, ms) <= 0 {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            panic!("{what} (pid {pid}) did not exit within {timeout:?}");
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid, "waitpid {what}");
        assert!(
            libc::WIFEXITED(status),
            "{what} did not exit normally: {status:#x}"
        );
        libc::WEXITSTATUS(status)
    }
}

/// Forks a child that writes `len` bytes on `fd` (its inherited copy) and exits, after one byte
/// arrives on `go` when given (so the parent can act first). Its exit code says whether every
/// byte went out (0), the write failed (1), or `go` closed early (2): see [`wait_pid`].
#[allow(dead_code, reason = "not every test binary forks")]
pub fn fork_writer(fd: i32, len: usize, go: Option<i32>) -> libc::pid_t {
    let chunk = vec![9u8; len];
    // SAFETY: the child only reads, writes and leaves with _exit (async-signal-safe; `chunk`
    // was allocated before the fork).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        // SAFETY: as above.
        unsafe {
            if let Some(go) = go {
                let mut byte = 0u8;
                if libc::read(go, (&raw mut byte).cast(), 1) != 1 {
                    libc::_exit(2);
                }
            }
            write_all_or_exit(fd, &chunk);
            libc::_exit(0);
        }
    }
    child
}

/// Forks a child that echoes everything it reads on `fd` back to it until end of file, then
/// leaves: a forking server's worker. Returns its pid.
pub fn fork_echo(fd: i32) -> libc::pid_t {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: the child only reads, writes and leaves with _exit (async-signal-safe; `buf` was
    // allocated before the fork).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        // SAFETY: as above.
        unsafe {
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n == 0 {
                    libc::_exit(0);
                }
                if n < 0 {
                    libc::_exit(1);
                }
                let mut sent = 0usize;
                while sent < n as usize {
                    let w = libc::write(fd, buf[sent..].as_ptr().cast(), n as usize - sent);
                    if w <= 0 {
                        libc::_exit(1);
                    }
                    sent += w as usize;
                }
            }
        }
    }
    child
}

/// Forks a child that receives one fd over the Unix socket `unix` (SCM_RIGHTS), answers with
/// one byte (it holds the fd now), waits for one more byte there, writes `len` bytes on the fd,
/// and leaves without closing it (its exit does). Returns its pid.
pub fn fork_fd_receiver(unix: i32, len: usize) -> libc::pid_t {
    let chunk = vec![7u8; len];
    let mut control = vec![0u8; 64];
    // SAFETY: the child only calls recvmsg, write and _exit (async-signal-safe; the buffers
    // were allocated before the fork).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        // SAFETY: as above; the message header points at buffers we own.
        unsafe {
            let mut byte = 0u8;
            let mut iov = libc::iovec {
                iov_base: (&raw mut byte).cast(),
                iov_len: 1,
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len();
            if libc::recvmsg(unix, &raw mut msg, 0) != 1 {
                libc::_exit(2);
            }
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
                libc::_exit(3);
            }
            let fd = libc::CMSG_DATA(cmsg).cast::<i32>().read_unaligned();
            if libc::write(unix, (&raw const byte).cast(), 1) != 1 {
                libc::_exit(5);
            }
            if libc::read(unix, (&raw mut byte).cast(), 1) != 1 {
                libc::_exit(4);
            }
            write_all_or_exit(fd, &chunk);
            libc::_exit(0);
        }
    }
    child
}

/// In a forked child: writes all of `data` to `fd`, or leaves with status 1.
///
/// # Safety
/// Only async-signal-safe calls (write, _exit), for a child forked from a threaded process.
unsafe fn write_all_or_exit(fd: i32, data: &[u8]) {
    let mut sent = 0usize;
    while sent < data.len() {
        // SAFETY: a write from our own buffer.
        let n = unsafe { libc::write(fd, data[sent..].as_ptr().cast(), data.len() - sent) };
        if n <= 0 {
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(1) };
        }
        sent += n as usize;
    }
}
