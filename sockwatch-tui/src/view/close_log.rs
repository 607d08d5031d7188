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
use crate::{clock::WallClock, model::Model, socket::CloseCause};

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
        .map(|socket| {
            let Some(closed) = socket.closed else {
                return Line::raw("");
            };
            let note = match closed.cause {
                CloseCause::Close => String::new(),
                CloseCause::Vanished => "  (close event lost)".to_owned(),
                cause => format!("  ({})", cause.label()),
            };
            Line::raw(format!(
                "{} {:<15} pid {:<7} fd {:<4} {:<21} sent {:>10} recv {:>10} lived {}{}",
                clock.local_hms(closed.at_ns),
                socket.comm,
                known(socket.holder_pid()),
                known(socket.holder_fd()),
                socket.remote(),
                format::bytes(socket.bytes_sent),
                format::bytes(socket.bytes_recv),
                format::age(socket.age_ns(closed.at_ns)),
                note,
            ))
        })
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
