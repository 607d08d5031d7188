//! `cargo xtask vm-test`: the real-kernel tests on Debian bookworm's kernels (6.1 and 6.12),
//! booted in QEMU side by side, with each probe backend the kernel supports.
//!
//! The project's own kernel has no kprobes, so the kprobe backend can only be proven on another
//! one. Steps: build the integration tests and sockwatch-tui statically into `target/vm-build`
//! and ask that binary which backends it knows ([`backend`]); then for each of [`KERNELS`]: look
//! up the series' current package and cache its kernel and modules under `target/vm/kernels`
//! ([`kernel`]); pack the binaries with busybox and the few host tools the tests run into an
//! initramfs ([`image`]); boot it under single-threaded TCG (see [`boot`] for why) with a
//! generated init that runs every test binary once per backend the kernel supports plus a
//! `--probe auto` check ([`guest`]); print per-backend results and rewrite that kernel's rows of
//! the README's kernel-support table ([`table`]).

mod backend;
mod guest;
mod image;
mod kernel;
pub mod table;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        mpsc::{self, RecvTimeoutError},
        Mutex, MutexGuard, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{
    cmd::{self, say},
    setup,
};

/// The kernels booted, side by side: each single-threaded TCG guest keeps one host core busy.
/// Which backends run on each follows from its config and release ([`backend::BACKENDS`]).
const KERNELS: &[kernel::Source] = &[
    // Bookworm's own kernel: syscall tracepoints and kprobes, no socket-layer tracepoints.
    kernel::Source {
        series: "6.1",
        metapackage: "linux-image-amd64",
    },
    // Trixie's kernel as bookworm-security carries it: also the socket-layer tracepoints.
    kernel::Source {
        series: "6.12",
        metapackage: "linux-image-6.12-amd64",
    },
];
/// Integration tests (files in sockwatch-tui/tests/) that run on the host only, and why. Every
/// other file there runs in the VM with each backend, so a new real-kernel test is never left
/// out of the kprobe run.
const HOST_ONLY_TESTS: &[(&str, &str)] = &[
    (
        "dashboard_tmux",
        "drives the dashboard in tmux, which needs bash, a terminal and terminfo in the guest; \
         what it checks on screen does not depend on the backend",
    ),
    (
        "install",
        "bash and man-db, which the guest's busybox has no applet for; what the completion \
         script and the man page hold does not depend on the kernel",
    ),
    (
        "json_schema",
        "its validator (jsonschema) seeds its hashing from getrandom(2), which blocks in a \
         guest whose entropy pool is not yet initialised (no hardware RNG under TCG); the \
         records it checks are written by the same code whatever the backend, and the host runs \
         it with the socket and tracepoint backends",
    ),
    (
        "metrics",
        "runs a real Prometheus server (Debian's package, dynamically linked, some 100 MB) \
         against --metrics; the counts it serves are the model's, which the other files check \
         in the guest with each backend",
    ),
];
/// Tests skipped in the VM (`--skip NAME --exact`), and why. None: the guest
/// has every tool the tests run (see [`image::GUEST_TOOLS`]).
const SKIPPED_IN_VM: &[(&str, &str)] = &[];

/// One boot, all its backends included; the guest bounds each test binary itself too.
const QEMU_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// How long one test binary may run in the guest before `timeout` kills it.
const GUEST_TEST_TIMEOUT_SECS: u64 = 600;
/// The only target the guest (x86_64 QEMU) runs.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const PACKAGE: &str = "sockwatch-tui";

/// `cargo xtask vm-test` on its own: setup first, as the other tasks do.
pub fn task() -> Result<()> {
    setup::run_for(&[setup::Need::Build, setup::Need::Test, setup::Need::Vm])?;
    run(|passed, failed| println!("tests: {passed} passed, {failed} failed"))
}

/// Builds once, then boots and checks each of [`KERNELS`] at once (a kernel that fails does not
/// keep the other from running); an error when any backend failed or could not run on any of
/// them. `tally` gets the guests' test counts (passed, failed) once all have run.
pub fn run(tally: impl FnOnce(u64, u64)) -> Result<()> {
    ensure!(
        cfg!(target_arch = "x86_64"),
        "vm-test builds x86_64 test binaries for an x86_64 guest and needs an x86_64 host"
    );
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "xz",
        "zstd",
        "dpkg-deb",
        "ldd",
    ] {
        if cmd::find_in_path(tool).is_none() {
            bail!("{tool} is not installed: run `cargo xtask setup` as root");
        }
    }
    let target = cmd::target_dir();
    let work = target.join("vm");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let tests = vm_tests()?;
    let built = build(&target, &tests)?;
    let known = backend::known_by(&built.bin)?;
    say(format!(
        "vm-test: {PACKAGE} knows --probe {}",
        known.join(", ")
    ));

    // Both kernels boot at once, each single-threaded TCG guest on a host core of its own; what
    // comes before a boot (apt, packing the image) and the report after it take turns.
    let turns = Turns::default();
    let outcomes: Vec<_> = thread::scope(|scope| {
        let handles: Vec<_> = KERNELS
            .iter()
            .map(|source| {
                let (work, built, tests, known, turns) = (&work, &built, &tests, &known, &turns);
                scope.spawn(move || {
                    let started = Instant::now();
                    let run = test_kernel(*source, work, built, tests, known, turns);
                    (run, started.elapsed())
                })
            })
            .collect();
        KERNELS
            .iter()
            .zip(handles)
            .map(|(source, handle)| {
                let outcome = handle.join().unwrap_or_else(|_| {
                    (Err(anyhow::anyhow!("its thread panicked")), Duration::ZERO)
                });
                (source, outcome)
            })
            .collect()
    });
    let mut runs = Vec::new();
    let mut errors = Vec::new();
    for (source, (run, elapsed)) in outcomes {
        match run {
            Ok(mut run) => {
                if let Some(error) = run.error() {
                    errors.push(error);
                }
                runs.push((run, elapsed));
            }
            Err(e) => errors.push(e.context(format!("vm-test on the {} kernel", source.series))),
        }
    }

    say("vm-test: summary (wall time: fetch, image, boot to power-off):");
    for (run, elapsed) in &runs {
        say(format!(
            "vm-test:   {}: {:.0} s ({:.0} s booted): {}",
            run.kernel_name,
            elapsed.as_secs_f64(),
            run.booted.as_secs_f64(),
            run.verdicts
                .iter()
                .map(|v| format!("{} {}", v.backend, v.table_result()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    tally(
        runs.iter().map(|(run, _)| run.report.passed()).sum(),
        runs.iter().map(|(run, _)| run.report.failed()).sum(),
    );
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => bail!(
            "{}",
            errors
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// What the kernels' threads do one at a time.
#[derive(Default)]
struct Turns {
    /// Fetching a kernel (apt takes a lock of its own) and packing an initramfs.
    prepare: Mutex<()>,
    /// A kernel's results, printed in one block, and its rows of the README.
    report: Mutex<()>,
}

/// Takes a turn; a thread that panicked in its turn leaves nothing half-done that the next one
/// relies on.
fn take(turn: &Mutex<()>) -> MutexGuard<'_, ()> {
    turn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One kernel's boot, as the guest reported it.
struct KernelRun {
    /// `6.1`: its console lines are marked `vm 6.1|`.
    series: &'static str,
    /// `6.1.0-57-amd64 (Debian 6.1.192-3, QEMU)`, as the table names it.
    kernel_name: String,
    report: guest::Report,
    verdicts: Vec<guest::Verdict>,
    /// Boot to power-off.
    booted: Duration,
    /// Why the boot failed, if it did.
    boot_error: Option<anyhow::Error>,
}

impl KernelRun {
    /// What went wrong on this kernel, if anything: the boot, or backends that failed.
    fn error(&mut self) -> Option<anyhow::Error> {
        if let Some(error) = self.boot_error.take() {
            return Some(error.context(format!("booting {}", self.kernel_name)));
        }
        let failed: Vec<_> = self
            .verdicts
            .iter()
            .filter(|v| !v.ok)
            .map(|v| v.backend.as_str())
            .collect();
        (!failed.is_empty()).then(|| {
            anyhow::anyhow!(
                "vm-test on {}: {} failed (the guest's output is above, lines marked `vm {}|`)",
                self.kernel_name,
                failed.join(", "),
                self.series
            )
        })
    }
}

/// Fetches `source`'s kernel, packs an initramfs whose init runs the backends the kernel
/// supports among those `known` to the binary, boots it, prints the results and writes the
/// kernel's rows of the README's table. An error when it could not get as far as booting.
fn test_kernel(
    source: kernel::Source,
    work: &Path,
    built: &Built,
    tests: &[String],
    known: &[String],
    turns: &Turns,
) -> Result<KernelRun> {
    let prepare = take(&turns.prepare);
    let kernel = kernel::current(source, &work.join("kernels"))?;
    let selection = backend::select(&kernel, known);
    let expected_auto = selection.expected_auto().with_context(|| {
        format!(
            "{} supports none of the backends {PACKAGE} knows ({})",
            kernel.release,
            known.join(", ")
        )
    })?;
    let skips: Vec<_> = SKIPPED_IN_VM.iter().map(|(name, _)| *name).collect();
    let plan = guest::Plan {
        bin: &built.bin,
        tests,
        skips: &skips,
        backends: &selection.run,
        test_timeout_secs: GUEST_TEST_TIMEOUT_SECS,
    };
    // A directory per series: each image stays on disk for a look after the run.
    let initramfs = image::build(
        &work.join(source.series),
        &guest::init_script(&plan),
        built,
        &kernel.modules,
    )?;
    drop(prepare);

    let started = Instant::now();
    let boot = boot(&kernel.boot_image, &initramfs, source.series);
    let booted = started.elapsed();
    let _report = take(&turns.report);
    let (lines, boot_error) = match boot {
        Ok(lines) => (lines, None),
        Err(Boot { lines, error }) => (lines, Some(error)),
    };
    let report = guest::parse(&lines);
    let verdicts = report.verdicts(&plan, expected_auto);

    let kernel_name = format!(
        "{} (Debian {}, QEMU)",
        report.kernel.as_deref().unwrap_or(&kernel.release),
        kernel.version
    );
    say(format!(
        "vm-test: results on {kernel_name} from {}, boot to power-off {:.1} s:",
        kernel.package,
        booted.as_secs_f64()
    ));
    for verdict in &verdicts {
        say(format!(
            "vm-test:   {:<10} {:<4}  {}",
            verdict.backend,
            if verdict.ok { "pass" } else { "FAIL" },
            verdict.detail
        ));
    }
    for (backend, why) in &selection.skipped {
        say(format!("vm-test:   {backend:<10} {why}"));
    }
    // Every backend in `BACKENDS`' order, whether it ran or not, then auto.
    let rows: Vec<_> = backend::BACKENDS
        .iter()
        .filter_map(|b| {
            let ran = verdicts.iter().find(|v| v.backend == b.name);
            let result = ran.map(guest::Verdict::table_result).or_else(|| {
                let skipped = selection.skipped.iter().find(|(name, _)| *name == b.name);
                skipped.map(|(_, why)| why.clone())
            })?;
            Some(table::Row::new(&kernel_name, b.name, &result))
        })
        .chain(
            verdicts
                .iter()
                .filter(|v| v.backend == "auto")
                .map(|v| table::Row::new(&kernel_name, "auto", &v.table_result())),
        )
        .collect();
    // Written now, not after the last kernel: a later boot that hangs loses nothing.
    if let Err(e) = table::update(&cmd::workspace_root().join("README.md"), &rows) {
        cmd::warn(format!("kernel-support table not updated: {e:#}"));
    }
    Ok(KernelRun {
        series: source.series,
        kernel_name,
        report,
        verdicts,
        booted,
        boot_error,
    })
}

/// The integration tests to run in the VM: every file in sockwatch-tui/tests/ but
/// [`HOST_ONLY_TESTS`], sorted.
fn vm_tests() -> Result<Vec<String>> {
    let dir = cmd::workspace_root().join(PACKAGE).join("tests");
    let mut tests = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let stem = path
            .extension()
            .filter(|ext| *ext == "rs")
            .and(path.file_stem())
            .and_then(|stem| stem.to_str());
        if let Some(stem) = stem {
            if !HOST_ONLY_TESTS.iter().any(|(name, _)| *name == stem) {
                tests.push(stem.to_owned());
            }
        }
    }
    ensure!(
        !tests.is_empty(),
        "no integration tests in {}",
        dir.display()
    );
    tests.sort();
    Ok(tests)
}

/// The static binaries that go into the guest.
pub struct Built {
    /// sockwatch-tui, at the absolute path compiled into the tests (`CARGO_BIN_EXE_...`).
    pub bin: String,
    /// Every binary of the package (sockwatch-tui and the tests' helpers), same paths.
    pub bins: Vec<String>,
    /// Test name and executable.
    pub tests: Vec<(String, PathBuf)>,
}

/// Builds the tests and sockwatch-tui statically into `target/vm-build`, a target directory of
/// its own so the host build's artifacts are never invalidated. The eBPF object is the one the
/// host build made (`SOCKWATCH_BPF_OBJECT`), so it is not built twice.
fn build(target: &Path, tests: &[String]) -> Result<Built> {
    // A no-op after `cargo test`; otherwise it (re)builds target/bpf's object from the sources.
    cmd::run(cmd::cargo().args(["build", "--package", PACKAGE]))?;
    let object = target.join("bpf/bpfel-unknown-none/release/sockwatch");
    ensure!(
        object.is_file(),
        "the host build did not leave the eBPF object at {}",
        object.display()
    );

    let mut cargo = cmd::cargo();
    cargo
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env("SOCKWATCH_BPF_OBJECT", &object)
        // Line numbers in backtraces, at a third of full debuginfo's size (the initramfs).
        .env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only")
        .args([
            "test",
            "--no-run",
            "--package",
            PACKAGE,
            "--target",
            GUEST_TARGET,
        ])
        .arg("--target-dir")
        .arg(target.join("vm-build"))
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    for test in tests {
        cargo.args(["--test", test.as_str()]);
    }
    say(cmd::display(&cargo));
    let output = cargo
        .spawn()
        .context("cannot run cargo")?
        .wait_with_output()
        .context("waiting for cargo")?;
    if !output.status.success() {
        bail!(
            "building the static test binaries failed with {}",
            output.status
        );
    }
    let built = artifacts(&String::from_utf8_lossy(&output.stdout), tests)?;
    for path in built.tests.iter().map(|(_, p)| p.as_path()) {
        image::ensure_static(path)?;
    }
    for bin in &built.bins {
        image::ensure_static(Path::new(bin))?;
    }
    Ok(built)
}

/// The test executables and the sockwatch-tui binary in cargo's JSON messages.
fn artifacts(messages: &str, tests: &[String]) -> Result<Built> {
    let mut bins = Vec::new();
    let mut found = Vec::new();
    for message in messages.lines() {
        let Ok(message) = serde_json::from_str::<Value>(message) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        let kinds = message["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let is = |kind: &str| kinds.iter().any(|k| k == kind);
        if is("bin") {
            bins.push((name.to_owned(), executable.to_owned()));
        } else if is("test")
            && message["profile"]["test"] == true
            && tests.iter().any(|t| t == name)
        {
            found.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    let bin = bins
        .iter()
        .find(|(name, _)| name == PACKAGE)
        .map(|(_, path)| path.clone())
        .with_context(|| format!("cargo built no {PACKAGE} binary"))?;
    let bins = bins.into_iter().map(|(_, path)| path).collect();
    for test in tests {
        ensure!(
            found.iter().any(|(name, _)| name == test),
            "cargo built no test executable for {test}"
        );
    }
    Ok(Built {
        bin,
        bins,
        tests: found,
    })
}

/// The guest's console output, and why the boot failed if it did.
struct Boot {
    lines: Vec<String>,
    error: anyhow::Error,
}

/// Boots the kernel with the initramfs and returns the console output, line by line (each also
/// printed as it comes, marked `vm SERIES|`). The guest's init reports through markers in that output
/// and its exit code through the isa-debug-exit port, which makes QEMU exit with `code*2+1`.
fn boot(kernel: &Path, initramfs: &Path, series: &str) -> Result<Vec<String>, Boot> {
    let mut qemu = Command::new("qemu-system-x86_64");
    // TCG, one host thread for both vCPUs. With a thread per vCPU, a guest kernel patching its
    // own text (static keys: each tracepoint attach and detach) while the other vCPU ran through
    // it locked 6.1 up (both vCPUs stuck) and crashed 6.12 on a stale int3, now and then. The
    // /dev/kvm some of these machines offer is no way out: a nested, emulated KVM there takes
    // half a minute of guest time to reach the kernel's memory set-up.
    qemu.args(["-accel", "tcg,thread=single", "-smp", "2", "-m", "1024"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        // A soft lockup panics, which ends the boot at once with its trace in the output,
        // rather than leaving the guest spinning until QEMU_TIMEOUT.
        .args(["-append", "console=ttyS0 panic=-1 quiet softlockup_panic=1"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    say(cmd::display(&qemu));
    let failed = |lines, error| Boot { lines, error };
    let mut child = match qemu.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Err(failed(
                Vec::new(),
                anyhow::Error::new(e).context("cannot run QEMU"),
            ))
        }
    };
    let Some(stdout) = child.stdout.take() else {
        return Err(failed(
            Vec::new(),
            anyhow::anyhow!("QEMU's stdout was not piped"),
        ));
    };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            if tx
                .send(text.trim_end_matches(['\r', '\n']).to_owned())
                .is_err()
            {
                break;
            }
            line.clear();
        }
    });

    let deadline = Instant::now() + QEMU_TIMEOUT;
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                println!("vm {series}| {line}");
                lines.push(line);
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                let error = anyhow::anyhow!(
                    "QEMU killed after {} min: the guest did not power off",
                    QEMU_TIMEOUT.as_secs() / 60
                );
                return Err(failed(lines, error));
            }
        }
    }
    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => {
            return Err(failed(
                lines,
                anyhow::Error::new(e).context("waiting for QEMU"),
            ))
        }
    };
    // isa-debug-exit: the guest's code c becomes 2c+1; 0 means it powered off without writing
    // the port (the init's fallback), or the kernel panicked and QEMU did not reboot.
    match status.code() {
        Some(code) if code % 2 == 1 => {
            say(format!(
                "vm-test: QEMU exited with {code}: the guest's init reported {}",
                code / 2
            ));
            Ok(lines)
        }
        Some(0) => {
            cmd::warn("QEMU exited with 0: the guest powered off without reporting an exit code");
            Ok(lines)
        }
        _ => Err(failed(lines, anyhow::anyhow!("QEMU failed with {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_found_in_cargos_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"sockwatch_tui"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"sockwatch-tui"},"profile":{"test":false},"executable":"/t/debug/sockwatch-tui"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"sockwatch-load"},"profile":{"test":false},"executable":"/t/debug/sockwatch-load"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"cli_errors"},"profile":{"test":true},"executable":"/t/debug/deps/cli_errors-1"}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "not json",
        ]
        .join("\n");
        let built = artifacts(&messages, &["cli_errors".to_owned()]).expect("found");
        assert_eq!(built.bin, "/t/debug/sockwatch-tui");
        assert_eq!(
            built.bins,
            ["/t/debug/sockwatch-tui", "/t/debug/sockwatch-load"]
        );
        assert_eq!(
            built.tests,
            [(
                "cli_errors".to_owned(),
                PathBuf::from("/t/debug/deps/cli_errors-1")
            )]
        );
        let missing = artifacts(
            &messages,
            &["cli_errors".to_owned(), "kernel_lifecycle".to_owned()],
        );
        assert!(missing.is_err());
    }

    #[test]
    fn every_skip_has_a_reason() {
        for (name, reason) in SKIPPED_IN_VM.iter().chain(HOST_ONLY_TESTS) {
            assert!(!name.is_empty() && !reason.is_empty());
        }
    }
}
