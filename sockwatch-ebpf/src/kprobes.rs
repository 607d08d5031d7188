//! The kprobe/kretprobe backend, for kernels with kprobes: the article's own method.
//!
//! User space attaches these to the architecture's syscall symbols (`__x64_sys_connect`, ...,
//! found like bcc's `get_syscall_fnname`). Since Linux 4.17 those wrappers take one argument,
//! a pointer to the user's saved registers, so the syscall's own arguments must be read from
//! that `pt_regs`; older kernels' `sys_*` symbols take the arguments directly. User space
//! tells which through the `SYSCALL_WRAPPER` global.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::bpf_probe_read_kernel,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::lifecycle;

/// Set by user space at load time (1: arguments are behind a `pt_regs *`).
#[unsafe(no_mangle)]
static SYSCALL_WRAPPER: u32 = 1;

/// The syscall's `n`th argument (0-based, at most 1 here), wherever this kernel keeps it.
#[inline(always)]
fn syscall_arg(ctx: &ProbeContext, n: usize) -> Option<u64> {
    // SAFETY: a volatile read of our own read-only global, so the value user space set at
    // load time is used rather than the compile-time constant.
    let wrapped = unsafe { core::ptr::read_volatile(&SYSCALL_WRAPPER) } != 0;
    if !wrapped {
        return ctx.arg::<u64>(n);
    }
    let regs: *const pt_regs = ctx.arg(0)?;
    user_reg(regs, n)
}

#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn user_reg(regs: *const pt_regs, n: usize) -> Option<u64> {
    // The x86_64 syscall ABI passes arguments in rdi, rsi, rdx, r10, r8, r9.
    // SAFETY: `regs` is the kernel's pointer to the task's saved user registers; the read goes
    // through bpf_probe_read_kernel, which fails cleanly instead of faulting.
    let value = unsafe {
        match n {
            0 => bpf_probe_read_kernel(&raw const (*regs).rdi),
            1 => bpf_probe_read_kernel(&raw const (*regs).rsi),
            _ => return None,
        }
    };
    value.ok()
}

#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn user_reg(regs: *const pt_regs, n: usize) -> Option<u64> {
    // arm64 passes syscall arguments in x0..x5, saved at the start of `regs`.
    if n > 5 {
        return None;
    }
    // SAFETY: as above; the index is bounded.
    unsafe { bpf_probe_read_kernel(&raw const (*regs).regs[n]) }.ok()
}

#[kprobe]
pub fn kp_connect(ctx: ProbeContext) -> u32 {
    if let (Some(fd), Some(addr)) = (syscall_arg(&ctx, 0), syscall_arg(&ctx, 1)) {
        lifecycle::connect_enter(fd, addr);
    }
    0
}

#[kretprobe]
pub fn kret_connect(ctx: RetProbeContext) -> u32 {
    lifecycle::connect_exit(ctx.ret::<i64>());
    0
}

#[kprobe]
pub fn kp_sendto(ctx: ProbeContext) -> u32 {
    if let Some(fd) = syscall_arg(&ctx, 0) {
        lifecycle::send_enter(fd);
    }
    0
}

#[kretprobe]
pub fn kret_sendto(ctx: RetProbeContext) -> u32 {
    lifecycle::send_exit(ctx.ret::<i64>());
    0
}

#[kprobe]
pub fn kp_close(ctx: ProbeContext) -> u32 {
    if let Some(fd) = syscall_arg(&ctx, 0) {
        lifecycle::close_enter(fd);
    }
    0
}

#[kretprobe]
pub fn kret_close(ctx: RetProbeContext) -> u32 {
    lifecycle::close_exit(ctx.ret::<i64>());
    0
}
