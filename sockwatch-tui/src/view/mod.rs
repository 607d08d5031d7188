//! The third stage: the dashboard. [`Dashboard`] holds the model and what the user chose to see
//! ([`state::ViewState`]); [`Dashboard::update`] takes every message (kernel changes, map reads,
//! keys, names), and [`render`] draws it, changing nothing.

pub mod close_log;
pub mod columns;
pub mod details;
pub mod filter;
pub mod footer;
pub mod format;
pub mod header;
pub mod help;
pub mod keys;
pub mod layout;
pub mod listing;
#[cfg(test)]
mod snapshot_tests;
pub mod state;
pub mod table;
pub mod theme;

use ratatui::{widgets::Paragraph, Frame};

use self::{
    state::{ViewAction, ViewState},
    theme::Theme,
};
use crate::{
    clock::WallClock,
    kernel::tracker::Change,
    model::{Action, Model},
    socket::SocketId,
};

/// Everything that changes the dashboard.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a message is built and consumed at once, never stored: boxing would allocate per event"
)]
pub enum Message {
    /// Kernel-driven: a change, a map read, counters, a name.
    Model(Action),
    /// A key's effect on what is shown (sort, filter, selection, ...).
    View(ViewAction),
    Quit,
}

/// The dashboard's whole state: the model, and the view of it.
#[derive(Clone, Debug, Default)]
pub struct Dashboard {
    pub model: Model,
    pub view: ViewState,
    pub quit: bool,
}

impl Dashboard {
    pub fn new(model: Model, view: ViewState) -> Self {
        Self {
            model,
            view,
            quit: false,
        }
    }

    pub fn update(&mut self, message: Message) {
        match message {
            Message::Model(action) => {
                if let Action::Change(Change::Moved { from, to, .. }) = &action {
                    self.view.moved(*from, SocketId::new(*to, from.opened_ns));
                }
                let read = matches!(action, Action::Snapshot { .. } | Action::Counts { .. });
                // Nothing moved since the last refresh: the listing stands (unless closed rows
                // linger in it, which time takes off).
                let still = matches!(&action, Action::Counts { counts, .. } if counts.is_empty())
                    && self.view.settled.as_ref().is_some_and(|v| v.closed == 0);
                // Health comes just before a refresh, which settles the table (a reading changes
                // what TCP columns sort and filter by, even where no byte moved).
                let counters = matches!(action, Action::Counters(_));
                // A refresh of what moved, with the table settled since the last change: only
                // those rows are placed anew (new rows come with a change or a full read).
                let mut action = action;
                let moved: Option<Vec<SocketId>> = match &mut action {
                    Action::Counts { counts, .. } if self.view.settled.is_some() => {
                        // In id order: rows are found beside the tree in one walk.
                        counts.sort_unstable_by_key(|c| c.id);
                        Some(counts.iter().map(|c| c.id).collect())
                    }
                    _ => None,
                };
                self.model.update(action);
                if read {
                    // After each map read: ask for the names of what is in scope (of what
                    // moved alone, when only that is placed anew), and settle the table once
                    // for the frames until the next change.
                    let now_ns = self.model.now_ns;
                    let addresses = match self.model.hosts.enabled() {
                        true => self.view.addresses(&self.model, moved.as_deref()),
                        false => Vec::new(),
                    };
                    self.model.hosts.observe(addresses.into_iter(), now_ns);
                    match moved {
                        _ if still => {}
                        Some(moved) => self.view.settle_moved(&self.model, &moved),
                        None => self.view.settle(&self.model),
                    }
                } else if !counters {
                    // The table changed: the settled listing is out of date until the next
                    // settle (rendering computes it afresh meanwhile).
                    self.view.settled = None;
                }
            }
            Message::View(ViewAction::ToggleNames) => {
                let enabled = self.model.hosts.enabled();
                self.model.hosts.set_enabled(!enabled);
                self.view.settle(&self.model);
            }
            Message::View(action) => self.view.apply(&self.model, action),
            Message::Quit => self.quit = true,
        }
    }
}

/// Draws the whole screen.
pub fn render(dashboard: &Dashboard, clock: &WallClock, frame: &mut Frame) {
    let area = frame.area();
    if layout::too_small(area) {
        let notice = format!(
            "terminal too small ({}x{}): need {}x{}",
            area.width,
            area.height,
            layout::MIN_WIDTH,
            layout::MIN_HEIGHT
        );
        frame.render_widget(Paragraph::new(notice), area);
        return;
    }
    let Dashboard { model, view, .. } = dashboard;
    let theme = Theme::new(view.color);
    let shown = view.shown(model);
    let areas = layout::areas(area);
    let computed;
    let visible = match &view.settled {
        Some(settled) => settled,
        None => {
            computed = view.visible(model);
            &computed
        }
    };
    header::render(model, shown, view, theme, frame, areas.header);
    match view.details {
        Some(id) => {
            let body = areas.table.union(areas.log);
            details::render(model, view, id, clock, theme, frame, body);
        }
        None => {
            table::render(view, model, visible, theme, frame, areas.table);
            close_log::render(view, model, clock, theme, frame, areas.log);
        }
    }
    footer::render(view, theme, frame, areas.footer);
    if view.help {
        help::render(theme, frame, area);
    }
}
