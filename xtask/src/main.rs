//! Project tasks, run as `cargo xtask <task>` (alias in .cargo/config.toml).

mod bench;
mod binary;
mod cmd;
mod lint;
mod setup;
mod steps;
mod test;
mod vm;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run, lint and test sockwatch")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install or check the eBPF toolchain (Debian packages, bpf-linker) and mount tracefs.
    Setup,
    /// Build sockwatch-tui (with its embedded eBPF object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build sockwatch-tui (release) and run it as root, via sudo if needed.
    Run {
        /// Use the debug build instead of the release build.
        #[arg(long)]
        debug: bool,
        /// Arguments for sockwatch-tui (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build the release binary and install it with its shell completions (bash, zsh, fish)
    /// and man page under PREFIX, so that `sudo sockwatch-tui` finds it (as root).
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
    },
    /// Check formatting and run clippy with warnings as errors.
    Lint,
    /// Setup, lint and all tests, `vm-test` included; needs root. This is what CI runs.
    Test,
    /// Measure what sockwatch costs the programs it watches, its throughput, memory and
    /// render time (as root; writes bench/results.md; about 4 min plus release builds).
    Bench {
        /// One tiny round of everything from the debug build, into target/bench/smoke (the
        /// check `cargo xtask test` runs).
        #[arg(long)]
        smoke: bool,
        /// Interleaved rounds of the overhead measurements (default 5).
        #[arg(long)]
        rounds: Option<usize>,
        /// Only this step (for work on it): its table goes to target/bench/results.md, never
        /// to bench/results.md.
        #[arg(long, value_enum)]
        only: Option<bench::Step>,
    },
    /// Boot Debian bookworm's kernel in QEMU and run the real-kernel tests there with each
    /// probe backend (kprobe, tracepoint) and `--probe auto`.
    VmTest,
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Task::Build { release } => binary::build(release).map(|()| ExitCode::SUCCESS),
        Task::Run { debug, args } => binary::run(debug, &args),
        Task::Install { prefix } => binary::install(&prefix).map(|()| ExitCode::SUCCESS),
        Task::Lint => lint::run().map(|()| ExitCode::SUCCESS),
        Task::Test => test::run().map(|()| ExitCode::SUCCESS),
        Task::Bench {
            smoke,
            rounds,
            only,
        } => bench::run(smoke, rounds, only).map(|()| ExitCode::SUCCESS),
        Task::VmTest => vm::task().map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        // `{:#}` keeps the whole context chain on one line.
        cmd::say(format!("{e:#}"));
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_hyphenated_args_through() {
        let cli = Cli::try_parse_from(["xtask", "run", "--", "--json", "-p", "1"]).unwrap();
        let Task::Run { debug, args } = cli.task else {
            panic!("not a run task")
        };
        assert!(!debug);
        assert_eq!(args, ["--json", "-p", "1"]);
    }
}
