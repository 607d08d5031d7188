//! The bottom line: the filter being typed, or the keys that matter here.

use ratatui::{
    layout::Rect,
    text::{Line, Span},
    widgets::Paragraph,
    Frame,
};

use super::{state::ViewState, theme::Theme};

pub fn render(view: &ViewState, theme: Theme, frame: &mut Frame, area: Rect) {
    let mut spans = Vec::new();
    if view.editing_filter {
        spans.push(Span::styled("/", theme.key()));
        spans.push(Span::raw(view.filter.text().to_owned()));
        spans.push(Span::styled("█", theme.dim()));
    } else if !view.filter.is_empty() {
        spans.push(Span::styled("filter: ", theme.label()));
        spans.push(Span::styled(view.filter.text().to_owned(), theme.value()));
    }
    for problem in view.filter.problems() {
        spans.push(Span::styled(
            format!("  ignored: {problem}"),
            theme.warning(),
        ));
    }
    if !spans.is_empty() {
        spans.push(Span::raw("   "));
    }
    let hints: &[(&str, &str)] = if view.editing_filter {
        &[("Enter", "keep"), ("Esc", "clear")]
    } else if view.details.is_some() {
        &[
            ("Esc", "back"),
            ("↑↓", "previous/next"),
            ("space", "pause"),
            ("?", "help"),
            ("q", "quit"),
        ]
    } else {
        &[
            ("q", "quit"),
            ("?", "help"),
            ("/", "filter"),
            ("←→", "sort"),
            ("r", "reverse"),
            ("space", "pause"),
            ("Enter", "details"),
            ("t", "tcp"),
            ("p", "processes"),
            ("Tab", "pane"),
        ]
    };
    for (key, what) in hints {
        spans.push(Span::styled(*key, theme.key()));
        spans.push(Span::styled(format!(" {what}  "), theme.dim()));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}
