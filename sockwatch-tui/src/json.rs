//! Headless output: one JSON object per line (the schema is in the README).

use std::io::Write;

use serde::Serialize;

use crate::{clock::WallClock, events::KernelEvent};

#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record<'a> {
    /// The probes are attached: everything after this line is seen.
    Start { time: f64, probe: &'a str, pid: u32 },
    Connect {
        time: f64,
        pid: u32,
        tid: u32,
        comm: &'a str,
        fd: u32,
        daddr: String,
        dport: u16,
        result: String,
        bytes_sent: u64,
        bytes_recv: u64,
    },
    Close {
        time: f64,
        pid: u32,
        tid: u32,
        connect_tid: u32,
        comm: &'a str,
        fd: u32,
        daddr: String,
        dport: u16,
        bytes_sent: u64,
        bytes_recv: u64,
        lifetime_ns: u64,
    },
    /// Events the kernel could not hand over (ring buffer full) since the previous record.
    Lost { time: f64, count: u64, total: u64 },
}

impl<'a> Record<'a> {
    pub fn from_event(event: &'a KernelEvent, clock: &WallClock) -> Self {
        match event {
            KernelEvent::Connect(c) => Record::Connect {
                time: clock.unix_secs(c.ts_ns),
                pid: c.socket.key.pid,
                tid: c.tid,
                comm: &c.socket.comm,
                fd: c.socket.key.fd,
                daddr: c.socket.daddr.to_string(),
                dport: c.socket.dport,
                result: c.result.label(),
                bytes_sent: 0,
                bytes_recv: 0,
            },
            KernelEvent::Close(c) => Record::Close {
                time: clock.unix_secs(c.ts_ns),
                pid: c.socket.key.pid,
                tid: c.tid,
                connect_tid: c.connect_tid,
                comm: &c.socket.comm,
                fd: c.socket.key.fd,
                daddr: c.socket.daddr.to_string(),
                dport: c.socket.dport,
                bytes_sent: c.bytes_sent,
                bytes_recv: c.bytes_recv,
                lifetime_ns: c.lifetime_ns(),
            },
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

    use sockwatch_common::SocketKey;

    use super::*;
    use crate::events::{CloseEvent, ConnectEvent, ConnectResult, Endpoint};

    fn endpoint() -> Endpoint {
        Endpoint {
            key: SocketKey { pid: 7, fd: 4 },
            daddr: Ipv4Addr::new(127, 0, 0, 1),
            dport: 8080,
            comm: "curl".into(),
        }
    }

    fn line(record: &Record) -> serde_json::Value {
        let mut out = Vec::new();
        record.write_line(&mut out).expect("written");
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn connect_record_has_the_documented_fields() {
        let event = KernelEvent::Connect(ConnectEvent {
            socket: endpoint(),
            tid: 8,
            result: ConnectResult::Failed(libc::ECONNREFUSED),
            ts_ns: 1_000_000_000,
        });
        let value = line(&Record::from_event(&event, &WallClock::default()));
        assert_eq!(
            value,
            serde_json::json!({"event": "connect", "time": 1.0, "pid": 7, "tid": 8, "comm": "curl",
                "fd": 4, "daddr": "127.0.0.1", "dport": 8080, "result": "ECONNREFUSED",
                "bytes_sent": 0, "bytes_recv": 0})
        );
    }

    #[test]
    fn close_record_carries_final_counts_and_lifetime() {
        let event = KernelEvent::Close(CloseEvent {
            socket: endpoint(),
            tid: 9,
            connect_tid: 8,
            ts_ns: 3_000,
            connect_ns: 1_000,
            bytes_sent: 1234,
            bytes_recv: 5,
        });
        let value = line(&Record::from_event(&event, &WallClock::default()));
        assert_eq!(value["event"], "close");
        assert_eq!(value["bytes_sent"], 1234);
        assert_eq!(value["bytes_recv"], 5);
        assert_eq!(value["lifetime_ns"], 2_000);
        assert_eq!(value["connect_tid"], 8);
    }

    #[test]
    fn lost_and_start_records() {
        assert_eq!(
            line(&Record::Lost {
                time: 2.0,
                count: 3,
                total: 10
            }),
            serde_json::json!({"event": "lost", "time": 2.0, "count": 3, "total": 10})
        );
        assert_eq!(
            line(&Record::Start {
                time: 0.0,
                probe: "kprobe",
                pid: 1
            })["probe"],
            "kprobe"
        );
    }
}
