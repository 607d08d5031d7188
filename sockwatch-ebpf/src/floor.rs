//! The benchmark's floor: an empty program, for `cargo xtask bench` only.
//!
//! User space (`sockwatch-tui --attach-floor`, hidden) attaches this one program to every
//! tracepoint the tracepoint backend uses, so the benchmark can tell what the attach mechanism
//! costs a traced program by itself (the kernel entering a BPF program on each hooked syscall)
//! from what sockwatch's own programs add on top. sockwatch never attaches it otherwise.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn floor(_ctx: TracePointContext) -> u32 {
    0
}
