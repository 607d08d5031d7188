//! The socket backend's counters, by kernel socket, and how a refresh reads them at a cost that
//! follows what moved rather than how many sockets are open.
//!
//! A tracked socket's bytes are counted in its `SK_HOT` slot (an array mapped into our memory)
//! plus its `SK_BYTES` entry (a hash map), which holds bytes only for a socket without a slot
//! or a message that raced the claim of one; each such count raises its slot pair's generation
//! in `SK_SPILL` (mapped too). So once a full read (`KernelTables::snapshot`) or a lookup has
//! said where a row is counted (a [`Watch`]), a refresh reads the slots in their order in
//! memory, looks up `SK_BYTES` only for the pairs whose generation moved, and hands the model
//! only the rows whose counters moved (and those whose rate must fall back to zero). 100,000
//! idle sockets cost a pass over memory, not a walk over the kernel's hash buckets, and not a
//! pass over the model's rows.

use aya::maps::{Array, HashMap, IterableMap, MapData};
use sockwatch_common::{hot_pair, HotCounts, SkBytes, SocketKey, TrackedSocket};

use super::bulk::MappedArray;
use crate::socket::SocketId;

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

/// Where a row's counters are, as the last full read or a lookup found them, and what the
/// model was last told of them. 56 bytes: one per open socket (100,000 of them at scale).
#[derive(Clone, Copy, Debug)]
struct Watch {
    id: SocketId,
    /// The kernel's `struct sock *`; 0 for a socket found at start that has moved no byte
    /// since (the kernel learns its socket then, and says so with `Counter::Adopted`).
    sk: u64,
    /// The counts the model was last given; for a watch without a slot, also its `SK_BYTES`
    /// (or, while `sk` is 0, `TRACKED`) counts as of `spill`: they move only with the
    /// generation, so a refresh that finds it unmoved has nothing to read.
    told: (u64, u64),
    /// The socket's inode (0 where not known, or past 32 bits: sockets take theirs from the
    /// kernel's 32-bit `get_next_ino`): with `sk` and the row's key, enough to tell its
    /// `SK_BYTES` entry from a newer socket's at the same address (see [`SocketCounters::reread`]).
    ino: u32,
    /// Its `SK_HOT` slot, or [`NO_SLOT`] (watches are kept in order of slot, then id: slots in
    /// memory order, then the rest).
    hot: u32,
    /// The low 32 bits of its pair's generation when its `SK_BYTES` counts were read (a pair
    /// cannot count 2^32 times between two refreshes).
    spill: u32,
    /// Told at the last refresh with counts that moved (or never told): told again at the
    /// next, so its rate falls back to zero.
    moving: bool,
    /// With a slot, and bytes in `SK_BYTES` too (a message raced the claim of the slot): those
    /// are in [`SocketCounters::apart`], and its counts are theirs plus the slot's.
    apart: bool,
}

const _: () = assert!(std::mem::size_of::<Watch>() == 56);

const NO_SLOT: u32 = u32::MAX;

impl Watch {
    fn order(&self) -> (u32, SocketId) {
        (self.hot, self.id)
    }

    /// What the model is told of counts `now`: they moved, or they moved last time (so the
    /// rate falls back to zero), or nothing.
    fn tell(&mut self, now: (u64, u64)) -> Option<Count> {
        let moved = now != self.told;
        let told = (moved || self.moving).then_some(Count {
            id: self.id,
            sent: now.0,
            recv: now.1,
        });
        self.told = now;
        self.moving = moved;
        told
    }
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
    /// Half `SK_HOT`'s size: its pairs of slots, and `SK_SPILL`'s size.
    pub hot_pairs: u32,
    pub adopted: HashMap<MapData, u64, SocketKey>,
    pub adopted_pending: Array<MapData, u32>,
    /// Every located row, by slot then id.
    watches: Vec<Watch>,
    /// The watches before a full read, while it locates the rows anew: what each row was told
    /// carries over (or the refresh after every full read would tell every row again).
    previous: Vec<Watch>,
    /// The `SK_BYTES` counts of the watches with a slot whose socket counted there too (see
    /// [`Watch::apart`]): a few, where most would keep two zeros.
    apart: foldhash::HashMap<SocketId, (u64, u64)>,
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
        let spill = MappedArray::new(spill.map(), hot_slots / 2);
        Self {
            bytes,
            hot,
            hot_mapped,
            spill: spill.map_err(|e| e.to_string()),
            hot_pairs: hot_slots / 2,
            adopted,
            adopted_pending,
            watches: Vec::new(),
            previous: Vec::new(),
            apart: foldhash::HashMap::default(),
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
            .and_then(|spill| spill.get(hot_pair(sk, self.hot_pairs)))
            .unwrap_or(0)
    }

    /// Every pair's generation, read before a full read of `SK_BYTES`: a count after it moves
    /// the generation again, so the next refresh reads that socket anew.
    pub fn generations(&self) -> Vec<u64> {
        let Ok(spill) = &self.spill else {
            return Vec::new();
        };
        (0..self.hot_pairs)
            .map_while(|pair| spill.get(pair))
            .collect()
    }

    /// Forgets every watch, before a full read says anew where each row is (rows closed since
    /// the last one are dropped that way).
    pub fn relocate_all(&mut self, adoptions: u64) {
        self.previous = std::mem::take(&mut self.watches);
        self.apart.clear();
        self.adoptions_seen = adoptions;
    }

    /// Watches the row `id` (`TRACKED` value `value`) as a full read found it: `raw` is its
    /// `SK_BYTES` value as read (without its slot's counts), `generations` as
    /// [`Self::generations`] returned before the read. The model is told its counts at the next
    /// refresh unless it was told them before (the full read's own counts may be older than
    /// its rate says).
    pub fn locate(
        &mut self,
        id: SocketId,
        value: &TrackedSocket,
        raw: Option<&SkBytes>,
        generations: &[u64],
    ) {
        let spill = generations
            .get(hot_pair(value.sk, self.hot_pairs) as usize)
            .copied()
            .unwrap_or(0);
        if let Some((watch, base)) = self.watch(id, value, raw, spill) {
            let watch = keep_apart(&mut self.apart, &watch, base);
            self.watches.push(watch);
        }
    }

    /// Puts the watches in order, once a full read has located every row, and carries over
    /// what each row still watched at the same slot was told.
    pub fn located_all(&mut self) {
        self.watches.sort_unstable_by_key(Watch::order);
        carry_told(&mut self.watches, &std::mem::take(&mut self.previous));
    }

    /// Where row `id` is counted, as `value` (its `TRACKED` value) and `raw` (its `SK_BYTES`
    /// value, without its slot's counts) say, with its pair's generation `spill` as read before
    /// them; and the counts it has in `SK_BYTES` (or `TRACKED`) beside any slot's. `told` holds
    /// its counts as read, with `moving` set: the model hears them at the next refresh.
    fn watch(
        &self,
        id: SocketId,
        value: &TrackedSocket,
        raw: Option<&SkBytes>,
        spill: u64,
    ) -> Option<(Watch, (u64, u64))> {
        let unborn = Watch {
            id,
            sk: 0,
            told: (value.bytes_sent, value.bytes_recv),
            ino: 0,
            hot: NO_SLOT,
            spill: 0,
            moving: true,
            apart: false,
        };
        match raw {
            _ if value.sk == 0 => Some((unborn, unborn.told)),
            Some(bytes) if counts_of(value, bytes) => {
                let base = (bytes.bytes_sent, bytes.bytes_recv);
                let slot = self.hot_slot(value.sk, bytes);
                let told = slot.map_or(base, |(_, slot)| {
                    let sent = base.0.saturating_add(slot.bytes_sent);
                    (sent, base.1.saturating_add(slot.bytes_recv))
                });
                let ino = if bytes.ino != 0 { bytes.ino } else { value.ino };
                let watch = Watch {
                    sk: value.sk,
                    told,
                    ino: u32::try_from(ino).unwrap_or(0),
                    hot: slot.map_or(NO_SLOT, |(index, _)| index),
                    spill: spill as u32,
                    ..unborn
                };
                Some((watch, base))
            }
            // Not counted (yet): located by a lookup when the model says it is new.
            _ => None,
        }
    }

    /// The counters that moved since the last refresh, of the rows watched and of `fresh`
    /// (rows new to the model since: located by a lookup), read from memory; a lookup only for
    /// a fresh row, one whose pair's generation moved, or (when the kernel learned some) one
    /// found at start. `None` when that would take more lookups than a full read costs, when
    /// more rows are watched than `open` (the rows open) by far (closed ones only a full read
    /// forgets), or when the arrays are not mapped: a full read is due. `adoptions`: the
    /// kernel's `Counter::Adopted` as of now.
    pub fn read(
        &mut self,
        tracked: &HashMap<MapData, SocketKey, TrackedSocket>,
        fresh: &[SocketId],
        open: usize,
        adoptions: u64,
    ) -> Option<Vec<Count>> {
        let (Ok(hot), Ok(_)) = (&self.hot_mapped, &self.spill) else {
            return None;
        };
        if fresh.len() > self.lookup_budget || self.watches.len() > 2 * open + self.lookup_budget {
            return None;
        }
        let mut lookups = fresh.len();
        let mut added: Vec<(Watch, (u64, u64))> = fresh
            .iter()
            .filter_map(|&id| self.look_up(tracked, id))
            .collect();
        let adopted_since = adoptions != self.adoptions_seen;
        let mut counts = Vec::new();
        let mut gone = false;
        for i in 0..self.watches.len() {
            let mut watch = self.watches[i];
            let stale = if watch.sk == 0 {
                adopted_since
            } else {
                self.generation(watch.sk) as u32 != watch.spill
            };
            // Its counts beside the slot's (or, without a slot, all of them): unmoved unless
            // its pair's generation moved.
            let mut base = if watch.hot == NO_SLOT {
                watch.told
            } else if watch.apart {
                self.apart.get(&watch.id).copied().unwrap_or_default()
            } else {
                (0, 0)
            };
            if stale {
                lookups += 1;
                if lookups > self.lookup_budget {
                    return None;
                }
                // Its own entry in `SK_BYTES` is the one lookup a socket still counted there
                // needs (most moved because they spill); a change of slot or entry, both.
                if let Some((read, spill)) = self.reread(&watch) {
                    base = read;
                    watch.spill = spill as u32;
                } else {
                    match self.look_up(tracked, watch.id) {
                        // Its slot may have changed (a socket found at start has one now).
                        Some((found, read)) if found.hot != watch.hot => {
                            added.push((found, read));
                            watch.sk = u64::MAX;
                        }
                        Some((found, read)) => {
                            base = read;
                            watch.spill = found.spill;
                            watch.sk = found.sk;
                        }
                        // Gone from the maps: its close record is on its way (or was lost, which
                        // the drop counter says, and a full read follows).
                        None => watch.sk = u64::MAX,
                    }
                }
                if watch.sk != u64::MAX {
                    watch = keep_apart(&mut self.apart, &watch, base);
                }
            }
            let now = if watch.sk == u64::MAX {
                None
            } else if watch.hot == NO_SLOT {
                Some(base)
            } else {
                let counted = |slot: HotCounts| {
                    let sent = base.0.saturating_add(slot.bytes_sent);
                    let recv = base.1.saturating_add(slot.bytes_recv);
                    (slot.sk == watch.sk).then_some((sent, recv))
                };
                // Counters only grow: lower ones are a slot being freed (zeroed before its
                // socket is cleared). Freed, or taken by another socket: released, its close
                // record on its way.
                let told = watch.told;
                hot.get(watch.hot)
                    .and_then(counted)
                    .filter(|&(sent, recv)| sent >= told.0 && recv >= told.1)
            };
            let Some(now) = now else {
                gone = true;
                self.watches[i].sk = u64::MAX;
                continue;
            };
            counts.extend(watch.tell(now));
            self.watches[i] = watch;
        }
        if adopted_since {
            self.adoptions_seen = adoptions;
        }
        if gone {
            self.forget(|w| w.sk == u64::MAX);
        }
        if !added.is_empty() {
            // A socket watched under another row before (its row moved to another holder):
            // the new row's watch replaces it.
            let sockets: std::collections::HashSet<u64> = added
                .iter()
                .map(|(w, _)| w.sk)
                .filter(|&sk| sk != 0)
                .collect();
            self.forget(|w| sockets.contains(&w.sk));
            for (watch, base) in added {
                counts.push(Count {
                    id: watch.id,
                    sent: watch.told.0,
                    recv: watch.told.1,
                });
                let watch = keep_apart(&mut self.apart, &watch, base);
                self.watches.push(watch);
            }
            // Sorted runs merge in linear time.
            self.watches.sort_by_key(Watch::order);
        }
        Some(counts)
    }

    /// Drops the watches `which` picks, and what they kept apart.
    fn forget(&mut self, which: impl Fn(&Watch) -> bool) {
        let apart = &mut self.apart;
        self.watches.retain(|w| {
            let drop = which(w);
            if drop && w.apart {
                apart.remove(&w.id);
            }
            !drop
        });
    }

    /// `watch`'s `SK_BYTES` counts and its pair's generation, read anew: `None` unless the
    /// entry is still its socket's (same inode, known), still at its row's key, and the socket
    /// still has the slot the watch knows; then only [`Self::look_up`] can tell.
    fn reread(&self, watch: &Watch) -> Option<((u64, u64), u64)> {
        if watch.sk == 0 || watch.ino == 0 {
            return None;
        }
        // The generation first: a count after it moves it again.
        let spill = self.generation(watch.sk);
        let bytes = self.bytes.get(&watch.sk, 0).ok()?;
        let same = bytes.ino == u64::from(watch.ino) && bytes.key == watch.id.key;
        let slot = self
            .hot_slot(watch.sk, &bytes)
            .map_or(NO_SLOT, |(index, _)| index);
        (same && slot == watch.hot).then_some(((bytes.bytes_sent, bytes.bytes_recv), spill))
    }

    /// Where row `id` is counted now, from the maps (a lookup or two), with its counts beside
    /// any slot's (see [`Self::watch`]; its `told` holds them all, slot included, so the model
    /// is told them); `None` when its entry is gone or is a newer socket's.
    fn look_up(
        &self,
        tracked: &HashMap<MapData, SocketKey, TrackedSocket>,
        id: SocketId,
    ) -> Option<(Watch, (u64, u64))> {
        let value = tracked.get(&id.key, 0).ok()?;
        if value.connect_ns != id.opened_ns {
            return None;
        }
        if value.sk == 0 {
            return self.watch(id, &value, None, 0);
        }
        // The generation first: a count after it moves it again.
        let spill = self.generation(value.sk);
        let bytes = self.bytes.get(&value.sk, 0).ok()?;
        self.watch(id, &value, Some(&bytes), spill)
    }
}

/// Keeps `watch`'s counts `base` beside its slot's in `apart` where it has both (see
/// [`Watch::apart`]), and forgets them where it no longer does.
fn keep_apart(
    apart: &mut foldhash::HashMap<SocketId, (u64, u64)>,
    watch: &Watch,
    base: (u64, u64),
) -> Watch {
    let kept = watch.hot != NO_SLOT && base != (0, 0);
    if kept {
        apart.insert(watch.id, base);
    } else if watch.apart {
        apart.remove(&watch.id);
    }
    Watch {
        apart: kept,
        ..*watch
    }
}

/// What each of `watches` (as a full read found them, in [`Watch::order`]) had told the model
/// as `previous` (in the same order) watched it, where at the same slot: unless the counts
/// differ, it is not told them again. One pass beside both.
fn carry_told(watches: &mut [Watch], previous: &[Watch]) {
    let mut previous = previous.iter().peekable();
    for watch in watches {
        while previous.next_if(|p| p.order() < watch.order()).is_some() {}
        if let Some(before) = previous.next_if(|p| p.order() == watch.order()) {
            if before.told == watch.told {
                watch.moving = before.moving;
            }
        }
    }
}

/// Whether `bytes` are the counters of the tracked socket `value`, not of a newer socket at the
/// same `struct sock` address (their inodes differ).
pub fn counts_of(value: &TrackedSocket, bytes: &SkBytes) -> bool {
    bytes.ino == 0 || value.ino == 0 || bytes.ino == value.ino
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::SocketKey;

    fn watch(fd: u32, hot: u32, told: u64, moving: bool) -> Watch {
        Watch {
            id: SocketId::new(SocketKey { pid: 1, fd }, 5),
            sk: 0xffff_8000 + u64::from(fd),
            told: (told, 0),
            ino: 0,
            hot,
            spill: 0,
            moving,
            apart: false,
        }
    }

    #[test]
    fn a_full_read_tells_again_only_what_moved_or_was_moving() {
        let previous = [
            watch(4, 1, 40, false),
            watch(3, 2, 30, true),
            watch(9, 5, 90, false),
            watch(6, NO_SLOT, 60, false),
            watch(7, NO_SLOT, 70, false),
            watch(10, NO_SLOT, 100, false),
        ];
        // As the full read found them: fd 3 is still at slot 2, unmoved; fd 9 moved to another
        // slot; fd 8 is new; fd 4 closed; fd 7 is still without a slot, unmoved, fd 10 too but
        // it counted since; fd 6 has a slot now.
        let mut watches = [
            watch(3, 2, 30, true),
            watch(6, 3, 60, true),
            watch(9, 6, 90, true),
            watch(8, 7, 0, true),
            watch(7, NO_SLOT, 70, true),
            watch(10, NO_SLOT, 101, true),
        ];
        carry_told(&mut watches, &previous);
        let told: Vec<_> = watches.iter().map(|w| (w.told.0, w.moving)).collect();
        assert_eq!(
            told,
            [
                (30, true),
                (60, true),
                (90, true),
                (0, true),
                (70, false),
                (101, true)
            ]
        );
        let mut idle = watches[4];
        assert_eq!(idle.tell((70, 0)), None, "not told again after a full read");
        let mut counted = watches[5];
        assert!(counted.tell((101, 0)).is_some(), "told what moved");
    }

    #[test]
    fn the_model_hears_of_counts_that_moved_and_once_more_after() {
        let id = SocketId::new(SocketKey { pid: 1, fd: 3 }, 5);
        let mut watch = Watch {
            id,
            sk: 0xffff_8000,
            told: (10, 0),
            ino: 0,
            hot: 7,
            spill: 0,
            moving: true,
            apart: false,
        };
        let told = |sent| Some(Count { id, sent, recv: 0 });
        // New to the model: told even unchanged.
        assert_eq!(watch.tell((10, 0)), told(10));
        assert_eq!(watch.tell((10, 0)), None, "idle: nothing");
        assert_eq!(watch.tell((20, 0)), told(20));
        assert_eq!(
            watch.tell((20, 0)),
            told(20),
            "once more: its rate falls to zero"
        );
        assert_eq!(watch.tell((20, 0)), None);
        assert_eq!(
            watch.tell((20, 5)),
            told(20).map(|c| Count { recv: 5, ..c })
        );
    }
}
