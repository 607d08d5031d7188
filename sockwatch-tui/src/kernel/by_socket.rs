//! The socket backend's counters, by kernel socket, and how a refresh reads them at a cost that
//! follows what moved rather than how many sockets are open.
//!
//! A tracked socket's bytes are counted in its `SK_HOT` slot (an array mapped into our memory)
//! plus its `SK_BYTES` entry (a hash map), which holds bytes only for a socket without a slot
//! or a message that raced the claim of one; each such count raises its slot pair's generation
//! in `SK_SPILL` (mapped too). So once a full read (`KernelTables::snapshot`) has said where each
//! row is counted ([`Location`]), a refresh reads every row from memory, and looks up
//! `SK_BYTES` only for the pairs whose generation moved and the rows it has not located yet.
//! 100,000 idle sockets cost a walk over memory, not a walk over the kernel's hash buckets.

use std::collections::HashMap as StdHashMap;

use aya::maps::{Array, HashMap, IterableMap, MapData};
use sockwatch_common::{hot_pair, HotCounts, SkBytes, SocketKey, TrackedSocket};

use super::bulk::MappedArray;
use crate::socket::{Socket, SocketId};

/// Lookups one refresh may make, per entry the maps can hold: a lookup (a syscall or two)
/// costs about as much as a full read's walk over 32 hash buckets, so past `--max-sockets` / 32
/// (2,048 by default) a full read is cheaper (after a storm of new sockets, say) and is made
/// instead. Never fewer than [`MIN_LOOKUPS`], a few dozen µs.
pub const BUCKETS_PER_LOOKUP: u32 = 32;
pub const MIN_LOOKUPS: u32 = 64;

/// One open socket's counters as a refresh read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    pub id: SocketId,
    pub sent: u64,
    pub recv: u64,
}

/// Where a row's counters are, as the last full read or a lookup found them.
#[derive(Clone, Copy, Debug)]
struct Location {
    /// The kernel's `struct sock *`; 0 for a socket found at start that has moved no byte
    /// since (the kernel learns its socket then, and says so with `Counter::Adopted`).
    sk: u64,
    /// Its `SK_HOT` slot, if it holds one.
    hot: Option<u32>,
    /// Its `SK_BYTES` counts (or, while `sk` is 0, its `TRACKED` ones), read when its pair's
    /// generation was `spill`.
    base: (u64, u64),
    spill: u64,
}

/// The socket backend's maps, and where each open row is counted.
pub struct SocketCounters {
    pub bytes: HashMap<MapData, u64, SkBytes>,
    pub hot: Array<MapData, HotCounts>,
    /// `hot` mapped into memory; or why the kernel would not map it (then each slot is looked
    /// up, and every refresh is a full read).
    pub hot_mapped: Result<MappedArray<HotCounts>, String>,
    /// `SK_SPILL` mapped into memory, or why not (then every refresh is a full read).
    pub spill: Result<MappedArray<u64>, String>,
    /// `SK_HOT`'s size minus one.
    pub hot_mask: u32,
    pub adopted: HashMap<MapData, u64, SocketKey>,
    pub adopted_pending: Array<MapData, u32>,
    located: StdHashMap<SocketId, Location, foldhash::fast::RandomState>,
    /// Lookups a refresh may make before a full read is cheaper.
    lookup_budget: usize,
    /// The kernel's count of sockets found at start that it has learned, when rows without a
    /// kernel socket were last located.
    adoptions_seen: u64,
}

impl SocketCounters {
    pub fn new(
        bytes: HashMap<MapData, u64, SkBytes>,
        hot: Array<MapData, HotCounts>,
        spill: Array<MapData, u64>,
        hot_slots: u32,
        max_sockets: u32,
        adopted: HashMap<MapData, u64, SocketKey>,
        adopted_pending: Array<MapData, u32>,
    ) -> Self {
        let hot_mapped = MappedArray::new(hot.map(), hot_slots).map_err(|e| e.to_string());
        let spill = MappedArray::new(spill.map(), (hot_slots / 2).max(1));
        Self {
            bytes,
            hot,
            hot_mapped,
            spill: spill.map_err(|e| e.to_string()),
            hot_mask: hot_slots - 1,
            adopted,
            adopted_pending,
            located: StdHashMap::default(),
            lookup_budget: (max_sockets / BUCKETS_PER_LOOKUP).max(MIN_LOOKUPS) as usize,
            adoptions_seen: 0,
        }
    }

    /// `bytes` (socket `sk`'s `SK_BYTES` value) with its counters, read from its hot slot when
    /// it has one (see `HotCounts`).
    pub fn with_hot_counts(&self, sk: u64, mut bytes: SkBytes) -> SkBytes {
        // Both: a message racing the claim of the slot counts in `SK_BYTES`.
        if let Some((_, slot)) = self.hot_slot(sk, &bytes) {
            bytes.bytes_sent += slot.bytes_sent;
            bytes.bytes_recv += slot.bytes_recv;
        }
        bytes
    }

    /// Socket `sk`'s hot slot, its index and contents, if it holds one.
    fn hot_slot(&self, sk: u64, bytes: &SkBytes) -> Option<(u32, HotCounts)> {
        let index = bytes.hot.checked_sub(1)?;
        let slot = match &self.hot_mapped {
            Ok(mapped) => mapped.get(index)?,
            Err(_) => self.hot.get(&index, 0).ok()?,
        };
        (slot.sk == sk).then_some((index, slot))
    }

    /// Frees socket `sk`'s hot slot, its tracking ended here (its `SK_BYTES` entry removed).
    pub fn free_hot_slot(&mut self, sk: u64, bytes: &SkBytes) {
        if let Some((index, _)) = self.hot_slot(sk, bytes) {
            let _ = self.hot.set(index, HotCounts::default(), 0);
        }
    }

    /// The generation of socket `sk`'s slot pair (0 where `SK_SPILL` is not mapped).
    fn generation(&self, sk: u64) -> u64 {
        let spill = self.spill.as_ref().ok();
        spill
            .and_then(|spill| spill.get(hot_pair(sk, self.hot_mask)))
            .unwrap_or(0)
    }

    /// Every pair's generation, read before a full read of `SK_BYTES`: a count after it moves
    /// the generation again, so the next refresh reads that socket anew.
    pub fn generations(&self) -> Vec<u64> {
        let Ok(spill) = &self.spill else {
            return Vec::new();
        };
        (0..=self.hot_mask / 2)
            .map_while(|pair| spill.get(pair))
            .collect()
    }

    /// Forgets where every row was, before a full read says it anew (rows closed since the
    /// last one are dropped that way).
    pub fn relocate_all(&mut self, adoptions: u64) {
        self.located.clear();
        self.adoptions_seen = adoptions;
    }

    /// Notes where the row `id` (`TRACKED` value `value`) is counted, as a full read found it:
    /// `raw` is its `SK_BYTES` value as read (without its slot's counts), `generations` as
    /// [`Self::generations`] returned before the read.
    pub fn locate(
        &mut self,
        id: SocketId,
        value: &TrackedSocket,
        raw: Option<&SkBytes>,
        generations: &[u64],
    ) {
        let location = match raw {
            _ if value.sk == 0 => Location {
                sk: 0,
                hot: None,
                base: (value.bytes_sent, value.bytes_recv),
                spill: 0,
            },
            Some(bytes) if counts_of(value, bytes) => Location {
                sk: value.sk,
                hot: self.hot_slot(value.sk, bytes).map(|(index, _)| index),
                base: (bytes.bytes_sent, bytes.bytes_recv),
                spill: generations
                    .get(hot_pair(value.sk, self.hot_mask) as usize)
                    .copied()
                    .unwrap_or(0),
            },
            // Not counted (yet): located by a lookup at the next refresh.
            _ => return,
        };
        self.located.insert(id, location);
    }

    /// The counters of every row of `rows` (the open sockets, in order) as of now, one
    /// [`Count`] each, read from memory: a lookup only for a row not located yet, one whose
    /// pair's generation moved, or (when the kernel learned some) one found at start. `None`
    /// when that would take more lookups than a full read costs, or the arrays are not mapped:
    /// a full read is due. `adoptions`: the kernel's `Counter::Adopted` as of now.
    pub fn read<'a>(
        &mut self,
        tracked: &HashMap<MapData, SocketKey, TrackedSocket>,
        rows: impl Iterator<Item = &'a Socket>,
        adoptions: u64,
    ) -> Option<Vec<Count>> {
        let (Ok(hot), Ok(_)) = (&self.hot_mapped, &self.spill) else {
            return None;
        };
        let adopted_since = adoptions != self.adoptions_seen;
        let mut counts = Vec::with_capacity(self.located.len());
        let mut lookups = 0usize;
        for row in rows {
            let mut location = self.located.get(&row.id).copied();
            let stale = match location {
                None => true,
                Some(at) if at.sk == 0 => adopted_since,
                Some(at) => self.generation(at.sk) != at.spill,
            };
            if stale {
                lookups += 1;
                if lookups > self.lookup_budget {
                    return None;
                }
                location = self.look_up(tracked, row.id);
                match location {
                    Some(at) => self.located.insert(row.id, at),
                    None => self.located.remove(&row.id),
                };
            }
            let (sent, recv) = match location {
                // Not in the maps (any more): its close record is on its way, or was lost
                // (then the drop counter says so and a full read follows). As it was.
                None => (row.bytes_sent, row.bytes_recv),
                Some(at) => match at.hot.and_then(|index| hot.get(index)) {
                    // Its slot, still its own (a freed slot means a release is on its way).
                    Some(slot) if slot.sk == at.sk => (
                        at.base.0.saturating_add(slot.bytes_sent),
                        at.base.1.saturating_add(slot.bytes_recv),
                    ),
                    Some(_) => (row.bytes_sent, row.bytes_recv),
                    None => at.base,
                },
            };
            counts.push(Count {
                id: row.id,
                sent,
                recv,
            });
        }
        if adopted_since {
            self.adoptions_seen = adoptions;
        }
        // Rows closed since the last full read: forget them once they outnumber the open.
        if self.located.len() > 2 * counts.len() + self.lookup_budget {
            let open: std::collections::HashSet<SocketId> = counts.iter().map(|c| c.id).collect();
            self.located.retain(|id, _| open.contains(id));
        }
        Some(counts)
    }

    /// Where row `id` is counted now, from the maps (a lookup or two); `None` when its entry
    /// is gone or is a newer socket's.
    fn look_up(
        &self,
        tracked: &HashMap<MapData, SocketKey, TrackedSocket>,
        id: SocketId,
    ) -> Option<Location> {
        let value = tracked.get(&id.key, 0).ok()?;
        if value.connect_ns != id.opened_ns {
            return None;
        }
        if value.sk == 0 {
            return Some(Location {
                sk: 0,
                hot: None,
                base: (value.bytes_sent, value.bytes_recv),
                spill: 0,
            });
        }
        // The generation first: a count after it moves it again.
        let spill = self.generation(value.sk);
        let bytes = self.bytes.get(&value.sk, 0).ok()?;
        counts_of(&value, &bytes).then(|| Location {
            sk: value.sk,
            hot: self.hot_slot(value.sk, &bytes).map(|(index, _)| index),
            base: (bytes.bytes_sent, bytes.bytes_recv),
            spill,
        })
    }
}

/// Whether `bytes` are the counters of the tracked socket `value`, not of a newer socket at the
/// same `struct sock` address (their inodes differ).
pub fn counts_of(value: &TrackedSocket, bytes: &SkBytes) -> bool {
    bytes.ino == 0 || value.ino == 0 || bytes.ino == value.ino
}
