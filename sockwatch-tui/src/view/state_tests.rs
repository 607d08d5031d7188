//! The view state through the reducer: every test drives `Model::update` with actions, as the
//! app does, and checks what the table would show.

use std::net::Ipv4Addr;

use super::*;
use crate::{
    kernel::tracker::Change,
    model::{
        dns::{Answer, HostNames, Outcome},
        Action,
    },
    socket::{CloseCause, Closed, SocketKey},
    view::{Dashboard, Message},
};

const SEC: u64 = 1_000_000_000;

/// A socket of the fixture: (pid, fd, comm, port).
type Spec = (u32, u32, &'static str, u16);

const CURL_A: Spec = (100, 3, "curl", 443);
const CURL_B: Spec = (100, 4, "curl", 8080);
const PSQL: Spec = (200, 5, "psql", 5432);
const REDIS: Spec = (300, 6, "redis-cli", 6379);

fn socket((pid, fd, comm, port): Spec) -> Socket {
    Socket::new(
        SocketKey { pid, fd },
        SEC,
        Ipv4Addr::new(10, 0, 0, u8::try_from(fd).unwrap_or(0)),
        port,
        comm,
    )
}

fn id((pid, fd, _, _): Spec) -> RowKey {
    RowKey::Socket(SocketId::new(SocketKey { pid, fd }, SEC))
}

fn connect(model: &mut Dashboard, spec: Spec) {
    model.update(Message::Model(Action::Change(Change::Opened(socket(spec)))));
}

fn close(model: &mut Dashboard, spec: Spec, at_ns: u64) {
    let mut socket = socket(spec);
    socket.close(
        Closed {
            at_ns,
            tid: spec.0,
            cause: CloseCause::Close,
        },
        10,
        20,
    );
    model.update(Message::Model(Action::Change(Change::Closed(socket))));
}

/// A map read at `now_ns` where each socket has sent `sent` bytes in total.
fn snapshot(model: &mut Dashboard, sent: &[(Spec, u64)], now_ns: u64) {
    let map = sent
        .iter()
        .map(|&(spec, sent)| {
            let mut socket = socket(spec);
            socket.bytes_sent = sent;
            socket.bytes_recv = sent / 2;
            socket
        })
        .collect();
    model.update(Message::Model(Action::Snapshot { map, now_ns }));
}

fn new_dashboard() -> Dashboard {
    Dashboard::new(Model::new("tracepoint"), ViewState::default())
}

fn visible(model: &Dashboard) -> Visible {
    model.view.visible(&model.model)
}

/// Four sockets; after two snapshots their send rates are PSQL > CURL_A > (CURL_B = REDIS = 0).
fn busy() -> Dashboard {
    let mut model = new_dashboard();
    view(
        &mut model,
        ViewAction::Resize {
            width: 120,
            height: 30,
        },
    );
    for spec in [CURL_A, CURL_B, PSQL, REDIS] {
        connect(&mut model, spec);
    }
    snapshot(
        &mut model,
        &[(CURL_A, 0), (CURL_B, 0), (PSQL, 0), (REDIS, 0)],
        2 * SEC,
    );
    snapshot(
        &mut model,
        &[(CURL_A, 100), (CURL_B, 0), (PSQL, 5000), (REDIS, 0)],
        3 * SEC,
    );
    model
}

fn view(model: &mut Dashboard, action: ViewAction) {
    model.update(Message::View(action));
}

fn typed(model: &mut Dashboard, text: &str) {
    view(model, ViewAction::FilterStart);
    for c in text.chars() {
        view(model, ViewAction::FilterChar(c));
    }
    view(model, ViewAction::FilterDone);
}

/// The table's rows as (pid, fd), top to bottom.
fn order(model: &Dashboard) -> Vec<(u32, u32)> {
    match visible(model).listing {
        Listing::Sockets(rows) => rows.iter().map(|id| (id.key.pid, id.key.fd)).collect(),
        Listing::Processes(rows) | Listing::Owners(rows) => {
            rows.iter().map(|p| (p.pid, 0)).collect()
        }
    }
}

fn selected(model: &Dashboard) -> Option<RowKey> {
    visible(model).selected_key()
}

#[test]
fn default_sort_is_send_rate_descending_and_ties_keep_pid_fd_order() {
    let model = busy();
    assert_eq!(order(&model), [(200, 5), (100, 3), (100, 4), (300, 6)]);
    assert_eq!(model.view.sort(), Sort::default());
    assert_eq!(
        selected(&model),
        Some(id(PSQL)),
        "the first row is selected"
    );
}

#[test]
fn sort_keys_pick_columns_and_reverse() {
    let mut model = busy();
    // SEND/s ← RECV ← SENT: by total sent, largest first.
    view(&mut model, ViewAction::SortPrevious);
    view(&mut model, ViewAction::SortPrevious);
    assert_eq!(model.view.socket_sort.column, "SENT");
    assert!(model.view.socket_sort.descending);
    assert_eq!(order(&model), [(200, 5), (100, 3), (100, 4), (300, 6)]);
    view(&mut model, ViewAction::SortReverse);
    // Ascending by sent; the two at zero still in pid/fd order.
    assert_eq!(order(&model), [(100, 4), (300, 6), (100, 3), (200, 5)]);
    // To COMM (text, ascending first), past OWNER.
    for _ in 0..8 {
        view(&mut model, ViewAction::SortPrevious);
    }
    assert_eq!(model.view.socket_sort.column, "COMM");
    assert_eq!(order(&model), [(100, 3), (100, 4), (200, 5), (300, 6)]);
    // Wrapping around the ends.
    for _ in 0..3 {
        view(&mut model, ViewAction::SortNext);
    }
    assert_eq!(model.view.socket_sort.column, "PROTO");
    for _ in 0..22 {
        view(&mut model, ViewAction::SortPrevious);
    }
    assert_eq!(model.view.socket_sort.column, "RECV/s", "wrapped around");
}

#[test]
fn equal_rows_never_swap_between_frames() {
    let mut model = busy();
    for second in 4..10 {
        snapshot(
            &mut model,
            &[(CURL_A, 100), (CURL_B, 0), (PSQL, 5000), (REDIS, 0)],
            second * SEC,
        );
        // All rates are zero now: pid/fd order, every frame.
        assert_eq!(order(&model), [(100, 3), (100, 4), (200, 5), (300, 6)]);
    }
}

#[test]
fn selection_follows_the_socket_when_rows_resort() {
    let mut model = busy();
    view(&mut model, ViewAction::Down);
    assert_eq!(selected(&model), Some(id(CURL_A)));
    assert_eq!(model.view.selected_index, 1);
    // REDIS starts sending a lot: it moves to the top, CURL_A moves down, and stays selected.
    snapshot(
        &mut model,
        &[(CURL_A, 200), (CURL_B, 0), (PSQL, 5000), (REDIS, 90_000)],
        4 * SEC,
    );
    assert_eq!(order(&model)[0], (300, 6));
    assert_eq!(selected(&model), Some(id(CURL_A)));
    assert_eq!(model.view.selected_index, 1);
    snapshot(
        &mut model,
        &[(CURL_A, 900), (CURL_B, 0), (PSQL, 5000), (REDIS, 90_000)],
        5 * SEC,
    );
    assert_eq!(order(&model)[0], (100, 3));
    assert_eq!(selected(&model), Some(id(CURL_A)));
    assert_eq!(model.view.selected_index, 0);
}

#[test]
fn a_closed_selection_passes_to_the_row_in_its_place() {
    let mut model = busy();
    model.view.socket_sort = Sort {
        column: "PID",
        descending: false,
    };
    view(&mut model, ViewAction::Down);
    assert_eq!(selected(&model), Some(id(CURL_B)));
    close(&mut model, CURL_B, 4 * SEC);
    snapshot(
        &mut model,
        &[(CURL_A, 100), (PSQL, 5000), (REDIS, 0)],
        4 * SEC,
    );
    assert_eq!(selected(&model), Some(id(PSQL)));
    // And at the end of the list, the new last row.
    view(&mut model, ViewAction::Bottom);
    close(&mut model, REDIS, 5 * SEC);
    snapshot(&mut model, &[(CURL_A, 100), (PSQL, 5000)], 5 * SEC);
    assert_eq!(selected(&model), Some(id(PSQL)));
    // Nothing left: nothing selected, and moving does nothing.
    close(&mut model, CURL_A, 6 * SEC);
    close(&mut model, PSQL, 6 * SEC);
    snapshot(&mut model, &[], 6 * SEC);
    view(&mut model, ViewAction::Down);
    view(&mut model, ViewAction::PageUp);
    assert_eq!(selected(&model), None);
}

#[test]
fn filter_words_narrow_and_esc_clears() {
    let mut model = busy();
    typed(&mut model, "curl");
    assert_eq!(order(&model), [(100, 3), (100, 4)]);
    view(&mut model, ViewAction::FilterStart);
    view(&mut model, ViewAction::FilterChar(' '));
    for c in "443".chars() {
        view(&mut model, ViewAction::FilterChar(c));
    }
    assert!(model.view.editing_filter);
    assert_eq!(order(&model), [(100, 3)], "narrows while typing");
    view(&mut model, ViewAction::FilterDone);
    assert_eq!(model.view.key_mode(), KeyMode::Normal);
    assert_eq!(order(&model), [(100, 3)]);
    let visible = visible(&model);
    assert_eq!((visible.matching, visible.in_scope), (1, 4));
    view(&mut model, ViewAction::Back);
    assert_eq!(order(&model).len(), 4);
    // Esc while typing drops the filter too.
    view(&mut model, ViewAction::FilterStart);
    view(&mut model, ViewAction::FilterChar('p'));
    view(&mut model, ViewAction::FilterCancel);
    assert_eq!(order(&model).len(), 4);
    assert!(!model.view.editing_filter);
}

#[test]
fn invalid_filters_never_break_the_table() {
    let mut model = busy();
    for text in [
        "pid:",
        "port:99999",
        "\u{0}\u{1b}[2J",
        "::::",
        "pid:abc psql",
        "🦀",
    ] {
        typed(&mut model, text);
        let _ = visible(&model);
        view(&mut model, ViewAction::Back);
    }
    typed(&mut model, "pid:abc psql");
    assert_eq!(order(&model), [(200, 5)]);
    assert_eq!(model.view.filter.problems().len(), 1);
    // Backspace past the start is harmless.
    view(&mut model, ViewAction::FilterStart);
    for _ in 0..50 {
        view(&mut model, ViewAction::FilterBackspace);
    }
    assert!(model.view.filter.is_empty());
}

#[test]
fn command_line_scope_applies_from_the_start() {
    let mut model = new_dashboard();
    model.view = ViewState::new(ViewOptions {
        scope: Scope {
            pids: vec![],
            comms: vec!["curl".into()],
            ports: vec![8080],
            ..Scope::default()
        },
        linger_ns: None,
        color: false,
    });
    model.model.hosts = HostNames::new(true);
    for spec in [CURL_A, CURL_B, PSQL] {
        connect(&mut model, spec);
    }
    snapshot(&mut model, &[(CURL_A, 0), (CURL_B, 0), (PSQL, 0)], 2 * SEC);
    assert_eq!(order(&model), [(100, 4)]);
    // Esc does not lift it, and only sockets in scope are looked up.
    view(&mut model, ViewAction::Back);
    assert_eq!(order(&model), [(100, 4)]);
    assert_eq!(
        model.model.hosts.take_requests(),
        [Ipv4Addr::new(10, 0, 0, 4)]
    );
}

#[test]
fn pause_freezes_the_view_while_counting_goes_on() {
    let mut model = busy();
    view(&mut model, ViewAction::TogglePause);
    assert!(model.view.is_paused());
    let frozen = visible(&model);
    connect(&mut model, (400, 9, "nc", 9));
    snapshot(
        &mut model,
        &[
            (CURL_A, 100),
            (CURL_B, 0),
            (PSQL, 9000),
            (REDIS, 0),
            ((400, 9, "nc", 9), 5),
        ],
        4 * SEC,
    );
    assert_eq!(visible(&model), frozen, "the screen did not move");
    assert_eq!(model.model.open.len(), 5, "the model kept counting");
    // Moving and sorting still work on the frozen rows.
    view(&mut model, ViewAction::Down);
    assert_eq!(selected(&model), Some(id(CURL_A)));
    view(&mut model, ViewAction::TogglePause);
    assert_eq!(order(&model).len(), 5);
    assert_eq!(selected(&model), Some(id(CURL_A)));
}

#[test]
fn follow_keeps_a_socket_selected_after_it_closes() {
    let mut model = busy();
    view(&mut model, ViewAction::Down);
    view(&mut model, ViewAction::Follow);
    assert_eq!(
        model.view.follow,
        Some(SocketId::new(SocketKey { pid: 100, fd: 3 }, SEC))
    );
    close(&mut model, CURL_A, 4 * SEC);
    snapshot(
        &mut model,
        &[(CURL_B, 0), (PSQL, 5000), (REDIS, 0)],
        4 * SEC,
    );
    snapshot(
        &mut model,
        &[(CURL_B, 0), (PSQL, 6000), (REDIS, 0)],
        60 * SEC,
    );
    let visible = visible(&model);
    assert_eq!(selected(&model), Some(id(CURL_A)), "still selected, closed");
    let Listing::Sockets(rows) = &visible.listing else {
        panic!("sockets")
    };
    let followed = rows
        .iter()
        .find(|s| RowKey::Socket(**s) == id(CURL_A))
        .and_then(|id| model.model.socket(*id))
        .expect("listed");
    assert!(followed.is_closed());
    assert_eq!(followed.bytes_sent, 10, "final counts from the close");
    // Moving by hand ends it (as in htop), and the closed socket leaves the table.
    view(&mut model, ViewAction::Up);
    assert_eq!(model.view.follow, None);
    assert_eq!(order(&model).len(), 3);
}

#[test]
fn follow_shows_the_socket_even_when_filtered_out() {
    let mut model = busy();
    view(&mut model, ViewAction::Follow);
    typed(&mut model, "curl");
    assert_eq!(order(&model), [(200, 5), (100, 3), (100, 4)]);
    view(&mut model, ViewAction::Follow);
    assert_eq!(model.view.follow, None);
}

#[test]
fn closed_sockets_linger_dimmed_when_asked() {
    let mut model = busy();
    close(&mut model, REDIS, 3 * SEC + SEC / 2);
    snapshot(
        &mut model,
        &[(CURL_A, 100), (CURL_B, 0), (PSQL, 5000)],
        4 * SEC,
    );
    assert_eq!(order(&model).len(), 3, "off by default");
    view(&mut model, ViewAction::ToggleLinger);
    assert_eq!(order(&model).len(), 4);
    snapshot(
        &mut model,
        &[(CURL_A, 100), (CURL_B, 0), (PSQL, 5000)],
        3 * SEC + SEC / 2 + DEFAULT_LINGER_NS + 1,
    );
    assert_eq!(order(&model).len(), 3, "gone after the linger time");
}

/// curl and psql run in one unit, redis-cli's process was not read: two owners, the unit's
/// summing both processes; Enter lists the unit's sockets; `o` again goes back to sockets.
#[test]
fn grouping_by_owner_sums_its_processes() {
    let mut model = busy();
    for pid in [100, 200] {
        let process = crate::socket::Process::parse(pid, "0::/system.slice/api.service\n", "");
        model.update(Message::Model(Action::Process {
            pid,
            process: Some(process),
            now_ns: 0,
        }));
    }
    view(&mut model, ViewAction::ToggleOwners);
    let visible = visible(&model);
    let Listing::Owners(owners) = &visible.listing else {
        panic!("owners")
    };
    let summary: Vec<_> = owners
        .iter()
        .map(|o| (o.owner.as_str(), o.processes, o.sockets, o.bytes_sent))
        .collect();
    // By send rate, largest first (psql's 5000 B in the last second).
    assert_eq!(summary, [("api.service", 2, 3, 5100), ("-", 1, 1, 0)]);
    // `p` from here groups by process; `o` twice comes back to owners, then sockets.
    view(&mut model, ViewAction::ToggleGrouping);
    assert!(matches!(visible_listing(&model), Listing::Processes(_)));
    view(&mut model, ViewAction::ToggleOwners);
    view(&mut model, ViewAction::Top);
    view(&mut model, ViewAction::Open);
    assert!(!model.view.grouped);
    assert_eq!(model.view.filter.text(), "unit:=api.service");
    assert_eq!(order(&model), [(200, 5), (100, 3), (100, 4)]);
    view(&mut model, ViewAction::ToggleOwners);
    view(&mut model, ViewAction::ToggleOwners);
    assert!(matches!(visible_listing(&model), Listing::Sockets(_)));
}

fn visible_listing(model: &Dashboard) -> Listing {
    visible(model).listing
}

#[test]
fn grouping_by_process_sums_and_keeps_the_selection() {
    let mut model = busy();
    view(&mut model, ViewAction::Down);
    view(&mut model, ViewAction::ToggleGrouping);
    let visible = visible(&model);
    let Listing::Processes(processes) = &visible.listing else {
        panic!("processes")
    };
    assert_eq!(processes.len(), 3);
    let curl = processes.iter().find(|p| p.pid == 100).expect("curl");
    assert_eq!(
        (curl.sockets, curl.bytes_sent, curl.rate.send),
        (2, 100, 100)
    );
    assert_eq!(curl.destinations, "10.0.0.3:443, 10.0.0.4:8080");
    assert_eq!(selected(&model), Some(RowKey::Process(100)));
    assert_eq!(order(&model), [(200, 0), (100, 0), (300, 0)]);
    // Sorting in this view has its own column.
    view(&mut model, ViewAction::SortPrevious);
    assert_eq!(model.view.process_sort.column, "RECV");
    assert_eq!(model.view.socket_sort, Sort::default());
    // Back to sockets: the first socket of the selected process.
    view(&mut model, ViewAction::ToggleGrouping);
    assert_eq!(selected(&model), Some(id(CURL_A)));
    // Enter on a process lists its sockets.
    view(&mut model, ViewAction::ToggleGrouping);
    view(&mut model, ViewAction::Open);
    assert!(!model.view.grouped);
    assert_eq!(order(&model), [(100, 3), (100, 4)]);
    assert_eq!(model.view.filter.text(), "pid:100");
}

#[test]
fn pages_and_ends_with_a_scrolled_table() {
    let mut model = new_dashboard();
    // 20 rows; a 24-line terminal shows 8 - 3 = 5 of them... whatever the layout says.
    view(
        &mut model,
        ViewAction::Resize {
            width: 100,
            height: 24,
        },
    );
    let page = usize::from(crate::view::layout::table_page(model.view.size));
    assert!(page > 2);
    let specs: Vec<Spec> = (0..20).map(|fd| (500, fd, "worker", 80)).collect();
    for &spec in &specs {
        connect(&mut model, spec);
    }
    let sent: Vec<(Spec, u64)> = specs.iter().map(|&s| (s, 0)).collect();
    snapshot(&mut model, &sent, 2 * SEC);
    view(&mut model, ViewAction::PageDown);
    assert_eq!(model.view.selected_index, page);
    assert_eq!(model.view.offset, 1, "scrolled just enough");
    view(&mut model, ViewAction::Bottom);
    assert_eq!(model.view.selected_index, 19);
    assert_eq!(model.view.offset, 20 - page);
    view(&mut model, ViewAction::PageUp);
    assert_eq!(model.view.selected_index, 19 - page);
    assert_eq!(model.view.offset, 19 - page);
    view(&mut model, ViewAction::Top);
    assert_eq!((model.view.selected_index, model.view.offset), (0, 0));
    view(&mut model, ViewAction::Up);
    assert_eq!(model.view.selected_index, 0);
    // A smaller terminal: the selection stays on screen.
    view(&mut model, ViewAction::Bottom);
    view(
        &mut model,
        ViewAction::Resize {
            width: 80,
            height: 14,
        },
    );
    let page = usize::from(crate::view::layout::table_page(model.view.size));
    assert!(model.view.offset + page > 19);
}

#[test]
fn tab_moves_keys_to_the_close_log_which_scrolls() {
    let mut model = busy();
    for at in 0..10 {
        close(&mut model, (600, at, "sh", 22), 4 * SEC + u64::from(at));
    }
    view(&mut model, ViewAction::SwitchPane);
    assert_eq!(model.view.focus, Focus::CloseLog);
    view(&mut model, ViewAction::Up);
    view(&mut model, ViewAction::Up);
    assert_eq!(model.view.close_scroll, 2);
    assert_eq!(
        selected(&model),
        Some(id(PSQL)),
        "the table's selection did not move"
    );
    view(&mut model, ViewAction::Down);
    assert_eq!(model.view.close_scroll, 1);
    view(&mut model, ViewAction::Top);
    assert_eq!(model.view.close_scroll, 9, "the oldest");
    view(&mut model, ViewAction::Bottom);
    assert_eq!(model.view.close_scroll, 0);
    view(&mut model, ViewAction::SwitchPane);
    assert_eq!(model.view.focus, Focus::Table);
}

#[test]
fn enter_opens_details_and_esc_steps_back_in_order() {
    let mut model = busy();
    view(&mut model, ViewAction::Open);
    let psql = SocketId::new(SocketKey { pid: 200, fd: 5 }, SEC);
    assert_eq!(model.view.details, Some(psql));
    // Up/down in details walk the table.
    view(&mut model, ViewAction::Down);
    assert_eq!(
        model.view.details,
        Some(SocketId::new(SocketKey { pid: 100, fd: 3 }, SEC))
    );
    view(&mut model, ViewAction::ToggleHelp);
    assert_eq!(model.view.key_mode(), KeyMode::Help);
    typed(&mut model, "curl");
    // Esc: help (closed by the filter key already), then details, then the filter.
    view(&mut model, ViewAction::Back);
    assert_eq!(model.view.details, None);
    assert!(!model.view.filter.is_empty());
    view(&mut model, ViewAction::Back);
    assert!(model.view.filter.is_empty());
    view(&mut model, ViewAction::ToggleHelp);
    view(&mut model, ViewAction::Back);
    assert!(!model.view.help);
}

#[test]
fn names_show_when_answered_and_the_key_turns_them_off() {
    let mut model = busy();
    model.model.hosts = HostNames::new(true);
    snapshot(
        &mut model,
        &[(CURL_A, 100), (CURL_B, 0), (PSQL, 5000), (REDIS, 0)],
        4 * SEC,
    );
    let asked = model.model.hosts.take_requests();
    assert_eq!(asked.len(), 4);
    model.update(Message::Model(Action::HostName(Answer {
        addr: Ipv4Addr::new(10, 0, 0, 5).into(),
        outcome: Outcome::Name("db.internal".into()),
    })));
    let name_of_psql = |model: &Dashboard| match visible(model).listing {
        Listing::Sockets(rows) => rows
            .iter()
            .find(|id| id.key.pid == 200)
            .and_then(|id| model.model.socket(*id))
            .map(|s| model.view.context(&model.model).destination(s))
            .unwrap_or_default(),
        Listing::Processes(_) | Listing::Owners(_) => String::new(),
    };
    assert_eq!(name_of_psql(&model), "db.internal:5432");
    typed(&mut model, "db.int");
    assert_eq!(order(&model), [(200, 5)]);
    view(&mut model, ViewAction::Back);
    view(&mut model, ViewAction::ToggleNames);
    assert_eq!(name_of_psql(&model), "10.0.0.5:5432");
    snapshot(
        &mut model,
        &[(CURL_A, 100), (CURL_B, 0), (PSQL, 5000), (REDIS, 0)],
        5 * SEC,
    );
    assert!(model.model.hosts.take_requests().is_empty());
}

#[test]
fn the_close_log_narrows_with_the_scope_and_the_filter() {
    let mut model = busy();
    close(&mut model, CURL_A, 4 * SEC);
    close(&mut model, PSQL, 4 * SEC);
    typed(&mut model, "psql");
    let comms = |model: &Dashboard| -> Vec<String> {
        model
            .view
            .log(&model.model)
            .iter()
            .map(|c| c.comm.to_string())
            .collect()
    };
    assert_eq!(comms(&model), ["psql"]);
    view(&mut model, ViewAction::Back);
    assert_eq!(comms(&model), ["psql", "curl"]);
    model.view.scope.pids = vec![100];
    assert_eq!(comms(&model), ["curl"]);
}

#[test]
fn a_followed_socket_that_moves_to_another_holder_stays_selected_and_detailed() {
    let mut model = busy();
    view(&mut model, ViewAction::Down);
    view(&mut model, ViewAction::Follow);
    view(&mut model, ViewAction::Open);
    let RowKey::Socket(from) = id(CURL_A) else {
        unreachable!()
    };
    assert_eq!(model.view.details, Some(from));
    let to = SocketKey { pid: 101, fd: 3 };
    let comm = "worker".into();
    model.update(Message::Model(Action::Change(Change::Moved {
        from,
        to,
        comm,
    })));
    let moved = SocketId::new(to, SEC);
    assert_eq!(model.view.details, Some(moved));
    assert_eq!(model.view.follow, Some(moved));
    assert_eq!(selected(&model), Some(RowKey::Socket(moved)));
    let shown = model.model.socket(moved).expect("the moved socket");
    assert_eq!(shown.comm, "worker");
}

#[test]
fn a_refresh_of_what_moved_settles_the_table_and_asks_for_names() {
    let mut model = new_dashboard();
    model.model.hosts = HostNames::new(true);
    for spec in [CURL_A, PSQL] {
        connect(&mut model, spec);
    }
    let moved = crate::kernel::by_socket::Count {
        id: SocketId::new(SocketKey { pid: 200, fd: 5 }, SEC),
        sent: 4_000,
        recv: 0,
    };
    model.update(Message::Model(Action::Counts {
        counts: vec![moved],
        now_ns: 2 * SEC,
    }));
    // Sorted by send rate: the one that moved first, drawn from the settled listing.
    let settled = model.view.settled.as_ref().map(|v| v.listing.len());
    assert_eq!(settled, Some(2), "settled once for the frames to come");
    assert_eq!(order(&model), [(200, 5), (100, 3)]);
    let mut asked = model.model.hosts.take_requests();
    asked.sort();
    assert_eq!(
        asked,
        [Ipv4Addr::new(10, 0, 0, 3), Ipv4Addr::new(10, 0, 0, 5)]
    );
}

#[test]
fn a_refresh_where_nothing_moved_keeps_the_listing_unless_closed_rows_linger() {
    let mut model = new_dashboard();
    for spec in [CURL_A, PSQL] {
        connect(&mut model, spec);
    }
    // What the frames are drawn from.
    let settled = |model: &Dashboard| match model.view.settled.as_ref().map(|v| &v.listing) {
        Some(Listing::Sockets(rows)) => rows.iter().map(|id| (id.key.pid, id.key.fd)).collect(),
        _ => Vec::new(),
    };
    let refresh = |model: &mut Dashboard, now_ns| {
        model.update(Message::Model(Action::Counts {
            counts: Vec::new(),
            now_ns,
        }));
    };
    refresh(&mut model, 2 * SEC);
    assert!(model.view.settled.is_some());
    // A listing that no refresh would make (a row left out): a still refresh keeps it.
    if let Some(settled) = &mut model.view.settled {
        if let Listing::Sockets(ids) = &mut settled.listing {
            ids.pop();
        }
    }
    refresh(&mut model, 3 * SEC);
    assert_eq!(settled(&model).len(), 1, "kept as it was");
    // A TCP health reading changes what the TCP columns sort and filter by: made anew.
    model.update(Message::Model(Action::Health {
        readings: Default::default(),
        detail_of: None,
        now_ns: 4 * SEC,
        cost_ns: 1,
        every_ns: 100,
    }));
    refresh(&mut model, 4 * SEC);
    assert_eq!(settled(&model).len(), 2, "made anew after a health reading");
    // With a closed row lingering, time changes the listing: it is made anew.
    model.view = ViewState::new(ViewOptions {
        scope: Scope::default(),
        linger_ns: Some(5 * SEC),
        color: false,
    });
    close(&mut model, CURL_A, 4 * SEC);
    refresh(&mut model, 5 * SEC);
    assert_eq!(settled(&model), [(100, 3), (200, 5)]);
    refresh(&mut model, 10 * SEC);
    assert_eq!(
        settled(&model),
        [(200, 5)],
        "the closed row's five seconds are over"
    );
}

#[test]
fn a_refresh_of_what_moved_lists_as_a_full_settle_would() {
    let mut model = new_dashboard();
    // Forty sockets over five processes, ports in three groups (a filter keeps some).
    let comms = ["curl", "psql", "redis-cli", "nginx", "curl"];
    for fd in 0..40u32 {
        let pid = 100 * (fd % 5 + 1);
        let mut s = socket((pid, fd, comms[(fd % 5) as usize], 0));
        s.dport = [443, 5432, 8080][(fd % 3) as usize];
        model.update(Message::Model(Action::Change(Change::Opened(s))));
    }
    let mut sent = [0u64; 40];
    // A fixed pseudo-random walk: which rows move, by how much.
    let mut seed = 0x2545_f491_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let views: [&[ViewAction]; 4] = [
        &[],
        &[ViewAction::SortReverse],
        &[ViewAction::SortNext, ViewAction::SortNext],
        &[
            ViewAction::FilterStart,
            ViewAction::FilterChar(':'),
            ViewAction::FilterChar('4'),
            ViewAction::FilterChar('4'),
            ViewAction::FilterChar('3'),
            ViewAction::FilterDone,
        ],
    ];
    let mut now_ns = 2 * SEC;
    for keys in views {
        for key in keys {
            model.update(Message::View(*key));
        }
        for _ in 0..20 {
            let counts = (0..next(12))
                .map(|_| {
                    let fd = next(40) as u32;
                    sent[fd as usize] += next(3) * 1_000;
                    let id = SocketId::new(
                        SocketKey {
                            pid: 100 * (fd % 5 + 1),
                            fd,
                        },
                        SEC,
                    );
                    let sent = sent[fd as usize];
                    let count = crate::kernel::by_socket::Count { id, sent, recv: 0 };
                    (id, count)
                })
                // Once each, as a refresh tells them.
                .collect::<std::collections::BTreeMap<_, _>>();
            let counts = counts.into_values().collect();
            now_ns += SEC;
            model.update(Message::Model(Action::Counts { counts, now_ns }));
            let settled = model.view.settled.clone().expect("settled");
            assert_eq!(settled, visible(&model), "after {keys:?}");
        }
    }
}
