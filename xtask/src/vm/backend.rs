//! The probe backends: what each needs from a kernel, which of them the sockwatch-tui under test
//! knows, and so which ones run on a given kernel and which one `--probe auto` must pick there.
//!
//! The list is xtask's; the binary is asked which `--probe` values it accepts. A backend listed
//! here that the binary does not know yet is left out (its rows say so); one the binary knows
//! that is not listed here stops vm-test, so a new backend is never left untested.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::kernel::Kernel;
use crate::cmd;

/// What a backend needs from the kernel it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// A kernel config option set to `y`.
    Config(&'static str),
    /// A release at least `major.minor`: for features without a config option of their own.
    Since(u32, u32),
}

#[derive(Debug)]
pub struct Backend {
    /// The `--probe` value.
    pub name: &'static str,
    pub needs: Needs,
    /// What the kernel must have, in words (the table's n/a cell).
    pub what: &'static str,
    /// Why its suites do not run in the VM yet, if they do not (`--probe auto` must still pick
    /// it where the kernel supports it).
    pub held_back: Option<&'static str>,
}

/// Every backend, in the order `--probe auto` prefers them (sockwatch's `choose_backend`): on
/// each kernel, auto must pick the first one that runs there.
pub const BACKENDS: &[Backend] = &[
    // Counts bytes where the socket layer moves them (Linux 6.3 added those tracepoints).
    Backend {
        name: "socket",
        needs: Needs::Since(6, 3),
        what: "the socket-layer tracepoints `sock:sock_send_length`/`sock_recv_length` (Linux 6.3)",
        held_back: None,
    },
    Backend {
        name: "tracepoint",
        needs: Needs::Config("CONFIG_FTRACE_SYSCALLS"),
        what: "syscall tracepoints (`CONFIG_FTRACE_SYSCALLS`)",
        held_back: None,
    },
    Backend {
        name: "kprobe",
        needs: Needs::Config("CONFIG_KPROBES"),
        what: "kprobes (`CONFIG_KPROBES`)",
        held_back: None,
    },
];

/// What runs on one kernel.
#[derive(Debug, PartialEq, Eq)]
pub struct Selection {
    /// Backends whose whole suite runs, in [`BACKENDS`]' order.
    pub run: Vec<&'static str>,
    /// Backends that do not run, with the table's result cell saying why.
    pub skipped: Vec<(&'static str, String)>,
    /// What `--probe auto` must pick: the first backend the kernel supports and the binary
    /// knows (held back or not).
    auto: Option<&'static str>,
}

impl Selection {
    pub fn expected_auto(&self) -> Option<&'static str> {
        self.auto
    }
}

/// The backends of [`BACKENDS`] that `known` (the binary's) has and `kernel` supports.
pub fn select(kernel: &Kernel, known: &[String]) -> Selection {
    let mut selection = Selection {
        run: Vec::new(),
        skipped: Vec::new(),
        auto: None,
    };
    for backend in BACKENDS {
        let supported = match backend.needs {
            Needs::Config(option) => kernel.has(option),
            Needs::Since(major, minor) => kernel.version().is_some_and(|v| v >= (major, minor)),
        };
        // What the kernel lacks first: that is a fact about the kernel, whatever the build.
        if !supported {
            selection
                .skipped
                .push((backend.name, format!("n/a: needs {}", backend.what)));
        } else if known.iter().any(|name| name == backend.name) {
            selection.auto = selection.auto.or(Some(backend.name));
            match backend.held_back {
                Some(why) => selection.skipped.push((backend.name, why.to_owned())),
                None => selection.run.push(backend.name),
            }
        } else {
            selection.skipped.push((
                backend.name,
                format!(
                    "not in this build: sockwatch-tui has no `--probe {}`",
                    backend.name
                ),
            ));
        }
    }
    selection
}

/// The backends `bin` accepts for `--probe` (`auto` aside). Asked with a value it rejects: clap
/// then lists the possible values, and exits before anything is loaded, without privileges.
pub fn known_by(bin: &str) -> Result<Vec<String>> {
    let output = cmd::capture(Command::new(bin).args(["--probe", "?"]))
        .with_context(|| format!("cannot run {bin}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let known: Vec<String> = possible_values(&stderr)
        .with_context(|| {
            format!(
                "`{bin} --probe ?` listed no possible values ({}): {stderr}",
                output.status
            )
        })?
        .into_iter()
        .filter(|name| name != "auto")
        .collect();
    let unlisted: Vec<_> = known
        .iter()
        .filter(|name| !BACKENDS.iter().any(|b| b.name == *name))
        .map(String::as_str)
        .collect();
    if !unlisted.is_empty() {
        bail!(
            "sockwatch-tui knows `--probe {}`, which vm-test does not: add it to BACKENDS in \
             xtask/src/vm/backend.rs, with what it needs from a kernel",
            unlisted.join("`, `--probe ")
        );
    }
    Ok(known)
}

/// `[possible values: auto, tracepoint, kprobe]` in clap's message → the values.
fn possible_values(message: &str) -> Option<Vec<String>> {
    let (_, rest) = message.split_once("[possible values:")?;
    let (list, _) = rest.split_once(']')?;
    let values: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
        .collect();
    (!values.is_empty()).then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAP: &str = "error: invalid value '?' for '--probe <PROBE>'\n  \
                        [possible values: auto, tracepoint, kprobe]\n\n\
                        For more information, try '--help'.\n";

    #[test]
    fn the_binarys_backends_come_from_claps_message() {
        assert_eq!(
            possible_values(CLAP),
            Some(vec!["auto".into(), "tracepoint".into(), "kprobe".into()])
        );
        // Wrapped onto two lines.
        assert_eq!(
            possible_values("[possible values: auto,\n   socket]"),
            Some(vec!["auto".into(), "socket".into()])
        );
        assert_eq!(
            possible_values("error: unexpected argument '--probe'"),
            None
        );
    }

    #[test]
    fn each_kernel_runs_what_it_supports_among_what_the_binary_knows() {
        let both = "CONFIG_KPROBES=y\nCONFIG_FTRACE_SYSCALLS=y\n";
        let known = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let today = known(&["tracepoint", "kprobe"]);
        let with_socket = known(&["socket", "tracepoint", "kprobe"]);

        let old = Kernel::fake("6.1.0-57-amd64", both);
        for known in [&today, &with_socket] {
            let selection = select(&old, known);
            assert_eq!(selection.run, ["tracepoint", "kprobe"]);
            assert_eq!(selection.expected_auto(), Some("tracepoint"));
            assert_eq!(selection.skipped.len(), 1);
            assert!(selection.skipped[0]
                .1
                .starts_with("n/a: needs the socket-layer"));
        }

        let new = Kernel::fake("6.12.117+deb12-amd64", both);
        let selection = select(&new, &today);
        assert_eq!(selection.run, ["tracepoint", "kprobe"]);
        assert_eq!(selection.expected_auto(), Some("tracepoint"));
        assert_eq!(
            selection.skipped,
            [(
                "socket",
                "not in this build: sockwatch-tui has no `--probe socket`".to_owned()
            )]
        );
        let selection = select(&new, &with_socket);
        assert_eq!(selection.run, ["socket", "tracepoint", "kprobe"]);
        assert_eq!(selection.expected_auto(), Some("socket"));
        assert!(selection.skipped.is_empty());

        let no_kprobes = Kernel::fake("6.1.0-57-amd64", "CONFIG_FTRACE_SYSCALLS=y\n");
        let selection = select(&no_kprobes, &today);
        assert_eq!(selection.run, ["tracepoint"]);
        assert_eq!(
            selection.skipped[1],
            ("kprobe", "n/a: needs kprobes (`CONFIG_KPROBES`)".to_owned())
        );
        let kprobes_only = Kernel::fake("6.1.0-57-amd64", "CONFIG_KPROBES=y\n");
        assert_eq!(
            select(&kprobes_only, &today).expected_auto(),
            Some("kprobe")
        );
    }
}
