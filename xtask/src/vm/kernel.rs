//! Debian bookworm's current kernel, fetched with `apt-get download` and cached by version.
//!
//! `linux-image-amd64` depends on the real package (`linux-image-6.1.0-NN-amd64`), whose name
//! changes with each security update, so it is looked up on every run. Only what the VM needs is
//! kept: the uncompressed `vmlinux` (booting it skips the decompressor, slow under TCG), the
//! kernel's config, and the two modules `ss` needs (`inet_diag`, `tcp_diag`); the .deb is
//! deleted once extracted.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, say, warn};

/// The metapackage that always points at bookworm's current kernel.
const METAPACKAGE: &str = "linux-image-amd64";
/// Modules the guest loads: `ss` reads sockets through inet_diag netlink, a module in Debian.
const MODULES: [&str; 2] = ["inet_diag.ko", "tcp_diag.ko"];
/// Written last into a cache entry: an entry without it is incomplete and rebuilt.
const COMPLETE: &str = "complete";
/// The xz stream header: the compressed kernel inside bzImage starts with it.
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

pub struct Kernel {
    /// `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// `6.1.192-2`.
    pub version: String,
    /// `6.1.0-56-amd64`, as `uname -r` says.
    pub release: String,
    /// `vmlinux` (or `vmlinuz` when it could not be uncompressed).
    pub boot_image: PathBuf,
    pub modules: Vec<PathBuf>,
    config: String,
}

impl Kernel {
    /// What `--probe auto` must pick on this kernel: tracepoints when it has syscall
    /// tracepoints (sockwatch's `choose_backend`), kprobes otherwise.
    pub fn expected_auto(&self) -> &'static str {
        if config_enabled(&self.config, "CONFIG_FTRACE_SYSCALLS") {
            "tracepoint"
        } else {
            "kprobe"
        }
    }
}

fn config_enabled(config: &str, option: &str) -> bool {
    config
        .lines()
        .any(|line| line.strip_prefix(option) == Some("=y"))
}

/// The current kernel, from the cache under `cache` or freshly downloaded there.
pub fn current(cache: &Path) -> Result<Kernel> {
    let (package, version) = match lookup() {
        Ok(found) => found,
        Err(e) => {
            // Offline, or no apt lists: the newest cached kernel still proves the backends.
            let cached = newest_cached(cache).with_context(|| format!("{e:#}"))?;
            warn(format!("{e:#}; using the cached {}", cached.display()));
            return load(&cached);
        }
    };
    let dir = cache.join(format!("{package}_{version}"));
    if !dir.join(COMPLETE).exists() {
        fetch(&package, &version, &dir)?;
    }
    load(&dir)
}

/// The package behind the metapackage, and its candidate version.
fn lookup() -> Result<(String, String)> {
    let found = lookup_once();
    if found.is_ok() || !cmd::is_root()? {
        return found;
    }
    // A fresh machine may not have the package lists yet.
    cmd::run(Command::new("apt-get").arg("update"))?;
    lookup_once()
}

fn lookup_once() -> Result<(String, String)> {
    let depends = apt_cache(&["depends", METAPACKAGE])?;
    let package = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends:"))
        .map(|name| name.trim().trim_start_matches('<').trim_end_matches('>'))
        .find(|name| name.starts_with("linux-image-"))
        .with_context(|| format!("`apt-cache depends {METAPACKAGE}` names no linux-image"))?
        .to_owned();
    let policy = apt_cache(&["policy", &package])?;
    let version = policy
        .lines()
        .find_map(|line| line.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .with_context(|| format!("`apt-cache policy {package}` has no candidate version"))?
        .to_owned();
    Ok((package, version))
}

fn apt_cache(args: &[&str]) -> Result<String> {
    let output = cmd::capture(Command::new("apt-cache").args(args))
        .context("cannot run apt-cache (vm-test needs Debian's apt)")?;
    if !output.status.success() {
        bail!(
            "apt-cache {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn newest_cached(cache: &Path) -> Result<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|dir| dir.join(COMPLETE).exists())
        .collect();
    entries.sort_by_key(|dir| {
        fs::metadata(dir.join(COMPLETE))
            .and_then(|m| m.modified())
            .ok()
    });
    entries
        .pop()
        .with_context(|| format!("no kernel cached in {} either", cache.display()))
}

/// Downloads the package and extracts what the VM needs into `dir`.
fn fetch(package: &str, version: &str, dir: &Path) -> Result<()> {
    say(format!("vm-test: fetching {package} {version}"));
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let download = dir.join("download");
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    // apt runs downloads as `_apt`, which cannot write to target/: download as ourselves.
    cmd::run(
        Command::new("apt-get")
            .current_dir(&download)
            .args(["-o", "APT::Sandbox::User=root", "download"])
            .arg(format!("{package}={version}")),
    )?;
    let deb = fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;

    let extracted = dir.join("extracted");
    fs::create_dir_all(&extracted)?;
    extract(&deb, &extracted)?;
    fs::remove_dir_all(&download)?;

    let boot = extracted.join("boot");
    let vmlinuz = fs::read_dir(&boot)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| file_name(path).starts_with("vmlinuz-"))
        .with_context(|| format!("no vmlinuz in {package}"))?;
    let release = file_name(&vmlinuz)["vmlinuz-".len()..].to_owned();
    fs::write(dir.join("release"), &release)?;
    fs::rename(boot.join(format!("config-{release}")), dir.join("config"))
        .with_context(|| format!("no config-{release} in {package}"))?;
    let modules = dir.join("modules");
    fs::create_dir_all(&modules)?;
    for module in MODULES {
        let found =
            find_file(&extracted, module)?.with_context(|| format!("no {module} in {package}"))?;
        fs::rename(&found, modules.join(module))?;
    }
    match uncompress(&vmlinuz, &dir.join("vmlinux")) {
        Ok(()) => {}
        Err(e) => {
            warn(format!(
                "{e:#}; booting the compressed kernel instead (slower under TCG)"
            ));
            fs::rename(&vmlinuz, dir.join("vmlinuz"))?;
        }
    }
    fs::remove_dir_all(&extracted)?;
    fs::write(dir.join(COMPLETE), format!("{package} {version}\n"))?;
    Ok(())
}

fn load(dir: &Path) -> Result<Kernel> {
    let read = |name: &str| {
        fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let complete = read(COMPLETE)?;
    let mut words = complete.split_whitespace();
    let (Some(package), Some(version)) = (words.next(), words.next()) else {
        bail!("{} is malformed", dir.join(COMPLETE).display());
    };
    let boot_image = ["vmlinux", "vmlinuz"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| format!("no kernel image in {}", dir.display()))?;
    Ok(Kernel {
        package: package.to_owned(),
        version: version.to_owned(),
        release: read("release")?.trim().to_owned(),
        boot_image,
        modules: MODULES
            .iter()
            .map(|m| dir.join("modules").join(m))
            .collect(),
        config: read("config")?,
    })
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x ...`: the kernel, its config and our modules only.
fn extract(deb: &Path, into: &Path) -> Result<()> {
    let mut dpkg = Command::new("dpkg-deb");
    dpkg.arg("--fsys-tarfile").arg(deb).stdout(Stdio::piped());
    let mut tar = Command::new("tar");
    tar.arg("-x")
        .arg("-C")
        .arg(into)
        .arg("--wildcards")
        .args(["./boot/vmlinuz-*", "./boot/config-*"])
        .args(MODULES.map(|module| format!("*/{module}")));
    say(format!("{} | {}", cmd::display(&dpkg), cmd::display(&tar)));
    let mut dpkg = dpkg.spawn().context("cannot run dpkg-deb")?;
    let tarball = dpkg.stdout.take().context("dpkg-deb's stdout")?;
    let tar_status = tar.stdin(tarball).status().context("cannot run tar")?;
    let dpkg_status = dpkg.wait().context("waiting for dpkg-deb")?;
    if !dpkg_status.success() || !tar_status.success() {
        bail!(
            "extracting {} failed: dpkg-deb {dpkg_status}, tar {tar_status}",
            deb.display()
        );
    }
    Ok(())
}

/// The ELF kernel inside a bzImage: its xz payload, decompressed (`xz` stops at the end of the
/// stream; what follows in the file is ignored). Tried at each xz header until one yields ELF.
fn uncompress(vmlinuz: &Path, vmlinux: &Path) -> Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    for offset in find_all(&image, XZ_MAGIC) {
        let mut xz = Command::new("xz")
            .args(["-dc", "--single-stream"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run xz")?;
        let mut stdin = xz.stdin.take().context("xz's stdin")?;
        let payload = image[offset..].to_vec();
        // Fed from a thread: xz writes while it reads.
        let feeder = thread::spawn(move || {
            let _ = stdin.write_all(&payload);
        });
        let output = xz.wait_with_output().context("waiting for xz")?;
        let _ = feeder.join();
        if output.status.success() && output.stdout.starts_with(b"\x7fELF") {
            fs::write(vmlinux, &output.stdout)
                .with_context(|| format!("writing {}", vmlinux.display()))?;
            return Ok(());
        }
    }
    bail!("no xz-compressed ELF kernel found in {}", vmlinuz.display())
}

fn find_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(move |(_, window)| *window == needle)
        .map(|(i, _)| i)
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// The first file named `name` under `dir`, depth first.
fn find_file(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name)? {
                return Ok(Some(found));
            }
        } else if file_name(&path) == name {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_expectation_follows_the_config() {
        let kernel = |config: &str| Kernel {
            package: String::new(),
            version: String::new(),
            release: String::new(),
            boot_image: PathBuf::new(),
            modules: Vec::new(),
            config: config.to_owned(),
        };
        let both = "CONFIG_KPROBES=y\nCONFIG_FTRACE_SYSCALLS=y\n";
        assert_eq!(kernel(both).expected_auto(), "tracepoint");
        let kprobes_only = "CONFIG_KPROBES=y\n# CONFIG_FTRACE_SYSCALLS is not set\n";
        assert_eq!(kernel(kprobes_only).expected_auto(), "kprobe");
    }

    #[test]
    fn finds_every_xz_header() {
        let mut image = vec![0u8; 10];
        image.extend_from_slice(XZ_MAGIC);
        image.extend_from_slice(b"payload");
        image.extend_from_slice(XZ_MAGIC);
        assert_eq!(find_all(&image, XZ_MAGIC).collect::<Vec<_>>(), [10, 23]);
    }
}
