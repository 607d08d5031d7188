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
    kernel::decode::errno_name,
    model::{dns::HostName, processes::Processes, Model},
    socket::{
        holder_fd, holder_pid, CloseCause, ClosedBy, Direction, HealthMark, Origin, Owner, Process,
        Proto, Socket, SocketId, TcpDetail, TcpHealth, Throughput,
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
    let tcp_charts = u16::from(!socket.tcp_history.is_empty());
    let [fields_area, sent_area, recv_area, rtt_area] = Layout::vertical([
        Constraint::Length(u16::try_from(fields.len()).unwrap_or(u16::MAX) + 1),
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Fill(tcp_charts),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(fields), fields_area);
    // An open socket idle since its last reading has a second of nothing for each since.
    let history: Vec<Throughput> = if socket.is_closed() {
        socket.rates.history.iter().collect()
    } else {
        socket.rates.history_at(shown.now_ns).iter().collect()
    };
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
    if tcp_charts > 0 {
        rtt_chart(socket, theme, frame, rtt_area);
    }
}

/// The smoothed RTT per second; the title counts the retransmits over the same span.
fn rtt_chart(socket: &Socket, theme: Theme, frame: &mut Frame, area: Rect) {
    let width = usize::from(area.width.saturating_sub(2));
    let history = &socket.tcp_history;
    let recent: Vec<(u32, u32)> = history
        .iter()
        .skip(history.len().saturating_sub(width))
        .collect();
    let rtts: Vec<u64> = recent.iter().map(|&(rtt, _)| u64::from(rtt)).collect();
    let peak = rtts.iter().copied().max().unwrap_or(0);
    let retransmits = match (recent.first(), recent.last()) {
        (Some(first), Some(last)) => last.1.saturating_sub(first.1),
        _ => 0,
    };
    let title = format!(
        " rtt, last {}s (peak {}, now {}), {retransmits} retransmits ",
        rtts.len(),
        format::micros(peak),
        format::micros(rtts.last().copied().unwrap_or(0))
    );
    sparkline(&rtts, title, theme.warning(), theme, frame, area);
}

/// A history under a titled rule, scaled to its own peak.
fn sparkline(
    data: &[u64],
    title: String,
    style: ratatui::style::Style,
    theme: Theme,
    frame: &mut Frame,
    area: Rect,
) {
    let peak = data.iter().copied().max().unwrap_or(0);
    let block = Block::new()
        .borders(Borders::TOP)
        .title(title)
        .border_style(theme.dim());
    frame.render_widget(
        Sparkline::default()
            .block(block)
            .data(data)
            .max(peak.max(1))
            .style(style),
        area,
    );
}

/// The unit or container in full (the table shows a container's id in short).
fn owner_text(s: &Socket, process: Option<&Process>, processes: &Processes) -> String {
    let Some(process) = process else {
        return match s.holder_pid().map(|pid| processes.read(pid)) {
            Some(Some(None)) => "not known (the process was gone before it could be read)".into(),
            Some(None) => "not read yet".into(),
            Some(Some(Some(_))) | None => "-".into(),
        };
    };
    match &process.owner {
        Owner::Unit(unit) => unit.to_string(),
        Owner::Container { runtime, id, pod } => {
            let pod = pod
                .as_ref()
                .map_or_else(String::new, |uid| format!("  pod {uid}"));
            format!("{} container {id}{pod}", runtime.label())
        }
        Owner::Cgroup(_) => "no unit or container (see its cgroup)".into(),
    }
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
        match live.hosts.status(s.daddr()) {
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
    let process = context.process(s);
    let nspid = process
        .and_then(|p| p.nspid)
        .map_or_else(String::new, |inner| format!(" ({inner} in its namespace)"));
    let mut lines = vec![
        field(
            "process",
            format!("{}  pid {}{nspid}{thread}", s.comm, known(s.holder_pid())),
        ),
        field("owner", owner_text(s, process, context.processes)),
        field(
            "cgroup",
            process.map_or_else(|| "-".to_owned(), |p| p.cgroup.to_string()),
        ),
        field(
            "fd",
            match s.inode() {
                Some(inode) => format!("{}  (socket:[{inode}])", known(s.holder_fd())),
                None => known(s.holder_fd()),
            },
        ),
    ];
    let looked_up = shown.looked_up(s.id);
    // Shown when another fd holds it too (a forked child, a `dup`, a program started on it).
    let holders = looked_up.map_or(&[][..], |looked| &looked.holders[..]);
    if holders.iter().any(|holder| *holder != s.key()) {
        let holders: Vec<String> = holders
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
    if let Some(us) = s.connect_us() {
        lines.push(field("connect took", format::micros(us)));
    }
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
    if let Some(by) = s.closed_by {
        let error = s.error().map(errno_name).unwrap_or_default();
        lines.push(field(
            "ended by",
            match by {
                ClosedBy::Local => "this end (it closed first)".to_owned(),
                ClosedBy::Peer => "the peer (its FIN came first)".to_owned(),
                ClosedBy::ResetSent => "a reset this end sent".to_owned(),
                ClosedBy::ResetReceived => format!("a reset from the peer ({error})"),
                ClosedBy::Timeout => format!("a timeout: the peer stopped answering ({error})"),
                ClosedBy::Failed if s.error().is_none() => {
                    "the connect failed before sending anything (errno not seen)".to_owned()
                }
                ClosedBy::Failed => format!("the connect failed: {error}"),
            },
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
    if let Some(h) = s.tcp {
        let detail = looked_up.and_then(|looked| looked.tcp);
        lines.extend(
            tcp_fields(s, &h, detail.as_ref())
                .into_iter()
                .map(|(l, v)| field(l, v)),
        );
        if detail.is_none() && !s.is_closed() {
            lines.push(field(
                "more",
                "rto, mss, delivery and the rest come with the next reading while shown".into(),
            ));
        }
        // With many sockets health is read less often than the table: say how old it is.
        if let Some(read) = live.health_read {
            let age_ns = live.now_ns.saturating_sub(read.at_ns);
            if age_ns >= 2_000_000_000 {
                lines.push(field(
                    "read",
                    format!(
                        "{} ago: a read of every TCP socket takes {}, so it is read every {}",
                        format::age(age_ns),
                        format::micros(read.cost_ns / 1000),
                        format::age(read.every_ns)
                    ),
                ));
            }
        }
    } else if s.proto != Proto::Udp {
        lines.push(field(
            "tcp",
            if live.health_unavailable {
                "not known: this kernel's socket diagnostics (sock_diag) cannot be read".into()
            } else {
                "no reading yet (the kernel's diagnostics are read at each refresh)".into()
            },
        ));
    }
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

/// What `ss -ti` says of the socket, as its latest reading has it: what its row keeps (`h`),
/// and the rest of the reading when one was taken while it was shown (`detail`).
fn tcp_fields(
    s: &Socket,
    h: &TcpHealth,
    detail: Option<&TcpDetail>,
) -> Vec<(&'static str, String)> {
    let ms = |us: u64| format::micros(us);
    let peer_window = h.snd_wnd.get().map_or_else(String::new, |w| {
        format!("  peer window {}", format::bytes(w.into()))
    });
    let mut fields = vec![(
        "health",
        s.mark.map_or_else(
            || "ok".to_owned(),
            |mark| match mark {
                HealthMark::Retransmitting => {
                    "retransmitting (the count rose in the last 5 s)".into()
                }
                HealthMark::PeerNotReading => {
                    "the peer is not reading (it advertises a zero window)".into()
                }
                HealthMark::AppNotReading => "this app is not reading (Recv-Q grows)".into(),
                HealthMark::Idle => {
                    format!("idle: no data either way for {} s", s.idle_secs())
                }
            },
        ),
    )];
    let rtt = format!("{} (var {})", ms(h.rtt_us.into()), ms(h.rttvar_us.into()));
    let queues = format!(
        "send-q {}  recv-q {}",
        format::bytes(h.send_q.into()),
        format::bytes(h.recv_q.into())
    );
    let Some(d) = detail else {
        fields.extend([
            ("rtt", rtt),
            ("window", format!("cwnd {}{peer_window}", h.cwnd)),
            ("queues", queues),
            ("retrans", format!("{} in all", h.retrans)),
        ]);
        return fields;
    };
    let ssthresh = if d.ssthresh >= 0x7fff_ffff {
        "-".to_owned()
    } else {
        d.ssthresh.to_string()
    };
    fields.extend([
        (
            "rtt",
            format!(
                "{rtt}  min {}  rto {}",
                ms(d.min_rtt_us.into()),
                ms(d.rto_us.into())
            ),
        ),
        (
            "window",
            format!(
                "cwnd {}  ssthresh {ssthresh}  mss {}{peer_window}",
                h.cwnd, d.snd_mss
            ),
        ),
        ("queues", format!("{queues}  unacked {} segs", d.unacked)),
        (
            "retrans",
            format!(
                "{} in all, {} in flight, lost {}",
                h.retrans, d.retrans_out, d.lost
            ),
        ),
        (
            "delivered",
            format!(
                "acked {} B  received {} B  delivery {}  pacing {}",
                d.bytes_acked,
                d.bytes_received,
                format::rate(d.delivery_rate),
                format::rate(d.pacing_rate)
            ),
        ),
        (
            "time",
            format!(
                "busy {}  rwnd-limited {}  sndbuf-limited {}",
                ms(d.busy_us),
                ms(d.rwnd_limited_us),
                ms(d.sndbuf_limited_us)
            ),
        ),
    ]);
    fields
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
    sparkline(&recent, title, style, theme, frame, area);
}
