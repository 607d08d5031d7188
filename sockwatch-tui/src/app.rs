//! The one task that owns the state: it waits on the ring buffer, a refresh tick, the terminal
//! and signals, turns each into reducer actions, and renders or prints the result.

use std::{
    io::{self, IsTerminal, Write},
    time::Duration,
};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use crossterm::event::{Event as TermEvent, EventStream};
use futures::StreamExt;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval, MissedTickBehavior},
};

use crate::{
    cli::Args,
    clock::{monotonic_ns, WallClock},
    dns::{self, HostNames, Resolver},
    events::{KernelEvent, KernelRecord, TrackedEntry},
    json::Record,
    logfile::Log,
    probes::{self, KernelTables, LoadOptions},
    reducer::{Action, Model},
    terminal::TerminalGuard,
    tracker::Tracker,
    ui,
    view_state::{ViewAction, ViewState},
};

/// Where socket events come from: the ring buffer, settled by the tracker against the maps.
struct Source {
    ring: AsyncFd<RingBuf<MapData>>,
    tables: KernelTables,
    tracker: Tracker,
}

impl Source {
    /// Every event waiting in the ring buffer (does not wait).
    fn drain(&mut self, log: &mut Log) -> Vec<KernelEvent> {
        let Self {
            ring,
            tables,
            tracker,
        } = self;
        let mut events = Vec::new();
        let ring = ring.get_mut();
        while let Some(item) = ring.next() {
            match KernelRecord::decode(&item) {
                Ok(record) => events.extend(tracker.handle(record, tables)),
                Err(error) => log.line(format_args!("skipping a ring buffer record: {error}")),
            }
        }
        events
    }

    /// Waits until the ring buffer has records, then takes them all.
    async fn next_batch(&mut self, log: &mut Log) -> anyhow::Result<Vec<KernelEvent>> {
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .context("waiting on the ring buffer")?;
        guard.clear_ready();
        drop(guard);
        Ok(self.drain(log))
    }

    fn reconcile(&mut self) -> Vec<KernelEvent> {
        self.tracker.reconcile(&mut self.tables, monotonic_ns())
    }

    /// The kernel's map as of now, with what user space knows added.
    fn snapshot(&self) -> Vec<TrackedEntry> {
        let mut entries = self.tables.snapshot();
        for entry in &mut entries {
            self.tracker.enrich(entry);
        }
        entries
    }
}

/// Runs until `q`, a signal, or `--duration`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut log = Log::open(args.log_file.as_deref())?;
    if !args.json && !std::io::stdout().is_terminal() {
        anyhow::bail!("the dashboard needs a terminal on stdout; use --json for scripts");
    }
    let options = LoadOptions {
        max_sockets: args.max_sockets,
        ring_bytes: args.ring_kib * 1024,
        directions: args.direction.mask(),
    };
    let (probes, ring, tables) = probes::attach(args.probe, options)?;
    log.line(format_args!("attached the {} probes", probes.backend));
    let clock = WallClock::now();
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for as long as the
    // AsyncFd owns the RingBuf.
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("watching the event ring buffer")?;
    let mut source = Source {
        ring,
        tables,
        tracker: Tracker::default(),
    };
    let backend = probes.backend.to_string();
    let result = if args.json {
        run_json(&args, &backend, &mut source, &clock, &mut log).await
    } else {
        run_dashboard(&args, &backend, &mut source, &clock, &mut log).await
    };
    probes.release();
    result
}

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

fn write_events(out: &mut impl Write, events: &[KernelEvent], clock: &WallClock) -> io::Result<()> {
    for event in events {
        Record::from_event(event, clock).write_line(out)?;
    }
    out.flush()
}

async fn run_json(
    args: &Args,
    backend: &str,
    source: &mut Source,
    clock: &WallClock,
    log: &mut Log,
) -> anyhow::Result<()> {
    let mut stop = Stop::new(args.duration)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let now = clock.unix_secs(monotonic_ns());
    Record::Start {
        time: now,
        probe: backend,
        pid: std::process::id(),
        tracked_map_id: source.tables.tracked_map_id,
    }
    .write_line(&mut out)?;
    out.flush()?;
    if !args.no_existing {
        let existing = source.tracker.adopt_existing(
            &mut source.tables,
            args.direction.mask(),
            monotonic_ns(),
        );
        write_events(&mut out, &existing, clock).context("writing to stdout")?;
    }
    let mut tick = every(args.interval());
    let mut reconcile = every(args.reconcile_interval());
    let mut reported_drops = 0;
    loop {
        let events = tokio::select! {
            batch = source.next_batch(log) => batch?,
            _ = reconcile.tick() => source.reconcile(),
            _ = tick.tick() => {
                let drops = source.tables.counters().ringbuf_drops;
                if drops > reported_drops {
                    let time = clock.unix_secs(monotonic_ns());
                    Record::Lost { time, count: drops - reported_drops, total: drops }
                        .write_line(&mut out)?;
                    out.flush()?;
                    reported_drops = drops;
                }
                continue;
            }
            () = stop.wait() => break,
        };
        write_events(&mut out, &events, clock).context("writing to stdout")?;
    }
    // Whatever arrived before the stop is still reported, then what is still open.
    let events = source.drain(log);
    write_events(&mut out, &events, clock).context("writing to stdout")?;
    let now_ns = monotonic_ns();
    let open = source.snapshot();
    for entry in &open {
        Record::open(entry, clock, now_ns).write_line(&mut out)?;
    }
    let counters = source.tables.counters();
    Record::End {
        time: clock.unix_secs(now_ns),
        open: open.len(),
        lost: counters.ringbuf_drops,
        untracked: counters.tracked_full,
        repairs: source.tracker.repairs,
    }
    .write_line(&mut out)?;
    out.flush().context("writing to stdout")
}

async fn run_dashboard(
    args: &Args,
    backend: &str,
    source: &mut Source,
    clock: &WallClock,
    log: &mut Log,
) -> anyhow::Result<()> {
    let mut stop = Stop::new(args.duration)?;
    let mut terminal = TerminalGuard::enter()?;
    let mut keys = EventStream::new();
    let mut model = Model::new(backend);
    // NO_COLOR (no-color.org): set and not empty means no colours.
    let color = std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    model.view = ViewState::new(args.view_options(color));
    model.hosts = HostNames::new(!args.no_resolve);
    if let Ok((width, height)) = crossterm::terminal::size() {
        model.update(Action::View(ViewAction::Resize { width, height }));
    }
    // Reverse DNS on worker threads; their answers come back on this channel.
    let (answer_tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let resolver = Resolver::start(dns::WORKERS, dns::system_lookup, move |answer| {
        answer_tx.send(answer).is_ok()
    })
    .context("starting the name resolver threads")?;
    if !args.no_existing {
        for event in
            source
                .tracker
                .adopt_existing(&mut source.tables, args.direction.mask(), monotonic_ns())
        {
            model.update(Action::Kernel(event));
        }
    }
    let mut tick = every(args.interval());
    let mut reconcile = every(args.reconcile_interval());
    loop {
        tokio::select! {
            batch = source.next_batch(log) => {
                for event in batch? {
                    model.update(Action::Kernel(event));
                }
                // Rendering waits for the tick: a burst of events costs one frame, not many.
                continue;
            }
            _ = reconcile.tick() => {
                for event in source.reconcile() {
                    model.update(Action::Kernel(event));
                }
                continue;
            }
            _ = tick.tick() => {
                model.update(Action::Snapshot { entries: source.snapshot(), now_ns: monotonic_ns() });
                let mut counters = source.tables.counters();
                counters.repairs = source.tracker.repairs;
                model.update(Action::Counters(counters));
            }
            Some(answer) = answers.recv() => {
                // Names show at the next refresh.
                model.update(Action::HostName(answer));
                continue;
            }
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(key))) => {
                    if let Some(action) = ui::keys::action_for(key, model.view.key_mode()) {
                        model.update(action);
                    }
                }
                Some(Ok(TermEvent::Resize(width, height))) => {
                    model.update(Action::View(ViewAction::Resize { width, height }));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error).context("reading the terminal"),
                None => break,
            },
            () = stop.wait() => break,
        }
        if model.quit {
            break;
        }
        for addr in model.hosts.take_requests() {
            if let Err(busy) = resolver.request(addr) {
                model.update(Action::HostName(busy));
            }
        }
        terminal.draw(|frame| ui::view(&model, clock, frame))?;
    }
    Ok(())
}
