//! The table's columns, one line each: title, width, how the cell reads and how it sorts.
//! Adding a column is adding a line here (e.g. `PROTO`: `text: |s| s.socket.proto.label()...`).

use std::{borrow::Borrow, cmp::Ordering};

use super::{
    format,
    listing::{Context, ProcessView},
};
use crate::socket::{Direction, HealthMark, Proto, Socket, State, TcpHealth};

/// What a column sorts by: numbers, or text compared without case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortKey {
    Num(u64),
    Text(String),
}

/// One column of a table listing rows of type `R`.
pub struct Column<R> {
    /// Also the column's name for sorting (stable when columns are added).
    pub title: &'static str,
    /// Width in cells, or the least width of the column that takes the spare room.
    pub width: u16,
    /// Takes whatever room the other columns leave.
    pub fill: bool,
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
    SortKey::Text(s.to_lowercase())
}

/// Names sort by name; bare addresses by their numeric value (zero-padded), then port.
fn destination_key(s: &Socket, context: &Context) -> SortKey {
    let port = s.dport;
    match context.host(s) {
        Some(host) => SortKey::Text(format!("{}:{port:05}", host.to_lowercase())),
        None => {
            let [a, b, c, d] = s.daddr.octets();
            SortKey::Text(format!("{a:03}.{b:03}.{c:03}.{d:03}:{port:05}"))
        }
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
type ProcessColumn = Column<ProcessView>;

/// The socket table, left to right. The default sort is `SEND/s`, largest first.
#[rustfmt::skip]
pub static SOCKET_COLUMNS: &[Column<Socket>] = &[
    SocketColumn::new("PID", 7, 0, |s, _| known(s.holder_pid()), |s, _| num(s.pid())),
    SocketColumn::new("TID", 7, 9, |s, _| s.tid.to_string(), |s, _| num(s.tid)),
    SocketColumn::new("COMM", 15, 0, |s, _| s.comm.clone(), |s, _| text(&s.comm)),
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
    SocketColumn::new("COMM", 15, 0, |s, _| s.comm.clone(), |s, _| text(&s.comm)),
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
    SocketColumn::new("CONNECT", 8, 7, |s, _| s.connect_us.map_or_else(|| "-".to_owned(), format::micros), |s, _| num(s.connect_us.map_or(0, |us| us.saturating_add(1)))).amount(),
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
    s.mark.map_or_else(String::new, HealthMark::label)
}

/// Worst first when sorted largest first: trouble, then idle (longest first), then nothing.
fn mark_key(s: &Socket, _: &Context) -> SortKey {
    num(match s.mark {
        None => 0u64,
        Some(HealthMark::Idle { secs }) => 1 + u64::from(secs).min(1 << 32),
        Some(HealthMark::AppNotReading) => 1 << 34,
        Some(HealthMark::PeerNotReading) => 2 << 34,
        Some(HealthMark::Retransmitting) => 3 << 34,
    })
}

/// The table grouped by process.
#[rustfmt::skip]
pub static PROCESS_COLUMNS: &[Column<ProcessView>] = &[
    ProcessColumn::new("PID", 7, 0, |p, _| p.pid.to_string(), |p, _| num(p.pid)),
    ProcessColumn::new("COMM", 15, 0, |p, _| p.comm.clone(), |p, _| text(&p.comm)),
    ProcessColumn::new("SOCKETS", 8, 5, sockets_text, |p, _| num(p.sockets as u64)).amount(),
    ProcessColumn::new("DESTINATIONS", 16, 0, |p, _| p.destinations.clone(), |p, _| text(&p.destinations)).fill(),
    ProcessColumn::new("SENT", 10, 6, |p, _| format::bytes(p.bytes_sent), |p, _| num(p.bytes_sent)).amount(),
    ProcessColumn::new("RECV", 10, 7, |p, _| format::bytes(p.bytes_recv), |p, _| num(p.bytes_recv)).amount(),
    ProcessColumn::new("SEND/s", 10, 0, |p, _| format::rate(p.rate.send), |p, _| num(p.rate.send)).amount(),
    ProcessColumn::new("RECV/s", 10, 3, |p, _| format::rate(p.rate.recv), |p, _| num(p.rate.recv)).amount(),
    ProcessColumn::new("AGE", 6, 4, |p, _| format::age(p.age_ns), |p, _| num(p.age_ns)).by_clock(),
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

fn sockets_text(p: &ProcessView, _: &Context) -> String {
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
        // Each row's key and tiebreak taken once (a row is read once, not at every
        // comparison). The rows mostly come in tiebreak order already and most values tie (idle
        // sockets send nothing): the sort finds long runs and takes linear time then.
        let mut keyed: Vec<(SortKey, K, T)> = rows
            .drain(..)
            .map(|r| ((column.key)(r.borrow(), context), tiebreak(&r), r))
            .collect();
        keyed.sort_by(|(ka, ta, _), (kb, tb, _)| self.order((ka, ta), (kb, tb)));
        let mut keys = Vec::with_capacity(keyed.len());
        rows.extend(keyed.into_iter().map(|(key, _, r)| {
            keys.push(key);
            r
        }));
        keys
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

/// Orders sockets that tie: by pid, fd, then the time they opened.
pub fn socket_tiebreak(s: &&Socket) -> crate::socket::SocketId {
    s.id
}

pub fn process_tiebreak(p: &ProcessView) -> u32 {
    p.pid
}

/// Which columns fit in `width` cells (with one cell between columns), dropping the
/// highest-ranked first; returns their indices, left to right.
pub fn fitting<R>(columns: &[Column<R>], width: u16) -> Vec<usize> {
    let mut shown: Vec<usize> = (0..columns.len()).collect();
    loop {
        let needed: u32 = shown
            .iter()
            .map(|&i| u32::from(columns[i].width))
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
}
