//! The syscall tracepoint backend: `syscalls:sys_enter_<name>` / `sys_exit_<name>`, attached
//! by user space to the programs `enter_<name>` / `exit_<name>`.
//!
//! Field offsets are those of the raw syscall tracepoints on every kernel with
//! `CONFIG_FTRACE_SYSCALLS`: the arguments are 8-byte slots from offset 16, and the exit's
//! `ret` is at offset 16 (see `/sys/kernel/tracing/events/syscalls/*/format`).

use crate::{args::SyscallArgs, enter, exit::on_return, process};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext, EbpfContext};

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

/// The programs of the rows of `sockwatch_common::for_each_syscall!`: `enter_<name>` (not for
/// exit-only rows) calls the row's `enter` handler, `exit_<name>` hands the return value on by
/// the row's exit column.
macro_rules! tracepoint_programs {
    (@enter exit_only $name:ident $entry:tt) => {};
    (@enter $hook:ident $name:ident $entry:ident) => {
        paste::paste! {
            #[tracepoint]
            pub fn [<enter_ $name>](ctx: TracePointContext) -> u32 {
                enter::$entry(&ctx);
                0
            }
        }
    };
    ($($name:ident $hook:ident $entry:tt $exit:ident;)*) => {$(
        tracepoint_programs!(@enter $hook $name $entry);
        paste::paste! {
            #[tracepoint]
            pub fn [<exit_ $name>](ctx: TracePointContext) -> u32 {
                if let Some(ret) = ret(&ctx) {
                    on_return!($exit, ret);
                }
                0
            }
        }
    )*};
}

sockwatch_common::for_each_syscall!(tracepoint_programs);

/// `sched:sched_process_exit`, used by both backends (a static tracepoint, not a syscall one).
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    process::process_exit();
    0
}

/// `io_uring:io_uring_file_get`: io_uring resolves a request's fd (in the submitting process or
/// its io-wq workers). Bytes it moves bypass the syscalls: the syscall backends mark the socket
/// partial. The record's `fd` is at offset 32 on every kernel since 5.19
/// (`/sys/kernel/tracing/events/io_uring/io_uring_file_get/format`).
#[tracepoint]
pub fn io_uring_file_get(ctx: TracePointContext) -> u32 {
    const FD: usize = 32;
    // SAFETY: as in `field`; the verifier checks the offset against the record's size.
    let fd = unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(FD).cast::<i32>()) };
    if fd >= 0 {
        crate::state::mark_partial(crate::state::current().1, fd as u32);
    }
    0
}
