//! The close log: every socket that ended, newest first, with its lifetime and final counts.

use ratatui::{
    layout::Rect,
    text::Line,
    widgets::{Block, Borders, Paragraph},
    Frame,
};

use super::{format, theme::Theme};
use crate::{
    clock::WallClock,
    events::CloseCause,
    reducer::CloseReason,
    view_state::{rows::Shown, Focus, ViewState},
};

pub fn render(
    view: &ViewState,
    shown: &Shown,
    clock: &WallClock,
    theme: Theme,
    frame: &mut Frame,
    area: Rect,
) {
    let visible = usize::from(area.height.saturating_sub(2));
    let log = shown.log(view);
    let lines: Vec<Line> = log
        .iter()
        .skip(view.close_scroll)
        .take(visible)
        .map(|closed| {
            let note = match closed.reason {
                CloseReason::Closed(CloseCause::Close) => String::new(),
                CloseReason::Closed(cause) => format!("  ({})", cause.label()),
                CloseReason::Vanished => "  (close event lost)".to_owned(),
            };
            Line::raw(format!(
                "{} {:<15} pid {:<7} fd {:<4} {:<21} sent {:>10} recv {:>10} lived {}{}",
                clock.local_hms(closed.closed_ns),
                closed.socket.comm,
                closed.socket.key.pid,
                closed.socket.key.fd,
                format!("{}:{}", closed.socket.daddr, closed.socket.dport),
                format::bytes(closed.bytes_sent),
                format::bytes(closed.bytes_recv),
                format::age(closed.lifetime_ns),
                note,
            ))
        })
        .collect();
    let mut title = if log.len() == shown.closes.len() {
        format!(" Closed ({}) ", log.len())
    } else {
        format!(" Closed ({} of {}) ", log.len(), shown.closes.len())
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
