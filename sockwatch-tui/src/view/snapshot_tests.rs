//! Snapshot tests of whole frames at fixed sizes. Time is injected (a zero wall-clock offset
//! and fixed kernel timestamps), so frames are deterministic without scrubbing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ratatui::{
    backend::TestBackend,
    style::{Color, Modifier},
    Terminal,
};

use super::{
    filter::Scope,
    render as view,
    state::{ViewAction, ViewOptions, ViewState},
    Dashboard, Message,
};
use crate::{
    clock::WallClock,
    kernel::{diag::Readings, loader::KernelCounters, tracker::Change},
    model::{
        dns::{Answer, HostNames, Outcome},
        Action, HealthRead, Model,
    },
    socket::{
        CloseCause, Closed, ClosedBy, Families, Origin, Process, Proto, Socket, SocketKey, State,
        TcpDetail, TcpHealth, TcpReading,
    },
};

const SEC: u64 = 1_000_000_000;
const DB: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

/// A TCP socket connected at 10 s by thread pid + 1 (its `socket()` call was seen: the
/// protocol is known).
fn socket(pid: u32, fd: u32, comm: &str, addr: impl Into<IpAddr>, port: u16) -> Socket {
    let mut socket = Socket::new(SocketKey { pid, fd }, 10 * SEC, addr, port, comm);
    socket.tid = pid + 1;
    socket.proto = Proto::Tcp;
    socket
}

fn tracked(
    pid: u32,
    fd: u32,
    comm: &str,
    addr: Ipv4Addr,
    port: u16,
    sent: u64,
    recv: u64,
) -> Socket {
    let mut socket = socket(pid, fd, comm, addr, port);
    socket.bytes_sent = sent;
    socket.bytes_recv = recv;
    socket
}

fn change(dashboard: &mut Dashboard, change: Change) {
    dashboard.update(Message::Model(Action::Change(change)));
}

fn closed(socket: &mut Socket, at_ns: u64, sent: u64, recv: u64, cause: CloseCause) {
    let tid = socket.pid();
    socket.close(Closed { at_ns, tid, cause }, sent, recv);
}

/// Three open sockets with a minute of history, one close, one failed connect, names for two
/// destinations, three lost events, one socket repaired by reconciliation.
fn busy_model() -> Dashboard {
    let mut model = Model::new("tracepoint");
    model.hosts = HostNames::new(true);
    let mut dashboard = Dashboard::new(model, ViewState::default());
    act(
        &mut dashboard,
        &[ViewAction::Resize {
            width: 110,
            height: 20,
        }],
    );
    // python3 runs as a systemd service, ssh in a container (pid 12 in it); curl was gone
    // before it could be read, and nc and worker were not read.
    let container = "3f2a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef";
    for (pid, process) in [
        (
            1300,
            Some(Process::parse(
                1300,
                "0::/system.slice/orders-api.service\n",
                "",
            )),
        ),
        (
            1500,
            Some(Process::parse(
                1500,
                &format!("0::/system.slice/docker-{container}.scope\n"),
                "NSpid:\t1500\t12\n",
            )),
        ),
        (1200, None),
    ] {
        dashboard.update(Message::Model(Action::Process {
            pid,
            process,
            now_ns: 0,
        }));
    }
    let mut curl = socket(1200, 5, "curl", WEB, 80);
    curl.state = State::Connecting;
    change(&mut dashboard, Change::Opened(curl.clone()));
    for (pid, fd, comm, addr, port) in [
        (1300, 7, "python3", DB, 5432),
        (1300, 8, "python3", Ipv4Addr::LOCALHOST, 6379),
        (1500, 4, "ssh", WEB, 22),
    ] {
        change(
            &mut dashboard,
            Change::Opened(socket(pid, fd, comm, addr, port)),
        );
    }
    let mut refused = socket(1400, 3, "nc", Ipv4Addr::LOCALHOST, 9);
    refused.set_connect_us(Some(45));
    change(
        &mut dashboard,
        Change::Failed {
            socket: refused,
            errno: libc::ECONNREFUSED,
        },
    );
    closed(&mut curl, 12 * SEC, 78, 1500, CloseCause::Close);
    curl.closed_by = Some(ClosedBy::Peer);
    curl.set_connect_us(Some(1_250));
    change(&mut dashboard, Change::Closed(curl));
    // A socket open at start that the check against /proc found gone: one repair.
    let mut repaired = socket(1600, 9, "worker", DB, 5432);
    repaired.origin = Origin::Existing;
    change(&mut dashboard, Change::Opened(repaired.clone()));
    closed(&mut repaired, 13 * SEC, 0, 0, CloseCause::Reconciled);
    change(&mut dashboard, Change::Closed(repaired));
    // A minute of one map read a second: the database socket sends in waves.
    let (mut db_sent, mut db_recv) = (0u64, 0u64);
    for second in 11..=75u64 {
        db_sent += (second % 10) * 4096;
        db_recv += (10 - second % 10) * 1024;
        dashboard.update(Message::Model(Action::Snapshot {
            map: vec![
                tracked(1300, 7, "python3", DB, 5432, db_sent, db_recv),
                tracked(1300, 8, "python3", Ipv4Addr::LOCALHOST, 6379, 512, 2048),
                tracked(
                    1500,
                    4,
                    "ssh",
                    WEB,
                    22,
                    3 * 1024 * 1024 + 100 + second * 100,
                    0,
                ),
            ],
            now_ns: second * SEC,
        }));
        if second == 11 {
            for (addr, name) in [
                (DB, Some("db.internal")),
                (Ipv4Addr::LOCALHOST, Some("localhost")),
                (WEB, None),
            ] {
                dashboard.update(Message::Model(Action::HostName(Answer {
                    addr: addr.into(),
                    outcome: name.map_or(Outcome::NoName, |n| Outcome::Name(n.into())),
                })));
            }
        }
    }
    dashboard.update(Message::Model(Action::Counters(KernelCounters {
        ringbuf_drops: 3,
        ..KernelCounters::default()
    })));
    dashboard
}

fn act(dashboard: &mut Dashboard, actions: &[ViewAction]) {
    for &action in actions {
        dashboard.update(Message::View(action));
    }
}

fn terminal(model: &Dashboard, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal
        .draw(|frame| view(model, &WallClock::default(), frame))
        .expect("drawn");
    terminal
}

fn render(model: &Dashboard, width: u16, height: u16) -> String {
    terminal(model, width, height).backend().to_string()
}

#[test]
fn dashboard_with_open_and_closed_sockets() {
    insta::assert_snapshot!(render(&busy_model(), 110, 20));
}

/// A recorded `--json --json-samples` run (python3 keeping one connection and closing another,
/// curl refused), played to its end as `--replay` does: the rows, rates and close log it had,
/// at the recorded wall-clock times (UTC here).
#[test]
fn a_recording_replayed_to_its_end() {
    let recording = crate::replay::parse(include_str!("../../tests/fixtures/recording.ndjson"))
        .expect("the fixture is a recording");
    let mut dashboard = Dashboard::new(Model::new(recording.probe.clone()), ViewState::default());
    act(
        &mut dashboard,
        &[ViewAction::Resize {
            width: 110,
            height: 20,
        }],
    );
    for (_, action) in recording.steps {
        dashboard.update(Message::Model(action));
    }
    dashboard.view.replay = Some(crate::view::state::Replaying {
        speed: 1.0,
        paused: false,
        ended: true,
    });
    let mut clock = recording.clock;
    clock.utc_offset_secs = 0;
    let mut terminal = Terminal::new(TestBackend::new(110, 20)).expect("test terminal");
    terminal
        .draw(|frame| view(&dashboard, &clock, frame))
        .expect("drawn");
    insta::assert_snapshot!(terminal.backend().to_string());
}

/// IPv6 rows beside an IPv4 one: `[address]:port`, compressed as RFC 5952 says; at 80 columns
/// a long address gives way at its start and keeps its port.
#[test]
fn ipv6_rows_show_their_addresses_in_brackets() {
    let mut dashboard = Dashboard::new(Model::new("socket"), ViewState::default());
    let documentation = Ipv6Addr::new(0x2001, 0xdb8, 0x85a3, 0, 0, 0x8a2e, 0x370, 0x7334);
    for (pid, fd, comm, addr, port) in [
        (2100, 5, "node", IpAddr::V6(Ipv6Addr::LOCALHOST), 8080),
        (2100, 6, "node", IpAddr::V6(documentation), 443),
        (2200, 4, "curl", IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
    ] {
        change(
            &mut dashboard,
            Change::Opened(socket(pid, fd, comm, addr, port)),
        );
    }
    for width in [80, 160] {
        act(&mut dashboard, &[ViewAction::Resize { width, height: 14 }]);
        insta::assert_snapshot!(
            format!("ipv6_rows_at_{width}_columns"),
            render(&dashboard, width, 14)
        );
    }
}

/// Wide enough, the table shows each row's owner: a unit, a container's short id, `-` where
/// the process was not read.
#[test]
fn owners_at_160_columns() {
    let mut model = busy_model();
    act(
        &mut model,
        &[ViewAction::Resize {
            width: 160,
            height: 16,
        }],
    );
    insta::assert_snapshot!(render(&model, 160, 16));
}

/// The details of a container's socket: the id in full, the cgroup, and the pid inside.
#[test]
fn details_of_a_containers_socket() {
    let mut model = busy_model();
    act(
        &mut model,
        &[
            ViewAction::Resize {
                width: 110,
                height: 30,
            },
            ViewAction::FilterStart,
        ],
    );
    for c in "unit:docker".chars() {
        act(&mut model, &[ViewAction::FilterChar(c)]);
    }
    act(&mut model, &[ViewAction::FilterDone, ViewAction::Open]);
    insta::assert_snapshot!(render(&model, 110, 30));
}

/// `-6`: the header says so in place of IPv4+IPv6 (and not again among the modes of its second
/// line). The kernel tracks no IPv4 socket then: the rows are IPv6 ones.
#[test]
fn ipv6_only_says_so_in_the_header() {
    let options = ViewOptions {
        scope: Scope {
            families: Families::Ipv6,
            ..Scope::default()
        },
        color: true,
        ..ViewOptions::default()
    };
    let mut dashboard = Dashboard::new(Model::new("socket"), ViewState::new(options));
    for (pid, fd, comm, addr, port) in [
        (2100, 5, "node", Ipv6Addr::LOCALHOST, 8080),
        (
            2200,
            4,
            "curl",
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5),
            443,
        ),
    ] {
        change(
            &mut dashboard,
            Change::Opened(socket(pid, fd, comm, addr, port)),
        );
    }
    act(
        &mut dashboard,
        &[ViewAction::Resize {
            width: 80,
            height: 14,
        }],
    );
    insta::assert_snapshot!(render(&dashboard, 80, 14));
}

#[test]
fn empty_dashboard() {
    let empty = Dashboard::new(Model::new("kprobe"), ViewState::default());
    insta::assert_snapshot!(render(&empty, 80, 14));
}

#[test]
fn tiny_terminal_gets_a_notice() {
    insta::assert_snapshot!(render(&busy_model(), 40, 6));
}

#[test]
fn narrow_terminal_keeps_the_important_columns() {
    let mut model = busy_model();
    act(
        &mut model,
        &[ViewAction::Resize {
            width: 72,
            height: 16,
        }],
    );
    insta::assert_snapshot!(render(&model, 72, 16));
}

#[test]
fn sorted_by_process_name_marks_the_column() {
    let mut model = busy_model();
    // SEND/s → ... → COMM is ten steps back (past OWNER); COMM sorts A to Z first, then reversed.
    act(&mut model, &[ViewAction::SortPrevious; 10]);
    act(&mut model, &[ViewAction::SortReverse]);
    insta::assert_snapshot!(render(&model, 110, 20));
}

#[test]
fn filter_being_typed_narrows_the_table() {
    let mut model = busy_model();
    act(&mut model, &[ViewAction::FilterStart]);
    for c in "python 6379 pid:x".chars() {
        act(&mut model, &[ViewAction::FilterChar(c)]);
    }
    insta::assert_snapshot!(render(&model, 110, 20));
}

#[test]
fn a_filter_that_matches_nothing_says_so() {
    let mut model = busy_model();
    act(&mut model, &[ViewAction::FilterStart]);
    for c in "nothing-like-this".chars() {
        act(&mut model, &[ViewAction::FilterChar(c)]);
    }
    act(&mut model, &[ViewAction::FilterDone]);
    insta::assert_snapshot!(render(&model, 110, 20));
}

#[test]
fn help_overlay_lists_every_key() {
    let mut model = busy_model();
    act(&mut model, &[ViewAction::ToggleHelp]);
    insta::assert_snapshot!(render(&model, 110, 30));
}

#[test]
fn details_of_a_socket_with_its_history() {
    let mut model = busy_model();
    act(
        &mut model,
        &[
            ViewAction::Resize {
                width: 110,
                height: 30,
            },
            ViewAction::Open,
        ],
    );
    insta::assert_snapshot!(render(&model, 110, 30));
}

/// `o`: a row per unit or container (and one for processes not read), their processes and
/// sockets summed.
#[test]
fn grouped_by_owner() {
    let mut model = busy_model();
    act(&mut model, &[ViewAction::ToggleOwners]);
    insta::assert_snapshot!(render(&model, 110, 20));
}

/// With `--metrics`, the header says where the endpoint serves.
#[test]
fn the_header_says_where_metrics_are_served() {
    let mut model = busy_model();
    model.view.metrics = Some("127.0.0.1:9911".into());
    let screen = render(&model, 110, 20);
    assert!(
        screen
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("· metrics 127.0.0.1:9911")),
        "{screen}"
    );
}

#[test]
fn grouped_by_process() {
    let mut model = busy_model();
    act(&mut model, &[ViewAction::ToggleGrouping]);
    insta::assert_snapshot!(render(&model, 110, 20));
}

#[test]
fn paused_following_with_closed_sockets_lingering() {
    let mut model = busy_model();
    act(
        &mut model,
        &[
            ViewAction::ToggleLinger,
            ViewAction::ToggleNames,
            ViewAction::Bottom,
            ViewAction::Follow,
        ],
    );
    // The close shows while it lingers (5 s): make it recent.
    let mut gone = socket(1300, 8, "python3", Ipv4Addr::LOCALHOST, 6379);
    closed(&mut gone, 74 * SEC, 512, 2048, CloseCause::Exit);
    change(&mut model, Change::Closed(gone));
    act(&mut model, &[ViewAction::TogglePause]);
    insta::assert_snapshot!(render(&model, 110, 20));
}

#[test]
fn selected_row_is_reversed_and_the_log_pane_takes_focus() {
    let mut model = busy_model();
    act(&mut model, &[ViewAction::Down, ViewAction::SwitchPane]);
    let terminal = terminal(&model, 110, 20);
    let buffer = terminal.backend().buffer();
    let line_of = |needle: &str| {
        (0..buffer.area.height)
            .find(|&y| {
                let text: String = (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect();
                text.contains(needle)
            })
            .expect("on screen")
    };
    // Sorted by send rate: the database socket, then ssh (100 B/s), then 6379 (idle).
    let selected = line_of("93.184.216.34:22");
    assert!(buffer[(2, selected)].modifier.contains(Modifier::REVERSED));
    assert!(!buffer[(2, line_of("db.internal:5432"))]
        .modifier
        .contains(Modifier::REVERSED));
}

#[test]
fn no_color_means_no_colours_only_emphasis() {
    let has_colour = |model: &Dashboard| {
        let terminal = terminal(model, 110, 20);
        let buffer = terminal.backend().buffer();
        buffer
            .content
            .iter()
            .any(|cell| cell.fg != Color::Reset || cell.bg != Color::Reset)
    };
    let mut model = busy_model();
    assert!(has_colour(&model));
    model.view = ViewState::new(ViewOptions {
        color: false,
        ..ViewOptions::default()
    });
    act(
        &mut model,
        &[ViewAction::Resize {
            width: 110,
            height: 20,
        }],
    );
    assert!(!has_colour(&model));
    // Emphasis remains: the selected row is still reversed.
    let terminal = terminal(&model, 110, 20);
    assert!(terminal
        .backend()
        .buffer()
        .content
        .iter()
        .any(|cell| cell.modifier.contains(Modifier::REVERSED)));
}

#[test]
fn every_size_renders_without_panicking() {
    let mut model = busy_model();
    for (overlay, width, height) in [
        (None, 1, 1),
        (None, 59, 11),
        (None, 60, 12),
        (Some(ViewAction::ToggleHelp), 60, 12),
        (Some(ViewAction::Open), 60, 12),
        (Some(ViewAction::ToggleGrouping), 61, 13),
        (None, 300, 100),
    ] {
        let mut model = model.clone();
        act(&mut model, &[ViewAction::Resize { width, height }]);
        if let Some(action) = overlay {
            act(&mut model, &[action]);
        }
        let _ = render(&model, width, height);
    }
    act(&mut model, &[ViewAction::Open]);
    let _ = render(&model, 60, 12);
}

/// A forking server's accepted socket under its worker, and a socket no process is known to
/// hold: `-` where the holder is not known, never a made-up pid or fd.
#[test]
fn handed_off_sockets_show_their_holder_or_a_dash() {
    let mut dashboard = Dashboard::new(Model::new("socket"), ViewState::default());
    act(
        &mut dashboard,
        &[ViewAction::Resize {
            width: 110,
            height: 14,
        }],
    );
    let mut accepted = socket(2000, 6, "socat", Ipv4Addr::LOCALHOST, 41000);
    accepted.direction = crate::socket::Direction::In;
    let passed = socket(2000, 7, "socat", DB, 5432);
    for opened in [accepted.clone(), passed.clone()] {
        change(&mut dashboard, Change::Opened(opened));
    }
    let worker = SocketKey { pid: 2001, fd: 6 };
    let nobody = SocketKey {
        pid: crate::socket::NO_HOLDER,
        fd: 1,
    };
    for (from, to, comm) in [(accepted.id, worker, "socat"), (passed.id, nobody, "socat")] {
        let comm = comm.into();
        change(&mut dashboard, Change::Moved { from, to, comm });
    }
    insta::assert_snapshot!(render(&dashboard, 110, 14));
}

/// The details of a socket a forked worker holds too list both holders.
#[test]
fn details_list_every_holder_of_a_shared_socket() {
    let mut dashboard = Dashboard::new(Model::new("socket"), ViewState::default());
    let mut shared = socket(2000, 6, "socat", Ipv4Addr::LOCALHOST, 41000);
    shared.set_inode(Some(4242));
    change(&mut dashboard, Change::Opened(shared.clone()));
    let holders = vec![shared.key(), SocketKey { pid: 2001, fd: 6 }];
    let id = shared.id;
    change(&mut dashboard, Change::Holders { id, holders });
    act(
        &mut dashboard,
        &[
            ViewAction::Resize {
                width: 80,
                height: 24,
            },
            ViewAction::Open,
        ],
    );
    let screen = render(&dashboard, 80, 24);
    assert!(
        screen.contains("held by") && screen.contains("pid 2000 fd 6, pid 2001 fd 6"),
        "{screen}"
    );
    insta::assert_snapshot!(screen);
}

/// The sockets of `busy_model` with two TCP readings a second apart: the database socket
/// retransmits, the redis socket's app stops reading (Recv-Q grows), ssh's peer stops reading
/// (zero window).
fn with_tcp_health() -> Dashboard {
    let mut dashboard = busy_model();
    let sockets = [
        (SocketKey { pid: 1300, fd: 7 }, 41),
        (SocketKey { pid: 1300, fd: 8 }, 42),
        (SocketKey { pid: 1500, fd: 4 }, 43),
    ];
    for (key, inode) in sockets {
        if let Some(socket) = dashboard.model.open.get_mut(&key) {
            socket.set_inode(Some(inode));
            socket.set_connect_us(Some(inode * 10));
        }
    }
    let reading = |second: u64| {
        let db = TcpHealth {
            state: 1,
            rtt_us: 1_250,
            rttvar_us: 300,
            cwnd: if second == 0 { 10 } else { 5 },
            retrans: if second == 0 { 0 } else { 4 },
            ..TcpHealth::default()
        };
        let redis = TcpHealth {
            state: 1,
            rtt_us: 45,
            cwnd: 10,
            recv_q: 100 + second as u32 * 4000,
            ..TcpHealth::default()
        };
        let ssh = TcpHealth {
            state: 1,
            rtt_us: 85_000,
            rttvar_us: 2_000,
            cwnd: 24,
            send_q: 2_500_000,
            zero_window: true,
            ..TcpHealth::default()
        };
        let by_inode = [(41, db, 40_100), (42, redis, 40_200), (43, ssh, 40_300)]
            .into_iter()
            .map(|(inode, health, lport)| (inode, TcpReading { health, lport }))
            .collect();
        Readings {
            by_inode,
            ..Readings::default()
        }
    };
    for second in 0..2 {
        dashboard.update(Message::Model(Action::Health {
            readings: reading(second),
            detail_of: None,
            now_ns: (75 + second) * SEC,
            cost_ns: 1_000_000,
            every_ns: 100_000_000,
        }));
    }
    dashboard
}

#[test]
fn tcp_view_shows_health_sorted_by_rtt() {
    let mut model = with_tcp_health();
    act(&mut model, &[ViewAction::ToggleTcp]);
    let screen = render(&model, 110, 20);
    insta::assert_snapshot!(screen);
    // At 80 columns the marks and round trips stay.
    act(
        &mut model,
        &[ViewAction::Resize {
            width: 80,
            height: 16,
        }],
    );
    insta::assert_snapshot!(render(&model, 80, 16));
}

#[test]
fn the_health_filter_keeps_troubled_sockets() {
    let mut model = with_tcp_health();
    act(
        &mut model,
        &[ViewAction::ToggleTcp, ViewAction::FilterStart],
    );
    for c in "health:peer".chars() {
        act(&mut model, &[ViewAction::FilterChar(c)]);
    }
    act(&mut model, &[ViewAction::FilterDone]);
    let screen = render(&model, 110, 20);
    assert!(screen.contains("peer-stall"), "{screen}");
    assert!(
        !screen.contains("app-stall") && !screen.contains("retrans "),
        "{screen}"
    );
}

#[test]
fn details_show_what_ss_ti_shows_with_the_rtt_history() {
    let mut model = with_tcp_health();
    act(
        &mut model,
        &[
            ViewAction::ToggleTcp,
            ViewAction::Resize {
                width: 100,
                height: 34,
            },
            ViewAction::Open,
        ],
    );
    let screen = render(&model, 100, 34);
    assert!(screen.contains("peer is not reading"), "{screen}");
    // Read before it was shown: what the row keeps, and when the rest comes.
    assert!(
        screen.contains("cwnd 24  peer") || screen.contains("cwnd 24 "),
        "{screen}"
    );
    assert!(screen.contains("come with the next reading"), "{screen}");
    // The next reading while it is shown brings the whole of it.
    let ssh = model.view.details.expect("the details of ssh");
    let mut readings = Readings {
        by_inode: model
            .model
            .open
            .values()
            .filter_map(|s| {
                Some((
                    s.inode()?,
                    TcpReading {
                        health: s.tcp?,
                        lport: s.lport,
                    },
                ))
            })
            .collect(),
        ..Readings::default()
    };
    readings.detail = Some(TcpDetail {
        min_rtt_us: 80_000,
        rto_us: 290_000,
        snd_mss: 1448,
        ssthresh: 0x7fff_ffff,
        unacked: 20,
        pacing_rate: 2_000_000,
        delivery_rate: 1_500_000,
        bytes_acked: 3_000_000,
        busy_us: 64_000_000,
        rwnd_limited_us: 12_000_000,
        ..TcpDetail::default()
    });
    model.update(Message::Model(Action::Health {
        readings,
        detail_of: Some(ssh),
        now_ns: 77 * SEC,
        cost_ns: 1_000_000,
        every_ns: 100_000_000,
    }));
    let screen = render(&model, 100, 34);
    assert!(!screen.contains("come with the next reading"), "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn details_say_how_old_a_health_reading_is_when_reads_are_spaced_out() {
    let mut model = with_tcp_health();
    act(
        &mut model,
        &[
            ViewAction::ToggleTcp,
            ViewAction::Resize {
                width: 120,
                height: 34,
            },
            ViewAction::Open,
        ],
    );
    // A reading as fresh as the table says nothing.
    assert!(!render(&model, 120, 34).contains("so it is read every"));
    // A read that took 100 ms, 3 s before the latest map read: read every 10 s.
    let now_ns = model.model.now_ns;
    model.model.health_read = Some(HealthRead {
        at_ns: now_ns - 3 * SEC,
        cost_ns: 100_000_000,
        every_ns: 10 * SEC,
    });
    let screen = render(&model, 120, 34);
    assert!(
        screen.contains("3s ago: a read of every TCP socket takes 100ms, so it is read every 10s"),
        "{screen}"
    );
}
