//! Rendering: a pure function of the [`Model`]. Nothing here changes state.

pub mod format;
pub mod keys;
#[cfg(test)]
mod snapshot_tests;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
    Frame,
};

use crate::{
    clock::WallClock,
    events::CloseCause,
    reducer::{CloseReason, Focus, Model, RowState},
};

/// Below this size the layout cannot show a useful table.
const MIN_WIDTH: u16 = 60;
const MIN_HEIGHT: u16 = 12;

/// Draws the whole screen.
pub fn view(model: &Model, clock: &WallClock, frame: &mut Frame) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let notice = format!(
            "terminal too small ({}x{}): need {MIN_WIDTH}x{MIN_HEIGHT}",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(notice), area);
        return;
    }
    let log_height = (area.height / 3).max(5);
    let [status, table, log, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(log_height),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(status_line(model), status);
    render_table(model, frame, table);
    render_close_log(model, clock, frame, log);
    frame.render_widget(
        Paragraph::new("q quit  ↑/↓ j/k move  Tab switch pane").style(Style::new().dim()),
        footer,
    );
}

fn status_line(model: &Model) -> Paragraph<'static> {
    let drops = model.counters.ringbuf_drops;
    let mut spans = vec![
        Span::styled(" sockwatch ", Style::new().bold().reversed()),
        Span::raw(format!(
            " probe: {}  open: {}  connects: {} ({} failed)  closes: {}  ",
            model.backend,
            model.rows().len(),
            model.totals.connects,
            model.totals.failed_connects,
            model.totals.closes,
        )),
    ];
    let lost = format!("lost: {drops}");
    spans.push(if drops > 0 {
        Span::styled(lost, Style::new().bold())
    } else {
        Span::raw(lost)
    });
    if model.counters.tracked_full > 0 {
        spans.push(Span::styled(
            format!("  untracked (map full): {}", model.counters.tracked_full),
            Style::new().bold(),
        ));
    }
    Paragraph::new(Line::from(spans))
}

fn pane_block(title: &str, focused: bool) -> Block<'_> {
    let block = Block::new().borders(Borders::ALL).title(title);
    if focused {
        block.border_style(Style::new().bold())
    } else {
        block.border_style(Style::new().dim())
    }
}

fn render_table(model: &Model, frame: &mut Frame, area: Rect) {
    let header = Row::new([
        "PID",
        "TID",
        "COMM",
        "FD",
        "DESTINATION",
        "STATE",
        "SENT",
        "AGE",
    ])
    .style(Style::new().bold().underlined());
    let rows = model.rows().map(|row| {
        let state = match row.state {
            RowState::Connecting => "CONNECTING",
            RowState::Established => "ESTABLISHED",
        };
        Row::new([
            Cell::from(row.socket.key.pid.to_string()),
            Cell::from(row.tid.to_string()),
            Cell::from(row.socket.comm.clone()),
            Cell::from(row.socket.key.fd.to_string()),
            Cell::from(format!("{}:{}", row.socket.daddr, row.socket.dport)),
            Cell::from(state),
            Cell::from(format::bytes(row.bytes_sent)),
            Cell::from(format::age(model.now_ns.saturating_sub(row.connect_ns))),
        ])
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(16),
        Constraint::Length(5),
        Constraint::Min(21),
        Constraint::Length(12),
        Constraint::Length(11),
        Constraint::Length(7),
    ];
    let title = format!(" Open IPv4 sockets ({}) ", model.rows().len());
    let table = Table::new(rows, widths)
        .header(header)
        .block(pane_block(&title, model.focus == Focus::Table))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default();
    if model.rows().len() > 0 {
        state.select(Some(model.selected));
    }
    frame.render_stateful_widget(table, area, &mut state);
}

fn render_close_log(model: &Model, clock: &WallClock, frame: &mut Frame, area: Rect) {
    let visible = usize::from(area.height.saturating_sub(2));
    let lines: Vec<Line> = model
        .closes()
        .skip(model.close_scroll)
        .take(visible)
        .map(|closed| {
            let note = match closed.reason {
                CloseReason::Closed(CloseCause::Close) => String::new(),
                CloseReason::Closed(cause) => format!("  ({})", cause.label()),
                CloseReason::Vanished => "  (close event lost)".to_owned(),
            };
            Line::raw(format!(
                "{}  {:<15} pid {:<7} fd {:<4} {:<21} sent {:>10}  lived {}{}",
                clock.local_hms(closed.closed_ns),
                closed.socket.comm,
                closed.socket.key.pid,
                closed.socket.key.fd,
                format!("{}:{}", closed.socket.daddr, closed.socket.dport),
                format::bytes(closed.bytes_sent),
                format::age(closed.lifetime_ns),
                note,
            ))
        })
        .collect();
    let title = format!(" Closed ({}) ", model.closes().len());
    frame.render_widget(
        Paragraph::new(lines).block(pane_block(&title, model.focus == Focus::CloseLog)),
        area,
    );
}
