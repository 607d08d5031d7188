//! The close log: every socket that ended, newest first, with its lifetime and final counts.

use ratatui::{
    layout::Rect,
    text::Line,
    widgets::{Block, Borders, Paragraph},
    Frame,
};

use super::{
    columns::known,
    format,
    state::{Focus, ViewState},
    theme::Theme,
};
use crate::{
    clock::WallClock,
    kernel::decode::errno_name,
    model::Model,
    socket::{CloseCause, ClosedBy, Socket},
};

/// One closed socket: what an 80-column log keeps (time, process, destination, how it ended,
/// bytes each way), then what wider ones have room for (who held it, how long it lived, its
/// last RTT and retransmits, its connect's latency, a close other than `close()`).
fn line(socket: &Socket, clock: &WallClock, theme: Theme) -> Line<'static> {
    let Some(closed) = socket.closed else {
        return Line::raw("");
    };
    let mut text = format!(
        "{} {:<14.14} {:<21} {:<12} ↑{:>8} ↓{:>8}",
        clock.local_hms(closed.at_ns),
        socket.comm,
        socket.remote(),
        outcome(socket),
        format::bytes(socket.bytes_sent),
        format::bytes(socket.bytes_recv),
    );
    text.push_str(&format!(
        "  pid {} fd {}  lived {}",
        known(socket.holder_pid()),
        known(socket.holder_fd()),
        format::age(socket.age_ns(closed.at_ns)),
    ));
    if let Some(tcp) = socket.tcp {
        text.push_str(&format!(
            "  rtt {}  retrans {}",
            format::micros(tcp.rtt_us.into()),
            tcp.retrans
        ));
    }
    if let Some(us) = socket.connect_us() {
        text.push_str(&format!("  connect {}", format::micros(us)));
    }
    match closed.cause {
        CloseCause::Close => {}
        CloseCause::Vanished => text.push_str("  (close event lost)"),
        cause => text.push_str(&format!("  ({})", cause.label())),
    }
    // A failed connect, a reset or a timeout is worth a look.
    let trouble = !matches!(
        socket.closed_by,
        None | Some(ClosedBy::Local | ClosedBy::Peer)
    );
    if trouble {
        Line::styled(text, theme.warning())
    } else {
        Line::raw(text)
    }
}

/// How it ended: who closed it, the error of a failed connect, or `closed` where the kernel
/// does not say (UDP).
fn outcome(socket: &Socket) -> String {
    if socket.failed().is_some() {
        // Without an errno: it failed before sending anything (the socket backend).
        return socket
            .error()
            .map_or_else(|| "failed".to_owned(), errno_name);
    }
    match socket.closed_by {
        Some(ClosedBy::Local) => "local close",
        Some(ClosedBy::Peer) => "peer closed",
        Some(ClosedBy::ResetSent) => "reset sent",
        Some(ClosedBy::ResetReceived) => "reset recv",
        Some(ClosedBy::Timeout) => "timed out",
        Some(ClosedBy::Failed) | None => "closed",
    }
    .to_owned()
}

pub fn render(
    view: &ViewState,
    live: &Model,
    clock: &WallClock,
    theme: Theme,
    frame: &mut Frame,
    area: Rect,
) {
    let visible = usize::from(area.height.saturating_sub(2));
    let log = view.log(live);
    let all = view.shown(live).closes().len();
    let lines: Vec<Line> = log
        .iter()
        .skip(view.close_scroll)
        .take(visible)
        .map(|socket| line(socket, clock, theme))
        .collect();
    let mut title = if log.len() == all {
        format!(" Closed ({}) ", log.len())
    } else {
        format!(" Closed ({} of {all}) ", log.len())
    };
    if view.close_scroll > 0 {
        title.push_str(&format!("↑ {} newer ", view.close_scroll));
    }
    let block = Block::new()
        .borders(Borders::ALL)
        .title(title)
        .border_style(theme.border(view.focus == Focus::CloseLog));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}
