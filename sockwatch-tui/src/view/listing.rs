//! What the table lists: sockets by identity (open, lingering after their close, or followed),
//! or one [`GroupView`] per process or owner when grouped; and the context a socket is read in (its
//! host name, the time now).

use std::collections::BTreeMap;

use crate::{
    model::{dns::HostNames, processes::Processes},
    socket::{Comm, Process, Socket, SocketId, Throughput},
};

/// What reading a socket needs besides the socket: names, processes and the clock of the model
/// shown.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub hosts: &'a HostNames,
    pub processes: &'a Processes,
    pub now_ns: u64,
}

impl<'a> Context<'a> {
    /// What its process is (owner, namespace pid), when read.
    pub fn process(&self, socket: &Socket) -> Option<&'a Process> {
        self.processes.get(socket.holder_pid()?)
    }

    /// `nginx.service`, `docker:3f2a1b2c3d4e`; `-` when not known.
    pub fn owner(&self, socket: &Socket) -> String {
        self.process(socket)
            .map_or_else(|| "-".to_owned(), |p| p.owner.to_string())
    }

    /// The remote end's name, when names are on and it has one.
    pub fn host(&self, socket: &Socket) -> Option<&'a str> {
        self.hosts.name(socket.daddr())
    }

    /// `host:port` when the name is known, `ip:port` otherwise.
    pub fn destination(&self, socket: &Socket) -> String {
        match self.host(socket) {
            Some(host) => format!("{host}:{}", socket.dport),
            None => socket.remote(),
        }
    }

    pub fn age_ns(&self, socket: &Socket) -> u64 {
        socket.age_ns(self.now_ns)
    }
}

/// One group of sockets, summed: a process (`p`), or an owner (`o`: a unit or container).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    /// The process; 0 for an owner's group.
    pub pid: u32,
    /// The process's name (its newest socket's); empty for an owner's group.
    pub comm: Comm,
    /// The owner as the OWNER column shows it (`-` when not known).
    pub owner: String,
    /// How many processes the group's sockets belong to.
    pub processes: usize,
    /// Rows that sort alike stay in this order: the pid, or the owner's place by name.
    pub order: u32,
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

/// The sums of `members` (at least one socket), as a group keyed by `pid` or `owner`.
fn summed(
    members: &[&Socket],
    pid: u32,
    owner: String,
    order: u32,
    context: &Context,
) -> GroupView {
    let mut destinations: BTreeMap<String, usize> = BTreeMap::new();
    for member in members {
        *destinations.entry(context.destination(member)).or_default() += 1;
    }
    let mut destinations: Vec<_> = destinations.into_iter().collect();
    destinations.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let comm = if pid == 0 {
        Comm::default()
    } else {
        members
            .iter()
            .max_by_key(|m| m.id.opened_ns)
            .map(|m| m.comm)
            .unwrap_or_default()
    };
    let pids: std::collections::BTreeSet<u32> = members.iter().map(|m| m.pid()).collect();
    GroupView {
        pid,
        comm,
        owner,
        processes: pids.len(),
        order,
        sockets: members.len(),
        closed: members.iter().filter(|m| m.is_closed()).count(),
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
        rate: members.iter().fold(Throughput::default(), |sum, m| {
            sum.saturating_add(m.rates.now)
        }),
        age_ns: members
            .iter()
            .map(|m| context.age_ns(m))
            .max()
            .unwrap_or_default(),
    }
}

/// Groups sockets by process (pid), in pid order.
pub fn by_process(sockets: &[&Socket], context: &Context) -> Vec<GroupView> {
    let mut groups: BTreeMap<u32, Vec<&Socket>> = BTreeMap::new();
    for socket in sockets {
        groups.entry(socket.pid()).or_default().push(socket);
    }
    groups
        .into_iter()
        .map(|(pid, members)| {
            let owner = members
                .first()
                .map_or_else(String::new, |m| context.owner(m));
            summed(&members, pid, owner, pid, context)
        })
        .collect()
}

/// Groups sockets by owner (unit, container, or `-` when not known), in owner order.
pub fn by_owner(sockets: &[&Socket], context: &Context) -> Vec<GroupView> {
    let mut groups: BTreeMap<String, Vec<&Socket>> = BTreeMap::new();
    for socket in sockets {
        groups
            .entry(context.owner(socket))
            .or_default()
            .push(socket);
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(order, (owner, members))| {
            let order = u32::try_from(order).unwrap_or(u32::MAX);
            summed(&members, 0, owner, order, context)
        })
        .collect()
}

/// An owner's row key: its name, hashed (a row key is a small copyable value).
pub fn owner_key(owner: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same name hashes alike all run long.
    let mut hasher = std::hash::DefaultHasher::new();
    owner.hash(&mut hasher);
    hasher.finish()
}

/// A row of the table: one socket, or one process or owner when grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowKey {
    Socket(SocketId),
    Process(u32),
    /// [`owner_key`] of the owner's name.
    Owner(u64),
}

/// The table's rows, filtered and sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listing {
    /// Looked up in the model shown when drawn (only the rows on screen are).
    Sockets(Vec<SocketId>),
    Processes(Vec<GroupView>),
    Owners(Vec<GroupView>),
}

impl Listing {
    pub fn len(&self) -> usize {
        match self {
            Self::Sockets(rows) => rows.len(),
            Self::Processes(rows) | Self::Owners(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn key(&self, index: usize) -> Option<RowKey> {
        match self {
            Self::Sockets(rows) => rows.get(index).map(|id| RowKey::Socket(*id)),
            Self::Processes(rows) => rows.get(index).map(|p| RowKey::Process(p.pid)),
            Self::Owners(rows) => rows.get(index).map(|o| RowKey::Owner(owner_key(&o.owner))),
        }
    }

    pub fn position(&self, key: RowKey) -> Option<usize> {
        match (self, key) {
            (Self::Sockets(rows), RowKey::Socket(id)) => rows.iter().position(|r| *r == id),
            (Self::Processes(rows), RowKey::Process(pid)) => rows.iter().position(|p| p.pid == pid),
            (Self::Owners(rows), RowKey::Owner(key)) => {
                rows.iter().position(|o| owner_key(&o.owner) == key)
            }
            _ => None,
        }
    }
}

/// What the table shows now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Visible {
    pub listing: Listing,
    /// Sockets in scope before the `/` filter (the "of N" in the title).
    pub in_scope: usize,
    /// Sockets that pass the filter.
    pub matching: usize,
    /// Of `matching`, how many are closed (lingering or followed).
    pub closed: usize,
    pub selected: Option<usize>,
}

impl Visible {
    pub fn selected_key(&self) -> Option<RowKey> {
        self.selected.and_then(|index| self.listing.key(index))
    }
}
