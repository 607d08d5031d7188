//! `--replay FILE`: a recorded `--json` run turned back into what the live run's model took —
//! the same changes (opens, failed connects, moves, closes with their final counts) and, from
//! `--json-samples` recordings, the map reads between them (so rates and histories come back
//! too) — each at its recorded time. No kernel is touched: replay needs no root.
//!
//! The recording's clock is kept: a record's `time` (Unix seconds) becomes a time on a clock
//! of its own that starts at [`BASE_NS`] with the `start` record, and the dashboard reads it
//! back as the recorded wall-clock time (`WallClock`).

use std::{collections::HashMap, net::IpAddr};

use anyhow::{bail, Context as _};
use serde_json::Value;
use sockwatch_common::FD_UNKNOWN;

use crate::{
    clock::WallClock,
    json::SCHEMA,
    kernel::{decode::errno_name, loader::KernelCounters, tracker::Change},
    model::Action,
    socket::{
        CloseCause, Closed, ClosedBy, Direction, Origin, Process, Proto, Socket, SocketKey, State,
        TcpHealth, NO_FD, NO_HOLDER,
    },
};

const SEC: u64 = 1_000_000_000;

/// The replay clock's reading at the `start` record (not 0: no socket opens at the epoch).
pub const BASE_NS: u64 = 1_000 * SEC;

/// What was recorded, ready to play.
pub struct Recording {
    /// The backend the live run used.
    pub probe: String,
    /// Maps the replay clock to the recorded wall-clock time.
    pub clock: WallClock,
    /// What the model takes, in order, each at its time on the replay clock.
    pub steps: Vec<(u64, Action)>,
    /// The replay clock at the last record.
    pub end_ns: u64,
}

/// Reads a recording: `--json` lines, the first a `start` record of a schema this build knows.
pub fn parse(text: &str) -> anyhow::Result<Recording> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines
        .next()
        .context("the recording is empty (no `start` record)")?;
    let start: Value = serde_json::from_str(first).context("line 1 is not JSON")?;
    if start["event"] != "start" {
        bail!("line 1 is not a `start` record: not a sockwatch-tui --json recording");
    }
    let schema = start["schema"].as_u64().unwrap_or(0);
    if schema != u64::from(SCHEMA) {
        bail!(
            "the recording has schema {schema}, this sockwatch-tui reads schema {SCHEMA} \
             (the `start` record's `schema`)"
        );
    }
    let start_secs = start["time"]
        .as_f64()
        .filter(|secs| (0.0..1e11).contains(secs))
        .context("the `start` record has no `time` (Unix seconds)")?;
    let mut player = Player {
        start_secs,
        open: HashMap::new(),
        displaced: Vec::new(),
        read: HashMap::new(),
        steps: Vec::new(),
        samples: None,
        counters: KernelCounters::default(),
        end_ns: BASE_NS,
    };
    for (index, line) in lines {
        let record: Value = serde_json::from_str(line)
            .with_context(|| format!("line {} is not JSON", index + 1))?;
        player
            .record(&record)
            .with_context(|| format!("line {}", index + 1))?;
    }
    player.flush_samples();
    let start_unix_ns = (start_secs * 1e9) as i128;
    let mut clock = WallClock::now();
    clock.offset_ns = start_unix_ns - i128::from(BASE_NS);
    Ok(Recording {
        probe: start["probe"].as_str().unwrap_or("unknown").to_owned(),
        clock,
        steps: player.steps,
        end_ns: player.end_ns,
    })
}

struct Player {
    start_secs: f64,
    /// The open sockets as their records made them, by key.
    open: HashMap<SocketKey, Socket>,
    /// Open sockets a newer one took the key of before their close record came.
    displaced: Vec<Socket>,
    /// The process each pid's records named (owner, cgroup, namespace pid), as last read.
    read: HashMap<u32, (Option<String>, Option<u64>)>,
    steps: Vec<(u64, Action)>,
    /// Samples of one refresh, gathered into one map read.
    samples: Option<(u64, Vec<Socket>)>,
    counters: KernelCounters,
    end_ns: u64,
}

impl Player {
    fn at(&self, record: &Value) -> anyhow::Result<u64> {
        let secs = record["time"].as_f64().context("no `time`")?;
        // Within a year of the start: a record off by more is not of this run.
        let since = (secs - self.start_secs).clamp(0.0, 365.0 * 86_400.0);
        Ok(BASE_NS + (since * 1e9) as u64)
    }

    fn push(&mut self, at_ns: u64, action: Action) {
        self.end_ns = self.end_ns.max(at_ns);
        self.steps.push((at_ns, action));
    }

    fn flush_samples(&mut self) {
        if let Some((at_ns, map)) = self.samples.take() {
            self.push(at_ns, Action::Snapshot { map, now_ns: at_ns });
        }
    }

    fn record(&mut self, record: &Value) -> anyhow::Result<()> {
        let event = record["event"].as_str().context("no `event`")?;
        const KNOWN: [&str; 9] = [
            "connect", "accept", "existing", "sample", "open", "moved", "close", "lost", "end",
        ];
        // A record of a later version of this schema's kind: nothing to replay.
        if !KNOWN.contains(&event) {
            return Ok(());
        }
        let at_ns = self.at(record)?;
        if event != "sample" && event != "open" {
            self.flush_samples();
        }
        match event {
            "connect" | "accept" | "existing" => {
                let mut socket = socket_of(record, at_ns)?;
                socket.origin = match event {
                    "accept" => Origin::Accept,
                    "existing" => Origin::Existing,
                    _ => Origin::Connect,
                };
                socket.tid = u32_of(record, "tid").unwrap_or(socket.pid());
                socket.set_connect_us(record["connect_us"].as_u64());
                self.process(record, socket.pid(), at_ns);
                match record["result"].as_str() {
                    Some("ok") | None => socket.state = State::Established,
                    Some("in_progress") => socket.state = State::Connecting,
                    Some(errno) => {
                        let errno = errno_number(errno);
                        self.push(at_ns, Action::Change(Change::Failed { socket, errno }));
                        return Ok(());
                    }
                }
                // A new socket on a number whose close record comes later (another thread took
                // the number between the close's entry and exit): the older waits aside.
                if let Some(older) = self.open.insert(socket.key(), socket.clone()) {
                    self.displaced.push(older);
                }
                self.push(at_ns, Action::Change(Change::Opened(socket)));
            }
            "sample" | "open" => {
                let key = key_of(record);
                let Some(open) = self.open.get(&key) else {
                    return Ok(());
                };
                let mut socket = open.clone();
                socket.bytes_sent = record["bytes_sent"].as_u64().unwrap_or(0);
                socket.bytes_recv = record["bytes_recv"].as_u64().unwrap_or(0);
                socket.complete = record["complete"].as_bool().unwrap_or(true);
                socket.tcp = tcp_of(record);
                // As a live map read: bytes moved, so the connect is through.
                if socket.bytes_sent > 0 || socket.bytes_recv > 0 {
                    socket.state = State::Established;
                    if let Some(open) = self.open.get_mut(&key) {
                        open.state = State::Established;
                    }
                }
                match &mut self.samples {
                    Some((time, map)) if *time == at_ns => map.push(socket),
                    _ => {
                        self.flush_samples();
                        self.samples = Some((at_ns, vec![socket]));
                    }
                }
            }
            "moved" => {
                let from = SocketKey {
                    pid: u32_of(record, "from_pid").unwrap_or(NO_HOLDER),
                    fd: u32_of(record, "from_fd").unwrap_or(NO_FD),
                };
                let to = key_of(record);
                let Some(mut socket) = self.open.remove(&from) else {
                    // Moved into the recording's scope: shown from here, as the record says it.
                    let mut socket = socket_of(record, at_ns)?;
                    socket.origin = Origin::Existing;
                    socket.bytes_sent = record["bytes_sent"].as_u64().unwrap_or(0);
                    socket.bytes_recv = record["bytes_recv"].as_u64().unwrap_or(0);
                    self.process(record, to.pid, at_ns);
                    self.open.insert(to, socket.clone());
                    self.push(at_ns, Action::Change(Change::Opened(socket)));
                    return Ok(());
                };
                let id = socket.id;
                socket.id.key = to;
                socket.comm = record["comm"].as_str().unwrap_or_default().into();
                self.process(record, to.pid, at_ns);
                let comm = socket.comm;
                self.open.insert(to, socket);
                self.push(at_ns, Action::Change(Change::Moved { from: id, to, comm }));
            }
            "close" => {
                let key = key_of(record);
                let lifetime = record["lifetime_ns"].as_u64().unwrap_or(0);
                let opened_ns = at_ns.saturating_sub(lifetime);
                let mut socket = match self.take_closing(key, opened_ns) {
                    Some(open) => open,
                    // Closed without an open record (one lost, or a scope that took it late):
                    // as the close says it.
                    None => socket_of(record, opened_ns)?,
                };
                let cause = close_cause(record["reason"].as_str().unwrap_or("close"));
                let closed = Closed {
                    at_ns,
                    tid: u32_of(record, "tid").unwrap_or(0),
                    cause,
                };
                if socket.lport == 0 {
                    socket.lport = u16_of(record, "lport");
                }
                socket.closed_by = record["closed_by"].as_str().and_then(closed_by);
                socket.set_error(record["error"].as_str().map(errno_number));
                if let Some(us) = record["connect_us"].as_u64() {
                    socket.set_connect_us(Some(us));
                }
                socket.tcp = tcp_of(record).or(socket.tcp);
                socket.complete &= record["complete"].as_bool().unwrap_or(true);
                let (sent, recv) = (
                    record["bytes_sent"].as_u64().unwrap_or(0),
                    record["bytes_recv"].as_u64().unwrap_or(0),
                );
                socket.close(closed, sent, recv);
                self.push(at_ns, Action::Change(Change::Closed(socket)));
            }
            "lost" => {
                self.counters.ringbuf_drops = record["total"].as_u64().unwrap_or(0);
                self.push(at_ns, Action::Counters(self.counters));
            }
            "end" => {
                self.counters.ringbuf_drops = record["lost"].as_u64().unwrap_or(0);
                self.counters.tracked_full = record["untracked"].as_u64().unwrap_or(0);
                self.push(at_ns, Action::Counters(self.counters));
            }
            // Records of a later version of this schema's kind: nothing to replay.
            _ => {}
        }
        Ok(())
    }

    /// The socket a close at `key` is about: the one open there, or one it displaced, whichever
    /// opened nearest `opened_ns` (the close's time less the socket's lifetime).
    fn take_closing(&mut self, key: SocketKey, opened_ns: u64) -> Option<Socket> {
        let distance = |s: &Socket| s.id.opened_ns.abs_diff(opened_ns);
        let aside = self
            .displaced
            .iter()
            .enumerate()
            .filter(|(_, s)| s.key() == key)
            .min_by_key(|(_, s)| distance(s))
            .map(|(i, s)| (i, distance(s)));
        match (self.open.get(&key).map(distance), aside) {
            (Some(open), Some((i, older))) if older < open => Some(self.displaced.swap_remove(i)),
            (Some(_), _) => self.open.remove(&key),
            (None, Some((i, _))) => Some(self.displaced.swap_remove(i)),
            (None, None) => None,
        }
    }

    /// The process a record names, handed to the model as a live run reads it (once, and
    /// again when the record says otherwise).
    fn process(&mut self, record: &Value, pid: u32, at_ns: u64) {
        if pid == NO_HOLDER {
            return;
        }
        let cgroup = record["cgroup"].as_str().map(str::to_owned);
        let nspid = record["nspid"].as_u64();
        if self.read.get(&pid) == Some(&(cgroup.clone(), nspid)) {
            return;
        }
        let process = cgroup.as_ref().map(|path| {
            let status = nspid.map_or_else(String::new, |n| format!("NSpid:\t{pid}\t{n}\n"));
            Process::parse(pid, &format!("0::{path}\n"), &status)
        });
        self.read.insert(pid, (cgroup, nspid));
        self.push(
            at_ns,
            Action::Process {
                pid,
                process,
                now_ns: at_ns,
            },
        );
    }
}

fn u32_of(record: &Value, field: &str) -> Option<u32> {
    record[field].as_u64().and_then(|n| u32::try_from(n).ok())
}

fn u16_of(record: &Value, field: &str) -> u16 {
    record[field]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(0)
}

/// Its (pid, fd). Where the fd is `null` (no holder known, or not its fd), the live model kept
/// such sockets apart by the low bits of an fd from `FD_UNKNOWN` up: here the inode's bits do.
fn key_of(record: &Value) -> SocketKey {
    let fd = u32_of(record, "fd").unwrap_or_else(|| {
        record["inode"].as_u64().map_or(NO_FD, |inode| {
            FD_UNKNOWN | (inode as u32 & (FD_UNKNOWN - 1))
        })
    });
    SocketKey {
        pid: u32_of(record, "pid").unwrap_or(NO_HOLDER),
        fd,
    }
}

/// The socket a record describes, opened at `opened_ns`.
fn socket_of(record: &Value, opened_ns: u64) -> anyhow::Result<Socket> {
    let daddr: IpAddr = record["daddr"]
        .as_str()
        .context("no `daddr`")?
        .parse()
        .context("`daddr` is not an address")?;
    let comm = record["comm"].as_str().unwrap_or_default();
    let mut socket = Socket::new(
        key_of(record),
        opened_ns,
        daddr,
        u16_of(record, "dport"),
        comm,
    );
    socket.lport = u16_of(record, "lport");
    socket.proto = match record["proto"].as_str() {
        Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        _ => Proto::Unknown,
    };
    if record["direction"] == "in" {
        socket.direction = Direction::In;
    }
    socket.set_inode(record["inode"].as_u64());
    socket.complete = record["complete"].as_bool().unwrap_or(true);
    Ok(socket)
}

/// The TCP reading a record carries, if any.
fn tcp_of(record: &Value) -> Option<TcpHealth> {
    let rtt_us = u32_of(record, "rtt_us")?;
    Some(TcpHealth {
        rtt_us,
        rttvar_us: u32_of(record, "rttvar_us").unwrap_or(0),
        retrans: u32_of(record, "retrans").unwrap_or(0),
        cwnd: u32_of(record, "cwnd").unwrap_or(0),
        send_q: u32_of(record, "send_q").unwrap_or(0),
        recv_q: u32_of(record, "recv_q").unwrap_or(0),
        ..TcpHealth::default()
    })
}

fn close_cause(reason: &str) -> CloseCause {
    [
        CloseCause::Close,
        CloseCause::DupOnto,
        CloseCause::CloseRange,
        CloseCause::Exec,
        CloseCause::Exit,
        CloseCause::Reconciled,
        CloseCause::Vanished,
    ]
    .into_iter()
    .find(|cause| cause.label() == reason)
    .unwrap_or(CloseCause::Close)
}

fn closed_by(label: &str) -> Option<ClosedBy> {
    [
        ClosedBy::Local,
        ClosedBy::Peer,
        ClosedBy::ResetSent,
        ClosedBy::ResetReceived,
        ClosedBy::Timeout,
        ClosedBy::Failed,
    ]
    .into_iter()
    .find(|by| by.label() == label)
}

/// The errno an `errno_name` names (`ECONNREFUSED`, or `errno 200` for one it has no name for).
fn errno_number(name: &str) -> i32 {
    if let Some(n) = name.strip_prefix("errno ").and_then(|n| n.parse().ok()) {
        return n;
    }
    (1..4096).find(|&n| errno_name(n) == name).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"event":"start","time":100.0,"schema":1,"probe":"socket","families":["ipv4","ipv6"],"metrics":null,"pid":1,"tracked_map_id":2}"#;

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).err().expect("an error"))
    }

    #[test]
    fn what_is_not_a_recording_says_so() {
        assert!(error("").contains("empty"));
        assert!(error("{\"event\":\"close\",\"time\":1}").contains("not a `start` record"));
        assert!(error("hello").contains("line 1 is not JSON"));
        let newer = START.replace("\"schema\":1", "\"schema\":9");
        assert!(error(&newer).contains("schema 9"));
        assert!(error(&format!("{START}\n\nnot json")).contains("line 3 is not JSON"));
    }

    /// A connect, its close and a refused one: opened and closed as one socket (its id kept),
    /// at their times after the start, the refused one a failed connect with its errno.
    #[test]
    fn records_become_the_changes_the_live_model_took() {
        let socket = r#""pid":7,"comm":"curl","fd":3,"proto":"tcp","direction":"out","daddr":"::1","family":6,"dport":80,"lport":5000,"inode":9,"owner":null,"cgroup":null,"nspid":null,"complete":true"#;
        let text = format!(
            "{START}\n\
             {{\"event\":\"connect\",\"time\":101.0,{socket},\"tid\":8,\"result\":\"ok\",\"bytes_sent\":0,\"bytes_recv\":0,\"connect_us\":50}}\n\
             {{\"event\":\"close\",\"time\":102.5,{socket},\"tid\":8,\"connect_tid\":8,\"bytes_sent\":10,\"bytes_recv\":20,\"lifetime_ns\":1500000000,\"reason\":\"exit\",\"preexisting\":false,\"closed_by\":\"peer\",\"error\":null}}\n\
             {{\"event\":\"connect\",\"time\":103.0,{socket},\"tid\":8,\"result\":\"ECONNREFUSED\",\"bytes_sent\":0,\"bytes_recv\":0,\"connect_us\":null}}\n"
        );
        let recording = parse(&text).expect("a recording");
        assert_eq!(recording.probe, "socket");
        let changes: Vec<(u64, &Change)> = recording
            .steps
            .iter()
            .filter_map(|(at, action)| match action {
                Action::Change(change) => Some((*at, change)),
                _ => None,
            })
            .collect();
        let [(opened_at, Change::Opened(opened)), (closed_at, Change::Closed(closed)), (_, Change::Failed { errno, .. })] =
            changes[..]
        else {
            panic!("{changes:?}")
        };
        assert_eq!(opened_at, BASE_NS + SEC);
        assert_eq!(closed_at, BASE_NS + 2 * SEC + SEC / 2);
        assert_eq!(closed.id, opened.id);
        assert_eq!(opened.daddr().to_string(), "::1");
        assert_eq!(opened.connect_us(), Some(50));
        assert_eq!((closed.bytes_sent, closed.bytes_recv), (10, 20));
        assert_eq!(closed.closed.map(|c| c.cause), Some(CloseCause::Exit));
        assert_eq!(closed.closed_by, Some(ClosedBy::Peer));
        assert_eq!(*errno, libc::ECONNREFUSED);
        assert_eq!(recording.end_ns, BASE_NS + 3 * SEC);
    }

    fn changes(recording: &Recording) -> Vec<&Change> {
        recording
            .steps
            .iter()
            .filter_map(|(_, action)| match action {
                Action::Change(change) => Some(change),
                _ => None,
            })
            .collect()
    }

    /// A new socket's open recorded before the close of the socket that had its fd number:
    /// the close goes to the older one (by its lifetime), the newer stays open.
    #[test]
    fn a_close_after_its_fds_reuse_finds_the_older_socket() {
        let at = |fd: &str, inode: u32| {
            format!(
                r#""pid":7,"comm":"w","fd":{fd},"proto":"tcp","direction":"in","daddr":"10.0.0.1","family":4,"dport":80,"lport":81,"inode":{inode},"owner":null,"cgroup":null,"nspid":null,"complete":true"#
            )
        };
        let text = format!(
            "{START}\n\
             {{\"event\":\"accept\",\"time\":101.0,{},\"tid\":7}}\n\
             {{\"event\":\"accept\",\"time\":103.0,{},\"tid\":7}}\n\
             {{\"event\":\"close\",\"time\":103.1,{},\"tid\":7,\"connect_tid\":7,\"bytes_sent\":5,\"bytes_recv\":6,\"lifetime_ns\":2100000000,\"reason\":\"close\",\"preexisting\":false,\"closed_by\":null,\"error\":null}}\n\
             {{\"event\":\"accept\",\"time\":104.0,{},\"tid\":7}}\n\
             {{\"event\":\"accept\",\"time\":104.0,{},\"tid\":7}}\n",
            at("4", 1),
            at("4", 2),
            at("4", 1),
            at("null", 3),
            at("null", 4)
        );
        let recording = parse(&text).expect("a recording");
        let found = changes(&recording);
        let [Change::Opened(first), Change::Opened(second), Change::Closed(closed), Change::Opened(third), Change::Opened(fourth)] =
            found[..]
        else {
            panic!("{found:?}")
        };
        assert_eq!(closed.id, first.id, "the older socket closed");
        assert_ne!(closed.id, second.id);
        // Sockets without an fd are kept apart, as the live model kept them.
        assert_ne!(third.key(), fourth.key());
    }
}
