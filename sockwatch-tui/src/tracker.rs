//! User space's half of socket tracking: what the kernel side only hints at, or cannot see.
//!
//! - A process exit, an exec or a `close_range` arrives as one record about a whole process;
//!   the tracker settles each of the process's sockets from the kernel map (its counters are
//!   final: the fds are gone) and reports them closed.
//! - An accepted socket's local port, and its peer when the caller passed no address buffer,
//!   come from /proc.
//! - A periodic reconciliation checks that each tracked (pid, fd) still names the same socket
//!   inode, and repairs what events missed.
//! - Sockets open before sockwatch started are found in /proc and handed to the kernel map.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use sockwatch_common::{
    directions, flags, SocketKey, SocketState, TrackedSocket, COMM_LEN, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    events::{
        CloseCause, ConnectEvent, ConnectResult, Endpoint, KernelEvent, KernelRecord, Proto,
        TrackedEntry,
    },
    probes::KernelTables,
    procfs,
};

/// What user space knows about a tracked socket beyond the kernel's map entry.
#[derive(Clone, Debug, Default)]
struct Known {
    connect_ns: u64,
    inode: Option<u64>,
    lport: u16,
    /// The peer, for accepts whose peer the kernel could not read.
    peer: Option<(Ipv4Addr, u16)>,
    /// The previous reconciliation did not find it in the kernel map.
    absent: bool,
    /// The previous reconciliation found the fd gone or changed (acted on at the next one, so a
    /// close whose event is still on its way is not mistaken for a missed one).
    suspect: bool,
}

#[derive(Default)]
pub struct Tracker {
    known: HashMap<SocketKey, Known>,
    /// Local port of listening sockets, by (pid, fd, inode), so accepts cost no table scan.
    listener_ports: HashMap<(u32, u32, u64), u16>,
    /// Sockets an exec closed whose map entry a `close()` of the same fd number in the new
    /// program reached first (the dynamic loader reuses low fds at once): that close record is
    /// reported as the exec's.
    exec_closed: HashSet<(SocketKey, u64)>,
    /// Sockets removed by reconciliation: each one an event the probes missed.
    pub repairs: u64,
}

impl Tracker {
    /// Turns one ring buffer record into the events it means.
    pub fn handle(&mut self, record: KernelRecord, tables: &mut KernelTables) -> Vec<KernelEvent> {
        match record {
            KernelRecord::Connect(event) => {
                if event.result.is_tracked() {
                    self.learn(&event);
                }
                vec![KernelEvent::Connect(event)]
            }
            KernelRecord::Accept {
                event,
                listener,
                peer_unknown,
            } => self
                .accepted(event, listener, peer_unknown, tables)
                .into_iter()
                .collect(),
            KernelRecord::Close(mut event) => {
                if let Some(known) = self.known.remove(&event.socket.key) {
                    if known.connect_ns == event.connect_ns {
                        enrich(&mut event.socket, &known);
                    }
                }
                if self
                    .exec_closed
                    .remove(&(event.socket.key, event.connect_ns))
                {
                    event.cause = CloseCause::Exec;
                }
                vec![KernelEvent::Close(event)]
            }
            KernelRecord::ProcessExit { pid, ts_ns } => {
                let keys: Vec<_> = self
                    .sockets_of(pid, tables)
                    .into_iter()
                    .map(|e| e.socket.key)
                    .collect();
                self.settle(tables, keys, CloseCause::Exit, pid, ts_ns)
            }
            KernelRecord::Exec { pid, ts_ns } => self.exec(pid, ts_ns, tables),
            KernelRecord::CloseRange {
                pid,
                first,
                last,
                ts_ns,
            } => {
                // A socket connected on a reused fd after the call is not one it closed.
                let gone = self
                    .sockets_of(pid, tables)
                    .into_iter()
                    .filter(|e| (first..=last).contains(&e.socket.key.fd) && e.connect_ns < ts_ns)
                    .map(|e| e.socket.key)
                    .collect();
                self.settle(tables, gone, CloseCause::CloseRange, pid, ts_ns)
            }
        }
    }

    /// A successful exec closed the process's close-on-exec fds, without any close() call:
    /// each socket whose fd no longer holds it is settled as closed by the exec.
    fn exec(&mut self, pid: u32, ts_ns: u64, tables: &mut KernelTables) -> Vec<KernelEvent> {
        let in_map = self.sockets_of(pid, tables);
        let gone: Vec<SocketKey> = in_map
            .iter()
            .filter(|entry| entry.connect_ns < ts_ns && !self.still_open(entry))
            .map(|entry| entry.socket.key)
            .collect();
        // Known sockets already gone from the map: their entry was hit by a close() of the same
        // fd number after the exec, whose record is still to come.
        let in_map: HashSet<SocketKey> = in_map.iter().map(|e| e.socket.key).collect();
        let hit: Vec<(SocketKey, u64)> = self
            .known
            .iter()
            .filter(|(key, known)| {
                key.pid == pid && !in_map.contains(key) && known.connect_ns < ts_ns
            })
            .filter(|(key, known)| {
                let now = procfs::socket_inode(key.pid, key.fd).ok().flatten();
                now.is_none() || now != known.inode
            })
            .map(|(key, known)| (*key, known.connect_ns))
            .collect();
        self.exec_closed.extend(hit);
        self.settle(tables, gone, CloseCause::Exec, pid, ts_ns)
    }

    /// Adds what user space knows (local ports, peers found in /proc) to a map entry.
    pub fn enrich(&self, entry: &mut TrackedEntry) {
        if let Some(known) = self.known.get(&entry.socket.key) {
            if known.connect_ns == entry.connect_ns {
                enrich(&mut entry.socket, known);
            }
        }
    }

    /// Checks every tracked socket against /proc; what has been gone for two checks in a row is
    /// removed and reported closed.
    pub fn reconcile(&mut self, tables: &mut KernelTables, now_ns: u64) -> Vec<KernelEvent> {
        let own_pid = std::process::id();
        let mut gone = Vec::new();
        let mut present = HashSet::new();
        for entry in tables.snapshot() {
            let key = entry.socket.key;
            present.insert(key);
            if key.pid == own_pid {
                continue;
            }
            let open = self.still_open(&entry);
            let known = self.known_entry(&entry);
            if open {
                known.suspect = false;
            } else if known.suspect {
                gone.push(key);
            } else {
                known.suspect = true;
            }
        }
        // Forget what the kernel no longer tracks, once its close record has had a whole
        // interval to arrive (it may still be in the ring buffer now, and needs what we know).
        self.known.retain(|key, known| {
            let keep = present.contains(key) || !known.absent;
            known.absent = !present.contains(key);
            keep
        });
        let mut events = Vec::new();
        for key in gone {
            if let Some(entry) = tables.take(key) {
                self.repairs += 1;
                let known = self.known.remove(&key).unwrap_or_default();
                let mut event = entry.closed(CloseCause::Reconciled, key.pid, now_ns);
                enrich(&mut event.socket, &known);
                events.push(KernelEvent::Close(event));
            }
        }
        events
    }

    /// Finds IPv4 sockets that were open before we started, hands them to the kernel map, and
    /// reports them as `existing`; `mask` is the `--direction` mask.
    pub fn adopt_existing(
        &mut self,
        tables: &mut KernelTables,
        mask: u32,
        now_ns: u64,
    ) -> Vec<KernelEvent> {
        let inet = procfs::inet_sockets();
        let listening: HashSet<u16> = inet
            .values()
            .filter(|s| s.proto == Proto::Tcp && s.state == procfs::TCP_LISTEN)
            .map(|s| s.local.port())
            .collect();
        let own_pid = std::process::id();
        let mut events = Vec::new();
        for (pid, fd, inode) in procfs::socket_fds() {
            let Some(socket) = inet.get(&inode).filter(|s| s.is_connected()) else {
                continue;
            };
            if pid == own_pid {
                continue;
            }
            let comm = procfs::comm(pid).unwrap_or_default();
            let inbound = socket.proto == Proto::Tcp && listening.contains(&socket.local.port());
            let direction = if inbound {
                directions::INBOUND
            } else {
                directions::OUTBOUND
            };
            if mask & direction == 0 {
                continue;
            }
            let value = TrackedSocket {
                bytes_sent: 0,
                bytes_recv: 0,
                connect_ns: now_ns,
                daddr: u32::from_ne_bytes(socket.remote.ip().octets()),
                dport: socket.remote.port(),
                lport: socket.local.port(),
                tid: pid,
                state: SocketState::Established as u32,
                proto: match socket.proto {
                    Proto::Tcp => IPPROTO_TCP,
                    Proto::Udp => IPPROTO_UDP,
                    Proto::Unknown => 0,
                },
                flags: flags::PREEXISTING | if inbound { flags::INBOUND } else { 0 },
                comm: comm_bytes(&comm),
            };
            let key = SocketKey { pid, fd };
            if !tables.adopt(key, &value) {
                continue;
            }
            // The scan above is not atomic: the socket may have been closed since, and an entry
            // for a closed fd would be taken for whatever the process opens there next.
            if procfs::socket_inode(pid, fd).ok().flatten() != Some(inode) {
                if tables
                    .get(key)
                    .is_some_and(|e| e.preexisting && e.connect_ns == now_ns)
                {
                    tables.take(key);
                }
                continue;
            }
            self.known.insert(
                key,
                Known {
                    connect_ns: now_ns,
                    inode: Some(inode),
                    ..Known::default()
                },
            );
            let entry = TrackedEntry::from_map(key, &value);
            events.push(KernelEvent::Connect(ConnectEvent {
                socket: entry.socket,
                tid: pid,
                result: ConnectResult::Existing,
                ts_ns: now_ns,
            }));
        }
        events
    }

    /// The tracked sockets of process `pid` still in the kernel map. Found through what user
    /// space knows rather than by walking the whole map, which would cost a syscall per tracked
    /// socket on every process exit; a socket whose connect record was lost is left to the
    /// reconciliation.
    fn sockets_of(&self, pid: u32, tables: &KernelTables) -> Vec<TrackedEntry> {
        self.known
            .keys()
            .filter(|key| key.pid == pid)
            .filter_map(|key| tables.get(*key))
            .collect()
    }

    /// Remembers a new socket. Its inode is learned lazily (by the reconciliation, or an exec),
    /// so a connect costs user space no syscall.
    fn learn(&mut self, event: &ConnectEvent) {
        let key = event.socket.key;
        let inode = None;
        self.known.insert(
            key,
            Known {
                connect_ns: event.ts_ns,
                inode,
                ..Known::default()
            },
        );
    }

    fn known_entry(&mut self, entry: &TrackedEntry) -> &mut Known {
        let known = self.known.entry(entry.socket.key).or_default();
        if known.connect_ns != entry.connect_ns {
            *known = Known {
                connect_ns: entry.connect_ns,
                ..Known::default()
            };
        }
        known
    }

    /// Whether the entry's fd is still open on the same socket (learning its inode if new).
    fn still_open(&mut self, entry: &TrackedEntry) -> bool {
        let key = entry.socket.key;
        let inode = match procfs::socket_inode(key.pid, key.fd) {
            Ok(Some(inode)) => inode,
            // The fd is gone, or now names something that is not a socket.
            Ok(None) | Err(_) => return false,
        };
        let known = self.known_entry(entry);
        match known.inode {
            Some(expected) => expected == inode,
            None => {
                known.inode = Some(inode);
                true
            }
        }
    }

    fn accepted(
        &mut self,
        mut event: ConnectEvent,
        listener: u32,
        peer_unknown: bool,
        tables: &mut KernelTables,
    ) -> Option<KernelEvent> {
        let key = event.socket.key;
        let inode = procfs::socket_inode(key.pid, key.fd).ok().flatten();
        let mut known = Known {
            connect_ns: event.ts_ns,
            inode,
            ..Known::default()
        };
        if peer_unknown {
            // Only /proc can say whether this is an IPv4 socket at all.
            let socket = inode.and_then(|inode| procfs::inet_sockets().remove(&inode));
            let Some(socket) = socket else {
                tables.take(key);
                return None;
            };
            known.peer = Some((*socket.remote.ip(), socket.remote.port()));
            known.lport = socket.local.port();
        } else {
            known.lport = self.listener_port(key.pid, listener).unwrap_or(0);
        }
        enrich(&mut event.socket, &known);
        self.known.insert(key, known);
        Some(KernelEvent::Connect(event))
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

    /// Removes `keys` from the kernel map and reports each closed by `cause`.
    fn settle(
        &mut self,
        tables: &mut KernelTables,
        keys: Vec<SocketKey>,
        cause: CloseCause,
        tid: u32,
        ts_ns: u64,
    ) -> Vec<KernelEvent> {
        keys.into_iter()
            .filter_map(|key| {
                let entry = tables.take(key)?;
                let known = self.known.remove(&key).unwrap_or_default();
                let mut event = entry.closed(cause, tid, ts_ns);
                enrich(&mut event.socket, &known);
                Some(KernelEvent::Close(event))
            })
            .collect()
    }
}

fn enrich(socket: &mut Endpoint, known: &Known) {
    if socket.lport == 0 {
        socket.lport = known.lport;
    }
    if let Some((addr, port)) = known.peer {
        socket.daddr = addr;
        socket.dport = port;
    }
}

fn comm_bytes(comm: &str) -> [u8; COMM_LEN] {
    let mut bytes = [0u8; COMM_LEN];
    let len = comm.len().min(COMM_LEN - 1);
    bytes[..len].copy_from_slice(&comm.as_bytes()[..len]);
    bytes
}
