//! Exact socket accounting against the real kernel: every send and receive path, inbound and
//! IPv4-mapped sockets, every way a socket ends, sockets older than sockwatch, and churn.

mod support;

use std::{
    net::{Ipv6Addr, TcpListener},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use support::{
    inbound_of,
    io::{recv_exact, send_all, Receiver, Sender},
    load::{field, Load, LOAD_TIMEOUT},
    net, process, record_of, u64_of, Sockwatch,
};

fn u(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

#[test]
fn every_send_syscall_is_counted_exactly() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();
    for (how, len) in [
        (Sender::Write, 1001),
        (Sender::Writev, 2002),
        (Sender::Send, 303),
        (Sender::Sendto, 404),
        (Sender::Sendmsg, 5006),
        (Sender::Sendmmsg, 6008),
        (Sender::Sendfile, 70_000),
    ] {
        let fd = net::connected(server.port);
        send_all(fd, len, how);
        net::close(fd);
        assert_eq!(server.next_total(), len as u64, "{how:?}: server received");
        let close = sw.wait_for("close", record_of("close", pid, fd));
        assert_eq!(u(&close["bytes_sent"]), len as u64, "{how:?}: {close}");
        assert_eq!(u(&close["bytes_recv"]), 0, "{how:?}: {close}");
        assert_eq!(close["proto"], "tcp", "{how:?}");
        assert_eq!(close["reason"], "close");
    }
}

#[test]
fn every_receive_syscall_is_counted_exactly() {
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    for (how, len) in [
        (Receiver::Read, 1001),
        (Receiver::Readv, 2002),
        (Receiver::Recv, 303),
        (Receiver::Recvfrom, 404),
        (Receiver::Recvmsg, 5006),
        (Receiver::Recvmmsg, 6008),
    ] {
        let server = net::CountingServer::with_greeting(len);
        let fd = net::connected(server.port);
        recv_exact(fd, len, how);
        net::close(fd);
        let close = sw.wait_for("close", record_of("close", pid, fd));
        assert_eq!(u(&close["bytes_recv"]), len as u64, "{how:?}: {close}");
        assert_eq!(u(&close["bytes_sent"]), 0, "{how:?}: {close}");
    }
}

/// A long-lived connection with traffic both ways, through several syscalls, against the
/// kernel's own tcp_info counters (`ss -tin`).
#[test]
fn a_long_lived_connection_matches_ss_both_ways() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::with_greeting(300_000);
    let pid = std::process::id();
    let fd = net::connected(server.port);
    recv_exact(fd, 100_000, Receiver::Read);
    send_all(fd, 123_456, Sender::Write);
    recv_exact(fd, 150_000, Receiver::Recvmsg);
    send_all(fd, 7_890, Sender::Sendmsg);
    recv_exact(fd, 50_000, Receiver::Recvfrom);
    send_all(fd, 11, Sender::Sendto);
    let expected_sent = 123_456 + 7_890 + 11;
    let (ss_sent, ss_received) =
        net::ss_counters_settled(net::local_port(fd), expected_sent).expect("ss lists the socket");
    net::close(fd);
    let close = sw.wait_for("close", record_of("close", pid, fd));
    assert_eq!(
        (u(&close["bytes_sent"]), u(&close["bytes_recv"])),
        (ss_sent, ss_received)
    );
    assert_eq!((ss_sent, ss_received), (expected_sent, 300_000));
}

/// More sockets than their hot slots hold: `--hot-slots 32` gives the socket backend's
/// `SK_HOT` 32 slots, each socket choosing between two, so with 48 open at once some find both
/// taken and count in `SK_BYTES` instead (the map itself keeps its default size: the tests
/// running beside this one track their sockets too). Every socket's counts are exact either
/// way, against the server's own count of each connection.
#[test]
fn sockets_crowding_the_hot_slots_still_count_exactly() {
    let mut sw = Sockwatch::start(&["--hot-slots", "32", "--direction", "out"]);
    let server = net::CountingServer::with_greeting(100);
    let pid = std::process::id();
    let fds: Vec<i32> = (0..48).map(|_| net::connected(server.port)).collect();
    let sent = |i: usize| (1_000 + 7 * i + 500 + i) as u64;
    for (i, &fd) in fds.iter().enumerate() {
        send_all(fd, 1_000 + 7 * i, Sender::Write);
        recv_exact(fd, 100, Receiver::Read);
    }
    // Again once every one is tracked: each message of the row's process takes the short path.
    for (i, &fd) in fds.iter().enumerate() {
        send_all(fd, 500 + i, Sender::Send);
    }
    for (i, &fd) in fds.iter().enumerate() {
        net::close(fd);
        assert_eq!(
            server.next_total(),
            sent(i),
            "socket {i}: the server received"
        );
        let close = sw.wait_for("close", record_of("close", pid, fd));
        assert_eq!(
            (u(&close["bytes_sent"]), u(&close["bytes_recv"])),
            (sent(i), 100),
            "socket {i}: {close}"
        );
    }
}

/// Live counts (a refresh's, as `--json-samples` writes them) are exact while sockets stay
/// open: where the kernel counts by socket, a refresh reads each socket's hot slot from memory
/// and its `SK_BYTES` counters only when its slot pair says it counted there. 16 hot slots
/// make sockets share slot pairs and most count without a slot; a connection older than
/// sockwatch is counted from its first byte after the start (the kernel learns its socket
/// then). The oracle: what each socket's own `send()` calls moved.
#[test]
fn live_counts_are_exact_for_crowded_and_older_sockets() {
    const SOCKETS: usize = 40;
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let older = net::connected(server.port);
    send_all(older, 999, Sender::Write);
    let args = ["--json-samples", "--interval", "200", "--hot-slots", "16"];
    // No check against /proc in the test's time, nor a refresh reading the maps whole: a full
    // read would mend a refresh that read wrong.
    let quiet = [
        "--direction",
        "out",
        "--reconcile-ms",
        "600000",
        "--full-read-ms",
        "600000",
    ];
    let mut sw = Sockwatch::start_adopting(&[&args[..], &quiet].concat());
    sw.wait_for("existing", record_of("existing", pid, older));
    let fds: Vec<i32> = (0..SOCKETS).map(|_| net::connected(server.port)).collect();
    let mut expected: std::collections::BTreeMap<i64, u64> =
        fds.iter().map(|&fd| (i64::from(fd), 0)).collect();
    expected.insert(i64::from(older), 0);
    // The first round locates every new socket, the second moves bytes on sockets already
    // located, the third only the older one's first (the kernel learns its socket then), so
    // that little is looked up and the refresh reads from memory.
    for round in 0..3 {
        if round < 2 {
            for (i, &fd) in fds.iter().enumerate() {
                let len = 1_000 + 7 * i + 500 * round;
                send_all(fd, len, Sender::Send);
                *expected.get_mut(&i64::from(fd)).expect("a socket") += len as u64;
            }
        } else {
            send_all(older, 333, Sender::Send);
            *expected
                .get_mut(&i64::from(older))
                .expect("the older socket") += 333;
        }
        let seen = sample_round_with(&mut sw, pid, &expected);
        assert_eq!(
            seen, expected,
            "round {round}: bytes sent by fd, as sampled"
        );
    }
    for fd in fds.into_iter().chain([older]) {
        net::close(fd);
    }
}

/// The first refresh whose samples of `pid` show `expected` (bytes sent by fd), or the last
/// one seen before giving up, bounded by the number of rounds (each wait is bounded too).
fn sample_round_with(
    sw: &mut Sockwatch,
    pid: u32,
    expected: &std::collections::BTreeMap<i64, u64>,
) -> std::collections::BTreeMap<i64, u64> {
    let (mut round, mut time, mut last) = (Default::default(), Value::Null, Default::default());
    for _ in 0..(50 * expected.len()) {
        let sample = sw.next_sample("sample", |r| r["event"] == "sample" && r["pid"] == pid);
        if sample["time"] != time {
            if round == *expected {
                return round;
            }
            last = std::mem::take(&mut round);
            time = sample["time"].clone();
        }
        // Other tests' sockets in this process hold other fd numbers meanwhile.
        let fd = sample["fd"].as_i64().expect("a sample's fd");
        if expected.contains_key(&fd) {
            round.insert(fd, u(&sample["bytes_sent"]));
        }
    }
    last
}

#[test]
fn accepted_sockets_are_inbound_with_the_peer_address() {
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    let (listener, port) = net::raw_listener();

    // accept() with an address buffer: the peer comes from it.
    let client = net::connected(port);
    let (inbound, peer_port) = net::accept_with_peer(listener);
    assert_eq!(peer_port, net::local_port(client));
    send_all(client, 500, Sender::Send);
    recv_exact(inbound, 500, Receiver::Recv);
    send_all(inbound, 64, Sender::Write);
    let accept = sw.wait_for("accept", inbound_of("accept", pid, inbound));
    assert_eq!(accept["direction"], "in");
    assert_eq!(
        (accept["daddr"].as_str(), u(&accept["dport"])),
        (Some("127.0.0.1"), u64::from(peer_port))
    );
    assert_eq!(u(&accept["lport"]), u64::from(port));
    net::close(inbound);
    let close = sw.wait_for("close", inbound_of("close", pid, inbound));
    assert_eq!(
        (u(&close["bytes_recv"]), u(&close["bytes_sent"])),
        (500, 64)
    );
    assert_eq!(close["direction"], "in");
    assert_eq!(u(&close["lport"]), u64::from(port));
    net::close(client);

    // accept4() without one: the peer is found in /proc (the socket backend reads it from the
    // socket). The socket backend sees an accepted socket at its first use: one closed unused,
    // like this one, at its release, under the process that let go of it (its fd gone then).
    let client = net::connected(port);
    let inbound = net::accept4_without_peer(listener);
    let inode = net::inode_of(inbound);
    let accept = if counts_every_holder(&sw) {
        net::close(inbound);
        let accept = sw.wait_for("accept4", of_inode("accept", inode));
        assert_eq!((&accept["pid"], &accept["fd"]), (&pid.into(), &Value::Null));
        accept
    } else {
        let accept = sw.wait_for("accept4", inbound_of("accept", pid, inbound));
        net::close(inbound);
        accept
    };
    assert_eq!(u(&accept["dport"]), u64::from(net::local_port(client)));
    assert_eq!(accept["daddr"], "127.0.0.1");
    assert_eq!(u(&accept["lport"]), u64::from(port));
    sw.wait_for("close of accept4's socket", of_inode("close", inode));
    net::close(client);
    net::close(listener);
}

#[test]
fn inbound_only_ignores_connects() {
    let mut sw = Sockwatch::start(&["--direction", "in"]);
    let pid = std::process::id();
    let (listener, port) = net::raw_listener();
    let client = net::connected(port);
    let (inbound, _) = net::accept_with_peer(listener);
    let inode = net::inode_of(inbound);
    net::close(inbound);
    // By inode: the socket backend sees an accepted socket never used only at its release,
    // its fd gone by then.
    let close = sw.wait_for("close of the accepted socket", of_inode("close", inode));
    assert_eq!(
        (&close["pid"], &close["direction"]),
        (&pid.into(), &"in".into())
    );
    net::close(client);
    net::close(listener);
    // Barrier: a clean stop drains every event the kernel emitted before the signal, so the
    // records up to `end` hold whatever the client's connect and close caused, and `open`
    // records whatever is still tracked.
    let rest = sw.stop();
    let outbound: Vec<_> = rest
        .iter()
        .filter(|r| r["pid"] == pid && r["direction"] == "out")
        .collect();
    assert!(
        outbound.is_empty(),
        "outbound sockets reported: {outbound:?}"
    );
}

/// A dual-stack program's connect to IPv4 (an `AF_INET6` socket, `::ffff:127.0.0.1`) is IPv4,
/// and shown so. (True IPv6: tests/ipv6.rs.)
#[test]
fn ipv4_mapped_ipv6_connects_are_ipv4() {
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    let server = net::CountingServer::start();
    let (mapped, errno) = net::connect6(
        Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]),
        server.port,
    );
    assert_eq!(errno, 0, "connect to ::ffff:127.0.0.1");
    send_all(mapped, 777, Sender::Write);
    let connect = sw.wait_for("mapped connect", record_of("connect", pid, mapped));
    assert_eq!(
        (
            connect["daddr"].as_str(),
            connect["proto"].as_str(),
            &connect["family"]
        ),
        (Some("127.0.0.1"), Some("tcp"), &Value::from(4))
    );
    assert_eq!(u(&connect["dport"]), u64::from(server.port));
    net::close(mapped);
    let close = sw.wait_for("mapped close", record_of("close", pid, mapped));
    assert_eq!(u(&close["bytes_sent"]), 777);
}

#[test]
fn connected_udp_is_tracked_as_udp() {
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    let port = net::udp_echo();
    let fd = net::connected_udp(port);
    for len in [100, 200, 300] {
        send_all(fd, len, Sender::Send);
        recv_exact(fd, len, Receiver::Recv);
    }
    let connect = sw.wait_for("udp connect", record_of("connect", pid, fd));
    assert_eq!(
        (connect["proto"].as_str(), connect["result"].as_str()),
        (Some("udp"), Some("ok"))
    );
    net::close(fd);
    let close = sw.wait_for("udp close", record_of("close", pid, fd));
    assert_eq!(
        (u(&close["bytes_sent"]), u(&close["bytes_recv"])),
        (600, 600)
    );
    assert_eq!(close["proto"], "udp");
}

#[test]
fn close_range_ends_every_tracked_socket_in_range() {
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    let server = net::CountingServer::start();
    // Fixed, otherwise unused fd numbers: other tests' threads open fds concurrently.
    let fds = [710, 711];
    for (i, fd) in fds.into_iter().enumerate() {
        net::socket_at(fd);
        assert_eq!(net::connect(fd, server.port), 0);
        send_all(fd, 100 * (i + 1), Sender::Write);
    }
    // SAFETY: closes exactly the two fds this test owns.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 710u32, 711u32, 0u32) };
    assert_eq!(rc, 0, "close_range: {}", std::io::Error::last_os_error());
    // The socket backend sees the kernel release each socket, not the call that let go of it.
    let reason = if counts_every_holder(&sw) {
        "close"
    } else {
        "close_range"
    };
    for (i, fd) in fds.into_iter().enumerate() {
        let close = sw.wait_for("close_range", record_of("close", pid, fd));
        assert_eq!(close["reason"], reason);
        assert_eq!(u(&close["bytes_sent"]), 100 * (i as u64 + 1));
    }
}

#[test]
fn dup2_onto_a_tracked_fd_ends_it() {
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    let server = net::CountingServer::start();
    let fd = net::socket_at(720);
    assert_eq!(net::connect(fd, server.port), 0);
    send_all(fd, 4321, Sender::Write);
    let devnull = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    // SAFETY: dup2 onto the fd this test owns; the socket it held is closed by it.
    let rc = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&devnull), fd) };
    assert_eq!(rc, fd);
    let close = sw.wait_for("dup2 close", record_of("close", pid, fd));
    // The socket backend sees the kernel release the socket, not the call that let go of it.
    let reason = if counts_every_holder(&sw) {
        "close"
    } else {
        "dup2"
    };
    assert_eq!(close["reason"], reason);
    assert_eq!(u(&close["bytes_sent"]), 4321);
    // Writes to the fd now go to /dev/null and must not count anywhere.
    send_all(fd, 10, Sender::Write);
    net::close(fd);
}

#[test]
fn process_exit_without_close_ends_its_sockets() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let port = server.port.to_string();
    let mut load = Load::spawn(&["exit-without-close", "--port", &port, "--bytes", "2500"]);
    let line = load.line(LOAD_TIMEOUT);
    let (pid, fd) = (field(&line, "pid"), field(&line, "fd"));
    load.tell("go");
    let status = load.wait_exit(LOAD_TIMEOUT);
    assert!(
        status.success(),
        "sockwatch-load exit-without-close: {status}"
    );
    let close = sw.wait_for("exit close", record_of("close", pid, fd as i32));
    assert_eq!(close["reason"], "exit");
    // What the other end received, not what the helper was asked to send.
    let received = server.next_total();
    assert_eq!(u(&close["bytes_sent"]), received, "{close}");
    assert_eq!(received, 2500, "the helper sent what it was asked to");
}

#[test]
fn exec_closes_close_on_exec_sockets_only() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let port = server.port.to_string();
    let mut load = Load::spawn(&["exec-with-cloexec", "--port", &port, "--bytes", "1000"]);
    let line = load.line(LOAD_TIMEOUT);
    let pid = field(&line, "pid");
    let (cloexec_fd, keep_fd) = (
        field(&line, "cloexec_fd") as i32,
        field(&line, "keep_fd") as i32,
    );
    load.tell("go");
    let close = sw.wait_for("exec close", record_of("close", pid, cloexec_fd));
    assert_eq!(close["reason"], "exec");
    // The expected counts are what the server received on each connection. Only the exec has
    // closed one so far (the exec'd `sleep` holds the other until it is killed), so the next
    // connection to finish at the server is the close-on-exec one.
    let cloexec_received = server.next_total();
    assert_eq!(u(&close["bytes_sent"]), cloexec_received, "{close}");
    let kept = sw.received(record_of("close", pid, keep_fd));
    assert!(
        kept.is_empty(),
        "the socket without FD_CLOEXEC survives exec: {kept:?}"
    );
    load.kill();
    let status = load.wait_exit(LOAD_TIMEOUT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the exec'd sleep ran until killed: {status}"
    );
    let close = sw.wait_for("exit close", record_of("close", pid, keep_fd));
    assert_eq!(close["reason"], "exit");
    let keep_received = server.next_total();
    assert_eq!(u(&close["bytes_sent"]), keep_received, "{close}");
    // The two sockets carry different counts, so records swapped between them would fail.
    assert_ne!(cloexec_received, keep_received);
}

#[test]
fn a_connection_older_than_sockwatch_is_picked_up_and_counted_from_then() {
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let fd = net::connected(server.port);
    send_all(fd, 999, Sender::Write);
    let mut sw = Sockwatch::start_adopting(&[]);
    let existing = sw.wait_for("existing", record_of("existing", pid, fd));
    assert_eq!(u(&existing["dport"]), u64::from(server.port));
    assert_eq!(u(&existing["lport"]), u64::from(net::local_port(fd)));
    assert_eq!(
        (existing["proto"].as_str(), existing["direction"].as_str()),
        (Some("tcp"), Some("out"))
    );
    send_all(fd, 1234, Sender::Send);
    net::close(fd);
    let close = sw.wait_for("close", record_of("close", pid, fd));
    assert_eq!(u(&close["bytes_sent"]), 1234, "only bytes sent after start");
    assert_eq!(close["preexisting"], true);
    assert_eq!(server.next_total(), 999 + 1234);
}

#[test]
fn no_existing_leaves_old_connections_alone() {
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let fd = net::connected(server.port);
    let mut sw = Sockwatch::start(&["--no-existing"]);
    send_all(fd, 10, Sender::Send);
    net::close(fd);
    let barrier = net::connected(server.port);
    net::close(barrier);
    sw.wait_for("barrier", record_of("close", pid, barrier));
    let old = sw.received(|r| {
        r["pid"] == pid && r["fd"] == fd && r["dport"] == server.port && r["event"] != "connect"
    });
    assert!(old.is_empty(), "{old:?}");
}

/// Thousands of connect/send/close cycles: every one reported exactly, nothing left in the
/// kernel map, nothing lost.
#[test]
fn churn_leaves_nothing_behind() {
    const CYCLES: u64 = 3000;
    const BYTES: u64 = 100;
    // Without the start-up scan of /proc, which runs beside the churn and could adopt one
    // of its sockets as `existing`.
    let mut sw = Sockwatch::start(&["--no-existing"]);
    let pid = std::process::id();
    let server = net::CountingServer::start();
    let port = server.port.to_string();
    let mut churn = Load::spawn(&[
        "churn",
        "--port",
        &port,
        "--count",
        &CYCLES.to_string(),
        "--bytes",
        &BYTES.to_string(),
    ]);
    let churn_pid = churn.pid();
    let status = churn.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "sockwatch-load churn: {status}");
    let summary = churn.line(LOAD_TIMEOUT);
    assert_eq!(u64::from(field(&summary, "cycles")), CYCLES, "{summary}");
    // The other end saw every cycle's bytes: the oracle for the close records below.
    for cycle in 0..CYCLES {
        assert_eq!(
            server.next_total(),
            BYTES,
            "connection {cycle} at the server"
        );
    }

    // Nothing of the churn's is left in the kernel's map. A socket of this process, open while
    // the map is read, shows that the read finds what is there.
    let control = net::connected(server.port);
    let keys = sw.tracked_keys();
    assert!(
        keys.contains(&(pid, control as u32)),
        "the open control socket ({pid}, {control}) is in the map: {keys:?}"
    );
    let left: Vec<_> = keys.iter().filter(|(p, _)| *p == churn_pid).collect();
    assert!(
        left.is_empty(),
        "churn sockets left in the kernel map: {left:?}"
    );
    net::close(control);

    let is_ours = |r: &Value| r["pid"] == churn_pid && r["dport"] == server.port;
    // The churn has ended, so every event is in the ring buffer: stopping drains it all.
    let records = sw.stop();
    let end = records
        .iter()
        .find(|r| r["event"] == "end")
        .expect("end record");
    assert_eq!(u(&end["lost"]), 0, "{end}");
    // `end.open` counts what was still tracked at the end, listed in the `open` records:
    // none of them may be the churn's.
    let open: Vec<_> = records.iter().filter(|r| r["event"] == "open").collect();
    assert_eq!(u(&end["open"]) as usize, open.len(), "{end}; {open:?}");
    let open_of_ours: Vec<_> = open.iter().filter(|r| is_ours(r)).collect();
    assert!(
        open_of_ours.is_empty(),
        "churn sockets still tracked at the end: {open_of_ours:?}"
    );
    // In arrival order, each close follows its own connect on that fd, and every socket was
    // ended by its own close (not settled later, at the process's exit, from a leftover entry).
    let mut open_fds = std::collections::HashMap::new();
    let (mut connects, mut closes) = (0, 0);
    for record in records.iter().filter(|r| is_ours(r)) {
        let fd = u(&record["fd"]);
        match record["event"].as_str() {
            Some("connect") => {
                connects += 1;
                assert!(
                    open_fds.insert(fd, record).is_none(),
                    "connect on an open fd: {record}"
                );
            }
            Some("close") => {
                closes += 1;
                assert!(
                    open_fds.remove(&fd).is_some(),
                    "close without a connect: {record}"
                );
                assert_eq!(record["reason"], "close", "{record}");
                assert_eq!(u(&record["bytes_sent"]), BYTES, "{record}");
            }
            _ => panic!("unexpected record: {record}"),
        }
    }
    assert_eq!((connects, closes), (CYCLES, CYCLES));
    assert!(
        open_fds.is_empty(),
        "still tracked after churn: {open_fds:?}"
    );
}

/// An event the probes never saw (simulated: an entry put in the kernel map with bpftool for an
/// fd this process does not have) is repaired by the reconciliation with /proc, and counted.
#[test]
fn reconciliation_repairs_what_events_missed() {
    use sockwatch_common::{SocketKey, SocketState, TrackedSocket, IPPROTO_TCP};
    const FD: u32 = 960;
    let mut sw = Sockwatch::start(&["--reconcile-ms", "100"]);
    let map_id = u(&sw.start["tracked_map_id"]);
    let pid = std::process::id();
    let key = SocketKey { pid, fd: FD };
    let mut comm = [0u8; 16];
    comm[..5].copy_from_slice(b"ghost");
    let value = TrackedSocket {
        bytes_sent: 42,
        bytes_recv: 7,
        connect_ns: 1,
        sk: 0,
        ino: 0,
        daddr: sockwatch_common::ipv4_mapped(u32::from_ne_bytes([127, 0, 0, 1])),
        dport: 9,
        lport: 0,
        tid: pid,
        state: SocketState::Established as u32,
        proto: IPPROTO_TCP,
        flags: 0,
        _pad0: 0,
        comm,
    };
    let update = process::output_within(
        Command::new("bpftool")
            .args(["map", "update", "id", &map_id.to_string(), "key", "hex"])
            .args(hex_bytes(&key))
            .args(["value", "hex"])
            .args(hex_bytes(&value)),
        process::COMMAND_TIMEOUT,
        "bpftool map update (installed by cargo xtask setup)",
    );
    assert!(
        update.status.success(),
        "bpftool map update: {}",
        String::from_utf8_lossy(&update.stderr)
    );
    let close = sw.wait_for("reconciled close", record_of("close", pid, FD as i32));
    assert_eq!(close["reason"], "reconciled");
    assert_eq!((u(&close["bytes_sent"]), u(&close["bytes_recv"])), (42, 7));
    let rest = sw.stop();
    let end = rest
        .iter()
        .find(|r| r["event"] == "end")
        .expect("end record");
    assert_eq!(u(&end["repairs"]), 1, "{end}");
}

/// The bytes of a plain-old-data value, as bpftool's `hex` arguments.
fn hex_bytes<T: Copy>(value: &T) -> Vec<String> {
    // SAFETY: T is one of the #[repr(C)] map types without padding; reading its bytes is sound.
    let bytes =
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether this run counts at the socket layer (the `socket` backend), where every holder's
/// bytes count; the syscall backends count only the calls on the tracked (pid, fd).
fn counts_every_holder(sw: &Sockwatch) -> bool {
    sw.start["probe"] == "socket"
}

/// Bytes written through a `dup()` copy of a tracked fd are the same socket's: counted on the
/// socket backend, as the server's own count says; the syscall backends see only the original.
#[test]
fn writes_through_a_dup_copy_count_on_the_socket_backend() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let fd = net::connected(server.port);
    // SAFETY: dup of our own open fd.
    let copy = unsafe { libc::dup(fd) };
    assert!(copy >= 0, "dup: {}", std::io::Error::last_os_error());
    net::sendto_all(fd, 1_000);
    net::sendto_all(copy, 3_000);
    net::close(copy);
    net::close(fd);
    let received = server.next_total();
    assert_eq!(received, 4_000, "the server's own count");
    let close = sw.wait_for("close", record_of("close", pid, fd));
    let every_holder = counts_every_holder(&sw);
    let expected = if every_holder { received } else { 1_000 };
    assert_eq!(u(&close["bytes_sent"]), expected, "{close}");
    // What a backend cannot count, it says: the counts are then a lower bound.
    assert_eq!(close["complete"], every_holder, "{close}");
}

/// Bytes sent and received through io_uring bypass the syscalls: the socket backend counts
/// them (the server's count and its greeting's size are the oracles); the syscall backends mark
/// the socket partial.
#[test]
fn io_uring_sends_and_receives_count_on_the_socket_backend_and_are_flagged_elsewhere() {
    const GREETING: usize = 2_500;
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::with_greeting(GREETING);
    let pid = std::process::id();
    let fd = net::connected(server.port);
    net::sendto_all(fd, 100);
    let mut ring = io_uring::IoUring::new(8).expect("an io_uring (Linux 5.1 or later)");
    let data = vec![5u8; 3_000];
    let send =
        io_uring::opcode::Send::new(io_uring::types::Fd(fd), data.as_ptr(), data.len() as u32)
            .build();
    // SAFETY: `data` outlives the request, which completes before the next statement.
    unsafe { ring.submission().push(&send) }.expect("room in the submission queue");
    ring.submit_and_wait(1).expect("io_uring_enter");
    let sent = ring.completion().next().expect("a completion").result();
    assert_eq!(sent, 3_000, "io_uring send result");
    // The server's greeting, read through io_uring until all of it came.
    let mut greeting = vec![0u8; GREETING];
    let mut got = 0usize;
    while got < GREETING {
        let left = &mut greeting[got..];
        let recv = io_uring::opcode::Recv::new(
            io_uring::types::Fd(fd),
            left.as_mut_ptr(),
            left.len() as u32,
        )
        .build();
        // SAFETY: `greeting` outlives the request, which completes before it is read.
        unsafe { ring.submission().push(&recv) }.expect("room in the submission queue");
        ring.submit_and_wait(1).expect("io_uring_enter");
        let n = ring.completion().next().expect("a completion").result();
        assert!(n > 0, "io_uring recv result {n}");
        got += n as usize;
    }
    net::close(fd);
    let received = server.next_total();
    assert_eq!(received, 3_100, "the server's own count");
    let close = sw.wait_for("close", record_of("close", pid, fd));
    let every_holder = counts_every_holder(&sw);
    let (sent, recv) = if every_holder {
        (received, GREETING as u64)
    } else {
        (100, 0)
    };
    assert_eq!(u(&close["bytes_sent"]), sent, "{close}");
    assert_eq!(u(&close["bytes_recv"]), recv, "{close}");
    assert_eq!(close["complete"], every_holder, "{close}");
}

/// A forked child writing on the socket it inherited moves the same socket's bytes: the socket
/// backend counts them toward the parent's row (the server's count is the oracle); the syscall
/// backends flag the row partial.
#[test]
fn a_forked_childs_bytes_count_on_the_socket_backend() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let fd = net::connected(server.port);
    let child = process::fork_writer(fd, 2_000, None);
    let status = process::wait_pid(child, process::COMMAND_TIMEOUT, "the forked writer");
    assert_eq!(status, 0, "the child wrote everything");
    net::sendto_all(fd, 500);
    net::close(fd);
    let received = server.next_total();
    assert_eq!(received, 2_500, "the server's own count");
    let close = sw.wait_for("close", record_of("close", pid, fd));
    let every_holder = counts_every_holder(&sw);
    let expected = if every_holder { received } else { 500 };
    assert_eq!(u(&close["bytes_sent"]), expected, "{close}");
    // The syscall backends cannot count the child's bytes: they say so.
    assert_eq!(close["complete"], every_holder, "{close}");
}

/// A thread shares its process's fd table (its bytes are the process's own), and a program
/// started the usual way (posix_spawn, sharing memory until its exec) never uses the parent's
/// sockets: neither flags anything, on any backend.
#[test]
fn a_new_thread_or_a_started_program_leaves_the_counts_complete() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let fd = net::connected(server.port);
    std::thread::spawn(move || net::sendto_all(fd, 700))
        .join()
        .expect("the sending thread");
    let started = process::output_within(
        &mut Command::new("true"),
        process::COMMAND_TIMEOUT,
        "true(1)",
    );
    assert!(started.status.success());
    net::close(fd);
    assert_eq!(server.next_total(), 700, "the server's own count");
    let close = sw.wait_for("close", record_of("close", pid, fd));
    assert_eq!(u(&close["bytes_sent"]), 700, "{close}");
    assert_eq!(close["complete"], true, "{close}");
}

/// Records of `event` about kernel socket `inode`, whoever holds it.
fn of_inode(event: &'static str, inode: u64) -> impl Fn(&Value) -> bool {
    move |r| r["event"] == event && r["inode"] == inode
}

/// Stops sockwatch and checks that the close of `inode` already taken was its only end: no
/// second close, and no row of it still open at the end.
fn ended_once(sw: &mut Sockwatch, inode: u64) {
    let rest = sw.stop();
    let more: Vec<&Value> = rest
        .iter()
        .filter(|r| of_inode("close", inode)(r) || of_inode("open", inode)(r))
        .collect();
    assert!(more.is_empty(), "it ended twice, or lives on: {more:?}");
}

/// A socket closed by its process while a forked child still holds it lives on. The socket
/// backend follows it to the child and ends it when the child's exit releases it, with every
/// byte (the server's count is the oracle); the syscall backends end the row at the close with
/// the bytes moved until then, marked partial.
#[test]
fn closing_a_socket_a_child_still_holds_hands_it_to_the_child() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let fd = net::connected(server.port);
    let inode = net::inode_of(fd);
    net::sendto_all(fd, 300);
    let mut go = [0i32; 2];
    // SAFETY: pipe2 fills the array we own.
    assert_eq!(unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let child = process::fork_writer(fd, 1_000, Some(go[0]));
    net::close(fd);
    let every_holder = counts_every_holder(&sw);
    // SAFETY: one byte into the pipe we own, then our end closed.
    unsafe {
        assert_eq!(libc::write(go[1], [1u8].as_ptr().cast(), 1), 1);
        libc::close(go[1]);
        libc::close(go[0]);
    }
    let status = process::wait_pid(
        child,
        process::COMMAND_TIMEOUT,
        "the child holding the socket",
    );
    assert_eq!(status, 0, "the child wrote everything");
    let received = server.next_total();
    assert_eq!(received, 1_300, "the server's own count");
    if every_holder {
        // Moved at the child's first write: we no longer held it.
        sw.wait_for("the row to move to the child", |r| {
            of_inode("moved", inode)(r) && r["pid"] == child && r["fd"] == fd
        });
    }
    let close = sw.wait_for("close", of_inode("close", inode));
    if every_holder {
        assert_eq!(close["pid"], child, "released by the child: {close}");
        assert_eq!(close["fd"], fd, "{close}");
        assert_eq!(u(&close["bytes_sent"]), received, "{close}");
        assert_eq!(close["complete"], true, "{close}");
    } else {
        assert_eq!(close["pid"], pid, "{close}");
        assert_eq!(u(&close["bytes_sent"]), 300, "{close}");
        assert_eq!(close["complete"], false, "{close}");
    }
    ended_once(&mut sw, inode);
}

/// A forking server: the parent accepts, a forked child echoes, the parent closes its copy.
/// The socket backend shows the accepted socket under the child and counts the echo both ways
/// (the client's own counts are the oracle); the syscall backends flag the row partial.
#[test]
fn a_forking_servers_child_carries_the_accepted_socket() {
    const ECHO: usize = 50_000;
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    let (listener, port) = net::raw_listener();
    let client = net::connected(port);
    let (accepted, _) = net::accept_with_peer(listener);
    let inode = net::inode_of(accepted);
    let child = process::fork_echo(accepted);
    net::close(accepted);
    let every_holder = counts_every_holder(&sw);
    send_all(client, ECHO, Sender::Write);
    recv_exact(client, ECHO, Receiver::Read);
    if every_holder {
        // The socket backend sees an accepted socket at its first use: here, the worker's.
        sw.wait_for("the row under the worker", |r| {
            of_inode("accept", inode)(r) && r["pid"] == child && r["direction"] == "in"
        });
    }
    net::shutdown_write(client);
    let status = process::wait_pid(child, process::COMMAND_TIMEOUT, "the echo worker");
    assert_eq!(status, 0, "the worker echoed everything");
    let close = sw.wait_for("close", of_inode("close", inode));
    assert_eq!(close["direction"], "in", "{close}");
    let holder = every_holder.then_some((child as u32, accepted));
    assert_echoed(&close, ECHO as u64, holder, pid);
    net::close(client);
    net::close(listener);
    ended_once(&mut sw, inode);
}

/// An echoed socket's close: on the socket backend, under `holder` (pid, fd) with every byte
/// both ways; on the syscall backends (`holder` `None`), under our `pid`, marked partial.
fn assert_echoed(close: &Value, echo: u64, holder: Option<(u32, i32)>, pid: u32) {
    match holder {
        Some((holder, fd)) => {
            assert_eq!(
                (&close["pid"], &close["fd"]),
                (&holder.into(), &fd.into()),
                "{close}"
            );
            assert_eq!(u(&close["bytes_recv"]), echo, "{close}");
            assert_eq!(u(&close["bytes_sent"]), echo, "{close}");
            assert_eq!(close["complete"], true, "{close}");
        }
        None => {
            assert_eq!(close["pid"], pid, "{close}");
            assert_eq!(close["complete"], false, "{close}");
        }
    }
}

/// A socket on a program's stdin and stdout (as inetd or `nc -e` start one): `cat` echoes what
/// the peer sends. The socket backend follows the socket to `cat` (fd 0) and counts its bytes;
/// the syscall backends end the row at our close, marked partial.
#[test]
fn a_socket_on_a_programs_stdin_and_stdout_counts_its_bytes() {
    const ECHO: usize = 40_000;
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    let (listener, port) = net::raw_listener();
    let fd = net::connected(port);
    let (peer, _) = net::accept_with_peer(listener);
    let inode = net::inode_of(fd);
    let copy = || {
        // SAFETY: our open fd, borrowed only to copy it.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        borrowed
            .try_clone_to_owned()
            .expect("a copy of the socket's fd")
    };
    let mut cat = Command::new("cat")
        .stdin(std::process::Stdio::from(copy()))
        .stdout(std::process::Stdio::from(copy()))
        .spawn()
        .expect("cat");
    net::close(fd);
    let every_holder = counts_every_holder(&sw);
    send_all(peer, ECHO, Sender::Write);
    recv_exact(peer, ECHO, Receiver::Read);
    if every_holder {
        // Moved at cat's first read: we no longer held it.
        sw.wait_for("the row to move to cat", |r| {
            of_inode("moved", inode)(r) && r["pid"] == cat.id() && r["fd"] == 0
        });
    }
    net::shutdown_write(peer);
    let status = process::wait_or_kill(&mut cat, process::COMMAND_TIMEOUT, "cat");
    assert!(status.success(), "cat: {status}");
    let close = sw.wait_for("close", of_inode("close", inode));
    assert_echoed(
        &close,
        ECHO as u64,
        every_holder.then_some((cat.id(), 0)),
        pid,
    );
    if every_holder {
        assert_eq!(close["comm"], "cat", "{close}");
    }
    net::close(peer);
    net::close(listener);
    ended_once(&mut sw, inode);
}

/// A socket handed to another process over a Unix socket (SCM_RIGHTS): we send 1,000 bytes,
/// pass it, close it; the receiver sends 30,000 and exits. The socket backend counts both
/// (the server's count is the oracle) and ends the row with the receiver; the syscall
/// backends see only our bytes and say so.
#[test]
fn a_socket_passed_over_a_unix_socket_counts_the_receivers_bytes() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let (ours, theirs) = net::unix_pair();
    // Forked before the connect: the receiver holds the socket only once it is passed.
    let receiver = process::fork_fd_receiver(theirs, 30_000);
    net::close(theirs);
    let fd = net::connected(server.port);
    let inode = net::inode_of(fd);
    net::sendto_all(fd, 1_000);
    net::send_fd(ours, fd);
    net::wait_readable(ours);
    let mut ack = 0u8;
    // SAFETY: one byte into a local we own, from the Unix socket we own.
    assert_eq!(
        unsafe { libc::read(ours, (&raw mut ack).cast(), 1) },
        1,
        "the receiver holds it"
    );
    net::close(fd);
    let every_holder = counts_every_holder(&sw);
    // SAFETY: one byte on the Unix socket we own: the receiver may write now.
    assert_eq!(unsafe { libc::write(ours, [1u8].as_ptr().cast(), 1) }, 1);
    let status = process::wait_pid(receiver, process::COMMAND_TIMEOUT, "the fd's receiver");
    assert_eq!(status, 0, "the receiver wrote everything");
    let held_at = if every_holder {
        // Moved at the receiver's first write: we no longer held it.
        let moved = sw.wait_for("the row to move to the receiver", |r| {
            of_inode("moved", inode)(r) && r["pid"] == receiver
        });
        Some(moved["fd"].clone())
    } else {
        None
    };
    let received = server.next_total();
    assert_eq!(received, 31_000, "the server's own count");
    let close = sw.wait_for("close", of_inode("close", inode));
    if let Some(fd) = held_at {
        assert_eq!(close["pid"], receiver, "released by the receiver: {close}");
        assert_eq!(close["fd"], fd, "on the fd it was received at: {close}");
        assert_eq!(u(&close["bytes_sent"]), received, "{close}");
        assert_eq!(close["complete"], true, "{close}");
    } else {
        assert_eq!(close["pid"], pid, "{close}");
        assert_eq!(u(&close["bytes_sent"]), 1_000, "{close}");
        assert_eq!(close["complete"], false, "{close}");
    }
    net::close(ours);
    ended_once(&mut sw, inode);
}

/// A process that exits while the child it forked still holds its socket (a daemon whose worker
/// outlives it). The socket backend hands the socket to the child and counts its bytes to the
/// end (the server's count is the oracle); the syscall backends end the row at the exit, marked
/// partial.
#[test]
fn a_socket_outlives_its_process_in_the_child_it_forked() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let port = server.port.to_string();
    let mut load = Load::spawn(&[
        "exit-leaving-child",
        "--port",
        &port,
        "--bytes",
        "500",
        "--child-bytes",
        "2000",
    ]);
    let line = load.line(LOAD_TIMEOUT);
    let (pid, child, fd) = (
        field(&line, "pid"),
        field(&line, "child"),
        field(&line, "fd"),
    );
    let status = load.wait_exit(LOAD_TIMEOUT);
    assert!(status.success(), "{status}");
    let every_holder = counts_every_holder(&sw);
    if every_holder {
        let moved = sw.wait_for("the row to move to the child", |r| {
            r["event"] == "moved" && r["from_pid"] == pid && r["from_fd"] == fd
        });
        assert_eq!(
            (&moved["pid"], &moved["fd"]),
            (&child.into(), &fd.into()),
            "{moved}"
        );
    }
    // The child still reads the stdin the exited parent shared with it.
    load.tell("go");
    let received = server.next_total();
    assert_eq!(received, 2_500, "the server's own count");
    if every_holder {
        let close = sw.wait_for("the child's exit", record_of("close", child, fd as i32));
        assert_eq!(close["reason"], "exit", "{close}");
        assert_eq!(u(&close["bytes_sent"]), received, "{close}");
        assert_eq!(close["complete"], true, "{close}");
    } else {
        let close = sw.wait_for("the exit", record_of("close", pid, fd as i32));
        assert_eq!(close["reason"], "exit", "{close}");
        assert_eq!(u(&close["bytes_sent"]), 500, "{close}");
        assert_eq!(close["complete"], false, "{close}");
    }
}

/// The local port of an outbound socket is the kernel's (read from the socket at connect), as
/// `getsockname` says: TCP and connected UDP alike.
#[test]
fn outbound_sockets_know_their_local_port() {
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    let server = net::CountingServer::start();
    let tcp = net::connected(server.port);
    let udp = net::connected_udp(net::udp_echo());
    for fd in [tcp, udp] {
        let port = u64::from(net::local_port(fd));
        let inode = net::inode_of(fd);
        // The socket backend reports a UDP connect at the socket's first use or its release
        // (the kernel binds its local port after the connect hook).
        net::close(fd);
        let connect = sw.wait_for("connect", of_inode("connect", inode));
        assert_eq!((&connect["pid"], &connect["fd"]), (&pid.into(), &fd.into()));
        assert_eq!(u(&connect["lport"]), port, "{connect}");
        let close = sw.wait_for("close", of_inode("close", inode));
        assert_eq!(u(&close["lport"]), port, "{close}");
    }
}

/// A socket whose fd was copied (`dup2`) and then closed lives on at the copy, and a new socket
/// gets the freed number. The socket backend keeps the first socket's row (moved off the
/// number, fd unknown) and ends it at its release with every byte, the server's count as the
/// oracle; the syscall backends end it at the close, marked partial. The new socket's row is
/// its own on every backend.
#[test]
fn a_socket_living_on_at_a_copy_keeps_its_row_when_its_fd_number_is_reused() {
    // Fixed, otherwise unused fd numbers: other tests' threads open fds concurrently.
    const FD: i32 = 930;
    const COPY: i32 = 931;
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let first = net::socket_at(FD);
    assert_eq!(net::connect(first, server.port), 0);
    net::sendto_all(first, 100);
    let first_inode = net::inode_of(first);
    // SAFETY: dup2 between fd numbers this test owns.
    assert_eq!(unsafe { libc::dup2(FD, COPY) }, COPY);
    net::close(FD);
    let second = net::socket_at(FD);
    assert_eq!(net::connect(second, server.port), 0);
    let second_inode = net::inode_of(second);
    net::sendto_all(second, 7);
    net::sendto_all(COPY, 200);
    net::close(second);
    assert_eq!(server.next_total(), 7, "the second connection's count");
    net::close(COPY);
    assert_eq!(server.next_total(), 300, "the first connection's count");
    let second_close = sw.wait_for("second close", of_inode("close", second_inode));
    assert_eq!(
        (&second_close["pid"], &second_close["fd"]),
        (&pid.into(), &FD.into())
    );
    assert_eq!(u(&second_close["bytes_sent"]), 7, "{second_close}");
    let first_close = sw.wait_for("first close", of_inode("close", first_inode));
    assert_eq!(first_close["pid"], pid, "{first_close}");
    if counts_every_holder(&sw) {
        assert_eq!(u(&first_close["bytes_sent"]), 300, "{first_close}");
        assert_eq!(first_close["complete"], true, "{first_close}");
        assert_eq!(first_close["fd"], Value::Null, "{first_close}");
    } else {
        assert_eq!(u(&first_close["bytes_sent"]), 100, "{first_close}");
        assert_eq!(first_close["complete"], false, "{first_close}");
    }
    ended_once(&mut sw, first_inode);
}

/// More sockets than one call of the bulk map read takes (`--read-batch`, 4,096 unless made
/// small, as here, so that an emulated guest runs the test in seconds): every refresh reads
/// every one with its byte, and none is taken for a socket whose close record was lost (a read
/// that missed entries would end them `vanished`, reads a second apart).
#[test]
fn every_socket_is_read_when_the_map_holds_more_than_a_batch() {
    const CONNECTIONS: usize = 150;
    // Rounds of samples in a row that must be complete: over 1 s at this interval.
    const ROUNDS: usize = 4;
    // Several calls for the holder's 300 sockets, each more than a hash bucket holds.
    // A map of 1,024 entries: 300 sockets to locate are past what lookups may cost (64 at
    // least, 1,024 / 32), so the refresh reads the maps whole.
    let args = ["--json-samples", "--interval", "400", "--read-batch", "64"];
    let mut sw = Sockwatch::start(&[&args[..], &["--max-sockets", "1024"]].concat());
    let connections = CONNECTIONS.to_string();
    let mut hold = Load::spawn(&["hold", "--connections", &connections, "--secs", "300"]);
    let held = hold.line(LOAD_TIMEOUT);
    assert_eq!(field(&held, "held") as usize, CONNECTIONS);
    let pid = hold.pid();
    // The oracle: the holder's own fd table, where one socket more is its listener.
    let in_proc = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the holder's fds")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|link| link.to_string_lossy().starts_with("socket:["))
        .count();
    assert_eq!(in_proc, 2 * CONNECTIONS + 1);

    // A refresh writes its samples together, under one time: a round ends when the next
    // begins. The first rounds may come before every open record has.
    let (mut round, mut time, mut complete) = (Vec::new(), Value::Null, 0);
    // Bounded: each wait is, and so is the number of rounds looked at.
    for _ in 0..(40 * 2 * CONNECTIONS) {
        let sample = sw.next_sample("sample of the holder", |r| {
            r["event"] == "sample" && r["pid"] == pid
        });
        if sample["time"] == time {
            round.push(sample);
            continue;
        }
        let full = round.len() == 2 * CONNECTIONS
            && round.iter().all(|s| {
                let (sent, recv) = (u(&s["bytes_sent"]), u(&s["bytes_recv"]));
                match s["direction"].as_str() {
                    Some("out") => (sent, recv) == (1, 0),
                    Some("in") => (sent, recv) == (0, 1),
                    _ => false,
                }
            });
        complete = if full { complete + 1 } else { 0 };
        if complete == ROUNDS {
            break;
        }
        time = sample["time"].clone();
        round = vec![sample];
    }
    assert_eq!(
        complete,
        ROUNDS,
        "never {ROUNDS} rounds in a row with all {} sockets and their bytes",
        2 * CONNECTIONS
    );
    let closed = sw.received(|r| r["event"] == "close" && r["pid"] == pid);
    assert!(closed.is_empty(), "held sockets ended: {closed:#?}");
    hold.tell("done");
    hold.wait_exit(LOAD_TIMEOUT);
}

#[test]
fn the_port_scope_chooses_which_sockets_json_reports() {
    let (wanted_listener, wanted) = net::raw_listener();
    let (other_listener, other) = net::raw_listener();
    let scope = wanted.to_string();
    let mut sw = Sockwatch::start(&["--port", &scope]);
    let pid = std::process::id();
    let outside = net::connected(other);
    net::sendto_all(outside, 100);
    let inside = net::connected(wanted);
    net::sendto_all(inside, 200);
    // The socket out of scope ends first: its records, had they been written, come before
    // the close awaited here, and `stop` returns every record not awaited.
    net::close(outside);
    net::close(inside);
    sw.wait_for("connect in scope", record_of("connect", pid, inside));
    let close = sw.wait_for("close in scope", record_of("close", pid, inside));
    assert_eq!(
        (u64_of(&close, "dport"), u64_of(&close, "bytes_sent")),
        (u64::from(wanted), 200)
    );
    net::close(wanted_listener);
    net::close(other_listener);
    let rest = sw.stop();
    assert_none_of_port(&rest, other);
}

/// No record in `records` is of a socket with `port` at either end.
fn assert_none_of_port(records: &[Value], port: u16) {
    let strays: Vec<_> = records
        .iter()
        .filter(|r| r["dport"] == port || r["lport"] == port)
        .collect();
    assert!(strays.is_empty(), "records out of scope: {strays:#?}");
}

/// The keys of process `pid` in the kernel's map of tracked sockets, sorted.
fn tracked_of(sw: &Sockwatch, pid: u32) -> Vec<(u32, u32)> {
    let mut keys: Vec<_> = sw
        .tracked_keys()
        .into_iter()
        .filter(|&(p, _)| p == pid)
        .collect();
    keys.sort_unstable();
    keys
}

/// `--port` is applied in the kernel: a socket of another port, either end, is never tracked
/// (it is not in the kernel's map), so it costs no record, entry or count.
#[test]
fn the_kernel_tracks_only_the_ports_in_scope() {
    let (wanted_listener, wanted) = net::raw_listener();
    let (other_listener, other) = net::raw_listener();
    let mut sw = Sockwatch::start(&["--port", &wanted.to_string()]);
    let pid = std::process::id();
    // Out of scope first: had it been tracked, it would be by the time the sockets in scope,
    // tracked in the same calls of the same thread, are.
    let outside = net::connected(other);
    let (outside_accepted, _) = net::accept_with_peer(other_listener);
    net::sendto_all(outside, 100);
    net::sendto_all(outside_accepted, 10);
    let inside = net::connected(wanted);
    let (inside_accepted, _) = net::accept_with_peer(wanted_listener);
    net::sendto_all(inside, 200);
    // An accepted socket is tracked at its first use on the socket backend.
    net::sendto_all(inside_accepted, 20);
    sw.wait_for("connect in scope", record_of("connect", pid, inside));
    sw.wait_for(
        "accept in scope",
        inbound_of("accept", pid, inside_accepted),
    );
    let mut expected = vec![(pid, inside as u32), (pid, inside_accepted as u32)];
    expected.sort_unstable();
    assert_eq!(
        tracked_of(&sw, pid),
        expected,
        "the kernel's map: the scope only"
    );
    for fd in [outside, outside_accepted, inside, inside_accepted] {
        net::close(fd);
    }
    sw.wait_for("close in scope", record_of("close", pid, inside));
    net::close(wanted_listener);
    net::close(other_listener);
    let rest = sw.stop();
    assert_none_of_port(&rest, other);
    let end = rest.last().expect("the end record");
    assert_eq!(u64_of(end, "connects"), 1, "{end}");
}

/// `--pid` is applied in the kernel: this process's sockets, out of scope, are never tracked.
#[test]
fn the_kernel_tracks_only_the_processes_in_scope() {
    let mut other = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep for a pid");
    let mut sw = Sockwatch::start(&["--pid", &other.id().to_string()]);
    let pid = std::process::id();
    let (listener, port) = net::raw_listener();
    let client = net::connected(port);
    let (accepted, _) = net::accept_with_peer(listener);
    net::sendto_all(client, 100);
    net::sendto_all(accepted, 10);
    // Each was tracked, if at all, within the calls above (the connect, the accept or the
    // first send): the map shows none now.
    assert_eq!(
        tracked_of(&sw, pid),
        [],
        "sockets out of --pid in the kernel's map"
    );
    for fd in [client, accepted, listener] {
        net::close(fd);
    }
    let rest = sw.stop();
    let ours: Vec<_> = rest.iter().filter(|r| r["pid"] == pid).collect();
    assert!(ours.is_empty(), "records out of scope: {ours:#?}");
    let end = rest.last().expect("the end record");
    assert_eq!(
        (u64_of(end, "connects"), u64_of(end, "open")),
        (0, 0),
        "{end}"
    );
    process::kill_and_reap(&mut other);
}

/// A TCP listener on 127.0.0.1 at a port below the range the kernel picks local ports from, so
/// that no socket connecting out gets it as its local port.
fn listener_below_ephemeral() -> (std::os::fd::RawFd, u16) {
    use std::os::fd::IntoRawFd;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("net.ipv4.ip_local_port_range");
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|low| low.parse().ok())
        .expect("its low end");
    (low.saturating_sub(3000)..low)
        .rev()
        .find_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .map(|listener| {
            let port = listener.local_addr().expect("addr").port();
            (listener.into_raw_fd(), port)
        })
        .expect("a free port below the ephemeral range")
}

/// With no port of `--port` one the kernel may pick as a local port, a connect is decided at
/// once by its remote port: a UDP socket connected to another port is never tracked (its local
/// port is bound after the connect hook, so it could not be decided later).
#[test]
fn the_kernel_decides_an_unbound_connect_by_its_remote_port() {
    let (wanted_listener, wanted) = listener_below_ephemeral();
    let (other_listener, other) = listener_below_ephemeral();
    let mut sw = Sockwatch::start(&["--port", &wanted.to_string()]);
    let pid = std::process::id();
    let outside_udp = net::connected_udp(other);
    net::sendto_all(outside_udp, 30);
    let outside = net::connected(other);
    net::sendto_all(outside, 100);
    let inside = net::connected(wanted);
    net::sendto_all(inside, 200);
    sw.wait_for("connect in scope", record_of("connect", pid, inside));
    assert_eq!(
        tracked_of(&sw, pid),
        [(pid, inside as u32)],
        "the kernel's map: the scope only"
    );
    for fd in [
        outside_udp,
        outside,
        inside,
        wanted_listener,
        other_listener,
    ] {
        net::close(fd);
    }
    let rest = sw.stop();
    assert_none_of_port(&rest, other);
}
