//! Every map the programs use. Names and value types come from `sockwatch-common`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use sockwatch_common::{Counter, InflightCall, SocketKey, TrackedSocket, COUNTER_COUNT};

/// Default sizes; user space overrides them at load time from its flags.
const TRACKED_DEFAULT: u32 = 65_536;
const INFLIGHT_DEFAULT: u32 = 16_384;
const EVENTS_DEFAULT_BYTES: u32 = 1 << 22;

#[map(name = "TRACKED")]
pub static TRACKED: HashMap<SocketKey, TrackedSocket> =
    HashMap::with_max_entries(TRACKED_DEFAULT, 0);

#[map(name = "INFLIGHT")]
pub static INFLIGHT: HashMap<u64, InflightCall> = HashMap::with_max_entries(INFLIGHT_DEFAULT, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_DEFAULT_BYTES, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Adds one to a per-CPU counter. Per-CPU, so no atomics are needed.
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it is valid
        // and only this CPU (with preemption disabled while we run) touches it.
        unsafe { *slot += 1 };
    }
}
