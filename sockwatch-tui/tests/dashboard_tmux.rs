//! The dashboard in a real terminal (tmux), watching real connections on 127.0.0.1.

mod support;

use std::time::Duration;

use support::{
    cgroup::Cgroup,
    load::{field, Load, LOAD_TIMEOUT},
    net,
    tmux::Tmux,
    BIN,
};

const SCREEN_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn dashboard_shows_a_live_connection_logs_its_close_and_quits_cleanly() {
    support::assert_root();
    let tmux = Tmux::start("dashboard", 120, 32);
    tmux.wait_for("shell prompt", SCREEN_TIMEOUT, |s| s.contains("e2e$"));
    let state_file = format!("/tmp/sockwatch-e2e-{}", std::process::id());
    tmux.type_line(&format!("stty -g > {state_file}.before; clear"));
    // No names: the destination stays `127.0.0.1:port`, and no lookup leaves the machine.
    // Only this test's sockets (other tests may run at the same time and fill the close log).
    let pid = std::process::id().to_string();
    tmux.type_line(&format!("{BIN} --interval 200 --no-resolve --pid {pid}"));
    tmux.wait_for("the dashboard", SCREEN_TIMEOUT, |s| {
        s.contains("Open sockets")
    });

    let server = net::CountingServer::start();
    let fd = net::connected(server.port);
    net::sendto_all(fd, 1536);
    let destination = format!("127.0.0.1:{}", server.port);
    let screen = tmux.wait_for("the live connection's row", SCREEN_TIMEOUT, |s| {
        s.lines().any(|line| {
            line.contains(&destination)
                && line.contains(&pid)
                && line.contains("ESTAB")
                && line.contains("1.5 KiB")
        })
    });
    // `auto` on this kernel: the socket layer where it has it.
    assert!(
        ["socket", "tracepoint", "kprobe"]
            .iter()
            .any(|probe| screen.contains(&format!("probe: {probe}"))),
        "{screen}"
    );

    // The app's `localhost` is often ::1: the same row over IPv6, bracketed.
    let server6 = net::CountingServer::on("[::1]:0", 0);
    let (fd6, errno) = net::connect6(std::net::Ipv6Addr::LOCALHOST, server6.port);
    assert_eq!(errno, 0, "connect to [::1]:{}", server6.port);
    net::sendto_all(fd6, 3072);
    let destination6 = format!("[::1]:{}", server6.port);
    tmux.wait_for("the IPv6 connection's row", SCREEN_TIMEOUT, |s| {
        s.lines().any(|line| {
            line.contains(&destination6)
                && line.contains(&pid)
                && line.contains("ESTAB")
                && line.contains("3.0 KiB")
        })
    });

    net::close(fd);
    net::close(fd6);
    assert_eq!(server.next_total(), 1536);
    assert_eq!(server6.next_total(), 3072);
    tmux.wait_for(
        "the closes in the log, the rows gone",
        SCREEN_TIMEOUT,
        |s| {
            let log = s.split("Closed (").nth(1).unwrap_or_default();
            let table = s.split("Closed (").next().unwrap_or_default();
            log.contains(&destination)
                && log.contains("1.5 KiB")
                && log.contains(&destination6)
                && log.contains("3.0 KiB")
                && !table.contains(&destination)
                && !table.contains(&destination6)
        },
    );

    tmux.press("q");
    assert_terminal_restored(&tmux, &state_file);
}

/// A process started in a unit's cgroup: `/unit:` finds its row, whose OWNER column (shown at
/// this width) names the unit.
#[test]
fn a_process_in_a_units_cgroup_shows_its_unit() {
    support::assert_root();
    let tmux = Tmux::start("owner", 170, 24);
    tmux.wait_for("shell prompt", SCREEN_TIMEOUT, |s| s.contains("e2e$"));
    let state_file = format!("/tmp/sockwatch-e2e-owner-{}", std::process::id());
    tmux.type_line(&format!("stty -g > {state_file}.before; clear"));
    tmux.type_line(&format!("{BIN} --interval 200 --no-resolve"));
    tmux.wait_for("the dashboard", SCREEN_TIMEOUT, |s| {
        s.contains("Open sockets")
    });
    // Short enough for the column (19 cells) with a pid of up to 7 digits.
    let unit = format!("e2e-{}.service", std::process::id());
    tmux.press("/");
    tmux.type_line(&format!("unit:{unit}"));

    let server = net::CountingServer::start();
    let cgroup = Cgroup::create(&unit);
    let port = server.port.to_string();
    let mut load = Load::spawn_in(
        &cgroup,
        &["exit-without-close", "--port", &port, "--bytes", "2048"],
    );
    let pid = field(&load.line(LOAD_TIMEOUT), "pid").to_string();
    let destination = format!("127.0.0.1:{port}");
    tmux.wait_for("the unit's row", SCREEN_TIMEOUT, |s| {
        s.contains("OWNER")
            && s.lines().any(|line| {
                line.contains(&destination)
                    && line.contains(&pid)
                    && line.contains(&unit)
                    && line.contains("2.0 KiB")
            })
    });
    // `o`: one row for the unit, its process and socket summed.
    tmux.press("o");
    tmux.wait_for("the unit's group", SCREEN_TIMEOUT, |s| {
        s.contains("Owners (1, 1 sockets)")
            && s.lines().any(|line| {
                line.contains(&unit) && line.contains(&destination) && line.contains("2.0 KiB")
            })
    });
    load.tell("go");
    load.wait_exit(LOAD_TIMEOUT);
    assert_eq!(server.next_total(), 2048);
    drop(load);
    drop(cgroup);

    tmux.press("q");
    assert_terminal_restored(&tmux, &state_file);
}

#[test]
fn sigterm_restores_the_terminal() {
    support::assert_root();
    let tmux = Tmux::start("sigterm", 100, 24);
    tmux.wait_for("shell prompt", SCREEN_TIMEOUT, |s| s.contains("e2e$"));
    let state_file = format!("/tmp/sockwatch-e2e-term-{}", std::process::id());
    tmux.type_line(&format!("stty -g > {state_file}.before; clear"));
    // No reverse DNS: the machine's other sockets are never looked up from a test.
    tmux.type_line(&format!("{BIN} --interval 200 --no-resolve"));
    tmux.wait_for("the dashboard", SCREEN_TIMEOUT, |s| {
        s.contains("Open sockets")
    });
    let shell = tmux.pane("#{pane_pid}");
    let pkill = support::process::output_within(
        std::process::Command::new("pkill").args(["-TERM", "-P", &shell, "-x", "sockwatch-tui"]),
        support::process::COMMAND_TIMEOUT,
        "pkill",
    );
    assert!(pkill.status.success(), "sockwatch-tui found and signalled");
    assert_terminal_restored(&tmux, &state_file);
}

/// After the dashboard ends: back at the prompt, main screen, cursor shown, and the terminal's
/// modes (raw mode off, echo on) exactly as saved in `<state_file>.before`.
fn assert_terminal_restored(tmux: &Tmux, state_file: &str) {
    tmux.wait_for("the shell prompt after quitting", SCREEN_TIMEOUT, |s| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim() == "e2e$")
    });
    assert_eq!(
        tmux.pane("#{alternate_on}"),
        "0",
        "left the alternate screen"
    );
    assert_eq!(tmux.pane("#{cursor_flag}"), "1", "cursor visible again");
    tmux.type_line(&format!(
        "stty -g > {state_file}.after; \
         cmp -s {state_file}.before {state_file}.after && echo TTY-RESTORED"
    ));
    tmux.wait_for("terminal modes restored", SCREEN_TIMEOUT, |s| {
        s.lines().any(|l| l.trim() == "TTY-RESTORED")
    });
    let _ = std::fs::remove_file(format!("{state_file}.before"));
    let _ = std::fs::remove_file(format!("{state_file}.after"));
}

/// The row of the socket to `127.0.0.1:port`: its line number on screen.
fn row_of(screen: &str, port: u16) -> Option<usize> {
    let destination = format!(" 127.0.0.1:{port} ");
    let table = screen.split("Closed (").next().unwrap_or_default();
    table.lines().position(|line| line.contains(&destination))
}

#[test]
fn keys_sort_filter_open_details_help_pause_and_quit() {
    support::assert_root();
    let tmux = Tmux::start("keys", 120, 36);
    tmux.wait_for("shell prompt", SCREEN_TIMEOUT, |s| s.contains("e2e$"));
    let state_file = format!("/tmp/sockwatch-e2e-keys-{}", std::process::id());
    tmux.type_line(&format!("stty -g > {state_file}.before; clear"));
    let pid = std::process::id();
    // --pid: only this test's sockets, from the start.
    tmux.type_line(&format!("{BIN} --interval 200 --no-resolve --pid {pid}"));
    tmux.wait_for("the dashboard, scoped", SCREEN_TIMEOUT, |s| {
        s.contains("Open sockets") && s.contains(&format!("only pid {pid}"))
    });

    let big = net::CountingServer::start();
    let small = net::CountingServer::start();
    let big_fd = net::connected(big.port);
    net::sendto_all(big_fd, 3072);
    let small_fd = net::connected(small.port);
    net::sendto_all(small_fd, 1024);
    tmux.wait_for("both rows with their byte counts", SCREEN_TIMEOUT, |s| {
        let table = s.split("Closed (").next().unwrap_or_default();
        table
            .lines()
            .any(|l| l.contains(&format!("127.0.0.1:{} ", big.port)) && l.contains("3.0 KiB"))
            && table
                .lines()
                .any(|l| l.contains(&format!("127.0.0.1:{} ", small.port)) && l.contains("1.0 KiB"))
    });

    // Sort: from SEND/s two columns left is SENT, largest first; `r` flips it.
    tmux.press("<");
    tmux.press("<");
    tmux.wait_for("sorted by SENT, largest first", SCREEN_TIMEOUT, |s| {
        s.contains("SENT▼")
            && matches!((row_of(s, big.port), row_of(s, small.port)), (Some(b), Some(m)) if b < m)
    });
    tmux.press("r");
    tmux.wait_for("sorted by SENT, smallest first", SCREEN_TIMEOUT, |s| {
        s.contains("SENT▲")
            && matches!((row_of(s, big.port), row_of(s, small.port)), (Some(b), Some(m)) if m < b)
    });

    // Filter by the small server's port: the other socket leaves the table.
    tmux.press("/");
    tmux.type_line(&small.port.to_string());
    tmux.wait_for("only the filtered port", SCREEN_TIMEOUT, |s| {
        s.contains(&format!("filter: {}", small.port))
            && s.contains("filtered)")
            && row_of(s, small.port).is_some()
            && row_of(s, big.port).is_none()
    });

    // Details: the last row, sorted smallest first, is the socket that sent (the server's
    // accepted end, when inbound sockets are tracked, sent nothing).
    tmux.press("End");
    tmux.press("Enter");
    let details = tmux.wait_for("the details view", SCREEN_TIMEOUT, |s| {
        s.contains(&format!("Socket {pid}/{small_fd}"))
            && s.contains(&format!("127.0.0.1:{}", small.port))
            && s.contains("1.0 KiB  (1024 bytes)")
            && s.contains("sent per second")
    });
    assert!(details.contains("names are off"), "{details}");
    tmux.press("Escape");
    tmux.wait_for("back to the table", SCREEN_TIMEOUT, |s| {
        s.contains("Open sockets") && row_of(s, small.port).is_some()
    });

    // Help lists the keys; Esc closes it.
    tmux.press("?");
    tmux.wait_for("the help overlay", SCREEN_TIMEOUT, |s| {
        s.contains(" Keys ") && s.contains("reverse the sort order")
    });
    tmux.press("Escape");
    tmux.wait_for("the help closed", SCREEN_TIMEOUT, |s| !s.contains(" Keys "));

    // Pause and resume.
    tmux.press("Space");
    tmux.wait_for("paused", SCREEN_TIMEOUT, |s| s.contains("PAUSED"));
    tmux.press("Space");
    tmux.wait_for("running again", SCREEN_TIMEOUT, |s| !s.contains("PAUSED"));

    // Esc clears the filter: both rows again.
    tmux.press("Escape");
    tmux.wait_for("the filter cleared", SCREEN_TIMEOUT, |s| {
        row_of(s, small.port).is_some() && row_of(s, big.port).is_some()
    });

    net::close(big_fd);
    net::close(small_fd);
    assert_eq!(big.next_total(), 3072);
    assert_eq!(small.next_total(), 1024);
    tmux.press("q");
    assert_terminal_restored(&tmux, &state_file);
}

/// An RTT as the TCP view prints it (`85us`, `1.25ms`, `1.50s`), in microseconds.
fn micros(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Some(us) = text.strip_suffix("us") {
        us.parse().ok()
    } else if let Some(ms) = text.strip_suffix("ms") {
        ms.parse::<f64>().ok().map(|ms| ms * 1e3)
    } else {
        text.strip_suffix('s')?.parse::<f64>().ok().map(|s| s * 1e6)
    }
}

/// The RTT cells of the table's rows, top to bottom: the column ends where its title does.
fn rtt_cells(screen: &str) -> Vec<String> {
    let table = screen.split("Closed (").next().unwrap_or_default();
    let mut lines = table.lines();
    let Some(end) = lines.by_ref().find_map(|line| {
        let chars: Vec<char> = line.chars().collect();
        let title: Vec<char> = "RTT▼".chars().collect();
        chars
            .windows(title.len())
            .position(|w| w == title.as_slice())
            .map(|at| at + title.len())
    }) else {
        return Vec::new();
    };
    lines
        .filter(|line| line.contains("127.0.0.1:"))
        .map(|line| {
            let chars: Vec<char> = line.chars().collect();
            chars[end.saturating_sub(8).min(chars.len())..end.min(chars.len())]
                .iter()
                .collect::<String>()
                .trim()
                .to_owned()
        })
        .collect()
}

#[test]
fn the_tcp_view_sorts_by_rtt_and_details_show_the_kernels_numbers() {
    support::assert_root();
    let tmux = Tmux::start("tcp", 120, 40);
    tmux.wait_for("shell prompt", SCREEN_TIMEOUT, |s| s.contains("e2e$"));
    let state_file = format!("/tmp/sockwatch-e2e-tcp-{}", std::process::id());
    tmux.type_line(&format!("stty -g > {state_file}.before; clear"));
    let pid = std::process::id();
    tmux.type_line(&format!("{BIN} --interval 200 --no-resolve --pid {pid}"));
    tmux.wait_for("the dashboard, scoped", SCREEN_TIMEOUT, |s| {
        s.contains("Open sockets") && s.contains(&format!("only pid {pid}"))
    });
    let servers = [net::CountingServer::start(), net::CountingServer::start()];
    let fds: Vec<i32> = servers
        .iter()
        .map(|server| {
            let fd = net::connected(server.port);
            net::sendto_all(fd, 100_000);
            fd
        })
        .collect();

    // `t`: the TCP view, slowest round trip first; every row has the kernel's RTT.
    tmux.press("t");
    let screen = tmux.wait_for(
        "the TCP view with an RTT on every row",
        SCREEN_TIMEOUT,
        |s| {
            let cells = rtt_cells(s);
            s.contains("HEALTH")
                && cells.len() >= 2
                && cells.iter().all(|cell| micros(cell).is_some())
        },
    );
    let rtts: Vec<f64> = rtt_cells(&screen)
        .iter()
        .filter_map(|cell| micros(cell))
        .collect();
    assert!(
        rtts.windows(2).all(|pair| pair[0] >= pair[1]),
        "not sorted by RTT, largest first: {rtts:?}\n{screen}"
    );

    // Details of the first row: what `ss -ti` shows, and the RTT history.
    tmux.press("Home");
    tmux.press("Enter");
    let details = tmux.wait_for("the details with TCP health", SCREEN_TIMEOUT, |s| {
        s.contains("rtt ")
            && s.contains("cwnd ")
            && s.contains("send-q ")
            && s.contains("rtt, last")
    });
    let local_port = details
        .lines()
        .find_map(|line| line.split("local port").nth(1))
        .map(|rest| rest.trim().trim_end_matches('│').trim().to_owned());
    let known: Vec<String> = fds
        .iter()
        .map(|&fd| net::local_port(fd).to_string())
        .chain(servers.iter().map(|server| server.port.to_string()))
        .collect();
    assert!(
        local_port.as_ref().is_some_and(|port| known.contains(port)),
        "local port {local_port:?} is none of {known:?}\n{details}"
    );
    tmux.press("Escape");

    // Two connects to a closed port, one blocking, one not: two lines in the close log, each
    // with its errno and how long the attempt took, and the header counts them as failed.
    let closed_port = net::closed_port();
    let blocking = net::tcp_socket(0);
    assert_eq!(net::connect(blocking, closed_port), libc::ECONNREFUSED);
    let nonblocking = net::tcp_socket(libc::SOCK_NONBLOCK);
    assert_eq!(net::connect(nonblocking, closed_port), libc::EINPROGRESS);
    net::wait_writable(nonblocking);
    net::close(nonblocking);
    net::close(blocking);
    let destination = format!("127.0.0.1:{closed_port} ");
    tmux.wait_for(
        "two refused connects in the log and the header",
        SCREEN_TIMEOUT,
        |s| {
            let log = s.split("Closed (").nth(1).unwrap_or_default();
            let refused = log
                .lines()
                .filter(|l| {
                    l.contains(&destination) && l.contains("ECONNREFUSED") && l.contains("connect ")
                })
                .count();
            let failed = s
                .split(" failed)")
                .next()
                .and_then(|head| head.rsplit('(').next())
                .and_then(|n| n.trim().parse::<u64>().ok());
            refused == 2 && failed.is_some_and(|n| n >= 2)
        },
    );

    for fd in fds {
        net::close(fd);
    }
    for server in &servers {
        assert_eq!(server.next_total(), 100_000);
    }
    tmux.press("q");
    assert_terminal_restored(&tmux, &state_file);
}

/// curl to a closed port (a non-blocking connect that fails after it returned): a line in the
/// close log with its errno and how long the attempt took, and a failed connect in the header.
#[test]
fn a_refused_curl_shows_in_the_close_log_and_the_header() {
    support::assert_root();
    let tmux = Tmux::start("curl", 120, 24);
    tmux.wait_for("shell prompt", SCREEN_TIMEOUT, |s| s.contains("e2e$"));
    let state_file = format!("/tmp/sockwatch-e2e-curl-{}", std::process::id());
    tmux.type_line(&format!("stty -g > {state_file}.before; clear"));
    let port = net::closed_port();
    tmux.type_line(&format!("{BIN} --interval 200 --no-resolve --port {port}"));
    tmux.wait_for("the dashboard, scoped", SCREEN_TIMEOUT, |s| {
        s.contains("Open sockets") && s.contains(&format!("only port {port}"))
    });
    let curl = support::process::output_within(
        std::process::Command::new("curl").args(["-s", &format!("http://127.0.0.1:{port}/")]),
        support::process::COMMAND_TIMEOUT,
        "curl",
    );
    assert_eq!(
        curl.status.code(),
        Some(7),
        "curl could not connect: {curl:?}"
    );
    let destination = format!("127.0.0.1:{port} ");
    tmux.wait_for(
        "curl's refused connect in the log and the header",
        SCREEN_TIMEOUT,
        |s| {
            let log = s.split("Closed (").nth(1).unwrap_or_default();
            let line = log
                .lines()
                .find(|l| l.contains(&destination) && l.contains("curl"));
            line.is_some_and(|l| l.contains("ECONNREFUSED") && l.contains("connect "))
                && !s.contains(" (0 failed)")
                && s.contains(" failed)")
        },
    );
    tmux.press("q");
    assert_terminal_restored(&tmux, &state_file);
}

/// A live `--json --json-samples` run recorded, then played back in the dashboard (no root
/// needed, nothing attached): once played, the header's totals are the run's `end` record's,
/// the socket still open at the end shows with the bytes its `open` record had, and the
/// closed one is in the close log with the bytes the server received.
#[test]
fn a_recorded_run_replays_with_the_same_rows_and_totals() {
    support::assert_root();
    let pid = std::process::id();
    let mut sw = support::Sockwatch::start(&["--json-samples"]);
    let server = net::CountingServer::start();
    let kept = net::connected(server.port);
    net::sendto_all(kept, 5000);
    let closed = net::connected(server.port);
    net::sendto_all(closed, 777);
    net::close(closed);
    assert_eq!(server.next_total(), 777);
    sw.wait_for("a sample of the kept socket", |r| {
        support::record_of("sample", pid, kept)(r) && r["bytes_sent"] == 5000
    });
    let mut records = vec![sw.start.clone()];
    records.extend(sw.stop());
    net::close(kept);
    let end = records.last().expect("an end record").clone();
    assert_eq!(end["event"], "end");
    let recording = format!("/tmp/sockwatch-e2e-replay-{pid}.ndjson");
    let lines: Vec<String> = records.iter().map(ToString::to_string).collect();
    std::fs::write(&recording, lines.join("\n") + "\n").expect("writing the recording");

    let tmux = Tmux::start("replay", 150, 30);
    tmux.wait_for("shell prompt", SCREEN_TIMEOUT, |s| s.contains("e2e$"));
    let state_file = format!("/tmp/sockwatch-e2e-replay-{pid}");
    tmux.type_line(&format!("stty -g > {state_file}.before; clear"));
    tmux.type_line(&format!(
        "{BIN} --replay {recording} --no-resolve --pid {pid}"
    ));
    let totals = format!(
        "connects: {} ({} failed)",
        end["connects"], end["failed_connects"]
    );
    let destination = format!("127.0.0.1:{}", server.port);
    let closes = format!(
        "closes: {}",
        records.iter().filter(|r| r["event"] == "close").count()
    );
    let screen = tmux.wait_for("the replay's end", SCREEN_TIMEOUT, |s| {
        s.contains("replay ended") && s.contains(&totals) && s.contains(&closes)
    });
    let table = screen.split("Closed (").next().unwrap_or_default();
    let log = screen.split("Closed (").nth(1).unwrap_or_default();
    let kept_row = format!("{pid} ");
    assert!(
        table.lines().any(|l| {
            l.contains(&kept_row) && l.contains(&destination) && l.contains("4.9 KiB")
        }),
        "the open socket's row:\n{screen}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(&destination) && l.contains("777 B")),
        "the closed socket in the log:\n{screen}"
    );
    tmux.press("q");
    assert_terminal_restored(&tmux, &state_file);
    let _ = std::fs::remove_file(&recording);
}
