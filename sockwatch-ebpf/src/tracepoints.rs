//! The syscall tracepoint backend: `syscalls:sys_enter_<name>` / `sys_exit_<name>`, attached
//! by user space to the programs `enter_<name>` / `exit_<name>`.
//!
//! Field offsets are those of the raw syscall tracepoints on every kernel with
//! `CONFIG_FTRACE_SYSCALLS`: the arguments are 8-byte slots from offset 16, and the exit's
//! `ret` is at offset 16 (see `/sys/kernel/tracing/events/syscalls/*/format`).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext, EbpfContext};
use sockwatch_common::CallKind;

use crate::{args::SyscallArgs, enter, exit, process};

const FIRST_ARG: usize = 16;
const RET: usize = 16;

/// The 8-byte field at `offset` of the tracepoint's record.
#[inline(always)]
fn field(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: tracepoint programs may load from their context directly (no helper call: this
    // runs on every hooked syscall); the verifier checks the offset against the record's size
    // when the program is attached, and every caller reads only its syscall's own arguments.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<u64>()) }
}

impl SyscallArgs for TracePointContext {
    #[inline(always)]
    fn arg(&self, n: usize) -> Option<u64> {
        // Never `None`: a value that is defined on every path keeps older verifiers (6.1) from
        // rejecting the callers' combined checks of several arguments.
        Some(field(self, FIRST_ARG + 8 * n))
    }
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> Option<i64> {
    Some(field(ctx, RET) as i64)
}

/// One entry program and one exit program per syscall; `kind` is what the exit may find stashed.
macro_rules! syscall_tracepoints {
    ($($enter:ident, $exit:ident => $handler:path, $kind:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            $handler(&ctx);
            0
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            if let Some(ret) = ret(&ctx) {
                exit::syscall_exit(ret, $kind);
            }
            0
        }
    )*};
}

syscall_tracepoints! {
    enter_socket, exit_socket => enter::socket, CallKind::Socket;
    enter_connect, exit_connect => enter::connect, CallKind::Connect;
    enter_accept, exit_accept => enter::accept, CallKind::Accept;
    enter_accept4, exit_accept4 => enter::accept, CallKind::Accept;
    enter_write, exit_write => enter::send, CallKind::Send;
    enter_writev, exit_writev => enter::send, CallKind::Send;
    enter_sendto, exit_sendto => enter::send, CallKind::Send;
    enter_sendmsg, exit_sendmsg => enter::send, CallKind::Send;
    enter_sendmmsg, exit_sendmmsg => enter::sendmmsg, CallKind::SendMmsg;
    enter_sendfile64, exit_sendfile64 => enter::send, CallKind::Send;
    enter_read, exit_read => enter::recv, CallKind::Recv;
    enter_readv, exit_readv => enter::recv, CallKind::Recv;
    enter_recvfrom, exit_recvfrom => enter::recv, CallKind::Recv;
    enter_recvmsg, exit_recvmsg => enter::recv, CallKind::Recv;
    enter_recvmmsg, exit_recvmmsg => enter::recvmmsg, CallKind::RecvMmsg;
    enter_close, exit_close => enter::close, CallKind::Close;
    enter_close_range, exit_close_range => enter::close_range, CallKind::CloseRange;
    enter_dup2, exit_dup2 => enter::dup_onto, CallKind::DupOnto;
    enter_dup3, exit_dup3 => enter::dup_onto, CallKind::DupOnto;
}

#[tracepoint]
pub fn exit_execve(ctx: TracePointContext) -> u32 {
    if let Some(ret) = ret(&ctx) {
        process::exec_exit(ret);
    }
    0
}

#[tracepoint]
pub fn exit_execveat(ctx: TracePointContext) -> u32 {
    if let Some(ret) = ret(&ctx) {
        process::exec_exit(ret);
    }
    0
}

/// `sched:sched_process_exit`, used by both backends (a static tracepoint, not a syscall one).
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    process::process_exit();
    0
}
