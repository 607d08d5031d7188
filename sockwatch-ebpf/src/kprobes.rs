//! The kprobe/kretprobe backend, for kernels with kprobes: the article's own method.
//!
//! User space attaches `kp_<name>` / `kret_<name>` to the architecture's syscall symbols
//! (`__x64_sys_connect`, ..., found like bcc's `get_syscall_fnname`). Since Linux 4.17 those
//! wrappers take one argument, a pointer to the user's saved registers, so the syscall's own
//! arguments must be read from that `pt_regs`; older kernels' `sys_*` symbols take the
//! arguments directly. User space tells which through the `SYSCALL_WRAPPER` global.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::bpf_probe_read_kernel,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sockwatch_common::CallKind;

use crate::{args::SyscallArgs, enter, exit, process};

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

macro_rules! syscall_kprobes {
    ($($enter:ident, $exit:ident => $handler:path, $kind:expr;)*) => {$(
        #[kprobe]
        pub fn $enter(ctx: ProbeContext) -> u32 {
            $handler(&ctx);
            0
        }

        #[kretprobe]
        pub fn $exit(ctx: RetProbeContext) -> u32 {
            exit::syscall_exit(ctx.ret::<i64>(), $kind);
            0
        }
    )*};
}

syscall_kprobes! {
    kp_socket, kret_socket => enter::socket, CallKind::Socket;
    kp_connect, kret_connect => enter::connect, CallKind::Connect;
    kp_accept, kret_accept => enter::accept, CallKind::Accept;
    kp_accept4, kret_accept4 => enter::accept, CallKind::Accept;
    kp_write, kret_write => enter::send, CallKind::Send;
    kp_writev, kret_writev => enter::send, CallKind::Send;
    kp_sendto, kret_sendto => enter::send, CallKind::Send;
    kp_sendmsg, kret_sendmsg => enter::send, CallKind::Send;
    kp_sendmmsg, kret_sendmmsg => enter::sendmmsg, CallKind::SendMmsg;
    kp_sendfile64, kret_sendfile64 => enter::send, CallKind::Send;
    kp_read, kret_read => enter::recv, CallKind::Recv;
    kp_readv, kret_readv => enter::recv, CallKind::Recv;
    kp_recvfrom, kret_recvfrom => enter::recv, CallKind::Recv;
    kp_recvmsg, kret_recvmsg => enter::recv, CallKind::Recv;
    kp_recvmmsg, kret_recvmmsg => enter::recvmmsg, CallKind::RecvMmsg;
    kp_close, kret_close => enter::close, CallKind::Close;
    kp_close_range, kret_close_range => enter::close_range, CallKind::CloseRange;
    kp_dup2, kret_dup2 => enter::dup_onto, CallKind::DupOnto;
    kp_dup3, kret_dup3 => enter::dup_onto, CallKind::DupOnto;
}

#[kretprobe]
pub fn kret_execve(ctx: RetProbeContext) -> u32 {
    process::exec_exit(ctx.ret::<i64>());
    0
}

#[kretprobe]
pub fn kret_execveat(ctx: RetProbeContext) -> u32 {
    process::exec_exit(ctx.ret::<i64>());
    0
}
