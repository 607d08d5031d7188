//! The first stage: the kernel as user space sees it. `loader` loads and attaches the eBPF
//! programs and reads their maps; `ring` takes the ring buffer's records, which `decode` turns,
//! with map entries, into [`crate::socket::Socket`]s; `tracker` squares them with the map and
//! /proc (`procfs`) into the [`tracker::Change`]s every output consumes; `support` says what
//! this kernel offers, `btf` its struct layout (for the programs' walk from an fd to its
//! socket); `diag` reads TCP health from the kernel's socket diagnostics (what `ss -ti` reads).
//!
//! Nothing here imports the later stages (`model`, `view`).

pub mod btf;
pub mod bulk;
pub mod by_socket;
pub mod decode;
pub mod diag;
pub mod loader;
pub mod procfs;
pub mod ring;
pub mod support;
pub mod tracker;
