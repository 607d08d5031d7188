//! The two header lines: what is being watched and how busy it is.

use ratatui::{
    layout::Rect,
    text::{Line, Span},
    widgets::Paragraph,
    Frame,
};

use super::{format, state::ViewState, theme::Theme};
use crate::{model::Model, socket::Families};

/// The families watched, always on the first line: what the counters count. As wide one way as
/// another, so that `-4`/`-6` move nothing.
fn families(families: Families) -> &'static str {
    match families {
        Families::Both => "IPv4+IPv6",
        Families::Ipv4 => "IPv4 only",
        Families::Ipv6 => "IPv6 only",
    }
}

/// `live` is the model as it is (its probe, whether names are on); `shown` the one on screen.
pub fn render(
    live: &Model,
    shown: &Model,
    view: &ViewState,
    theme: Theme,
    frame: &mut Frame,
    area: Rect,
) {
    let field = |label: &str, value: String| {
        [
            Span::styled(format!("  {label} "), theme.label()),
            Span::styled(value, theme.value()),
        ]
    };
    let totals = &shown.totals;
    let counters = &shown.counters;

    let mut first = vec![
        Span::styled(" sockwatch ", theme.badge()),
        Span::raw("  "),
        Span::styled(families(view.scope.families), theme.value()),
    ];
    let probe = field("probe:", live.backend.clone());
    let probe_at = first.len();
    first.extend(field("open:", shown.open.len().to_string()));
    first.extend(field(
        "connects:",
        format!("{} ({} failed)", totals.connects, totals.failed_connects),
    ));
    if totals.accepts > 0 {
        first.extend(field("accepts:", totals.accepts.to_string()));
    }
    first.extend(field("closes:", totals.closes.to_string()));
    let dropped = field("dropped:", counters.ringbuf_drops.to_string());
    if counters.ringbuf_drops > 0 {
        first.extend(dropped.map(|span| span.style(theme.warning())));
    } else {
        first.extend(dropped);
    }
    if counters.tracked_full > 0 {
        first.extend(
            field("untracked (map full):", counters.tracked_full.to_string())
                .map(|span| span.style(theme.warning())),
        );
    }
    if counters.inflight_full > 0 {
        first.extend(
            field("missed (stash full):", counters.inflight_full.to_string())
                .map(|span| span.style(theme.warning())),
        );
    }
    if totals.repairs > 0 {
        // Sockets whose end the events missed, found by the check against /proc.
        first.extend(field("repaired:", totals.repairs.to_string()));
    }
    if view.is_paused() {
        first.push(Span::raw("  "));
        first.push(Span::styled(" PAUSED ", theme.paused()));
    }
    // The probe is left out when the line would not fit with it (at 80 columns it does not):
    // the counters matter more, and the probe stays the same all run long.
    let width: usize = first.iter().map(Span::width).sum();
    if width + probe.iter().map(Span::width).sum::<usize>() <= usize::from(area.width) {
        first.splice(probe_at..probe_at, probe);
    }

    let activity = &shown.activity;
    let mut second = vec![Span::styled(" per second", theme.label())];
    second.extend(field(
        "connects:",
        format::per_second(activity.connects_per_sec),
    ));
    second.extend(field(
        "closes:",
        format::per_second(activity.closes_per_sec),
    ));
    second.extend(field("send:", format::rate(activity.bytes.send)));
    second.extend(field("recv:", format::rate(activity.bytes.recv)));
    let mut modes = Vec::new();
    if let Some(replay) = &view.replay {
        modes.push(replay.label());
    }
    if let Some(addr) = &view.metrics {
        modes.push(format!("metrics {addr}"));
    }
    // Not `is_everything`: the families, the one narrowing always said, are on the first line.
    let scope = view.scope.describe();
    if !scope.is_empty() {
        modes.push(format!("only {scope}"));
    }
    if let Some(id) = view.follow {
        modes.push(format!("following {}/{}", id.key.pid, id.key.fd));
    }
    if view.linger {
        modes.push(format!("linger {}", format::age(view.linger_ns)));
    }
    if !live.hosts.enabled() {
        modes.push("names off".to_owned());
    }
    for mode in modes {
        second.push(Span::styled("  · ", theme.label()));
        second.push(Span::styled(mode, theme.value()));
    }

    frame.render_widget(
        Paragraph::new(vec![Line::from(first), Line::from(second)]),
        area,
    );
}
