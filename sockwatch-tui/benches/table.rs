//! Refresh and render time of the socket table at 100, 10k and 100k rows, on synthetic data.
//!
//! `table/N/refresh`: what one tick does with the counters it read (`Message::Model(Action::
//! Counts { .. })`, where the kernel counts by socket) for N open sockets whose byte counts all
//! changed (rates, row bookkeeping, selection); `table/N/refresh_tenth`: the same where a
//! tenth of them moved (as a refresh reads only what moved: the 10% sending);
//! `table/N/render`: one `view::render` of the dashboard that refresh left, into a 200x50
//! ratatui `TestBackend`, as each refresh of the dashboard draws it; `table/N/visible`:
//! `ViewState::visible` alone, the filtered and sorted listing the table is drawn from, to tell
//! its cost from the rest. Each
//! tick of the dashboard pays a refresh and a render. Run by `cargo xtask bench`, or alone:
//! `cargo bench -p sockwatch-tui --bench table`.

use std::{cell::Cell, hint::black_box, net::Ipv4Addr, time::Duration};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use ratatui::{backend::TestBackend, Terminal};
use sockwatch_tui::{
    clock::WallClock,
    kernel::by_socket::Count,
    model::{dns::HostNames, Action, Model},
    socket::{Socket, SocketId, SocketKey},
    view::{
        self,
        state::{ViewAction, ViewState},
        Dashboard, Message,
    },
};

const SIZES: [usize; 3] = [100, 10_000, 100_000];
const SEC: u64 = 1_000_000_000;
/// The terminal the frames are drawn into.
const WIDTH: u16 = 200;
const HEIGHT: u16 = 50;

/// N sockets as the kernel map would hold them at `tick`: 50 per process, each sending at its
/// own rate, so that sorting by send rate has work to do.
fn entries(n: usize, tick: u64) -> Vec<Socket> {
    (0..n as u64)
        .map(|i| {
            let key = key(i);
            let mut socket = Socket::new(
                key,
                SEC,
                Ipv4Addr::new(127, 0, (i >> 8) as u8, i as u8),
                1024 + (i % 50_000) as u16,
                format!("worker-{}", key.pid % 97),
            );
            socket.lport = 40_000 + (i % 20_000) as u16;
            (socket.bytes_sent, socket.bytes_recv) = bytes(i, tick);
            socket
        })
        .collect()
}

/// Socket `i`'s (pid, fd).
fn key(i: u64) -> SocketKey {
    SocketKey {
        pid: 1000 + (i / 50) as u32,
        fd: 3 + (i % 50) as u32,
    }
}

/// Socket `i`'s counters (sent, received) at `tick`.
fn bytes(i: u64, tick: u64) -> (u64, u64) {
    (tick * (i * 7919 % 100_003), tick * (i * 104_729 % 10_007))
}

/// The counts a refresh reads at `tick` where one row in `every` moved: made as the kernel
/// side makes them, without whole rows (whose freed strings would burden the timed refresh).
fn counts(n: usize, tick: u64, every: usize) -> Vec<Count> {
    (0..n as u64)
        .step_by(every)
        .map(|i| {
            let (sent, recv) = bytes(i, tick);
            Count {
                id: SocketId::new(key(i), SEC),
                sent,
                recv,
            }
        })
        .collect()
}

/// A model that has seen two snapshots of N sockets (so rates exist), in a 200x50 terminal.
fn model(n: usize) -> Dashboard {
    let mut model = Model::new("tracepoint");
    model.hosts = HostNames::new(false);
    let mut dashboard = Dashboard::new(model, ViewState::default());
    dashboard.update(Message::View(ViewAction::Resize {
        width: WIDTH,
        height: HEIGHT,
    }));
    for tick in 1..=2 {
        dashboard.update(Message::Model(Action::Snapshot {
            map: entries(n, tick),
            now_ns: tick * SEC,
        }));
    }
    dashboard
}

fn table(c: &mut Criterion) {
    let clock = WallClock::default();
    for n in SIZES {
        let mut group = c.benchmark_group(format!("table/{n}"));
        // A 100k-row iteration takes long: the same few iterations per sample, not a ramp.
        group.sampling_mode(SamplingMode::Flat);
        // Built on first use, so a filtered run (`-- table/100/`) skips the big ones.
        let mut slot: Option<Dashboard> = None;
        let tick = Cell::new(3u64);
        // A tick's counts from the kernel: every row's, then (its own model: rows that stopped
        // moving would keep the first one's listing unsettled) a tenth of them.
        let mut tenth: Option<Dashboard> = None;
        for (name, every, kept) in [("refresh", 1, &mut slot), ("refresh_tenth", 10, &mut tenth)] {
            group.bench_function(name, |b| {
                let model = kept.get_or_insert_with(|| model(n));
                b.iter_batched(
                    || {
                        let t = tick.get();
                        tick.set(t + 1);
                        (counts(n, t, every), t * SEC)
                    },
                    |(counts, now_ns)| {
                        model.update(Message::Model(Action::Counts { counts, now_ns }));
                    },
                    BatchSize::PerIteration,
                );
            });
        }
        drop(tenth);
        group.bench_function("visible", |b| {
            let model = slot.get_or_insert_with(|| model(n));
            b.iter(|| black_box(&model.view).visible(black_box(&model.model)));
        });
        let mut terminal = Terminal::new(TestBackend::new(WIDTH, HEIGHT)).expect("a test terminal");
        group.bench_function("render", |b| {
            let model = slot.get_or_insert_with(|| model(n));
            b.iter(|| {
                terminal
                    .draw(|frame| view::render(black_box(model), &clock, frame))
                    .expect("drawing into a test terminal");
            });
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Short runs: the whole `cargo xtask bench` has a 10-minute budget on 2 cores.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = table
}
criterion_main!(benches);
