//! The second stage: the one owner of what is known about sockets. A pure reducer: the kernel
//! stage's [`Change`]s and map reads come in as [`Action`]s with their own timestamps, and
//! [`Model::update`] folds them into the open sockets, the close log, the totals and the rates.
//! The dashboard and `--json` both run it, so they share one history.

pub mod dns;
pub mod processes;

use std::collections::VecDeque;

use self::{
    dns::{Answer, HostNames},
    processes::Processes,
};
use crate::{
    kernel::{by_socket::Count, diag::Readings, loader::KernelCounters, tracker::Change},
    open_sockets::OpenSockets,
    socket::{
        prefetch, CloseCause, Closed, ClosedBy, LookedUp, Origin, Process, Socket, SocketId, State,
        Throughput, PREFETCH_AHEAD,
    },
};

/// How many closed sockets the close log keeps.
pub const CLOSE_LOG_CAPACITY: usize = 1000;
const SEC: u64 = 1_000_000_000;
/// Connects and closes per second are averaged over this long, so a connect every 1.3 s does not
/// read 1, 0, 1, 1, 0.
const ACTIVITY_WINDOW_NS: u64 = 5 * SEC;

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
    /// Closes found by the check against /proc: events the probes missed.
    pub repairs: u64,
    /// Closes whose record was lost (the socket left the kernel map unannounced).
    pub vanished: u64,
}

/// Machine-wide activity per second, for the header.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Activity {
    pub connects_per_sec: f64,
    pub closes_per_sec: f64,
    /// Sum over open sockets.
    pub bytes: Throughput,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Change(Change),
    /// The kernel's map as read at `now_ns` (kernel monotonic clock).
    Snapshot {
        map: Vec<Socket>,
        now_ns: u64,
    },
    /// The counters that moved as read at `now_ns` (a refresh that did not read the maps whole:
    /// see `kernel::by_socket`); a socket without one did not move since the last refresh.
    Counts {
        counts: Vec<Count>,
        now_ns: u64,
    },
    Counters(KernelCounters),
    /// TCP health as the kernel's diagnostics read it at `now_ns`, by socket inode, with the
    /// rest of the reading of the socket `detail_of` (the one the details view shows).
    Health {
        readings: Readings,
        detail_of: Option<SocketId>,
        now_ns: u64,
        /// How long the read took, and how long until the next (set by that cost).
        cost_ns: u64,
        every_ns: u64,
    },
    /// A reverse DNS answer.
    HostName(Answer),
    /// What process `pid` is (`None`: gone before it could be read), read at `now_ns` because
    /// [`Processes::wants`] it.
    Process {
        pid: u32,
        process: Option<Process>,
        now_ns: u64,
    },
}

/// The latest TCP health read: when, what it cost, and how long until the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthRead {
    pub at_ns: u64,
    pub cost_ns: u64,
    pub every_ns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    /// The open sockets: the only set of them in user space.
    pub open: OpenSockets,
    /// Closed sockets, oldest first, bounded.
    closed: VecDeque<Socket>,
    pub totals: Totals,
    pub counters: KernelCounters,
    /// Kernel monotonic time of the latest map read: the "now" that ages are measured from.
    pub now_ns: u64,
    /// The probe backend in use, for the status line.
    pub backend: String,
    pub activity: Activity,
    /// (time, connects + accepts, closes) of recent map reads, oldest first.
    activity_window: VecDeque<(u64, u64, u64)>,
    /// Names of remote addresses.
    pub hosts: HostNames,
    /// Each process's owner and namespace pid, by pid.
    pub processes: Processes,
    /// Without rates (and their history): what `--json` needs, at a fraction of the memory.
    pub counts_only: bool,
    /// The kernel's socket diagnostics cannot be read: no TCP health (said where it would be).
    pub health_unavailable: bool,
    /// When TCP health was last read, what the read cost and how long until the next (for the
    /// details view: with many sockets it is read less often than the refresh).
    pub health_read: Option<HealthRead>,
    /// What the details view shows of one socket beyond its row (who holds it, the rest of its
    /// TCP reading), looked up while it is shown.
    looked_up: Option<LookedUp>,
    /// Sockets that became rows since the kernel stage last took them (opened, or moved to
    /// another key), so that it locates their counters; `None` once more than [`FRESH_CAP`]
    /// did (it then reads the maps whole).
    fresh: Option<Vec<SocketId>>,
}

/// New rows kept for the kernel stage to locate, at most: past this many, a full read of the
/// maps is cheaper anyway.
pub const FRESH_CAP: usize = 65_536;

impl Model {
    pub fn new(backend: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
            ..Self::default()
        }
    }

    /// A model that keeps counts but no rates or history (for `--json`).
    pub fn counts_only(backend: impl Into<String>) -> Self {
        Self {
            counts_only: true,
            ..Self::new(backend)
        }
    }

    /// Closed sockets, newest first.
    pub fn closes(&self) -> impl ExactSizeIterator<Item = &Socket> + DoubleEndedIterator {
        self.closed.iter().rev()
    }

    /// A socket by identity, open or in the close log.
    pub fn socket(&self, id: SocketId) -> Option<&Socket> {
        self.open
            .get(&id.key)
            .filter(|s| s.id == id)
            .or_else(|| self.closed.iter().rev().find(|s| s.id == id))
    }

    /// The open sockets of `ids` (in id order), in that order.
    pub fn open_of(&self, ids: &[SocketId]) -> Vec<&Socket> {
        let rows = self.open.beside(ids, |id| id.key);
        let mut found = Vec::with_capacity(rows.len());
        for (slot, range) in rows {
            let socket = self.open.slot(slot);
            if ids[range].contains(&socket.id) {
                found.push(socket);
            }
        }
        found
    }

    pub fn update(&mut self, action: Action) {
        match action {
            Action::Change(change) => {
                self.apply(change);
            }
            Action::Snapshot { map, now_ns } => {
                self.snapshot(map, now_ns);
                self.processes.sweep(&self.open, self.closed.iter());
            }
            Action::Counts { counts, now_ns } => {
                self.counts(counts, now_ns);
                self.processes.sweep(&self.open, self.closed.iter());
            }
            Action::Counters(counters) => self.counters = counters,
            Action::Health {
                readings,
                detail_of,
                now_ns,
                cost_ns,
                every_ns,
            } => {
                self.health_read = Some(HealthRead {
                    at_ns: now_ns,
                    cost_ns,
                    every_ns,
                });
                self.observe_health(&readings, now_ns);
                if let (Some(id), Some(tcp)) = (detail_of, readings.detail) {
                    self.looked_up_mut(id).tcp = Some(tcp);
                }
            }
            Action::HostName(answer) => self.hosts.answer(answer, self.now_ns),
            Action::Process {
                pid,
                process,
                now_ns,
            } => self.processes.insert(pid, process, now_ns),
        }
    }

    /// Folds in one change; returns the socket as the model now keeps it (for a close: with
    /// everything learned while it was open; for a failed connect: its line in the close log).
    pub fn apply(&mut self, change: Change) -> Option<&Socket> {
        match change {
            Change::Opened(socket) => {
                match socket.origin {
                    Origin::Existing => self.totals.existing += 1,
                    Origin::Accept => self.totals.accepts += 1,
                    Origin::Connect => self.totals.connects += 1,
                }
                let key = socket.key();
                match self.open.get_mut(&key) {
                    // A map read showed this very socket already: keep its counters and rates,
                    // take what the record knows better (the tracker's local port and peer).
                    Some(kept) if kept.id == socket.id => kept.learn(&socket),
                    // A record older than the socket the map showed on this fd: stale.
                    Some(kept) if kept.id > socket.id => {}
                    _ => {
                        self.note_fresh(socket.id);
                        self.open.insert(socket);
                    }
                }
                self.open.get(&key)
            }
            Change::Moved { from, to, comm } => {
                if self.open.get(&from.key).is_none_or(|s| s.id != from) {
                    return None;
                }
                let mut socket = self.open.remove(&from.key)?;
                socket.id.key = to;
                socket.comm = comm;
                // What the details view looked up goes with it (the view follows it there).
                if let Some(looked) = self.looked_up.as_mut().filter(|l| l.id == from) {
                    looked.id = socket.id;
                }
                self.note_fresh(socket.id);
                self.open.insert(socket);
                self.open.get(&to)
            }
            Change::Holders { id, holders } => {
                self.open.get(&id.key).filter(|s| s.id == id)?;
                self.looked_up_mut(id).holders = holders;
                self.open.get(&id.key)
            }
            Change::Partial(id) => {
                let kept = self.open.get_mut(&id.key).filter(|s| s.id == id)?;
                kept.complete = false;
                Some(kept)
            }
            Change::Failed { socket, errno } => {
                self.totals.connects += 1;
                self.totals.failed_connects += 1;
                // A line in the close log: the attempt, how long it took, and why it failed.
                let mut record = socket;
                let took_ns = record.connect_us().unwrap_or(0).saturating_mul(1000);
                let closed = Closed {
                    at_ns: record.id.opened_ns.saturating_add(took_ns),
                    tid: record.tid,
                    cause: CloseCause::Close,
                };
                record.close(closed, 0, 0);
                record.closed_by = Some(ClosedBy::Failed);
                record.set_error(Some(errno));
                self.log_close(record)
            }
            Change::Closed(socket) => {
                let closed = socket.closed?;
                self.totals.closes += 1;
                match closed.cause {
                    CloseCause::Reconciled => self.totals.repairs += 1,
                    CloseCause::Vanished => self.totals.vanished += 1,
                    _ => {}
                }
                // A non-blocking connect that failed after it returned: counted at its close.
                if socket.failed().is_some() {
                    self.totals.failed_connects += 1;
                }
                let record = match self.open.remove(&socket.key()) {
                    Some(mut open) if open.id == socket.id => {
                        open.close(closed, socket.bytes_sent, socket.bytes_recv);
                        open.complete &= socket.complete;
                        if open.lport == 0 {
                            open.lport = socket.lport;
                        }
                        open.closed_by = socket.closed_by;
                        open.set_error(socket.error());
                        if socket.connect_us().is_some() {
                            open.set_connect_us(socket.connect_us());
                        }
                        open
                    }
                    other => {
                        // Not the socket this close is about (or none): leave it open.
                        if let Some(other) = other {
                            self.open.insert(other);
                        }
                        socket
                    }
                };
                self.log_close(record)
            }
        }
    }

    /// Adds a closed socket to the close log (the oldest goes when it is full).
    fn log_close(&mut self, record: Socket) -> Option<&Socket> {
        if self.closed.len() == CLOSE_LOG_CAPACITY {
            self.closed.pop_front();
        }
        self.closed.push_back(record);
        self.closed.back()
    }

    fn snapshot(&mut self, map: Vec<Socket>, now_ns: u64) {
        // Sockets no refresh told of since (idle) were idle until the previous read.
        let since_ns = self.now_ns;
        self.now_ns = self.now_ns.max(now_ns);
        for entry in map {
            match self.open.get_mut(&entry.key()) {
                Some(kept) if kept.id == entry.id => {
                    kept.complete &= entry.complete;
                    if self.counts_only {
                        kept.bytes_sent = entry.bytes_sent;
                        kept.bytes_recv = entry.bytes_recv;
                    } else {
                        kept.observe_since(entry.bytes_sent, entry.bytes_recv, since_ns, now_ns);
                    }
                    if entry.state == State::Established {
                        kept.state = State::Established;
                    }
                }
                // An older socket than the one we know: a read that raced a reuse of the fd.
                Some(kept) if kept.id > entry.id => {}
                // Its open record is still on its way (or was lost): show it from the map.
                _ => {
                    let (sent, recv) = (entry.bytes_sent, entry.bytes_recv);
                    let mut socket = entry;
                    if !self.counts_only {
                        socket.observe(sent, recv, now_ns);
                    }
                    self.open.insert(socket);
                }
            }
        }
        if !self.counts_only {
            self.activity.bytes = self.open.values().fold(Throughput::default(), |sum, s| {
                sum.saturating_add(s.rates.now)
            });
            self.observe_activity(now_ns);
        }
    }

    fn note_fresh(&mut self, id: SocketId) {
        if let Some(fresh) = &mut self.fresh {
            if fresh.len() < FRESH_CAP {
                fresh.push(id);
            } else {
                self.fresh = None;
            }
        }
    }

    /// The rows new since the last call ([`Self::fresh`]); `None` when too many to list.
    pub fn take_fresh(&mut self) -> Option<Vec<SocketId>> {
        self.fresh.replace(Vec::new())
    }

    /// Takes the counters that moved at a refresh: only those sockets are touched (the others,
    /// idle, catch up when they next move or are looked at: `Rates::history_at`).
    fn counts(&mut self, mut counts: Vec<Count>, now_ns: u64) {
        let since_ns = self.now_ns;
        self.now_ns = self.now_ns.max(now_ns);
        let counts_only = self.counts_only;
        let mut bytes = Throughput::default();
        let mut take = |socket: &mut Socket, count: Count| {
            if count.sent > 0 || count.recv > 0 {
                // A non-blocking connect has completed once any byte moved.
                socket.state = State::Established;
            }
            if counts_only {
                socket.bytes_sent = count.sent;
                socket.bytes_recv = count.recv;
            } else {
                socket.observe_since(count.sent, count.recv, since_ns, now_ns);
                bytes = bytes.saturating_add(socket.rates.now);
            }
        };
        // In key order, the rows counted are found by the index alone, then read in turn, each
        // asked for a few ahead of its turn.
        counts.sort_unstable_by_key(|c| c.id);
        let found = self.open.beside(&counts, |c| c.id.key);
        for (i, (slot, range)) in found.iter().enumerate() {
            if let Some(&(ahead, _)) = found.get(i + PREFETCH_AHEAD) {
                prefetch(self.open.slot(ahead));
            }
            let socket = self.open.slot_mut(*slot);
            for count in &counts[range.clone()] {
                if count.id == socket.id {
                    take(socket, *count);
                }
            }
        }
        if !self.counts_only {
            // The others' rates are zero: told once more after they last moved.
            self.activity.bytes = bytes;
            self.observe_activity(now_ns);
        }
    }

    /// Open sockets the reading found (by inode) take their health; the others keep their
    /// last one.
    fn observe_health(&mut self, readings: &Readings, now_ns: u64) {
        if readings.is_empty() {
            return;
        }
        for socket in self.open.rows_mut() {
            if let Some(reading) = socket
                .inode()
                .and_then(|inode| readings.by_inode.get(&inode))
            {
                socket.observe_tcp(*reading, now_ns);
            }
        }
    }

    /// What was looked up of socket `id` for the details view, if it is the one looked up.
    pub fn looked_up(&self, id: SocketId) -> Option<&LookedUp> {
        self.looked_up.as_ref().filter(|looked| looked.id == id)
    }

    /// The record of what is looked up of `id`: one socket's at a time (the one shown).
    fn looked_up_mut(&mut self, id: SocketId) -> &mut LookedUp {
        if self.looked_up.as_ref().is_none_or(|looked| looked.id != id) {
            self.looked_up = Some(LookedUp::new(id));
        }
        self.looked_up.get_or_insert_with(|| LookedUp::new(id))
    }

    /// Connects and closes per second, as of a read at `now_ns` (`activity.bytes` is the
    /// caller's).
    fn observe_activity(&mut self, now_ns: u64) {
        let opened = self.totals.connects.saturating_add(self.totals.accepts);
        let closes = self.totals.closes;
        // Keep one sample at least a window old (or the oldest there is) to measure from.
        while self.activity_window.len() > 1
            && self.activity_window[1].0.saturating_add(ACTIVITY_WINDOW_NS) <= now_ns
        {
            self.activity_window.pop_front();
        }
        if let Some(&(since_ns, since_opened, since_closes)) = self.activity_window.front() {
            let elapsed = now_ns.saturating_sub(since_ns);
            if elapsed > 0 {
                let secs = elapsed as f64 / SEC as f64;
                self.activity.connects_per_sec = opened.saturating_sub(since_opened) as f64 / secs;
                self.activity.closes_per_sec = closes.saturating_sub(since_closes) as f64 / secs;
            }
        }
        self.activity_window.push_back((now_ns, opened, closes));
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::socket::{Closed, SocketKey};

    fn socket(pid: u32, fd: u32, opened_ns: u64) -> Socket {
        Socket::new(
            SocketKey { pid, fd },
            opened_ns,
            Ipv4Addr::LOCALHOST,
            8080,
            "curl",
        )
    }

    fn opened(pid: u32, fd: u32, opened_ns: u64) -> Action {
        Action::Change(Change::Opened(socket(pid, fd, opened_ns)))
    }

    fn closed(pid: u32, fd: u32, opened_ns: u64, at_ns: u64, sent: u64) -> Action {
        closed_by(pid, fd, opened_ns, at_ns, sent, CloseCause::Close)
    }

    fn closed_by(
        pid: u32,
        fd: u32,
        opened_ns: u64,
        at_ns: u64,
        sent: u64,
        cause: CloseCause,
    ) -> Action {
        let mut s = socket(pid, fd, opened_ns);
        s.close(
            Closed {
                at_ns,
                tid: pid,
                cause,
            },
            sent,
            0,
        );
        Action::Change(Change::Closed(s))
    }

    fn read(entries: &[(u32, u32, u64, u64)], now_ns: u64) -> Action {
        let map = entries
            .iter()
            .map(|&(pid, fd, opened_ns, sent)| {
                let mut s = socket(pid, fd, opened_ns);
                s.bytes_sent = sent;
                s
            })
            .collect();
        Action::Snapshot { map, now_ns }
    }

    #[test]
    fn an_open_socket_moves_to_the_log_when_it_closes() {
        let mut model = Model::new("tracepoint");
        model.update(opened(10, 3, 100));
        assert_eq!(model.open.len(), 1);
        model.update(closed(10, 3, 100, 1_100, 64));
        assert!(model.open.is_empty());
        let logged = model.closes().next().expect("one close");
        assert_eq!((logged.bytes_sent, logged.age_ns(0)), (64, 1_000));
        assert_eq!(logged.closed.map(|c| c.cause), Some(CloseCause::Close));
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
    fn a_moved_socket_keeps_its_counts_and_rates_under_its_new_holder() {
        let mut model = Model::new("socket");
        model.update(opened(10, 3, SEC));
        model.update(read(&[(10, 3, SEC, 4000)], 3 * SEC));
        let from = SocketId::new(SocketKey { pid: 10, fd: 3 }, SEC);
        let to = SocketKey { pid: 11, fd: 3 };
        let stale = Change::Moved {
            from: SocketId::new(from.key, 2 * SEC),
            to,
            comm: "worker".into(),
        };
        assert!(model.apply(stale).is_none(), "not the socket open there");
        let moved = model
            .apply(Change::Moved {
                from,
                to,
                comm: "worker".into(),
            })
            .expect("moved")
            .clone();
        assert_eq!((moved.key(), moved.comm.as_str()), (to, "worker"));
        assert_eq!(moved.bytes_sent, 4000);
        assert_eq!(moved.rates.now.send, 2000, "rates go on");
        assert_eq!(model.open.len(), 1, "one socket, one row");
        model.update(closed(11, 3, SEC, 5 * SEC, 6000));
        assert!(model.open.is_empty());
        assert_eq!(model.closes().last().map(|s| s.bytes_sent), Some(6000));
        assert_eq!(model.totals.closes, 1);
    }

    #[test]
    fn a_close_keeps_what_was_learned_while_open() {
        let mut model = Model::new("tracepoint");
        let mut accepted = socket(10, 3, 100);
        accepted.lport = 8080;
        accepted.set_daddr(Ipv4Addr::new(127, 0, 0, 2));
        accepted.origin = Origin::Accept;
        model.update(Action::Change(Change::Opened(accepted)));
        model.update(read(&[(10, 3, 100, 40)], 2 * SEC));
        // The kernel's close record knows neither the local port nor (here) the peer.
        let mut record = socket(10, 3, 100);
        record.set_daddr(Ipv4Addr::UNSPECIFIED);
        record.close(
            Closed {
                at_ns: 3 * SEC,
                tid: 10,
                cause: CloseCause::Close,
            },
            50,
            0,
        );
        let kept = model.apply(Change::Closed(record)).expect("logged").clone();
        assert_eq!(
            (kept.lport, kept.daddr()),
            (8080, IpAddr::from(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(kept.bytes_sent, 50, "final counts from the close");
        assert_eq!(kept.rates.history.len(), 1, "its history stays");
        assert_eq!(model.totals.accepts, 1);
    }

    #[test]
    fn an_open_record_after_a_map_read_adds_what_it_knows_and_keeps_the_counts() {
        let mut model = Model::new("tracepoint");
        model.update(read(&[(10, 3, 100, 7)], 2 * SEC));
        let mut accepted = socket(10, 3, 100);
        accepted.lport = 8080;
        accepted.set_daddr(Ipv4Addr::new(127, 0, 0, 9));
        accepted.origin = Origin::Accept;
        accepted.direction = crate::socket::Direction::In;
        let kept = model.apply(Change::Opened(accepted)).expect("kept").clone();
        assert_eq!(
            (kept.lport, kept.daddr()),
            (8080, IpAddr::from(Ipv4Addr::new(127, 0, 0, 9)))
        );
        assert_eq!((kept.origin, kept.bytes_sent), (Origin::Accept, 7));
        // A record older than the socket on that fd changes nothing.
        model.update(opened(10, 3, 50));
        assert_eq!(
            model.open.values().next().map(|s| s.id.opened_ns),
            Some(100)
        );
    }

    #[test]
    fn counts_only_keeps_no_rates() {
        let mut model = Model::counts_only("tracepoint");
        model.update(opened(10, 3, SEC));
        model.update(read(&[(10, 3, SEC, 500)], 3 * SEC));
        let kept = model.open.values().next().expect("open");
        assert_eq!(kept.bytes_sent, 500);
        assert!(kept.rates.history.is_empty() && kept.rates.now.send == 0);
    }

    #[test]
    fn failed_connects_are_counted_and_logged_not_kept() {
        let mut model = Model::new("tracepoint");
        let mut attempt = socket(10, 3, 100);
        attempt.set_connect_us(Some(40));
        let logged = model
            .apply(Change::Failed {
                socket: attempt,
                errno: libc::ECONNREFUSED,
            })
            .expect("logged")
            .clone();
        assert_eq!(logged.failed(), Some(libc::ECONNREFUSED));
        assert_eq!(logged.age_ns(u64::MAX), 40_000, "as long as the attempt");
        assert!(model.open.is_empty());
        assert_eq!(model.closes().len(), 1);
        assert_eq!(
            (model.totals.connects, model.totals.failed_connects),
            (1, 1)
        );
        // A non-blocking connect that failed later: counted at its close.
        let mut connecting = socket(10, 4, 200);
        connecting.state = State::Connecting;
        model.apply(Change::Opened(connecting.clone()));
        connecting.close(
            Closed {
                at_ns: 300,
                tid: 10,
                cause: CloseCause::Close,
            },
            0,
            0,
        );
        connecting.closed_by = Some(ClosedBy::Failed);
        connecting.set_error(Some(libc::ECONNREFUSED));
        let closed = model
            .apply(Change::Closed(connecting))
            .expect("closed")
            .clone();
        assert_eq!(closed.failed(), Some(libc::ECONNREFUSED));
        assert_eq!(
            (model.totals.connects, model.totals.failed_connects),
            (2, 2)
        );
    }

    #[test]
    fn a_connecting_socket_is_established_once_the_map_says_so() {
        let mut model = Model::new("tracepoint");
        let mut connecting = socket(10, 3, 100);
        connecting.state = State::Connecting;
        model.update(Action::Change(Change::Opened(connecting)));
        assert_eq!(
            model.open.values().next().map(|s| s.state),
            Some(State::Connecting)
        );
        model.update(read(&[(10, 3, 100, 5)], 200));
        let kept = model.open.values().next().expect("open");
        assert_eq!((kept.state, kept.bytes_sent), (State::Established, 5));
    }

    #[test]
    fn map_reads_show_sockets_whose_record_is_pending_and_keep_their_counts() {
        let mut model = Model::new("tracepoint");
        model.update(read(&[(10, 3, 100, 7)], 150));
        assert_eq!(model.open.values().next().map(|s| s.bytes_sent), Some(7));
        // The open record arriving late must not reset the counters of the same socket.
        model.update(opened(10, 3, 100));
        assert_eq!(model.open.values().next().map(|s| s.bytes_sent), Some(7));
        assert_eq!(model.now_ns, 150);
    }

    #[test]
    fn a_reused_fd_starts_a_new_socket_from_zero_and_stale_closes_leave_it() {
        let mut model = Model::new("tracepoint");
        model.update(opened(10, 3, 100));
        model.update(read(&[(10, 3, 100, 50)], 150));
        model.update(closed(10, 3, 100, 200, 50));
        model.update(opened(10, 3, 300));
        let kept = model.open.values().next().expect("open");
        assert_eq!((kept.id.opened_ns, kept.bytes_sent), (300, 0));
        // A stale close of the old socket must not remove the new one.
        model.update(closed(10, 3, 100, 400, 50));
        assert_eq!(model.open.len(), 1);
    }

    #[test]
    fn repairs_and_lost_closes_are_counted() {
        let mut model = Model::new("tracepoint");
        model.update(opened(10, 3, 100));
        model.update(opened(10, 4, 100));
        model.update(closed_by(10, 3, 100, 200, 0, CloseCause::Reconciled));
        model.update(closed_by(10, 4, 100, 200, 0, CloseCause::Vanished));
        assert_eq!((model.totals.repairs, model.totals.vanished), (1, 1));
        assert_eq!(model.totals.closes, 2);
    }

    #[test]
    fn the_close_log_is_bounded() {
        let mut model = Model::new("tracepoint");
        for i in 0..(CLOSE_LOG_CAPACITY as u64 + 5) {
            model.update(closed(10, 3, i, i + 1, i));
        }
        assert_eq!(model.closes().len(), CLOSE_LOG_CAPACITY);
        assert_eq!(
            model.closes().next().map(|c| c.bytes_sent),
            Some(CLOSE_LOG_CAPACITY as u64 + 4)
        );
    }

    fn count(pid: u32, fd: u32, opened_ns: u64, sent: u64) -> Count {
        Count {
            id: SocketId::new(SocketKey { pid, fd }, opened_ns),
            sent,
            recv: 0,
        }
    }

    #[test]
    fn a_refresh_touches_only_the_sockets_it_has_counts_for() {
        let mut model = Model::new("socket");
        for fd in [3, 4, 5] {
            model.update(opened(10, fd, SEC));
        }
        let refresh = |model: &mut Model, counts: Vec<Count>, now_ns| {
            model.update(Action::Counts { counts, now_ns });
        };
        refresh(
            &mut model,
            vec![count(10, 3, SEC, 100), count(10, 5, SEC, 300)],
            2 * SEC,
        );
        // fd 5 did not move: told once more, its rate falls to 0. A count of an older socket on
        // fd 4, and one of a socket not open, change nothing.
        let counts = vec![
            count(10, 3, SEC, 1_100),
            count(10, 4, SEC / 2, 9_999),
            count(10, 5, SEC, 300),
            count(11, 3, SEC, 5),
        ];
        refresh(&mut model, counts, 3 * SEC);
        let id = |fd| SocketId::new(SocketKey { pid: 10, fd }, SEC);
        let sent = |model: &Model, fd| {
            let socket = model.socket(id(fd));
            socket.map(|s| (s.bytes_sent, s.rates.now.send))
        };
        assert_eq!(sent(&model, 3), Some((1_100, 1_000)));
        assert_eq!(sent(&model, 4), Some((0, 0)));
        assert_eq!(sent(&model, 5), Some((300, 0)));
        assert_eq!(model.open.len(), 3, "a count opens nothing");
        assert_eq!(model.activity.bytes.send, 1_000);
        // fd 3 idle: told once more, then not at all for two refreshes; then it moves. Its
        // history has a zero for each idle second, and its rate is over the last second.
        refresh(&mut model, vec![count(10, 3, SEC, 1_100)], 4 * SEC);
        refresh(&mut model, Vec::new(), 5 * SEC);
        refresh(&mut model, Vec::new(), 6 * SEC);
        assert_eq!(model.activity.bytes.send, 0);
        refresh(&mut model, vec![count(10, 3, SEC, 3_100)], 7 * SEC);
        assert_eq!(sent(&model, 3), Some((3_100, 2_000)));
        let history = |model: &Model, at_ns| {
            let socket = model.socket(id(3)).expect("fd 3");
            let history = socket.rates.history_at(at_ns);
            history.iter().map(|t| t.send).collect::<Vec<_>>()
        };
        assert_eq!(history(&model, 7 * SEC), [100, 1_000, 0, 0, 0, 2_000]);
        // Looked at three seconds later, idle since: three seconds of nothing.
        refresh(&mut model, Vec::new(), 10 * SEC);
        assert_eq!(
            history(&model, 10 * SEC),
            [100, 1_000, 0, 0, 0, 2_000, 0, 0, 0]
        );
    }

    #[test]
    fn a_full_read_after_idle_refreshes_rates_the_last_second_and_keeps_the_idle_ones() {
        let mut model = Model::new("socket");
        model.update(opened(10, 3, SEC));
        model.update(Action::Counts {
            counts: vec![count(10, 3, SEC, 100)],
            now_ns: 2 * SEC,
        });
        model.update(Action::Counts {
            counts: vec![count(10, 3, SEC, 100)],
            now_ns: 3 * SEC,
        });
        for now in 4..=5 {
            model.update(Action::Counts {
                counts: Vec::new(),
                now_ns: now * SEC,
            });
        }
        // The checks' full read: 1,000 bytes in the last second, after two idle ones.
        model.update(read(&[(10, 3, SEC, 1_100)], 6 * SEC));
        let socket = model.socket(SocketId::new(SocketKey { pid: 10, fd: 3 }, SEC));
        let socket = socket.expect("open");
        assert_eq!(socket.rates.now.send, 1_000);
        let history: Vec<u64> = socket.rates.history.iter().map(|t| t.send).collect();
        assert_eq!(history, [100, 0, 0, 0, 1_000]);
        // Closed two seconds later, idle since: its history says so.
        model.update(closed(10, 3, SEC, 8 * SEC, 1_100));
        let logged = model.closes().next().expect("logged");
        let history: Vec<u64> = logged.rates.history.iter().map(|t| t.send).collect();
        assert_eq!(history, [100, 0, 0, 0, 1_000, 0, 0]);
    }

    #[test]
    fn a_refresh_of_few_counts_among_many_rows_finds_each_one() {
        let mut model = Model::new("socket");
        for fd in 3..40 {
            model.update(opened(10, fd, SEC));
        }
        // Out of key order, one of an older socket on its fd: a search each.
        let counts = vec![
            count(10, 30, SEC, 700),
            count(10, 4, SEC / 2, 1),
            count(10, 5, SEC, 500),
        ];
        model.update(Action::Counts {
            counts,
            now_ns: 2 * SEC,
        });
        let sent: Vec<u64> = model.open.values().map(|s| s.bytes_sent).collect();
        let expected: Vec<u64> = (3..40)
            .map(|fd| match fd {
                5 => 500,
                30 => 700,
                _ => 0,
            })
            .collect();
        assert_eq!(sent, expected);
        assert_eq!(model.activity.bytes.send, 1_200);
    }

    #[test]
    fn rates_and_activity_follow_map_reads() {
        let mut model = Model::new("tracepoint");
        model.update(opened(7, 3, SEC));
        model.update(read(&[(7, 3, SEC, 2000)], 3 * SEC));
        let id = SocketId::new(SocketKey { pid: 7, fd: 3 }, SEC);
        assert_eq!(model.socket(id).map(|s| s.rates.now.send), Some(1000));
        assert_eq!(model.activity.bytes.send, 1000);
        model.update(closed(7, 3, SEC, 4 * SEC, 2500));
        assert_eq!(model.socket(id).map(|s| s.rates.now.send), Some(0));
        assert_eq!(
            model.socket(id).map(|s| s.rates.history.len()),
            Some(1),
            "a closed socket keeps its history"
        );
    }

    #[test]
    fn connects_and_closes_per_second() {
        let mut model = Model::new("tracepoint");
        model.update(read(&[], SEC));
        for fd in 0..4 {
            model.update(opened(7, fd, SEC));
        }
        model.update(read(
            &[
                (7, 0, SEC, 0),
                (7, 1, SEC, 0),
                (7, 2, SEC, 0),
                (7, 3, SEC, 0),
            ],
            3 * SEC,
        ));
        assert!((model.activity.connects_per_sec - 2.0).abs() < 1e-9);
        assert!(model.activity.closes_per_sec.abs() < 1e-9);
        // Averaged over the last five seconds: quiet seconds bring it down gradually.
        for second in 4..=7 {
            model.update(read(&[], second * SEC));
        }
        // From the sample at 1 s (the last one at least 5 s old): 4 connects in 6 s.
        assert!((model.activity.connects_per_sec - 4.0 / 6.0).abs() < 1e-9);
        for second in 9..=20 {
            model.update(read(&[], second * SEC));
        }
        assert!(model.activity.connects_per_sec.abs() < 1e-9);
    }
}
