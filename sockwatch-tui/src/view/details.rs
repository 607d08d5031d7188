//! One socket in full: every field, its timestamps, and its send/recv history per second.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Sparkline},
    Frame,
};

use super::{
    columns::{known, state_label},
    format,
    state::ViewState,
    theme::Theme,
};
use crate::{
    clock::WallClock,
    model::{dns::HostName, Model},
    socket::{
        holder_fd, holder_pid, CloseCause, Direction, Origin, Proto, Socket, SocketId, Throughput,
    },
};

pub fn render(
    live: &Model,
    view: &ViewState,
    id: SocketId,
    clock: &WallClock,
    theme: Theme,
    frame: &mut Frame,
    area: Rect,
) {
    let title = format!(
        " Socket {}/{} ",
        known(holder_pid(id.key)),
        known(holder_fd(id.key))
    );
    let block = Block::new()
        .borders(Borders::ALL)
        .title(title)
        .border_style(theme.border(true));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let shown = view.shown(live);
    let Some(socket) = shown.socket(id) else {
        frame.render_widget(
            Paragraph::new("This socket is gone from the close log too. Esc goes back.")
                .style(theme.dim()),
            inner,
        );
        return;
    };
    let fields = fields(live, view, socket, clock, theme);
    let [fields_area, sent_area, recv_area] = Layout::vertical([
        Constraint::Length(u16::try_from(fields.len()).unwrap_or(u16::MAX) + 1),
        Constraint::Fill(1),
        Constraint::Fill(1),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(fields), fields_area);
    let history: Vec<Throughput> = socket.rates.history.iter().copied().collect();
    history_chart(
        &history,
        |t| t.send,
        "sent",
        theme.sent(),
        theme,
        frame,
        sent_area,
    );
    history_chart(
        &history,
        |t| t.recv,
        "received",
        theme.received(),
        theme,
        frame,
        recv_area,
    );
}

fn fields(
    live: &Model,
    view: &ViewState,
    s: &Socket,
    clock: &WallClock,
    theme: Theme,
) -> Vec<Line<'static>> {
    let shown = view.shown(live);
    let context = view.context(live);
    let field = |label: &str, value: String| {
        Line::from(vec![
            Span::styled(format!("{label:<13}"), theme.label()),
            Span::styled(value, theme.value()),
        ])
    };
    let host = if !live.hosts.enabled() {
        "names are off (n turns them on)".to_owned()
    } else {
        match live.hosts.status(s.daddr) {
            Some(HostName::Found(name)) => name.clone(),
            Some(HostName::Pending { .. }) => "looking up…".to_owned(),
            Some(HostName::Missing { .. }) => "no name".to_owned(),
            None => "not looked up".to_owned(),
        }
    };
    let state = match s.closed.map(|c| c.cause) {
        None | Some(CloseCause::Close) => state_label(s).to_owned(),
        Some(CloseCause::Vanished) => "CLOSED (close event lost)".to_owned(),
        Some(cause) => format!("CLOSED ({})", cause.label()),
    };
    let opened = s.id.opened_ns;
    let connected = if s.origin == Origin::Existing {
        format!(
            "open when sockwatch started; counted since {}",
            clock.local_hms(opened)
        )
    } else {
        format!(
            "{}  ({} ago)",
            clock.local_hms(opened),
            format::age(shown.now_ns.saturating_sub(opened))
        )
    };
    let thread = match s.origin {
        Origin::Existing => String::new(),
        _ => format!("  thread {}", s.tid),
    };
    let mut lines = vec![
        field(
            "process",
            format!("{}  pid {}{thread}", s.comm, known(s.holder_pid())),
        ),
        field(
            "fd",
            match s.inode {
                Some(inode) => format!("{}  (socket:[{inode}])", known(s.holder_fd())),
                None => known(s.holder_fd()),
            },
        ),
    ];
    // Shown when another fd holds it too (a forked child, a `dup`, a program started on it).
    if s.holders.iter().any(|holder| *holder != s.key()) {
        let holders: Vec<String> = s
            .holders
            .iter()
            .map(|h| format!("pid {} fd {}", h.pid, h.fd))
            .collect();
        lines.push(field("held by", holders.join(", ")));
    }
    lines.extend([
        field(
            "protocol",
            match (s.proto, s.origin) {
                (Proto::Unknown, Origin::Existing) => {
                    "not known (open before sockwatch, not found in /proc)".into()
                }
                (Proto::Unknown, _) => "not known (socket created before sockwatch started)".into(),
                (known, _) => known.label().to_uppercase(),
            },
        ),
        field(
            "direction",
            match s.direction {
                Direction::Out => "out (this machine connected)".into(),
                Direction::In => "in (accepted from the peer)".into(),
            },
        ),
        field(
            "local port",
            if s.lport == 0 {
                "not known".into()
            } else {
                s.lport.to_string()
            },
        ),
        field(
            match s.direction {
                Direction::Out => "destination",
                Direction::In => "peer",
            },
            s.remote(),
        ),
        field("host name", host),
        field("state", state),
        field("connected", connected),
    ]);
    if let Some(closed) = s.closed {
        lines.push(field(
            "closed",
            format!(
                "{}  after {}",
                clock.local_hms(closed.at_ns),
                format::age(context.age_ns(s))
            ),
        ));
    }
    let count = |bytes: u64, rate: u64| {
        format!(
            "{}  ({bytes} bytes)  now {}",
            format::bytes(bytes),
            format::rate(rate)
        )
    };
    lines.push(field("sent", count(s.bytes_sent, s.rates.now.send)));
    lines.push(field("received", count(s.bytes_recv, s.rates.now.recv)));
    if !s.complete {
        lines.push(field(
            "counts",
            "partial: bytes moved through io_uring, splice or a copied fd are not seen by this \
             backend (--probe socket sees them)"
                .to_owned(),
        ));
    }
    if view.follow == Some(s.id) {
        lines.push(field("following", "yes (F stops)".to_owned()));
    }
    lines
}

fn history_chart(
    history: &[Throughput],
    pick: fn(&Throughput) -> u64,
    what: &str,
    style: ratatui::style::Style,
    theme: Theme,
    frame: &mut Frame,
    area: Rect,
) {
    let width = usize::from(area.width.saturating_sub(2));
    let recent: Vec<u64> = history
        .iter()
        .skip(history.len().saturating_sub(width))
        .map(pick)
        .collect();
    let peak = recent.iter().copied().max().unwrap_or(0);
    let title = if recent.is_empty() {
        format!(" {what} per second: no samples yet ")
    } else {
        format!(
            " {what} per second, last {}s (peak {}, now {}) ",
            recent.len(),
            format::rate(peak),
            format::rate(recent.last().copied().unwrap_or(0))
        )
    };
    let block = Block::new()
        .borders(Borders::TOP)
        .title(title)
        .border_style(theme.dim());
    frame.render_widget(
        Sparkline::default()
            .block(block)
            .data(&recent)
            .max(peak.max(1))
            .style(style),
        area,
    );
}
