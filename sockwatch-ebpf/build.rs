//! Tells the kprobe backend which architecture's `pt_regs` layout to read syscall arguments
//! from: the host's, since the programs run on the kernel they are built beside.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\"))");
    println!("cargo:rerun-if-env-changed=HOST");
    let host = std::env::var("HOST").unwrap_or_default();
    let arch = host.split('-').next().unwrap_or_default();
    println!("cargo:rustc-cfg=bpf_target_arch=\"{arch}\"");
}
