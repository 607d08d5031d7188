//! A real terminal for end-to-end tests: a private tmux server running a plain shell.

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::process::{self, COMMAND_TIMEOUT};

pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// A new tmux server (its own socket) with one `width`x`height` window running bash.
    pub fn start(name: &str, width: u16, height: u16) -> Self {
        let tmux = Self {
            socket: format!("sockwatch-{name}-{}", std::process::id()),
        };
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "e2e",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "env",
            "PS1=e2e$ ",
            "TERM=xterm-256color",
            "bash",
            "--norc",
            "--noprofile",
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let output = process::output_within(
            Command::new("tmux").args(["-L", &self.socket]).args(args),
            COMMAND_TIMEOUT,
            &format!("tmux {args:?} (installed by cargo xtask setup)"),
        );
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Types `text` and presses Enter.
    pub fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", "e2e", "-l", text]);
        self.run(&["send-keys", "-t", "e2e", "Enter"]);
    }

    /// Presses one key, in tmux's key names (`q`, `Tab`, `Escape`, `Down`).
    pub fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", "e2e", key]);
    }

    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "e2e"])
    }

    /// A tmux format value of the pane, e.g. `#{alternate_on}`.
    pub fn pane(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", "e2e", format])
            .trim()
            .to_owned()
    }

    /// Polls the screen until `pred` holds, for at most `timeout`; returns that screen.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not on screen within {timeout:?}:\n{screen}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Best effort and bounded, never a panic: this may run while a test unwinds.
        let kill = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut kill) = kill {
            if !matches!(
                process::wait_timeout(&mut kill, COMMAND_TIMEOUT),
                Ok(Some(_))
            ) {
                process::kill_and_reap(&mut kill);
            }
        }
    }
}
