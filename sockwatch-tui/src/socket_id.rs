//! The identity of one socket's lifetime.

use sockwatch_common::SocketKey;

/// A (pid, fd) names a socket only until the fd is closed and reused; adding the connect time
/// names one socket for good, so a closed socket and its fd's next owner are never confused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub key: SocketKey,
    /// Kernel monotonic time (ns) of its connect (or accept, or adoption at start).
    pub connect_ns: u64,
}

impl SocketId {
    pub fn new(key: SocketKey, connect_ns: u64) -> Self {
        Self { key, connect_ns }
    }
}
