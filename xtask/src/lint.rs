//! `cargo xtask lint`: formatting and clippy, warnings as errors.

use anyhow::Result;

use crate::cmd;

/// `cargo fmt --all` covers every member, sockwatch-ebpf included (formatting compiles nothing).
/// Clippy runs on the default members only: sockwatch-ebpf is `no_std` for bpfel-unknown-none
/// and cannot be compiled for the host, which is also why `--workspace` is never passed. The
/// eBPF crate is instead compiled by sockwatch-tui's build.rs during the clippy run, so its
/// errors fail the lint; cargo shows that build's warnings only when it fails (or with `-vv`).
pub fn run() -> Result<()> {
    cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;
    cmd::run(cmd::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))
}
