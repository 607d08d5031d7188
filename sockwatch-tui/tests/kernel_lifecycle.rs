//! The walking skeleton against the real kernel: load the real eBPF object (through the real
//! binary), drive real sockets on 127.0.0.1, and check the exact records.

mod support;

use std::{process::Command, thread, time::Duration};

use support::{f64_of, gettid, net, process, record_of, u64_of, Sockwatch};

#[test]
fn connect_sendto_close_are_reported_with_exact_numbers() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let tid = gettid();

    let fd = net::connected(server.port);
    net::sendto_all(fd, 1000);
    net::sendto_all(fd, 234);
    // The kernel's own count for this socket must agree with what we sent.
    assert_eq!(
        net::ss_bytes_sent(net::local_port(fd), 1234),
        Some(1234),
        "ss -tin bytes_sent"
    );
    net::close(fd);
    assert_eq!(server.next_total(), 1234);

    let connect = sw.wait_for("connect", record_of("connect", pid, fd));
    assert_eq!(connect["result"], "ok");
    assert_eq!(connect["tid"], tid);
    assert_eq!(connect["daddr"], "127.0.0.1");
    assert_eq!(connect["dport"], server.port);
    assert_eq!(connect["bytes_sent"], 0);
    assert!(connect["comm"].as_str().is_some_and(|c| !c.is_empty()));

    let close = sw.wait_for("close", record_of("close", pid, fd));
    assert_eq!(close["bytes_sent"], 1234);
    assert_eq!(close["dport"], server.port);
    assert_eq!(close["daddr"], "127.0.0.1");
    assert_eq!(close["tid"], tid);
    assert_eq!(close["connect_tid"], tid);
    let lifetime_ns = u64_of(&close, "lifetime_ns");
    assert!(lifetime_ns > 0, "{close}");
    let (connect_time, close_time) = (f64_of(&connect, "time"), f64_of(&close, "time"));
    assert!(
        close_time >= connect_time,
        "close before connect: {close_time} < {connect_time}"
    );
    // Both times and the lifetime come from the same kernel timestamps: they agree to the
    // precision of an f64 of Unix seconds (about 0.24 µs now).
    let between_ns = (close_time - connect_time) * 1e9;
    assert!(
        (between_ns - lifetime_ns as f64).abs() < 2_000.0,
        "close time - connect time = {between_ns} ns, lifetime_ns = {lifetime_ns}"
    );
}

/// Each socket is named by the kernel's own identity, its inode: the one /proc shows for the
/// fd (`socket:[N]`), on the connecting side and the accepting side, from connect to close.
#[test]
fn sockets_carry_the_inode_proc_shows_for_their_fd() {
    let mut sw = Sockwatch::start(&["--direction", "both"]);
    let pid = std::process::id();
    let (listener, port) = net::raw_listener();
    let client = net::connected(port);
    let (accepted, _) = net::accept_with_peer(listener);
    let (client_inode, accepted_inode) = (net::inode_of(client), net::inode_of(accepted));
    assert_ne!(client_inode, accepted_inode);
    let connect = sw.wait_for("connect", record_of("connect", pid, client));
    assert_eq!(u64_of(&connect, "inode"), client_inode, "{connect}");
    for fd in [client, accepted, listener] {
        net::close(fd);
    }
    // Found by the inode /proc showed: the socket backend sees an accepted socket never used
    // only at its release, when its fd is gone.
    let accept = sw.wait_for("accept", |r| {
        r["event"] == "accept" && r["inode"] == accepted_inode
    });
    assert_eq!(
        (&accept["pid"], &accept["direction"]),
        (&pid.into(), &"in".into())
    );
    let close = sw.wait_for("close", record_of("close", pid, client));
    assert_eq!(u64_of(&close, "inode"), client_inode, "{close}");
}

/// The kernel's own per-socket count (`ss -tin`, tcp_info) is an independent oracle.
#[test]
fn sent_bytes_equal_the_kernels_own_count_in_ss() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let fd = net::connected(server.port);
    net::sendto_all(fd, 70_000);
    let kernel_count = net::ss_bytes_sent(net::local_port(fd), 70_000);
    net::close(fd);
    assert_eq!(server.next_total(), 70_000);
    let close = sw.wait_for("close", record_of("close", pid, fd));
    assert_eq!(
        Some(close["bytes_sent"].as_u64().expect("a number")),
        kernel_count
    );
    assert_eq!(kernel_count, Some(70_000));
}

#[test]
fn refused_connect_is_reported_and_not_tracked() {
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    let port = net::closed_port();
    let fd = net::tcp_socket(0);
    assert_eq!(net::connect(fd, port), libc::ECONNREFUSED);
    net::close(fd);

    let connect = sw.wait_for("refused connect", record_of("connect", pid, fd));
    assert_eq!(connect["result"], "ECONNREFUSED");
    assert_eq!(connect["dport"], port);

    // A tracked socket closed afterwards is a barrier: once its close is seen, a close of the
    // refused socket (which must not be tracked) would have been seen too.
    let server = net::CountingServer::start();
    let barrier = net::connected(server.port);
    net::close(barrier);
    sw.wait_for("barrier close", record_of("close", pid, barrier));
    let refused_closes: Vec<_> =
        sw.received(|r| r["event"] == "close" && r["pid"] == pid && r["dport"] == port);
    assert!(
        refused_closes.is_empty(),
        "untracked close reported: {refused_closes:?}"
    );
}

#[test]
fn non_blocking_connect_is_tracked_as_in_progress() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();
    let fd = net::tcp_socket(libc::SOCK_NONBLOCK);
    assert_eq!(net::connect(fd, server.port), libc::EINPROGRESS);
    net::wait_writable(fd);
    net::sendto_all(fd, 5);
    // Asking connect() again whether it completed says 0 once: the same socket, not a new one.
    assert_eq!(net::connect(fd, server.port), 0);
    net::sendto_all(fd, 10);
    net::close(fd);
    assert_eq!(server.next_total(), 15);

    let connect = sw.wait_for("connect", record_of("connect", pid, fd));
    assert_eq!(connect["result"], "in_progress");
    let close = sw.wait_for("close", record_of("close", pid, fd));
    assert_eq!(close["bytes_sent"], 15, "{close}");
    let more = sw.received(record_of("connect", pid, fd));
    assert!(more.is_empty(), "one socket, one connect record: {more:?}");
}

#[test]
fn a_reused_fd_starts_from_zero() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();

    // Other tests' threads open fds concurrently, so "the lowest free fd" is not ours to rely
    // on: both sockets are moved to one fixed, otherwise unused fd number before connecting.
    const FD: i32 = 900;
    let first = net::socket_at(FD);
    assert_eq!(net::connect(first, server.port), 0);
    net::sendto_all(first, 5);
    net::close(first);
    let first_close = sw.wait_for("first close", record_of("close", pid, FD));
    assert_eq!(first_close["bytes_sent"], 5);

    let second = net::socket_at(FD);
    assert_eq!(net::connect(second, server.port), 0);
    net::sendto_all(second, 7);
    net::close(second);
    let second_close = sw.wait_for("second close", record_of("close", pid, FD));
    assert_eq!(second_close["bytes_sent"], 7);
    let connects = sw.received(record_of("connect", pid, FD));
    assert_eq!(connects.len(), 2, "two sockets on one fd: {connects:?}");
}

#[test]
fn bytes_from_several_threads_add_up_on_one_socket() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::CountingServer::start();
    let pid = std::process::id();

    // Connected by one thread, written by two others, closed by this one.
    let (fd, connect_tid) = thread::spawn(move || (net::connected(server.port), gettid()))
        .join()
        .expect("connecting thread");
    let writers: Vec<_> = [300usize, 400]
        .into_iter()
        .map(|len| thread::spawn(move || net::sendto_all(fd, len)))
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    // The server's accept first: an accept that took this fd's number between the close's
    // entry and its exit would end the socket early, with its connecting thread as closer
    // (the kernel side's answer to that race, `state::track`), which is not what this checks.
    let client_port = net::local_port(fd);
    sw.wait_for("the server's accept", |r| {
        r["event"] == "accept" && r["pid"] == pid && r["dport"] == client_port
    });
    net::close(fd);

    let connect = sw.wait_for("connect", record_of("connect", pid, fd));
    assert_eq!(connect["tid"], connect_tid);
    let close = sw.wait_for("close", record_of("close", pid, fd));
    assert_eq!(close["bytes_sent"], 700);
    assert_eq!(close["connect_tid"], connect_tid);
    assert_eq!(close["tid"], gettid());
}

/// The brief's own check: curl against a local server, seen with the right port and bytes.
#[test]
fn curl_against_a_local_server_is_seen() {
    let mut sw = Sockwatch::start(&[]);
    let server = net::HttpServer::start();
    let output = process::output_within(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{}/", server.port)),
        process::COMMAND_TIMEOUT,
        "curl (installed by cargo xtask setup)",
    );
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let request_bytes = server.request_bytes();

    let is_curl = |r: &serde_json::Value| r["comm"] == "curl" && r["dport"] == server.port;
    let connect = sw.wait_for("curl connect", |r| r["event"] == "connect" && is_curl(r));
    // curl connects non-blocking.
    assert_eq!(connect["result"], "in_progress");
    let close = sw.wait_for("curl close", |r| r["event"] == "close" && is_curl(r));
    assert_eq!(close["fd"], connect["fd"]);
    assert_eq!(close["pid"], connect["pid"]);
    assert_eq!(
        close["bytes_sent"], request_bytes,
        "curl's request, byte for byte"
    );
    assert!(request_bytes > 0);
}

#[test]
fn duration_ends_the_run_by_itself() {
    const DURATION: Duration = Duration::from_millis(1000);
    let mut sw = Sockwatch::start(&["--duration", &DURATION.as_secs_f64().to_string()]);
    // Bounded well above the duration: a run that ignores --duration fails here.
    let status = sw.wait_exit(DURATION + Duration::from_secs(10));
    let spawn_to_exit = sw.spawned.elapsed();
    assert!(status.success(), "exit status {status}");
    // The deadline starts after the spawn, so an honest run cannot end sooner than this.
    assert!(
        spawn_to_exit >= DURATION,
        "exited {spawn_to_exit:?} after the spawn, before --duration {DURATION:?}"
    );
    // The run itself, not the loading before it, lasted the duration: from the start record
    // (printed once the probes are attached; its time is read just before the deadline is
    // set) to the end record (written once it fired). 1 ms covers the rounding of two
    // Unix times in seconds as f64, not a deadline that fired early.
    let end = sw.wait_for("end", |r| r["event"] == "end");
    let run_secs = f64_of(&end, "time") - f64_of(&sw.start, "time");
    assert!(
        run_secs >= DURATION.as_secs_f64() - 0.001,
        "start to end took {run_secs} s, less than --duration {DURATION:?}"
    );
    assert!(
        run_secs < DURATION.as_secs_f64() + 5.0,
        "start to end took {run_secs} s for --duration {DURATION:?}"
    );
}

/// The ring buffer is read where the kernel writes it, its data mapped once: a record that runs
/// past the end of the ring continues at its start and is put together from the two parts. A
/// ring of one page (4 KiB, 28 records and a bit) has such a record nearly every lap, split at a
/// different place each time; each connection's records arrive whole, with exact counts.
#[test]
fn records_that_wrap_past_the_end_of_a_one_page_ring_arrive_whole() {
    let pid = std::process::id();
    // Only this process's sockets, so nothing else on the machine fills the small ring; each
    // connection's records are awaited before the next, so it never holds more than a few.
    let mut sw = Sockwatch::start(&["--ring-kib", "4", "--pid", &pid.to_string()]);
    let server = net::CountingServer::start();
    // Four records a connection (connect, accept, two closes) of 144 bytes with their
    // headers: 60 connections go round the ring eight times and more.
    for i in 0..60 {
        let len = 100 + i;
        let fd = net::connected(server.port);
        net::sendto_all(fd, len);
        net::close(fd);
        assert_eq!(server.next_total(), len as u64);
        let connect = sw.wait_for("connect", record_of("connect", pid, fd));
        assert_eq!(connect["dport"], server.port, "{connect}");
        let close = sw.wait_for("close", record_of("close", pid, fd));
        assert_eq!(close["bytes_sent"], len, "connection {i}: {close}");
        let lport = u64_of(&close, "lport");
        let accepted = |r: &serde_json::Value| {
            r["event"] == "close" && r["direction"] == "in" && r["dport"] == lport
        };
        let accepted = sw.wait_for("the accepted socket's close", accepted);
        assert_eq!(accepted["bytes_recv"], len, "connection {i}: {accepted}");
    }
    let records = sw.stop();
    let end = records.iter().find(|r| r["event"] == "end").expect("end");
    assert_eq!(end["lost"], 0, "{end}");
}
