//! Real sockets on 127.0.0.1, driven through the exact syscalls under test (libc, not std,
//! so the syscall used is never in doubt).

use std::{
    io::Read,
    net::{SocketAddrV4, TcpListener},
    os::fd::RawFd,
    sync::mpsc,
    thread,
    time::Duration,
};

/// A TCP server on 127.0.0.1 that accepts connections and counts the bytes each one sends
/// until the peer closes. Each finished connection's byte count is sent to `received()`.
pub struct CountingServer {
    pub port: u16,
    received: mpsc::Receiver<u64>,
}

impl CountingServer {
    pub fn start() -> Self {
        Self::with_greeting(0)
    }

    /// Like `start`, but first sends `greeting` bytes to each client.
    pub fn with_greeting(greeting: usize) -> Self {
        Self::on("127.0.0.1:0", greeting)
    }

    /// Like `with_greeting`, listening on `addr` (`[::1]:0`, `[::]:0`).
    pub fn on(addr: &str, greeting: usize) -> Self {
        use std::io::Write;
        let listener = TcpListener::bind(addr).expect("binding a loopback server");
        let port = listener.local_addr().expect("local addr").port();
        let (tx, received) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let tx = tx.clone();
                thread::spawn(move || {
                    if greeting > 0 && stream.write_all(&vec![b'g'; greeting]).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 65536];
                    let mut total = 0u64;
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = tx.send(total);
                });
            }
        });
        Self { port, received }
    }

    /// Bytes received on the next connection to finish.
    pub fn next_total(&self) -> u64 {
        self.received
            .recv_timeout(Duration::from_secs(10))
            .expect("server saw a connection end")
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    listener.local_addr().expect("addr").port()
}

fn sockaddr(port: u16) -> libc::sockaddr_in {
    sockaddr_of(SocketAddrV4::new([127, 0, 0, 1].into(), port))
}

/// `addr` as the kernel takes it.
pub fn sockaddr_of(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// How long one blocking call on a test socket (connect, accept, send, receive) may wait.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds every blocking call on `fd` by [`SOCKET_TIMEOUT`] (`SO_RCVTIMEO`, which also bounds
/// accept, and `SO_SNDTIMEO`, which also bounds connect): a peer that never answers fails the
/// test with EAGAIN (or EINPROGRESS for connect) instead of hanging it.
fn bound_blocking_calls(fd: RawFd) {
    let timeout = libc::timeval {
        tv_sec: SOCKET_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: a valid timeval of the size passed, on a socket the caller owns.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
    }
}

pub fn tcp_socket(flags: i32) -> RawFd {
    // Close-on-exec: the processes tests spawn (sockwatch itself, curl, ss) must not inherit
    // our sockets, or closing them here would not end the connection.
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags,
            0,
        )
    };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    bound_blocking_calls(fd);
    fd
}

/// A new TCP socket at fd number `fd`, which must be free (moved there with `dup2`).
pub fn socket_at(fd: RawFd) -> RawFd {
    let temporary = tcp_socket(0);
    // SAFETY: dup3 onto a number this test owns (close-on-exec, as tcp_socket); the temporary
    // fd is closed right after.
    let moved = unsafe { libc::dup3(temporary, fd, libc::O_CLOEXEC) };
    assert_eq!(moved, fd, "dup2: {}", std::io::Error::last_os_error());
    close(temporary);
    fd
}

/// `connect(2)` to 127.0.0.1:`port`; returns 0 or the errno.
pub fn connect(fd: RawFd, port: u16) -> i32 {
    connect_to(fd, SocketAddrV4::new([127, 0, 0, 1].into(), port))
}

/// `connect(2)` to `addr`; returns 0 or the errno.
pub fn connect_to(fd: RawFd, addr: SocketAddrV4) -> i32 {
    let sa = sockaddr_of(addr);
    // SAFETY: `sa` is a valid sockaddr_in and its size is passed.
    let rc = unsafe {
        libc::connect(
            fd,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// A connected, blocking TCP socket to 127.0.0.1:`port`.
pub fn connected(port: u16) -> RawFd {
    let fd = tcp_socket(0);
    assert_eq!(connect(fd, port), 0, "connect to 127.0.0.1:{port}");
    fd
}

/// Sends exactly `len` bytes with `sendto(2)` (NULL address, as on a connected socket).
pub fn sendto_all(fd: RawFd, len: usize) {
    let buf = vec![0x5au8; len];
    let mut off = 0;
    while off < len {
        // SAFETY: the buffer slice is valid for `len - off` bytes.
        let n = unsafe {
            libc::sendto(
                fd,
                buf[off..].as_ptr().cast(),
                len - off,
                libc::MSG_NOSIGNAL,
                std::ptr::null(),
                0,
            )
        };
        assert!(n > 0, "sendto: {}", std::io::Error::last_os_error());
        off += n as usize;
    }
}

pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd`.
    let rc = unsafe { libc::close(fd) };
    assert_eq!(rc, 0, "close: {}", std::io::Error::last_os_error());
}

/// Waits until a non-blocking connect has completed (the socket is writable).
pub fn wait_writable(fd: RawFd) {
    wait_for(fd, libc::POLLOUT, "connect did not complete");
}

/// Waits until `fd` has something to read.
pub fn wait_readable(fd: RawFd) {
    wait_for(fd, libc::POLLIN, "nothing to read");
}

/// Polls `fd` for `events`, at most [`SOCKET_TIMEOUT`]; panics with `what` past it.
fn wait_for(fd: RawFd, events: libc::c_short, what: &str) {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let timeout_ms = i32::try_from(SOCKET_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    assert_eq!(rc, 1, "{what} within {SOCKET_TIMEOUT:?}");
}

/// The kernel's own count of data bytes sent on the connection from local port `sport`, from
/// `ss -tin` (tcp_info), once at least `expected` bytes are on the wire (see
/// [`ss_counters_settled`]).
pub fn ss_bytes_sent(sport: u16, expected: u64) -> Option<u64> {
    ss_counters_settled(sport, expected).map(|(sent, _)| sent)
}

/// The kernel's own `(data bytes sent, bytes received)` for the connection from local port
/// `sport`, from `ss -tin` (tcp_info). tcp_info's `bytes_sent` counts retransmitted bytes again,
/// and loopback does retransmit where timers fire late (on the emulated CPUs of `cargo xtask
/// vm-test` a spurious tail loss probe, seen as `dsack_dups:1`, resends the last segment), so
/// `bytes_retrans` is taken off. A counter ss does not print (it omits zeros) counts as 0.
pub fn ss_counters(sport: u16) -> Option<(u64, u64)> {
    ss_counters_from(&format!("127.0.0.1:{sport}"))
}

/// [`ss_counters`] of the connection from `src` (`127.0.0.1:PORT`, `[::1]:PORT`).
pub fn ss_counters_from(src: &str) -> Option<(u64, u64)> {
    let out = super::process::output_within(
        std::process::Command::new("ss").args(["-tinH", "state", "established", "src", src]),
        super::process::COMMAND_TIMEOUT,
        "ss (iproute2)",
    );
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return None;
    }
    let field = |name: &str| -> u64 {
        text.split_whitespace()
            .find_map(|field| field.strip_prefix(name))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let sent = field("bytes_sent:").saturating_sub(field("bytes_retrans:"));
    Some((sent, field("bytes_received:")))
}

/// [`ss_counters`] once the kernel has put at least `sent` bytes on the wire: tcp_info counts
/// bytes as they are transmitted, which lags what send() accepted while the peer's window is
/// full. Waits at most 10 s.
pub fn ss_counters_settled(sport: u16, sent: u64) -> Option<(u64, u64)> {
    ss_counters_settled_from(&format!("127.0.0.1:{sport}"), sent)
}

/// [`ss_counters_settled`] of the connection from `src` (as [`ss_counters_from`]).
pub fn ss_counters_settled_from(src: &str, sent: u64) -> Option<(u64, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let counters = ss_counters_from(src);
        if counters.is_some_and(|(s, _)| s >= sent) || std::time::Instant::now() > deadline {
            return counters;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The local port of a socket.
pub fn local_port(fd: RawFd) -> u16 {
    let mut sa: libc::sockaddr_in = sockaddr(0);
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sa` has room for a sockaddr_in and `len` says so.
    let rc = unsafe { libc::getsockname(fd, (&raw mut sa).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockname");
    u16::from_be(sa.sin_port)
}

/// A minimal HTTP/1.0 server on 127.0.0.1 for real clients such as curl. It records how many
/// request bytes the (single) client sent before closing.
pub struct HttpServer {
    pub port: u16,
    request_bytes: mpsc::Receiver<u64>,
}

impl HttpServer {
    pub fn start() -> Self {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback server");
        let port = listener.local_addr().expect("local addr").port();
        let (tx, request_bytes) = mpsc::channel();
        thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = "hello from sockwatch's test\n";
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            // Anything else the client sends before closing counts too.
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(request.len() as u64);
        });
        Self {
            port,
            request_bytes,
        }
    }

    pub fn request_bytes(&self) -> u64 {
        self.request_bytes
            .recv_timeout(Duration::from_secs(10))
            .expect("the client's request was received")
    }
}

/// A listening TCP socket on 127.0.0.1 (raw fd) and its port.
pub fn raw_listener() -> (RawFd, u16) {
    let fd = tcp_socket(0);
    let sa = sockaddr(0);
    // SAFETY: a valid sockaddr_in of the right size; listen on our own socket.
    unsafe {
        assert_eq!(
            libc::bind(
                fd,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            ),
            0
        );
        assert_eq!(libc::listen(fd, 16), 0);
    }
    (fd, local_port(fd))
}

/// `accept(2)` with an address buffer: the new fd and the peer's port.
pub fn accept_with_peer(listener: RawFd) -> (RawFd, u16) {
    let mut sa = sockaddr(0);
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sa` has room for a sockaddr_in and `len` says so; then FD_CLOEXEC on our fd
    // (plain accept has no flags; see tcp_socket for why).
    let fd = unsafe { libc::accept(listener, (&raw mut sa).cast(), &mut len) };
    assert!(fd >= 0, "accept: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    bound_blocking_calls(fd);
    (fd, u16::from_be(sa.sin_port))
}

/// `accept4(2)` without an address buffer (the peer is then unknown to the probes).
pub fn accept4_without_peer(listener: RawFd) -> RawFd {
    // SAFETY: NULL address and length are allowed.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    assert!(fd >= 0, "accept4: {}", std::io::Error::last_os_error());
    bound_blocking_calls(fd);
    fd
}

/// An `AF_INET6` TCP socket connected to `addr`:`port`; returns the fd and connect's errno.
pub fn connect6(addr: std::net::Ipv6Addr, port: u16) -> (RawFd, i32) {
    // SAFETY: plain socket(2); a valid sockaddr_in6 of the right size.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(
            fd >= 0,
            "socket(AF_INET6): {}",
            std::io::Error::last_os_error()
        );
        bound_blocking_calls(fd);
        let sa = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: port.to_be(),
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: addr.octets(),
            },
            sin6_scope_id: 0,
        };
        let rc = libc::connect(
            fd,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        );
        let errno = if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        };
        (fd, errno)
    }
}

/// A UDP socket connected to 127.0.0.1:`port`.
pub fn connected_udp(port: u16) -> RawFd {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(
        fd >= 0,
        "socket(SOCK_DGRAM): {}",
        std::io::Error::last_os_error()
    );
    bound_blocking_calls(fd);
    assert_eq!(connect(fd, port), 0, "connect(udp)");
    fd
}

/// A UDP server on 127.0.0.1 that answers every datagram with one of the same size.
pub fn udp_echo() -> u16 {
    udp_echo_on("127.0.0.1:0")
}

/// A connected pair of Unix stream sockets (close-on-exec).
pub fn unix_pair() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the array we own.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

/// Sends `fd` over the Unix socket `unix` (SCM_RIGHTS), with one byte of data.
pub fn send_fd(unix: RawFd, fd: RawFd) {
    let mut byte = 1u8;
    let mut iov = libc::iovec {
        iov_base: (&raw mut byte).cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; it then points at buffers we own, and the control
    // header is written inside `control`, which CMSG_SPACE sized for one fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
        let sent = libc::sendmsg(unix, &raw const msg, 0);
        assert_eq!(sent, 1, "sendmsg: {}", std::io::Error::last_os_error());
    }
}

/// `shutdown(fd, SHUT_WR)`: the peer reads end of file.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain shutdown(2) on an fd the caller owns.
    let rc = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    assert_eq!(rc, 0, "shutdown: {}", std::io::Error::last_os_error());
}

/// The inode of the socket on our `fd` (`socket:[N]` in /proc): the kernel socket, whoever
/// holds it.
pub fn inode_of(fd: RawFd) -> u64 {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("our fd");
    let link = link.to_string_lossy();
    link.strip_prefix("socket:[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("fd {fd} is not a socket: {link}"))
}

/// A listening `AF_INET6` TCP socket on `addr` (`[::]:0` is dual-stack, as servers listen by
/// default) as a raw fd, with its port.
pub fn raw_listener6(addr: &str) -> (RawFd, u16) {
    use std::os::fd::IntoRawFd;
    let listener = TcpListener::bind(addr).expect("binding an IPv6 listener");
    let port = listener.local_addr().expect("addr").port();
    let fd = listener.into_raw_fd();
    bound_blocking_calls(fd);
    (fd, port)
}

/// `accept(2)` with a `sockaddr_in6` buffer: the new fd and the peer's address and port.
pub fn accept6_with_peer(listener: RawFd) -> (RawFd, std::net::SocketAddrV6) {
    // SAFETY: an all-zero sockaddr_in6 is valid.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `sa` has room for a sockaddr_in6 and `len` says so; then FD_CLOEXEC on our fd.
    let fd = unsafe { libc::accept(listener, (&raw mut sa).cast(), &mut len) };
    assert!(fd >= 0, "accept: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    bound_blocking_calls(fd);
    let peer = std::net::SocketAddrV6::new(
        sa.sin6_addr.s6_addr.into(),
        u16::from_be(sa.sin6_port),
        0,
        0,
    );
    (fd, peer)
}

/// The local address of a socket of either family.
pub fn local_addr(fd: RawFd) -> std::net::SocketAddr {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `sa` has room for any address and `len` says so.
    let rc = unsafe { libc::getsockname(fd, (&raw mut sa).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
    match i32::from(sa.ss_family) {
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let v6: libc::sockaddr_in6 = unsafe { *(&raw const sa).cast() };
            std::net::SocketAddrV6::new(
                v6.sin6_addr.s6_addr.into(),
                u16::from_be(v6.sin6_port),
                0,
                0,
            )
            .into()
        }
        _ => SocketAddrV4::new([127, 0, 0, 1].into(), local_port(fd)).into(),
    }
}

/// A UDP socket (`AF_INET6`) connected to [::1]:`port`, as a raw fd.
pub fn connected_udp6(port: u16) -> RawFd {
    use std::os::fd::IntoRawFd;
    let socket = std::net::UdpSocket::bind("[::1]:0").expect("binding udp on ::1");
    socket.connect(("::1", port)).expect("connect(udp) to ::1");
    let fd = socket.into_raw_fd();
    // SAFETY: FD_CLOEXEC on our own fd (std sets it already; kept explicit as tcp_socket).
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    bound_blocking_calls(fd);
    fd
}

/// A UDP server on `addr` (`127.0.0.1:0`, `[::1]:0`) that answers every datagram with one of
/// the same size; its port.
pub fn udp_echo_on(addr: &str) -> u16 {
    let socket = std::net::UdpSocket::bind(addr).expect("binding udp");
    let port = socket.local_addr().expect("addr").port();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if socket.send_to(&buf[..n], from).is_err() {
                break;
            }
        }
    });
    port
}
