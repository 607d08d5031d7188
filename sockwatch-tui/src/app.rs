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
    events::KernelEvent,
    json::Record,
    logfile::Log,
    probes::{self, KernelTables, MapSizes},
    reducer::{Action, Model},
    terminal::TerminalGuard,
    ui,
};

type EventRing = AsyncFd<RingBuf<MapData>>;

/// Runs until `q`, a signal, or `--duration`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut log = Log::open(args.log_file.as_deref())?;
    if !args.json && !std::io::stdout().is_terminal() {
        anyhow::bail!("the dashboard needs a terminal on stdout; use --json for scripts");
    }
    let sizes = MapSizes {
        max_sockets: args.max_sockets,
        ring_bytes: args.ring_kib * 1024,
    };
    let (probes, events, tables) = probes::attach(args.probe, sizes)?;
    log.line(format_args!("attached the {} probes", probes.backend));
    let clock = WallClock::now();
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for as long as the
    // AsyncFd owns the RingBuf.
    let events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("watching the event ring buffer")?;
    let backend = probes.backend.to_string();
    let result = if args.json {
        run_json(&args, &backend, events, &tables, &clock, &mut log).await
    } else {
        run_dashboard(&args, &backend, events, &tables, &clock, &mut log).await
    };
    drop(probes);
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

/// Takes every record waiting in the ring buffer.
fn drain(ring: &mut RingBuf<MapData>, log: &mut Log, mut each: impl FnMut(KernelEvent)) {
    while let Some(item) = ring.next() {
        match KernelEvent::decode(&item) {
            Ok(event) => each(event),
            Err(error) => log.line(format_args!("skipping a ring buffer record: {error}")),
        }
    }
}

async fn run_json(
    args: &Args,
    backend: &str,
    mut events: EventRing,
    tables: &KernelTables,
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
    }
    .write_line(&mut out)?;
    out.flush()?;
    let mut tick = interval(args.interval());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reported_drops = 0;
    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let mut write_result = Ok(());
                drain(guard.get_inner_mut(), log, |event| {
                    if write_result.is_ok() {
                        write_result = Record::from_event(&event, clock).write_line(&mut out);
                    }
                });
                guard.clear_ready();
                write_result.and_then(|()| out.flush()).context("writing to stdout")?;
            }
            _ = tick.tick() => {
                let drops = tables.counters().ringbuf_drops;
                if drops > reported_drops {
                    let time = clock.unix_secs(monotonic_ns());
                    Record::Lost { time, count: drops - reported_drops, total: drops }
                        .write_line(&mut out)?;
                    out.flush()?;
                    reported_drops = drops;
                }
            }
            () = stop.wait() => break,
        }
    }
    // Whatever arrived before the stop is still reported.
    let mut write_result = Ok(());
    drain(events.get_mut(), log, |event| {
        if write_result.is_ok() {
            write_result = Record::from_event(&event, clock).write_line(&mut out);
        }
    });
    write_result
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

async fn run_dashboard(
    args: &Args,
    backend: &str,
    mut events: EventRing,
    tables: &KernelTables,
    clock: &WallClock,
    log: &mut Log,
) -> anyhow::Result<()> {
    let mut stop = Stop::new(args.duration)?;
    let mut terminal = TerminalGuard::enter()?;
    let mut keys = EventStream::new();
    let mut model = Model::new(backend);
    let mut tick = interval(args.interval());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                drain(guard.get_inner_mut(), log, |event| model.update(Action::Kernel(event)));
                guard.clear_ready();
                // Rendering waits for the tick: a burst of events costs one frame, not many.
                continue;
            }
            _ = tick.tick() => {
                model.update(Action::Snapshot { entries: tables.snapshot(), now_ns: monotonic_ns() });
                model.update(Action::Counters(tables.counters()));
            }
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(key))) => {
                    if let Some(action) = ui::keys::action_for(key) {
                        model.update(action);
                    }
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
        terminal.draw(|frame| ui::view(&model, clock, frame))?;
    }
    Ok(())
}
