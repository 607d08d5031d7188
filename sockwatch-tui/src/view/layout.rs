//! Where each part of the screen goes, shared by the renderer and by the view state (which
//! needs the table's page height for PgUp/PgDn and scrolling).

use ratatui::layout::{Constraint, Layout, Rect, Size};

/// Below this size the layout cannot show a useful table.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 12;

pub struct Areas {
    pub header: Rect,
    pub table: Rect,
    pub log: Rect,
    pub footer: Rect,
}

pub fn areas(area: Rect) -> Areas {
    let log_height = (area.height / 3).max(4);
    let [header, table, log, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(5),
        Constraint::Length(log_height),
        Constraint::Length(1),
    ])
    .areas(area);
    Areas {
        header,
        table,
        log,
        footer,
    }
}

/// Table rows visible at once: the table's height less its borders and header line.
pub fn table_page(size: Size) -> u16 {
    areas(Rect::new(0, 0, size.width, size.height))
        .table
        .height
        .saturating_sub(3)
}

pub fn too_small(area: Rect) -> bool {
    area.width < MIN_WIDTH || area.height < MIN_HEIGHT
}

/// A rectangle of at most `width`x`height`, centred in `area`.
pub fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    )
}
