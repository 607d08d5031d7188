//! The pure reducer: the only owner of the dashboard's state.
//!
//! Everything that happens (a kernel event, a snapshot of the kernel's counters, a key) is an
//! [`Action`]; [`Model::update`] folds it into plain data. No I/O, no clock: time comes in with
//! the actions, so every behaviour is unit-testable.

use std::collections::{BTreeMap, VecDeque};

use sockwatch_common::SocketKey;

use crate::events::{
    CloseCause, CloseEvent, ConnectEvent, ConnectResult, Direction, Endpoint, KernelEvent,
    TrackedEntry,
};
use crate::{
    dns::{Answer, HostNames},
    rates::Rates,
    view_state::{self, ViewAction, ViewState},
};

/// How many closes the log pane keeps.
pub const CLOSE_LOG_CAPACITY: usize = 1000;
/// A row missing from this many consecutive snapshots is gone although its close event was
/// never seen (the event was lost); it is logged as such rather than kept forever.
const MISSING_SNAPSHOTS_BEFORE_REMOVAL: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowState {
    Connecting,
    Established,
}

/// One open socket in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketRow {
    pub socket: Endpoint,
    /// The thread that connected.
    pub tid: u32,
    pub connect_ns: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub state: RowState,
    /// Open before sockwatch started: counters start at zero when it did, AGE counts from then.
    pub preexisting: bool,
    missing_snapshots: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its end was seen: a `close()`, or an exit, exec, dup2 or close_range settled from the map.
    Closed(CloseCause),
    /// The socket left the kernel map without a close event reaching us (it was dropped).
    Vanished,
}

/// One line of the close log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedRow {
    pub socket: Endpoint,
    pub closed_ns: u64,
    pub lifetime_ns: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub reason: CloseReason,
}

/// Counters the kernel keeps about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ringbuf_drops: u64,
    pub tracked_full: u64,
    pub inflight_full: u64,
    /// Sockets user space removed after finding them gone in /proc (missed events).
    pub repairs: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Outbound connects, failed ones included.
    pub connects: u64,
    pub failed_connects: u64,
    /// Inbound connections accepted.
    pub accepts: u64,
    /// Sockets found open at start.
    pub existing: u64,
    pub closes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Kernel(KernelEvent),
    /// The kernel's `TRACKED` map as read at `now_ns` (kernel monotonic clock).
    Snapshot {
        entries: Vec<TrackedEntry>,
        now_ns: u64,
    },
    Counters(KernelCounters),
    /// A key's effect on what is shown (sort, filter, selection, ...): see `view_state`.
    View(ViewAction),
    /// A reverse DNS answer.
    HostName(Answer),
    Quit,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    rows: BTreeMap<SocketKey, SocketRow>,
    closes: VecDeque<ClosedRow>,
    pub totals: Totals,
    pub counters: KernelCounters,
    /// Kernel monotonic time of the latest snapshot: the "now" that ages are measured from.
    pub now_ns: u64,
    /// The probe backend in use, for the status line.
    pub backend: String,
    /// What the user chose to see; changed only by [`Action::View`].
    pub view: ViewState,
    /// Per-socket and overall rates, from consecutive snapshots.
    pub rates: Rates,
    /// Names of destination addresses.
    pub hosts: HostNames,
    pub quit: bool,
}

impl Model {
    pub fn new(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
            ..Self::default()
        }
    }

    /// Open sockets in table order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &SocketRow> {
        self.rows.values()
    }

    /// Closes, newest first.
    pub fn closes(&self) -> impl ExactSizeIterator<Item = &ClosedRow> {
        self.closes.iter().rev()
    }

    pub fn update(&mut self, action: Action) {
        match action {
            Action::Kernel(event) => {
                // The table changed: the settled view is out of date until the next settle.
                self.view.settled = None;
                match event {
                    KernelEvent::Connect(event) => self.on_connect(event),
                    KernelEvent::Close(event) => self.on_close(event),
                }
            }
            Action::Snapshot { entries, now_ns } => {
                self.on_snapshot(entries, now_ns);
                self.rates
                    .observe(self.rows.values(), &self.totals, self.now_ns);
                view_state::refresh(self);
            }
            Action::Counters(counters) => self.counters = counters,
            Action::View(action) => view_state::apply(self, action),
            Action::HostName(answer) => {
                self.hosts.answer(answer, self.now_ns);
                // Names show in the table and the filter matches them.
                self.view.settled = None;
            }
            Action::Quit => self.quit = true,
        }
    }

    fn on_connect(&mut self, event: ConnectEvent) {
        match (event.result, event.socket.direction) {
            (ConnectResult::Existing, _) => self.totals.existing += 1,
            (_, Direction::In) => self.totals.accepts += 1,
            (_, Direction::Out) => self.totals.connects += 1,
        }
        if !event.result.is_tracked() {
            self.totals.failed_connects += 1;
            return;
        }
        let state = if event.result == ConnectResult::InProgress {
            RowState::Connecting
        } else {
            RowState::Established
        };
        let preexisting = event.result == ConnectResult::Existing;
        let key = event.socket.key;
        match self.rows.get_mut(&key) {
            // A snapshot already showed this very socket (same connect time): keep its counters.
            Some(row) if row.connect_ns == event.ts_ns => {}
            _ => {
                self.rows.insert(
                    key,
                    SocketRow {
                        socket: event.socket,
                        tid: event.tid,
                        connect_ns: event.ts_ns,
                        bytes_sent: 0,
                        bytes_recv: 0,
                        state,
                        preexisting,
                        missing_snapshots: 0,
                    },
                );
            }
        }
    }

    fn on_close(&mut self, event: CloseEvent) {
        self.totals.closes += 1;
        if self
            .rows
            .get(&event.socket.key)
            .is_some_and(|row| row.connect_ns == event.connect_ns)
        {
            self.rows.remove(&event.socket.key);
        }
        self.log_close(ClosedRow {
            lifetime_ns: event.lifetime_ns(),
            socket: event.socket,
            closed_ns: event.ts_ns,
            bytes_sent: event.bytes_sent,
            bytes_recv: event.bytes_recv,
            reason: CloseReason::Closed(event.cause),
        });
    }

    fn on_snapshot(&mut self, entries: Vec<TrackedEntry>, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        for row in self.rows.values_mut() {
            row.missing_snapshots = row.missing_snapshots.saturating_add(1);
        }
        for entry in entries {
            let row = self
                .rows
                .entry(entry.socket.key)
                .or_insert_with(|| SocketRow {
                    socket: entry.socket.clone(),
                    tid: entry.tid,
                    connect_ns: entry.connect_ns,
                    bytes_sent: 0,
                    bytes_recv: 0,
                    state: RowState::Connecting,
                    preexisting: entry.preexisting,
                    missing_snapshots: 0,
                });
            if row.connect_ns != entry.connect_ns {
                // The fd was closed and reused and we missed the close: the new socket starts over.
                *row = SocketRow {
                    socket: entry.socket.clone(),
                    tid: entry.tid,
                    connect_ns: entry.connect_ns,
                    bytes_sent: 0,
                    bytes_recv: 0,
                    state: RowState::Connecting,
                    preexisting: entry.preexisting,
                    missing_snapshots: 0,
                };
            }
            row.bytes_sent = entry.bytes_sent;
            row.bytes_recv = entry.bytes_recv;
            row.missing_snapshots = 0;
            if entry.established {
                row.state = RowState::Established;
            }
        }
        let vanished: Vec<SocketKey> = self
            .rows
            .iter()
            .filter(|(_, row)| row.missing_snapshots >= MISSING_SNAPSHOTS_BEFORE_REMOVAL)
            .map(|(key, _)| *key)
            .collect();
        for key in vanished {
            if let Some(row) = self.rows.remove(&key) {
                self.log_close(ClosedRow {
                    lifetime_ns: now_ns.saturating_sub(row.connect_ns),
                    socket: row.socket,
                    closed_ns: now_ns,
                    bytes_sent: row.bytes_sent,
                    bytes_recv: row.bytes_recv,
                    reason: CloseReason::Vanished,
                });
            }
        }
    }

    fn log_close(&mut self, closed: ClosedRow) {
        if self.closes.len() == CLOSE_LOG_CAPACITY {
            self.closes.pop_front();
        }
        self.closes.push_back(closed);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::events::ConnectResult;

    fn endpoint(pid: u32, fd: u32) -> Endpoint {
        Endpoint::new(SocketKey { pid, fd }, Ipv4Addr::LOCALHOST, 8080, "curl")
    }

    fn connect(pid: u32, fd: u32, ts_ns: u64, result: ConnectResult) -> Action {
        Action::Kernel(KernelEvent::Connect(ConnectEvent {
            socket: endpoint(pid, fd),
            tid: pid + 1,
            result,
            ts_ns,
        }))
    }

    fn close(pid: u32, fd: u32, connect_ns: u64, ts_ns: u64, sent: u64) -> Action {
        Action::Kernel(KernelEvent::Close(CloseEvent {
            socket: endpoint(pid, fd),
            tid: pid,
            connect_tid: pid + 1,
            ts_ns,
            connect_ns,
            bytes_sent: sent,
            bytes_recv: 0,
            cause: CloseCause::Close,
            preexisting: false,
        }))
    }

    fn tracked(pid: u32, fd: u32, connect_ns: u64, sent: u64) -> TrackedEntry {
        TrackedEntry {
            socket: endpoint(pid, fd),
            tid: pid + 1,
            connect_ns,
            bytes_sent: sent,
            bytes_recv: 0,
            established: true,
            preexisting: false,
        }
    }

    #[test]
    fn connect_adds_a_row_and_close_moves_it_to_the_log() {
        let mut model = Model::new("tracepoint");
        model.update(connect(10, 3, 100, ConnectResult::Ok));
        assert_eq!(model.rows().len(), 1);
        let row = model.rows().next().expect("one row");
        assert_eq!((row.tid, row.state), (11, RowState::Established));

        model.update(close(10, 3, 100, 1_100, 64));
        assert_eq!(model.rows().len(), 0);
        let logged = model.closes().next().expect("one close");
        assert_eq!((logged.bytes_sent, logged.lifetime_ns), (64, 1_000));
        assert_eq!(logged.reason, CloseReason::Closed(CloseCause::Close));
        assert_eq!(
            model.totals,
            Totals {
                connects: 1,
                closes: 1,
                ..Totals::default()
            }
        );
    }

    #[test]
    fn failed_connects_are_counted_not_shown() {
        let mut model = Model::new("tracepoint");
        model.update(connect(
            10,
            3,
            100,
            ConnectResult::Failed(libc::ECONNREFUSED),
        ));
        assert_eq!(model.rows().len(), 0);
        assert_eq!(model.totals.failed_connects, 1);
    }

    #[test]
    fn in_progress_connect_is_connecting_until_the_kernel_says_established() {
        let mut model = Model::new("tracepoint");
        model.update(connect(10, 3, 100, ConnectResult::InProgress));
        assert_eq!(
            model.rows().next().map(|r| r.state),
            Some(RowState::Connecting)
        );
        model.update(Action::Snapshot {
            entries: vec![tracked(10, 3, 100, 5)],
            now_ns: 200,
        });
        let row = model.rows().next().expect("row");
        assert_eq!((row.state, row.bytes_sent), (RowState::Established, 5));
    }

    #[test]
    fn snapshots_update_counters_and_show_sockets_whose_event_is_pending() {
        let mut model = Model::new("tracepoint");
        model.update(Action::Snapshot {
            entries: vec![tracked(10, 3, 100, 7)],
            now_ns: 150,
        });
        assert_eq!(model.rows().next().map(|r| r.bytes_sent), Some(7));
        // The connect event arriving late must not reset the counters of the same socket.
        model.update(connect(10, 3, 100, ConnectResult::Ok));
        assert_eq!(model.rows().next().map(|r| r.bytes_sent), Some(7));
        assert_eq!(model.now_ns, 150);
    }

    #[test]
    fn reused_fd_starts_a_new_row_from_zero() {
        let mut model = Model::new("tracepoint");
        model.update(connect(10, 3, 100, ConnectResult::Ok));
        model.update(Action::Snapshot {
            entries: vec![tracked(10, 3, 100, 50)],
            now_ns: 150,
        });
        model.update(close(10, 3, 100, 200, 50));
        model.update(connect(10, 3, 300, ConnectResult::Ok));
        let row = model.rows().next().expect("row");
        assert_eq!((row.connect_ns, row.bytes_sent), (300, 0));
        // A stale close of the old socket must not remove the new one.
        model.update(close(10, 3, 100, 400, 50));
        assert_eq!(model.rows().len(), 1);
    }

    #[test]
    fn rows_missing_from_snapshots_are_logged_as_vanished() {
        let mut model = Model::new("tracepoint");
        model.update(connect(10, 3, 100, ConnectResult::Ok));
        model.update(Action::Snapshot {
            entries: vec![],
            now_ns: 200,
        });
        assert_eq!(
            model.rows().len(),
            1,
            "one miss may be a close event still in flight"
        );
        model.update(Action::Snapshot {
            entries: vec![],
            now_ns: 300,
        });
        assert_eq!(model.rows().len(), 0);
        let logged = model.closes().next().expect("logged");
        assert_eq!(
            (logged.reason, logged.lifetime_ns),
            (CloseReason::Vanished, 200)
        );
    }

    #[test]
    fn close_log_is_bounded() {
        let mut model = Model::new("tracepoint");
        for i in 0..(CLOSE_LOG_CAPACITY as u64 + 5) {
            model.update(close(10, 3, i, i + 1, i));
        }
        assert_eq!(model.closes().len(), CLOSE_LOG_CAPACITY);
        assert_eq!(
            model.closes().next().map(|c| c.bytes_sent),
            Some(CLOSE_LOG_CAPACITY as u64 + 4)
        );
    }
}
