//! What the user has chosen to see: sort, filter, selection, focus, scroll, pause, overlays,
//! grouping, details. Kernel-driven state stays in the reducer's [`Model`]; this is the rest of
//! the model, changed only by [`ViewAction`]s through [`apply`], as pure as the reducer.
//!
//! The selection is an identity (a socket, or a process when grouped), not a position: when
//! rows re-sort, appear or vanish, the same socket stays selected. When it is gone, the row now
//! at its position is.

pub mod columns;
pub mod filter;
pub mod rows;

use ratatui::layout::Size;

use self::{
    columns::{process_tiebreak, socket_tiebreak, Sort, PROCESS_COLUMNS, SOCKET_COLUMNS},
    filter::{Filter, Scope},
    rows::{by_process, Frozen, ProcessView, Shown, SocketView},
};
use crate::{reducer::Model, socket_id::SocketId, ui::layout};

/// How long closed sockets stay in the table when lingering is on and no time was given.
pub const DEFAULT_LINGER_NS: u64 = 5_000_000_000;

/// Which pane has the keyboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Focus {
    #[default]
    Table,
    CloseLog,
}

/// A row of the table: one socket, or one process when grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowKey {
    Socket(SocketId),
    Process(u32),
}

/// How keys are read at the moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    Normal,
    /// Typing in the filter line.
    Filter,
    /// The help overlay is open.
    Help,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewAction {
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    SwitchPane,
    SortPrevious,
    SortNext,
    SortReverse,
    TogglePause,
    ToggleHelp,
    /// Enter: a socket's details, or a process's sockets.
    Open,
    /// Esc: close what is open, or clear the filter.
    Back,
    /// Keep the selected socket selected and listed, even after it closes.
    Follow,
    ToggleNames,
    ToggleLinger,
    ToggleGrouping,
    FilterStart,
    FilterChar(char),
    FilterBackspace,
    FilterClear,
    /// Enter in the filter line: keep the filter, leave the line.
    FilterDone,
    /// Esc in the filter line: clear the filter, leave the line.
    FilterCancel,
    Resize {
        width: u16,
        height: u16,
    },
}

/// Choices made on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewOptions {
    pub scope: Scope,
    /// Keep closed sockets listed for this long (ns); `None`: off (the key turns it on, 5 s).
    pub linger_ns: Option<u64>,
    /// Colours, unless `NO_COLOR` is set.
    pub color: bool,
}

#[derive(Clone, Debug)]
pub struct ViewState {
    pub focus: Focus,
    pub socket_sort: Sort,
    pub process_sort: Sort,
    pub filter: Filter,
    pub editing_filter: bool,
    pub scope: Scope,
    /// The row chosen by hand (None until the user moves: then the first row is selected,
    /// whichever it is).
    pub selected: Option<RowKey>,
    /// Position of the selection the last time it was resolved: where it stays when its row goes.
    pub selected_index: usize,
    /// First table row on screen.
    pub offset: usize,
    /// How many lines the close log is scrolled back from its newest entry.
    pub close_scroll: usize,
    /// The data on screen while paused; counting goes on in the model.
    pub paused: Option<Box<Frozen>>,
    pub help: bool,
    /// The socket whose details fill the screen.
    pub details: Option<SocketId>,
    pub grouped: bool,
    pub follow: Option<SocketId>,
    pub linger: bool,
    pub linger_ns: u64,
    pub color: bool,
    pub size: Size,
    /// The table as last settled: filtering and sorting 100k rows takes tens of milliseconds,
    /// so it is done once per refresh or key, not once per frame. `None` after kernel events,
    /// until the next settle (rendering then computes it afresh).
    pub settled: Option<Visible>,
}

impl Default for ViewState {
    fn default() -> Self {
        Self::new(ViewOptions {
            color: true,
            ..ViewOptions::default()
        })
    }
}

impl ViewState {
    pub fn new(options: ViewOptions) -> Self {
        Self {
            focus: Focus::Table,
            socket_sort: Sort::default(),
            process_sort: Sort::default(),
            filter: Filter::default(),
            editing_filter: false,
            scope: options.scope,
            selected: None,
            selected_index: 0,
            offset: 0,
            close_scroll: 0,
            paused: None,
            help: false,
            details: None,
            grouped: false,
            follow: None,
            linger: options.linger_ns.is_some(),
            linger_ns: options.linger_ns.unwrap_or(DEFAULT_LINGER_NS),
            color: options.color,
            size: Size::new(80, 24),
            settled: None,
        }
    }

    pub fn key_mode(&self) -> KeyMode {
        if self.help {
            KeyMode::Help
        } else if self.editing_filter {
            KeyMode::Filter
        } else {
            KeyMode::Normal
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// The sort of the table as it is (sockets or processes).
    pub fn sort(&self) -> Sort {
        if self.grouped {
            self.process_sort
        } else {
            self.socket_sort
        }
    }
}

/// The table's rows, filtered and sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listing {
    Sockets(Vec<SocketView>),
    Processes(Vec<ProcessView>),
}

impl Listing {
    pub fn len(&self) -> usize {
        match self {
            Self::Sockets(rows) => rows.len(),
            Self::Processes(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn keys(&self) -> Vec<RowKey> {
        match self {
            Self::Sockets(rows) => rows.iter().map(|s| RowKey::Socket(s.id)).collect(),
            Self::Processes(rows) => rows.iter().map(|p| RowKey::Process(p.pid)).collect(),
        }
    }
}

/// What the table shows now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Visible {
    pub listing: Listing,
    /// Sockets in scope before the `/` filter (the "of N" in the title).
    pub in_scope: usize,
    /// Sockets that pass the filter.
    pub matching: usize,
    pub selected: Option<usize>,
}

/// The table as the model says it should look.
pub fn visible(model: &Model) -> Visible {
    let view = &model.view;
    let shown = Shown::of(model);
    let followed = |s: &SocketView| view.follow == Some(s.id);
    let in_scope: Vec<SocketView> = shown
        .sockets(view)
        .into_iter()
        .filter(|s| followed(s) || view.scope.matches(s))
        .collect();
    let total = in_scope.len();
    let mut sockets: Vec<SocketView> = in_scope
        .into_iter()
        .filter(|s| followed(s) || view.filter.matches(s))
        .collect();
    let matching = sockets.len();
    let listing = if view.grouped {
        let mut processes = by_process(&sockets);
        view.process_sort
            .apply(PROCESS_COLUMNS, &mut processes, process_tiebreak);
        Listing::Processes(processes)
    } else {
        view.socket_sort
            .apply(SOCKET_COLUMNS, &mut sockets, socket_tiebreak);
        Listing::Sockets(sockets)
    };
    let selected = resolve(view, &listing.keys());
    Visible {
        listing,
        in_scope: total,
        matching,
        selected,
    }
}

fn resolve(view: &ViewState, keys: &[RowKey]) -> Option<usize> {
    let last = keys.len().checked_sub(1)?;
    let wanted = match view.follow {
        Some(id) if !view.grouped => Some(RowKey::Socket(id)),
        _ => view.selected,
    };
    wanted
        .and_then(|key| keys.iter().position(|k| *k == key))
        .or(Some(view.selected_index.min(last)))
}

/// Applies one user action, then settles the selection and scroll.
pub fn apply(model: &mut Model, action: ViewAction) {
    use ViewAction as A;
    match action {
        A::Up => move_selection(model, Step::By(-1)),
        A::Down => move_selection(model, Step::By(1)),
        A::PageUp => move_selection(model, Step::Page(-1)),
        A::PageDown => move_selection(model, Step::Page(1)),
        A::Top => move_selection(model, Step::Top),
        A::Bottom => move_selection(model, Step::Bottom),
        A::SwitchPane => {
            if model.view.details.is_none() {
                model.view.focus = match model.view.focus {
                    Focus::Table => Focus::CloseLog,
                    Focus::CloseLog => Focus::Table,
                };
            }
        }
        A::SortPrevious | A::SortNext | A::SortReverse => {
            let view = &mut model.view;
            let sort = if view.grouped {
                &mut view.process_sort
            } else {
                &mut view.socket_sort
            };
            *sort = match action {
                A::SortReverse => sort.reversed(),
                A::SortNext if view.grouped => sort.step(PROCESS_COLUMNS, 1),
                A::SortNext => sort.step(SOCKET_COLUMNS, 1),
                _ if view.grouped => sort.step(PROCESS_COLUMNS, -1),
                _ => sort.step(SOCKET_COLUMNS, -1),
            };
        }
        A::TogglePause => {
            model.view.paused = match model.view.paused {
                Some(_) => None,
                None => Some(Box::new(Frozen::capture(model))),
            };
        }
        A::ToggleHelp => model.view.help = !model.view.help,
        A::Open => open(model),
        A::Back => back(&mut model.view),
        A::Follow => follow(model),
        A::ToggleNames => {
            let enabled = model.hosts.enabled();
            model.hosts.set_enabled(!enabled);
        }
        A::ToggleLinger => model.view.linger = !model.view.linger,
        A::ToggleGrouping => toggle_grouping(model),
        A::FilterStart => {
            model.view.editing_filter = true;
            model.view.help = false;
        }
        A::FilterChar(c) => model.view.filter.push(c),
        A::FilterBackspace => model.view.filter.pop(),
        A::FilterClear => model.view.filter = Filter::default(),
        A::FilterDone => model.view.editing_filter = false,
        A::FilterCancel => {
            model.view.editing_filter = false;
            model.view.filter = Filter::default();
        }
        A::Resize { width, height } => model.view.size = Size::new(width, height),
    }
    settle(model);
}

/// After new data: asks for the names of the destinations in scope, and settles the selection.
pub fn refresh(model: &mut Model) {
    let shown = Shown::of(model);
    let view = &model.view;
    let addresses: Vec<_> = shown
        .sockets(view)
        .iter()
        .filter(|s| !s.state.is_closed() && view.scope.matches(s))
        .map(|s| s.socket.daddr)
        .collect();
    let now_ns = model.now_ns;
    model.hosts.observe(addresses.into_iter(), now_ns);
    settle(model);
}

/// Pins the selection to the row it resolves to, keeps it on screen, and bounds the scrolls.
fn settle(model: &mut Model) {
    let visible = visible(model);
    let keys = visible.listing.keys();
    let closes = Shown::of(model).log(&model.view).len();
    let view = &mut model.view;
    if let Some(id) = view.follow {
        if !keys.contains(&RowKey::Socket(id)) && !view.grouped {
            view.follow = None;
        }
    }
    match visible.selected {
        Some(index) => {
            // A row chosen by hand stays chosen (and its neighbour takes over when it goes);
            // until then the selection is a position, like a fresh top: the first row.
            if view.selected.is_some() {
                view.selected = Some(keys[index]);
            }
            view.selected_index = index;
        }
        None => view.selected_index = 0,
    }
    let page = usize::from(layout::table_page(view.size)).max(1);
    let index = view.selected_index;
    if index < view.offset {
        view.offset = index;
    } else if index >= view.offset + page {
        view.offset = index + 1 - page;
    }
    view.offset = view.offset.min(keys.len().saturating_sub(page));
    view.close_scroll = view.close_scroll.min(closes.saturating_sub(1));
    view.settled = Some(visible);
}

enum Step {
    By(isize),
    Page(isize),
    Top,
    Bottom,
}

fn move_selection(model: &mut Model, step: Step) {
    let page = usize::from(layout::table_page(model.view.size)).max(1);
    if model.view.focus == Focus::CloseLog && model.view.details.is_none() {
        // Up scrolls back in time (towards older closes), down towards the newest.
        let view = &mut model.view;
        view.close_scroll = match step {
            Step::By(delta) => view.close_scroll.saturating_add_signed(-delta),
            Step::Page(pages) => view
                .close_scroll
                .saturating_add_signed(-pages.saturating_mul(page.cast_signed())),
            Step::Top => usize::MAX,
            Step::Bottom => 0,
        };
        return;
    }
    let visible = visible(model);
    let keys = visible.listing.keys();
    let Some(last) = keys.len().checked_sub(1) else {
        return;
    };
    let current = visible.selected.unwrap_or(0);
    let target = match step {
        Step::By(delta) => current.saturating_add_signed(delta),
        Step::Page(pages) => {
            current.saturating_add_signed(pages.saturating_mul(page.cast_signed()))
        }
        Step::Top => 0,
        Step::Bottom => last,
    }
    .min(last);
    let view = &mut model.view;
    // Moving by hand ends following, as in htop.
    view.follow = None;
    view.selected = Some(keys[target]);
    view.selected_index = target;
    if view.details.is_some() {
        if let RowKey::Socket(id) = keys[target] {
            view.details = Some(id);
        }
    }
}

fn open(model: &mut Model) {
    let visible = visible(model);
    let Some(index) = visible.selected else {
        return;
    };
    match visible.listing.keys()[index] {
        RowKey::Socket(id) => model.view.details = Some(id),
        // A process: its sockets, ungrouped.
        RowKey::Process(pid) => {
            model.view.grouped = false;
            model.view.filter = Filter::new(&format!("pid:{pid}"));
            model.view.selected = None;
            model.view.selected_index = 0;
        }
    }
}

fn back(view: &mut ViewState) {
    if view.help {
        view.help = false;
    } else if view.editing_filter {
        view.editing_filter = false;
        view.filter = Filter::default();
    } else if view.details.is_some() {
        view.details = None;
    } else if !view.filter.is_empty() {
        view.filter = Filter::default();
    } else if view.follow.is_some() {
        view.follow = None;
    }
}

fn follow(model: &mut Model) {
    if model.view.follow.take().is_some() || model.view.grouped {
        return;
    }
    let visible = visible(model);
    if let Some(RowKey::Socket(id)) = visible.selected.map(|i| visible.listing.keys()[i]) {
        model.view.follow = Some(id);
    }
}

fn toggle_grouping(model: &mut Model) {
    let before = visible(model);
    let selected = before.selected.map(|i| before.listing.keys()[i]);
    model.view.grouped = !model.view.grouped;
    model.view.follow = None;
    model.view.selected = match selected {
        // The process of the selected socket, or the first socket of the selected process.
        Some(RowKey::Socket(id)) => Some(RowKey::Process(id.key.pid)),
        Some(RowKey::Process(pid)) => match visible(model).listing {
            Listing::Sockets(sockets) => sockets
                .iter()
                .find(|s| s.socket.key.pid == pid)
                .map(|s| RowKey::Socket(s.id)),
            Listing::Processes(_) => None,
        },
        None => None,
    };
}

#[cfg(test)]
mod tests;
