//! The kprobe/kretprobe backend, for kernels with kprobes: the article's own method.
//!
//! User space attaches `kp_<name>` / `kret_<name>` to the architecture's syscall symbols
//! (`__x64_sys_connect`, ..., found like bcc's `get_syscall_fnname`). Since Linux 4.17 those
//! wrappers take one argument, a pointer to the user's saved registers, so the syscall's own
//! arguments must be read from that `pt_regs`; older kernels' `sys_*` symbols take the
//! arguments directly. User space tells which through the `SYSCALL_WRAPPER` global.

use crate::{args::SyscallArgs, enter, exit::on_return};
use aya_ebpf::{
    bindings::pt_regs,
    helpers::bpf_probe_read_kernel,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};

/// Set by user space at load time (1: arguments are behind a `pt_regs *`).
#[unsafe(no_mangle)]
static SYSCALL_WRAPPER: u32 = 1;

impl SyscallArgs for ProbeContext {
    #[inline(always)]
    fn arg(&self, n: usize) -> Option<u64> {
        // SAFETY: a volatile read of our own read-only global, so the value user space set at
        // load time is used rather than the compile-time constant.
        let wrapped = unsafe { core::ptr::read_volatile(&SYSCALL_WRAPPER) } != 0;
        if !wrapped {
            return ProbeContext::arg::<u64>(self, n);
        }
        let regs: *const pt_regs = ProbeContext::arg(self, 0)?;
        user_reg(regs, n)
    }
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
            2 => bpf_probe_read_kernel(&raw const (*regs).rdx),
            3 => bpf_probe_read_kernel(&raw const (*regs).r10),
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

/// The programs of the rows of `sockwatch_common::for_each_syscall!`: the kprobe `kp_<name>`
/// (not for exit-only rows) calls the row's `enter` handler, the kretprobe `kret_<name>` hands
/// the return value on by the row's exit column.
macro_rules! kprobe_programs {
    (@enter exit_only $name:ident $entry:tt) => {};
    (@enter $hook:ident $name:ident $entry:ident) => {
        paste::paste! {
            #[kprobe]
            pub fn [<kp_ $name>](ctx: ProbeContext) -> u32 {
                enter::$entry(&ctx);
                0
            }
        }
    };
    ($($name:ident $hook:ident $entry:tt $exit:ident;)*) => {$(
        kprobe_programs!(@enter $hook $name $entry);
        paste::paste! {
            #[kretprobe]
            pub fn [<kret_ $name>](ctx: RetProbeContext) -> u32 {
                on_return!($exit, ctx.ret::<i64>());
                0
            }
        }
    )*};
}

sockwatch_common::for_each_syscall!(kprobe_programs);
