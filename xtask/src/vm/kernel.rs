//! Debian bookworm's kernels, fetched with `apt-get download` and cached by version.
//!
//! Each series vm-test boots is named by a metapackage (`linux-image-amd64` for bookworm's own
//! 6.1, `linux-image-6.12-amd64` for the 6.12 that bookworm-security carries) that depends on
//! the real package (`linux-image-6.1.0-NN-amd64`), whose name changes with each security
//! update, so it is looked up on every run. Only what the VM needs is kept: the uncompressed
//! `vmlinux` (booting it skips the decompressor, slow under TCG), the kernel's config, and the
//! two modules `ss` needs (`inet_diag`, `tcp_diag`) from the same package, uncompressed; the
//! .deb is deleted once extracted.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{bail, ensure, Context, Result};

use crate::cmd::{self, say, warn};

/// Modules the guest loads, in this order (`tcp_diag` needs `inet_diag`): `ss` and sockwatch's
/// TCP health read sockets through inet_diag netlink; the tests' fault injector is a tc
/// classifier on a `clsact` qdisc (`sch_ingress`, `cls_bpf`). All modules in Debian.
const MODULES: [&str; 4] = [
    "inet_diag.ko",
    "tcp_diag.ko",
    "sch_ingress.ko",
    "cls_bpf.ko",
];
/// Written last into a cache entry: an entry without it is incomplete and rebuilt.
const COMPLETE: &str = "complete";
/// The stream headers a bzImage's payload may start with (Debian: xz for 6.1, zstd for 6.12).
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// One kernel series vm-test boots.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// `6.1`: the release must start with it, so the table's rows say what ran.
    pub series: &'static str,
    /// The bookworm metapackage that depends on the series' current kernel package.
    pub metapackage: &'static str,
}

pub struct Kernel {
    /// `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// `6.1.192-2`.
    pub version: String,
    /// `6.1.0-56-amd64`, as `uname -r` says.
    pub release: String,
    /// `vmlinux` (or `vmlinuz` when it could not be uncompressed).
    pub boot_image: PathBuf,
    /// Uncompressed, in [`MODULES`]' order.
    pub modules: Vec<PathBuf>,
    config: String,
}

impl Kernel {
    /// Whether the kernel's config sets `option` to `y`.
    pub fn has(&self, option: &str) -> bool {
        self.config
            .lines()
            .any(|line| line.strip_prefix(option) == Some("=y"))
    }

    /// `(major, minor)` of the release.
    pub fn version(&self) -> Option<(u32, u32)> {
        let mut numbers = self
            .release
            .split(|c: char| !c.is_ascii_digit())
            .map(str::parse);
        Some((numbers.next()?.ok()?, numbers.next()?.ok()?))
    }

    #[cfg(test)]
    pub fn fake(release: &str, config: &str) -> Self {
        Self {
            package: String::new(),
            version: String::new(),
            release: release.to_owned(),
            boot_image: PathBuf::new(),
            modules: Vec::new(),
            config: config.to_owned(),
        }
    }
}

/// The series' current kernel, from the cache under `cache` or freshly downloaded there.
pub fn current(source: Source, cache: &Path) -> Result<Kernel> {
    // One directory per series, so the offline fallback takes a kernel of the right one.
    let cache = cache.join(source.metapackage);
    let kernel = match lookup(source.metapackage) {
        Ok((package, version)) => {
            let dir = cache.join(format!("{package}_{version}"));
            if !is_complete(&dir) {
                fetch(&package, &version, &dir)?;
            }
            load(&dir)?
        }
        Err(e) => {
            // Offline, or no apt lists: the newest cached kernel still proves the backends.
            let cached = newest_cached(&cache).with_context(|| format!("{e:#}"))?;
            warn(format!("{e:#}; using the cached {}", cached.display()));
            load(&cached)?
        }
    };
    let in_series = kernel
        .release
        .strip_prefix(source.series)
        .is_some_and(|rest| rest.starts_with(['.', '-', '+']));
    ensure!(
        in_series,
        "{} now points at {} ({}), not a {} kernel: update KERNELS in xtask/src/vm.rs",
        source.metapackage,
        kernel.package,
        kernel.release,
        source.series
    );
    Ok(kernel)
}

/// The package behind `metapackage`, and its candidate version.
fn lookup(metapackage: &str) -> Result<(String, String)> {
    let found = lookup_once(metapackage);
    if found.is_ok() || !cmd::is_root()? {
        return found;
    }
    // A fresh machine may not have the package lists yet.
    cmd::run(Command::new("apt-get").arg("update"))?;
    lookup_once(metapackage)
}

fn lookup_once(metapackage: &str) -> Result<(String, String)> {
    let depends = apt_cache(&["depends", metapackage])?;
    let package = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends:"))
        .map(|name| name.trim().trim_start_matches('<').trim_end_matches('>'))
        .find(|name| name.starts_with("linux-image-"))
        .with_context(|| format!("`apt-cache depends {metapackage}` names no linux-image"))?
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
        .filter(|dir| is_complete(dir))
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

/// A cache entry finished extracting, with every module the guest now loads (an entry made
/// when [`MODULES`] was shorter is fetched again).
fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE).exists()
        && MODULES
            .iter()
            .all(|module| dir.join("modules").join(module).is_file())
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
        let found = find_module(&extracted, module)?
            .with_context(|| format!("no {module} (compressed or not) in {package}"))?;
        install_module(&found, &modules.join(module))?;
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
        // `inet_diag.ko`, or `inet_diag.ko.xz` where Debian compresses modules (6.12).
        .args(MODULES.map(|module| format!("*/{module}*")));
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

/// The ELF kernel inside a bzImage: its payload ([`payload`]), decompressed with the tool its
/// stream header names, checked against the size the kernel's build appends to the payload
/// (`size_append` in scripts/Makefile.lib: 4 bytes, little endian, after the stream).
fn uncompress(vmlinuz: &Path, vmlinux: &Path) -> Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let payload = payload(&image).with_context(|| format!("in {}", vmlinuz.display()))?;
    let (stream, size) = payload
        .split_last_chunk::<4>()
        .context("the bzImage payload is too short")?;
    let size = usize::try_from(u32::from_le_bytes(*size))?;
    let tool: &[&str] = if stream.starts_with(XZ_MAGIC) {
        &["xz", "-dc", "--single-stream"]
    } else if stream.starts_with(ZSTD_MAGIC) {
        &["zstd", "-dc"]
    } else {
        bail!(
            "{}: the payload is neither xz nor zstd (starts with {:02x?})",
            vmlinuz.display(),
            &stream[..stream.len().min(6)]
        );
    };
    let elf = decompress(tool, stream.to_vec())?;
    ensure!(
        elf.starts_with(b"\x7fELF") && elf.len() == size,
        "`{}` on {} gave {} bytes{}, the payload says {size}",
        tool.join(" "),
        vmlinuz.display(),
        elf.len(),
        if elf.starts_with(b"\x7fELF") {
            ""
        } else {
            " (not ELF)"
        }
    );
    fs::write(vmlinux, &elf).with_context(|| format!("writing {}", vmlinux.display()))
}

/// The compressed kernel in a bzImage, where the x86 boot protocol (2.08 and later) puts it:
/// `payload_offset` and `payload_length` in the setup header, counted from the protected-mode
/// code, which follows the boot sector and `setup_sects` sectors of real-mode setup.
fn payload(image: &[u8]) -> Result<&[u8]> {
    let u16_at = |at: usize| {
        image
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        image
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    ensure!(
        image.get(0x202..0x206) == Some(b"HdrS"),
        "not a bzImage: no `HdrS` setup header"
    );
    let protocol = u16_at(0x206).context("truncated setup header")?;
    ensure!(
        protocol >= 0x208,
        "boot protocol {protocol:#x} has no payload fields (2.08 added them)"
    );
    // 0 means 4, for old bootloaders' sake.
    let setup_sects = match image.get(0x1f1).copied().context("truncated boot sector")? {
        0 => 4,
        n => usize::from(n),
    };
    let offset = usize::try_from(u32_at(0x248).context("truncated setup header")?)?;
    let length = usize::try_from(u32_at(0x24c).context("truncated setup header")?)?;
    let start = (setup_sects + 1) * 512 + offset;
    image
        .get(start..start + length)
        .with_context(|| format!("the payload ({length} bytes at {start}) is past the end"))
}

/// `tool` (xz, zstd: reads stdin, writes stdout) over `input`.
fn decompress(tool: &[&str], input: Vec<u8>) -> Result<Vec<u8>> {
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", tool[0]))?;
    let mut stdin = child.stdin.take().context("the decompressor's stdin")?;
    // Fed from a thread: the tool writes while it reads.
    let feeder = thread::spawn(move || stdin.write_all(&input));
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", tool[0]))?;
    // A write error is the tool's exit showing through (a broken pipe): its status says why.
    let _ = feeder.join();
    if !output.status.success() {
        bail!(
            "`{}` failed with {}: {}",
            tool.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// `module` under `dir`, as is or compressed (`.ko.xz`, `.ko.zst`).
fn find_module(dir: &Path, module: &str) -> Result<Option<PathBuf>> {
    for name in [
        module.to_owned(),
        format!("{module}.xz"),
        format!("{module}.zst"),
    ] {
        if let Some(found) = find_file(dir, &name)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Moves a module to `to`, decompressing it on the way: busybox's `insmod` passes the file to
/// the kernel as it is, and hands compressed ones to no decompressor.
fn install_module(from: &Path, to: &Path) -> Result<()> {
    let tool: &[&str] = match from.extension().and_then(|ext| ext.to_str()) {
        Some("xz") => &["xz", "-dc"],
        Some("zst") => &["zstd", "-dc"],
        _ => return fs::rename(from, to).with_context(|| format!("moving {}", from.display())),
    };
    let compressed = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let module = decompress(tool, compressed)?;
    ensure!(
        module.starts_with(b"\x7fELF"),
        "{} did not decompress to an ELF module",
        from.display()
    );
    fs::write(to, module).with_context(|| format!("writing {}", to.display()))
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
    fn config_and_version_are_read() {
        let kernel = Kernel::fake(
            "6.12.117+deb12-amd64",
            "CONFIG_KPROBES=y\n# CONFIG_FTRACE_SYSCALLS is not set\nCONFIG_KPROBES_ON_FTRACE=y\n",
        );
        assert!(kernel.has("CONFIG_KPROBES"));
        assert!(!kernel.has("CONFIG_FTRACE_SYSCALLS"));
        assert_eq!(kernel.version(), Some((6, 12)));
        assert_eq!(Kernel::fake("6.1.0-57-amd64", "").version(), Some((6, 1)));
        assert_eq!(Kernel::fake("", "").version(), None);
    }

    /// A bzImage as the boot protocol lays it out: boot sector and `setup_sects` sectors, then
    /// `offset` bytes of decompressor before the payload (`stream` plus its size).
    fn bz_image(stream: &[u8], size: u32) -> Vec<u8> {
        let (setup_sects, offset) = (3u8, 100usize);
        let mut image = vec![0u8; (usize::from(setup_sects) + 1) * 512 + offset];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        let length = u32::try_from(stream.len() + 4).expect("small");
        image[0x248..0x24c].copy_from_slice(&u32::try_from(offset).expect("small").to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&length.to_le_bytes());
        image.extend_from_slice(stream);
        image.extend_from_slice(&size.to_le_bytes());
        image.extend_from_slice(b"trailing data the decompressor must not read");
        image
    }

    #[test]
    fn the_payload_is_where_the_setup_header_says() {
        let image = bz_image(b"stream", 7);
        assert_eq!(payload(&image).expect("payload"), b"stream\x07\0\0\0");
        assert!(payload(&image[..600]).is_err());
        assert!(payload(b"not a kernel").is_err());
    }

    #[test]
    fn xz_and_zstd_kernels_are_uncompressed_and_checked() {
        let elf = b"\x7fELF and the rest of a kernel".to_vec();
        let size = u32::try_from(elf.len()).expect("small");
        let dir = std::env::temp_dir().join(format!("xtask-uncompress-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        for tool in [["xz", "-c"], ["zstd", "-c"]] {
            let stream = decompress(&tool, elf.clone()).expect("compressing");
            let (vmlinuz, vmlinux) = (dir.join("vmlinuz"), dir.join("vmlinux"));
            fs::write(&vmlinuz, bz_image(&stream, size)).expect("writing");
            uncompress(&vmlinuz, &vmlinux).expect("uncompressing");
            assert_eq!(fs::read(&vmlinux).expect("reading"), elf, "{tool:?}");
            // A size that does not match is caught.
            fs::write(&vmlinuz, bz_image(&stream, size + 1)).expect("writing");
            assert!(uncompress(&vmlinuz, &vmlinux).is_err(), "{tool:?}");
        }
        fs::remove_dir_all(&dir).expect("cleaning up");
    }
}
