//! The guest's initramfs: busybox, the generated init, the static test binaries, the package's
//! binaries (sockwatch-tui, the tests' helpers) at the paths the tests were compiled with, the
//! kernel modules `ss` needs, and the host tools the tests run ([`GUEST_TOOLS`]) with the shared
//! libraries `ldd` finds for them. The host is Debian bookworm like the guest's kernel, so its
//! binaries run there unchanged.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::{guest, Built};
use crate::cmd::{self, say};

/// Host tools the tests run, and what for: copied into the guest with their libraries
/// (`cargo xtask setup` installs each). Anything else a test runs must be a busybox applet.
pub const GUEST_TOOLS: &[(&str, &str)] = &[
    ("ss", "the kernel's own byte counts (`ss -tin`)"),
    ("curl", "a real client (kernel_lifecycle)"),
    ("setpriv", "running without privileges (cli_errors)"),
    (
        "bpftool",
        "editing the kernel map as a missed event would (kernel_accounting)",
    ),
];

/// Builds `<work>/initramfs.gz` from a fresh `<work>/root` and returns its path.
pub fn build(work: &Path, init: &str, built: &Built, modules: &[PathBuf]) -> Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;

    let busybox = cmd::find_in_path("busybox").context("busybox is not installed")?;
    ensure_static(&busybox).context("install busybox-static (`cargo xtask setup`)")?;
    copy(&busybox, &root, Path::new("/bin/busybox"))?;
    write_executable(&root.join("init"), init)?;
    for (name, path) in &built.tests {
        copy(path, &root, &Path::new(guest::TESTS_DIR).join(name))?;
    }
    for bin in &built.bins {
        copy(Path::new(bin), &root, Path::new(bin))?;
    }
    for module in modules {
        let name = module.file_name().context("module without a name")?;
        copy(module, &root, &Path::new(guest::MODULES_DIR).join(name))?;
    }
    let mut files = BTreeSet::new();
    for (tool, _) in GUEST_TOOLS {
        let path = cmd::find_in_path(tool)
            .with_context(|| format!("{tool} is not installed: run `cargo xtask setup`"))?;
        files.extend(shared_libraries(&path)?);
        files.insert(path);
    }
    for file in &files {
        copy(file, &root, file)?;
    }

    let initramfs = work.join("initramfs.gz");
    pack(&root, &initramfs)?;
    let size = fs::metadata(&initramfs)?.len();
    say(format!(
        "vm-test: {} ({:.1} MiB)",
        initramfs.display(),
        size as f64 / f64::from(1 << 20)
    ));
    Ok(initramfs)
}

/// Fails unless `path` is an ELF executable without an interpreter (static or static-pie):
/// nothing else runs in a guest without the host's libraries.
pub fn ensure_static(path: &Path) -> Result<()> {
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match interpreter(&elf) {
        Some(false) => Ok(()),
        Some(true) => bail!("{} is dynamically linked", path.display()),
        None => bail!("{} is not a 64-bit ELF executable", path.display()),
    }
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header; `None` when the
/// bytes are not such a file.
fn interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut found = false;
    for i in 0..phnum {
        found |= u32_at(phoff + i * phentsize)? == PT_INTERP;
    }
    Some(found)
}

/// The libraries (and the dynamic loader) that `ldd` lists for `binary`.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = cmd::capture(Command::new("ldd").arg(binary)).context("cannot run ldd")?;
    if !output.status.success() {
        // "not a dynamic executable": nothing to copy.
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&output.stdout)))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2
/// (0x...)` give a path; `linux-vdso.so.1 (0x...)` is the kernel's and gives none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = line.split_once("=>").map_or(line, |(_, path)| path.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `from` (following symlinks) to the absolute guest path `to` under `root`.
fn copy(from: &Path, root: &Path, to: &Path) -> Result<()> {
    let dest = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, &dest)
        .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    Ok(())
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `busybox cpio -o -H newc < list | gzip -1 > initramfs`, with every directory and file under
/// `root` in the list (directories first, so their modes are set).
fn pack(root: &Path, initramfs: &Path) -> Result<()> {
    let mut list = String::new();
    walk(root, Path::new("."), &mut list)?;
    let output =
        fs::File::create(initramfs).with_context(|| format!("creating {}", initramfs.display()))?;
    let mut cpio = Command::new("busybox");
    cpio.args(["cpio", "-o", "-H", "newc"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut gzip = Command::new("gzip");
    gzip.arg("-1").stdout(output);
    say(format!(
        "(cd {} && {} | {} > {})",
        root.display(),
        cmd::display(&cpio),
        cmd::display(&gzip),
        initramfs.display()
    ));
    let mut cpio = cpio.spawn().context("cannot run busybox cpio")?;
    let archive = cpio.stdout.take().context("cpio's stdout")?;
    let mut gzip = gzip.stdin(archive).spawn().context("cannot run gzip")?;
    let mut names = cpio.stdin.take().context("cpio's stdin")?;
    names.write_all(list.as_bytes())?;
    drop(names);
    let cpio_status = cpio.wait()?;
    let gzip_status = gzip.wait()?;
    if !cpio_status.success() || !gzip_status.success() {
        bail!("packing the initramfs failed: cpio {cpio_status}, gzip {gzip_status}");
    }
    Ok(())
}

/// Appends `relative` and everything below it (as seen from `root`) to `list`, one per line.
fn walk(root: &Path, relative: &Path, list: &mut String) -> Result<()> {
    let dir = root.join(relative);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for name in entries {
        let path = relative.join(name);
        list.push_str(&path.to_string_lossy());
        list.push('\n');
        if root.join(&path).is_dir() {
            walk(root, &path, list)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibcap-ng.so.0 => /lib/x86_64-linux-gnu/libcap-ng.so.0 (0x00007f2e)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f2e)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libcap-ng.so.0"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        // The running test binary is dynamic (the host's default); a header-only ELF with no
        // program headers has no interpreter.
        let me = fs::read(std::env::current_exe().expect("own path")).expect("own bytes");
        assert_eq!(interpreter(&me), Some(true));
        let mut bare = b"\x7fELF\x02\x01".to_vec();
        bare.resize(64, 0);
        assert_eq!(interpreter(&bare), Some(false));
        assert_eq!(interpreter(b"#!/bin/sh\n"), None);
    }
}
