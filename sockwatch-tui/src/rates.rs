//! Rates derived from consecutive snapshots: per-socket send/recv bytes per second with a
//! bounded per-second history (for the details sparkline), and machine-wide connects, closes
//! and bytes per second for the header.
//!
//! Pure bookkeeping: time comes in with each snapshot, as kernel monotonic nanoseconds.

use std::collections::{HashMap, VecDeque};

use crate::{
    reducer::{SocketRow, Totals},
    socket_id::SocketId,
};

/// Seconds of history kept per socket.
pub const HISTORY_LEN: usize = 300;
/// Histories of closed sockets kept for their details view and lingering rows.
const RETIRED_LEN: usize = 256;
const SEC: u64 = 1_000_000_000;
/// Connects and closes per second are averaged over this long, so a connect every 1.3 s does not
/// read 1, 0, 1, 1, 0.
const ACTIVITY_WINDOW_NS: u64 = 5 * SEC;

/// Bytes per second, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throughput {
    pub send: u64,
    pub recv: u64,
}

/// One socket's rates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketRates {
    /// Over the latest snapshot interval.
    pub now: Throughput,
    /// One sample per second or more (as often as snapshots allow), oldest first.
    pub history: VecDeque<Throughput>,
    last_ns: u64,
    last_sent: u64,
    last_recv: u64,
    bucket_start_ns: u64,
    bucket_sent: u64,
    bucket_recv: u64,
}

impl SocketRates {
    fn starting(connect_ns: u64, now_ns: u64) -> Self {
        // A new socket had sent nothing when it connected: its first rate counts from then.
        let start = if connect_ns > 0 && connect_ns <= now_ns {
            connect_ns
        } else {
            now_ns
        };
        Self {
            last_ns: start,
            bucket_start_ns: start,
            ..Self::default()
        }
    }

    fn observe(&mut self, sent: u64, recv: u64, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        if elapsed == 0 {
            return;
        }
        // Counters only grow; saturating keeps a surprise (a reused entry) from wrapping.
        let sent_delta = sent.saturating_sub(self.last_sent);
        let recv_delta = recv.saturating_sub(self.last_recv);
        self.now = Throughput {
            send: per_second(sent_delta, elapsed),
            recv: per_second(recv_delta, elapsed),
        };
        self.last_ns = now_ns;
        self.last_sent = sent;
        self.last_recv = recv;
        self.bucket_sent = self.bucket_sent.saturating_add(sent_delta);
        self.bucket_recv = self.bucket_recv.saturating_add(recv_delta);
        let bucket = now_ns.saturating_sub(self.bucket_start_ns);
        if bucket >= SEC {
            if self.history.len() == HISTORY_LEN {
                self.history.pop_front();
            }
            self.history.push_back(Throughput {
                send: per_second(self.bucket_sent, bucket),
                recv: per_second(self.bucket_recv, bucket),
            });
            self.bucket_start_ns = now_ns;
            self.bucket_sent = 0;
            self.bucket_recv = 0;
        }
    }
}

fn per_second(bytes: u64, elapsed_ns: u64) -> u64 {
    if elapsed_ns == 0 {
        return 0;
    }
    let rate = u128::from(bytes) * u128::from(SEC) / u128::from(elapsed_ns);
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// Machine-wide activity per second, for the header.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Activity {
    pub connects_per_sec: f64,
    pub closes_per_sec: f64,
    /// Sum over open sockets.
    pub bytes: Throughput,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    open: HashMap<SocketId, SocketRates>,
    retired: VecDeque<(SocketId, SocketRates)>,
    pub activity: Activity,
    /// (time, connects + accepts, closes) of recent snapshots, oldest first.
    totals_window: VecDeque<(u64, u64, u64)>,
}

impl Rates {
    /// Folds in one snapshot of the open sockets, taken at `now_ns`.
    pub fn observe<'a>(
        &mut self,
        rows: impl Iterator<Item = &'a SocketRow>,
        totals: &Totals,
        now_ns: u64,
    ) {
        let mut still_open = HashMap::with_capacity(self.open.len());
        let mut sum = Throughput::default();
        for row in rows {
            let id = SocketId::new(row.socket.key, row.connect_ns);
            let mut rates = self
                .open
                .remove(&id)
                .unwrap_or_else(|| SocketRates::starting(row.connect_ns, now_ns));
            rates.observe(row.bytes_sent, row.bytes_recv, now_ns);
            sum.send = sum.send.saturating_add(rates.now.send);
            sum.recv = sum.recv.saturating_add(rates.now.recv);
            still_open.insert(id, rates);
        }
        // Whatever is left has closed: keep its history a while, its rates now zero.
        let mut closed: Vec<_> = std::mem::replace(&mut self.open, still_open)
            .into_iter()
            .collect();
        closed.sort_by_key(|(id, _)| *id);
        for (id, mut rates) in closed {
            rates.now = Throughput::default();
            if self.retired.len() == RETIRED_LEN {
                self.retired.pop_front();
            }
            self.retired.push_back((id, rates));
        }

        let opened = totals.connects.saturating_add(totals.accepts);
        // Keep one sample at least a window old (or the oldest there is) to measure from.
        while self.totals_window.len() > 1
            && self.totals_window[1].0.saturating_add(ACTIVITY_WINDOW_NS) <= now_ns
        {
            self.totals_window.pop_front();
        }
        if let Some(&(since_ns, since_opened, since_closes)) = self.totals_window.front() {
            let elapsed = now_ns.saturating_sub(since_ns);
            if elapsed > 0 {
                let secs = elapsed as f64 / SEC as f64;
                self.activity.connects_per_sec = opened.saturating_sub(since_opened) as f64 / secs;
                self.activity.closes_per_sec =
                    totals.closes.saturating_sub(since_closes) as f64 / secs;
            }
        }
        self.activity.bytes = sum;
        self.totals_window
            .push_back((now_ns, opened, totals.closes));
    }

    /// The rates of a socket, open or recently closed.
    pub fn of(&self, id: &SocketId) -> Option<&SocketRates> {
        self.open.get(id).or_else(|| {
            self.retired
                .iter()
                .rev()
                .find(|(retired, _)| retired == id)
                .map(|(_, rates)| rates)
        })
    }

    /// Current bytes per second of a socket (zero when unknown or closed).
    pub fn now(&self, id: &SocketId) -> Throughput {
        self.open.get(id).map(|r| r.now).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use sockwatch_common::SocketKey;

    use super::*;
    use crate::{
        events::{ConnectEvent, ConnectResult, Endpoint, KernelEvent, TrackedEntry},
        reducer::{Action, Model},
    };

    fn entry(fd: u32, sent: u64, recv: u64) -> TrackedEntry {
        TrackedEntry {
            socket: Endpoint::new(SocketKey { pid: 7, fd }, Ipv4Addr::LOCALHOST, 80, "curl"),
            tid: 7,
            connect_ns: SEC,
            bytes_sent: sent,
            bytes_recv: recv,
            established: true,
            preexisting: false,
        }
    }

    fn snapshot(model: &mut Model, entries: Vec<TrackedEntry>, now_ns: u64) {
        model.update(Action::Snapshot { entries, now_ns });
    }

    #[test]
    fn rates_are_byte_deltas_over_time_deltas() {
        let mut model = Model::new("tracepoint");
        let id = SocketId::new(SocketKey { pid: 7, fd: 3 }, SEC);
        // From the connect (1 s) to the first snapshot (3 s): 2000 bytes in 2 s.
        snapshot(&mut model, vec![entry(3, 2000, 500)], 3 * SEC);
        assert_eq!(
            model.rates.now(&id),
            Throughput {
                send: 1000,
                recv: 250
            }
        );
        // Half a second later, 600 more bytes sent: 1200 B/s.
        snapshot(&mut model, vec![entry(3, 2600, 500)], 3 * SEC + SEC / 2);
        assert_eq!(model.rates.now(&id).send, 1200);
        assert_eq!(model.rates.activity.bytes.send, 1200);
    }

    #[test]
    fn history_has_one_sample_per_second_and_is_bounded() {
        let mut model = Model::new("tracepoint");
        let id = SocketId::new(SocketKey { pid: 7, fd: 3 }, SEC);
        for tick in 0..(HISTORY_LEN as u64 * 4 + 10) {
            // Snapshots every 250 ms, 100 bytes each: 400 B/s.
            let now = 2 * SEC + tick * SEC / 4;
            snapshot(&mut model, vec![entry(3, 100 * (tick + 1), 0)], now);
        }
        let history = &model.rates.of(&id).expect("known").history;
        assert_eq!(history.len(), HISTORY_LEN);
        assert!(history.iter().skip(1).all(|t| t.send == 400), "{history:?}");
    }

    #[test]
    fn closed_sockets_keep_their_history_with_zero_rate() {
        let mut model = Model::new("tracepoint");
        let id = SocketId::new(SocketKey { pid: 7, fd: 3 }, SEC);
        snapshot(&mut model, vec![entry(3, 1000, 0)], 2 * SEC);
        snapshot(&mut model, vec![], 3 * SEC);
        snapshot(&mut model, vec![], 4 * SEC);
        assert_eq!(model.rates.now(&id), Throughput::default());
        // One sample from the snapshot that saw it, one from the one that still listed it.
        assert_eq!(model.rates.of(&id).map(|r| r.history.len()), Some(2));
    }

    #[test]
    fn connects_and_closes_per_second() {
        let mut model = Model::new("tracepoint");
        snapshot(&mut model, vec![], SEC);
        for fd in 0..4 {
            model.update(Action::Kernel(KernelEvent::Connect(ConnectEvent {
                socket: entry(fd, 0, 0).socket,
                tid: 7,
                result: ConnectResult::Ok,
                ts_ns: SEC,
            })));
        }
        snapshot(&mut model, vec![], 3 * SEC);
        assert!((model.rates.activity.connects_per_sec - 2.0).abs() < 1e-9);
        assert!(model.rates.activity.closes_per_sec.abs() < 1e-9);
        // Averaged over the last five seconds: quiet seconds bring it down gradually.
        for second in 4..=7 {
            snapshot(&mut model, vec![], second * SEC);
        }
        // From the sample at 1 s (the last one at least 5 s old): 4 connects in 6 s.
        assert!((model.rates.activity.connects_per_sec - 4.0 / 6.0).abs() < 1e-9);
        for second in 9..=20 {
            snapshot(&mut model, vec![], second * SEC);
        }
        assert!(model.rates.activity.connects_per_sec.abs() < 1e-9);
    }
}
