//! `cargo xtask setup`: the eBPF toolchain described in shared/TOOLCHAIN.md. Every check is a
//! cheap probe, so setup runs before each build and costs well under a second once all is there.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, say, warn};

/// What a task needs installed: building and running need only the toolchain; the tests, the
/// VM test and the benchmark bring their own tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Debian's rustc 1.96 with a precompiled `core` for bpfel-unknown-none (rustup's
    /// toolchains have no rust-src, so no build-std), LLVM 22 for bpf-linker.
    Build,
    /// The tools the real-kernel tests drive, on the host.
    Test,
    /// `cargo xtask vm-test`: Debian's kernels under QEMU, an initramfs of busybox.
    Vm,
    /// `cargo xtask bench`.
    Bench,
}

/// Every need: `cargo xtask setup` and `cargo xtask test` install all of it.
pub const ALL: &[Need] = &[Need::Build, Need::Test, Need::Vm, Need::Bench];

/// Debian packages, by the need that brings them.
const PACKAGES: &[(&str, Need)] = &[
    ("rustc-web", Need::Build),
    ("cargo-web", Need::Build),
    ("libstd-rust-web-dev-bpf", Need::Build),
    ("llvm-22-dev", Need::Build),
    ("tmux", Need::Test),
    ("iproute2", Need::Test),
    ("curl", Need::Test),
    ("util-linux", Need::Test),
    // The reconciliation test edits the kernel map as a missed event would leave it.
    ("bpftool", Need::Test),
    // The `--metrics` test: a real Prometheus server scrapes it, promtool checks the format.
    // (Installing it starts no server: there is no init system to start it here.)
    ("prometheus", Need::Test),
    // `man -l` renders the generated page in the tests.
    ("man-db", Need::Test),
    ("qemu-system-x86", Need::Vm),
    ("busybox-static", Need::Vm),
    // Uncompressing the kernels' bzImages and modules: xz (6.1), zstd (6.12's kernel).
    ("xz-utils", Need::Vm),
    ("zstd", Need::Vm),
    // The floor (b) and the article's per-event way (d); tmux for the render measurement.
    ("bpftrace", Need::Bench),
    ("tmux", Need::Bench),
    ("bpftool", Need::Bench),
];

/// Newer bpf-linker releases need a newer LLVM than Debian's rustc uses.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
/// Not mounted at boot on the project's machines; aya looks its tracepoint ids up there.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Everything (`cargo xtask setup`).
pub fn run() -> Result<()> {
    run_for(ALL)
}

/// What `needs` need, and no more: `cargo xtask run` on a fresh machine pulls no QEMU.
pub fn run_for(needs: &[Need]) -> Result<()> {
    let root = cmd::is_root()?;
    let packages = packages_for(needs);
    ensure_packages(root, &packages)?;
    ensure_bpf_linker()?;
    ensure_tracefs(root);
    if !Path::new(BPF_CORE_DIR).is_dir() {
        bail!(
            "the precompiled BPF core is missing: {BPF_CORE_DIR} does not exist \
             (it comes from libstd-rust-web-dev-bpf; reinstall that package)"
        );
    }
    say(format!(
        "setup: ok ({} Debian packages, bpf-linker {BPF_LINKER_VERSION}, BPF core in {BPF_CORE_DIR})",
        packages.len()
    ));
    Ok(())
}

/// The Debian packages `needs` bring, each once.
fn packages_for(needs: &[Need]) -> Vec<&'static str> {
    let mut packages: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, need)| needs.contains(need))
        .map(|(package, _)| *package)
        .collect();
    packages.sort_unstable();
    packages.dedup();
    packages
}

fn ensure_packages(root: bool, packages: &[&str]) -> Result<()> {
    // One query for all packages; `\n` is expanded by dpkg-query itself.
    let output = cmd::capture(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package} ${Status}\\n"])
            .args(packages),
    )
    .context("cannot run dpkg-query (this setup needs Debian)")?;
    // dpkg-query exits 1 when some package is unknown, yet still lists the others: the exit
    // status says nothing the listing does not.
    let missing = missing_packages(packages, &String::from_utf8_lossy(&output.stdout));
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !root {
        bail!("missing Debian packages: {list}; run `cargo xtask setup` as root to install them");
    }
    say(format!("installing missing Debian packages: {list}"));
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

/// The packages of `wanted` that `listing` (lines "<package> <want> <flag> <status>") does not
/// show as installed. A held package ("hold ok installed") counts as installed.
fn missing_packages<'a>(wanted: &[&'a str], listing: &str) -> Vec<&'a str> {
    let installed = |package: &str| {
        listing.lines().any(|line| {
            let mut fields = line.split_whitespace();
            fields.next() == Some(package) && fields.nth(2) == Some("installed")
        })
    };
    wanted.iter().copied().filter(|p| !installed(p)).collect()
}

fn ensure_bpf_linker() -> Result<()> {
    match bpf_linker_version()? {
        Some(version) if version == BPF_LINKER_VERSION => return Ok(()),
        Some(version) => say(format!(
            "bpf-linker {version} found, {BPF_LINKER_VERSION} needed: installing it"
        )),
        None => say(format!(
            "bpf-linker not found: installing {BPF_LINKER_VERSION} (builds from source, ~70 s)"
        )),
    }
    let mut install = cmd::cargo();
    install.env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
        "--locked",
    ]);
    cmd::run(&mut install)?;
    match bpf_linker_version()? {
        Some(version) if version == BPF_LINKER_VERSION => Ok(()),
        Some(version) => bail!(
            "bpf-linker {BPF_LINKER_VERSION} was installed, but the bpf-linker first on PATH is \
             {version}: put ~/.cargo/bin first on PATH"
        ),
        None => bail!(
            "bpf-linker {BPF_LINKER_VERSION} was installed but is not on PATH: add ~/.cargo/bin \
             (or $CARGO_HOME/bin) to PATH"
        ),
    }
}

/// The version of the bpf-linker on PATH; `None` when it is absent or does not answer.
fn bpf_linker_version() -> Result<Option<String>> {
    let output = match cmd::capture(Command::new("bpf-linker").arg("--version")) {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("cannot run `bpf-linker --version`"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = parse_bpf_linker_version(&stdout).filter(|_| output.status.success());
    if version.is_none() {
        warn(format!(
            "`bpf-linker --version` failed ({}) or printed no version: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(version.map(str::to_owned))
}

/// "bpf-linker 0.13.0" -> "0.13.0".
fn parse_bpf_linker_version(output: &str) -> Option<&str> {
    let mut words = output.lines().next()?.split_whitespace();
    (words.next()? == "bpf-linker").then_some(())?;
    words.next()
}

/// Mounts tracefs when absent. Only a warning on failure: building and linting do not need it.
fn ensure_tracefs(root: bool) {
    match Path::new(TRACEFS).join("events").try_exists() {
        Ok(true) => {}
        Ok(false) if root => {
            let mut mount = Command::new("mount");
            mount.args(["-t", "tracefs", "nodev", TRACEFS]);
            if let Err(e) = cmd::run(&mut mount) {
                warn(format!("{e:#}; attaching tracepoints will fail"));
            }
        }
        Ok(false) => warn(format!(
            "tracefs is not mounted; as root run: mount -t tracefs nodev {TRACEFS}"
        )),
        // Unreadable to non-root users when mounted (mode 0700): nothing to do either way.
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpf_linker_version() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0\n"),
            Some("0.13.0")
        );
        assert_eq!(parse_bpf_linker_version("bpf-linker\n"), None);
        assert_eq!(parse_bpf_linker_version("rustc 1.96.0\n"), None);
        assert_eq!(parse_bpf_linker_version(""), None);
    }

    #[test]
    fn finds_missing_packages_in_dpkg_listing() {
        let listing = "curl install ok installed\n\
                       tmux hold ok installed\n\
                       iproute2 deinstall ok config-files\n\
                       llvm-22-dev unknown ok not-installed\n";
        assert_eq!(
            missing_packages(
                &["curl", "tmux", "iproute2", "llvm-22-dev", "util-linux"],
                listing
            ),
            ["iproute2", "llvm-22-dev", "util-linux"]
        );
        assert!(missing_packages(&["curl"], listing).is_empty());
    }

    /// `cargo xtask run` and `build` install the toolchain only: no QEMU, no test or benchmark
    /// tools; the tasks that need those bring them.
    #[test]
    fn building_and_running_pull_only_the_toolchain() {
        let build = packages_for(&[Need::Build]);
        assert_eq!(
            build,
            [
                "cargo-web",
                "libstd-rust-web-dev-bpf",
                "llvm-22-dev",
                "rustc-web"
            ]
        );
        let vm = packages_for(&[Need::Build, Need::Test, Need::Vm]);
        assert!(vm.contains(&"qemu-system-x86") && vm.contains(&"curl"));
        assert!(!packages_for(&[Need::Build, Need::Bench]).contains(&"qemu-system-x86"));
        let all = packages_for(ALL);
        for (package, _) in PACKAGES {
            assert!(all.contains(package), "{package}");
        }
    }
}
