//! Snapshot tests of whole frames at fixed sizes. Time is injected (a zero wall-clock offset
//! and fixed kernel timestamps), so frames are deterministic without scrubbing.

use std::net::Ipv4Addr;

use ratatui::{
    backend::TestBackend,
    style::{Color, Modifier},
    Terminal,
};
use sockwatch_common::SocketKey;

use super::view;
use crate::{
    clock::WallClock,
    dns::{Answer, HostNames, Outcome},
    events::{
        CloseCause, CloseEvent, ConnectEvent, ConnectResult, Endpoint, KernelEvent, TrackedEntry,
    },
    reducer::{Action, KernelCounters, Model},
    view_state::{ViewAction, ViewOptions, ViewState},
};

const SEC: u64 = 1_000_000_000;
const DB: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

fn endpoint(pid: u32, fd: u32, comm: &str, addr: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint::new(SocketKey { pid, fd }, addr, port, comm)
}

fn tracked(
    pid: u32,
    fd: u32,
    comm: &str,
    addr: Ipv4Addr,
    port: u16,
    sent: u64,
    recv: u64,
) -> TrackedEntry {
    TrackedEntry {
        socket: endpoint(pid, fd, comm, addr, port),
        tid: pid + 1,
        connect_ns: 10 * SEC,
        bytes_sent: sent,
        bytes_recv: recv,
        established: true,
        preexisting: false,
    }
}

/// Three open sockets with a minute of history, one close, one failed connect, names for two
/// destinations, three lost events, one socket repaired by reconciliation.
fn busy_model() -> Model {
    let mut model = Model::new("tracepoint");
    model.hosts = HostNames::new(true);
    model.update(Action::View(ViewAction::Resize {
        width: 110,
        height: 20,
    }));
    for (pid, fd, comm, addr, port, result) in [
        (1200, 5, "curl", WEB, 80, ConnectResult::InProgress),
        (1300, 7, "python3", DB, 5432, ConnectResult::Ok),
        (
            1300,
            8,
            "python3",
            Ipv4Addr::LOCALHOST,
            6379,
            ConnectResult::Ok,
        ),
        (
            1400,
            3,
            "nc",
            Ipv4Addr::LOCALHOST,
            9,
            ConnectResult::Failed(libc::ECONNREFUSED),
        ),
        (1500, 4, "ssh", WEB, 22, ConnectResult::Ok),
    ] {
        model.update(Action::Kernel(KernelEvent::Connect(ConnectEvent {
            socket: endpoint(pid, fd, comm, addr, port),
            tid: pid + 1,
            result,
            ts_ns: 10 * SEC,
        })));
    }
    model.update(Action::Kernel(KernelEvent::Close(CloseEvent {
        socket: endpoint(1200, 5, "curl", WEB, 80),
        tid: 1200,
        connect_tid: 1201,
        ts_ns: 12 * SEC,
        connect_ns: 10 * SEC,
        bytes_sent: 78,
        bytes_recv: 1500,
        cause: CloseCause::Close,
        preexisting: false,
    })));
    // A minute of one snapshot a second: the database socket sends in waves.
    let (mut db_sent, mut db_recv) = (0u64, 0u64);
    for second in 11..=75u64 {
        db_sent += (second % 10) * 4096;
        db_recv += (10 - second % 10) * 1024;
        model.update(Action::Snapshot {
            entries: vec![
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
        });
        if second == 11 {
            for (addr, name) in [
                (DB, Some("db.internal")),
                (Ipv4Addr::LOCALHOST, Some("localhost")),
                (WEB, None),
            ] {
                model.update(Action::HostName(Answer {
                    addr,
                    outcome: name.map_or(Outcome::NoName, |n| Outcome::Name(n.into())),
                }));
            }
        }
    }
    model.update(Action::Counters(KernelCounters {
        ringbuf_drops: 3,
        repairs: 1,
        ..KernelCounters::default()
    }));
    model
}

fn act(model: &mut Model, actions: &[ViewAction]) {
    for &action in actions {
        model.update(Action::View(action));
    }
}

fn terminal(model: &Model, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal
        .draw(|frame| view(model, &WallClock::default(), frame))
        .expect("drawn");
    terminal
}

fn render(model: &Model, width: u16, height: u16) -> String {
    terminal(model, width, height).backend().to_string()
}

#[test]
fn dashboard_with_open_and_closed_sockets() {
    insta::assert_snapshot!(render(&busy_model(), 110, 20));
}

#[test]
fn empty_dashboard() {
    insta::assert_snapshot!(render(&Model::new("kprobe"), 80, 14));
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
    // SEND/s → ... → COMM is nine steps back; COMM sorts A to Z first, then reversed.
    act(&mut model, &[ViewAction::SortPrevious; 9]);
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
    model.update(Action::Kernel(KernelEvent::Close(CloseEvent {
        socket: endpoint(1300, 8, "python3", Ipv4Addr::LOCALHOST, 6379),
        tid: 1300,
        connect_tid: 1301,
        ts_ns: 74 * SEC,
        connect_ns: 10 * SEC,
        bytes_sent: 512,
        bytes_recv: 2048,
        cause: CloseCause::Exit,
        preexisting: false,
    })));
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
    let has_colour = |model: &Model| {
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
