//! IPv6 against the real kernel, on every backend: a connect to [::1] counted exactly both ways
//! (as `ss -tin` counts it), an accept on [::] from ::1, connected UDP over ::1, and `-4`/`-6`.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;
use support::{
    inbound_of,
    io::{recv_exact, send_all, Receiver, Sender},
    net, record_of, u64_of, Sockwatch, SAMPLED,
};

#[test]
fn a_connect_to_ipv6_loopback_counts_exactly_both_ways_as_ss_does() {
    let mut sw = Sockwatch::start(&SAMPLED);
    let pid = std::process::id();
    let greeting = 48_123;
    let server = net::CountingServer::on("[::1]:0", greeting);
    let (fd, errno) = net::connect6(Ipv6Addr::LOCALHOST, server.port);
    assert_eq!(errno, 0, "connect to [::1]:{}", server.port);
    let lport = net::local_addr(fd).port();
    let sent = 200_017;
    send_all(fd, sent, Sender::Write);
    recv_exact(fd, greeting, Receiver::Recv);

    let connect = sw.wait_for("connect to ::1", record_of("connect", pid, fd));
    assert_eq!(
        (
            connect["daddr"].as_str(),
            &connect["family"],
            connect["proto"].as_str()
        ),
        (Some("::1"), &Value::from(6), Some("tcp")),
        "{connect}"
    );
    assert_eq!(u64_of(&connect, "dport"), u64::from(server.port));

    // The kernel's own counts of the connection, and a live sample that agrees with them.
    let (ss_sent, ss_recv) = net::ss_counters_settled_from(&format!("[::1]:{lport}"), sent as u64)
        .expect("ss lists the connection from [::1]");
    assert_eq!((ss_sent, ss_recv), (sent as u64, greeting as u64));
    let sample = sw.wait_for("a sample with every byte", move |r| {
        record_of("sample", pid, fd)(r)
            && r["bytes_sent"] == sent
            && r["bytes_recv"] == greeting
            && r["rtt_us"].is_u64()
    });
    assert_eq!(
        (u64_of(&sample, "lport"), sample["daddr"].as_str()),
        (u64::from(lport), Some("::1")),
        "{sample}"
    );

    net::close(fd);
    assert_eq!(server.next_total(), sent as u64, "the server's own count");
    let close = sw.wait_for("close of the ::1 socket", record_of("close", pid, fd));
    assert_eq!(
        (u64_of(&close, "bytes_sent"), u64_of(&close, "bytes_recv")),
        (ss_sent, ss_recv),
        "{close}"
    );
    assert_eq!(
        (close["daddr"].as_str(), &close["family"]),
        (Some("::1"), &Value::from(6))
    );
}

#[test]
fn an_accept_on_the_ipv6_any_address_from_ipv6_loopback_is_an_inbound_row() {
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    // `[::]`: dual-stack, as Node, Go and Java servers listen by default.
    let (listener, port) = net::raw_listener6("[::]:0");

    // accept() with an address buffer: the peer comes from it on the syscall backends.
    let (client, errno) = net::connect6(Ipv6Addr::LOCALHOST, port);
    assert_eq!(errno, 0, "connect to [::1]:{port}");
    let (inbound, peer) = net::accept6_with_peer(listener);
    assert_eq!(peer.port(), net::local_addr(client).port());
    send_all(client, 5_000, Sender::Send);
    recv_exact(inbound, 5_000, Receiver::Read);
    send_all(inbound, 3_000, Sender::Write);
    recv_exact(client, 3_000, Receiver::Recv);
    let accept = sw.wait_for("accept from ::1", inbound_of("accept", pid, inbound));
    assert_eq!(
        (
            accept["daddr"].as_str(),
            u64_of(&accept, "dport"),
            u64_of(&accept, "lport"),
            &accept["family"]
        ),
        (
            Some("::1"),
            u64::from(peer.port()),
            u64::from(port),
            &Value::from(6)
        ),
        "{accept}"
    );
    net::close(inbound);
    let close = sw.wait_for(
        "close of the accepted socket",
        inbound_of("close", pid, inbound),
    );
    assert_eq!(
        (u64_of(&close, "bytes_recv"), u64_of(&close, "bytes_sent")),
        (5_000, 3_000),
        "{close}"
    );
    net::close(client);

    // accept4() without one: the peer comes from /proc's tcp6 table (or, on the socket
    // backend, from the socket itself at its first use).
    let (client, errno) = net::connect6(Ipv6Addr::LOCALHOST, port);
    assert_eq!(errno, 0, "connect to [::1]:{port}");
    let inbound = net::accept4_without_peer(listener);
    send_all(client, 700, Sender::Write);
    recv_exact(inbound, 700, Receiver::Recv);
    let accept = sw.wait_for("accept4 from ::1", inbound_of("accept", pid, inbound));
    assert_eq!(
        (accept["daddr"].as_str(), u64_of(&accept, "dport")),
        (Some("::1"), u64::from(net::local_addr(client).port())),
        "{accept}"
    );
    net::close(inbound);
    let close = sw.wait_for(
        "close of accept4's socket",
        inbound_of("close", pid, inbound),
    );
    assert_eq!(u64_of(&close, "bytes_recv"), 700, "{close}");
    net::close(client);
    net::close(listener);
}

#[test]
fn connected_udp_over_ipv6_loopback_is_tracked_as_udp() {
    let mut sw = Sockwatch::start(&[]);
    let pid = std::process::id();
    let port = net::udp_echo_on("[::1]:0");
    let fd = net::connected_udp6(port);
    for len in [100, 200, 300] {
        send_all(fd, len, Sender::Send);
        recv_exact(fd, len, Receiver::Recv);
    }
    let connect = sw.wait_for("udp connect to ::1", record_of("connect", pid, fd));
    assert_eq!(
        (
            connect["proto"].as_str(),
            connect["daddr"].as_str(),
            u64_of(&connect, "dport")
        ),
        (Some("udp"), Some("::1"), u64::from(port)),
        "{connect}"
    );
    net::close(fd);
    let close = sw.wait_for("udp close", record_of("close", pid, fd));
    assert_eq!(
        (u64_of(&close, "bytes_sent"), u64_of(&close, "bytes_recv")),
        (600, 600),
        "{close}"
    );
    assert_eq!(
        (close["proto"].as_str(), &close["family"]),
        (Some("udp"), &Value::from(6))
    );
}

/// `-4` and `-6`, like `ss`: only that family (an IPv4-mapped peer is IPv4, as it is shown).
#[test]
fn dash_4_hides_ipv6_sockets_and_dash_6_shows_only_them() {
    let pid = std::process::id();
    let v4 = net::CountingServer::start();
    let v6 = net::CountingServer::on("[::1]:0", 0);
    let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
    for (flag, family) in [("-4", 4), ("-6", 6)] {
        let mut sw = Sockwatch::start(&[flag]);
        // Open at once, so each has its own fd number.
        let plain = net::connected(v4.port);
        let (dual, errno) = net::connect6(mapped, v4.port);
        assert_eq!(errno, 0, "connect to [{mapped}]:{}", v4.port);
        let (ipv6, errno) = net::connect6(Ipv6Addr::LOCALHOST, v6.port);
        assert_eq!(errno, 0, "connect to [::1]:{}", v6.port);
        let sockets = [(plain, 4, 10), (dual, 4, 20), (ipv6, 6, 30)];
        for (fd, _, len) in sockets {
            send_all(fd, len, Sender::Write);
        }
        // Barrier: a later close of the family shown arriving means every earlier one would
        // have arrived before it. Opened first, so its fd number is its own.
        let barrier = if family == 4 {
            net::connected(v4.port)
        } else {
            net::connect6(Ipv6Addr::LOCALHOST, v6.port).0
        };
        for (fd, _, _) in sockets {
            net::close(fd);
        }
        net::close(barrier);
        sw.wait_for("barrier", record_of("close", pid, barrier));
        for (fd, socket_family, len) in sockets {
            let records = sw.received(record_of("close", pid, fd));
            if socket_family == family {
                assert_eq!(records.len(), 1, "{flag}: fd {fd}: {records:?}");
                assert_eq!(u64_of(&records[0], "bytes_sent"), len as u64, "{flag}");
                let daddr: IpAddr = records[0]["daddr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("an address");
                assert_eq!(
                    daddr,
                    if family == 4 {
                        IpAddr::V4(Ipv4Addr::LOCALHOST)
                    } else {
                        IpAddr::V6(Ipv6Addr::LOCALHOST)
                    }
                );
            } else {
                assert!(records.is_empty(), "{flag} showed fd {fd}: {records:?}");
            }
        }
        let other = sw.received(|r| r["pid"] == pid && r["family"].as_u64() != Some(family));
        let other: Vec<&Value> = other.iter().filter(|r| !r["family"].is_null()).collect();
        assert!(other.is_empty(), "{flag} let through {other:?}");
    }
}

/// An IPv6 connection open before sockwatch started is found in /proc's tcp6 table and counted
/// from then on, as an IPv4 one is.
#[test]
fn an_ipv6_connection_older_than_sockwatch_is_picked_up_and_counted_from_then() {
    let server = net::CountingServer::on("[::1]:0", 0);
    let pid = std::process::id();
    let (fd, errno) = net::connect6(Ipv6Addr::LOCALHOST, server.port);
    assert_eq!(errno, 0, "connect to [::1]:{}", server.port);
    send_all(fd, 999, Sender::Write);
    let mut sw = Sockwatch::start_adopting(&[]);
    let existing = sw.wait_for("existing", record_of("existing", pid, fd));
    assert_eq!(
        (
            existing["daddr"].as_str(),
            u64_of(&existing, "dport"),
            u64_of(&existing, "lport"),
            &existing["family"]
        ),
        (
            Some("::1"),
            u64::from(server.port),
            u64::from(net::local_addr(fd).port()),
            &Value::from(6)
        ),
        "{existing}"
    );
    send_all(fd, 1234, Sender::Send);
    net::close(fd);
    let close = sw.wait_for("close", record_of("close", pid, fd));
    assert_eq!(
        u64_of(&close, "bytes_sent"),
        1234,
        "only bytes sent after start"
    );
    assert_eq!(server.next_total(), 999 + 1234);
}
