//! Bad input and missing kernel features end with one clear line and a non-zero exit.

mod support;

use std::process::{Command, Output};

use support::{
    process::{output_within, COMMAND_TIMEOUT},
    BIN,
};

fn run(args: &[&str]) -> Output {
    output_within(
        Command::new(BIN).args(args),
        COMMAND_TIMEOUT,
        &format!("sockwatch-tui {args:?}"),
    )
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn kprobe_backend_without_kprobes_is_one_clear_error() {
    support::assert_root();
    let output = run(&["--json", "--probe", "kprobe", "--duration", "1"]);
    if sockwatch_tui::kernel::support::kprobes_available() {
        // Kernels with kprobes (the VM test) must run the backend instead.
        assert!(
            output.status.success(),
            "kprobe backend failed: {}",
            stderr(&output)
        );
        let first = String::from_utf8_lossy(&output.stdout);
        assert!(first.starts_with(r#"{"event":"start""#) && first.contains(r#""probe":"kprobe""#));
        return;
    }
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    assert!(text.contains("this kernel has no kprobes"), "{text:?}");
    assert!(
        text.contains("--probe tracepoint"),
        "says what to do instead: {text:?}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn without_privileges_it_says_to_use_sudo() {
    support::assert_root();
    // Nobody with no capabilities, as an ordinary user would run it.
    let output = as_nobody(&["--json", "--duration", "1"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    assert!(
        text.contains("needs root") && text.contains("sudo"),
        "{text:?}"
    );
    assert!(
        text.contains("`sockwatch-tui check`"),
        "points to check: {text:?}"
    );
}

/// Runs `sockwatch-tui ARGS` as nobody, without capabilities.
fn as_nobody(args: &[&str]) -> Output {
    output_within(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--",
                BIN,
            ])
            .args(args),
        COMMAND_TIMEOUT,
        "setpriv (util-linux) running sockwatch-tui as nobody",
    )
}

/// The line of `check`'s report about `what`: whether marked ok, and its text.
fn check_line<'a>(report: &'a str, what: &str) -> (bool, &'a str) {
    let line = report
        .lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{what} ")))
        })
        .unwrap_or_else(|| panic!("no {what} line in:\n{report}"));
    (line.starts_with("  ok "), line)
}

/// `check` as root: each backend is said available exactly where the kernel shows what it
/// needs (read here from /sys, not through sockwatch), with the reason where not; it exits 0.
/// The same test runs in the VM's kernels, where kprobes exist and (6.1) the socket layer's
/// tracepoints do not.
#[test]
fn check_says_which_backends_this_kernel_offers() {
    support::assert_root();
    let output = run(&["check"]);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{report}{}", stderr(&output));
    let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|root| root.join("events").exists())
        .expect("check mounted tracefs, as a run does");
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    let socket = btf && tracefs.join("events/sock/sock_send_length").exists();
    let tracepoint = tracefs.join("events/syscalls/sys_enter_connect").exists();
    let kprobe = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    for (what, offered) in [
        ("backend socket", socket),
        ("backend tracepoint", tracepoint),
        ("backend kprobe", kprobe),
    ] {
        let (ok, line) = check_line(&report, what);
        assert_eq!(ok, offered, "{line}");
        if !offered {
            assert!(line.contains("not available: "), "says why: {line}");
        }
    }
    if !kprobe {
        let (_, line) = check_line(&report, "backend kprobe");
        assert!(line.contains("no kprobes"), "{line}");
    }
    let (ok, line) = check_line(&report, "privileges");
    assert!(ok, "{line}");
    let (_, auto) = check_line(&report, "--probe auto");
    let expected = if socket { "socket" } else { "tracepoint" };
    assert!(auto.ends_with(&format!("uses {expected}")), "{auto}");
}

/// `check` without privileges: the privileges line names what is missing, and it exits 1
/// (no backend can attach).
#[test]
fn check_without_privileges_says_what_is_missing() {
    support::assert_root();
    let output = as_nobody(&["check"]);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{report}{}", stderr(&output));
    let (ok, line) = check_line(&report, "privileges");
    assert!(
        !ok && line.contains("missing CAP_SYS_ADMIN") && line.contains("sudo"),
        "{line}"
    );
    assert!(report.contains("sockwatch cannot run here"), "{report}");
}

#[test]
fn the_dashboard_refuses_a_non_terminal_stdout() {
    let output = run(&["--duration", "1"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    assert!(
        text.contains("needs a terminal") && text.contains("--json"),
        "{text:?}"
    );
}

#[test]
fn bad_flags_are_rejected_before_anything_runs() {
    for args in [
        &["--probe", "fentry"][..],
        &["--interval", "5"],
        &["--duration", "-1"],
        &["--ring-kib", "1000"],
        &["--no-such-flag"],
        &["--headless"],
        &["--metrics-by-remote"],
        &["--metrics", "localhost"],
        &["--metrics", "127.0.0.1:1", "--headless", "--json"],
        &["--replay", "x.ndjson", "--json"],
        &["--json", "check"],
    ] {
        let output = run(args);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.starts_with("error: "), "{args:?}: {text:?}");
    }
}

#[test]
fn more_pids_or_ports_than_the_kernel_keeps_is_a_bad_flag() {
    let many: Vec<String> = (1..=1025).map(|n| n.to_string()).collect();
    for flag in ["--pid", "--port"] {
        let output = run(&["--json", flag, &many.join(",")]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{flag}: {text}");
        assert!(
            text.starts_with(&format!("error: {flag}: at most 1024 values")),
            "{text:?}"
        );
    }
}

/// `--metrics` on a port something else holds: one line naming the address, before any probe.
#[test]
fn a_metrics_port_in_use_is_one_clear_error() {
    support::assert_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let output = run(&["--headless", "--metrics", &addr, "--duration", "1"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    assert!(
        text.contains(&format!("--metrics {addr}: cannot listen there")),
        "{text:?}"
    );
}

/// `--replay` of what is not there, or not a recording: one line saying which, exit 1, the
/// terminal never touched (and no root needed to be told).
#[test]
fn a_replay_of_no_recording_is_one_clear_error() {
    support::assert_root();
    let dir = std::env::temp_dir().join(format!("sockwatch-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let junk = dir.join("junk.ndjson");
    std::fs::write(&junk, "this is not JSON\n").expect("writing");
    let missing = dir.join("missing.ndjson");
    for (file, says) in [(&missing, "No such file"), (&junk, "line 1 is not JSON")] {
        let file = file.to_str().expect("a UTF-8 path");
        let output = as_nobody(&["--replay", file]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert_eq!(text.lines().count(), 1, "one line: {text:?}");
        assert!(
            text.contains(&format!("--replay {file}")) && text.contains(says),
            "{text:?}"
        );
        assert!(output.stdout.is_empty());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
