//! `cargo xtask test`: the project's whole check, as CI runs it (.ci/run).

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{bail, Context, Result};

use crate::{
    cmd, lint, setup,
    steps::Steps,
    vm::{self, table},
};

/// Test counts over every test binary of the run, for the closing tally line.
static PASSED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

pub fn run() -> Result<()> {
    if !cmd::is_root()? {
        bail!("`cargo xtask test` must run as root: the tests load real eBPF programs into the kernel");
    }
    let mut steps = Steps::new("test");
    // Nothing else can build without the toolchain; past that point, a failing step does not
    // stop the next, so one run reports both lint and test failures.
    if steps.run("setup", setup::run) {
        steps.run("lint", lint::run);
        // `--probe auto`: the socket backend where the kernel has it, as users get it.
        let auto_ok = steps.run("cargo test", || cargo_test(None));
        // The real-kernel tests again with the syscall tracepoint backend, which kernels
        // without the socket layer (6.1) run; the kprobe backend is proven in the VM.
        let tracepoint_ok = steps.run("cargo test (tracepoint backend)", || {
            cargo_test(Some("tracepoint"))
        });
        // The benchmark is not part of the tests; that its harness works is (a tiny run).
        steps.run("bench smoke", || crate::bench::run(true, None, None));
        if let Err(e) = table::update(
            &cmd::workspace_root().join("README.md"),
            &table::host_rows(auto_ok, tracepoint_ok),
        ) {
            cmd::warn(format!("kernel-support table not updated: {e:#}"));
        }
        // The kprobe backend cannot run on the host's kernel: it is proven in the VM.
        steps.run("vm-test", || {
            vm::run(|passed, failed| {
                PASSED.fetch_add(passed, Ordering::Relaxed);
                FAILED.fetch_add(failed, Ordering::Relaxed);
            })
        });
    }
    let result = steps.finish();
    // The closing line CI reads: every test counted, whichever binary ran it.
    println!(
        "tests: {} passed, {} failed",
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed)
    );
    result
}

/// Unit, integration and doc tests of the default members (never `--workspace`: the eBPF crate
/// does not build for the host); with `probe`, only the real-kernel test binaries, each
/// sockwatch they start using that backend. Output is passed through line by line while the
/// `test result:` lines are tallied.
fn cargo_test(probe: Option<&str>) -> Result<()> {
    let mut test = cmd::cargo();
    // The real-kernel tests never skip: without root or a kernel that loads the programs they
    // fail, so a green run always means the eBPF side was exercised.
    test.arg("test")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped());
    if let Some(probe) = probe {
        test.args(["-p", "sockwatch-tui"]);
        for binary in REAL_KERNEL_TESTS {
            test.args(["--test", binary]);
        }
        test.env("SOCKWATCH_TEST_PROBE", probe);
    }
    cmd::say(cmd::display(&test));
    let mut child = test.spawn().context("cannot run cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some((passed, failed)) = parse_result_line(&line) {
            PASSED.fetch_add(passed, Ordering::Relaxed);
            FAILED.fetch_add(failed, Ordering::Relaxed);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

/// The test binaries that load the programs and count real sockets (the ones whose result
/// depends on the backend).
const REAL_KERNEL_TESTS: [&str; 7] = [
    "kernel_accounting",
    "kernel_lifecycle",
    "tcp_health",
    "ipv6",
    "owner",
    "json_schema",
    "cli_errors",
];

/// `test result: ok. 7 passed; 1 failed; ...` → (7, 1).
pub fn parse_result_line(line: &str) -> Option<(u64, u64)> {
    let (_verdict, counts) = line.strip_prefix("test result: ")?.split_once(". ")?;
    let (mut passed, mut failed) = (None, None);
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let n = words.next().and_then(|n| n.parse().ok());
        match words.next() {
            Some("passed") => passed = n,
            Some("failed") => failed = n,
            _ => {}
        }
    }
    Some((passed?, failed?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_tallied() {
        assert_eq!(
            parse_result_line("test result: ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.80s"),
            Some((7, 0))
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 6 passed; 1 failed; 0 ignored; 0 measured"),
            Some((6, 1))
        );
        assert_eq!(parse_result_line("running 7 tests"), None);
    }
}
