//! Builds the eBPF object (`sockwatch-ebpf`) so the binary can embed it.
//!
//! The kernel programs need a compiler with a precompiled `core` for `bpfel-unknown-none`
//! (Debian's rustc-web, see shared/TOOLCHAIN.md) and bpf-linker; `cargo xtask setup` installs
//! both. The object is built once into `<target>/bpf`, shared by every profile and by clippy,
//! so tests and lints never rebuild it needlessly.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const EBPF_TARGET: &str = "bpfel-unknown-none";
const OBJECT_NAME: &str = "sockwatch.bpf.o";
/// The tests' fault injector (`sockwatch-ebpf/src/fault.rs`), built by the same build.
const FAULT_OBJECT_NAME: &str = "sockwatch-fault.bpf.o";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("sockwatch-tui lives in the workspace");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let object = out_dir.join(OBJECT_NAME);
    let fault_object = out_dir.join(FAULT_OBJECT_NAME);

    for input in [
        "sockwatch-ebpf/src",
        "sockwatch-ebpf/Cargo.toml",
        "sockwatch-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
    for var in [
        "SOCKWATCH_BPF_CARGO",
        "SOCKWATCH_BPF_RUSTC",
        "SOCKWATCH_BPF_OBJECT",
        "SOCKWATCH_BPF_OBJCOPY",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    // A prebuilt object (e.g. for a cross build) skips the eBPF build entirely. The fault
    // injector is taken from beside it when the same build left it there; otherwise the
    // tests that need it say so.
    if let Some(prebuilt) = env::var_os("SOCKWATCH_BPF_OBJECT") {
        std::fs::copy(&prebuilt, &object).unwrap_or_else(|e| {
            fail(&format!(
                "cannot copy SOCKWATCH_BPF_OBJECT {prebuilt:?}: {e}"
            ))
        });
        let beside = Path::new(&prebuilt).with_file_name("sockwatch-fault");
        if std::fs::copy(&beside, &fault_object).is_err() {
            std::fs::write(&fault_object, b"")
                .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", fault_object.display())));
        }
        return;
    }

    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("bpf");
    let cargo = tool("SOCKWATCH_BPF_CARGO", "/usr/bin/cargo");
    let rustc = tool("SOCKWATCH_BPF_RUSTC", "/usr/bin/rustc");

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--package",
            "sockwatch-ebpf",
            "--release",
            "--target",
            EBPF_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's wrappers (clippy-driver), flags and target must not leak in.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUSTC", &rustc)
        // aya-ebpf and our kernel programs use `asm_experimental_arch`; allow it for them only.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf,sockwatch")
        // BTF in the object lets the kernel check our types and lets bpftool show them.
        // -Dwarnings: the eBPF crate has no clippy run, so its warnings fail the build instead
        // (dependencies are capped by cargo and unaffected).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Dwarnings",
        );

    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", cargo.display())));
    if !status.success() {
        fail(&format!(
            "building the eBPF programs failed ({status}); run `cargo xtask setup` to install \
             the eBPF toolchain (Debian rustc-web, libstd-rust-web-dev-bpf, bpf-linker)"
        ));
    }
    let release = target_dir.join(EBPF_TARGET).join("release");
    for (built, to) in [("sockwatch", &object), ("sockwatch-fault", &fault_object)] {
        let built = release.join(built);
        std::fs::copy(&built, to)
            .unwrap_or_else(|e| fail(&format!("cannot copy {}: {e}", built.display())));
        strip_debug(to);
    }
}

/// Drops the DWARF the BTF was made from (1.5 of the object's 1.9 MB): nothing reads it once
/// linked (the kernel and bpftool read BTF), and loading the object embedded in the binary
/// touched 1.1 MB of it, resident for the whole run.
fn strip_debug(object: &Path) {
    let objcopy =
        env::var_os("SOCKWATCH_BPF_OBJCOPY").map_or_else(|| PathBuf::from(OBJCOPY), PathBuf::from);
    if !objcopy.exists() {
        println!(
            "cargo:warning={} not found: the eBPF object keeps its DWARF (1.5 MB)",
            objcopy.display()
        );
        return;
    }
    let status = Command::new(&objcopy)
        .arg("--strip-debug")
        .arg(object)
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", objcopy.display())));
    if !status.success() {
        fail(&format!(
            "{} --strip-debug {} failed",
            objcopy.display(),
            object.display()
        ));
    }
}

/// LLVM's objcopy, from the LLVM that `cargo xtask setup` installs for bpf-linker.
const OBJCOPY: &str = "/usr/lib/llvm-22/bin/llvm-objcopy";

/// The program named by `var`, or `default` when it exists; fails with a hint otherwise.
fn tool(var: &str, default: &str) -> PathBuf {
    if let Some(path) = env::var_os(var) {
        return PathBuf::from(path);
    }
    if !Path::new(default).exists() {
        fail(&format!(
            "{default} not found: the eBPF programs need Debian's rustc-web toolchain; \
             run `cargo xtask setup` (or set {var})"
        ));
    }
    PathBuf::from(default)
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
