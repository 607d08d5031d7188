//! The benchmark's workloads (`cargo xtask bench`), usable on their own.
//!
//! Each `bench-*` loop makes one kind of syscall as fast as it can and prints one line,
//! `mode=NAME calls=N warmup=W secs=S ns_per_call=X`, timing only the loop: its setup (a
//! listener, a connection, an fd to /dev/null) happens before the clock starts, and a short
//! warm-up runs first. Syscalls are made through libc, so which syscall runs is never in doubt (`send()` is
//! the `sendto` syscall). `flood` makes lifecycle events (connect + close) at a chosen rate,
//! and `hold` keeps many connections open. Every socket is on 127.0.0.1.

use std::{
    fs::File,
    io::{self, BufRead, Read},
    mem,
    net::{Ipv4Addr, TcpListener, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    thread,
    time::{Duration, Instant},
};

/// Calls made before the clock starts (page faults, caches, the first connect's slow path).
fn warm_up(calls: u64) -> u64 {
    (calls / 20).clamp(1, 10_000)
}

/// The line every `bench-*` mode prints (`warmup`: the untimed calls made before).
fn report(mode: &str, calls: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "mode={mode} calls={calls} warmup={} secs={secs:.6} ns_per_call={:.2}",
        warm_up(calls),
        secs * 1e9 / calls.max(1) as f64
    );
}

/// The error of a libc call that returned -1.
fn check(ret: isize, what: &str) -> io::Result<isize> {
    if ret < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(error.kind(), format!("{what}: {error}")));
    }
    Ok(ret)
}

/// `send(fd, 64 bytes)` on a connected loopback TCP socket, whose peer (a thread of this
/// process) reads and discards everything.
pub fn send(calls: u64, bytes: usize) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let sink = thread::spawn(move || -> io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        while stream.read(&mut buf)? > 0 {}
        Ok(())
    });
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    let fd = stream.as_raw_fd();
    let data = vec![b's'; bytes];
    let send_once = || -> io::Result<()> {
        // SAFETY: `data` outlives the call; `fd` is the open socket owned by `stream`.
        let sent = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) };
        // A blocking stream socket sends everything or fails.
        check(sent, "send").map(drop)
    };
    for _ in 0..warm_up(calls) {
        send_once()?;
    }
    let start = Instant::now();
    for _ in 0..calls {
        send_once()?;
    }
    let elapsed = start.elapsed();
    drop(stream);
    sink.join()
        .map_err(|_| io::Error::other("the sink thread panicked"))??;
    report("bench-send", calls, elapsed);
    Ok(())
}

/// `write(fd, 64 bytes)` to /dev/null: an fd sockwatch must ignore cheaply.
pub fn write_devnull(calls: u64) -> io::Result<()> {
    let devnull = File::options().write(true).open("/dev/null")?;
    let fd = devnull.as_raw_fd();
    let data = [b'w'; 64];
    let write_once = || -> io::Result<()> {
        // SAFETY: `data` outlives the call; `fd` is owned by `devnull`.
        let written = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        check(written, "write").map(drop)
    };
    for _ in 0..warm_up(calls) {
        write_once()?;
    }
    let start = Instant::now();
    for _ in 0..calls {
        write_once()?;
    }
    let elapsed = start.elapsed();
    report("bench-write-devnull", calls, elapsed);
    Ok(())
}

/// `dup` of an fd to /dev/null, then `close` of the copy: one close() on a non-socket fd per
/// call (`dup` itself is not a syscall sockwatch hooks).
pub fn close(calls: u64) -> io::Result<()> {
    let devnull = File::open("/dev/null")?;
    let fd = devnull.as_raw_fd();
    let close_once = || -> io::Result<()> {
        // SAFETY: dup of an fd we own; close of the fd dup just returned, owned by nobody else.
        let copy = check(unsafe { libc::dup(fd) } as isize, "dup")? as RawFd;
        check(unsafe { libc::close(copy) } as isize, "close").map(drop)
    };
    for _ in 0..warm_up(calls) {
        close_once()?;
    }
    let start = Instant::now();
    for _ in 0..calls {
        close_once()?;
    }
    let elapsed = start.elapsed();
    report("bench-close", calls, elapsed);
    Ok(())
}

/// `getppid()`: a syscall sockwatch never hooks, so what it pays is only the slow path that any
/// enabled syscall tracepoint puts every syscall of every task on. Made with `syscall(2)`, so
/// that no libc can answer it from a cache.
pub fn getppid(calls: u64) -> io::Result<()> {
    // SAFETY: getppid takes no arguments and cannot fail.
    let getppid_once = || unsafe { libc::syscall(libc::SYS_getppid) };
    for _ in 0..warm_up(calls) {
        getppid_once();
    }
    let start = Instant::now();
    for _ in 0..calls {
        getppid_once();
    }
    let elapsed = start.elapsed();
    report("bench-getppid", calls, elapsed);
    Ok(())
}

/// Where a lifecycle connects: a loopback TCP listener this thread accepts from itself, or a
/// bound UDP socket nobody reads (once its buffer is full, datagrams are dropped).
enum Target {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Target {
    fn new(udp: bool) -> io::Result<Self> {
        Ok(if udp {
            Self::Udp(UdpSocket::bind("127.0.0.1:0")?)
        } else {
            Self::Tcp(TcpListener::bind("127.0.0.1:0")?)
        })
    }

    fn sockaddr(&self) -> io::Result<libc::sockaddr_in> {
        let port = match self {
            Self::Tcp(listener) => listener.local_addr()?.port(),
            Self::Udp(socket) => socket.local_addr()?.port(),
        };
        Ok(libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        })
    }
}

/// One socket's life, in this thread alone: `socket`, `connect`, `send` of `data` (if any),
/// and `close`; over TCP the connection is also `accept`ed from `target`'s listener (the
/// handshake completes within `connect` on loopback) and closed on that side too.
///
/// The connecting side closes first and abortively (`SO_LINGER` 0: an RST, so no TIME_WAIT on
/// either side): a benchmark makes hundreds of thousands of connections, and TIME_WAIT sockets
/// would exhaust the ephemeral ports and make each later connect slower than the first,
/// whatever is attached. Doing it all in one thread keeps the loop free of scheduling: no
/// accept queue to overflow while a server thread waits for a core.
fn lifecycle(target: &Target, to: &libc::sockaddr_in, data: &[u8]) -> io::Result<()> {
    let kind = match target {
        Target::Tcp(_) => libc::SOCK_STREAM,
        Target::Udp(_) => libc::SOCK_DGRAM,
    };
    // SAFETY: plain syscalls on fds this function creates and closes; every pointer passed is
    // to a live value of the size given.
    unsafe {
        let fd = check(libc::socket(libc::AF_INET, kind, 0) as isize, "socket")? as RawFd;
        let mut accepted: RawFd = -1;
        let result = (|| {
            if let Target::Tcp(_) = target {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let ret = libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    mem::size_of::<libc::linger>() as libc::socklen_t,
                );
                check(ret as isize, "setsockopt(SO_LINGER)")?;
            }
            let ret = libc::connect(
                fd,
                std::ptr::from_ref(to).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            check(ret as isize, "connect")?;
            if let Target::Tcp(listener) = target {
                let mut peer: libc::sockaddr_in = mem::zeroed();
                let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                let ret = libc::accept4(
                    listener.as_raw_fd(),
                    (&raw mut peer).cast(),
                    &mut len,
                    libc::SOCK_CLOEXEC,
                );
                accepted = check(ret as isize, "accept4")? as RawFd;
            }
            if !data.is_empty() {
                check(libc::send(fd, data.as_ptr().cast(), data.len(), 0), "send")?;
            }
            Ok(())
        })();
        libc::close(fd);
        if accepted >= 0 {
            libc::close(accepted);
        }
        result
    }
}

/// connect + accept + send 64 bytes + close of both ends on loopback TCP, in one thread.
pub fn churn(calls: u64, bytes: usize) -> io::Result<()> {
    let target = Target::new(false)?;
    let to = target.sockaddr()?;
    let data = vec![b'c'; bytes];
    for _ in 0..warm_up(calls) {
        lifecycle(&target, &to, &data)?;
    }
    let start = Instant::now();
    for _ in 0..calls {
        lifecycle(&target, &to, &data)?;
    }
    let elapsed = start.elapsed();
    report("bench-churn", calls, elapsed);
    Ok(())
}

/// Socket lifecycles for SECS seconds at RATE per second (0: as fast as possible), over UDP
/// (connect + close: two events for sockwatch) or TCP (connect, accept, two closes: four),
/// each made by `lifecycle`.
/// Prints `cycles=N secs=S per_sec=R`.
pub fn flood(udp: bool, secs: f64, rate: u64, bytes: usize) -> io::Result<()> {
    let target = Target::new(udp)?;
    let to = target.sockaddr()?;
    let data = vec![b'f'; bytes];
    let length = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut cycles = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= length {
            break;
        }
        if rate > 0 {
            // Paced: never ahead of `rate` cycles per second since the start.
            let due = (elapsed.as_secs_f64() * rate as f64) as u64;
            if cycles >= due {
                thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        // A short burst between clock reads.
        for _ in 0..16 {
            lifecycle(&target, &to, &data)?;
        }
        cycles += 16;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "cycles={cycles} secs={secs:.3} per_sec={:.0}",
        cycles as f64 / secs
    );
    Ok(())
}

/// Opens CONNECTIONS loopback TCP connections to a listener of this process, accepts them
/// all (two sockets each: one outbound, one inbound), moves one byte over each, prints
/// `held=N`, and keeps them open until stdin closes (or has any line but `send`) or SECS pass.
/// A line `send` on stdin makes SENDING of the connections move 64 bytes a second from then on
/// (sent by one end, received by the other).
pub fn hold(connections: usize, secs: u64, sending: usize) -> io::Result<()> {
    // Two fds per connection, plus the listener and stdio.
    raise_fd_limit(2 * connections as u64 + 64)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut clients = Vec::with_capacity(connections);
    let mut servers = Vec::with_capacity(connections);
    for _ in 0..connections {
        // One byte in, read by the accepted end: every socket is in use (the socket backend
        // tracks an accepted socket from its first use).
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port))?;
        io::Write::write_all(&mut client, b"h")?;
        let mut server = listener.accept()?.0;
        io::Read::read_exact(&mut server, &mut [0u8])?;
        clients.push(client);
        servers.push(server);
    }
    println!("held={connections} pid={}", std::process::id());
    io::Write::flush(&mut io::stdout())?;
    // Stdin's lines, read in a thread; it ends (closing the channel) at EOF.
    let (lines_tx, lines) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut sending_now, mut message) = (false, [0u8; 64]);
    let pairs = clients.iter_mut().zip(servers.iter_mut()).take(sending);
    let mut senders: Vec<_> = pairs.collect();
    loop {
        let second = Instant::now() + Duration::from_secs(1);
        if sending_now {
            for (client, server) in &mut senders {
                io::Write::write_all(client, &message)?;
                server.read_exact(&mut message)?;
            }
        }
        // Until the next second (or a line), bounded by SECS.
        let wait = second
            .min(deadline)
            .saturating_duration_since(Instant::now());
        match lines.recv_timeout(wait) {
            Ok(line) if line.trim() == "send" => sending_now = true,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            _ => break,
        }
    }
    drop(clients);
    drop(servers);
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to at least `needed` (up to the hard limit).
fn raise_fd_limit(needed: u64) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        check(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) as isize,
            "getrlimit",
        )?;
        if limit.rlim_cur >= needed {
            return Ok(());
        }
        if limit.rlim_max < needed {
            // Root may raise the hard limit too.
            limit.rlim_max = needed;
        }
        limit.rlim_cur = needed;
        check(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) as isize,
            "setrlimit(RLIMIT_NOFILE): raise the open-file limit (ulimit -n)",
        )?;
    }
    Ok(())
}
