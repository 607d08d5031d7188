//! `cargo xtask build` and `cargo xtask run`: the sockwatch-tui binary, whose build script
//! embeds the eBPF object (hence setup first).

use std::{ffi::OsString, process::Command, process::ExitCode};

use anyhow::{bail, Result};

use crate::{
    cmd::{self, say},
    setup,
};

const PACKAGE: &str = "sockwatch-tui";

pub fn build(release: bool) -> Result<()> {
    setup::run()?;
    cargo_build(release)
}

/// Builds (release unless `debug`) and runs sockwatch-tui with `args`, as root: loading eBPF
/// programs needs it. Returns the program's own exit code.
pub fn run(debug: bool, args: &[OsString]) -> Result<ExitCode> {
    setup::run()?;
    cargo_build(!debug)?;
    let profile = if debug { "debug" } else { "release" };
    let binary = cmd::target_dir().join(profile).join(PACKAGE);
    let mut program = if cmd::is_root()? {
        Command::new(&binary)
    } else if let Some(sudo) = cmd::find_in_path("sudo") {
        let mut sudo = Command::new(sudo);
        sudo.arg("--").arg(&binary);
        sudo
    } else {
        bail!("{PACKAGE} needs root to load eBPF programs and sudo is not installed: run `cargo xtask run` as root");
    };
    program.args(args);
    let status = cmd::status(&mut program)?;
    if !status.success() {
        say(format!("{PACKAGE} exited with {status}"));
    }
    Ok(ExitCode::from(cmd::exit_code(status)))
}

fn cargo_build(release: bool) -> Result<()> {
    let mut build = cmd::cargo();
    build.arg("build");
    if release {
        build.arg("--release");
    }
    cmd::run(build.args(["-p", PACKAGE]))
}
