//! `sockwatch-load`: real socket traffic on 127.0.0.1, for sockwatch's tests, benchmarks and
//! demos. Every mode talks only to 127.0.0.1.
//!
//! The modes that end a socket without `close()` (process exit, exec) exist because a test
//! process cannot do that to itself. The `bench-*`, `flood` and `hold` modes are the workloads
//! of `cargo xtask bench` (in `sockwatch-load/bench.rs`).

#[path = "sockwatch-load/bench.rs"]
mod bench;

use std::{
    io::{self, BufRead, Read, Write},
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Command, ExitCode},
    thread,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sockwatch-load",
    about = "Loopback socket traffic for sockwatch"
)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Connect to 127.0.0.1:PORT, send BYTES, print `pid=P fd=F`, wait for a line on stdin,
    /// then exit without closing the socket.
    ExitWithoutClose {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        bytes: usize,
    },
    /// Connect to 127.0.0.1:PORT, send BYTES, fork a child that holds the socket, print
    /// `pid=P child=C fd=F`, and exit without closing it; the child waits for a line on stdin,
    /// sends CHILD_BYTES and exits (a daemon whose worker outlives it).
    ExitLeavingChild {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        bytes: usize,
        #[arg(long)]
        child_bytes: usize,
    },
    /// Connect two sockets, one close-on-exec, send BYTES on the first and 2*BYTES on the
    /// second, print `pid=P cloexec_fd=A keep_fd=B`, wait for a line on stdin, then exec
    /// `sleep 60` (the second socket stays open in it).
    ExecWithCloexec {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        bytes: usize,
    },
    /// COUNT cycles of connect, send BYTES, close, as fast as possible; prints the rate.
    Churn {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 64)]
        bytes: usize,
    },
    /// Accept connections on 127.0.0.1:PORT (0 picks one, printed) and discard what they send.
    Sink {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// A busy dashboard: CONNECTIONS long-lived sockets to a local sink, each sending at its
    /// own rate, plus a connect/close every CHURN_MS, for SECS seconds.
    Demo {
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 200)]
        churn_ms: u64,
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
    /// CALLS `send()`s of BYTES on a loopback TCP connection; prints ns per call.
    BenchSend {
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        #[arg(long, default_value_t = 64)]
        bytes: usize,
    },
    /// CALLS 64-byte `write()`s to /dev/null; prints ns per call.
    BenchWriteDevnull {
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
    },
    /// CALLS `dup()` + `close()` pairs on /dev/null (close on a non-socket fd); prints ns per
    /// pair.
    BenchClose {
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
    },
    /// CALLS `getppid()`s (a syscall sockwatch does not hook); prints ns per call.
    BenchGetppid {
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
    },
    /// CALLS loopback TCP connect + accept + send BYTES + close (both ends, abortive: no
    /// TIME_WAIT) cycles, all in one thread; prints ns per cycle.
    BenchChurn {
        #[arg(long, default_value_t = 20_000)]
        calls: u64,
        #[arg(long, default_value_t = 64)]
        bytes: usize,
    },
    /// Socket lifecycles (connect + close) for SECS seconds at RATE per second (0: as fast as
    /// possible), UDP unless --tcp; prints the rate reached.
    Flood {
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long)]
        tcp: bool,
        #[arg(long, default_value_t = 0)]
        bytes: usize,
    },
    /// Opens CONNECTIONS loopback TCP connections to itself (two sockets each), prints
    /// `held=N`, and holds them until stdin closes or SECS pass; after a line `send` on stdin,
    /// SENDING of them send 64 bytes a second (read by the other end), the rest stay idle.
    Hold {
        #[arg(long)]
        connections: usize,
        #[arg(long, default_value_t = 600)]
        secs: u64,
        #[arg(long, default_value_t = 0)]
        sending: usize,
    },
}

fn main() -> ExitCode {
    match run(Args::parse().mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sockwatch-load: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(mode: Mode) -> io::Result<()> {
    match mode {
        Mode::ExitWithoutClose { port, bytes } => {
            let stream = connect_and_send(port, bytes)?;
            println!("pid={} fd={}", std::process::id(), stream.as_raw_fd());
            wait_for_stdin()?;
            // SAFETY: exiting at once, deliberately without closing the socket.
            unsafe { libc::_exit(0) }
        }
        Mode::ExitLeavingChild {
            port,
            bytes,
            child_bytes,
        } => {
            let mut stream = connect_and_send(port, bytes)?;
            io::stdout().flush()?;
            // SAFETY: this program runs no other thread, so the child may do anything.
            match unsafe { libc::fork() } {
                -1 => Err(io::Error::last_os_error()),
                0 => {
                    wait_for_stdin()?;
                    stream.write_all(&vec![b'y'; child_bytes])?;
                    // SAFETY: leaving at once, the socket left to the exit as the parent did.
                    unsafe { libc::_exit(0) }
                }
                child => {
                    println!(
                        "pid={} child={child} fd={}",
                        std::process::id(),
                        stream.as_raw_fd()
                    );
                    io::stdout().flush()?;
                    // SAFETY: exiting at once, deliberately without closing the socket.
                    unsafe { libc::_exit(0) }
                }
            }
        }
        Mode::ExecWithCloexec { port, bytes } => {
            // std opens sockets close-on-exec: that one is closed by the exec.
            let cloexec = connect_and_send(port, bytes)?;
            let keep = connect_and_send(port, 2 * bytes)?;
            // SAFETY: clearing FD_CLOEXEC on a socket we own, so it survives the exec.
            if unsafe { libc::fcntl(keep.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            println!(
                "pid={} cloexec_fd={} keep_fd={}",
                std::process::id(),
                cloexec.as_raw_fd(),
                keep.as_raw_fd()
            );
            wait_for_stdin()?;
            let error = Command::new("sleep").arg("60").exec();
            Err(error)
        }
        Mode::Churn { port, count, bytes } => {
            let start = Instant::now();
            for _ in 0..count {
                drop(connect_and_send(port, bytes)?);
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "cycles={count} secs={secs:.3} per_sec={:.0}",
                count as f64 / secs
            );
            Ok(())
        }
        Mode::Sink { port } => {
            let listener = TcpListener::bind(("127.0.0.1", port))?;
            println!("port={}", listener.local_addr()?.port());
            io::stdout().flush()?;
            sink(listener);
            Ok(())
        }
        Mode::Demo {
            connections,
            churn_ms,
            secs,
        } => demo(
            connections,
            Duration::from_millis(churn_ms),
            Duration::from_secs(secs),
        ),
        Mode::BenchSend { calls, bytes } => bench::send(calls, bytes),
        Mode::BenchWriteDevnull { calls } => bench::write_devnull(calls),
        Mode::BenchClose { calls } => bench::close(calls),
        Mode::BenchGetppid { calls } => bench::getppid(calls),
        Mode::BenchChurn { calls, bytes } => bench::churn(calls, bytes),
        Mode::Flood {
            secs,
            rate,
            tcp,
            bytes,
        } => bench::flood(!tcp, secs, rate, bytes),
        Mode::Hold {
            connections,
            secs,
            sending,
        } => bench::hold(connections, secs, sending),
    }
}

fn connect_and_send(port: u16, bytes: usize) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(&vec![b'x'; bytes])?;
    Ok(stream)
}

fn wait_for_stdin() -> io::Result<()> {
    io::stdout().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(())
}

/// Accepts forever, reading and discarding, one thread per connection.
fn sink(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 65536];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
}

fn demo(connections: usize, churn_every: Duration, length: Duration) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || sink(listener));
    let deadline = Instant::now() + length;
    let mut senders = Vec::new();
    for i in 0..connections {
        // Rates from 1 KiB/s up, doubling: some rows busy, some quiet.
        let chunk = 1024usize << (i % 10);
        senders.push(thread::spawn(move || -> io::Result<()> {
            let mut stream = TcpStream::connect(("127.0.0.1", port))?;
            let data = vec![b'd'; chunk];
            while Instant::now() < deadline {
                stream.write_all(&data)?;
                thread::sleep(Duration::from_secs(1));
            }
            Ok(())
        }));
    }
    while Instant::now() < deadline {
        drop(connect_and_send(port, 512)?);
        thread::sleep(churn_every);
    }
    for sender in senders {
        sender
            .join()
            .map_err(|_| io::Error::other("a sender panicked"))??;
    }
    Ok(())
}
