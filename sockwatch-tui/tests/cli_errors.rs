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
    // Drop to nobody with no capabilities, as an ordinary user would run it.
    let output = output_within(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--",
            ])
            .args([BIN, "--json", "--duration", "1"]),
        COMMAND_TIMEOUT,
        "setpriv (util-linux) running sockwatch-tui as nobody",
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    assert!(
        text.contains("needs root") && text.contains("sudo"),
        "{text:?}"
    );
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
