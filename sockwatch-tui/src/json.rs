//! Headless output: one JSON object per line (the schema is in the README).

use std::{io::Write, num::NonZeroU32};

use serde::Serialize;

use crate::{
    clock::WallClock,
    kernel::decode::errno_name,
    socket::{
        holder_fd, holder_pid, CloseCause, ClosedBy, HealthMark, Origin, Process, Socket,
        SocketKey, State,
    },
};

/// The fields every socket record shares.
#[derive(Debug, Serialize)]
pub struct SocketFields<'a> {
    /// Null when no process is known to hold it (see `socket::NO_HOLDER`).
    pub pid: Option<u32>,
    pub comm: &'a str,
    /// Null when not known (see `pid`; or released after its last holder's fd was gone).
    pub fd: Option<u32>,
    pub proto: &'static str,
    pub direction: &'static str,
    /// The remote end: destination of a connect, peer of an accept (an IPv4-mapped IPv6
    /// address as IPv4).
    pub daddr: String,
    /// 4 or 6: the family of `daddr`.
    pub family: u8,
    pub dport: u16,
    /// Local port; 0 when not known.
    pub lport: u16,
    /// The socket's inode (`socket:[N]` in /proc); null when not known.
    pub inode: Option<u64>,
    /// Who the process belongs to: its systemd unit (`nginx.service`), its container
    /// (`docker:3f2a1b2c3d4e`, the id in short) or its cgroup's path; null when the process
    /// was gone before it could be read.
    pub owner: Option<String>,
    /// The process's cgroup path, the owner's source; null as `owner`.
    pub cgroup: Option<&'a str>,
    /// The pid inside the process's own pid namespace, where it differs from `pid`.
    pub nspid: Option<u32>,
    /// False when bytes may have moved where the backend could not count them: the counts
    /// are a lower bound.
    pub complete: bool,
}

impl<'a> SocketFields<'a> {
    fn of(socket: &'a Socket, process: Option<&'a Process>) -> Self {
        Self {
            owner: process.map(|p| p.owner.to_string()),
            cgroup: process.map(|p| &*p.cgroup),
            nspid: process.and_then(|p| p.nspid).map(NonZeroU32::get),
            pid: socket.holder_pid(),
            comm: &socket.comm,
            fd: socket.holder_fd(),
            proto: socket.proto.label(),
            direction: socket.direction.label(),
            daddr: socket.daddr().to_string(),
            family: socket.family(),
            dport: socket.dport,
            lport: socket.lport,
            inode: socket.inode(),
            complete: socket.complete,
        }
    }
}

/// A TCP socket's health as the latest reading had it (`kernel/diag.rs`); every field null
/// before the first reading, and for UDP.
#[derive(Debug, Default, Serialize)]
pub struct TcpFields {
    /// Smoothed round-trip time and its variation, in microseconds.
    pub rtt_us: Option<u32>,
    pub rttvar_us: Option<u32>,
    /// Segments retransmitted over the socket's life.
    pub retrans: Option<u32>,
    /// Congestion window, in segments.
    pub cwnd: Option<u32>,
    /// Bytes not yet acknowledged by the peer (sent or not), and received but not yet read.
    pub send_q: Option<u32>,
    pub recv_q: Option<u32>,
    /// retrans, peer, app or idle (see the README), null when none applies.
    pub health: Option<&'static str>,
    /// How long the connect's handshake took (the kernel's SYN sent to established), in us.
    pub connect_us: Option<u64>,
}

impl TcpFields {
    fn of(socket: &Socket) -> Self {
        let Some(h) = socket.tcp else {
            return Self {
                connect_us: socket.connect_us(),
                ..Self::default()
            };
        };
        Self {
            connect_us: socket.connect_us(),
            rtt_us: Some(h.rtt_us),
            rttvar_us: Some(h.rttvar_us),
            retrans: Some(h.retrans),
            cwnd: Some(h.cwnd),
            send_q: Some(h.send_q),
            recv_q: Some(h.recv_q),
            health: socket.mark.map(HealthMark::word),
        }
    }
}

/// The version of the records' schema (`docs/events.schema.json`): raised when a field changes
/// meaning or goes; added fields keep it.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record<'a> {
    /// The probes are attached: everything after this line is seen.
    Start {
        time: f64,
        /// Which version of `docs/events.schema.json` describes the stream: [`SCHEMA`].
        schema: u32,
        probe: &'a str,
        /// `ipv4`, `ipv6`: the families watched (`-4`, `-6`).
        families: &'static [&'static str],
        /// Where `--metrics` serves (the address bound: a port 0 asked for is chosen by now).
        metrics: Option<String>,
        pid: u32,
        /// The kernel's id of the map of tracked sockets, for `bpftool map dump id N`.
        tracked_map_id: u32,
    },
    /// An outbound `connect()` returned (`result`: ok, in_progress, or an errno name).
    Connect {
        time: f64,
        tid: u32,
        #[serde(flatten)]
        socket: SocketFields<'a>,
        result: String,
        bytes_sent: u64,
        bytes_recv: u64,
        /// How long the handshake took, when it has ended (null for one still under way).
        connect_us: Option<u64>,
    },
    /// An inbound connection was accepted.
    Accept {
        time: f64,
        tid: u32,
        #[serde(flatten)]
        socket: SocketFields<'a>,
    },
    /// A socket open before sockwatch started, tracked from now on.
    Existing {
        time: f64,
        #[serde(flatten)]
        socket: SocketFields<'a>,
    },
    Close {
        time: f64,
        tid: u32,
        connect_tid: u32,
        #[serde(flatten)]
        socket: SocketFields<'a>,
        bytes_sent: u64,
        bytes_recv: u64,
        lifetime_ns: u64,
        /// close, dup2, close_range, exec, exit, reconciled, or vanished.
        reason: &'static str,
        preexisting: bool,
        /// TCP: local, peer, reset_sent, reset_received, timeout, or failed (the handshake).
        closed_by: Option<&'static str>,
        /// The errno that ended it (a failed connect, a reset, a timeout), by name.
        error: Option<String>,
        /// As last read while it was open.
        #[serde(flatten)]
        tcp: TcpFields,
    },
    /// With `--json-samples`, at every refresh: each open socket's counts and TCP health.
    Sample {
        time: f64,
        #[serde(flatten)]
        socket: SocketFields<'a>,
        bytes_sent: u64,
        bytes_recv: u64,
        #[serde(flatten)]
        tcp: TcpFields,
    },
    /// A socket's row moved to another holder: its fd (`from_pid`, `from_fd`) was closed
    /// while another process holds it (a forked child, a program started on it, the receiver
    /// of the fd), or it was found there later.
    Moved {
        time: f64,
        #[serde(flatten)]
        socket: SocketFields<'a>,
        from_pid: Option<u32>,
        from_fd: Option<u32>,
        bytes_sent: u64,
        bytes_recv: u64,
    },
    /// Events the kernel could not hand over (ring buffer full) since the previous record.
    Lost { time: f64, count: u64, total: u64 },
    /// At the end of a run: a socket still open, with its counts so far.
    Open {
        time: f64,
        #[serde(flatten)]
        socket: SocketFields<'a>,
        bytes_sent: u64,
        bytes_recv: u64,
        age_ns: u64,
        preexisting: bool,
        #[serde(flatten)]
        tcp: TcpFields,
    },
    /// The last record: totals of the run.
    End {
        time: f64,
        /// Sockets still tracked in the kernel map.
        open: usize,
        lost: u64,
        /// Connects not tracked because the map was full.
        untracked: u64,
        /// Sockets removed by reconciliation with /proc (events the probes missed).
        repairs: u64,
        /// Outbound connects seen, and of them failed (at once, or later for a non-blocking
        /// one), as the dashboard's header counts them.
        connects: u64,
        failed_connects: u64,
    },
}

impl<'a> Record<'a> {
    /// A socket became tracked: `connect`, `accept` or `existing`, by its origin.
    pub fn opened(socket: &'a Socket, process: Option<&'a Process>, clock: &WallClock) -> Self {
        let time = clock.unix_secs(socket.id.opened_ns);
        let fields = SocketFields::of(socket, process);
        match socket.origin {
            Origin::Existing => Record::Existing {
                time,
                socket: fields,
            },
            Origin::Accept => Record::Accept {
                time,
                tid: socket.tid,
                socket: fields,
            },
            Origin::Connect => Record::Connect {
                time,
                tid: socket.tid,
                socket: fields,
                result: match socket.state {
                    State::Connecting => "in_progress".to_owned(),
                    State::Established => "ok".to_owned(),
                },
                bytes_sent: 0,
                bytes_recv: 0,
                connect_us: socket.connect_us(),
            },
        }
    }

    /// A connect that failed with `errno`.
    pub fn failed(
        socket: &'a Socket,
        process: Option<&'a Process>,
        errno: i32,
        clock: &WallClock,
    ) -> Self {
        Record::Connect {
            time: clock.unix_secs(socket.id.opened_ns),
            tid: socket.tid,
            socket: SocketFields::of(socket, process),
            result: errno_name(errno),
            bytes_sent: 0,
            bytes_recv: 0,
            connect_us: socket.connect_us(),
        }
    }

    /// A socket that ended, with its final counts.
    pub fn closed(socket: &'a Socket, process: Option<&'a Process>, clock: &WallClock) -> Self {
        let closed = socket.closed;
        Record::Close {
            time: clock.unix_secs(closed.map_or(0, |c| c.at_ns)),
            tid: closed.map_or(0, |c| c.tid),
            connect_tid: socket.tid,
            socket: SocketFields::of(socket, process),
            bytes_sent: socket.bytes_sent,
            bytes_recv: socket.bytes_recv,
            lifetime_ns: socket.age_ns(0),
            reason: closed.map_or(CloseCause::Close, |c| c.cause).label(),
            preexisting: socket.origin == Origin::Existing,
            closed_by: socket.closed_by.map(ClosedBy::label),
            error: socket.error().map(errno_name),
            tcp: TcpFields::of(socket),
        }
    }

    /// An open socket as read at `now_ns` (`--json-samples`).
    pub fn sample(
        socket: &'a Socket,
        process: Option<&'a Process>,
        clock: &WallClock,
        now_ns: u64,
    ) -> Self {
        Record::Sample {
            time: clock.unix_secs(now_ns),
            socket: SocketFields::of(socket, process),
            bytes_sent: socket.bytes_sent,
            bytes_recv: socket.bytes_recv,
            tcp: TcpFields::of(socket),
        }
    }

    /// A socket now shown under another holder (`from`: where it was).
    pub fn moved(
        socket: &'a Socket,
        process: Option<&'a Process>,
        from: SocketKey,
        clock: &WallClock,
        now_ns: u64,
    ) -> Self {
        Record::Moved {
            time: clock.unix_secs(now_ns),
            socket: SocketFields::of(socket, process),
            from_pid: holder_pid(from),
            from_fd: holder_fd(from),
            bytes_sent: socket.bytes_sent,
            bytes_recv: socket.bytes_recv,
        }
    }

    /// At the end of a run: a socket still open at `now_ns`.
    pub fn open(
        socket: &'a Socket,
        process: Option<&'a Process>,
        clock: &WallClock,
        now_ns: u64,
    ) -> Self {
        Record::Open {
            time: clock.unix_secs(now_ns),
            socket: SocketFields::of(socket, process),
            bytes_sent: socket.bytes_sent,
            bytes_recv: socket.bytes_recv,
            age_ns: socket.age_ns(now_ns),
            preexisting: socket.origin == Origin::Existing,
            tcp: TcpFields::of(socket),
        }
    }

    /// Writes the record as one line.
    pub fn write_line(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        out.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::socket::{Closed, Direction, Families, Proto, SocketKey};

    fn endpoint() -> Socket {
        let mut socket = Socket::new(
            SocketKey { pid: 7, fd: 4 },
            1_000_000_000,
            Ipv4Addr::LOCALHOST,
            8080,
            "curl",
        );
        socket.proto = Proto::Tcp;
        socket.lport = 40000;
        socket.tid = 8;
        socket
    }

    fn line(record: &Record) -> serde_json::Value {
        let mut out = Vec::new();
        record.write_line(&mut out).expect("written");
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).expect("valid JSON")
    }

    /// An IPv6 peer: its compressed text and family 6; an IPv4-mapped one: IPv4 and 4.
    #[test]
    fn records_say_the_family_of_the_remote_end() {
        let mut socket = endpoint();
        let v6: std::net::Ipv6Addr = "fd00:0:0::17".parse().unwrap();
        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        for (addr, text, family) in [(v6, "fd00::17", 6), (mapped, "10.0.0.1", 4)] {
            socket.set_daddr(addr);
            let value = line(&Record::failed(
                &socket,
                None,
                libc::ECONNREFUSED,
                &WallClock::default(),
            ));
            assert_eq!(
                (&value["daddr"], &value["family"]),
                (&text.into(), &family.into())
            );
        }
    }

    #[test]
    fn connect_record_has_the_documented_fields() {
        let mut socket = endpoint();
        socket.set_connect_us(Some(52));
        let value = line(&Record::failed(
            &socket,
            None,
            libc::ECONNREFUSED,
            &WallClock::default(),
        ));
        assert_eq!(
            value,
            serde_json::json!({"event": "connect", "time": 1.0, "pid": 7, "tid": 8, "comm": "curl",
                "fd": 4, "proto": "tcp", "direction": "out", "daddr": "127.0.0.1", "family": 4,
                "dport": 8080,
                "lport": 40000, "inode": null, "owner": null, "cgroup": null, "nspid": null,
                "complete": true, "result": "ECONNREFUSED",
                "bytes_sent": 0,
                "bytes_recv": 0, "connect_us": 52})
        );
    }

    /// The process's owner in short (as the table shows it), the cgroup it came from, and
    /// the pid inside its namespace.
    #[test]
    fn socket_records_name_the_owner() {
        let id = "3f2a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef";
        let cgroup = format!("/system.slice/docker-{id}.scope");
        let process = Process::parse(7, &format!("0::{cgroup}\n"), "NSpid:\t7\t1\n");
        let value = line(&Record::opened(
            &endpoint(),
            Some(&process),
            &WallClock::default(),
        ));
        assert_eq!(value["owner"], "docker:3f2a1b2c3d4e");
        assert_eq!(value["cgroup"], cgroup.as_str());
        assert_eq!(value["nspid"], 1);
    }

    #[test]
    fn close_records_say_who_ended_it_with_the_last_tcp_reading() {
        let mut socket = endpoint();
        socket.close(
            Closed {
                at_ns: 3_000_000_000,
                tid: 8,
                cause: CloseCause::Close,
            },
            10,
            20,
        );
        socket.closed_by = Some(ClosedBy::ResetReceived);
        socket.set_error(Some(libc::ECONNRESET));
        socket.set_connect_us(Some(40));
        socket.tcp = Some(crate::socket::TcpHealth {
            rtt_us: 120,
            rttvar_us: 30,
            retrans: 2,
            cwnd: 10,
            send_q: 5,
            recv_q: 6,
            ..crate::socket::TcpHealth::default()
        });
        let value = line(&Record::closed(&socket, None, &WallClock::default()));
        for (field, expected) in [
            ("closed_by", serde_json::json!("reset_received")),
            ("error", serde_json::json!("ECONNRESET")),
            ("connect_us", serde_json::json!(40)),
            ("rtt_us", serde_json::json!(120)),
            ("rttvar_us", serde_json::json!(30)),
            ("retrans", serde_json::json!(2)),
            ("cwnd", serde_json::json!(10)),
            ("send_q", serde_json::json!(5)),
            ("recv_q", serde_json::json!(6)),
            ("health", serde_json::Value::Null),
        ] {
            assert_eq!(value[field], expected, "{field} in {value}");
        }
        // A UDP socket: no TCP reading, no one to say who ended it.
        let mut udp = endpoint();
        udp.proto = crate::socket::Proto::Udp;
        udp.close(
            Closed {
                at_ns: 2,
                tid: 8,
                cause: CloseCause::Close,
            },
            0,
            0,
        );
        let value = line(&Record::closed(&udp, None, &WallClock::default()));
        assert_eq!(
            (&value["closed_by"], &value["rtt_us"]),
            (&serde_json::Value::Null, &serde_json::Value::Null)
        );
    }

    #[test]
    fn inbound_and_existing_sockets_have_their_own_events() {
        let mut socket = endpoint();
        socket.direction = Direction::In;
        socket.origin = Origin::Accept;
        let value = line(&Record::opened(&socket, None, &WallClock::default()));
        assert_eq!(
            (value["event"].as_str(), value["direction"].as_str()),
            (Some("accept"), Some("in"))
        );
        let mut socket = endpoint();
        socket.origin = Origin::Existing;
        assert_eq!(
            line(&Record::opened(&socket, None, &WallClock::default()))["event"],
            "existing"
        );
        let mut socket = endpoint();
        socket.state = State::Connecting;
        let value = line(&Record::opened(&socket, None, &WallClock::default()));
        assert_eq!(
            (value["event"].as_str(), value["result"].as_str()),
            (Some("connect"), Some("in_progress"))
        );
    }

    #[test]
    fn moved_records_say_where_from_and_null_what_is_not_known() {
        let mut socket = endpoint();
        socket.bytes_sent = 12;
        let from = socket.key();
        socket.id.key = SocketKey {
            pid: crate::socket::NO_HOLDER,
            fd: 1,
        };
        let value = line(&Record::moved(
            &socket,
            None,
            from,
            &WallClock::default(),
            2_000_000_000,
        ));
        assert_eq!(
            (&value["event"], &value["pid"], &value["fd"]),
            (
                &"moved".into(),
                &serde_json::Value::Null,
                &serde_json::Value::Null
            ),
            "no holder found yet: {value}"
        );
        assert_eq!(
            (&value["from_pid"], &value["from_fd"]),
            (&7.into(), &4.into())
        );
        assert_eq!(
            (value["bytes_sent"].as_u64(), value["time"].as_f64()),
            (Some(12), Some(2.0))
        );
        let back = socket.key();
        socket.id.key = SocketKey {
            pid: 9,
            fd: crate::socket::NO_FD,
        };
        let value = line(&Record::moved(
            &socket,
            None,
            back,
            &WallClock::default(),
            0,
        ));
        assert_eq!(
            (&value["pid"], &value["fd"]),
            (&9.into(), &serde_json::Value::Null)
        );
        assert_eq!(value["from_pid"], serde_json::Value::Null);
    }

    #[test]
    fn close_record_carries_final_counts_lifetime_and_reason() {
        let mut socket = endpoint();
        socket.close(
            Closed {
                at_ns: 1_000_002_000,
                tid: 9,
                cause: CloseCause::Exit,
            },
            1234,
            5,
        );
        let value = line(&Record::closed(&socket, None, &WallClock::default()));
        assert_eq!(value["event"], "close");
        assert_eq!(
            (value["bytes_sent"].as_u64(), value["bytes_recv"].as_u64()),
            (Some(1234), Some(5))
        );
        assert_eq!(value["lifetime_ns"], 2_000);
        assert_eq!(value["connect_tid"], 8);
        assert_eq!(value["reason"], "exit");
    }

    #[test]
    fn lost_start_and_end_records() {
        assert_eq!(
            line(&Record::Lost {
                time: 2.0,
                count: 3,
                total: 10
            }),
            serde_json::json!({"event": "lost", "time": 2.0, "count": 3, "total": 10})
        );
        let start = line(&Record::Start {
            time: 0.0,
            schema: SCHEMA,
            probe: "kprobe",
            families: Families::Ipv6.labels(),
            metrics: None,
            pid: 1,
            tracked_map_id: 9,
        });
        assert_eq!(start["probe"], "kprobe");
        assert_eq!(start["schema"], 1);
        assert_eq!(start["families"], serde_json::json!(["ipv6"]));
        let both = line(&Record::Start {
            time: 0.0,
            schema: SCHEMA,
            probe: "socket",
            families: Families::Both.labels(),
            metrics: Some("127.0.0.1:9911".into()),
            pid: 1,
            tracked_map_id: 9,
        });
        assert_eq!(both["families"], serde_json::json!(["ipv4", "ipv6"]));
        assert_eq!(both["metrics"], "127.0.0.1:9911");
        assert_eq!(start["metrics"], serde_json::Value::Null);
        let end = line(&Record::End {
            time: 0.0,
            connects: 3,
            failed_connects: 1,
            open: 2,
            lost: 0,
            untracked: 1,
            repairs: 3,
        });
        assert_eq!(
            (end["open"].as_u64(), end["repairs"].as_u64()),
            (Some(2), Some(3))
        );
    }
}
