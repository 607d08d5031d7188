//! The open sockets, by (pid, fd): the model owns them, the tracker reads them.
//!
//! The rows lie side by side in one vector; a hash index gives each key its place, and an
//! ordered one the keys in order (the listing's ties, a process's sockets, JSON). At 100k rows,
//! rows boxed one by one laid the tree's nodes among half-kilobyte rows, and a walk spent most
//! of its time waiting for memory. Side by side, rows taken in key order are read nearly in
//! address order (keys grow as processes open sockets); the rows a refresh counted (a tenth
//! of 100k) are found by a hash lookup each, a few times faster than a search of the tree.

use std::{
    collections::BTreeMap,
    ops::{Range, RangeBounds},
};

use foldhash::HashMap;

use crate::socket::{Socket, SocketKey};

/// Above this many rows of room, a vector four times larger than its rows gives back half.
const SHRINK_FROM: usize = 1024;

/// [`OpenSockets::beside`] walks the ordered index for one item in this many rows or more
/// (nearly every row: a walk reads each key once, side by side), and looks each up otherwise.
const WALK_FROM: usize = 2;

#[derive(Clone, Debug, Default)]
pub struct OpenSockets {
    /// Each key's place in `rows`.
    places: HashMap<SocketKey, u32>,
    /// The same, in key order.
    order: BTreeMap<SocketKey, u32>,
    /// The rows, in no order and without gaps (a removal moves the last row into its place).
    rows: Vec<Socket>,
}

/// A row's place, as [`OpenSockets::beside`] gave it: good until the next insert or remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(u32);

impl OpenSockets {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn get(&self, key: &SocketKey) -> Option<&Socket> {
        let &slot = self.places.get(key)?;
        Some(&self.rows[slot as usize])
    }

    pub fn get_mut(&mut self, key: &SocketKey) -> Option<&mut Socket> {
        let &slot = self.places.get(key)?;
        Some(&mut self.rows[slot as usize])
    }

    pub fn contains_key(&self, key: &SocketKey) -> bool {
        self.places.contains_key(key)
    }

    /// Keeps `socket` under its key; returns the row it replaces there.
    pub fn insert(&mut self, socket: Socket) -> Option<Socket> {
        match self.places.get(&socket.key()) {
            Some(&slot) => Some(std::mem::replace(&mut self.rows[slot as usize], socket)),
            None => {
                let slot = u32::try_from(self.rows.len()).expect("fewer than 2^32 open sockets");
                self.places.insert(socket.key(), slot);
                self.order.insert(socket.key(), slot);
                self.rows.push(socket);
                None
            }
        }
    }

    pub fn remove(&mut self, key: &SocketKey) -> Option<Socket> {
        let slot = self.places.remove(key)? as usize;
        self.order.remove(key);
        let socket = self.rows.swap_remove(slot);
        if let Some(moved) = self.rows.get(slot) {
            self.places.insert(moved.key(), slot as u32);
            self.order.insert(moved.key(), slot as u32);
        }
        // After a storm of closes, give the room back (rows are half a kilobyte).
        if self.rows.capacity() > SHRINK_FROM && self.rows.len() < self.rows.capacity() / 4 {
            self.rows.shrink_to(self.rows.len() * 2);
        }
        Some(socket)
    }

    /// The rows in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Socket> + ExactSizeIterator {
        self.order.values().map(|&slot| &self.rows[slot as usize])
    }

    /// The rows whose keys are in `keys`, in key order.
    pub fn range(&self, keys: impl RangeBounds<SocketKey>) -> impl Iterator<Item = &Socket> {
        self.order
            .range(keys)
            .map(|(_, &slot)| &self.rows[slot as usize])
    }

    /// The rows of process `pid`, in fd order.
    pub fn of_process(&self, pid: u32) -> impl Iterator<Item = &Socket> {
        self.range(SocketKey { pid, fd: 0 }..=SocketKey { pid, fd: u32::MAX })
    }

    /// Every row, in no particular order: for a change that does not care.
    pub fn rows_mut(&mut self) -> impl Iterator<Item = &mut Socket> {
        self.rows.iter_mut()
    }

    /// The rows `sorted` names (items in key order, keyed by `key`), each with the range of
    /// `sorted` under its key (one item, but where a key was reused): a lookup each, or one
    /// walk beside the ordered index when they name nearly every row. Neither touches a row:
    /// the caller reads only the rows it wants ([`Self::slot`]).
    pub fn beside<T>(
        &self,
        sorted: &[T],
        key: impl Fn(&T) -> SocketKey,
    ) -> Vec<(Slot, Range<usize>)> {
        let mut found = Vec::with_capacity(sorted.len());
        let mut next = 0;
        if sorted.len() * WALK_FROM >= self.len() {
            let Some(first) = sorted.first() else {
                return found;
            };
            for (row, &slot) in self.order.range(key(first)..) {
                while sorted.get(next).is_some_and(|item| key(item) < *row) {
                    next += 1;
                }
                let start = next;
                while sorted.get(next).is_some_and(|item| key(item) == *row) {
                    next += 1;
                }
                if next > start {
                    found.push((Slot(slot), start..next));
                }
                if next == sorted.len() {
                    break;
                }
            }
        } else {
            while let Some(item) = sorted.get(next) {
                let row = key(item);
                let start = next;
                while sorted.get(next).is_some_and(|item| key(item) == row) {
                    next += 1;
                }
                if let Some(&slot) = self.places.get(&row) {
                    found.push((Slot(slot), start..next));
                }
            }
        }
        found
    }

    pub fn slot(&self, slot: Slot) -> &Socket {
        &self.rows[slot.0 as usize]
    }

    pub fn slot_mut(&mut self, slot: Slot) -> &mut Socket {
        &mut self.rows[slot.0 as usize]
    }
}

impl FromIterator<Socket> for OpenSockets {
    fn from_iter<I: IntoIterator<Item = Socket>>(sockets: I) -> Self {
        let mut open = Self::default();
        for socket in sockets {
            open.insert(socket);
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn socket(pid: u32, fd: u32) -> Socket {
        Socket::new(
            SocketKey { pid, fd },
            1,
            Ipv4Addr::LOCALHOST,
            80,
            format!("p{pid}"),
        )
    }

    fn keys(open: &OpenSockets) -> Vec<(u32, u32)> {
        open.values().map(|s| (s.id.key.pid, s.id.key.fd)).collect()
    }

    #[test]
    fn rows_come_in_key_order_whatever_was_removed() {
        let mut open: OpenSockets = [(2, 5), (1, 9), (2, 3), (1, 4)]
            .into_iter()
            .map(|(pid, fd)| socket(pid, fd))
            .collect();
        assert_eq!(keys(&open), [(1, 4), (1, 9), (2, 3), (2, 5)]);
        // The row in the first place: the last row takes it, and is still found by its key.
        let gone = open.remove(&SocketKey { pid: 2, fd: 5 }).expect("open");
        assert_eq!(gone.id.key, SocketKey { pid: 2, fd: 5 });
        assert_eq!(keys(&open), [(1, 4), (1, 9), (2, 3)]);
        for (pid, fd) in [(1, 4), (1, 9), (2, 3)] {
            let key = SocketKey { pid, fd };
            assert_eq!(open.get(&key).map(|s| s.id.key), Some(key));
        }
        assert!(open.remove(&SocketKey { pid: 2, fd: 5 }).is_none());
        let of_1: Vec<u32> = open
            .range(
                SocketKey { pid: 1, fd: 0 }..=SocketKey {
                    pid: 1,
                    fd: u32::MAX,
                },
            )
            .map(Socket::fd)
            .collect();
        assert_eq!(of_1, [4, 9]);
    }

    #[test]
    fn an_insert_under_a_kept_key_replaces_that_row() {
        let mut open = OpenSockets::default();
        assert!(open.insert(socket(1, 3)).is_none());
        let mut newer = socket(1, 3);
        newer.bytes_sent = 7;
        let older = open.insert(newer).expect("the row replaced");
        assert_eq!(older.bytes_sent, 0);
        assert_eq!(open.len(), 1);
        assert_eq!(open.values().map(|s| s.bytes_sent).sum::<u64>(), 7);
    }

    #[test]
    fn the_room_of_many_removed_rows_is_given_back() {
        let mut open: OpenSockets = (0..8 * SHRINK_FROM as u32)
            .map(|fd| socket(1, fd))
            .collect();
        let full = open.rows.capacity();
        for fd in 16..8 * SHRINK_FROM as u32 {
            open.remove(&SocketKey { pid: 1, fd });
        }
        assert_eq!(keys(&open), (0..16).map(|fd| (1, fd)).collect::<Vec<_>>());
        assert!(
            open.rows.capacity() < full / 4,
            "{} of {full}",
            open.rows.capacity()
        );
    }
}
