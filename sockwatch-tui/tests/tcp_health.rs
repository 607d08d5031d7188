//! TCP health against the kernel's own word: each test runs in a network namespace of its own
//! with the fault injector on its loopback (`support::netns`), while sockwatch watches from the
//! machine's namespace. The oracle is `ss -ti`, read in the test's namespace.

mod support;

use std::{
    mem::size_of,
    os::fd::RawFd,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{inbound_of, net, netns, process, record_of, u64_of, Sockwatch, SAMPLED};

/// How long the kernel may take to settle (all data acknowledged, buffers full).
const SETTLE: Duration = Duration::from_secs(20);

/// What `ss -tin` says of the connection from local port `sport` (in this namespace).
#[derive(Debug, Default, PartialEq)]
struct Ss {
    state: String,
    recv_q: u64,
    send_q: u64,
    /// The second number of `retrans:a/b`: retransmitted over the socket's life.
    retrans: u64,
    rtt_us: f64,
    rttvar_us: f64,
    /// `timer:(persist,...)`: the zero-window probe timer runs.
    persist: bool,
}

fn ss(sport: u16) -> Option<Ss> {
    let out = process::output_within(
        Command::new("ss").args(["-tinoH", "src", &format!("127.0.0.1:{sport}")]),
        process::COMMAND_TIMEOUT,
        "ss -tinoH",
    );
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    // State, Recv-Q, Send-Q, local, peer, then the timer and tcp_info.
    if words.len() < 5 {
        return None;
    }
    let number = |word: &str| word.parse::<u64>().unwrap_or(0);
    let field = |name: &str| words.iter().find_map(|w| w.strip_prefix(name));
    let (rtt, rttvar) = field("rtt:")
        .and_then(|v| v.split_once('/'))
        .map(|(a, b)| {
            (
                a.parse::<f64>().unwrap_or(0.0),
                b.parse::<f64>().unwrap_or(0.0),
            )
        })
        .unwrap_or_default();
    Some(Ss {
        state: words[0].to_owned(),
        recv_q: number(words[1]),
        send_q: number(words[2]),
        retrans: field("retrans:")
            .and_then(|v| v.split_once('/'))
            .map_or(0, |(_, total)| number(total)),
        rtt_us: rtt * 1000.0,
        rttvar_us: rttvar * 1000.0,
        persist: text.contains("timer:(persist"),
    })
}

/// Polls `ss` until `done` holds of the connection from `sport` (bounded by [`SETTLE`]).
fn ss_until(sport: u16, what: &str, done: impl Fn(&Ss) -> bool) -> Ss {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = ss(sport);
        match now {
            Some(now) if done(&now) => return now,
            _ if Instant::now() > deadline => {
                panic!("ss never showed {what} for :{sport} within {SETTLE:?}: {now:?}")
            }
            // The kernel's state, not an event anything can wait on: poll it.
            _ => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn sample_of(pid: u32, fd: RawFd, inbound: bool) -> impl Fn(&Value) -> bool {
    let out = record_of("sample", pid, fd);
    let in_ = inbound_of("sample", pid, fd);
    move |r| if inbound { in_(r) } else { out(r) }
}

/// Segments dropped on the way make the sender retransmit: the count sockwatch shows is the
/// kernel's (`ss -ti` at the same moment), as are the local port and the RTT (within ss's own
/// rttvar); the close carries the last reading.
#[test]
fn retransmits_rtt_and_local_port_agree_with_ss() {
    if !netns::run_in_new_netns("retransmits_rtt_and_local_port_agree_with_ss") {
        return;
    }
    netns::loopback_up();
    let mut fault = netns::Fault::attach();
    let server = net::CountingServer::start();
    fault.drop_every(7, server.port);
    let mut sw = Sockwatch::start_outside_netns(&SAMPLED);
    let pid = std::process::id();

    let fd = net::connected(server.port);
    let lport = net::local_port(fd);
    let total = 4 << 20;
    net::sendto_all(fd, total);
    // Everything acknowledged: the count is final until more is sent.
    let settled = ss_until(lport, "all data acknowledged", |s| s.send_q == 0);
    let (seen, dropped) = fault.counts();
    assert!(
        dropped > 0,
        "the fault injector dropped nothing ({seen} seen)"
    );
    assert!(settled.retrans > 0, "no retransmission: {settled:?}");

    // A reading taken once all was acknowledged: health is read no more often than keeps it
    // under 2% of a core, so a sample may carry one from before the last ACK (its retransmit
    // count already final, its Send-Q not yet empty).
    let sample = sw.wait_for("a sample with the settled retransmit count", move |r| {
        sample_of(pid, fd, false)(r) && r["retrans"] == settled.retrans && r["send_q"] == 0
    });
    let now = ss(lport).expect("still connected");
    assert_eq!(
        u64_of(&sample, "retrans"),
        now.retrans,
        "{sample} vs ss {now:?}"
    );
    assert_eq!(u64_of(&sample, "lport"), u64::from(lport), "{sample}");
    let rtt = u64_of(&sample, "rtt_us") as f64;
    assert!(
        (rtt - now.rtt_us).abs() <= now.rttvar_us.max(1.0),
        "rtt {rtt} us vs ss {now:?}"
    );
    assert_eq!(u64_of(&sample, "send_q"), 0, "{sample}");
    assert_eq!(sample["proto"], "tcp", "{sample}");

    net::close(fd);
    assert_eq!(server.next_total(), total as u64);
    let close = sw.wait_for("close", record_of("close", pid, fd));
    assert_eq!(u64_of(&close, "bytes_sent"), total as u64, "{close}");
    assert_eq!(u64_of(&close, "retrans"), settled.retrans, "{close}");
    assert_eq!(u64_of(&close, "lport"), u64::from(lport), "{close}");
}

/// A server that stops reading: its socket's Recv-Q fills (as ss says) and reads "app not
/// reading"; the client, facing a zero window, reads "peer not reading".
#[test]
fn a_server_that_stops_reading_stalls_both_ends() {
    if !netns::run_in_new_netns("a_server_that_stops_reading_stalls_both_ends") {
        return;
    }
    netns::loopback_up();
    let (listener, port) = net::raw_listener();
    let mut sw = Sockwatch::start_outside_netns(&SAMPLED);
    let pid = std::process::id();

    let client = net::connected(port);
    let (server, _) = net::accept_with_peer(listener);
    let lport = net::local_port(client);
    // One exchange, so the server's socket has been used (the socket backend tracks an
    // accepted socket from its first use); then the server stops reading.
    net::sendto_all(client, 1);
    let mut byte = [0u8; 1];
    // SAFETY: a one-byte buffer for a blocking read bounded by SO_RCVTIMEO.
    assert_eq!(
        unsafe { libc::read(server, byte.as_mut_ptr().cast(), 1) },
        1
    );
    fill_until_blocked(client);

    let client_ss = ss_until(lport, "the zero-window probe timer", |s| s.persist);
    let server_ss = ss_until(port, "a full Recv-Q", |s| s.recv_q > 0);
    // The queue may still be filling on a slow machine: the reading that counts is one that ss
    // confirms right after it (the queue, once full, stays as it is).
    let deadline = Instant::now() + SETTLE;
    loop {
        let stalled = sw.wait_for("the server's app-stall", move |r| {
            sample_of(pid, server, true)(r) && r["health"] == "app"
        });
        let now = ss(port).expect("server side");
        if u64_of(&stalled, "recv_q") == now.recv_q {
            assert!(now.recv_q > 0, "{stalled} vs ss {now:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Recv-Q never agreed with ss: {stalled} vs ss {now:?} (first {server_ss:?})"
        );
    }
    let peer = sw.wait_for("the client's peer-stall", move |r| {
        sample_of(pid, client, false)(r) && r["health"] == "peer"
    });
    assert!(u64_of(&peer, "send_q") > 0, "{peer} vs ss {client_ss:?}");
    for fd in [client, server, listener] {
        net::close(fd);
    }
}

/// Writes without blocking until the kernel takes no more (both buffers full).
fn fill_until_blocked(fd: RawFd) {
    // SAFETY: fcntl on our own fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let chunk = vec![b'x'; 65536];
    let deadline = Instant::now() + SETTLE;
    loop {
        // SAFETY: `chunk` is readable for its length.
        let n = unsafe { libc::send(fd, chunk.as_ptr().cast(), chunk.len(), 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EAGAIN) {
                return;
            }
            panic!("send: {error}");
        }
        assert!(Instant::now() < deadline, "the buffers never filled");
    }
}

/// Aborts `fd` (SO_LINGER with no time): its close sends a reset, not a FIN.
fn abort(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid linger of the right size, on our own socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    net::close(fd);
}

/// Who ended each connection: a peer's reset reads `reset_received` (with ECONNRESET), a
/// peer's FIN `peer` on that side and `local` on the peer's.
#[test]
fn who_ended_a_connection_is_the_kernels_word() {
    if !netns::run_in_new_netns("who_ended_a_connection_is_the_kernels_word") {
        return;
    }
    netns::loopback_up();
    let (listener, port) = net::raw_listener();
    let mut sw = Sockwatch::start_outside_netns(&[]);
    let pid = std::process::id();

    // The server resets the connection: the client's end reads it.
    let client = net::connected(port);
    let (server, _) = net::accept_with_peer(listener);
    net::sendto_all(client, 10);
    abort(server);
    net::wait_readable(client);
    net::close(client);
    let reset = sw.wait_for("the reset client's close", record_of("close", pid, client));
    assert_eq!(reset["closed_by"], "reset_received", "{reset}");
    assert_eq!(reset["error"], "ECONNRESET", "{reset}");
    assert!(u64_of(&reset, "connect_us") > 0, "{reset}");

    // The server closes first (FIN): the client's end reads `peer`, the server's `local`.
    let client = net::connected(port);
    let (server, _) = net::accept_with_peer(listener);
    net::sendto_all(client, 10);
    let mut buffer = [0u8; 10];
    // SAFETY: a buffer of its length, a blocking read bounded by SO_RCVTIMEO.
    assert_eq!(
        unsafe { libc::read(server, buffer.as_mut_ptr().cast(), 10) },
        10
    );
    // The aborted server socket had the same fd number: this one is told by its inode.
    let server_inode = net::inode_of(server);
    net::close(server);
    net::wait_readable(client);
    net::close(client);
    let peer = sw.wait_for("the client's close", record_of("close", pid, client));
    assert_eq!(peer["closed_by"], "peer", "{peer}");
    assert_eq!(peer["error"], Value::Null, "{peer}");
    let local = sw.wait_for("the server's close", move |r| {
        inbound_of("close", pid, server)(r) && r["inode"] == server_inode
    });
    assert_eq!(local["closed_by"], "local", "{local}");
    net::close(listener);
}

/// A blocking connect, a non-blocking one and curl, each to a closed port: each reads
/// ECONNREFUSED with how long the attempt took (the blocking one in its connect record, the
/// others at their close), and the run counts three failed connects.
#[test]
fn connects_to_a_closed_port_fail_with_their_errno_and_latency() {
    if !netns::run_in_new_netns("connects_to_a_closed_port_fail_with_their_errno_and_latency") {
        return;
    }
    netns::loopback_up();
    let port = net::closed_port();
    let mut sw = Sockwatch::start_outside_netns(&[]);
    let pid = std::process::id();

    let blocking = net::tcp_socket(0);
    assert_eq!(net::connect(blocking, port), libc::ECONNREFUSED);
    let refused = sw.wait_for("the blocking connect", record_of("connect", pid, blocking));
    assert_eq!(refused["result"], "ECONNREFUSED", "{refused}");
    assert!(u64_of(&refused, "connect_us") > 0, "{refused}");
    net::close(blocking);

    let nonblocking = net::tcp_socket(libc::SOCK_NONBLOCK);
    assert_eq!(net::connect(nonblocking, port), libc::EINPROGRESS);
    net::wait_writable(nonblocking);
    net::close(nonblocking);
    let started = sw.wait_for(
        "the non-blocking connect",
        record_of("connect", pid, nonblocking),
    );
    assert_eq!(started["result"], "in_progress", "{started}");
    let failed = sw.wait_for("its close", record_of("close", pid, nonblocking));
    assert_eq!(
        (&failed["closed_by"], &failed["error"]),
        (&"failed".into(), &"ECONNREFUSED".into()),
        "{failed}"
    );
    assert!(u64_of(&failed, "connect_us") > 0, "{failed}");

    let curl = process::output_within(
        Command::new("curl").args(["-s", &format!("http://127.0.0.1:{port}/")]),
        process::COMMAND_TIMEOUT,
        "curl",
    );
    // curl's own word: exit code 7, "failed to connect".
    assert_eq!(curl.status.code(), Some(7), "{curl:?}");
    let curl_close = sw.wait_for("curl's close", |r| {
        r["event"] == "close" && r["comm"] == "curl" && r["dport"] == port
    });
    assert_eq!(curl_close["error"], "ECONNREFUSED", "{curl_close}");
    assert!(u64_of(&curl_close, "connect_us") > 0, "{curl_close}");

    // No route (this namespace has only its loopback): the connect fails before any packet.
    // The syscall backends see its errno in its connect record; the socket backend, which
    // hooks no syscall, sees a connect that never sent its SYN, failed at its close.
    let unroutable = net::tcp_socket(0);
    let nowhere = std::net::SocketAddrV4::new([10, 9, 9, 9].into(), 80);
    assert_eq!(net::connect_to(unroutable, nowhere), libc::ENETUNREACH);
    net::close(unroutable);
    if sw.start["probe"] == "socket" {
        let close = sw.wait_for("the unroutable close", record_of("close", pid, unroutable));
        assert_eq!(
            (&close["closed_by"], &close["error"]),
            (&"failed".into(), &Value::Null),
            "{close}"
        );
    } else {
        let connect = sw.wait_for(
            "the unroutable connect",
            record_of("connect", pid, unroutable),
        );
        assert_eq!(connect["result"], "ENETUNREACH", "{connect}");
    }

    // Each attempt is told once: no other record of a failure to those ports.
    let records = sw.stop();
    let failures: Vec<&Value> = records
        .iter()
        .filter(|r| r["dport"] == port || (r["dport"] == 80 && r["daddr"] == "10.9.9.9"))
        .filter(|r| {
            r["closed_by"] == "failed"
                || (r["event"] == "connect"
                    && !matches!(r["result"].as_str(), Some("ok" | "in_progress")))
        })
        .collect();
    assert!(failures.is_empty(), "told twice: {failures:#?}");
    let end = records
        .iter()
        .find(|r| r["event"] == "end")
        .expect("an end record");
    assert!(
        u64_of(end, "failed_connects") >= 4,
        "four connects failed: {end}"
    );
}

/// A connect this end gives up on while its SYN goes unanswered (the listener's queue is full,
/// so the kernel drops the SYN) is no failure: its close reads `local`, without an error, and
/// while it connects its row has no health mark.
#[test]
fn a_connect_given_up_while_under_way_is_not_a_failure() {
    if !netns::run_in_new_netns("a_connect_given_up_while_under_way_is_not_a_failure") {
        return;
    }
    netns::loopback_up();
    let listener = net::tcp_socket(0);
    let port = {
        let (bound, port) = net::raw_listener();
        net::close(bound);
        port
    };
    let address = net::sockaddr_of(std::net::SocketAddrV4::new([127, 0, 0, 1].into(), port));
    // SAFETY: a sockaddr_in of the right size for our own socket; a backlog of 0 queues one
    // connection.
    unsafe {
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(listener, (&raw const address).cast(), len), 0);
        assert_eq!(libc::listen(listener, 0), 0);
    }
    let mut sw = Sockwatch::start_outside_netns(&SAMPLED);
    let pid = std::process::id();

    let queued = net::connected(port);
    let waiting = net::tcp_socket(libc::SOCK_NONBLOCK);
    assert_eq!(net::connect(waiting, port), libc::EINPROGRESS);
    let lport = net::local_port(waiting);
    ss_until(lport, "SYN-SENT", |s| s.state == "SYN-SENT");
    // A reading after its SYN was sent again (1 s on): retransmitting, still no health mark.
    let sample = sw.wait_for("a reading of the connecting socket", move |r| {
        sample_of(pid, waiting, false)(r) && r["retrans"].as_u64().is_some_and(|n| n >= 1)
    });
    assert_eq!(sample["health"], Value::Null, "{sample}");
    net::close(waiting);
    let close = sw.wait_for("its close", record_of("close", pid, waiting));
    assert_eq!(
        (&close["closed_by"], &close["error"]),
        (&"local".into(), &Value::Null),
        "{close}"
    );
    let connect = sw.wait_for("its connect", record_of("connect", pid, waiting));
    assert_eq!(connect["result"], "in_progress", "{connect}");
    for fd in [queued, listener] {
        net::close(fd);
    }
}
