//! The table's columns, one line each: title, width, how the cell reads and how it sorts.
//! Adding a column is adding a line here (e.g. `PROTO`: `text: |s| s.socket.proto.label()...`).

use std::{borrow::Borrow, cmp::Ordering, net::IpAddr};

use super::{
    format,
    listing::{Context, GroupView},
};
use crate::socket::{prefetch_lines, Direction, HealthMark, Proto, Socket, State, TcpHealth};

/// What a column sorts by: numbers, or text compared without case. 16 bytes (the number
/// sits beside the text's null pointer): a listing of 100,000 rows keeps one each.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortKey {
    Num(u64),
    Text(Box<str>),
}

const _: () = assert!(std::mem::size_of::<SortKey>() == 16);

/// One column of a table listing rows of type `R`.
pub struct Column<R> {
    /// Also the column's name for sorting (stable when columns are added).
    pub title: &'static str,
    /// Width in cells, or the least width of the column that takes the spare room.
    pub width: u16,
    /// Takes whatever room the other columns leave.
    pub fill: bool,
    /// Kept only while the fill column still has [`ROOM_BEFORE_EXTRAS`] cells: worth less than
    /// a whole destination.
    pub extra: bool,
    /// Numbers read best right-aligned.
    pub right: bool,
    /// Too long, it loses its front rather than its end (`…ample.com:443`).
    pub keep_end: bool,
    /// When the terminal is too narrow, columns with the highest rank go first; 0 stays.
    pub hide_rank: u8,
    /// Its first sort direction: largest first for amounts.
    pub descending: bool,
    pub text: fn(&R, &Context) -> String,
    pub key: fn(&R, &Context) -> SortKey,
    /// Its key follows the clock (an age), so every row's key moves as time passes: a
    /// listing sorted by it is sorted anew, never only where rows moved.
    pub by_clock: bool,
}

impl<R> Column<R> {
    const fn new(
        title: &'static str,
        width: u16,
        hide_rank: u8,
        text: fn(&R, &Context) -> String,
        key: fn(&R, &Context) -> SortKey,
    ) -> Self {
        Self {
            title,
            width,
            fill: false,
            extra: false,
            right: false,
            keep_end: false,
            hide_rank,
            descending: false,
            text,
            key,
            by_clock: false,
        }
    }

    /// Takes the spare room.
    const fn fill(mut self) -> Self {
        self.fill = true;
        self
    }

    const fn extra(mut self) -> Self {
        self.extra = true;
        self
    }

    const fn keep_end(mut self) -> Self {
        self.keep_end = true;
        self
    }

    /// Right-aligned, largest first.
    const fn amount(mut self) -> Self {
        self.right = true;
        self.descending = true;
        self
    }

    const fn by_clock(mut self) -> Self {
        self.by_clock = true;
        self
    }
}

fn num(n: impl Into<u64>) -> SortKey {
    SortKey::Num(n.into())
}

fn text(s: &str) -> SortKey {
    SortKey::Text(s.to_lowercase().into())
}

/// Names sort by name; bare addresses by their numeric value (zero-padded), then port: IPv4
/// as ever (`010.000.000.001:00443`), IPv6 after it and before names (`[` + 32 hex digits
/// sorts after digits and before lowercase letters).
fn destination_key(s: &Socket, context: &Context) -> SortKey {
    let port = s.dport;
    match context.host(s) {
        Some(host) => SortKey::Text(format!("{}:{port:05}", host.to_lowercase()).into()),
        None => match s.daddr() {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                SortKey::Text(format!("{a:03}.{b:03}.{c:03}.{d:03}:{port:05}").into())
            }
            IpAddr::V6(v6) => SortKey::Text(format!("[{:032x}]:{port:05}", u128::from(v6)).into()),
        },
    }
}

/// `SYN-SENT`, `ESTAB`, `CLOSED`, as `ss` says them.
pub fn state_label(s: &Socket) -> &'static str {
    match (s.closed, s.state) {
        (Some(_), _) => "CLOSED",
        (None, State::Connecting) => "SYN-SENT",
        (None, State::Established) => "ESTAB",
    }
}

fn state_key(s: &Socket, _: &Context) -> SortKey {
    num(match (s.closed, s.state) {
        (None, State::Connecting) => 0u8,
        (None, State::Established) => 1,
        (Some(_), _) => 2,
    })
}

type SocketColumn = Column<Socket>;

/// A pid or fd, or `-` where not known (see `socket::NO_HOLDER`, `socket::NO_FD`).
pub fn known(value: Option<u32>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}
type GroupColumn = Column<GroupView>;

/// The socket table, left to right. The default sort is `SEND/s`, largest first.
#[rustfmt::skip]
pub static SOCKET_COLUMNS: &[Column<Socket>] = &[
    SocketColumn::new("PID", 7, 0, |s, _| known(s.holder_pid()), |s, _| num(s.pid())),
    SocketColumn::new("TID", 7, 12, |s, _| s.tid.to_string(), |s, _| num(s.tid)),
    SocketColumn::new("COMM", 15, 0, |s, _| s.comm.to_string(), |s, _| text(&s.comm)),
    SocketColumn::new("OWNER", 19, 9, |s, c| c.owner(s), |s, c| text(&c.owner(s))).extra(),
    SocketColumn::new("FD", 4, 6, |s, _| known(s.holder_fd()), |s, _| num(s.fd())),
    SocketColumn::new("PROTO", 6, 10, |s, _| proto_text(s).into(), |s, _| text(proto_text(s))),
    SocketColumn::new("DIR", 4, 5, |s, _| dir_text(s).into(), |s, _| text(dir_text(s))),
    SocketColumn::new("LPORT", 6, 11, |s, _| port_text(s.lport), |s, _| num(s.lport)),
    SocketColumn::new("DESTINATION", 21, 0, |s, c| c.destination(s), destination_key).fill().keep_end(),
    SocketColumn::new("STATE", 8, 4, |s, _| state_label(s).into(), state_key),
    SocketColumn::new("SENT", 10, 7, |s, _| counted(s, s.bytes_sent), |s, _| num(s.bytes_sent)).amount(),
    SocketColumn::new("RECV", 10, 8, |s, _| counted(s, s.bytes_recv), |s, _| num(s.bytes_recv)).amount(),
    SocketColumn::new("SEND/s", 10, 0, |s, _| format::rate(s.rates.now.send), |s, _| num(s.rates.now.send)).amount(),
    SocketColumn::new("RECV/s", 10, 2, |s, _| format::rate(s.rates.now.recv), |s, _| num(s.rates.now.recv)).amount(),
    SocketColumn::new("AGE", 6, 3, |s, c| format::age(c.age_ns(s)), |s, c| num(c.age_ns(s))).by_clock(),
];

/// The TCP view (`t`): why a connection is slow or failing, from the kernel's own TCP state
/// (`kernel/diag.rs`). `-` where the kernel has said nothing yet (UDP, or before a refresh).
#[rustfmt::skip]
pub static TCP_COLUMNS: &[Column<Socket>] = &[
    SocketColumn::new("PID", 7, 0, |s, _| known(s.holder_pid()), |s, _| num(s.pid())),
    SocketColumn::new("COMM", 15, 0, |s, _| s.comm.to_string(), |s, _| text(&s.comm)),
    SocketColumn::new("FD", 4, 8, |s, _| known(s.holder_fd()), |s, _| num(s.fd())),
    SocketColumn::new("LPORT", 6, 2, |s, _| port_text(s.lport), |s, _| num(s.lport)),
    SocketColumn::new("DESTINATION", 21, 0, |s, c| c.destination(s), destination_key).fill().keep_end(),
    SocketColumn::new("STATE", 8, 6, |s, _| state_label(s).into(), state_key),
    SocketColumn::new("HEALTH", 10, 0, mark_text, mark_key).amount(),
    SocketColumn::new("RTT", 8, 0, |s, _| tcp_text(s, |h| format::micros(h.rtt_us.into())), |s, _| tcp_key(s, |h| h.rtt_us.into())).amount(),
    SocketColumn::new("RETRANS", 7, 1, |s, _| tcp_text(s, |h| h.retrans.to_string()), |s, _| tcp_key(s, |h| h.retrans.into())).amount(),
    SocketColumn::new("CWND", 6, 5, |s, _| tcp_text(s, |h| h.cwnd.to_string()), |s, _| tcp_key(s, |h| h.cwnd.into())).amount(),
    SocketColumn::new("SEND-Q", 9, 4, |s, _| tcp_text(s, |h| format::bytes(h.send_q.into())), |s, _| tcp_key(s, |h| h.send_q.into())).amount(),
    SocketColumn::new("RECV-Q", 9, 3, |s, _| tcp_text(s, |h| format::bytes(h.recv_q.into())), |s, _| tcp_key(s, |h| h.recv_q.into())).amount(),
    SocketColumn::new("CONNECT", 8, 7, |s, _| s.connect_us().map_or_else(|| "-".to_owned(), format::micros), |s, _| num(s.connect_us().map_or(0, |us| us.saturating_add(1)))).amount(),
    SocketColumn::new("AGE", 6, 9, |s, c| format::age(c.age_ns(s)), |s, c| num(c.age_ns(s))).by_clock(),
];

pub const TCP_SORT_COLUMN: &str = "RTT";

/// A number from the TCP reading, `-` without one.
fn tcp_text(s: &Socket, field: fn(&TcpHealth) -> String) -> String {
    s.tcp.as_ref().map_or_else(|| "-".to_owned(), field)
}

/// Sockets without a reading sort below every number.
fn tcp_key(s: &Socket, field: fn(&TcpHealth) -> u64) -> SortKey {
    num(s.tcp.as_ref().map_or(0, |h| field(h).saturating_add(1)))
}

fn mark_text(s: &Socket, _: &Context) -> String {
    s.mark
        .map_or_else(String::new, |mark| mark.label(s.idle_secs()))
}

/// Worst first when sorted largest first: trouble, then idle (longest first), then nothing.
fn mark_key(s: &Socket, _: &Context) -> SortKey {
    num(match s.mark {
        None => 0u64,
        Some(HealthMark::Idle) => 1 + u64::from(s.idle_secs()),
        Some(HealthMark::AppNotReading) => 1 << 34,
        Some(HealthMark::PeerNotReading) => 2 << 34,
        Some(HealthMark::Retransmitting) => 3 << 34,
    })
}

/// The table grouped by process.
#[rustfmt::skip]
pub static PROCESS_COLUMNS: &[Column<GroupView>] = &[
    GroupColumn::new("PID", 7, 0, |p, _| p.pid.to_string(), |p, _| num(p.pid)),
    GroupColumn::new("COMM", 15, 0, |p, _| p.comm.to_string(), |p, _| text(&p.comm)),
    GroupColumn::new("OWNER", 19, 8, |p, _| p.owner.clone(), |p, _| text(&p.owner)).extra(),
    GroupColumn::new("SOCKETS", 8, 5, sockets_text, |p, _| num(p.sockets as u64)).amount(),
    GroupColumn::new("DESTINATIONS", 16, 0, |p, _| p.destinations.clone(), |p, _| text(&p.destinations)).fill(),
    GroupColumn::new("SENT", 10, 6, |p, _| format::bytes(p.bytes_sent), |p, _| num(p.bytes_sent)).amount(),
    GroupColumn::new("RECV", 10, 7, |p, _| format::bytes(p.bytes_recv), |p, _| num(p.bytes_recv)).amount(),
    GroupColumn::new("SEND/s", 10, 0, |p, _| format::rate(p.rate.send), |p, _| num(p.rate.send)).amount(),
    GroupColumn::new("RECV/s", 10, 3, |p, _| format::rate(p.rate.recv), |p, _| num(p.rate.recv)).amount(),
    GroupColumn::new("AGE", 6, 4, |p, _| format::age(p.age_ns), |p, _| num(p.age_ns)).by_clock(),
];

/// The table grouped by owner (`o`): a unit's or container's processes and sockets, summed.
#[rustfmt::skip]
pub static OWNER_COLUMNS: &[Column<GroupView>] = &[
    GroupColumn::new("OWNER", 19, 0, |p, _| p.owner.clone(), |p, _| text(&p.owner)),
    GroupColumn::new("PROCS", 6, 6, |p, _| p.processes.to_string(), |p, _| num(p.processes as u64)).amount(),
    GroupColumn::new("SOCKETS", 8, 5, sockets_text, |p, _| num(p.sockets as u64)).amount(),
    GroupColumn::new("DESTINATIONS", 16, 0, |p, _| p.destinations.clone(), |p, _| text(&p.destinations)).fill(),
    GroupColumn::new("SENT", 10, 7, |p, _| format::bytes(p.bytes_sent), |p, _| num(p.bytes_sent)).amount(),
    GroupColumn::new("RECV", 10, 8, |p, _| format::bytes(p.bytes_recv), |p, _| num(p.bytes_recv)).amount(),
    GroupColumn::new("SEND/s", 10, 0, |p, _| format::rate(p.rate.send), |p, _| num(p.rate.send)).amount(),
    GroupColumn::new("RECV/s", 10, 3, |p, _| format::rate(p.rate.recv), |p, _| num(p.rate.recv)).amount(),
    GroupColumn::new("AGE", 6, 4, |p, _| format::age(p.age_ns), |p, _| num(p.age_ns)).by_clock(),
];

/// A count, marked `*` when it is a lower bound (bytes moved where the backend cannot see).
fn counted(s: &Socket, bytes: u64) -> String {
    if s.complete {
        format::bytes(bytes)
    } else {
        format!("{}*", format::bytes(bytes))
    }
}

fn proto_text(s: &Socket) -> &'static str {
    match s.proto {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
        Proto::Unknown => "-",
    }
}

fn dir_text(s: &Socket) -> &'static str {
    match s.direction {
        Direction::Out => "OUT",
        Direction::In => "IN",
    }
}

/// 0 is a local port not known.
fn port_text(port: u16) -> String {
    if port == 0 {
        "-".into()
    } else {
        port.to_string()
    }
}

fn sockets_text(p: &GroupView, _: &Context) -> String {
    if p.closed > 0 {
        format!("{}-{}", p.sockets - p.closed, p.closed)
    } else {
        p.sockets.to_string()
    }
}

pub const DEFAULT_SORT_COLUMN: &str = "SEND/s";

/// Which column the table is sorted by, and which way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub column: &'static str,
    pub descending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Self {
            column: DEFAULT_SORT_COLUMN,
            descending: true,
        }
    }
}

impl Sort {
    /// The TCP view's first sort: slowest round trip first.
    pub fn tcp() -> Self {
        Self {
            column: TCP_SORT_COLUMN,
            descending: true,
        }
    }

    fn index<R>(self, columns: &[Column<R>]) -> usize {
        columns
            .iter()
            .position(|c| c.title == self.column)
            .unwrap_or(0)
    }

    /// The next (`step` 1) or previous (-1) column, in its own first direction.
    pub fn step<R>(self, columns: &[Column<R>], step: isize) -> Self {
        if columns.is_empty() {
            return self;
        }
        let index = self.index(columns).cast_signed();
        let next = (index + step)
            .rem_euclid(columns.len().cast_signed())
            .cast_unsigned();
        Self {
            column: columns[next].title,
            descending: columns[next].descending,
        }
    }

    pub fn reversed(self) -> Self {
        Self {
            descending: !self.descending,
            ..self
        }
    }

    /// This sort where it names one of `columns`, else the default (or the first column).
    pub fn valid_for<R>(self, columns: &[Column<R>]) -> Self {
        if columns.iter().any(|c| c.title == self.column) {
            self
        } else if let Some(c) = columns.iter().find(|c| c.title == DEFAULT_SORT_COLUMN) {
            Self {
                column: c.title,
                descending: c.descending,
            }
        } else {
            Self::default()
        }
    }

    /// Sorts `rows` by this column; equals keep the order of `tiebreak` (always ascending), so
    /// rows never swap places between frames when their values tie. Returns each row's key, in
    /// the new order (none when the column is not among `columns`).
    pub fn apply<R, T: Borrow<R>, K: Ord>(
        self,
        columns: &[Column<R>],
        rows: &mut Vec<T>,
        context: &Context,
        tiebreak: fn(&T) -> K,
    ) -> Vec<SortKey> {
        let Some(column) = columns.iter().find(|c| c.title == self.column) else {
            rows.sort_by_key(tiebreak);
            return Vec::new();
        };
        // In tiebreak order first (the rows come so, but for a few closed ones lingering): a
        // stable sort by key alone then keeps ties in it, and no comparison reads a tiebreak.
        if !rows.is_sorted_by_key(tiebreak) {
            rows.sort_by_key(tiebreak);
        }
        // Each row's key taken once: a row is read once, not at every comparison.
        let mut keys: Vec<SortKey> = rows
            .iter()
            .map(|r| (column.key)(r.borrow(), context))
            .collect();
        let order = self.ranking(&keys);
        let mut taken: Vec<Option<T>> = rows.drain(..).map(Some).collect();
        rows.extend(
            gather(&order, &mut taken, Option::take)
                .into_iter()
                .flatten(),
        );
        gather(&order, &mut keys, |key| {
            std::mem::replace(key, SortKey::Num(0))
        })
    }

    /// Rows named by `ids` (each unique, the tiebreak) with their `keys` for this sort (none
    /// when it has no column: then by id alone), put in order; returns both in it.
    pub fn arrange<K: Ord + Copy>(self, ids: Vec<K>, keys: Vec<SortKey>) -> (Vec<K>, Vec<SortKey>) {
        let (mut ids, mut keys) = (ids, keys);
        if keys.len() != ids.len() {
            ids.sort_unstable();
            return (ids, Vec::new());
        }
        // In id order first (they come so, but for a few closed rows lingering): a stable sort
        // by key alone then keeps ties in it.
        if !ids.is_sorted() {
            let mut pairs: Vec<(K, SortKey)> = ids.into_iter().zip(keys).collect();
            pairs.sort_unstable_by_key(|pair| pair.0);
            (ids, keys) = pairs.into_iter().unzip();
        }
        let order = self.ranking(&keys);
        let ids = gather(&order, &mut ids, |id| *id);
        let keys = gather(&order, &mut keys, |key| {
            std::mem::replace(key, SortKey::Num(0))
        });
        (ids, keys)
    }

    /// The positions of `keys` in this sort's order, ties in position order.
    fn ranking(self, keys: &[SortKey]) -> Vec<u32> {
        let numbers: Option<Vec<u64>> = keys
            .iter()
            .map(|key| match key {
                // Descending is ascending in the complement, ties still in position order.
                SortKey::Num(n) if self.descending => Some(!n),
                SortKey::Num(n) => Some(*n),
                SortKey::Text(_) => None,
            })
            .collect();
        if let Some(numbers) = numbers {
            return radix_order(&numbers);
        }
        let mut order: Vec<u32> = (0..keys.len() as u32).collect();
        order.sort_by(|&a, &b| {
            let order = keys[a as usize].cmp(&keys[b as usize]);
            if self.descending {
                order.reverse()
            } else {
                order
            }
        });
        order
    }

    /// The order of two rows by their keys, then (ascending) their tiebreaks.
    pub fn order<K: Ord>(self, (ka, ta): (&SortKey, &K), (kb, tb): (&SortKey, &K)) -> Ordering {
        let order = ka.cmp(kb);
        let order = if self.descending {
            order.reverse()
        } else {
            order
        };
        order.then_with(|| ta.cmp(tb))
    }

    /// The header's title for `column`: its name with ▲ or ▼ when it is the sort column.
    pub fn title<R>(self, column: &Column<R>) -> String {
        if column.title == self.column {
            format!(
                "{}{}",
                column.title,
                if self.descending { "▼" } else { "▲" }
            )
        } else {
            column.title.to_owned()
        }
    }
}

pub fn group_tiebreak(p: &GroupView) -> u32 {
    p.order
}

/// `take` of each of `items` at the positions `order` names, in that order. A gather at 100k
/// rows reads all over megabytes of items: each is asked for a few ahead of its turn, as
/// waiting for each in turn costs more than the rest of the sort.
fn gather<T, U>(order: &[u32], items: &mut [T], take: impl Fn(&mut T) -> U) -> Vec<U> {
    const AHEAD: usize = 16;
    let mut out = Vec::with_capacity(order.len());
    for (i, &at) in order.iter().enumerate() {
        if let Some(next) = order
            .get(i + AHEAD)
            .and_then(|&next| items.get(next as usize))
        {
            prefetch_lines(next, 1);
        }
        out.push(take(&mut items[at as usize]));
    }
    out
}

/// The positions of `keys` in ascending order of their values, equal values in position order:
/// a stable least-significant-digit radix sort, a byte per pass, skipping the bytes every key
/// shares (a rate's high bytes). 100k rows sort in a few passes over 12-byte pairs, where a
/// comparison sort would take tens of milliseconds.
pub fn radix_order(keys: &[u64]) -> Vec<u32> {
    let mut pairs: Vec<(u64, u32)> = keys.iter().zip(0u32..).map(|(&k, i)| (k, i)).collect();
    let mut counts = [[0usize; 256]; 8];
    for &(key, _) in &pairs {
        for (byte, count) in counts.iter_mut().enumerate() {
            count[(key >> (8 * byte)) as usize & 0xff] += 1;
        }
    }
    let mut spare = vec![(0u64, 0u32); pairs.len()];
    for (byte, count) in counts.iter().enumerate() {
        // Every key has the same digit here: the pass would leave the order as it is.
        if count.contains(&pairs.len()) {
            continue;
        }
        let mut next = [0usize; 256];
        let mut sum = 0;
        for (slot, &n) in next.iter_mut().zip(count) {
            *slot = sum;
            sum += n;
        }
        for &(key, i) in &pairs {
            let digit = (key >> (8 * byte)) as usize & 0xff;
            spare[next[digit]] = (key, i);
            next[digit] += 1;
        }
        std::mem::swap(&mut pairs, &mut spare);
    }
    pairs.into_iter().map(|(_, i)| i).collect()
}

/// How wide the fill column (the destination) must stay for an [`Column::extra`] column to be
/// shown beside it: a host name with its port, or most IPv6 addresses with theirs.
pub const ROOM_BEFORE_EXTRAS: u16 = 32;

/// Which columns fit in `width` cells (with one cell between columns), dropping the
/// highest-ranked first; returns their indices, left to right.
pub fn fitting<R>(columns: &[Column<R>], width: u16) -> Vec<usize> {
    let mut shown: Vec<usize> = (0..columns.len()).collect();
    loop {
        let extras = shown.iter().any(|&i| columns[i].extra);
        let needed: u32 = shown
            .iter()
            .map(|&i| {
                let column = &columns[i];
                u32::from(if extras && column.fill {
                    column.width.max(ROOM_BEFORE_EXTRAS)
                } else {
                    column.width
                })
            })
            .sum::<u32>()
            + u32::try_from(shown.len().saturating_sub(1)).unwrap_or(u32::MAX);
        if needed <= u32::from(width) {
            return shown;
        }
        let drop = shown
            .iter()
            .enumerate()
            .filter(|(_, &i)| columns[i].hide_rank > 0)
            .max_by_key(|(_, &i)| columns[i].hide_rank)
            .map(|(at, _)| at);
        match drop {
            Some(at) => {
                shown.remove(at);
            }
            None => return shown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        dns::{Answer, HostNames, Outcome},
        processes::Processes,
    };
    use crate::socket::SocketKey;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Bare addresses by number, IPv4 first (as before IPv6 rows came), then names.
    #[test]
    fn destinations_sort_ipv4_then_ipv6_by_number_then_names() {
        let mut hosts = HostNames::new(true);
        let named = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
        hosts.observe([named].into_iter(), 0);
        let outcome = Outcome::Name("db.internal".into());
        hosts.answer(
            Answer {
                addr: named,
                outcome,
            },
            0,
        );
        let context = Context {
            hosts: &hosts,
            processes: &Processes::default(),
            now_ns: 0,
        };
        let row = |addr: IpAddr, port| Socket::new(SocketKey { pid: 1, fd: 3 }, 0, addr, port, "x");
        let in_order = [
            row(Ipv4Addr::new(9, 0, 0, 1).into(), 80),
            row(Ipv4Addr::new(10, 0, 0, 1).into(), 80),
            row(Ipv4Addr::new(10, 0, 0, 1).into(), 443),
            row(Ipv6Addr::LOCALHOST.into(), 8080),
            row("fd00::1".parse::<Ipv6Addr>().unwrap().into(), 80),
            row(named, 5432),
        ];
        let keys: Vec<_> = in_order
            .iter()
            .map(|s| destination_key(s, &context))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
    }

    #[test]
    fn column_titles_are_unique_and_the_default_exists() {
        for (titles, default) in [
            (
                SOCKET_COLUMNS.iter().map(|c| c.title).collect::<Vec<_>>(),
                DEFAULT_SORT_COLUMN,
            ),
            (
                PROCESS_COLUMNS.iter().map(|c| c.title).collect(),
                DEFAULT_SORT_COLUMN,
            ),
            (
                TCP_COLUMNS.iter().map(|c| c.title).collect(),
                TCP_SORT_COLUMN,
            ),
        ] {
            let mut unique = titles.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), titles.len());
            assert!(titles.contains(&default));
        }
    }

    #[test]
    fn stepping_wraps_and_takes_each_columns_direction() {
        let sort = Sort::default();
        let prev = sort.step(SOCKET_COLUMNS, -1);
        assert_eq!((prev.column, prev.descending), ("RECV", true));
        let first = Sort {
            column: "PID",
            descending: false,
        };
        assert_eq!(first.step(SOCKET_COLUMNS, -1).column, "AGE");
        assert_eq!(first.step(SOCKET_COLUMNS, 1).column, "TID");
        assert_eq!(sort.reversed().descending, !sort.descending);
        let send_rate = SOCKET_COLUMNS
            .iter()
            .find(|c| c.title == "SEND/s")
            .expect("a SEND/s column");
        assert_eq!(sort.title(send_rate), "SEND/s▼");
    }

    #[test]
    fn narrow_terminals_drop_low_priority_columns() {
        let all = fitting(SOCKET_COLUMNS, 500);
        assert_eq!(all.len(), SOCKET_COLUMNS.len());
        let narrow = fitting(SOCKET_COLUMNS, 80);
        let titles: Vec<_> = narrow.iter().map(|&i| SOCKET_COLUMNS[i].title).collect();
        assert!(titles.contains(&"DESTINATION") && titles.contains(&"SEND/s"));
        assert!(!titles.contains(&"TID"));
        // Never below the columns that always stay.
        assert!(!fitting(SOCKET_COLUMNS, 1).is_empty());
    }

    #[test]
    fn the_radix_order_is_a_stable_sort() {
        // Ties (many), keys differing only in a high byte, the extremes, and a spread of
        // pseudo-random values.
        let mut keys = vec![
            0,
            u64::MAX,
            1 << 56,
            5,
            5,
            0,
            1 << 56,
            255,
            256,
            u64::MAX - 1,
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            keys.push(match x % 4 {
                0 => 0,
                1 => x % 1000,
                2 => x >> 20,
                _ => x,
            });
        }
        let mut expected: Vec<u32> = (0..keys.len() as u32).collect();
        expected.sort_by_key(|&i| keys[i as usize]);
        assert_eq!(radix_order(&keys), expected);
        assert_eq!(radix_order(&[]), Vec::<u32>::new());
        assert_eq!(radix_order(&[7, 7, 7]), [0, 1, 2]);
    }

    #[test]
    fn a_sort_by_numbers_or_text_keeps_ties_in_tiebreak_order_either_way() {
        let context = Context {
            hosts: &crate::model::dns::HostNames::new(false),
            processes: &Processes::default(),
            now_ns: 0,
        };
        let columns: &[Column<(u64, &str, u32)>] = &[
            Column::new("N", 5, 0, |r, _| r.0.to_string(), |r, _| num(r.0)),
            Column::new("T", 5, 0, |r, _| r.1.to_owned(), |r, _| text(r.1)),
        ];
        let rows = [
            (2, "b", 4),
            (1, "A", 3),
            (2, "a", 1),
            (3, "c", 2),
            (1, "b", 0),
        ];
        let sorted = |column, descending| {
            let mut rows: Vec<(u64, &str, u32)> = rows.to_vec();
            let keys = Sort { column, descending }.apply(columns, &mut rows, &context, |r| r.2);
            assert_eq!(keys.len(), rows.len());
            assert_eq!(
                keys[0],
                (columns.iter().find(|c| c.title == column).unwrap().key)(&rows[0], &context)
            );
            rows.iter().map(|r| r.2).collect::<Vec<_>>()
        };
        assert_eq!(sorted("N", false), [0, 3, 1, 4, 2]);
        assert_eq!(sorted("N", true), [2, 1, 4, 0, 3]);
        // Text without case: "A" and "a" tie.
        assert_eq!(sorted("T", false), [1, 3, 0, 4, 2]);
        assert_eq!(sorted("T", true), [2, 0, 4, 1, 3]);
    }

    #[test]
    fn arranged_rows_tie_in_id_order_wherever_they_came_from() {
        let sort = Sort {
            column: "N",
            descending: true,
        };
        let keys = |ns: &[u64]| ns.iter().map(|&n| SortKey::Num(n)).collect::<Vec<_>>();
        // Ids out of order (closed rows appended after the open ones).
        let (ids, sorted) = sort.arrange(vec![1, 4, 9, 2, 3], keys(&[5, 7, 5, 0, 7]));
        assert_eq!(ids, [3, 4, 1, 9, 2]);
        assert_eq!(sorted, keys(&[7, 7, 5, 5, 0]));
        // No column: by id alone, no keys.
        assert_eq!(
            sort.arrange(vec![3, 1, 2], Vec::new()),
            (vec![1, 2, 3], Vec::new())
        );
    }
}
