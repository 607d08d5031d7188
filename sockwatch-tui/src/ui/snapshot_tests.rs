//! Snapshot tests of whole frames at a fixed size. Time is injected (a zero wall-clock offset
//! and fixed kernel timestamps), so frames are deterministic without scrubbing.

use std::net::Ipv4Addr;

use ratatui::{backend::TestBackend, Terminal};
use sockwatch_common::SocketKey;

use super::view;
use crate::{
    clock::WallClock,
    events::{
        CloseCause, CloseEvent, ConnectEvent, ConnectResult, Endpoint, KernelEvent, TrackedEntry,
    },
    reducer::{Action, KernelCounters, Model},
};

const SEC: u64 = 1_000_000_000;

fn endpoint(pid: u32, fd: u32, comm: &str, port: u16) -> Endpoint {
    Endpoint::new(
        SocketKey { pid, fd },
        Ipv4Addr::new(127, 0, 0, 1),
        port,
        comm,
    )
}

fn busy_model() -> Model {
    let mut model = Model::new("tracepoint");
    for (pid, fd, comm, port, result) in [
        (1200, 5, "curl", 8080, ConnectResult::InProgress),
        (1300, 7, "python3", 5432, ConnectResult::Ok),
        (1300, 8, "python3", 6379, ConnectResult::Ok),
        (1400, 3, "nc", 9, ConnectResult::Failed(libc::ECONNREFUSED)),
    ] {
        model.update(Action::Kernel(KernelEvent::Connect(ConnectEvent {
            socket: endpoint(pid, fd, comm, port),
            tid: pid + 1,
            result,
            ts_ns: 10 * SEC,
        })));
    }
    model.update(Action::Kernel(KernelEvent::Close(CloseEvent {
        socket: endpoint(1200, 5, "curl", 8080),
        tid: 1200,
        connect_tid: 1201,
        ts_ns: 12 * SEC,
        connect_ns: 10 * SEC,
        bytes_sent: 78,
        bytes_recv: 0,
        cause: CloseCause::Close,
        preexisting: false,
    })));
    model.update(Action::Snapshot {
        entries: vec![
            TrackedEntry {
                socket: endpoint(1300, 7, "python3", 5432),
                tid: 1301,
                connect_ns: 10 * SEC,
                bytes_sent: 3 * 1024 * 1024 + 100,
                bytes_recv: 0,
                established: true,
                preexisting: false,
            },
            TrackedEntry {
                socket: endpoint(1300, 8, "python3", 6379),
                tid: 1301,
                connect_ns: 10 * SEC,
                bytes_sent: 512,
                bytes_recv: 0,
                established: true,
                preexisting: false,
            },
        ],
        now_ns: 75 * SEC,
    });
    model.update(Action::Counters(KernelCounters {
        ringbuf_drops: 3,
        ..KernelCounters::default()
    }));
    model
}

fn render(model: &Model, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal
        .draw(|frame| view(model, &WallClock::default(), frame))
        .expect("drawn");
    terminal.backend().to_string()
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
fn selection_moves_and_the_log_pane_takes_focus() {
    let mut model = busy_model();
    model.update(Action::Down);
    model.update(Action::SwitchPane);
    let mut terminal = Terminal::new(TestBackend::new(110, 20)).expect("test terminal");
    terminal
        .draw(|frame| view(&model, &WallClock::default(), frame))
        .expect("drawn");
    let buffer = terminal.backend().buffer();
    // The second row (pid 1300, fd 8) is highlighted: find its line and check the style.
    let line = (0..buffer.area.height)
        .find(|&y| {
            let text: String = (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect();
            text.contains("6379")
        })
        .expect("row on screen");
    let cell = &buffer[(2, line)];
    assert!(
        cell.modifier.contains(ratatui::style::Modifier::REVERSED),
        "selected row reversed"
    );
}
