//! The syscall tracepoint backend: `syscalls:sys_enter_*` / `sys_exit_*`.
//!
//! Field offsets are those of the raw syscall tracepoints on every kernel with
//! `CONFIG_FTRACE_SYSCALLS`: the arguments are 8-byte slots from offset 16, and the exit's
//! `ret` is at offset 16 (see `/sys/kernel/tracing/events/syscalls/*/format`).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::lifecycle;

const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;

#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> Option<u64> {
    // SAFETY: the offsets are inside the syscall tracepoint's record (see the module comment);
    // read_at uses bpf_probe_read_kernel, so a bad offset yields an error, not a fault.
    unsafe { ctx.read_at::<u64>(offset) }.ok()
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> Option<i64> {
    arg(ctx, RET).map(|v| v as i64)
}

#[tracepoint]
pub fn enter_connect(ctx: TracePointContext) -> u32 {
    if let (Some(fd), Some(addr)) = (arg(&ctx, ARG0), arg(&ctx, ARG1)) {
        lifecycle::connect_enter(fd, addr);
    }
    0
}

#[tracepoint]
pub fn exit_connect(ctx: TracePointContext) -> u32 {
    if let Some(ret) = ret(&ctx) {
        lifecycle::connect_exit(ret);
    }
    0
}

#[tracepoint]
pub fn enter_sendto(ctx: TracePointContext) -> u32 {
    if let Some(fd) = arg(&ctx, ARG0) {
        lifecycle::send_enter(fd);
    }
    0
}

#[tracepoint]
pub fn exit_sendto(ctx: TracePointContext) -> u32 {
    if let Some(ret) = ret(&ctx) {
        lifecycle::send_exit(ret);
    }
    0
}

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    if let Some(fd) = arg(&ctx, ARG0) {
        lifecycle::close_enter(fd);
    }
    0
}

#[tracepoint]
pub fn exit_close(ctx: TracePointContext) -> u32 {
    if let Some(ret) = ret(&ctx) {
        lifecycle::close_exit(ret);
    }
    0
}
