//! The socket backend's hot counters (`SK_HOT`): a tracked socket's byte counts in an array
//! slot found from its `struct sock *` by arithmetic. The socket layer's hooks run on every
//! message of every socket; a hash-map lookup there was most of what counting cost (on this
//! kind of machine each helper call pays for the kernel's return-thunk mitigations), while an
//! array lookup is inlined by the verifier. A socket may use two slots (`hot_slot` and the one
//! beside it, in the same cache line); when both are taken its counts stay in `SK_BYTES`.
//!
//! A slot is claimed when the socket starts being tracked and freed when its `SK_BYTES` entry
//! goes (its release, a failed connect; user space frees those it ends itself).

use sockwatch_common::{HotCounts, SkBytes};

use crate::{
    maps::{SK_HOT, SK_SPILL},
    state::atomic_add,
};

/// Set by user space at load time: half `SK_HOT`'s size.
#[unsafe(no_mangle)]
static HOT_PAIRS: u32 = 1;

/// The first of the two `SK_HOT` slots socket `sk` may use (the other is this one `^ 1`, in
/// the same cache line).
#[inline(always)]
fn hot_slot(sk: u64) -> u32 {
    sockwatch_common::hot_slot(sk, hot_pairs())
}

#[inline(always)]
fn hot_pairs() -> u32 {
    // SAFETY: a volatile read of our own read-only global, set by user space at load time.
    unsafe { core::ptr::read_volatile(&raw const HOT_PAIRS) }
}

/// Says that socket `sk` counted bytes in `SK_BYTES` (it has no slot, or raced its claim): its
/// pair's generation moves, so user space reads its `SK_BYTES` counters again. Atomic: a lost
/// raise could leave new bytes unread.
#[inline(always)]
pub fn spilled(sk: u64) {
    if let Some(generation) = SK_SPILL.get_ptr_mut(sockwatch_common::hot_pair(sk, hot_pairs())) {
        // SAFETY: a valid map value pointer, an aligned u64.
        unsafe { atomic_add(generation, 1) };
    }
}

/// The slot holding `sk`'s counters, if it has one.
#[inline(always)]
pub fn find(sk: u64) -> Option<*mut HotCounts> {
    find_at(sk).map(|(_, slot)| slot)
}

/// [`find`], with the slot's index.
#[inline(always)]
fn find_at(sk: u64) -> Option<(u32, *mut HotCounts)> {
    let first = hot_slot(sk);
    let owned = |slot: *mut HotCounts| {
        // SAFETY: a valid map value pointer; an aligned u64 read whole.
        unsafe { core::ptr::read_volatile(&raw const (*slot).sk) == sk }
    };
    let slot = SK_HOT.get_ptr_mut(first)?;
    if owned(slot) {
        return Some((first, slot));
    }
    let slot = SK_HOT.get_ptr_mut(first ^ 1)?;
    owned(slot).then_some((first ^ 1, slot))
}

/// Whether a message of process `pid` on the socket of `slot` needs nothing but counting: the
/// row shows this process and nothing is waiting to be reported.
///
/// # Safety
/// `slot` must be a valid `SK_HOT` value pointer.
#[inline(always)]
pub unsafe fn only_count(slot: *const HotCounts, pid: u32) -> bool {
    // SAFETY: per the caller; aligned u32s read whole.
    unsafe {
        core::ptr::read_volatile(&raw const (*slot).pid) == pid
            && core::ptr::read_volatile(&raw const (*slot).slow) == 0
    }
}

/// Adds `len` bytes moved one way to a socket's counters, atomically: tasks on every CPU may
/// move its bytes at once.
///
/// # Safety
/// `sent` and `recv` must point to a valid map value's aligned counters.
#[inline(always)]
pub unsafe fn add(sent: *mut u64, recv: *mut u64, len: u64, outbound: bool) {
    // SAFETY: per the caller.
    unsafe { atomic_add(if outbound { sent } else { recv }, len) }
}

/// Claims a slot for socket `sk`, tracked from now, its row shown in process `pid`; `slow`
/// as [`HotCounts::slow`]. Returns its index + 1, or 0 when both its slots are taken (its
/// counts then stay in `SK_BYTES`).
#[inline(always)]
pub fn claim(sk: u64, pid: u32, slow: u32) -> u32 {
    // Its own stale slot (a socket freed and reused at the same address, tracked again) is
    // taken again, never a second one.
    if let Some((at, slot)) = find_at(sk) {
        init(slot, pid, slow);
        return at + 1;
    }
    let first = hot_slot(sk);
    for at in [first, first ^ 1] {
        let Some(slot) = SK_HOT.get_ptr_mut(at) else {
            continue;
        };
        // SAFETY: a valid map value pointer; an aligned u64.
        let was = unsafe { compare_exchange(&raw mut (*slot).sk, 0, sk) };
        // `sk`: a concurrent claim of the same socket took it first.
        if was == 0 || was == sk {
            init(slot, pid, slow);
            return at + 1;
        }
    }
    0
}

/// Starts a claimed slot's counters from zero: counts first, then what lets a message skip
/// the full path.
#[inline(always)]
fn init(slot: *mut HotCounts, pid: u32, slow: u32) {
    // SAFETY: a valid map value pointer; aligned fields stored whole.
    unsafe {
        core::ptr::write_volatile(&raw mut (*slot).bytes_sent, 0);
        core::ptr::write_volatile(&raw mut (*slot).bytes_recv, 0);
        core::ptr::write_volatile(&raw mut (*slot).slow, slow);
        core::ptr::write_volatile(&raw mut (*slot).pid, pid);
    }
}

/// Records that socket `sk`'s row is now shown in process `pid`.
#[inline(always)]
pub fn set_pid(sk: u64, pid: u32) {
    if let Some(slot) = find(sk) {
        // SAFETY: a valid map value pointer; an aligned u32 stored whole.
        unsafe { core::ptr::write_volatile(&raw mut (*slot).pid, pid) };
    }
}

/// Lets messages on socket `sk` skip the full path again (its UDP connect is reported).
#[inline(always)]
pub fn clear_slow(slot: *mut HotCounts) {
    // SAFETY: a valid map value pointer; an aligned u32 stored whole.
    unsafe { core::ptr::write_volatile(&raw mut (*slot).slow, 0) };
}

/// Socket `sk`'s counters as of now, `(sent, received)`: its slot's plus its `SK_BYTES`
/// ones (both start at 0; a message racing the claim of its slot counts in the latter).
#[inline(always)]
pub fn counts(sk: u64, bytes: &SkBytes) -> (u64, u64) {
    counts_with(find(sk), bytes)
}

/// [`counts`], `slot` being the socket's slot if it has one.
#[inline(always)]
fn counts_with(slot: Option<*mut HotCounts>, bytes: &SkBytes) -> (u64, u64) {
    let (sent, recv) = (bytes.bytes_sent, bytes.bytes_recv);
    match slot {
        // SAFETY: a valid map value pointer; aligned u64s read whole.
        Some(slot) => unsafe {
            (
                sent + core::ptr::read_volatile(&raw const (*slot).bytes_sent),
                recv + core::ptr::read_volatile(&raw const (*slot).bytes_recv),
            )
        },
        None => (sent, recv),
    }
}

/// Frees socket `sk`'s slot (its `SK_BYTES` entry is gone); returns its final counters,
/// wherever they were. Nothing moves its bytes any more, so reading then freeing loses nothing.
#[inline(always)]
pub fn free(sk: u64, bytes: &SkBytes) -> (u64, u64) {
    let slot = find(sk);
    let counts = counts_with(slot, bytes);
    if let Some(slot) = slot {
        // Cleared before the slot is freed: a claimer finds it zeroed.
        init(slot, 0, 0);
        // SAFETY: a valid map value pointer; an aligned u64 stored whole.
        unsafe { core::ptr::write_volatile(&raw mut (*slot).sk, 0) };
    }
    counts
}

/// `*at`, replaced by `new` if it was `expected`, atomically (BPF_CMPXCHG).
///
/// # Safety
/// `at` must point to an aligned u64 of a map value.
#[inline(always)]
unsafe fn compare_exchange(at: *mut u64, expected: u64, new: u64) -> u64 {
    let mut was = expected;
    // SAFETY: per the caller; the instruction only touches `*at` (and r0, its result).
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({at} + 0, r0, {new})",
            at = in(reg) at,
            new = in(reg) new,
            inout("r0") was,
            options(nostack),
        );
    }
    was
}
