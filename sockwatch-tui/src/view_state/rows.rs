//! What the table lists: one [`SocketView`] per socket (open, lingering after its close, or
//! followed), or one [`ProcessView`] per process when grouped.

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
};

use crate::{
    dns::HostNames,
    events::Endpoint,
    rates::{Rates, Throughput},
    reducer::{CloseReason, ClosedRow, KernelCounters, Model, RowState, SocketRow, Totals},
    socket_id::SocketId,
};

use super::ViewState;

/// A socket's state as the table shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShownState {
    Connecting,
    Established,
    Closed(CloseReason),
}

impl ShownState {
    /// Short, like `ss`: `SYN-SENT`, `ESTAB`, `CLOSED`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connecting => "SYN-SENT",
            Self::Established => "ESTAB",
            Self::Closed(_) => "CLOSED",
        }
    }

    pub fn is_closed(self) -> bool {
        matches!(self, Self::Closed(_))
    }
}

/// One socket, with everything any view of it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketView {
    pub id: SocketId,
    pub socket: Endpoint,
    /// The thread that connected (not known for a socket only seen closing).
    pub tid: Option<u32>,
    /// The destination's name, when names are on and it has one.
    pub host: Option<String>,
    pub state: ShownState,
    pub closed_ns: Option<u64>,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub rate: Throughput,
    /// How long it has been open (for a closed one: how long it lived).
    pub age_ns: u64,
    pub preexisting: bool,
}

impl SocketView {
    fn open(row: &SocketRow, now_ns: u64, rates: &Rates, hosts: &HostNames) -> Self {
        let id = SocketId::new(row.socket.key, row.connect_ns);
        Self {
            id,
            host: hosts.name(row.socket.daddr).map(str::to_owned),
            socket: row.socket.clone(),
            tid: Some(row.tid),
            state: match row.state {
                RowState::Connecting => ShownState::Connecting,
                RowState::Established => ShownState::Established,
            },
            closed_ns: None,
            bytes_sent: row.bytes_sent,
            bytes_recv: row.bytes_recv,
            rate: rates.now(&id),
            age_ns: now_ns.saturating_sub(row.connect_ns),
            preexisting: row.preexisting,
        }
    }

    fn closed(row: &ClosedRow, hosts: &HostNames) -> Self {
        Self {
            id: closed_id(row),
            host: hosts.name(row.socket.daddr).map(str::to_owned),
            socket: row.socket.clone(),
            tid: None,
            state: ShownState::Closed(row.reason),
            closed_ns: Some(row.closed_ns),
            bytes_sent: row.bytes_sent,
            bytes_recv: row.bytes_recv,
            rate: Throughput::default(),
            age_ns: row.lifetime_ns,
            preexisting: false,
        }
    }

    /// `host:port` when the name is known, `ip:port` otherwise.
    pub fn destination(&self) -> String {
        match &self.host {
            Some(host) => format!("{host}:{}", self.socket.dport),
            None => format!("{}:{}", self.socket.daddr, self.socket.dport),
        }
    }
}

/// The identity of a closed socket: its connect time is its close time minus its lifetime.
pub fn closed_id(row: &ClosedRow) -> SocketId {
    SocketId::new(
        row.socket.key,
        row.closed_ns.saturating_sub(row.lifetime_ns),
    )
}

/// One process's sockets, summed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessView {
    pub pid: u32,
    pub comm: String,
    pub sockets: usize,
    /// Of `sockets`, how many are closed (lingering).
    pub closed: usize,
    /// Distinct destinations, most used first, as text.
    pub destinations: String,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub rate: Throughput,
    /// Age of its oldest socket.
    pub age_ns: u64,
}

/// Groups sockets by process (pid), in pid order.
pub fn by_process(sockets: &[SocketView]) -> Vec<ProcessView> {
    let mut groups: BTreeMap<u32, Vec<&SocketView>> = BTreeMap::new();
    for socket in sockets {
        groups
            .entry(socket.socket.key.pid)
            .or_default()
            .push(socket);
    }
    groups
        .into_iter()
        .map(|(pid, members)| {
            let mut destinations: BTreeMap<String, usize> = BTreeMap::new();
            for member in &members {
                *destinations.entry(member.destination()).or_default() += 1;
            }
            let mut destinations: Vec<_> = destinations.into_iter().collect();
            destinations.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let newest = members
                .iter()
                .max_by_key(|m| m.id.connect_ns)
                .map(|m| m.socket.comm.clone())
                .unwrap_or_default();
            ProcessView {
                pid,
                comm: newest,
                sockets: members.len(),
                closed: members.iter().filter(|m| m.state.is_closed()).count(),
                destinations: destinations
                    .iter()
                    .map(|(dest, _)| dest.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                bytes_sent: members
                    .iter()
                    .fold(0u64, |sum, m| sum.saturating_add(m.bytes_sent)),
                bytes_recv: members
                    .iter()
                    .fold(0u64, |sum, m| sum.saturating_add(m.bytes_recv)),
                rate: members
                    .iter()
                    .fold(Throughput::default(), |sum, m| Throughput {
                        send: sum.send.saturating_add(m.rate.send),
                        recv: sum.recv.saturating_add(m.rate.recv),
                    }),
                age_ns: members.iter().map(|m| m.age_ns).max().unwrap_or_default(),
            }
        })
        .collect()
}

/// The kernel-driven data the screen shows: live, or as it was when the view was paused.
#[derive(Clone, Debug, Default)]
pub struct Frozen {
    pub now_ns: u64,
    pub totals: Totals,
    pub counters: KernelCounters,
    pub rates: Rates,
    pub rows: Vec<SocketRow>,
    /// Newest first.
    pub closes: Vec<ClosedRow>,
}

impl Frozen {
    pub fn capture(model: &Model) -> Self {
        Self {
            now_ns: model.now_ns,
            totals: model.totals,
            counters: model.counters,
            rates: model.rates.clone(),
            rows: model.rows().cloned().collect(),
            closes: model.closes().cloned().collect(),
        }
    }
}

/// References to what is shown, whichever its source.
pub struct Shown<'a> {
    pub now_ns: u64,
    pub totals: Totals,
    pub counters: KernelCounters,
    pub rates: &'a Rates,
    pub hosts: &'a HostNames,
    pub rows: Vec<&'a SocketRow>,
    /// Newest first.
    pub closes: Vec<&'a ClosedRow>,
}

impl<'a> Shown<'a> {
    pub fn of(model: &'a Model) -> Self {
        match &model.view.paused {
            Some(frozen) => Self {
                now_ns: frozen.now_ns,
                totals: frozen.totals,
                counters: frozen.counters,
                rates: &frozen.rates,
                hosts: &model.hosts,
                rows: frozen.rows.iter().collect(),
                closes: frozen.closes.iter().collect(),
            },
            None => Self {
                now_ns: model.now_ns,
                totals: model.totals,
                counters: model.counters,
                rates: &model.rates,
                hosts: &model.hosts,
                rows: model.rows().collect(),
                closes: model.closes().collect(),
            },
        }
    }

    /// Every socket the table may list, before filtering: the open ones, the recently closed
    /// ones when lingering is on, and the followed one wherever it is.
    pub fn sockets(&self, view: &ViewState) -> Vec<SocketView> {
        let mut sockets: Vec<SocketView> = self
            .rows
            .iter()
            .map(|row| SocketView::open(row, self.now_ns, self.rates, self.hosts))
            .collect();
        let mut seen: HashSet<SocketId> = sockets.iter().map(|s| s.id).collect();
        for closed in &self.closes {
            let id = closed_id(closed);
            let lingering = view.linger
                && closed.closed_ns <= self.now_ns
                && self.now_ns - closed.closed_ns <= view.linger_ns;
            if (lingering || view.follow == Some(id)) && seen.insert(id) {
                sockets.push(SocketView::closed(closed, self.hosts));
            }
        }
        sockets
    }

    /// The close log as shown: newest first, within the scope and the filter.
    pub fn log(&self, view: &ViewState) -> Vec<&'a ClosedRow> {
        if view.scope.is_everything() && view.filter.is_empty() {
            return self.closes.clone();
        }
        self.closes
            .iter()
            .copied()
            .filter(|closed| {
                let socket = SocketView::closed(closed, self.hosts);
                view.scope.matches(&socket) && view.filter.matches(&socket)
            })
            .collect()
    }

    /// A socket by identity, open or in the close log.
    pub fn socket(&self, id: SocketId) -> Option<SocketView> {
        self.rows
            .iter()
            .find(|row| row.socket.key == id.key && row.connect_ns == id.connect_ns)
            .map(|row| SocketView::open(row, self.now_ns, self.rates, self.hosts))
            .or_else(|| {
                self.closes
                    .iter()
                    .find(|closed| closed_id(closed) == id)
                    .map(|closed| SocketView::closed(closed, self.hosts))
            })
    }

    /// Destination addresses of the open sockets.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.rows.iter().map(|row| row.socket.daddr)
    }
}
