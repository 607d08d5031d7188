//! The one task that owns the state, and its one loop: it waits on the ring buffer, the refresh
//! and reconciliation ticks, signals, and (for the dashboard) the terminal and name answers;
//! the tracker turns what the kernel says into changes, the model takes them, and the output
//! (the dashboard, or JSON lines) shows them. Both outputs run the same model on the same
//! changes, so they tell one history.

use std::{
    collections::HashSet,
    io::{self, IsTerminal, Write},
    time::Duration,
};

use anyhow::Context;
use crossterm::event::{Event as TermEvent, EventStream, KeyCode, KeyEventKind};
use futures::StreamExt;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc::UnboundedReceiver,
    time::{interval, MissedTickBehavior},
};

use crate::{
    cli::Args,
    clock::{monotonic_ns, WallClock},
    json::{self, Record},
    kernel::{
        decode::KernelRecord,
        diag::Diag,
        loader::{self, KernelCounters, KernelScope, KernelTables, LoadOptions},
        procfs,
        ring::EventRing,
        tracker::{Change, Tracker},
    },
    logfile::Log,
    metrics::{self, Metrics},
    model::{
        dns::{self, Answer, HostNames, Resolver},
        Action, Model,
    },
    replay,
    socket::{Proto, Socket, SocketId},
    terminal::TerminalGuard,
    view::{
        self,
        filter::Scope,
        keys,
        state::{KeyMode, Replaying, ViewAction, ViewState},
        Dashboard, Message,
    },
};

/// Where socket changes come from: the ring buffer and the maps, squared by the tracker.
struct Source {
    ring: AsyncFd<EventRing>,
    tables: KernelTables,
    tracker: Tracker,
    /// TCP health; `None` where the kernel has no socket diagnostics (said in the log).
    diag: Option<Diag>,
    /// When TCP health may be read again: a dump costs in proportion to every TCP socket of
    /// the namespaces read (about 1 µs each), so with many sockets it is read less often than
    /// the refresh, keeping it under `HEALTH_SHARE` of a core; or as often as
    /// `--health-ms` says.
    next_health_ns: u64,
    health_every: Option<Duration>,
    /// The kernel's count of lost records when the map was last read whole: records lost
    /// since may have left rows that only a full read and its checks set right.
    drops_checked: u64,
    /// When a refresh reads the maps whole again (see [`FULL_READ_SHARE`]), and how long
    /// after the last if not by its cost (`--full-read-ms`).
    next_full_read_ns: u64,
    full_read_every: Option<Duration>,
}

impl Source {
    /// Waits until the ring buffer has records.
    async fn readable(&mut self) -> anyhow::Result<()> {
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .context("waiting on the ring buffer")?;
        guard.clear_ready();
        Ok(())
    }

    /// Takes every record waiting (does not wait), one at a time: the tracker reads the model
    /// as the changes before each record left it. Returns which sockets opened and closed.
    fn drain(&mut self, output: &mut Output, log: &mut Log) -> anyhow::Result<Drained> {
        let Self {
            ring,
            tables,
            tracker,
            ..
        } = self;
        let mut drained = Drained::default();
        let ring = ring.get_mut();
        while let Some(item) = ring.next_record() {
            let record = match KernelRecord::decode(&item) {
                Ok(record) => record,
                Err(error) => {
                    log.line(format_args!("skipping a ring buffer record: {error}"));
                    continue;
                }
            };
            drop(item);
            for change in tracker.handle(record, &output.model().open, tables) {
                match &change {
                    Change::Opened(socket) => drained.opened.insert(socket.id),
                    Change::Closed(socket) => drained.closed.insert(socket.id),
                    // Gone from where a read before this record may have shown it.
                    Change::Moved { from, .. } => drained.closed.insert(*from),
                    Change::Failed { .. } | Change::Partial(_) | Change::Holders { .. } => false,
                };
                output.apply(change)?;
            }
        }
        Ok(drained)
    }

    /// Reads the kernel's map, then takes the records sent until then: the kernel removes an
    /// entry before it reports the close, so a socket the read missed whose close record was
    /// merely waiting is closed by now, not taken for one whose record was lost. Returns the
    /// map's entries still open, the time of the read, and the sockets opened since it.
    fn read_then_drain(
        &mut self,
        output: &mut Output,
        log: &mut Log,
    ) -> anyhow::Result<(Vec<Socket>, u64, HashSet<SocketId>)> {
        // The read locates every row it finds: only those the records add after it are new.
        output.take_fresh();
        let (mut map, _) = self.tables.snapshot();
        let now_ns = monotonic_ns();
        let drained = self.drain(output, log)?;
        // Closed (or moved) since the read: their entries are stale.
        map.retain(|s| !drained.closed.contains(&s.id));
        Ok((map, now_ns, drained.opened))
    }

    /// A map read the tracker checks and the model takes its counters from; returns the
    /// map's sockets.
    fn read_map(&mut self, output: &mut Output, log: &mut Log) -> anyhow::Result<Vec<SocketId>> {
        let (map, now_ns, _) = self.read_then_drain(output, log)?;
        for change in self.tracker.observe_map(&map, &output.model().open, now_ns) {
            output.apply(change)?;
        }
        let ids: Vec<SocketId> = map.iter().map(|s| s.id).collect();
        output.observe_map(map, now_ns);
        release_free_heap(ids.len());
        Ok(ids)
    }

    /// A refresh of the open sockets' counters (the dashboard's, and `--json-samples`'). Where
    /// the kernel counts by socket it reads them from memory (`kernel::by_socket`), at a cost
    /// that follows what moved; the maps are read whole (and checked) when that cannot be
    /// trusted alone (the syscall backends, records lost since the last full read, sockets
    /// under suspicion, too many rows to locate) and as often as `FULL_READ_SHARE` allows.
    fn refresh_counts(
        &mut self,
        output: &mut Output,
        log: &mut Log,
        drops: u64,
    ) -> anyhow::Result<()> {
        let checked = drops == self.drops_checked && !self.tracker.awaits_map_read();
        // The maps read whole now and then all the same: a connect under way is tracked there
        // before any record says so (the socket backend reports it once its handshake ends).
        let due = monotonic_ns() >= self.next_full_read_ns;
        if checked && !due && self.tables.counts_by_socket() {
            // The rows as every record sent so far leaves them, then their counters.
            self.drain(output, log)?;
            let open = output.model().open.len();
            let fresh = output.take_fresh();
            if let Some(counts) = fresh.and_then(|fresh| self.tables.read_counts(&fresh, open)) {
                let now_ns = monotonic_ns();
                output.update(Action::Counts { counts, now_ns });
                return Ok(());
            }
        }
        let started_ns = monotonic_ns();
        self.read_map(output, log)?;
        self.full_read_done(started_ns);
        self.drops_checked = drops;
        Ok(())
    }

    /// A full read that started at `started_ns` is done: the next periodic one waits its turn.
    fn full_read_done(&mut self, started_ns: u64) {
        let cost_ns = monotonic_ns().saturating_sub(started_ns);
        let every_ns = spacing_ns(self.full_read_every, cost_ns, FULL_READ_SHARE);
        self.next_full_read_ns = started_ns.saturating_add(every_ns);
    }

    /// Reads the TCP health of the open sockets' namespaces and hands it to the model.
    fn read_health(&mut self, output: &mut Output) {
        let Some(diag) = &mut self.diag else {
            return;
        };
        // Not due yet: not even the holders are gathered (a pass over every open socket).
        if monotonic_ns() < self.next_health_ns {
            return;
        }
        let pids: Vec<u32> = output
            .model()
            .open
            .values()
            .filter(|s| s.proto != Proto::Udp)
            .filter_map(|s| s.holder_pid())
            .collect();
        // Nothing to read health for: no dump (it lists every TCP socket of a namespace).
        if pids.is_empty() {
            return;
        }
        // The shown socket's reading is taken whole (the rows keep only what the table shows).
        let shown = output
            .shown()
            .filter(|s| !s.is_closed())
            .and_then(|s| Some((s.id, s.inode()?)));
        let started_ns = monotonic_ns();
        let readings = diag.read(pids, shown.map(|(_, inode)| inode));
        let now_ns = monotonic_ns();
        let cost_ns = now_ns.saturating_sub(started_ns);
        let every_ns = spacing_ns(self.health_every, cost_ns, HEALTH_SHARE);
        self.next_health_ns = started_ns.saturating_add(every_ns);
        let read = readings.len();
        output.update(Action::Health {
            readings,
            detail_of: shown.map(|(id, _)| id),
            now_ns,
            cost_ns,
            every_ns,
        });
        release_free_heap(read);
    }

    /// The periodic check against /proc; returns how long it took, its full read of the maps
    /// included (that read also stands for the next periodic full read: it is the same read).
    fn reconcile(&mut self, output: &mut Output, log: &mut Log) -> anyhow::Result<Duration> {
        // The records waiting first, untimed: a backlog (after a storm) is not the check's
        // cost, and counted, it would put the next check off by a hundred times its drain.
        self.drain(output, log)?;
        let started = std::time::Instant::now();
        let read_ns = monotonic_ns();
        let map = self.read_map(output, log)?;
        self.full_read_done(read_ns);
        let changes =
            self.tracker
                .reconcile(&map, &output.model().open, &mut self.tables, monotonic_ns());
        let took = started.elapsed();
        for change in changes {
            output.apply(change)?;
        }
        Ok(took)
    }
}

/// Sockets a full read or a health reading must have held for its memory to be given back at
/// once (below, the heap it freed is soon reused anyway).
const RELEASE_AFTER_ROWS: usize = 10_000;

/// Gives the kernel back the heap pages left free by a full read or a health reading of `rows`
/// sockets. At 100k sockets these are tens of MiB that glibc keeps mapped otherwise (they lie
/// below the rows allocated since, so they are not at the heap's top, the only part it trims
/// by itself). The next read faults them in again: a few ms, spaced as the reads are.
fn release_free_heap(rows: usize) {
    if rows >= RELEASE_AFTER_ROWS {
        trim_heap();
    }
}

/// Allocations from this size up get their own mapping, given back to the kernel when freed.
const MAP_FROM_BYTES: i32 = 256 * 1024;

/// Has glibc map every large allocation on its own, at a fixed size. By default it raises that
/// size to the largest block freed so far (up to 32 MiB): after the first full read at 100k
/// sockets frees its 9 MB of watches, blocks that size come from the heap, where they stay
/// mapped after they are freed (below newer blocks, out of reach of the heap's own trim). At
/// 100k sockets that held some 10 MiB.
fn map_large_allocations() {
    // SAFETY: mallopt only changes a tunable of the allocator.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MAP_FROM_BYTES);
    }
}

/// Gives the kernel back the heap pages glibc keeps free.
fn trim_heap() {
    // SAFETY: malloc_trim only returns free memory to the kernel.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What one drain of the ring buffer opened and closed.
#[derive(Default)]
struct Drained {
    opened: HashSet<SocketId>,
    closed: HashSet<SocketId>,
}

/// What the changes are shown on.
enum Output<'a> {
    Json {
        /// `--metrics`: counted from the same changes.
        metrics: Option<Box<Metrics>>,
        model: Box<Model>,
        /// Stdout, or nowhere (`--headless`).
        out: io::BufWriter<Box<dyn Write + 'a>>,
        clock: WallClock,
        reported_drops: u64,
        /// `--json-samples`: a `sample` line per open socket at every refresh.
        samples: bool,
        /// `--pid`/`--comm`/`--port`: the sockets whose records are written. The kernel tracks
        /// only those of the pids and ports given; the name, and a local port learned late,
        /// are for user space to check.
        scope: Scope,
    },
    Dashboard {
        dashboard: Box<Dashboard>,
        terminal: TerminalGuard,
        metrics: Option<Box<Metrics>>,
    },
}

impl Output<'_> {
    fn model(&self) -> &Model {
        match self {
            Self::Json { model, .. } => model,
            Self::Dashboard { dashboard, .. } => &dashboard.model,
        }
    }

    /// The socket whose details the dashboard shows, if it shows one.
    fn shown(&self) -> Option<&Socket> {
        match self {
            Self::Json { .. } => None,
            Self::Dashboard { dashboard, .. } => dashboard
                .view
                .details
                .and_then(|id| dashboard.model.socket(id)),
        }
    }

    /// The `--metrics` exposition as of now (empty without `--metrics`).
    fn metrics_text(&mut self, counters: &KernelCounters) -> String {
        let (model, metrics) = match self {
            Self::Json { model, metrics, .. } => (&**model, metrics),
            Self::Dashboard {
                dashboard, metrics, ..
            } => (&dashboard.model, metrics),
        };
        metrics
            .as_mut()
            .map_or_else(String::new, |m| m.render(model, counters))
    }

    fn apply(&mut self, change: Change) -> anyhow::Result<()> {
        // What the process is, read before its first row shows (and its JSON record is written).
        if let Some(pid) = change.holder_pid() {
            let now_ns = monotonic_ns();
            let model = self.model();
            if model.processes.wants(pid, now_ns, &model.open) {
                let process = procfs::process(pid);
                self.update(Action::Process {
                    pid,
                    process,
                    now_ns,
                });
            }
        }
        // Opens as the kernel stage tells them; a move on the row it moves, before it does; a
        // close on the row as the model keeps it (below).
        if let (Some(metrics), model) = self.metrics_and_model() {
            metrics.observe(&change, &model.processes);
            if let Change::Moved { from, to, .. } = &change {
                if let Some(row) = model.open.get(&from.key).filter(|s| s.id == *from) {
                    let to = SocketId::new(*to, from.opened_ns);
                    metrics.moving(row, to, &model.processes);
                }
            }
        }
        let closed = match &change {
            Change::Closed(socket) => Some(socket.id),
            _ => None,
        };
        self.apply_to_output(change)?;
        if let (Some(id), (Some(metrics), model)) = (closed, self.metrics_and_model()) {
            if let Some(row) = model.socket(id).filter(|s| s.is_closed()) {
                metrics.closed(row, &model.processes);
            }
        }
        Ok(())
    }

    /// `--metrics`' counts, if on, beside the model they count.
    fn metrics_and_model(&mut self) -> (Option<&mut Metrics>, &Model) {
        match self {
            Self::Json { metrics, model, .. } => (metrics.as_deref_mut(), model),
            Self::Dashboard {
                metrics, dashboard, ..
            } => (metrics.as_deref_mut(), &dashboard.model),
        }
    }

    /// The change written (JSON) and taken by the model.
    fn apply_to_output(&mut self, change: Change) -> anyhow::Result<()> {
        match self {
            Self::Json {
                model,
                out,
                clock,
                scope,
                ..
            } => {
                // An open as its record says it (the syscall's result); a close as the model
                // keeps it (with what was learned while it was open).
                let process = change
                    .holder_pid()
                    .and_then(|pid| model.processes.shared(pid));
                let process = process.as_deref();
                let record = match change {
                    Change::Failed { ref socket, errno } => {
                        let written = if scope.matches(socket) {
                            Record::failed(socket, process, errno, clock).write_line(out)
                        } else {
                            Ok(())
                        };
                        model.apply(change);
                        written
                    }
                    Change::Opened(ref socket) => {
                        let written = if scope.matches(socket) {
                            Record::opened(socket, process, clock).write_line(out)
                        } else {
                            Ok(())
                        };
                        model.apply(change);
                        written
                    }
                    // Shown by the socket's later records (`complete: false`).
                    Change::Partial(_) | Change::Holders { .. } => {
                        model.apply(change);
                        Ok(())
                    }
                    Change::Moved { from, .. } => {
                        // Shown if it was or now is in scope: a reader following a process
                        // learns where its socket went.
                        let was = model.socket(from).is_some_and(|s| scope.matches(s));
                        match model.apply(change) {
                            Some(moved) if was || scope.matches(moved) => {
                                let now_ns = monotonic_ns();
                                Record::moved(moved, process, from.key, clock, now_ns)
                                    .write_line(out)
                            }
                            _ => Ok(()),
                        }
                    }
                    Change::Closed(_) => match model.apply(change) {
                        Some(kept) if scope.matches(kept) => {
                            Record::closed(kept, process, clock).write_line(out)
                        }
                        _ => Ok(()),
                    },
                };
                record.context("writing to stdout")?;
            }
            Self::Dashboard { dashboard, .. } => {
                dashboard.update(Message::Model(Action::Change(change)));
            }
        }
        Ok(())
    }

    /// See `Model::take_fresh`.
    fn take_fresh(&mut self) -> Option<Vec<SocketId>> {
        match self {
            Self::Json { model, .. } => model.take_fresh(),
            Self::Dashboard { dashboard, .. } => dashboard.model.take_fresh(),
        }
    }

    fn observe_map(&mut self, map: Vec<Socket>, now_ns: u64) {
        self.update(Action::Snapshot { map, now_ns });
    }

    fn update(&mut self, action: Action) {
        match self {
            Self::Json { model, .. } => model.update(action),
            Self::Dashboard { dashboard, .. } => dashboard.update(Message::Model(action)),
        }
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Self::Json { out, .. } = self {
            out.flush().context("writing to stdout")?;
        }
        Ok(())
    }
}

/// Runs until `q`, a signal, or `--duration`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    map_large_allocations();
    if let Some(path) = &args.replay {
        return run_replay(&args, path).await;
    }
    let mut log = Log::open(args.log_file.as_deref())?;
    if !args.json && !args.headless && !std::io::stdout().is_terminal() {
        anyhow::bail!("the dashboard needs a terminal on stdout; use --json for scripts");
    }
    // Before the probes: a port already taken fails the run at once.
    let metrics_listener = args.metrics.map(metrics::bind).transpose()?;
    let options = LoadOptions {
        max_sockets: args.max_sockets,
        ring_bytes: args.ring_kib * 1024,
        directions: args.direction.mask(),
        families: args.families(),
        read_batch: args.read_batch,
        hot_slots: args.hot_slots,
        scope: KernelScope {
            pids: args.pid.clone(),
            ports: args.port.clone(),
        },
    };
    let (probes, ring, tables) = loader::attach(args.probe, options)?;
    log.line(format_args!("attached the {} probes", probes.backend));
    if let Err(error) = &probes.identity {
        log.line(format_args!("socket inodes will not be known: {error}"));
    }
    if let Err(error) = &probes.fate {
        log.line(format_args!(
            "connect latency and who ended a connection will not be known: {error}"
        ));
    }
    if let Some(error) = tables.hot_counters_unmapped() {
        log.line(format_args!(
            "byte counters are read with a syscall per socket: mapping SK_HOT failed: {error}"
        ));
    }
    let clock = WallClock::now();
    // SAFETY: the EventRing owns its map fd, which stays open and unchanged for as long as the
    // AsyncFd owns the EventRing.
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("watching the event ring buffer")?;
    let mut source = Source {
        ring,
        tables,
        tracker: Tracker::default(),
        diag: Diag::open()
            .inspect_err(|error| {
                log.line(format_args!(
                    "TCP health (RTT, retransmits, queues) will not be shown: socket \
                     diagnostics (sock_diag) failed: {error}"
                ));
            })
            .ok(),
        next_health_ns: 0,
        health_every: args.health_ms.map(Duration::from_millis),
        drops_checked: 0,
        next_full_read_ns: 0,
        full_read_every: args.full_read_ms.map(Duration::from_millis),
    };
    let backend = probes.backend.to_string();
    let result = run_loop(
        &args,
        &backend,
        &mut source,
        clock,
        &mut log,
        metrics_listener,
    )
    .await;
    probes.release();
    result
}

/// At most this share of a core goes to reading TCP health: after a read that took T, the next
/// waits T / HEALTH_SHARE (a read of a few thousand sockets, a few ms, still happens at every
/// refresh; one of 100,000, about 0.1 s, every 10 s). The tests pin the pace with `--health-ms`
/// instead: in an emulated guest, where a dump of a few sockets is slow, the marks that take two
/// readings would come too late.
const HEALTH_SHARE: f64 = 0.01;

/// At most this share of a core goes to refreshes that read the maps whole where the kernel
/// counts by socket (a connect under way is in the map before any record tells of it): with a
/// few thousand sockets, every refresh, as the read takes a few ms; with 100,000, one every 20 s
/// or so. Half a percent, as for the checks against /proc: with TCP health's 1% and the refresh
/// of what moved, a dashboard of 100,000 sockets, a tenth of them sending, used 4-5.5% of a core
/// with both at 1%, the 5% it must stay under (issue #12) within its noise.
const FULL_READ_SHARE: f64 = 0.005;

/// How long after a read that took `cost_ns` the next may start: as a test pinned it
/// (`pinned`), or so that such reads stay under `share` of a core.
fn spacing_ns(pinned: Option<Duration>, cost_ns: u64, share: f64) -> u64 {
    match pinned {
        Some(every) => u64::try_from(every.as_nanos()).unwrap_or(u64::MAX),
        None => (cost_ns as f64 / share) as u64,
    }
}

/// How long a record may wait in the ring buffer: the kernel programs do not wake user space
/// for each one (a wake-up costs the traced program an IPI per record), only once a sixteenth
/// of the ring is waiting; the rest are drained on this timer. Not 20 ms: fifty wake-ups a
/// second cost sockwatch at rest half a percent of a core here (a timer's wake-up in a VM is
/// dear), ten cost a tenth of that.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// At most this share of a core goes to the checks against /proc: after one that took T, the
/// next waits T / RECONCILE_SHARE if that is longer than the reconciliation interval (100,000
/// sockets: about 0.7 s a check with its full read, one every 140 s or so rather than every
/// 5 s). See [`FULL_READ_SHARE`] for why half a percent.
const RECONCILE_SHARE: f64 = 0.005;

/// Everything that stops a run: a signal or the `--duration` deadline.
struct Stop {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Stop {
    fn new(duration: Option<Duration>) -> anyhow::Result<Self> {
        // Without --duration the deadline is a century away, which is never.
        let duration = duration.unwrap_or(Duration::from_secs(100 * 365 * 86_400));
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("handling SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("handling SIGHUP")?,
            deadline: Box::pin(tokio::time::sleep(duration)),
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
            _ = self.hangup.recv() => {}
            () = &mut self.deadline => {}
        }
    }
}

fn every(period: Duration) -> tokio::time::Interval {
    let mut tick = interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// The dashboard's own inputs: keys, and answers from the name resolver.
struct Terminal {
    keys: EventStream,
    answers: UnboundedReceiver<Answer>,
    resolver: Resolver,
}

/// The next key or name answer; never ready in JSON mode.
async fn next_input(terminal: &mut Option<Terminal>) -> Input {
    let Some(terminal) = terminal else {
        return std::future::pending().await;
    };
    tokio::select! {
        key = terminal.keys.next() => Input::Key(key),
        Some(answer) = terminal.answers.recv() => Input::Answer(answer),
    }
}

/// `--replay`: the dashboard driven by a recording instead of the kernel (see `replay.rs`).
/// The replay clock runs at the recorded pace times the speed, stands still while paused, and
/// the screen stays on the final state once everything is played, until `q`.
async fn run_replay(args: &Args, path: &std::path::Path) -> anyhow::Result<()> {
    let what = format!("--replay {}", path.display());
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        io::Read::read_to_string(&mut io::stdin(), &mut text).context("reading stdin")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| what.clone())?
    };
    let recording = replay::parse(&text).with_context(|| what.clone())?;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("the dashboard needs a terminal on stdout");
    }
    let mut stop = Stop::new(args.duration)?;
    let guard = TerminalGuard::enter()?;
    let (mut dashboard, inputs) = dashboard_for(args, Model::new(recording.probe.clone()))?;
    let mut inputs = Some(inputs);
    let mut pace = Replaying {
        speed: 1.0,
        paused: false,
        ended: false,
    };
    let end_ns = recording.end_ns;
    let mut steps: std::collections::VecDeque<_> = recording.steps.into();
    let mut clock_ns = replay::BASE_NS;
    let mut last = std::time::Instant::now();
    let mut tick = every(REPLAY_FRAME);
    let mut screen = guard;
    loop {
        let redraw = tokio::select! {
            _ = tick.tick() => {
                let now = std::time::Instant::now();
                if !pace.paused {
                    let elapsed = now.duration_since(last).as_nanos() as f64 * pace.speed;
                    clock_ns = clock_ns.saturating_add(elapsed as u64);
                }
                last = now;
                while steps.front().is_some_and(|(at, _)| *at <= clock_ns) {
                    if let Some((_, action)) = steps.pop_front() {
                        dashboard.update(Message::Model(action));
                    }
                }
                pace.ended = steps.is_empty();
                // Time goes on between records (ages, lingering closes, the per-second
                // averages), as a live refresh would have it, up to the recording's end.
                let now_ns = clock_ns.min(end_ns);
                if now_ns > dashboard.model.now_ns {
                    dashboard.update(Message::Model(Action::Snapshot {
                        map: Vec::new(),
                        now_ns,
                    }));
                }
                true
            }
            input = next_input(&mut inputs) => match input {
                Input::Key(Some(Ok(TermEvent::Key(key))))
                    if key.kind == KeyEventKind::Press
                        && dashboard.view.key_mode() == KeyMode::Normal
                        && matches!(key.code, KeyCode::Char('+' | '-' | ' ')) =>
                {
                    match key.code {
                        KeyCode::Char('+') => pace.speed = (pace.speed * 2.0).min(REPLAY_FASTEST),
                        KeyCode::Char('-') => pace.speed = (pace.speed / 2.0).max(REPLAY_SLOWEST),
                        _ => pace.paused = !pace.paused,
                    }
                    true
                }
                input => match on_input(input, &mut dashboard)? {
                    Woke::Stop => break,
                    woke => woke == Woke::Redraw,
                },
            },
            () = stop.wait() => break,
        };
        if dashboard.quit {
            break;
        }
        if redraw {
            dashboard.view.replay = Some(pace);
            if let Some(inputs) = &inputs {
                for addr in dashboard.model.hosts.take_requests() {
                    if let Err(busy) = inputs.resolver.request(addr) {
                        dashboard.update(Message::Model(Action::HostName(busy)));
                    }
                }
            }
            screen.draw(|frame| view::render(&dashboard, &recording.clock, frame))?;
        }
    }
    Ok(())
}

/// The dashboard over `model` as the flags and the terminal say (names, colours, size), with
/// its inputs: keys, and the reverse DNS threads whose answers come back on a channel.
fn dashboard_for(args: &Args, mut model: Model) -> anyhow::Result<(Dashboard, Terminal)> {
    model.hosts = HostNames::new(!args.no_resolve);
    // NO_COLOR (no-color.org): set and not empty means no colours.
    let color = std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let mut dashboard = Dashboard::new(model, ViewState::new(args.view_options(color)));
    if let Ok((width, height)) = crossterm::terminal::size() {
        dashboard.update(Message::View(ViewAction::Resize { width, height }));
    }
    let (answer_tx, answers) = tokio::sync::mpsc::unbounded_channel();
    let resolver = Resolver::start(dns::WORKERS, dns::system_lookup, move |answer| {
        answer_tx.send(answer).is_ok()
    })
    .context("starting the name resolver threads")?;
    let inputs = Terminal {
        keys: EventStream::new(),
        answers,
        resolver,
    };
    Ok((dashboard, inputs))
}

/// How often a replay advances its clock and redraws.
const REPLAY_FRAME: Duration = Duration::from_millis(100);
/// Replay speeds `+` and `-` reach at most.
const REPLAY_FASTEST: f64 = 64.0;
const REPLAY_SLOWEST: f64 = 1.0 / 16.0;

/// The next scrape of `--metrics`; never ready without it.
async fn next_scrape(
    scrapes: &mut Option<tokio::sync::mpsc::Receiver<metrics::Scrape>>,
) -> Option<metrics::Scrape> {
    match scrapes {
        Some(scrapes) => scrapes.recv().await,
        None => std::future::pending().await,
    }
}

enum Input {
    Key(Option<io::Result<TermEvent>>),
    Answer(Answer),
}

/// What woke the loop, and so whether the screen is redrawn.
#[derive(PartialEq, Eq)]
enum Woke {
    /// Records or a check: counted now, shown at the next tick (a burst costs one frame).
    Quietly,
    Redraw,
    Stop,
}

async fn run_loop(
    args: &Args,
    backend: &str,
    source: &mut Source,
    clock: WallClock,
    log: &mut Log,
    metrics_listener: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    // The run starts now: its start record's time is read before the deadline is set, so the
    // end record comes --duration after it at the earliest, however long the set-up between
    // the two reads takes (a loaded or emulated machine can stall it for many milliseconds).
    let started_ns = monotonic_ns();
    let mut stop = Stop::new(args.duration)?;
    let metrics_addr = metrics_listener
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());
    let mut scrapes = match metrics_listener {
        Some(listener) => {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            metrics::serve(listener, tx)?;
            Some(rx)
        }
        None => None,
    };
    let metrics = args
        .metrics
        .map(|_| Box::new(Metrics::new(args.metrics_by_remote, args.scope())));
    let (mut output, mut terminal) = if args.json || args.headless {
        // Headless: the same loop and records, written nowhere.
        let sink: Box<dyn Write> = if args.headless {
            Box::new(io::sink())
        } else {
            Box::new(io::stdout().lock())
        };
        let mut out = io::BufWriter::new(sink);
        Record::Start {
            time: clock.unix_secs(started_ns),
            schema: json::SCHEMA,
            probe: backend,
            families: args.scope().families.labels(),
            metrics: metrics_addr.map(|addr| addr.to_string()),
            pid: std::process::id(),
            tracked_map_id: source.tables.tracked_map_id,
        }
        .write_line(&mut out)?;
        out.flush()?;
        let output = Output::Json {
            metrics,
            model: Box::new(Model::counts_only(backend)),
            out,
            clock,
            reported_drops: 0,
            samples: args.json_samples,
            scope: args.scope(),
        };
        (output, None)
    } else {
        let guard = TerminalGuard::enter()?;
        let mut model = Model::new(backend);
        model.health_unavailable = source.diag.is_none();
        let (mut dashboard, inputs) = dashboard_for(args, model)?;
        dashboard.view.metrics = metrics_addr.map(|addr| addr.to_string());
        let output = Output::Dashboard {
            dashboard: Box::new(dashboard),
            terminal: guard,
            metrics,
        };
        (output, Some(inputs))
    };
    if !args.no_existing {
        let scope = args.scope();
        let existing = source.tracker.adopt_existing(
            &mut source.tables,
            args.direction.mask(),
            |socket| scope.matches(socket),
            monotonic_ns(),
        );
        for change in existing {
            output.apply(change)?;
        }
        output.flush()?;
    }
    // Loading the programs parsed the kernel's BTF and the object (some 10 MiB of heap, free
    // now): give it back rather than carry it for the whole run.
    trim_heap();
    let mut tick = every(args.interval());
    let mut reconcile = every(args.reconcile_interval());
    let mut drain = every(DRAIN_EVERY);
    loop {
        let woke = tokio::select! {
            // The kernel wakes us only once records pile up (`submit_flags` in the kernel
            // programs): the rest wait for this timer.
            _ = drain.tick() => {
                source.drain(&mut output, log)?;
                Woke::Quietly
            }
            ready = source.readable() => {
                ready?;
                source.drain(&mut output, log)?;
                Woke::Quietly
            }
            _ = reconcile.tick() => {
                let took = source.reconcile(&mut output, log)?;
                // A check reads /proc for every tracked socket (about 4 µs each) and the maps
                // whole: with many sockets, it waits longer than 5 s so as to stay under its
                // share of a core. `--reconcile-ms` pins the pace (the tests' checks of a few
                // sockets in an emulated guest, where a full read is slow, would wait too long).
                if args.reconcile_ms.is_none() {
                    let spaced = took.div_f64(RECONCILE_SHARE);
                    reconcile.reset_after(spaced.max(args.reconcile_interval()));
                }
                Woke::Quietly
            }
            _ = tick.tick() => {
                refresh(source, &mut output, &clock, log)?;
                Woke::Redraw
            }
            input = next_input(&mut terminal) => match &mut output {
                Output::Dashboard { dashboard, .. } => on_input(input, dashboard)?,
                Output::Json { .. } => Woke::Quietly,
            },
            Some(scrape) = next_scrape(&mut scrapes) => {
                let counters = source.tables.counters();
                // A scraper that gave up is no error of ours.
                let _ = scrape.send(output.metrics_text(&counters));
                Woke::Quietly
            }
            () = stop.wait() => Woke::Stop,
        };
        output.flush()?;
        if woke == Woke::Stop {
            break;
        }
        if let (
            Output::Dashboard {
                dashboard,
                terminal: screen,
                ..
            },
            Some(inputs),
        ) = (&mut output, &terminal)
        {
            if dashboard.quit {
                break;
            }
            if woke == Woke::Redraw {
                for addr in dashboard.model.hosts.take_requests() {
                    if let Err(busy) = inputs.resolver.request(addr) {
                        dashboard.update(Message::Model(Action::HostName(busy)));
                    }
                }
                screen.draw(|frame| view::render(dashboard, &clock, frame))?;
            }
        }
    }
    finish(source, output, log, clock)
}

/// A refresh tick: the dashboard reads the map and the kernel's counters; JSON reports lost
/// records.
fn refresh(
    source: &mut Source,
    output: &mut Output,
    clock: &WallClock,
    log: &mut Log,
) -> anyhow::Result<()> {
    let counters = source.tables.counters();
    source.read_health(output);
    if let Output::Json {
        samples, metrics, ..
    } = output
    {
        // Counts as of now (for the metrics), then one line per open socket.
        // Without either, nothing reads the counts between a socket's records.
        if *samples || metrics.is_some() {
            source.refresh_counts(output, log, counters.ringbuf_drops)?;
        }
        if let Output::Json {
            samples: true,
            model,
            out,
            clock,
            scope,
            ..
        } = output
        {
            let now_ns = model.now_ns;
            for socket in model.open.values().filter(|s| scope.matches(s)) {
                Record::sample(socket, model.processes.get(socket.pid()), clock, now_ns)
                    .write_line(out)?;
            }
        }
    }
    match output {
        Output::Json {
            out,
            reported_drops,
            ..
        } => {
            let drops = counters.ringbuf_drops;
            if drops > *reported_drops {
                let time = clock.unix_secs(monotonic_ns());
                Record::Lost {
                    time,
                    count: drops - *reported_drops,
                    total: drops,
                }
                .write_line(out)?;
                *reported_drops = drops;
            }
        }
        Output::Dashboard { .. } => {
            source.refresh_counts(output, log, counters.ringbuf_drops)?;
            if let Output::Dashboard { dashboard, .. } = output {
                dashboard.update(Message::Model(Action::Counters(counters)));
                // The socket whose details are shown: who holds it, looked up while shown.
                let shown = dashboard
                    .view
                    .details
                    .and_then(|id| dashboard.model.socket(id));
                if let Some(socket) = shown.filter(|s| !s.is_closed()) {
                    let holders = Tracker::holders(socket);
                    dashboard.update(Message::Model(Action::Change(holders)));
                }
            }
        }
    }
    Ok(())
}

fn on_input(input: Input, dashboard: &mut Dashboard) -> anyhow::Result<Woke> {
    match input {
        Input::Answer(answer) => {
            // Names show at the next refresh.
            dashboard.update(Message::Model(Action::HostName(answer)));
            Ok(Woke::Quietly)
        }
        Input::Key(Some(Ok(TermEvent::Key(key)))) => {
            if let Some(message) = keys::action_for(key, dashboard.view.key_mode()) {
                dashboard.update(message);
            }
            Ok(Woke::Redraw)
        }
        Input::Key(Some(Ok(TermEvent::Resize(width, height)))) => {
            dashboard.update(Message::View(ViewAction::Resize { width, height }));
            Ok(Woke::Redraw)
        }
        Input::Key(Some(Ok(_))) => Ok(Woke::Redraw),
        Input::Key(Some(Err(error))) => Err(error).context("reading the terminal"),
        Input::Key(None) => Ok(Woke::Stop),
    }
}

/// Whatever arrived before the stop is still reported; JSON then lists what is still open and
/// the run's totals.
fn finish(
    source: &mut Source,
    mut output: Output,
    log: &mut Log,
    clock: WallClock,
) -> anyhow::Result<()> {
    if matches!(output, Output::Dashboard { .. }) {
        return Ok(());
    }
    // The last read: what it misses, bar what opened since, lost its close record.
    let (map, now_ns, opened) = source.read_then_drain(&mut output, log)?;
    for change in source
        .tracker
        .finish(&map, &output.model().open, &opened, now_ns)
    {
        output.apply(change)?;
    }
    output.observe_map(map, now_ns);
    let counters = source.tables.counters();
    let Output::Json {
        model,
        mut out,
        scope,
        ..
    } = output
    else {
        return Ok(());
    };
    let open: Vec<&Socket> = model.open.values().filter(|s| scope.matches(s)).collect();
    for socket in &open {
        Record::open(socket, model.processes.get(socket.pid()), &clock, now_ns)
            .write_line(&mut out)?;
    }
    // The totals count what the kernel tracked (with `--pid`/`--port`, their sockets only);
    // the scope chooses which sockets are listed.
    Record::End {
        time: clock.unix_secs(now_ns),
        open: open.len(),
        lost: counters.ringbuf_drops,
        untracked: counters.tracked_full,
        repairs: model.totals.repairs,
        connects: model.totals.connects,
        failed_connects: model.totals.failed_connects,
    }
    .write_line(&mut out)?;
    out.flush().context("writing to stdout")
}
