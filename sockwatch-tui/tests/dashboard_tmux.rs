//! The dashboard in a real terminal (tmux), watching real connections on 127.0.0.1.

mod support;

use std::time::Duration;

use support::{net, tmux::Tmux, BIN};

const SCREEN_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn dashboard_shows_a_live_connection_logs_its_close_and_quits_cleanly() {
    support::assert_root();
    let tmux = Tmux::start("dashboard", 120, 32);
    tmux.wait_for("shell prompt", SCREEN_TIMEOUT, |s| s.contains("e2e$"));
    let state_file = format!("/tmp/sockwatch-e2e-{}", std::process::id());
    tmux.type_line(&format!("stty -g > {state_file}.before; clear"));
    tmux.type_line(&format!("{BIN} --interval 200"));
    tmux.wait_for("the dashboard", SCREEN_TIMEOUT, |s| {
        s.contains("Open IPv4 sockets")
    });

    let server = net::CountingServer::start();
    let fd = net::connected(server.port);
    net::sendto_all(fd, 1536);
    let destination = format!("127.0.0.1:{}", server.port);
    let pid = std::process::id().to_string();
    let screen = tmux.wait_for("the live connection's row", SCREEN_TIMEOUT, |s| {
        s.lines().any(|line| {
            line.contains(&destination)
                && line.contains(&pid)
                && line.contains("ESTABLISHED")
                && line.contains("1.5 KiB")
        })
    });
    assert!(
        screen.contains("probe: tracepoint") || screen.contains("probe: kprobe"),
        "{screen}"
    );

    net::close(fd);
    assert_eq!(server.next_total(), 1536);
    tmux.wait_for("the close in the log, the row gone", SCREEN_TIMEOUT, |s| {
        let log = s.split("Closed (").nth(1).unwrap_or_default();
        let table = s.split("Closed (").next().unwrap_or_default();
        log.contains(&destination) && log.contains("1.5 KiB") && !table.contains(&destination)
    });

    tmux.press("q");
    assert_terminal_restored(&tmux, &state_file);
}

#[test]
fn sigterm_restores_the_terminal() {
    support::assert_root();
    let tmux = Tmux::start("sigterm", 100, 24);
    tmux.wait_for("shell prompt", SCREEN_TIMEOUT, |s| s.contains("e2e$"));
    let state_file = format!("/tmp/sockwatch-e2e-term-{}", std::process::id());
    tmux.type_line(&format!("stty -g > {state_file}.before; clear"));
    tmux.type_line(&format!("{BIN} --interval 200"));
    tmux.wait_for("the dashboard", SCREEN_TIMEOUT, |s| {
        s.contains("Open IPv4 sockets")
    });
    let shell = tmux.pane("#{pane_pid}");
    let status = std::process::Command::new("pkill")
        .args(["-TERM", "-P", &shell, "-x", "sockwatch-tui"])
        .status()
        .expect("running pkill");
    assert!(status.success(), "sockwatch-tui found and signalled");
    assert_terminal_restored(&tmux, &state_file);
}

/// After the dashboard ends: back at the prompt, main screen, cursor shown, and the terminal's
/// modes (raw mode off, echo on) exactly as saved in `<state_file>.before`.
fn assert_terminal_restored(tmux: &Tmux, state_file: &str) {
    tmux.wait_for("the shell prompt after quitting", SCREEN_TIMEOUT, |s| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim() == "e2e$")
    });
    assert_eq!(
        tmux.pane("#{alternate_on}"),
        "0",
        "left the alternate screen"
    );
    assert_eq!(tmux.pane("#{cursor_flag}"), "1", "cursor visible again");
    tmux.type_line(&format!(
        "stty -g > {state_file}.after; \
         cmp -s {state_file}.before {state_file}.after && echo TTY-RESTORED"
    ));
    tmux.wait_for("terminal modes restored", SCREEN_TIMEOUT, |s| {
        s.lines().any(|l| l.trim() == "TTY-RESTORED")
    });
    let _ = std::fs::remove_file(format!("{state_file}.before"));
    let _ = std::fs::remove_file(format!("{state_file}.after"));
}
