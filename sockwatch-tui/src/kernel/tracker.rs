//! The one place that squares what the kernel reports with the kernel's map and /proc, for
//! every output (the dashboard and `--json` alike).
//!
//! - A connect, accept or close record becomes a [`Change`]; an accept gets its local port (and
//!   its peer, when the caller passed no address buffer) from /proc.
//! - A process exit, an exec or a `close_range` arrives as one record about a whole process: the
//!   tracker settles each of the process's sockets from the kernel map (their fds are gone) and
//!   reports them closed; on the socket backend, one another process still holds is moved there.
//! - On the socket backend, the kernel moves a socket's row to the process that moves its
//!   bytes once the one shown lets go of it (`Moved`), and ends it at its release.
//! - Each read of the kernel map is checked against the open sockets: one that left the map
//!   without its close record reaching us (the ring buffer dropped it) is reported `vanished`.
//! - A periodic reconciliation checks that each tracked (pid, fd) still names the same socket
//!   inode, and reports `reconciled` what events missed.
//! - Sockets open before sockwatch started are found in /proc and handed to the kernel map.
//!
//! The set of open sockets is the model's; the tracker reads it and keeps only what checking
//! needs: the inodes it has learned and the sockets under suspicion.

use std::collections::{HashMap, HashSet};

use sockwatch_common::directions;

use super::{
    decode::{tracked_value, ConnectResult, KernelRecord},
    loader::{KernelTables, Retrack},
    procfs,
};
use crate::{
    clock::monotonic_ns,
    open_sockets::OpenSockets,
    socket::{CloseCause, Closed, Comm, Direction, Origin, Proto, Socket, SocketId, SocketKey},
};

/// How long an open socket must have been missing from the kernel's map, over two reads at
/// least, before its close record counts as lost. The records the kernel sent before a read are
/// taken before the read is checked (see `app.rs`), so only a close whose sender was preempted
/// between removing the entry and reporting it could still be on its way: this covers it.
pub const MISSING_GRACE_NS: u64 = 1_000_000_000;

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
    /// The socket's row now shows another holder (the socket backend follows it): the process
    /// that moves its bytes once the one shown let go of it, or one found holding it when the
    /// process shown exited.
    Moved {
        from: SocketId,
        to: SocketKey,
        comm: Comm,
    },
    /// Every (pid, fd) found holding the socket now (see [`Tracker::holders`]).
    Holders {
        id: SocketId,
        holders: Vec<SocketKey>,
    },
}

impl Change {
    /// The process whose row this change makes or ends (`None`: no process holds it).
    pub fn holder_pid(&self) -> Option<u32> {
        match self {
            Self::Opened(socket) | Self::Failed { socket, .. } | Self::Closed(socket) => {
                socket.holder_pid()
            }
            Self::Moved { to, .. } => crate::socket::holder_pid(*to),
            Self::Partial(_) | Self::Holders { .. } => None,
        }
    }
}

#[derive(Default)]
pub struct Tracker {
    /// Socket inodes learned from /proc (at accept, or at the first check) for sockets whose
    /// row does not carry one: a row's own (`Socket::inode`) is not kept again here (at 100k
    /// sockets, 3 MiB).
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
    /// Open sockets whose fd number a newer socket's record took before their close record
    /// came (a thread closed the fd and another got the number at once), with when: their
    /// close is still on its way, or lost once [`MISSING_GRACE_NS`] has passed.
    displaced: HashMap<SocketId, (Socket, u64)>,
}

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
                // A connect() again on a socket under way or connected asks how it went: not a
                // connect of its own (a socket the kernel side does not track, e.g. found at
                // start, reaches here).
                ConnectResult::Failed(libc::EALREADY | libc::EISCONN) => Vec::new(),
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
            } => {
                let changes = self.close_replaced(key, inode, closed, counts, open);
                // A row user space had moved (the socket backend): the entry it made goes too.
                for change in &changes {
                    if let Change::Closed(row) = change {
                        let moved = row.key() != key;
                        if moved
                            && tables
                                .get(row.key())
                                .is_some_and(|e| e.inode() == Some(inode))
                        {
                            tables.take(row.key());
                        }
                    }
                }
                changes
            }
            KernelRecord::ProcessExit { pid, ts_ns, forked } => {
                // Every fd of the process is gone: whatever socket the map has on each. Only a
                // child it forked can hold them still (the socket backend says whether it did).
                let keys = open.of_process(pid).map(|s| (s.key(), None)).collect();
                let end = Settle {
                    cause: CloseCause::Exit,
                    tid: pid,
                    ts_ns,
                    look_elsewhere: forked,
                };
                self.settle(tables, open, keys, end)
            }
            KernelRecord::Exec { pid, ts_ns } => self.exec(pid, ts_ns, open, tables),
            KernelRecord::Fork { pid } => open
                .of_process(pid)
                .map(|s| Change::Partial(s.id))
                .collect(),
            KernelRecord::Moved { socket, from } => self.moved(socket, from, open),
            KernelRecord::CloseRange {
                pid,
                first,
                last,
                ts_ns,
            } => {
                // A socket connected on a reused fd after the call is not one it closed.
                let gone = open
                    .of_process(pid)
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
        if let Some(old) = open.get(&socket.key()) {
            if old.id.opened_ns < socket.id.opened_ns {
                self.displaced
                    .insert(old.id, (Socket::clone(old), socket.id.opened_ns));
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

    /// The close of a socket whose map entry is not its own: a newer socket on its fd had
    /// replaced it, or (the socket backend) user space had moved its row to another holder. The
    /// row kept aside, or shown, with that inode ends, with the kernel's final counts when it has
    /// them (else the last ones read, marked partial).
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
            .find(|(id, (row, _))| id.key == key && row.inode() == Some(inode))
            .map(|(id, _)| *id);
        let same = |s: &Socket| s.inode() == Some(inode);
        let row = match aside.and_then(|id| self.displaced.remove(&id)) {
            Some((row, _)) => row,
            None => match open.get(&key).filter(|s| same(s)) {
                Some(row) => Socket::clone(row),
                // Moved by user space: wherever it is shown now.
                None => match open.values().find(|s| same(s)) {
                    Some(row) => Socket::clone(row),
                    None => return Vec::new(),
                },
            },
        };
        let mut socket = row;
        let (sent, recv) = counts.unwrap_or((socket.bytes_sent, socket.bytes_recv));
        socket.complete &= counts.is_some();
        socket.close(closed, sent, recv);
        self.forget(socket.id);
        vec![Change::Closed(socket)]
    }

    /// The kernel moved a socket's row to `socket.key()`, from `from`: the process that moves
    /// its bytes now, once the one shown let go of it.
    fn moved(&mut self, socket: Socket, from: SocketKey, open: &OpenSockets) -> Vec<Change> {
        let same = |s: &Socket| s.inode().is_none() || s.inode() == socket.inode();
        let Some(row) = open.get(&from).filter(|s| same(s)) else {
            return Vec::new();
        };
        let mut row = row.clone();
        row.set_inode(row.inode().or(socket.inode()));
        let to = socket.key();
        self.move_row(&row, to, socket.comm, open, monotonic_ns())
    }

    /// Shows `row` under `to` from now on, with the holder's name `comm`. That fd holds this
    /// socket now: a row still shown there ended unseen.
    fn move_row(
        &mut self,
        row: &Socket,
        to: SocketKey,
        comm: Comm,
        open: &OpenSockets,
        ts_ns: u64,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(stale) = open.get(&to).filter(|s| s.id != row.id) {
            changes.push(Change::Closed(vanished(stale, ts_ns)));
            self.forget(stale.id);
        }
        // An inode learned here goes with the row (one it carries moves with it anyway).
        let learned = self.inodes.remove(&row.id);
        self.forget(row.id);
        if let Some(inode) = learned {
            self.inodes
                .insert(SocketId::new(to, row.id.opened_ns), inode);
        }
        changes.push(Change::Moved {
            from: row.id,
            to,
            comm,
        });
        changes
    }

    /// Every (pid, fd) found holding `socket` now: in its own process, and in that process's
    /// children and grandchildren (forked workers, programs started on it). A socket that moved
    /// is shown where it was found, so its holders are found there too.
    pub fn holders(socket: &Socket) -> Change {
        let holders = socket.inode().map_or_else(Vec::new, |inode| {
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
        for socket in open.of_process(pid).filter(|s| s.id.opened_ns < ts_ns) {
            match tables.get(socket.key()) {
                Some(entry) => {
                    if entry.id == socket.id && !self.still_open(open, socket.id) {
                        gone.push((socket.key(), Some(socket.id)));
                    }
                }
                // Gone from the map already: a close() of the same fd number after the exec
                // hit its entry, and that close's record is still to come.
                None => {
                    let now = procfs::socket_inode(pid, socket.fd()).ok().flatten();
                    if now.is_none() || now != self.known_inode(open, socket.id) {
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

    /// Whether a socket is under suspicion that only map reads settle: missing from the last
    /// one, or kept aside for a close record that has not come.
    pub fn awaits_map_read(&self) -> bool {
        !self.missing.is_empty() || !self.displaced.is_empty()
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
            if self.still_open(open, id) {
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
        // Only the very entries found gone: an fd may hold a new socket by now.
        let entries: Vec<Socket> = gone
            .iter()
            .filter_map(|id| tables.get(id.key).filter(|e| e.id == *id))
            .collect();
        // The socket backend: a socket the kernel has not released yet is held somewhere still
        // (another fd, another process, an fd in flight, or an fd it could not name): its row
        // moves to a holder found, or stays; its release ends it. One look for all of them.
        let holders = if tables.counts_by_socket() && !entries.is_empty() {
            holders_elsewhere(&entries, None)
        } else {
            HashMap::new()
        };
        for entry in entries {
            if let Some(&(holder, _)) = entry.inode().and_then(|inode| holders.get(&inode)) {
                if let Some(to) = holder {
                    if tables.retrack(entry.key(), to) == Retrack::Moved {
                        changes.extend(self.moved_to(&entry, to, open, now_ns));
                    }
                }
                continue;
            }
            if let Some(mut socket) = tables.take(entry.key()) {
                close_now(&mut socket, CloseCause::Reconciled, entry.pid(), now_ns);
                self.forget(entry.id);
                changes.push(Change::Closed(socket));
            }
        }
        changes
    }

    /// The changes of a row user space re-tracked at `to` (another holder's fd): a row still
    /// shown there ended unseen, and this one moves there.
    fn moved_to(
        &mut self,
        socket: &Socket,
        to: SocketKey,
        open: &OpenSockets,
        ts_ns: u64,
    ) -> Vec<Change> {
        let comm = procfs::comm(to.pid).map_or(socket.comm, Comm::from);
        self.move_row(socket, to, comm, open, ts_ns)
    }

    /// Finds the sockets that were open before we started, hands them to the kernel map, and
    /// reports them opened (`existing`); `mask` is the `--direction` mask.
    pub fn adopt_existing(
        &mut self,
        tables: &mut KernelTables,
        mask: u32,
        in_scope: impl Fn(&Socket) -> bool,
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
        let mut known: HashSet<u64> = tracked.iter().filter_map(|s| s.inode()).collect();
        known.extend(by_socket.values().map(|b| b.ino));
        for (pid, fd, inode) in held {
            let Some(found) = inet.get(&inode).filter(|s| s.is_connected()) else {
                continue;
            };
            if pid == own_pid || known.contains(&inode) {
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
                found.remote.ip(),
                found.remote.port(),
                procfs::comm(pid).unwrap_or_default(),
            );
            socket.lport = found.local.port();
            socket.set_inode(Some(inode));
            socket.proto = found.proto;
            socket.origin = Origin::Existing;
            if inbound {
                socket.direction = Direction::In;
            }
            // Out of `--pid`/`--comm`/`--port`: the kernel does not track it either (another
            // holder of it may be in scope).
            if !in_scope(&socket) {
                continue;
            }
            known.insert(inode);
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
            changes.push(Change::Opened(socket));
        }
        changes
    }

    /// Whether the socket's fd still holds the same socket (learning its inode if new).
    fn still_open(&mut self, open: &OpenSockets, id: SocketId) -> bool {
        let inode = match procfs::socket_inode(id.key.pid, id.key.fd) {
            Ok(Some(inode)) => inode,
            // The fd is gone, or now names something that is not a socket.
            Ok(None) | Err(_) => return false,
        };
        match self.known_inode(open, id) {
            Some(known) => known == inode,
            None => {
                self.inodes.insert(id, inode);
                true
            }
        }
    }

    /// The inode of socket `id`: its row's, or one learned here from /proc.
    fn known_inode(&self, open: &OpenSockets, id: SocketId) -> Option<u64> {
        open.get(&id.key)
            .filter(|row| row.id == id)
            .and_then(Socket::inode)
            .or_else(|| self.inodes.get(&id).copied())
    }

    /// Completes an accepted socket from /proc; `None` when it is not an inet socket after all.
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
            // Only /proc can say whether this is an inet socket at all.
            let Some(found) = inode.and_then(|inode| procfs::inet_sockets().remove(&inode)) else {
                tables.take(key);
                return None;
            };
            socket.set_daddr(found.remote.ip());
            socket.dport = found.remote.port();
            socket.lport = found.local.port();
        } else if socket.lport == 0 {
            // The kernel read it from the socket where it could (the socket backend).
            socket.lport = self.listener_port(key.pid, listener).unwrap_or(0);
        }
        // The kernel's inode, where it named the socket, is the row's; else /proc's is kept here.
        if let Some(inode) = inode.filter(|_| socket.inode().is_none()) {
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
            if let Some(&(holder, alive)) = socket.inode().and_then(|i| holders.get(&i)) {
                if let Some(to) = holder {
                    if tables.retrack(key, to) != Retrack::NotHeld {
                        // Taken by the kernel meanwhile: the holder closed it, and the kernel's
                        // close record for `to` ends the row there.
                        changes.extend(self.moved_to(&socket, to, open, end.ts_ns));
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

/// Of the `settling` sockets, those still open (per the kernel's socket tables) by inode, with
/// another process's fd that holds each (not `gone`'s), when one is found in /proc. Two table
/// reads and a scan of every process's fds, only when some socket is still open.
fn holders_elsewhere(
    settling: &[Socket],
    gone: Option<u32>,
) -> HashMap<u64, (Option<SocketKey>, bool)> {
    let inodes: HashSet<u64> = settling.iter().filter_map(|s| s.inode()).collect();
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
        sockets.iter().cloned().collect()
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
            all.insert(later.clone());
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
        let fds: Vec<u32> = open.of_process(10).map(Socket::fd).collect();
        assert_eq!(fds, [3, u32::MAX]);
    }

    /// A pid no process has (above the kernel's pid_max ceiling of 2^22).
    const NOBODY: u32 = 1 << 30;

    fn row_with_inode(inode: u64) -> (Socket, OpenSockets) {
        let mut row = socket(5, SEC, 100);
        row.id.key.pid = NOBODY;
        row.set_inode(Some(inode));
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
    fn a_row_the_kernel_moved_follows_it_and_ends_a_stale_row_at_its_new_fd() {
        let mut tracker = Tracker::default();
        let (row, _) = row_with_inode(77);
        let stale = socket(3, SEC / 2, 10);
        let mut stale = stale;
        stale.id.key.pid = 42;
        let open = open(&[row.clone(), stale.clone()]);
        let mut record = row.clone();
        record.id.key = SocketKey { pid: 42, fd: 3 };
        record.comm = "worker".into();
        let changes = tracker.moved(record.clone(), row.key(), &open);
        assert_eq!(closed(&changes), [(stale.id, CloseCause::Vanished, 10)]);
        assert_eq!(moved(&changes), [(row.id, record.key())]);
        // Not the row shown there (another socket's inode), or no row at all: nothing moves.
        let mut other = record.clone();
        other.set_inode(Some(78));
        assert!(tracker.moved(other, row.key(), &open).is_empty());
        let nowhere = SocketKey { pid: 7, fd: 7 };
        assert!(tracker.moved(record, nowhere, &open).is_empty());
    }

    #[test]
    fn a_socket_another_process_still_holds_is_found_there_unless_it_is_the_one_leaving() {
        // A real socket of this test process stands for the other holder.
        let (_listener, me, fd, inode) = own_socket();
        let (settling, _) = row_with_inode(inode);
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
        let (closed, _) = row_with_inode(u64::MAX - 3);
        assert!(
            holders_elsewhere(&[closed], None).is_empty(),
            "not open anywhere"
        );
    }

    #[test]
    fn a_socket_whose_fd_number_another_thread_took_first_ends_with_its_own_close() {
        let mut tracker = Tracker::default();
        let mut ours = socket(5, SEC, 0);
        ours.set_inode(Some(77));
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
        ours.set_inode(Some(77));
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
