//! Rendering: a pure function of the [`Model`]. Nothing here changes state.

mod close_log;
mod details;
mod footer;
pub mod format;
mod header;
mod help;
pub mod keys;
pub mod layout;
#[cfg(test)]
mod snapshot_tests;
mod table;
pub mod theme;

use ratatui::{widgets::Paragraph, Frame};

use crate::{
    clock::WallClock,
    reducer::Model,
    view_state::{rows::Shown, visible},
};

pub use self::help::KEYS;
use self::theme::Theme;

/// Draws the whole screen.
pub fn view(model: &Model, clock: &WallClock, frame: &mut Frame) {
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
    let theme = Theme::new(model.view.color);
    let shown = Shown::of(model);
    let areas = layout::areas(area);
    header::render(model, &shown, theme, frame, areas.header);
    match model.view.details {
        Some(id) => {
            let body = areas.table.union(areas.log);
            details::render(model, &shown, id, clock, theme, frame, body);
        }
        None => {
            let computed;
            let visible = match &model.view.settled {
                Some(settled) => settled,
                None => {
                    computed = visible(model);
                    &computed
                }
            };
            table::render(&model.view, visible, theme, frame, areas.table);
            close_log::render(&model.view, &shown, clock, theme, frame, areas.log);
        }
    }
    footer::render(&model.view, theme, frame, areas.footer);
    if model.view.help {
        help::render(theme, frame, area);
    }
}
