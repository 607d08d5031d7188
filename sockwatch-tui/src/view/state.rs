//! What the user has chosen to see: sort, filter, selection, focus, scroll, pause, overlays,
//! grouping, details. The model stays the model's; this is the rest of the dashboard's state,
//! changed only by [`ViewAction`]s through [`ViewState::apply`], as pure as the reducer.
//!
//! The selection is an identity (a socket, or a process when grouped), not a position: when
//! rows re-sort, appear or vanish, the same socket stays selected. When it is gone, the row now
//! at its position is.

use std::collections::HashSet;

use ratatui::layout::Size;

use super::{
    columns::{
        group_tiebreak, Column, Sort, SortKey, OWNER_COLUMNS, PROCESS_COLUMNS, SOCKET_COLUMNS,
        TCP_COLUMNS,
    },
    filter::{Filter, Scope},
    layout,
    listing::{by_owner, by_process, owner_key, Context, GroupView, Listing, RowKey, Visible},
};
use crate::{
    model::Model,
    socket::{prefetched, Socket, SocketId},
};

/// How long closed sockets stay in the table when lingering is on and no time was given.
pub const DEFAULT_LINGER_NS: u64 = 5_000_000_000;

/// Which pane has the keyboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Focus {
    #[default]
    Table,
    CloseLog,
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
    /// `p`: one row per process, or back to sockets.
    ToggleGrouping,
    /// `o`: one row per owner (unit, container), or back to sockets.
    ToggleOwners,
    /// Traffic columns, or TCP health columns.
    ToggleTcp,
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

/// A recording played back (`--replay`): how fast, paused or not, and whether it has all been
/// played.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Replaying {
    pub speed: f64,
    pub paused: bool,
    pub ended: bool,
}

impl Replaying {
    /// As the header says it: `replay 2x`, `replay paused`, `replay ended`.
    pub fn label(&self) -> String {
        if self.ended {
            "replay ended".into()
        } else if self.paused {
            "replay paused (space resumes)".into()
        } else if self.speed >= 1.0 {
            format!("replay {}x (+/- speed)", self.speed)
        } else {
            format!("replay 1/{}x (+/- speed)", 1.0 / self.speed)
        }
    }
}

#[derive(Clone, Debug)]
pub struct ViewState {
    /// `--replay`: the recording's pace, shown in the header.
    pub replay: Option<Replaying>,
    /// `--metrics`: where the endpoint serves (the address bound), shown in the header.
    pub metrics: Option<String>,
    pub focus: Focus,
    pub socket_sort: Sort,
    pub process_sort: Sort,
    pub owner_sort: Sort,
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
    /// The model as it was when paused: what the screen shows while counting goes on.
    pub paused: Option<Box<Model>>,
    pub help: bool,
    /// The socket whose details fill the screen.
    pub details: Option<SocketId>,
    /// One row per process (`p`), or per owner when `by_owner` (`o`).
    pub grouped: bool,
    pub by_owner: bool,
    /// The socket table shows TCP health (`TCP_COLUMNS`) rather than traffic.
    pub tcp_view: bool,
    pub tcp_sort: Sort,
    pub follow: Option<SocketId>,
    pub linger: bool,
    pub linger_ns: u64,
    pub color: bool,
    pub size: Size,
    /// The table as last settled: filtering and sorting 100k rows takes tens of milliseconds,
    /// so it is done once per refresh or key, not once per frame. `None` after kernel events,
    /// until the next settle (rendering then computes it afresh).
    pub settled: Option<Visible>,
    /// The settled socket listing's sort keys, row by row (empty when grouped): a refresh where
    /// some rows moved keys only those anew (`settle_moved`).
    settled_keys: Vec<SortKey>,
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
    /// A socket now shown under another holder (its id changed with its key): the selection,
    /// the details and the followed socket go with it.
    pub fn moved(&mut self, from: SocketId, to: SocketId) {
        for id in [&mut self.details, &mut self.follow].into_iter().flatten() {
            if *id == from {
                *id = to;
            }
        }
        if self.selected == Some(RowKey::Socket(from)) {
            self.selected = Some(RowKey::Socket(to));
        }
    }

    pub fn new(options: ViewOptions) -> Self {
        Self {
            replay: None,
            metrics: None,
            focus: Focus::Table,
            socket_sort: Sort::default(),
            process_sort: Sort::default(),
            owner_sort: Sort::default(),
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
            by_owner: false,
            tcp_view: false,
            tcp_sort: Sort::tcp(),
            follow: None,
            linger: options.linger_ns.is_some(),
            linger_ns: options.linger_ns.unwrap_or(DEFAULT_LINGER_NS),
            color: options.color,
            size: Size::new(80, 24),
            settled: None,
            settled_keys: Vec::new(),
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

    /// The sort of the table as it is (sockets, their TCP health, or processes).
    pub fn sort(&self) -> Sort {
        if self.grouped && self.by_owner {
            self.owner_sort
        } else if self.grouped {
            self.process_sort
        } else if self.tcp_view {
            self.tcp_sort
        } else {
            self.socket_sort
        }
    }

    /// The columns of the grouped table as it is (by process or by owner).
    pub fn group_columns(&self) -> &'static [Column<GroupView>] {
        if self.by_owner {
            OWNER_COLUMNS
        } else {
            PROCESS_COLUMNS
        }
    }

    /// The columns of the socket table as it is.
    pub fn socket_columns(&self) -> &'static [Column<Socket>] {
        if self.tcp_view {
            TCP_COLUMNS
        } else {
            SOCKET_COLUMNS
        }
    }

    /// The model the screen shows: the live one, or the copy taken when paused.
    pub fn shown<'a>(&'a self, live: &'a Model) -> &'a Model {
        self.paused.as_deref().unwrap_or(live)
    }

    /// How sockets read on screen: the clock of the model shown, and the names as they are now
    /// (names are not data the pause freezes: `n` works while paused).
    pub fn context<'a>(&'a self, live: &'a Model) -> Context<'a> {
        Context {
            hosts: &live.hosts,
            processes: &live.processes,
            now_ns: self.shown(live).now_ns,
        }
    }

    /// Every socket the table may list, before filtering: the open ones, the recently closed
    /// ones when lingering is on, and the followed one wherever it is.
    fn candidates<'a>(&self, shown: &'a Model) -> Vec<&'a Socket> {
        let mut sockets: Vec<&Socket> = shown.open.values().collect();
        let now_ns = shown.now_ns;
        // Each socket once, even if the log somehow holds it twice or it is open again (looked
        // up for the few closed ones: no set of every open socket each frame).
        let mut seen: HashSet<SocketId> = HashSet::new();
        let open_too = |s: &Socket| shown.open.get(&s.key()).is_some_and(|o| o.id == s.id);
        sockets.extend(shown.closes().filter(|s| {
            let at_ns = s.closed.map_or(0, |c| c.at_ns);
            let lingers = self.linger && at_ns <= now_ns && now_ns - at_ns <= self.linger_ns;
            (lingers || self.follow == Some(s.id)) && !open_too(s) && seen.insert(s.id)
        }));
        sockets
    }

    /// The table as this view says it should look.
    pub fn visible(&self, live: &Model) -> Visible {
        self.visible_keyed(live).0
    }

    /// [`Self::visible`], and the sort key of each socket row.
    fn visible_keyed(&self, live: &Model) -> (Visible, Vec<SortKey>) {
        let shown = self.shown(live);
        let context = self.context(live);
        let followed = |s: &Socket| self.follow == Some(s.id);
        let in_scope = |s: &&Socket| followed(s) || self.scope.matches(s);
        // No filter: nothing to match (nor names to look up for 100k rows).
        let matches = |s: &&Socket| {
            self.filter.is_empty()
                || followed(s)
                || self.filter.matches(s, context.host(s), context.process(s))
        };
        let candidates = self.candidates(shown);
        if self.grouped {
            let in_scope: Vec<&Socket> = candidates.into_iter().filter(in_scope).collect();
            let sockets: Vec<&Socket> = in_scope.iter().copied().filter(matches).collect();
            let mut groups = if self.by_owner {
                by_owner(&sockets, &context)
            } else {
                by_process(&sockets, &context)
            };
            self.sort()
                .apply(self.group_columns(), &mut groups, &context, group_tiebreak);
            let listing = if self.by_owner {
                Listing::Owners(groups)
            } else {
                Listing::Processes(groups)
            };
            let visible = Visible {
                selected: self.resolve(&listing),
                listing,
                in_scope: in_scope.len(),
                matching: sockets.len(),
                closed: sockets.iter().filter(|s| s.is_closed()).count(),
            };
            return (visible, Vec::new());
        }
        // One pass reads each row once for all it gives (at 100k rows, a pass per question
        // costs more in memory reads than in the questions).
        let sort = self.sort();
        let column = self
            .socket_columns()
            .iter()
            .find(|c| c.title == sort.column);
        let (mut in_scope_count, mut closed) = (0, 0);
        let mut ids = Vec::with_capacity(candidates.len());
        let mut keys = Vec::with_capacity(if column.is_some() {
            candidates.len()
        } else {
            0
        });
        for s in prefetched(&candidates).filter(in_scope) {
            in_scope_count += 1;
            if !matches(&s) {
                continue;
            }
            closed += usize::from(s.is_closed());
            ids.push(s.id);
            if let Some(column) = column {
                keys.push((column.key)(s, &context));
            }
        }
        let (ids, keys) = sort.arrange(ids, keys);
        let listing = Listing::Sockets(ids);
        let visible = Visible {
            selected: self.resolve(&listing),
            matching: listing.len(),
            listing,
            in_scope: in_scope_count,
            closed,
        };
        (visible, keys)
    }

    /// The settled listing with the rows `moved` (their counters, all else as it was) taken
    /// out and put back where they now sort: a merge, not a sort of every row. `None` where
    /// only a full settle can tell (nothing settled, grouped, paused, closed rows lingering:
    /// time takes them off, or a sort by the clock) or costs less (a quarter of the rows moved).
    fn visible_moved(&self, live: &Model, moved: &[SocketId]) -> Option<(Visible, Vec<SortKey>)> {
        let settled = self.settled.as_ref()?;
        let Listing::Sockets(ids) = &settled.listing else {
            return None;
        };
        let sort = self.sort();
        let column = self
            .socket_columns()
            .iter()
            .find(|c| c.title == sort.column)?;
        // Many moved: their lookups, set and sort cost more than sorting every row.
        if moved.len() > ids.len() / 4
            || self.paused.is_some()
            || settled.closed != 0
            || column.by_clock
            || self.settled_keys.len() != ids.len()
        {
            return None;
        }
        let context = self.context(live);
        let followed = |s: &Socket| self.follow == Some(s.id);
        let moved_rows = live.open_of(moved);
        let mut entering: Vec<(SortKey, SocketId)> = prefetched(&moved_rows)
            .filter(|s| followed(s) || self.scope.matches(s))
            .filter(|s| {
                self.filter.is_empty()
                    || followed(s)
                    || self.filter.matches(s, context.host(s), context.process(s))
            })
            .map(|s| ((column.key)(s, &context), s.id))
            .collect();
        let order = |a: &(SortKey, SocketId), b: &(SortKey, SocketId)| {
            sort.order((&a.0, &a.1), (&b.0, &b.1))
        };
        entering.sort_by(order);
        let moved: foldhash::HashSet<SocketId> = moved.iter().copied().collect();
        let staying = self
            .settled_keys
            .iter()
            .zip(ids)
            .filter(|(_, id)| !moved.contains(id));
        let (mut keys, mut rows) = (Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()));
        let mut entering = entering.into_iter().peekable();
        for (key, id) in staying {
            let before = |e: &(SortKey, SocketId)| sort.order((&e.0, &e.1), (key, id)).is_lt();
            while let Some((k, i)) = entering.next_if(before) {
                keys.push(k);
                rows.push(i);
            }
            keys.push(key.clone());
            rows.push(*id);
        }
        for (k, i) in entering {
            keys.push(k);
            rows.push(i);
        }
        let listing = Listing::Sockets(rows);
        let visible = Visible {
            selected: self.resolve(&listing),
            matching: listing.len(),
            listing,
            ..*settled
        };
        Some((visible, keys))
    }

    /// The close log as shown: newest first, within the scope and the filter.
    pub fn log<'a>(&'a self, live: &'a Model) -> Vec<&'a Socket> {
        let context = self.context(live);
        self.shown(live)
            .closes()
            .filter(|s| {
                self.scope.matches(s) && self.filter.matches(s, context.host(s), context.process(s))
            })
            .collect()
    }

    /// Remote addresses of the open sockets in scope: the names worth looking up.
    /// `only`: of those sockets alone.
    pub fn addresses(&self, live: &Model, only: Option<&[SocketId]>) -> Vec<std::net::IpAddr> {
        let open = &self.shown(live).open;
        let sockets: Box<dyn Iterator<Item = &Socket>> = match only {
            Some(ids) => Box::new(
                ids.iter()
                    .filter_map(|id| open.get(&id.key).filter(|s| s.id == *id)),
            ),
            None => Box::new(open.values()),
        };
        sockets
            .filter(|s| self.scope.matches(s))
            .map(Socket::daddr)
            .collect()
    }

    fn resolve(&self, listing: &Listing) -> Option<usize> {
        let last = listing.len().checked_sub(1)?;
        let wanted = match self.follow {
            Some(id) if !self.grouped => Some(RowKey::Socket(id)),
            _ => self.selected,
        };
        wanted
            .and_then(|key| listing.position(key))
            .or(Some(self.selected_index.min(last)))
    }

    /// Applies one user action, then settles the selection and scroll.
    pub fn apply(&mut self, live: &Model, action: ViewAction) {
        use ViewAction as A;
        match action {
            A::Up => self.move_selection(live, Step::By(-1)),
            A::Down => self.move_selection(live, Step::By(1)),
            A::PageUp => self.move_selection(live, Step::Page(-1)),
            A::PageDown => self.move_selection(live, Step::Page(1)),
            A::Top => self.move_selection(live, Step::Top),
            A::Bottom => self.move_selection(live, Step::Bottom),
            A::SwitchPane => {
                if self.details.is_none() {
                    self.focus = match self.focus {
                        Focus::Table => Focus::CloseLog,
                        Focus::CloseLog => Focus::Table,
                    };
                }
            }
            A::SortPrevious | A::SortNext | A::SortReverse => {
                let grouped = self.grouped;
                let columns = self.socket_columns();
                let groups = self.group_columns();
                let sort = if grouped && self.by_owner {
                    &mut self.owner_sort
                } else if grouped {
                    &mut self.process_sort
                } else if self.tcp_view {
                    &mut self.tcp_sort
                } else {
                    &mut self.socket_sort
                };
                *sort = match action {
                    A::SortReverse => sort.reversed(),
                    A::SortNext if grouped => sort.step(groups, 1),
                    A::SortNext => sort.step(columns, 1),
                    _ if grouped => sort.step(groups, -1),
                    _ => sort.step(columns, -1),
                };
            }
            A::TogglePause => {
                self.paused = match self.paused {
                    Some(_) => None,
                    None => Some(Box::new(live.clone())),
                };
            }
            A::ToggleHelp => self.help = !self.help,
            A::Open => self.open(live),
            A::Back => self.back(),
            A::Follow => self.follow(live),
            // Names are the model's (its cache of them); the dashboard switches them.
            A::ToggleNames => {}
            A::ToggleLinger => self.linger = !self.linger,
            A::ToggleGrouping => self.group(live, false),
            A::ToggleOwners => self.group(live, true),
            A::ToggleTcp => {
                // The TCP view is of sockets: from a grouped table, it shows them.
                if self.grouped {
                    self.group(live, self.by_owner);
                    self.tcp_view = true;
                } else {
                    self.tcp_view = !self.tcp_view;
                }
            }
            A::FilterStart => {
                self.editing_filter = true;
                self.help = false;
            }
            A::FilterChar(c) => self.filter.push(c),
            A::FilterBackspace => self.filter.pop(),
            A::FilterClear => self.filter = Filter::default(),
            A::FilterDone => self.editing_filter = false,
            A::FilterCancel => {
                self.editing_filter = false;
                self.filter = Filter::default();
            }
            A::Resize { width, height } => self.size = Size::new(width, height),
        }
        self.settle(live);
    }

    /// Pins the selection to the row it resolves to, keeps it on screen, bounds the scrolls,
    /// and keeps the listing for the frames until the next change.
    pub fn settle(&mut self, live: &Model) {
        let (visible, keys) = self.visible_keyed(live);
        self.settle_on(live, visible, keys);
    }

    /// [`Self::settle`] after a refresh where only the counters of `moved` (in id order)
    /// changed since the last settle: at 100k rows with a tenth of them moving, a merge of those rather than a
    /// filter and sort of all.
    pub fn settle_moved(&mut self, live: &Model, moved: &[SocketId]) {
        match self.visible_moved(live, moved) {
            Some((visible, keys)) => self.settle_on(live, visible, keys),
            None => self.settle(live),
        }
    }

    fn settle_on(&mut self, live: &Model, visible: Visible, keys: Vec<SortKey>) {
        self.settled_keys = keys;
        let closes = self.log(live).len();
        if let Some(id) = self.follow {
            if !self.grouped && visible.listing.position(RowKey::Socket(id)).is_none() {
                self.follow = None;
            }
        }
        match visible.selected {
            Some(index) => {
                // A row chosen by hand stays chosen (and its neighbour takes over when it goes);
                // until then the selection is a position, like a fresh top: the first row.
                if self.selected.is_some() {
                    self.selected = visible.listing.key(index);
                }
                self.selected_index = index;
            }
            None => self.selected_index = 0,
        }
        let page = usize::from(layout::table_page(self.size)).max(1);
        let index = self.selected_index;
        if index < self.offset {
            self.offset = index;
        } else if index >= self.offset + page {
            self.offset = index + 1 - page;
        }
        self.offset = self.offset.min(visible.listing.len().saturating_sub(page));
        self.close_scroll = self.close_scroll.min(closes.saturating_sub(1));
        self.settled = Some(visible);
    }

    fn move_selection(&mut self, live: &Model, step: Step) {
        let page = usize::from(layout::table_page(self.size)).max(1);
        if self.focus == Focus::CloseLog && self.details.is_none() {
            // Up scrolls back in time (towards older closes), down towards the newest.
            self.close_scroll = match step {
                Step::By(delta) => self.close_scroll.saturating_add_signed(-delta),
                Step::Page(pages) => self
                    .close_scroll
                    .saturating_add_signed(-pages.saturating_mul(page.cast_signed())),
                Step::Top => usize::MAX,
                Step::Bottom => 0,
            };
            return;
        }
        let visible = self.visible(live);
        let Some(last) = visible.listing.len().checked_sub(1) else {
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
        // Moving by hand ends following, as in htop.
        self.follow = None;
        self.selected = visible.listing.key(target);
        self.selected_index = target;
        if self.details.is_some() {
            if let Some(RowKey::Socket(id)) = self.selected {
                self.details = Some(id);
            }
        }
    }

    fn open(&mut self, live: &Model) {
        match self.visible(live).selected_key() {
            Some(RowKey::Socket(id)) => self.details = Some(id),
            // A process: its sockets, ungrouped.
            Some(RowKey::Process(pid)) => {
                self.grouped = false;
                self.filter = Filter::new(&format!("pid:{pid}"));
                self.selected = None;
                self.selected_index = 0;
            }
            // An owner: its sockets, ungrouped (one not known has no word to find it by).
            Some(RowKey::Owner(key)) => {
                let Listing::Owners(rows) = self.visible(live).listing else {
                    return;
                };
                let Some(owner) = rows.into_iter().find(|o| owner_key(&o.owner) == key) else {
                    return;
                };
                if owner.owner == "-" {
                    return;
                }
                self.grouped = false;
                self.filter = Filter::new(&format!("unit:={}", owner.owner));
                self.selected = None;
                self.selected_index = 0;
            }
            None => {}
        }
    }

    fn back(&mut self) {
        if self.help {
            self.help = false;
        } else if self.editing_filter {
            self.editing_filter = false;
            self.filter = Filter::default();
        } else if self.details.is_some() {
            self.details = None;
        } else if !self.filter.is_empty() {
            self.filter = Filter::default();
        } else if self.follow.is_some() {
            self.follow = None;
        }
    }

    fn follow(&mut self, live: &Model) {
        if self.follow.take().is_some() || self.grouped {
            return;
        }
        if let Some(RowKey::Socket(id)) = self.visible(live).selected_key() {
            self.follow = Some(id);
        }
    }

    /// `p` (`by_owner` false) or `o`: groups by process or owner, or back to sockets when the
    /// table is grouped that way already.
    fn group(&mut self, live: &Model, by_owner: bool) {
        let selected = self.visible(live).selected_key();
        let ungroup = self.grouped && self.by_owner == by_owner;
        self.grouped = !ungroup;
        self.by_owner = by_owner;
        self.follow = None;
        let owner_of = |id: SocketId| {
            let context = self.context(live);
            self.shown(live)
                .socket(id)
                .map(|s| RowKey::Owner(owner_key(&context.owner(s))))
        };
        self.selected = match selected {
            // The group of the selected socket, or the first socket of the selected group.
            Some(RowKey::Socket(id)) if !ungroup && by_owner => owner_of(id),
            Some(RowKey::Socket(id)) if !ungroup => Some(RowKey::Process(id.key.pid)),
            Some(RowKey::Process(pid)) if ungroup => match self.visible(live).listing {
                Listing::Sockets(sockets) => sockets
                    .iter()
                    .find(|id| id.key.pid == pid)
                    .map(|id| RowKey::Socket(*id)),
                _ => None,
            },
            _ => None,
        };
    }
}

enum Step {
    By(isize),
    Page(isize),
    Top,
    Bottom,
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
