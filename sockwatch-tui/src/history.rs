//! A socket's per-second history (rates, RTT), packed: 100,000 sockets keep five minutes each.
//!
//! Runs of equal samples are kept once, and the runs before the newest are written as
//! variable-length integers (LEB128) in one byte vector: a socket sending a little every second
//! sees a new sample most seconds, and its five minutes took some 7 KiB as structs (two `u64`
//! and a count, padded to 24 bytes, in a doubling ring), where they take about 1 KiB written
//! so. With a tenth of 100,000 sockets sending, the dashboard grew by 120 MiB over its first
//! five minutes of sending as structs, and grows by 11 MiB written so.
//!
//! This module depends on nothing else in the crate.

use std::fmt;

use thin_vec::ThinVec;

/// The runs before the newest: one allocation with its length and room in front (a `ThinVec`),
/// behind one pointer in the history (a row of 100,000 keeps two).
type Bytes = ThinVec<u8>;

/// One run as written, before it goes into a history's bytes (so they grow by what it takes).
pub struct Run {
    bytes: [u8; RUN_MAX],
    len: usize,
}

impl Run {
    fn new() -> Self {
        Self {
            bytes: [0; RUN_MAX],
            len: 0,
        }
    }

    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    fn written(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Seconds of per-second history kept per socket (the details view's sparklines).
pub const HISTORY_LEN: usize = 300;

/// A sample a [`History`] keeps: written as variable-length integers.
pub trait Sample: Copy + PartialEq + Default {
    fn put(self, out: &mut Run);
    /// Reads one back from the front of `bytes`, moving past it.
    fn take(bytes: &mut &[u8]) -> Self;
}

impl Sample for u64 {
    fn put(self, out: &mut Run) {
        put_varint(self, out);
    }

    fn take(bytes: &mut &[u8]) -> Self {
        take_varint(bytes)
    }
}

impl Sample for (u32, u32) {
    fn put(self, out: &mut Run) {
        put_varint(u64::from(self.0), out);
        put_varint(u64::from(self.1), out);
    }

    fn take(bytes: &mut &[u8]) -> Self {
        // Written from u32s: they fit.
        let first = take_varint(bytes) as u32;
        (first, take_varint(bytes) as u32)
    }
}

/// A per-second history of at most [`HISTORY_LEN`] samples, oldest first, that keeps a run
/// of equal samples as one entry: most sockets of a busy machine sit idle, and their five
/// minutes of zero rates and unchanging RTT take a few bytes each. The newest run is kept
/// inline: a socket idle since it opened has no other, and allocates nothing, and the older
/// runs sit in one allocation behind one pointer (a row of 100,000 keeps two histories).
///
/// In declaration order (`repr(C)`): what a reading a second after the last touches first.
#[derive(Clone)]
#[repr(C)]
pub struct History<T> {
    /// The newest run: its sample, seen `newest_seen` times (0 while the history is empty).
    newest: T,
    newest_seen: u16,
    /// Samples in all: at most [`HISTORY_LEN`].
    len: u16,
    /// Where in `older` the runs not yet aged out start.
    start: u16,
    /// The oldest run when its sample is the default, seen `lead` times before the runs in
    /// `older`: a socket idle from its start (zero rates) until it moved keeps it here, so one
    /// that then moves steadily allocates nothing.
    lead: u16,
    /// The runs before the newest, written one after another, oldest first: each its count of
    /// seconds, then its sample. The count comes first so that the oldest run can lose seconds
    /// in place (it is rewritten in as many bytes as it had); whole runs that age out only move
    /// `start`, and the bytes before it go at once when there are enough of them to be worth
    /// moving the rest. Empty (no allocation) while there are none.
    older: Bytes,
}

const _: () = assert!(HISTORY_LEN <= u16::MAX as usize);

/// Bytes of aged-out runs kept before the rest is moved down over them: a move of about a KiB
/// once every half minute or so for a socket with a new sample every second.
const COMPACT_AT: usize = 128;

/// Room a run may need: a count and two 64-bit numbers.
const RUN_MAX: usize = 3 + 2 * 10;

/// Room added at a time as runs come: a doubling vector would leave up to half of it unused,
/// on each of 100,000 rows. With `older`'s 16-byte header, 64 bytes asked of the allocator.
const GROW: usize = 48;
/// Room for the first runs: a socket whose rate or RTT first changes writes one run of a few
/// bytes. A tenth of 100,000 sockets starting to send wrote some 30,000 histories' first runs
/// within seconds: with room for 48 bytes each, 1 MB more than with room for these (32 bytes
/// asked of the allocator, against 64).
const FIRST: usize = 16;

impl<T> Default for History<T>
where
    T: Default,
{
    fn default() -> Self {
        Self {
            newest: T::default(),
            newest_seen: 0,
            len: 0,
            start: 0,
            lead: 0,
            older: Bytes::new(),
        }
    }
}

impl<T> History<T> {
    /// Bytes from its start that a push a second after the last touches (the newest run and
    /// the length), for a row to keep them with what else each refresh reads.
    pub const HOT: usize = std::mem::offset_of!(Self, start);

    /// The runs before the newest not yet aged out.
    fn live(&self) -> &[u8] {
        &self.older[usize::from(self.start)..]
    }
}

impl<T: Sample> History<T> {
    pub fn push(&mut self, sample: T) {
        self.push_n(sample, 1);
    }

    /// `sample` seen `times` seconds in a row: one run, whatever the number.
    pub fn push_n(&mut self, sample: T, times: usize) {
        let mut left = times.min(HISTORY_LEN);
        while left > 0 {
            if self.newest_seen == 0 {
                self.newest = sample;
            } else if self.newest != sample || self.newest_seen == u16::MAX {
                self.push_older(self.newest, self.newest_seen);
                (self.newest, self.newest_seen) = (sample, 0);
            }
            let add = left.min(usize::from(u16::MAX - self.newest_seen));
            self.newest_seen += add as u16;
            self.len += add as u16;
            left -= add;
        }
        // The oldest go, a run at a time where whole runs are too old.
        while usize::from(self.len) > HISTORY_LEN {
            let over = usize::from(self.len) - HISTORY_LEN;
            let dropped = if self.lead > 0 {
                let dropped = over.min(usize::from(self.lead));
                self.lead -= dropped as u16;
                dropped
            } else if self.live().is_empty() {
                let dropped = over.min(usize::from(self.newest_seen));
                self.newest_seen -= dropped as u16;
                dropped
            } else {
                let dropped = self.drop_oldest(over);
                // Nothing older left: its room goes too (a socket busy once, idle since).
                if self.live().is_empty() {
                    (self.older, self.start) = (Bytes::new(), 0);
                }
                dropped
            };
            self.len -= dropped as u16;
        }
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The runs, oldest first: each sample with how many seconds in a row it was seen.
    fn runs(&self) -> impl Iterator<Item = (T, u16)> + '_ {
        let mut bytes = self.live();
        let written = std::iter::from_fn(move || {
            (!bytes.is_empty()).then(|| {
                let seen = take_varint(&mut bytes) as u16;
                (T::take(&mut bytes), seen)
            })
        });
        std::iter::once((T::default(), self.lead))
            .chain(written)
            .chain(std::iter::once((self.newest, self.newest_seen)))
            .filter(|&(_, seen)| seen > 0)
    }

    /// Every sample, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.runs()
            .flat_map(|(sample, seen)| std::iter::repeat_n(sample, usize::from(seen)))
    }

    /// Bytes it holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        match self.older.capacity() {
            0 => 0,
            room => 2 * size_of::<usize>() + room,
        }
    }

    fn push_older(&mut self, sample: T, seen: u16) {
        if self.lead == 0 && self.live().is_empty() && sample == T::default() {
            self.lead = seen;
            return;
        }
        let mut run = Run::new();
        put_varint(u64::from(seen), &mut run);
        sample.put(&mut run);
        let need = run.written().len();
        if self.older.capacity() - self.older.len() < need {
            let room = if self.older.capacity() == 0 {
                FIRST
            } else {
                GROW
            };
            self.older.reserve_exact(room.max(need));
        }
        self.older.extend_from_slice(run.written());
    }

    /// Takes up to `seconds` from the oldest of the older runs; returns how many it took.
    fn drop_oldest(&mut self, seconds: usize) -> usize {
        let start = usize::from(self.start);
        let mut rest = &self.older[start..];
        let before = rest.len();
        let seen = take_varint(&mut rest) as usize;
        let count_len = before - rest.len();
        if seconds < seen {
            put_varint_in(
                (seen - seconds) as u64,
                &mut self.older[start..start + count_len],
            );
            return seconds;
        }
        T::take(&mut rest);
        let start = self.older.len() - rest.len();
        if !rest.is_empty() && start >= COMPACT_AT {
            self.older.drain(..start);
            self.start = 0;
        } else {
            // At most what a whole history of runs writes (asserted below).
            self.start = start as u16;
        }
        seen
    }
}

// The runs of a whole history, each of the largest, fit where `start` can point.
const _: () = assert!(HISTORY_LEN * RUN_MAX + GROW <= u16::MAX as usize);

impl<T: Sample> PartialEq for History<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.runs().eq(other.runs())
    }
}

impl<T: Sample + Eq> Eq for History<T> {}

impl<T: Sample + fmt::Debug> fmt::Debug for History<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.runs()).finish()
    }
}

/// LEB128: seven bits a byte, low first; the top bit says another byte follows.
fn put_varint(mut value: u64, out: &mut Run) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `value` written in exactly the bytes of `slot` (not fewer: a smaller count rewritten in
/// place keeps its length, with continuation bytes of zeros, which LEB128 reads the same).
fn put_varint_in(mut value: u64, slot: &mut [u8]) {
    debug_assert!(!slot.is_empty() && (slot.len() >= 10 || value >> (7 * slot.len()) == 0));
    let last = slot.len() - 1;
    for (i, byte) in slot.iter_mut().enumerate() {
        *byte = (value as u8 & 0x7f) | if i < last { 0x80 } else { 0 };
        value >>= 7;
    }
}

fn take_varint(bytes: &mut &[u8]) -> u64 {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return value;
        }
    }
    // Only what `put_varint` wrote is read: it always ends a number.
    *bytes = &[];
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<T: Sample> History<T> {
        fn run_count(&self) -> usize {
            self.runs().count()
        }
    }

    #[test]
    fn a_history_takes_a_run_at_once_and_keeps_the_newest() {
        let mut history = History::default();
        history.push(1u64);
        history.push_n(0, 5);
        history.push(2);
        assert_eq!(history.iter().collect::<Vec<_>>(), [1, 0, 0, 0, 0, 0, 2]);
        history.push_n(0, 1_000_000);
        assert_eq!(history.len(), HISTORY_LEN);
        assert!(
            history.iter().all(|s| s == 0),
            "the run pushed the rest out"
        );
        history.push(3);
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history.iter().last(), Some(3));
        assert_eq!(history.iter().filter(|&s| s == 0).count(), HISTORY_LEN - 1);
    }

    #[test]
    fn a_socket_idle_then_steady_allocates_nothing() {
        let mut history = History::default();
        history.push_n(0u64, 100);
        history.push_n(64, 150);
        assert_eq!((history.run_count(), history.heap_bytes()), (2, 0));
        // A third run is written out; the idle seconds age out first, then the steady ones.
        history.push_n(3, 10);
        assert!(history.heap_bytes() > 0);
        history.push_n(5, 60);
        let mut expected = vec![0; 80];
        expected.extend([64; 150].iter().chain(&[3; 10]).chain(&[5; 60]));
        assert_eq!(history.iter().collect::<Vec<_>>(), expected);
        history.push_n(5, 100);
        let mut expected = vec![64; 130];
        expected.extend([3; 10].iter().chain(&[5; 160]));
        assert_eq!(history.iter().collect::<Vec<_>>(), expected);
        // Idle again: a run of zeros after others is written out like any.
        history.push_n(0, 20);
        history.push(1);
        let samples: Vec<u64> = history.iter().collect();
        assert_eq!(samples.len(), HISTORY_LEN);
        assert_eq!(
            samples[HISTORY_LEN - 22..],
            [&[5][..], &[0; 20], &[1]].concat()[..]
        );
    }

    #[test]
    fn a_history_keeps_runs_once_and_drops_its_oldest_second() {
        let mut history = History::default();
        // An idle socket: five minutes and more of zeros are one entry.
        for _ in 0..HISTORY_LEN + 50 {
            history.push(0u64);
        }
        assert_eq!((history.len(), history.run_count()), (HISTORY_LEN, 1));
        assert_eq!(history.heap_bytes(), 0, "idle: nothing allocated");
        history.push(7);
        history.push(7);
        history.push(3);
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history.run_count(), 3);
        let samples: Vec<u64> = history.iter().collect();
        assert_eq!(samples.len(), HISTORY_LEN);
        assert_eq!(samples[HISTORY_LEN - 4..], [0, 7, 7, 3]);
        // The zeros age out one by one (their count, 297 then less, shrinks in its two
        // bytes), then the run goes.
        for _ in 0..HISTORY_LEN - 3 {
            history.push(3);
        }
        let samples: Vec<u64> = history.iter().collect();
        assert_eq!(samples[..3], [7, 7, 3]);
        assert_eq!((history.len(), history.run_count()), (HISTORY_LEN, 2));
    }

    /// What a socket sending a little every second sees: a new sample most seconds, of every
    /// size, for far longer than the history keeps. Checked against the plain list of samples.
    #[test]
    fn a_busy_history_is_every_sample_of_the_last_five_minutes_in_little_memory() {
        let mut history = History::default();
        let mut all: Vec<(u32, u32)> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for second in 0..5_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Mostly small, now and then up to the whole range, sometimes repeated.
            let sample = match seed % 7 {
                0 => (u32::MAX, (seed >> 32) as u32),
                1 | 2 => all.last().copied().unwrap_or_default(),
                _ => ((seed >> 8) as u32 % 300, (seed >> 40) as u32 % 3),
            };
            history.push(sample);
            all.push(sample);
            let kept: Vec<(u32, u32)> = history.iter().collect();
            assert_eq!(
                kept,
                all[all.len().saturating_sub(HISTORY_LEN)..],
                "{second}"
            );
        }
        // A ring of 12-byte structs (a (u32, u32) and its count), doubling, took about 6 KiB.
        assert!(history.heap_bytes() < 1_700, "{}", history.heap_bytes());
    }

    #[test]
    fn a_count_rewritten_smaller_keeps_its_length() {
        let mut run = Run::new();
        put_varint(300, &mut run);
        let mut bytes = run.written().to_vec();
        assert_eq!(bytes.len(), 2);
        put_varint_in(5, &mut bytes);
        let mut read = &bytes[..];
        assert_eq!((take_varint(&mut read), read.len()), (5, 0));
        let mut big = Run::new();
        put_varint(u64::MAX, &mut big);
        let big = big.written();
        let mut read = big;
        assert_eq!((big.len(), take_varint(&mut read)), (10, u64::MAX));
    }
}
