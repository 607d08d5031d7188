//! Where a syscall's arguments are, for each backend.

/// The syscall's `n`th argument (0-based), as the raw register value.
pub trait SyscallArgs {
    fn arg(&self, n: usize) -> Option<u64>;
}
