//! sockwatch's kernel side: small, boring programs that follow the entry/exit pattern.
//!
//! At a syscall's entry the arguments are stashed in `INFLIGHT` (keyed by thread); at its
//! exit the stash is read back with the return value, the `TRACKED` map is updated in place,
//! and only socket lifecycle events (connect, close) go to user space through `EVENTS`.
//! Calls on fds we do not track cost one hash lookup at entry and nothing more.
#![no_std]
#![no_main]
// Inline asm on BPF (for the atomic add in lifecycle.rs) is still feature-gated.
#![feature(asm_experimental_arch)]

mod kprobes;
mod lifecycle;
mod maps;
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
