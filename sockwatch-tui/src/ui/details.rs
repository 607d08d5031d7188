//! One socket in full: every field, its timestamps, and its send/recv history per second.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Sparkline},
    Frame,
};

use super::{format, theme::Theme};
use crate::{
    clock::WallClock,
    dns::HostName,
    events::{CloseCause, Direction, Proto},
    rates::Throughput,
    reducer::{CloseReason, Model},
    socket_id::SocketId,
    view_state::rows::{Shown, ShownState, SocketView},
};

pub fn render(
    model: &Model,
    shown: &Shown,
    id: SocketId,
    clock: &WallClock,
    theme: Theme,
    frame: &mut Frame,
    area: Rect,
) {
    let title = format!(" Socket {}/{} ", id.key.pid, id.key.fd);
    let block = Block::new()
        .borders(Borders::ALL)
        .title(title)
        .border_style(theme.border(true));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(socket) = shown.socket(id) else {
        frame.render_widget(
            Paragraph::new("This socket is gone from the close log too. Esc goes back.")
                .style(theme.dim()),
            inner,
        );
        return;
    };
    let fields = fields(model, shown, &socket, clock, theme);
    let [fields_area, sent_area, recv_area] = Layout::vertical([
        Constraint::Length(u16::try_from(fields.len()).unwrap_or(u16::MAX) + 1),
        Constraint::Fill(1),
        Constraint::Fill(1),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(fields), fields_area);
    let history: Vec<Throughput> = shown
        .rates
        .of(&id)
        .map(|rates| rates.history.iter().copied().collect())
        .unwrap_or_default();
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
    model: &Model,
    shown: &Shown,
    socket: &SocketView,
    clock: &WallClock,
    theme: Theme,
) -> Vec<Line<'static>> {
    let s = &socket.socket;
    let field = |label: &str, value: String| {
        Line::from(vec![
            Span::styled(format!("{label:<13}"), theme.label()),
            Span::styled(value, theme.value()),
        ])
    };
    let thread = socket
        .tid
        .map_or_else(String::new, |tid| format!("  thread {tid}"));
    let host = if !model.hosts.enabled() {
        "names are off (n turns them on)".to_owned()
    } else {
        match model.hosts.status(s.daddr) {
            Some(HostName::Found(name)) => name.clone(),
            Some(HostName::Pending { .. }) => "looking up…".to_owned(),
            Some(HostName::Missing { .. }) => "no name".to_owned(),
            None => "not looked up".to_owned(),
        }
    };
    let state = match socket.state {
        ShownState::Closed(CloseReason::Closed(CloseCause::Close)) => "CLOSED".to_owned(),
        ShownState::Closed(CloseReason::Closed(cause)) => format!("CLOSED ({})", cause.label()),
        ShownState::Closed(CloseReason::Vanished) => "CLOSED (close event lost)".to_owned(),
        open => open.label().to_owned(),
    };
    let connected = if socket.preexisting {
        format!(
            "open when sockwatch started; counted since {}",
            clock.local_hms(socket.id.connect_ns)
        )
    } else {
        let ago = shown.now_ns.saturating_sub(socket.id.connect_ns);
        format!(
            "{}  ({} ago)",
            clock.local_hms(socket.id.connect_ns),
            format::age(ago)
        )
    };
    let mut lines = vec![
        field("process", format!("{}  pid {}{thread}", s.comm, s.key.pid)),
        field("fd", s.key.fd.to_string()),
        field(
            "protocol",
            match s.proto {
                Proto::Unknown => "not known (open before sockwatch, not found in /proc)".into(),
                known => known.label().to_uppercase(),
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
            format!("{}:{}", s.daddr, s.dport),
        ),
        field("host name", host),
        field("state", state),
        field("connected", connected),
    ];
    if let Some(closed_ns) = socket.closed_ns {
        lines.push(field(
            "closed",
            format!(
                "{}  after {}",
                clock.local_hms(closed_ns),
                format::age(socket.age_ns)
            ),
        ));
    }
    lines.push(field(
        "sent",
        format!(
            "{}  ({} bytes)  now {}",
            format::bytes(socket.bytes_sent),
            socket.bytes_sent,
            format::rate(socket.rate.send)
        ),
    ));
    lines.push(field(
        "received",
        format!(
            "{}  ({} bytes)  now {}",
            format::bytes(socket.bytes_recv),
            socket.bytes_recv,
            format::rate(socket.rate.recv)
        ),
    ));
    if model.view.follow == Some(socket.id) {
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
