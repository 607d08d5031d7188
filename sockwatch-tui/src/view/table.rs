//! The table of sockets (or of processes, when grouped), sorted and filtered as the view says.

use ratatui::{
    layout::{Alignment, Constraint, Rect},
    style::Style,
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
    Frame,
};

use super::{
    columns::{fitting, Column, Sort},
    format,
    listing::{Context, GroupView, Listing, Visible},
    state::{Focus, ViewState},
    theme::Theme,
};
use crate::{
    model::Model,
    socket::{HealthMark, Socket, State},
};

/// `live` is the model as it is; `visible` the listing of the one on screen, as the view
/// settled it.
pub fn render(
    view: &ViewState,
    live: &Model,
    visible: &Visible,
    theme: Theme,
    frame: &mut Frame,
    area: Rect,
) {
    // Lingering and followed sockets are listed too: the title counts them apart, so its
    // count of open sockets agrees with the header's.
    let closed = if visible.closed > 0 {
        format!(" + {} closed", visible.closed)
    } else {
        String::new()
    };
    let open = visible.matching - visible.closed;
    let title = match &visible.listing {
        Listing::Processes(processes) => {
            format!(" Processes ({}, {open} sockets{closed}) ", processes.len(),)
        }
        Listing::Owners(owners) => {
            format!(" Owners ({}, {open} sockets{closed}) ", owners.len())
        }
        Listing::Sockets(_) if visible.matching == visible.in_scope => {
            format!(" Open sockets ({open}{closed}) ")
        }
        Listing::Sockets(_) => format!(
            " Open sockets ({open}{closed} of {}, filtered) ",
            visible.in_scope
        ),
    };
    let context = view.context(live);
    let shown = view.shown(live);
    let block = Block::new()
        .borders(Borders::ALL)
        .title(title)
        .border_style(theme.border(view.focus == Focus::Table));
    let inner = block.inner(area);
    // Only the rows on screen are built: formatting every row of a 100k-socket table for each
    // frame would cost far more than drawing it. The window starts at the view's offset and
    // holds what fits below the header.
    let page = usize::from(inner.height.saturating_sub(1));
    let len = match &visible.listing {
        Listing::Sockets(rows) => rows.len(),
        Listing::Processes(rows) | Listing::Owners(rows) => rows.len(),
    };
    let start = view.offset.min(len);
    let end = start.saturating_add(page).min(len);
    let selected = visible
        .selected
        .and_then(|index| index.checked_sub(start))
        .filter(|&index| index < end - start);
    let mut state = TableState::new().with_selected(selected);
    let table = match &visible.listing {
        Listing::Sockets(ids) => {
            let rows: Vec<&Socket> = ids[start..end]
                .iter()
                .filter_map(|id| shown.socket(*id))
                .collect();
            table_of(
                view.socket_columns(),
                &rows,
                view.sort(),
                inner.width,
                &context,
                theme,
                socket_style,
            )
        }
        Listing::Processes(groups) | Listing::Owners(groups) => {
            let rows: Vec<&GroupView> = groups[start..end].iter().collect();
            table_of(
                view.group_columns(),
                &rows,
                view.sort(),
                inner.width,
                &context,
                theme,
                group_style,
            )
        }
    };
    frame.render_stateful_widget(
        table
            .block(block)
            .row_highlight_style(theme.selected())
            .column_spacing(1),
        area,
        &mut state,
    );
    if visible.listing.is_empty() {
        let note = if visible.in_scope > 0 {
            "no socket matches the filter (Esc clears it)"
        } else {
            "no open socket yet"
        };
        let [_, body] =
            ratatui::layout::Layout::vertical([Constraint::Length(2), Constraint::Min(0)])
                .areas(inner);
        frame.render_widget(
            Paragraph::new(note)
                .style(theme.dim())
                .alignment(Alignment::Center),
            body,
        );
    }
}

/// Closed sockets are dim; the state reads green when established, yellow while connecting.
/// A trouble mark, and the retransmit count while it rises, read as warnings.
fn socket_style(socket: &Socket, column: &str, theme: Theme) -> Style {
    let trouble = socket.mark.filter(|mark| mark.is_trouble());
    match (socket.closed, socket.state, column) {
        (Some(_), _, _) => theme.dim(),
        (None, State::Established, "STATE") => theme.established(),
        (None, State::Connecting, "STATE") => theme.connecting(),
        (None, _, "HEALTH") if trouble.is_some() => theme.warning(),
        (None, _, "RETRANS") if trouble == Some(HealthMark::Retransmitting) => theme.warning(),
        _ => Style::new(),
    }
}

fn group_style(process: &GroupView, _column: &str, theme: Theme) -> Style {
    if process.closed == process.sockets {
        theme.dim()
    } else {
        Style::new()
    }
}

/// The columns that fit `width`, with the spare room given to the fill column.
fn table_of<R>(
    columns: &'static [Column<R>],
    rows: &[&R],
    sort: Sort,
    width: u16,
    context: &Context,
    theme: Theme,
    row_style: fn(&R, &str, Theme) -> Style,
) -> Table<'static> {
    let shown = fitting(columns, width);
    let used: u16 = shown.iter().map(|&i| columns[i].width).sum::<u16>()
        + u16::try_from(shown.len().saturating_sub(1)).unwrap_or(u16::MAX);
    let spare = width.saturating_sub(used);
    let widths: Vec<u16> = shown
        .iter()
        .map(|&i| {
            let column = &columns[i];
            if column.fill {
                column.width + spare
            } else {
                column.width
            }
        })
        .collect();
    let header = Row::new(shown.iter().map(|&i| {
        let column = &columns[i];
        let style = if column.title == sort.column {
            theme.sorted_column()
        } else {
            theme.table_header()
        };
        aligned(sort.title(column), column.right).style(style)
    }));
    let body: Vec<Row> = rows
        .iter()
        .map(|row| {
            let cells = shown.iter().zip(&widths).map(|(&i, &width)| {
                let column = &columns[i];
                let text = format::fit(
                    &(column.text)(row, context),
                    usize::from(width),
                    column.keep_end,
                );
                aligned(text, column.right).style(row_style(row, column.title, theme))
            });
            Row::new(cells)
        })
        .collect();
    Table::new(body, widths.into_iter().map(Constraint::Length)).header(header)
}

fn aligned(text: String, right: bool) -> Cell<'static> {
    let line = Line::from(Span::raw(text));
    Cell::from(if right {
        line.alignment(Alignment::Right)
    } else {
        line
    })
}
