//! Running subprocesses and locating things: every command is echoed before it runs, and a
//! failure names the command, so a CI log alone shows what happened.

use std::{
    env,
    ffi::OsStr,
    fmt::Display,
    fs, io,
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
};

use anyhow::{bail, Context, Result};

/// A progress line on stderr (stdout stays free for the programs we run).
pub fn say(message: impl Display) {
    eprintln!("xtask: {message}");
}

pub fn warn(message: impl Display) {
    eprintln!("xtask: warning: {message}");
}

/// Echoes and runs `cmd` with inherited stdio; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("{} failed with {status}", display(cmd));
    }
    Ok(())
}

/// Echoes and runs `cmd`, returning its status whatever it is (for callers that propagate it).
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    say(display(cmd));
    cmd.status()
        .with_context(|| format!("cannot run {}", display(cmd)))
}

/// Echoes and runs `cmd`, capturing stdout and stderr. The raw `io::Result` lets probes tell
/// "not installed" (`NotFound`) from real failures; the exit status is left to the caller.
pub fn capture(cmd: &mut Command) -> io::Result<Output> {
    say(display(cmd));
    cmd.output()
}

/// `cmd` as a shell line (explicitly set variables first), so it can be copied and re-run.
pub fn display(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), quote(value?))));
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote);
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// Single-quotes a word for the shell when it holds anything beyond a safe set.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The workspace root: xtask lives in `<root>/xtask`.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest dir has a parent")
}

/// The cargo that runs us (`cargo` sets `CARGO` for `cargo run`), so nested builds use the same
/// toolchain; run from the workspace root so `cargo xtask` works from any subdirectory.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Cargo's target directory. A relative `CARGO_TARGET_DIR` is taken from the workspace root,
/// as the cargo commands above (run there) resolve it.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
}

/// Whether we run as root (effective uid 0), without libc: /proc first, `id -u` as fallback.
pub fn is_root() -> Result<bool> {
    if let Some(uid) = fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(effective_uid)
    {
        return Ok(uid == 0);
    }
    let output = Command::new("id").arg("-u").output().context(
        "cannot tell whether we run as root: /proc/self/status unreadable and `id -u` failed",
    )?;
    let uid = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse::<u32>();
    match uid {
        Ok(uid) if output.status.success() => Ok(uid == 0),
        _ => bail!("cannot tell whether we run as root: `id -u` printed no uid"),
    }
}

/// The effective uid from /proc/<pid>/status ("Uid:\treal\teffective\tsaved\tfs").
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The first executable `name` on PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| {
            fs::metadata(path)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The exit code a shell would report for `status`: the code, or 128 + signal when killed.
pub fn exit_code(status: ExitStatus) -> u8 {
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    u8::try_from(code).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_the_shell_would_split() {
        let mut cmd = Command::new("dpkg-query");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
            "-W",
            "-f=${Status}\\n",
            "it's",
            "curl",
        ]);
        assert_eq!(
            display(&cmd),
            r"DEBIAN_FRONTEND=noninteractive dpkg-query -W '-f=${Status}\n' 'it'\''s' curl"
        );
    }

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tcat\n"), None);
    }

    #[test]
    fn exit_code_maps_signals_like_a_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137); // SIGKILL
    }
}
