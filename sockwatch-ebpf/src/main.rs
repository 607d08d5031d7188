//! sockwatch's kernel side: small, boring programs that follow the entry/exit pattern.
//!
//! At a syscall's entry the arguments are stashed in `INFLIGHT` (keyed by thread); at its
//! exit the stash is read back with the return value, the `TRACKED` map is updated in place,
//! and only socket lifecycle events (connect, accept, close, and process exit/exec hints) go to
//! user space through `EVENTS`. Calls on fds we do not track cost one hash lookup at entry.
//!
//! The two syscall backends (`tracepoints`, `kprobes`) only extract arguments and return
//! values; what to do with them lives once, in `enter` and `exit`, so both reach the same
//! numbers. The socket backend (`socket_layer`, `socket_lifecycle`) hooks no syscall at all:
//! it counts and follows sockets where the kernel handles them.
#![no_std]
#![no_main]
// Inline asm on BPF (for the atomic add in state.rs, the compare-and-swap in hot.rs) is still
// feature-gated.
#![feature(asm_experimental_arch)]

mod args;
mod enter;
mod exit;
mod fate;
mod hot;
mod identity;
mod kprobes;
mod maps;
mod process;
mod socket_layer;
mod socket_lifecycle;
mod state;
mod tracepoints;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this, so it is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
