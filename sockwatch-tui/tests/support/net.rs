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
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback server");
        let port = listener.local_addr().expect("local addr").port();
        let (tx, received) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let tx = tx.clone();
                thread::spawn(move || {
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
    let addr = SocketAddrV4::new([127, 0, 0, 1].into(), port);
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

pub fn tcp_socket(flags: i32) -> RawFd {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | flags, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    fd
}

/// A new TCP socket at fd number `fd`, which must be free (moved there with `dup2`).
pub fn socket_at(fd: RawFd) -> RawFd {
    let temporary = tcp_socket(0);
    // SAFETY: dup2 onto a number this test owns; the temporary fd is closed right after.
    let moved = unsafe { libc::dup2(temporary, fd) };
    assert_eq!(moved, fd, "dup2: {}", std::io::Error::last_os_error());
    close(temporary);
    fd
}

/// `connect(2)` to 127.0.0.1:`port`; returns 0 or the errno.
pub fn connect(fd: RawFd, port: u16) -> i32 {
    let sa = sockaddr(port);
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
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(rc, 1, "connect did not complete");
}

/// The kernel's own `bytes_sent` for the connection from local port `sport`, from `ss -tin`.
pub fn ss_bytes_sent(sport: u16) -> Option<u64> {
    let out = std::process::Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            "src",
            &format!("127.0.0.1:{sport}"),
        ])
        .output()
        .expect("running ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|field| field.strip_prefix("bytes_sent:"))
        .and_then(|n| n.parse().ok())
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
