//! The one place that squares what the kernel reports with the kernel's map and /proc, for
//! every output (the dashboard and `--json` alike).
//!
//! - A connect, accept or close record becomes a [`Change`]; an accept gets its local port (and
//!   its peer, when the caller passed no address buffer) from /proc.
//! - A process exit, an exec or a `close_range` arrives as one record about a whole process: the
//!   tracker settles each of the process's sockets from the kernel map (their fds are gone) and
//!   reports them closed; on the socket backend, one another process still holds is moved there.
//! - On the socket backend, a socket handed to other holders (its fd closed while they hold it)
//!   is followed to where /proc shows it (`Moved`) until the kernel reports its release.
//! - Each read of the kernel map is checked against the open sockets: one that left the map
//!   without its close record reaching us (the ring buffer dropped it) is reported `vanished`.
//! - A periodic reconciliation checks that each tracked (pid, fd) still names the same socket
//!   inode, and reports `reconciled` what events missed.
//! - Sockets open before sockwatch started are found in /proc and handed to the kernel map.
//!
//! The set of open sockets is the model's; the tracker reads it and keeps only what checking
//! needs: the inodes it has learned and the sockets under suspicion.

use std::collections::{BTreeMap, HashMap, HashSet};

use sockwatch_common::directions;

use super::{
    decode::{tracked_value, ConnectResult, KernelRecord, Released},
    loader::{KernelTables, Retrack, SkCounts},
    procfs,
};
use crate::{
    clock::monotonic_ns,
    socket::{
        CloseCause, Closed, Direction, Origin, Proto, Socket, SocketId, SocketKey, NO_FD, NO_HOLDER,
    },
};

/// How long an open socket must have been missing from the kernel's map, over two reads at
/// least, before its close record counts as lost. The records the kernel sent before a read are
/// taken before the read is checked (see `app.rs`), so only a close whose sender was preempted
/// between removing the entry and reporting it could still be on its way: this covers it.
pub const MISSING_GRACE_NS: u64 = 1_000_000_000;

/// The open sockets, by (pid, fd): the model owns them, the tracker reads them.
pub type OpenSockets = BTreeMap<SocketKey, Socket>;

/// What happened to a socket, as the model and the outputs take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A socket became tracked: a connect (or one under way), an accept, or found at start.
    Opened(Socket),
    /// A connect failed (`errno`): counted, not tracked.
    Failed { socket: Socket, errno: i32 },
    /// A tracked socket is gone; `socket.closed` says how. Its counts are final, except for a
    /// `vanished` one, whose counts are the last the map showed.
    Closed(Socket),
    /// Another process holds this socket too (a fork), whose bytes the backend cannot count.
    Partial(SocketId),
    /// The socket's row now shows another holder: its fd was closed while others held the
    /// socket (the socket backend follows it), and `to` is where it was found (or a
    /// [`NO_HOLDER`] key while it is not found yet).
    Moved {
        from: SocketId,
        to: SocketKey,
        comm: String,
    },
    /// Every (pid, fd) found holding the socket now (see [`Tracker::holders`]).
    Holders {
        id: SocketId,
        holders: Vec<SocketKey>,
    },
}

/// The sockets of process `pid` among `open`.
fn of_process(open: &OpenSockets, pid: u32) -> impl Iterator<Item = &Socket> {
    open.range(SocketKey { pid, fd: 0 }..=SocketKey { pid, fd: u32::MAX })
        .map(|(_, socket)| socket)
}

#[derive(Default)]
pub struct Tracker {
    /// Socket inodes learned from /proc (at accept or adoption, or at the first check).
    inodes: HashMap<SocketId, u64>,
    /// Sockets whose fd the previous reconciliation found gone or changed (acted on at the next
    /// one, so a close whose record is still on its way is not mistaken for a missed one).
    suspects: HashSet<SocketId>,
    /// Open sockets a map read did not find, and when that was first (same patience, same
    /// reason).
    missing: HashMap<SocketId, u64>,
    /// Local port of listening sockets, by (pid, fd, inode), so accepts cost no table scan.
    listener_ports: HashMap<(u32, u32, u64), u16>,
    /// Sockets an exec closed whose map entry a `close()` of the same fd number in the new
    /// program reached first (the dynamic loader reuses low fds at once): that close record is
    /// reported as the exec's.
    exec_closed: HashSet<SocketId>,
    /// Sockets handed to other holders (the socket backend), by kernel socket (`struct sock *`):
    /// the row that shows each, until the kernel reports its release.
    handed: HashMap<u64, SocketId>,
    /// Handed-off sockets the previous reconciliation found in no socket table.
    handed_suspects: HashSet<u64>,
    /// Serial of the keys of handed-off sockets whose holder is not found yet.
    unknown_holders: u32,
    /// Releases that came before their socket's hand-off, by kernel socket (kept
    /// [`EARLY_RELEASE_NS`] at most).
    early_releases: HashMap<u64, Released>,
    /// Open sockets whose fd number a newer socket's record took before their close record
    /// came (a thread closed the fd and another got the number at once), with when: their
    /// close is still on its way, or lost once [`MISSING_GRACE_NS`] has passed.
    displaced: HashMap<SocketId, (Socket, u64)>,
}

/// How long a release whose hand-off has not come yet is kept, and how many at most.
const EARLY_RELEASE_NS: u64 = 10_000_000_000;
const EARLY_RELEASES_KEPT: usize = 4096;

/// How a batch of sockets whose fds are gone ends: by what, in which thread, when, and whether
/// another process may still hold them.
struct Settle {
    cause: CloseCause,
    tid: u32,
    ts_ns: u64,
    look_elsewhere: bool,
}

impl Tracker {
    /// Turns one ring buffer record into the changes it means. `open` must reflect every change
    /// of the records before this one.
    pub fn handle(
        &mut self,
        record: KernelRecord,
        open: &OpenSockets,
        tables: &mut KernelTables,
    ) -> Vec<Change> {
        match record {
            KernelRecord::Connect { socket, result } => match result {
                ConnectResult::Failed(errno) => vec![Change::Failed { socket, errno }],
                ConnectResult::Ok | ConnectResult::InProgress => self.opened(socket, open),
            },
            KernelRecord::Accept {
                socket,
                listener,
                peer_unknown,
            } => match self.accepted(socket, listener, peer_unknown, tables) {
                Some(socket) => self.opened(socket, open),
                None => Vec::new(),
            },
            KernelRecord::Close(socket) => self.closed(socket),
            KernelRecord::CloseReplaced {
                key,
                inode,
                closed,
                counts,
            } => self.close_replaced(key, inode, closed, counts, open),
            KernelRecord::ProcessExit { pid, ts_ns, forked } => {
                // Every fd of the process is gone: whatever socket the map has on each. Only a
                // child it forked can hold them still (the socket backend says whether it did).
                let keys = of_process(open, pid).map(|s| (s.key(), None)).collect();
                let end = Settle {
                    cause: CloseCause::Exit,
                    tid: pid,
                    ts_ns,
                    look_elsewhere: forked,
                };
                self.settle(tables, open, keys, end)
            }
            KernelRecord::Exec { pid, ts_ns } => self.exec(pid, ts_ns, open, tables),
            KernelRecord::Fork { pid } => of_process(open, pid)
                .map(|s| Change::Partial(s.id))
                .collect(),
            KernelRecord::HandOff { socket, sk } => self.handed_off(&socket, sk, open),
            KernelRecord::Release(release) => self.released(release, open),
            KernelRecord::CloseRange {
                pid,
                first,
                last,
                ts_ns,
            } => {
                // A socket connected on a reused fd after the call is not one it closed.
                let gone = of_process(open, pid)
                    .filter(|s| (first..=last).contains(&s.fd()) && s.id.opened_ns < ts_ns)
                    .map(|s| (s.key(), Some(s.id)))
                    .collect();
                let end = Settle {
                    cause: CloseCause::CloseRange,
                    tid: pid,
                    ts_ns,
                    look_elsewhere: true,
                };
                self.settle(tables, open, gone, end)
            }
        }
    }

    /// A new socket on a (pid, fd) that still shows an older one: the fd was closed and its
    /// number reused, and the new socket's record came first (another thread's accept or
    /// connect can get the number before the closing thread's record is sent). The older one
    /// is kept aside until its close record comes ([`MISSING_GRACE_NS`] at most).
    fn opened(&mut self, socket: Socket, open: &OpenSockets) -> Vec<Change> {
        // The kernel named the socket: no /proc lookup needed to check it later.
        if let Some(inode) = socket.inode {
            self.inodes.insert(socket.id, inode);
        }
        if let Some(old) = open.get(&socket.key()) {
            if old.id.opened_ns < socket.id.opened_ns {
                self.displaced
                    .insert(old.id, (old.clone(), socket.id.opened_ns));
            }
        }
        vec![Change::Opened(socket)]
    }

    /// A close record: final counts from the kernel.
    fn closed(&mut self, mut socket: Socket) -> Vec<Change> {
        if self.exec_closed.remove(&socket.id) {
            if let Some(closed) = &mut socket.closed {
                closed.cause = CloseCause::Exec;
            }
        }
        // Kept aside: a newer socket's record took its fd number first.
        if let Some((mut row, _)) = self.displaced.remove(&socket.id) {
            if let Some(closed) = socket.closed {
                row.close(closed, socket.bytes_sent, socket.bytes_recv);
                row.complete &= socket.complete;
                socket = row;
            }
        }
        self.forget(socket.id);
        vec![Change::Closed(socket)]
    }

    /// The close of a socket whose map entry a newer socket on its fd had replaced: the row
    /// kept aside (or still shown) with that inode ends, with the kernel's final counts when
    /// it has them (else the last ones read, marked partial).
    fn close_replaced(
        &mut self,
        key: SocketKey,
        inode: u64,
        closed: Closed,
        counts: Option<(u64, u64)>,
        open: &OpenSockets,
    ) -> Vec<Change> {
        let aside = self
            .displaced
            .iter()
            .find(|(id, (row, _))| id.key == key && row.inode == Some(inode))
            .map(|(id, _)| *id);
        let row = match aside.and_then(|id| self.displaced.remove(&id)) {
            Some((row, _)) => row,
            None => match open.get(&key).filter(|s| s.inode == Some(inode)) {
                Some(row) => row.clone(),
                None => return Vec::new(),
            },
        };
        let mut socket = row;
        let (sent, recv) = counts.unwrap_or((socket.bytes_sent, socket.bytes_recv));
        socket.complete &= counts.is_some();
        socket.close(closed, sent, recv);
        self.forget(socket.id);
        vec![Change::Closed(socket)]
    }

    /// A tracked fd was closed while others hold its socket: the row goes where the socket is
    /// found now (most often a forked child, or the process itself through another fd).
    fn handed_off(&mut self, socket: &Socket, sk: u64, open: &OpenSockets) -> Vec<Change> {
        let Some(row) = open.get(&socket.key()).filter(|s| s.id == socket.id) else {
            return Vec::new();
        };
        self.forget(row.id);
        let holder = row
            .inode
            .and_then(|inode| find_holder(inode, None, Some(row.pid())));
        let mut changes = self.move_to(row, holder, sk, open);
        // Its release raced this hand-off to the ring buffer and came first.
        let same = |release: &Released| release.inode == 0 || row.inode == Some(release.inode);
        if let Some(release) = self.early_releases.remove(&sk).filter(same) {
            if let Some(id) = self.handed.remove(&sk) {
                changes.extend(self.end(row, id.key, release, open));
            }
        }
        changes
    }

    /// Shows a handed-off socket under `holder` (or under a [`NO_HOLDER`] key while none is
    /// found), and keeps it as handed off under kernel socket `sk`.
    fn move_to(
        &mut self,
        row: &Socket,
        holder: Option<SocketKey>,
        sk: u64,
        open: &OpenSockets,
    ) -> Vec<Change> {
        let (to, comm) = match holder {
            Some(key) => (
                key,
                procfs::comm(key.pid).unwrap_or_else(|| row.comm.clone()),
            ),
            None => {
                self.unknown_holders = self.unknown_holders.wrapping_add(1);
                let key = SocketKey {
                    pid: NO_HOLDER,
                    fd: self.unknown_holders,
                };
                (key, row.comm.clone())
            }
        };
        let mut changes = Vec::new();
        // That fd holds this socket now: a row still shown there ended unseen.
        if let Some(stale) = open.get(&to).filter(|s| s.id != row.id) {
            changes.push(Change::Closed(vanished(stale, monotonic_ns())));
            self.forget(stale.id);
        }
        self.handed.insert(sk, SocketId::new(to, row.id.opened_ns));
        changes.push(Change::Moved {
            from: row.id,
            to,
            comm,
        });
        changes
    }

    /// The kernel released a handed-off socket: its row ends with the final counts. A release
    /// of a socket not handed off here (yet) is kept a while: its hand-off may still be on its
    /// way (both are sent from different CPUs at about the same time).
    fn released(&mut self, release: Released, open: &OpenSockets) -> Vec<Change> {
        self.handed_suspects.remove(&release.sk);
        let Some(id) = self.handed.remove(&release.sk) else {
            let stale = release.ts_ns.saturating_sub(EARLY_RELEASE_NS);
            self.early_releases.retain(|_, kept| kept.ts_ns >= stale);
            if self.early_releases.len() < EARLY_RELEASES_KEPT {
                self.early_releases.insert(release.sk, release);
            }
            return Vec::new();
        };
        match open.get(&id.key).filter(|s| s.id == id) {
            Some(row) => self.end(row, id.key, release, open),
            None => Vec::new(),
        }
    }

    /// Ends `row` (shown under `shown` by the changes before) as `release` says: under the
    /// process that released it (whose fd was closed before the release, so not known unless
    /// the row already showed that process).
    fn end(
        &mut self,
        row: &Socket,
        shown: SocketKey,
        release: Released,
        open: &OpenSockets,
    ) -> Vec<Change> {
        let mut socket = row.clone();
        socket.id.key = shown;
        let mut changes = Vec::new();
        // Pid 0: the kernel saw the release after the fact; the row's holder stands.
        if release.pid != 0 && socket.holder_pid() != Some(release.pid) {
            let to = SocketKey {
                pid: release.pid,
                fd: NO_FD,
            };
            if let Some(stale) = open.get(&to).filter(|s| s.id.opened_ns != row.id.opened_ns) {
                changes.push(Change::Closed(vanished(stale, release.ts_ns)));
            }
            changes.push(Change::Moved {
                from: socket.id,
                to,
                comm: release.comm.clone(),
            });
            socket.id.key = to;
            socket.comm = release.comm;
        }
        let closed = Closed {
            at_ns: release.ts_ns,
            tid: release.tid,
            cause: CloseCause::Close,
        };
        socket.close(closed, release.bytes_sent, release.bytes_recv);
        changes.push(Change::Closed(socket));
        changes
    }

    /// Checks that each handed-off socket is still where its row shows it, and looks for it
    /// where it is not: first in the process that last moved its bytes (`by_socket`'s mover),
    /// then in the shown process and its children.
    pub fn find_holders(&mut self, by_socket: &SkCounts, open: &OpenSockets) -> Vec<Change> {
        let mut changes = Vec::new();
        let handed: Vec<(u64, SocketId)> = self.handed.iter().map(|(k, v)| (*k, *v)).collect();
        for (sk, id) in handed {
            let Some(row) = open.get(&id.key).filter(|s| s.id == id) else {
                continue;
            };
            let Some(inode) = row.inode else {
                continue;
            };
            let holds = |pid: u32, fd: u32| procfs::socket_inode(pid, fd).ok().flatten();
            if let (Some(pid), Some(fd)) = (row.holder_pid(), row.holder_fd()) {
                if holds(pid, fd) == Some(inode) {
                    continue;
                }
            }
            let mover = by_socket.get(&sk).map(|b| b.mover).filter(|&pid| pid != 0);
            // Not found: it stays where it was last seen. Most often its holder has just let go
            // and the release is on its way; else the periodic check ends it.
            if let Some(key) = find_holder(inode, mover, row.holder_pid()) {
                if key != row.key() {
                    changes.extend(self.move_to(row, Some(key), sk, open));
                }
            }
        }
        changes
    }

    /// The kernel sockets handed to other holders that rows show now.
    pub fn handed_sockets(&self) -> Vec<u64> {
        self.handed.keys().copied().collect()
    }

    /// The handed-off sockets as a map read shows them: their rows with the socket layer's
    /// counts (`by_socket`), which go on whoever holds them.
    pub fn handed_rows(&self, by_socket: &SkCounts, open: &OpenSockets) -> Vec<Socket> {
        self.handed
            .iter()
            .filter_map(|(sk, id)| {
                let mut socket = open.get(&id.key).filter(|s| s.id == *id)?.clone();
                // Not a newer socket at the same address (this one's release record lost).
                let bytes = by_socket
                    .get(sk)
                    .filter(|b| b.ino == 0 || socket.inode.is_none_or(|i| i == b.ino))?;
                socket.bytes_sent = bytes.bytes_sent;
                socket.bytes_recv = bytes.bytes_recv;
                Some(socket)
            })
            .collect()
    }

    /// Every (pid, fd) found holding `socket` now: in its own process, and in that process's
    /// children and grandchildren (forked workers, programs started on it). A handed-off socket
    /// is shown where it was found, so its holders are found there too.
    pub fn holders(socket: &Socket) -> Change {
        let holders = socket.inode.map_or_else(Vec::new, |inode| {
            with_descendants(socket.holder_pid())
                .flat_map(|pid| {
                    procfs::fds_of_socket(pid, inode)
                        .into_iter()
                        .map(move |fd| SocketKey { pid, fd })
                })
                .collect()
        });
        Change::Holders {
            id: socket.id,
            holders,
        }
    }

    /// Whether the row `id` shows a handed-off socket.
    fn is_handed(&self, id: SocketId) -> bool {
        self.handed.values().any(|handed| *handed == id)
    }

    /// Ends handed-off sockets whose release record never came: gone from the kernel's socket
    /// tables (`alive`: the inodes of open sockets) for two reconciliations in a row.
    fn reconcile_handed(
        &mut self,
        alive: &HashSet<u64>,
        open: &OpenSockets,
        tables: &mut KernelTables,
        now_ns: u64,
    ) -> Vec<Change> {
        let mut suspects = HashSet::new();
        let mut changes = Vec::new();
        let handed: Vec<(u64, SocketId)> = self.handed.iter().map(|(k, v)| (*k, *v)).collect();
        for (sk, id) in handed {
            let Some(row) = open.get(&id.key).filter(|s| s.id == id) else {
                self.handed.remove(&sk);
                continue;
            };
            // A socket already closed on the wire (reset, or both ends shut down) is in no
            // table yet still open while a process holds it.
            let held = |inode: u64| {
                let shown = row.holder_pid().zip(row.holder_fd());
                shown.is_some_and(|(pid, fd)| {
                    procfs::socket_inode(pid, fd).ok().flatten() == Some(inode)
                })
            };
            if row
                .inode
                .is_none_or(|inode| alive.contains(&inode) || held(inode))
            {
                continue;
            }
            if !self.handed_suspects.contains(&sk) {
                suspects.insert(sk);
                continue;
            }
            self.handed.remove(&sk);
            let mut socket = row.clone();
            let (sent, recv) = tables
                .take_socket(sk, row.inode)
                .map_or((row.bytes_sent, row.bytes_recv), |b| {
                    (b.bytes_sent, b.bytes_recv)
                });
            let closed = Closed {
                at_ns: now_ns,
                tid: row.pid(),
                cause: CloseCause::Reconciled,
            };
            socket.close(closed, sent, recv);
            changes.push(Change::Closed(socket));
        }
        self.handed_suspects = suspects;
        changes
    }

    /// A successful exec closed the process's close-on-exec fds, without any close() call:
    /// each socket whose fd no longer holds it is settled as closed by the exec.
    fn exec(
        &mut self,
        pid: u32,
        ts_ns: u64,
        open: &OpenSockets,
        tables: &mut KernelTables,
    ) -> Vec<Change> {
        let mut gone = Vec::new();
        let handed: HashSet<SocketId> = self.handed.values().copied().collect();
        let closable = of_process(open, pid).filter(|s| s.id.opened_ns < ts_ns);
        for socket in closable.filter(|s| !handed.contains(&s.id)) {
            match tables.get(socket.key()) {
                Some(entry) => {
                    if entry.id == socket.id && !self.still_open(socket.id) {
                        gone.push((socket.key(), Some(socket.id)));
                    }
                }
                // Gone from the map already: a close() of the same fd number after the exec
                // hit its entry, and that close's record is still to come.
                None => {
                    let now = procfs::socket_inode(pid, socket.fd()).ok().flatten();
                    if now.is_none() || now != self.inodes.get(&socket.id).copied() {
                        self.exec_closed.insert(socket.id);
                    }
                }
            }
        }
        let end = Settle {
            cause: CloseCause::Exec,
            tid: pid,
            ts_ns,
            look_elsewhere: true,
        };
        self.settle(tables, open, gone, end)
    }

    /// Checks one read of the kernel map against the open sockets, once the records sent before
    /// the read were applied: one missing from reads [`MISSING_GRACE_NS`] apart lost its close
    /// record, and is reported vanished. One whose fd holds a newer socket in the map is gone at
    /// once (its close came before that socket's connect, and was not among the records).
    pub fn observe_map(&mut self, map: &[Socket], open: &OpenSockets, now_ns: u64) -> Vec<Change> {
        let in_map: HashMap<SocketKey, SocketId> = map.iter().map(|s| (s.key(), s.id)).collect();
        let mut changes = Vec::new();
        let mut still_missing = HashMap::new();
        for socket in open.values() {
            let gone = match in_map.get(&socket.key()) {
                Some(id) if *id == socket.id => false,
                Some(id) if id.opened_ns > socket.id.opened_ns => true,
                _ => {
                    let since = self.missing.get(&socket.id).copied().unwrap_or(now_ns);
                    if now_ns.saturating_sub(since) < MISSING_GRACE_NS {
                        still_missing.insert(socket.id, since);
                        continue;
                    }
                    true
                }
            };
            if gone {
                changes.push(Change::Closed(vanished(socket, now_ns)));
                self.forget(socket.id);
            }
        }
        self.missing = still_missing;
        // Kept aside too long: their close record was lost.
        let lost: Vec<SocketId> = self
            .displaced
            .iter()
            .filter(|(_, (_, since))| now_ns.saturating_sub(*since) >= MISSING_GRACE_NS)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some((row, _)) = self.displaced.remove(&id) {
                changes.push(Change::Closed(vanished(&row, now_ns)));
                self.forget(id);
            }
        }
        changes
    }

    /// At the end of a run, once the last records were taken: every open socket the final map
    /// read did not find is gone, its close record lost; except those opened since the read
    /// (`opened_since`).
    pub fn finish(
        &mut self,
        map: &[Socket],
        open: &OpenSockets,
        opened_since: &HashSet<SocketId>,
        now_ns: u64,
    ) -> Vec<Change> {
        let in_map: HashSet<SocketId> = map.iter().map(|s| s.id).collect();
        let aside = self.displaced.drain().map(|(_, (row, _))| row);
        let lost: Vec<Socket> = open
            .values()
            .filter(|s| !in_map.contains(&s.id) && !opened_since.contains(&s.id))
            .cloned()
            .chain(aside)
            .collect();
        lost.iter()
            .map(|s| Change::Closed(vanished(s, now_ns)))
            .collect()
    }

    /// Checks every socket in the kernel map against /proc; what has been gone for two checks
    /// in a row is removed from the map and reported closed (`reconciled`).
    pub fn reconcile(
        &mut self,
        map: &[SocketId],
        open: &OpenSockets,
        tables: &mut KernelTables,
        now_ns: u64,
    ) -> Vec<Change> {
        let own_pid = std::process::id();
        let mut gone = Vec::new();
        let mut suspects = HashSet::new();
        for &id in map.iter().filter(|id| id.key.pid != own_pid) {
            if self.is_handed(id) || self.still_open(id) {
                continue;
            }
            if self.suspects.contains(&id) {
                gone.push(id);
            } else {
                suspects.insert(id);
            }
        }
        self.suspects = suspects;
        tables.prune_adopted();
        // Forget what is neither in the map nor open any more.
        let known: HashSet<SocketId> = map
            .iter()
            .copied()
            .chain(open.values().map(|s| s.id))
            .collect();
        self.inodes.retain(|id, _| known.contains(id));
        self.exec_closed.retain(|id| known.contains(id));
        let mut changes = Vec::new();
        if !self.handed.is_empty() {
            let alive = procfs::inet_sockets().into_keys().collect();
            changes = self.reconcile_handed(&alive, open, tables, now_ns);
        }
        for id in gone {
            // Only the very entry found gone: the fd may hold a new socket by now.
            if tables.get(id.key).is_some_and(|e| e.id == id) {
                if let Some(mut socket) = tables.take(id.key) {
                    close_now(&mut socket, CloseCause::Reconciled, id.key.pid, now_ns);
                    self.forget(id);
                    changes.push(Change::Closed(socket));
                }
            }
        }
        changes
    }

    /// Finds IPv4 sockets that were open before we started, hands them to the kernel map, and
    /// reports them opened (`existing`); `mask` is the `--direction` mask.
    pub fn adopt_existing(
        &mut self,
        tables: &mut KernelTables,
        mask: u32,
        now_ns: u64,
    ) -> Vec<Change> {
        let inet = procfs::inet_sockets();
        let listening: HashSet<u16> = inet
            .values()
            .filter(|s| s.proto == Proto::Tcp && s.state == procfs::TCP_LISTEN)
            .map(|s| s.local.port())
            .collect();
        let own_pid = std::process::id();
        let mut changes = Vec::new();
        let held = procfs::socket_fds();
        // A socket is one row whoever holds it: not one the kernel tracks already (connected
        // since the start, read after the scan so none is missed), and one row for a socket
        // several processes hold (a forking server's), under the first holder found.
        let (tracked, by_socket) = tables.snapshot();
        let mut known: HashSet<u64> = tracked.iter().filter_map(|s| s.inode).collect();
        known.extend(by_socket.values().map(|b| b.ino));
        for (pid, fd, inode) in held {
            let Some(found) = inet.get(&inode).filter(|s| s.is_connected()) else {
                continue;
            };
            if pid == own_pid || !known.insert(inode) {
                continue;
            }
            let inbound = found.proto == Proto::Tcp && listening.contains(&found.local.port());
            let wanted = if inbound {
                directions::INBOUND
            } else {
                directions::OUTBOUND
            };
            if mask & wanted == 0 {
                continue;
            }
            let key = SocketKey { pid, fd };
            let mut socket = Socket::new(
                key,
                now_ns,
                *found.remote.ip(),
                found.remote.port(),
                procfs::comm(pid).unwrap_or_default(),
            );
            socket.lport = found.local.port();
            socket.inode = Some(inode);
            socket.proto = found.proto;
            socket.origin = Origin::Existing;
            if inbound {
                socket.direction = Direction::In;
            }
            if !tables.adopt(key, &tracked_value(&socket)) {
                continue;
            }
            // The scan above is not atomic: the socket may have been closed since, and an entry
            // for a closed fd would be taken for whatever the process opens there next.
            if procfs::socket_inode(pid, fd).ok().flatten() != Some(inode) {
                if tables.get(key).is_some_and(|e| e.id == socket.id) {
                    tables.take(key);
                }
                continue;
            }
            self.inodes.insert(socket.id, inode);
            changes.push(Change::Opened(socket));
        }
        changes
    }

    /// Whether the socket's fd still holds the same socket (learning its inode if new).
    fn still_open(&mut self, id: SocketId) -> bool {
        let inode = match procfs::socket_inode(id.key.pid, id.key.fd) {
            Ok(Some(inode)) => inode,
            // The fd is gone, or now names something that is not a socket.
            Ok(None) | Err(_) => return false,
        };
        *self.inodes.entry(id).or_insert(inode) == inode
    }

    /// Completes an accepted socket from /proc; `None` when it is not IPv4 after all.
    fn accepted(
        &mut self,
        mut socket: Socket,
        listener: u32,
        peer_unknown: bool,
        tables: &mut KernelTables,
    ) -> Option<Socket> {
        let key = socket.key();
        let inode = procfs::socket_inode(key.pid, key.fd).ok().flatten();
        if peer_unknown {
            // Only /proc can say whether this is an IPv4 socket at all.
            let Some(found) = inode.and_then(|inode| procfs::inet_sockets().remove(&inode)) else {
                tables.take(key);
                return None;
            };
            socket.daddr = *found.remote.ip();
            socket.dport = found.remote.port();
            socket.lport = found.local.port();
        } else {
            socket.lport = self.listener_port(key.pid, listener).unwrap_or(0);
        }
        if let Some(inode) = inode {
            self.inodes.insert(socket.id, inode);
        }
        Some(socket)
    }

    fn listener_port(&mut self, pid: u32, fd: u32) -> Option<u16> {
        let inode = procfs::socket_inode(pid, fd).ok()??;
        if let Some(port) = self.listener_ports.get(&(pid, fd, inode)) {
            return Some(*port);
        }
        let port = procfs::inet_sockets().get(&inode)?.local.port();
        self.listener_ports.insert((pid, fd, inode), port);
        Some(port)
    }

    /// Removes each target from the kernel map and reports it closed by `end.cause`. A target
    /// with an id is taken only if the map still holds that very socket (its fd may hold a
    /// newer one). On the socket backend, a socket another process still holds (a child it
    /// forked, a process it passed the fd to) is handed to that process instead: its row moves
    /// there and the kernel tracks it under that holder's fd from now on.
    fn settle(
        &mut self,
        tables: &mut KernelTables,
        open: &OpenSockets,
        targets: Vec<(SocketKey, Option<SocketId>)>,
        end: Settle,
    ) -> Vec<Change> {
        let targets: Vec<Socket> = targets
            .into_iter()
            .filter_map(|(key, id)| {
                let entry = tables.get(key)?;
                id.is_none_or(|id| entry.id == id).then_some(entry)
            })
            .collect();
        // An exiting process no longer holds anything, whatever /proc still shows.
        let exiting = (end.cause == CloseCause::Exit).then_some(end.tid);
        let holders = if tables.counts_by_socket() && end.look_elsewhere {
            holders_elsewhere(&targets, exiting)
        } else {
            HashMap::new()
        };
        let mut changes = Vec::new();
        for socket in targets {
            let key = socket.key();
            if let Some(&(holder, alive)) = socket.inode.and_then(|i| holders.get(&i)) {
                if let Some(to) = holder {
                    if tables.retrack(key, to) != Retrack::NotHeld {
                        // Taken by the kernel meanwhile: the holder closed it, and the kernel's
                        // close record for `to` ends the row there.
                        if let Some(stale) = open.get(&to).filter(|s| s.id != socket.id) {
                            changes.push(Change::Closed(vanished(stale, end.ts_ns)));
                        }
                        self.forget(socket.id);
                        let comm = procfs::comm(to.pid).unwrap_or_else(|| socket.comm.clone());
                        changes.push(Change::Moved {
                            from: socket.id,
                            to,
                            comm,
                        });
                        continue;
                    }
                }
                // Held by a process not found (an fd in flight): what it moves is lost to this
                // row, which says so. (An exiting process may still be letting go of it.)
                if alive && exiting.is_none() {
                    changes.push(Change::Partial(socket.id));
                }
            }
            let Some(mut socket) = tables.take(key) else {
                continue;
            };
            close_now(&mut socket, end.cause, end.tid, end.ts_ns);
            self.forget(socket.id);
            changes.push(Change::Closed(socket));
        }
        changes
    }

    fn forget(&mut self, id: SocketId) {
        self.inodes.remove(&id);
        self.suspects.remove(&id);
        self.missing.remove(&id);
    }
}

/// `pid`, then its children, then its grandchildren: where a process's sockets are held
/// besides itself (a forking server's worker, a program started on it). The grandchildren are
/// read only if asked for.
fn with_descendants(pid: Option<u32>) -> impl Iterator<Item = u32> {
    let children = pid.map(procfs::children).unwrap_or_default();
    let grandchildren = children.clone().into_iter().flat_map(procfs::children);
    pid.into_iter().chain(children).chain(grandchildren)
}

/// Where socket `inode` is held: in `mover` (the process that last moved its bytes), else in
/// `shown` (where its row shows it) or their children and grandchildren (a forking server's
/// worker, a program started on it). The lowest fd of the first process found holding it.
fn find_holder(inode: u64, mover: Option<u32>, shown: Option<u32>) -> Option<SocketKey> {
    mover
        .into_iter()
        .chain(with_descendants(shown))
        .filter(|&pid| pid != NO_HOLDER)
        .find_map(|pid| procfs::fd_of_socket(pid, inode).map(|fd| SocketKey { pid, fd }))
}

/// Of the `settling` sockets, those still open (per the kernel's socket tables) by inode, with
/// another process's fd that holds each (not `gone`'s), when one is found in /proc. Two table
/// reads and a scan of every process's fds, only when some socket is still open.
fn holders_elsewhere(
    settling: &[Socket],
    gone: Option<u32>,
) -> HashMap<u64, (Option<SocketKey>, bool)> {
    let inodes: HashSet<u64> = settling.iter().filter_map(|s| s.inode).collect();
    if inodes.is_empty() {
        return HashMap::new();
    }
    let open = procfs::inet_sockets();
    let alive: HashSet<u64> = inodes
        .into_iter()
        .filter(|inode| open.contains_key(inode))
        .collect();
    if alive.is_empty() {
        return HashMap::new();
    }
    let mut holders: HashMap<u64, (Option<SocketKey>, bool)> =
        alive.iter().map(|&inode| (inode, (None, true))).collect();
    let settled: HashSet<SocketKey> = settling.iter().map(Socket::key).collect();
    for (pid, fd, inode) in procfs::socket_fds() {
        let key = SocketKey { pid, fd };
        if Some(pid) == gone || settled.contains(&key) {
            continue;
        }
        if let Some((holder @ None, _)) = holders.get_mut(&inode) {
            *holder = Some(key);
        }
    }
    holders
}

/// Closes a socket settled from the map; its counts (as the map had them) are final.
fn close_now(socket: &mut Socket, cause: CloseCause, tid: u32, at_ns: u64) {
    let (sent, recv) = (socket.bytes_sent, socket.bytes_recv);
    socket.close(Closed { at_ns, tid, cause }, sent, recv);
}

/// An open socket whose close record was lost, closed as of `now_ns`.
fn vanished(socket: &Socket, now_ns: u64) -> Socket {
    let mut socket = socket.clone();
    let pid = socket.pid();
    close_now(&mut socket, CloseCause::Vanished, pid, now_ns);
    socket
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn socket(fd: u32, opened_ns: u64, sent: u64) -> Socket {
        let mut socket = Socket::new(
            SocketKey { pid: 10, fd },
            opened_ns,
            Ipv4Addr::LOCALHOST,
            8080,
            "curl",
        );
        socket.bytes_sent = sent;
        socket
    }

    fn open(sockets: &[Socket]) -> OpenSockets {
        sockets.iter().map(|s| (s.key(), s.clone())).collect()
    }

    fn closed(changes: &[Change]) -> Vec<(SocketId, CloseCause, u64)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Closed(s) => s.closed.map(|closed| (s.id, closed.cause, s.bytes_sent)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_socket_missing_from_reads_a_second_apart_vanished_with_its_last_counts() {
        let mut tracker = Tracker::default();
        let open = open(&[socket(3, SEC, 50), socket(4, SEC, 7)]);
        let map = [socket(4, SEC, 7)];
        assert!(
            tracker.observe_map(&map, &open, 2 * SEC).is_empty(),
            "one miss may be a close record still in flight"
        );
        assert!(
            tracker.observe_map(&map, &open, 2 * SEC + 1000).is_empty(),
            "reads close together are one miss"
        );
        let changes = tracker.observe_map(&map, &open, 3 * SEC);
        assert_eq!(
            closed(&changes),
            [(
                SocketId::new(SocketKey { pid: 10, fd: 3 }, SEC),
                CloseCause::Vanished,
                50
            )]
        );
        let Change::Closed(gone) = &changes[0] else {
            unreachable!()
        };
        assert_eq!(
            gone.age_ns(u64::MAX),
            2 * SEC,
            "lived until it was found gone"
        );
    }

    #[test]
    fn a_socket_seen_again_is_no_longer_missing() {
        let mut tracker = Tracker::default();
        let open = open(&[socket(3, SEC, 0)]);
        assert!(tracker.observe_map(&[], &open, 2 * SEC).is_empty());
        assert!(tracker
            .observe_map(&[socket(3, SEC, 1)], &open, 3 * SEC)
            .is_empty());
        assert!(
            tracker.observe_map(&[], &open, 4 * SEC).is_empty(),
            "a fresh miss"
        );
    }

    #[test]
    fn a_reused_fd_in_the_map_ends_the_old_socket_at_once() {
        let mut tracker = Tracker::default();
        let open = open(&[socket(3, SEC, 9)]);
        let changes = tracker.observe_map(&[socket(3, 5 * SEC, 0)], &open, 6 * SEC);
        assert_eq!(
            closed(&changes),
            [(
                SocketId::new(SocketKey { pid: 10, fd: 3 }, SEC),
                CloseCause::Vanished,
                9
            )]
        );
    }

    #[test]
    fn finishing_closes_whatever_the_map_lost() {
        let mut tracker = Tracker::default();
        let open = open(&[socket(3, SEC, 1), socket(4, SEC, 2)]);
        let mut later = socket(5, 8 * SEC, 0);
        later.id.opened_ns = 8 * SEC;
        let open_now = {
            let mut all = open.clone();
            all.insert(later.key(), later.clone());
            all
        };
        let since: HashSet<SocketId> = [later.id].into();
        let changes = tracker.finish(&[socket(4, SEC, 2)], &open_now, &since, 9 * SEC);
        assert_eq!(
            closed(&changes).len(),
            1,
            "not the one opened after the read"
        );
        assert_eq!(closed(&changes)[0].0.key.fd, 3);
    }

    #[test]
    fn sockets_of_a_process_are_found_by_range() {
        let mut other = socket(1, SEC, 0);
        other.id.key.pid = 11;
        let mut before = socket(9, SEC, 0);
        before.id.key.pid = 9;
        let open = open(&[socket(3, SEC, 0), socket(u32::MAX, SEC, 0), other, before]);
        let fds: Vec<u32> = of_process(&open, 10).map(Socket::fd).collect();
        assert_eq!(fds, [3, u32::MAX]);
    }

    /// A pid no process has (above the kernel's pid_max ceiling of 2^22).
    const NOBODY: u32 = 1 << 30;

    fn handed(inode: u64) -> (Socket, OpenSockets) {
        let mut row = socket(5, SEC, 100);
        row.id.key.pid = NOBODY;
        row.inode = Some(inode);
        let open = open(std::slice::from_ref(&row));
        (row, open)
    }

    /// A socket of this test process, as /proc shows it: (the socket, pid, fd, inode).
    fn own_socket() -> (std::net::TcpListener, u32, u32, u64) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a socket");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener) as u32;
        let me = std::process::id();
        let inode = procfs::socket_inode(me, fd)
            .expect("our fd")
            .expect("a socket");
        (listener, me, fd, inode)
    }

    /// A release of `sk` seen after the fact (pid 0), at 3 s, nothing moved.
    fn release(sk: u64) -> Released {
        Released {
            sk,
            inode: 0,
            pid: 0,
            tid: 0,
            comm: String::new(),
            ts_ns: 3 * SEC,
            bytes_sent: 0,
            bytes_recv: 0,
        }
    }

    #[test]
    fn a_release_that_comes_before_its_hand_off_ends_the_socket_at_the_hand_off() {
        let mut tracker = Tracker::default();
        let (row, open) = handed(u64::MAX - 4);
        let early = Released {
            inode: u64::MAX - 4,
            pid: 42,
            bytes_sent: 640,
            ..release(9)
        };
        assert!(
            tracker.released(early, &open).is_empty(),
            "kept, not applied"
        );
        let changes = tracker.handed_off(&row, 9, &open);
        let Some(Change::Closed(end)) = changes.last() else {
            panic!("ends at once: {changes:?}")
        };
        assert_eq!((end.pid(), end.bytes_sent), (42, 640));
        assert_eq!(end.closed.map(|c| c.cause), Some(CloseCause::Close));
        // Moved to where it was looked for, then to the process that released it.
        let moves = moved(&changes);
        assert_eq!(moves.len(), 2, "{changes:?}");
        assert_eq!(moves[1].1, SocketKey { pid: 42, fd: NO_FD });
        assert!(tracker.handed.is_empty());
    }

    fn moved(changes: &[Change]) -> Vec<(SocketId, SocketKey)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Moved { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_handed_off_socket_nobody_is_found_holding_waits_under_no_holder_until_its_release() {
        let mut tracker = Tracker::default();
        let (row, mut open) = handed(u64::MAX - 1);
        let changes = tracker.handed_off(&row, 0xffff_8880_0000_1000, &open);
        let [(from, to)] = moved(&changes)[..] else {
            panic!("one move: {changes:?}")
        };
        assert_eq!(from, row.id);
        assert_eq!(to.pid, NO_HOLDER, "no process is known to hold it");
        let mut shown = open.remove(&row.key()).expect("the row");
        shown.id.key = to;
        open.insert(to, shown);
        // Its counts go on at the socket layer, whoever moves the bytes.
        let by_socket: SkCounts = [(
            0xffff_8880_0000_1000,
            sockwatch_common::SkBytes {
                bytes_sent: 700,
                ..Default::default()
            },
        )]
        .into();
        let rows = tracker.handed_rows(&by_socket, &open);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].key(), rows[0].bytes_sent), (to, 700));
        // Released by process 42: shown under it (fd not known) with the final counts.
        let release = Released {
            pid: 42,
            tid: 43,
            comm: "worker".into(),
            ts_ns: 9 * SEC,
            bytes_sent: 900,
            bytes_recv: 5,
            ..release(0xffff_8880_0000_1000)
        };
        let changes = tracker.released(release, &open);
        let last = SocketKey { pid: 42, fd: NO_FD };
        assert_eq!(moved(&changes), [(SocketId::new(to, SEC), last)]);
        let Some(Change::Closed(end)) = changes.last() else {
            panic!("ends closed: {changes:?}")
        };
        assert_eq!(end.key(), last);
        assert_eq!(
            (end.bytes_sent, end.bytes_recv, end.comm.as_str()),
            (900, 5, "worker")
        );
        assert_eq!(
            end.closed.map(|c| (c.tid, c.cause)),
            Some((43, CloseCause::Close))
        );
        assert!(
            tracker.handed_rows(&by_socket, &open).is_empty(),
            "no longer handed off"
        );
    }

    #[test]
    fn a_release_seen_after_the_fact_keeps_the_holder_shown() {
        let mut tracker = Tracker::default();
        let (row, open) = handed(u64::MAX - 2);
        tracker.handed.insert(7, row.id);
        let changes = tracker.released(
            Released {
                bytes_sent: 100,
                ..release(7)
            },
            &open,
        );
        assert!(moved(&changes).is_empty(), "{changes:?}");
        assert_eq!(closed(&changes), [(row.id, CloseCause::Close, 100)]);
        let unknown = tracker.released(release(8), &open);
        assert!(unknown.is_empty(), "not a handed-off socket (yet)");
    }

    #[test]
    fn a_handed_off_socket_is_found_in_the_process_that_moves_its_bytes() {
        // A real socket this test process holds, as a holder found in /proc.
        let (_listener, me, fd, inode) = own_socket();
        let mut tracker = Tracker::default();
        let (row, open) = handed(inode);
        tracker.handed.insert(7, row.id);
        let by_socket: SkCounts = [(
            7,
            sockwatch_common::SkBytes {
                mover: me,
                ..Default::default()
            },
        )]
        .into();
        let changes = tracker.find_holders(&by_socket, &open);
        assert_eq!(moved(&changes), [(row.id, SocketKey { pid: me, fd })]);
        let Some(Change::Moved { comm, .. }) = changes.last() else {
            unreachable!()
        };
        assert_eq!(Some(comm.clone()), procfs::comm(me), "the holder's name");
    }

    #[test]
    fn a_socket_another_process_still_holds_is_found_there_unless_it_is_the_one_leaving() {
        // A real socket of this test process stands for the other holder.
        let (_listener, me, fd, inode) = own_socket();
        let (settling, _) = handed(inode);
        let found = holders_elsewhere(std::slice::from_ref(&settling), None);
        assert_eq!(
            found.get(&inode),
            Some(&(Some(SocketKey { pid: me, fd }), true))
        );
        let leaving = holders_elsewhere(std::slice::from_ref(&settling), Some(me));
        assert_eq!(
            leaving.get(&inode),
            Some(&(None, true)),
            "open, held by no one else"
        );
        let (closed, _) = handed(u64::MAX - 3);
        assert!(
            holders_elsewhere(&[closed], None).is_empty(),
            "not open anywhere"
        );
    }

    #[test]
    fn a_socket_whose_fd_number_another_thread_took_first_ends_with_its_own_close() {
        let mut tracker = Tracker::default();
        let mut ours = socket(5, SEC, 0);
        ours.inode = Some(77);
        let open_before = open(std::slice::from_ref(&ours));
        // Another thread's accept got fd 5 back, and its record came before our close's.
        let mut theirs = socket(5, SEC + 2_000_000, 0);
        theirs.direction = Direction::In;
        let changes = tracker.opened(theirs.clone(), &open_before);
        assert_eq!(
            changes,
            [Change::Opened(theirs.clone())],
            "nothing ends yet"
        );
        let open_after = open(std::slice::from_ref(&theirs));
        // Our close record, as the kernel sends it: final counts.
        let mut record = socket(5, SEC, 4000);
        record.close(
            Closed {
                at_ns: 2 * SEC,
                tid: 10,
                cause: CloseCause::Close,
            },
            4000,
            0,
        );
        let mut tables_free = tracker.observe_map(&[theirs.clone()], &open_after, SEC + 3_000_000);
        assert!(tables_free.is_empty(), "within the grace: {tables_free:?}");
        let closes = tracker.closed(record);
        assert_eq!(closed(&closes), [(ours.id, CloseCause::Close, 4000)]);
        // A kept-aside socket whose close never comes ends as vanished after the grace.
        tracker.opened(theirs.clone(), &open_before);
        tables_free = tracker.observe_map(&[theirs], &open_after, 3 * SEC);
        assert_eq!(closed(&tables_free), [(ours.id, CloseCause::Vanished, 0)]);
    }

    #[test]
    fn a_close_that_found_its_entry_replaced_ends_the_row_kept_aside_by_inode() {
        let mut tracker = Tracker::default();
        let mut ours = socket(5, SEC, 900);
        ours.inode = Some(77);
        let theirs = socket(5, SEC + 1, 0);
        tracker.opened(theirs.clone(), &open(std::slice::from_ref(&ours)));
        let closed_at = Closed {
            at_ns: 2 * SEC,
            tid: 10,
            cause: CloseCause::Close,
        };
        let key = ours.key();
        let now_open = open(std::slice::from_ref(&theirs));
        let other_inode = tracker.close_replaced(key, 78, closed_at, Some((1, 1)), &now_open);
        assert!(other_inode.is_empty(), "not that socket");
        let changes = tracker.close_replaced(key, 77, closed_at, None, &now_open);
        let [Change::Closed(end)] = &changes[..] else {
            panic!("one close: {changes:?}")
        };
        assert_eq!(
            (end.id, end.bytes_sent, end.complete),
            (ours.id, 900, false)
        );
    }
}
