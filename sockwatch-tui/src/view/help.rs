//! The `?` overlay: every key, over whatever is on screen.

use ratatui::{
    layout::Rect,
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph},
    Frame,
};

use super::{layout, theme::Theme};

/// Every key and what it does (also the README's table).
pub const KEYS: &[(&str, &str)] = &[
    ("q, Ctrl-C", "quit"),
    ("?", "this help (Esc closes)"),
    (
        "/",
        "filter: words narrow (curl 443, pid:42, port:443, host:db)",
    ),
    (
        "Esc",
        "close help/details, clear the filter, stop following",
    ),
    ("↑ ↓, k j", "move the selection (or scroll the close log)"),
    ("PgUp PgDn", "move a page"),
    ("Home End, g G", "first / last row"),
    ("< >, ← →", "sort by the previous / next column"),
    ("r", "reverse the sort order"),
    ("space", "pause the view (counting goes on)"),
    ("Tab", "switch between the table and the close log"),
    (
        "Enter",
        "details of the socket (of a process or owner: its sockets)",
    ),
    ("F", "follow the selected socket, even after it closes"),
    ("p", "group by process, or back to sockets"),
    ("o", "group by owner (unit, container), or back to sockets"),
    (
        "t",
        "TCP health (RTT, retransmits, window, queues), or traffic",
    ),
    ("n", "host names on/off"),
    ("c", "keep closed sockets listed for a few seconds, dimmed"),
];

/// What the table's marks mean, below the keys.
const NOTES: &[&str] = &[
    "Rates are per second over the last refresh; sizes in KiB/MiB (1024).",
    "* on counts: bytes may have moved where this backend cannot see (a lower bound).",
    "- for PID/FD: not known (released by a kernel thread, or an fd not found).",
    "HEALTH (t): retrans = retransmitted in the last 5 s; peer-stall = the peer is not",
    "  reading (zero window); app-stall = this app is not reading (Recv-Q grows);",
    "  idle Ns = no data either way for N s. Filter with health:retrans/peer/app/idle.",
];

pub fn render(theme: Theme, frame: &mut Frame, area: Rect) {
    let key_width = KEYS
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        + 2;
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(format!(" {key:<key_width$}"), theme.key()),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    for note in NOTES {
        lines.push(Line::styled(format!(" {note}"), theme.dim()));
    }
    let width = lines.iter().map(Line::width).max().unwrap_or(0) + 3;
    let height = lines.len() + 2;
    let popup = layout::centered(
        area,
        u16::try_from(width).unwrap_or(u16::MAX),
        u16::try_from(height).unwrap_or(u16::MAX),
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::ALL)
                .title(" Keys ")
                .border_style(theme.border(true)),
        ),
        popup,
    );
}
