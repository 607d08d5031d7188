//! For each missed target, the cause the measurements of the same run point to, in numbers.

use super::{
    conditions::Condition,
    footprint::Load,
    overhead::{ProgramCosts, Workload, WorkloadSummary},
    report::Results,
    stats,
};

/// What an empty program's run measures under `kernel.bpf_stats_enabled`: the statistics'
/// own clock reads, included in every program's run time (the floor's median over the loops).
pub fn stats_floor_ns(costs: &[ProgramCosts]) -> Option<f64> {
    let runs: Vec<f64> = costs
        .iter()
        .filter(|c| c.condition == Condition::Floor)
        .flat_map(|c| c.programs.iter().map(|(_, _, ns)| *ns))
        .collect();
    stats::Summary::of(&runs).map(|s| s.median)
}

/// The programs' own run time for `workload` under `condition`, net of what the statistics
/// add to each run: "`enter_write` 110 ns × 1.00 + ..." and the sum per call.
fn programs(
    costs: &[ProgramCosts],
    workload: Workload,
    condition: Condition,
) -> Option<(String, f64)> {
    let c = costs
        .iter()
        .find(|c| c.workload == workload && c.condition == condition)?;
    let clock = stats_floor_ns(costs).unwrap_or(0.0);
    let net = |ns: f64| (ns - clock).max(0.0);
    let list: Vec<String> = c
        .programs
        .iter()
        .map(|(name, runs, ns)| format!("`{name}` {:.0} ns × {runs:.2}", net(*ns)))
        .collect();
    let own: f64 = c.programs.iter().map(|(_, runs, ns)| runs * net(*ns)).sum();
    Some((list.join(" + "), own))
}

/// The net run time of one of the workload's programs under sockwatch, if it ran.
fn net_run(costs: &[ProgramCosts], workload: Workload, name: &str) -> Option<f64> {
    let clock = stats_floor_ns(costs).unwrap_or(0.0);
    costs
        .iter()
        .find(|c| c.workload == workload && c.condition == Condition::Sockwatch)?
        .programs
        .iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, ns)| (ns - clock).max(0.0))
}

fn overhead_note(r: &Results, s: &WorkloadSummary, limit: f64) -> Option<String> {
    let multiple = s.sockwatch_vs_floor?;
    if multiple.median <= limit {
        return None;
    }
    let (a, b, c) = (s.ns[0].median, s.ns[1].median, s.ns[2].median);
    let mut note = format!(
        "**{}**: sockwatch adds {} per call where the floor adds {} ({} the floor's, target \
         {}): {} more than an empty program on the same tracepoints.",
        s.workload.label(),
        stats::duration_ns(c - a),
        stats::duration_ns(b - a),
        stats::times(multiple.median),
        stats::times(limit),
        stats::duration_ns(c - b)
    );
    if multiple.min <= limit {
        note.push_str(&format!(
            " The rounds range from {} to {}: the target is within this machine's run-to-run \
             spread, and another run may land on either side of it.",
            stats::times(multiple.min),
            stats::times(multiple.max)
        ));
    }
    if let Some((list, own)) = programs(&r.costs, s.workload, Condition::Sockwatch) {
        note.push_str(&format!(
            " The kernel's statistics put sockwatch's own programs at {} per call ({list}; net \
             of the {:.0} ns the statistics add to every run, an empty program's whole time)",
            stats::duration_ns(own),
            stats_floor_ns(&r.costs).unwrap_or(0.0)
        ));
        let rest = (c - b) - own;
        if rest > 0.2 * (c - b) {
            note.push_str(&format!(
                "; the other {} is in no program's run time (indirect costs, such as the cache \
                 lines the maps take from the syscall's own work; not measured apart).",
                stats::duration_ns(rest)
            ));
        } else {
            note.push('.');
        }
    }
    match s.workload {
        Workload::Send => note.push_str(
            " On a tracked socket, the entry looks the fd up in `TRACKED` and stashes the call \
             in `INFLIGHT` (a hash-map insert, plus an atomic add on the count of stashes); the \
             exit looks the stash up and deletes it (another atomic add), looks `TRACKED` up \
             again and adds the byte count atomically: five map operations and three atomic \
             adds per call where the floor does nothing. Proposed (kernel side, not changed \
             here): keep the stash in task storage (`bpf_task_storage_get`: a pointer from the \
             task, no hashing, no delete, no shared counter), or count bytes where the socket \
             and the result meet, with one `fexit` program on `sock_sendmsg` (this kernel has \
             BTF), which needs no stash and no second tracepoint.",
        ),
        Workload::WriteDevnull | Workload::Close => {
            let (enter, exit) = match s.workload {
                Workload::Close => ("enter_close", "exit_close"),
                _ => ("enter_write", "exit_write"),
            };
            let exit_ns = net_run(&r.costs, s.workload, exit);
            note.push_str(&format!(
                " On an ignored fd, `{enter}` ({}) reads the pid and looks `(pid, fd)` up in \
                 `TRACKED`, a hash lookup that misses; `{exit}` ({}) {}",
                net_run(&r.costs, s.workload, enter).map_or("n/a".into(), stats::duration_ns),
                exit_ns.map_or("n/a".into(), stats::duration_ns),
                if exit_ns.is_some_and(|ns| ns < 20.0) {
                    "costs next to nothing here because nothing is stashed anywhere: on a \
                     machine with tracked traffic in flight it looks `INFLIGHT` up on every \
                     exit again."
                } else {
                    "looks this thread's stash up in `INFLIGHT`, to find none."
                }
            ));
            note.push_str(
                " Proposed (kernel side, not changed here): a \"has tracked sockets\" bit per \
                 pid in an ARRAY map (the verifier inlines array lookups: a few instructions, no \
                 hashing), checked before `TRACKED` and `INFLIGHT`, so that processes without \
                 tracked sockets pay the floor and next to nothing else.",
            );
        }
        Workload::Churn => {}
    }
    Some(note)
}

pub fn notes(r: &Results) -> Vec<String> {
    let mut notes = Vec::new();
    for (workload, limit) in [
        (Workload::Send, 1.5),
        (Workload::WriteDevnull, 1.2),
        (Workload::Close, 1.2),
    ] {
        if let Some(note) = r
            .overhead
            .iter()
            .find(|s| s.workload == workload)
            .and_then(|s| overhead_note(r, s, limit))
        {
            notes.push(note);
        }
    }
    if let Some(s) = r.overhead.iter().find(|s| s.workload == Workload::Send) {
        if let Some(m) = s.article_vs_sockwatch.filter(|m| m.median < 10.0) {
            let (a, b, c, d) = (
                s.ns[0].median,
                s.ns[1].median,
                s.ns[2].median,
                s.ns[3].median,
            );
            notes.push(format!(
                "**send() against the article's way**: the per-event printf adds {} per call, \
                 sockwatch {}: {} less, not 10x. sockwatch's hook alone (the floor: an entry \
                 and an exit tracepoint on `sendto` running empty programs) adds {}, {:.0}% of \
                 the article's whole cost: with two syscall tracepoints per call, sockwatch \
                 cannot be more than {} cheaper than the article's way, whatever its programs \
                 do. A lighter hook (`fentry`/`fexit` on the socket functions, through BPF \
                 trampolines; this kernel has BTF) would raise that bound.",
                stats::duration_ns(d - a),
                stats::duration_ns(c - a),
                stats::times(m.median),
                stats::duration_ns(b - a),
                (b - a) / (d - a) * 100.0,
                stats::times((d - a) / (b - a))
            ));
        }
    }
    if let Some(idle) = r.footprint.iter().find(|p| matches!(p.load, Load::Idle)) {
        if idle.cpu_percent >= 0.5 {
            notes.push(format!(
                "**Idle CPU** is {:.2}% of a core: with nothing happening, `--json` mode wakes \
                 each `--interval` (1 s) to read the per-CPU counters and every 5 s to \
                 reconcile the tracked sockets against /proc.",
                idle.cpu_percent
            ));
        }
    }
    if let Some(p) = r
        .footprint
        .iter()
        .find(|p| matches!(p.load, Load::Hold(n) if n >= 5000))
    {
        let mib = |kib: u64| kib as f64 / 1024.0;
        // The peak is start-up's when the load did not raise it.
        if p.peak_rss_kib <= p.startup_peak_kib + 512 {
            notes.push(format!(
                "**Memory**: the peak RSS ({:.1} MiB at {} tracked sockets) is reached during \
                 start-up, before any load ({:.1} MiB right after attaching); at the end the \
                 heap holds {:.1} MiB and the mapped binary {:.1} MiB (the kernel's maps are \
                 not in the RSS).",
                mib(p.peak_rss_kib),
                p.tracked,
                mib(p.startup_peak_kib),
                mib(p.rss_anon_kib),
                mib(p.rss_file_kib)
            ));
        } else if mib(p.peak_rss_kib) >= 30.0 {
            notes.push(format!(
                "**RSS at {} tracked sockets** peaks at {:.1} MiB ({:.1} MiB after start-up; \
                 heap at the end {:.1} MiB).",
                p.tracked,
                mib(p.peak_rss_kib),
                mib(p.startup_peak_kib),
                mib(p.rss_anon_kib)
            ));
        }
    }
    notes.extend(churn_note(r));
    notes.extend(throughput_note(r));
    notes.extend(render_note(r));
    notes
}

/// Not a target, but the largest cost measured: what a socket's lifecycle pays.
fn churn_note(r: &Results) -> Option<String> {
    let s = r.overhead.iter().find(|s| s.workload == Workload::Churn)?;
    let costs = r
        .costs
        .iter()
        .find(|c| c.workload == Workload::Churn && c.condition == Condition::Sockwatch)?;
    let run = |name: &str| {
        costs
            .programs
            .iter()
            .find(|(n, _, _)| n == name)
            .map_or(f64::NAN, |(_, _, ns)| *ns)
    };
    let (a, b, c) = (s.ns[0].median, s.ns[1].median, s.ns[2].median);
    let mut note = format!(
        "**connect/close churn** (no target; the largest cost measured): sockwatch adds {} per \
         cycle where the floor adds {}. A cycle sends four events to user space (connect, \
         accept, two closes), and the time is in the programs that send them: `exit_connect` \
         {} per run and `exit_close` {}, against {} for `exit_accept4`, which does the same map \
         work and also sends an event but, right after the connect's, usually finds user space \
         already awake.",
        stats::duration_ns(c - a),
        stats::duration_ns(b - a),
        stats::duration_ns(run("exit_connect")),
        stats::duration_ns(run("exit_close")),
        stats::duration_ns(run("exit_accept4")),
    );
    if let Some(w) = costs.wakeups_per_call {
        note.push_str(&format!(
            " sockwatch was woken {w:.2} times per cycle (its voluntary context switches). An \
             event that finds it asleep makes `bpf_ringbuf_submit` wake it (an irq_work \
             interrupt, then the wake-up of a task sleeping on the other CPU), inside the \
             program, on the traced thread. Both programs insert a socket into the maps and \
             send one event; what differs is that user space is asleep for the connect's and \
             awake for the accept's, so `exit_connect`'s extra {} per run is taken to be the \
             wake-up (an inference: the statistics time whole programs, not their parts).",
            stats::duration_ns(run("exit_connect") - run("exit_accept4"))
        ));
    }
    note.push_str(&format!(
        " The article's way (d), three perf events per cycle to bpftrace, adds {} per cycle. \
         Proposed (kernel side, not changed here): submit with `BPF_RB_NO_WAKEUP` and wake \
         user space only when the ring holds a batch (`bpf_ringbuf_query(&EVENTS, \
         BPF_RB_AVAIL_DATA)` over a threshold, then `BPF_RB_FORCE_WAKEUP`), with user space \
         also draining the ring on its refresh tick: the same events for a fraction of the \
         wake-ups.",
        stats::duration_ns(s.ns[3].median - a)
    ));
    if let Some(busy) = r
        .throughput
        .iter()
        .filter(|t| t.step.ring_kib.is_none() && t.wakeups > 0)
        .max_by(|x, y| x.printed_per_sec().total_cmp(&y.printed_per_sec()))
    {
        note.push_str(&format!(
            " Under load the batching happens by itself: at {} sockwatch read {:.0} events \
             per wake-up.",
            stats::rate(busy.printed_per_sec()),
            busy.printed as f64 / busy.wakeups as f64
        ));
    }
    Some(note)
}

fn throughput_note(r: &Results) -> Option<String> {
    let steps: Vec<_> = r
        .throughput
        .iter()
        .filter(|s| s.step.ring_kib.is_none())
        .collect();
    let best = super::throughput::highest_lossless(&r.throughput);
    if steps.is_empty() || r.smoke {
        return None;
    }
    let capacity = best.map(|b| {
        let us_per_event = b.cpu_percent / 100.0 / b.printed_per_sec() * 1e6;
        format!(
            " At that rate sockwatch used {:.0}% of a core, {:.2} µs per event: one core would \
             take about {} at that cost (an extrapolation, not a measurement).",
            b.cpu_percent,
            us_per_event,
            stats::rate(1e6 / us_per_event)
        )
    });
    if best.is_some_and(|b| b.printed_per_sec() >= 200_000.0) {
        return Some(format!(
            "**Throughput**: the highest lossless step printed {}.{}",
            best.map_or(String::new(), |b| stats::rate(b.printed_per_sec())),
            capacity.unwrap_or_default()
        ));
    }
    let first_loss = steps.iter().find(|s| !s.zero_loss());
    let top = steps
        .iter()
        .max_by(|a, b| a.offered_per_sec().total_cmp(&b.offered_per_sec()))?;
    let mut note = format!(
        "**Throughput**: the highest lossless step printed {}.",
        best.map_or("nothing".into(), |b| stats::rate(b.printed_per_sec()))
    );
    match first_loss {
        Some(s) => note.push_str(&format!(
            " Loss starts at {} offered (sockwatch at {:.0}% of a core: {}).",
            stats::rate(s.offered_per_sec()),
            s.cpu_percent,
            if s.cpu_percent > 85.0 {
                "its one thread is saturated decoding, settling and printing each event"
            } else {
                "not CPU-bound: it did not get the core, the load processes did"
            }
        )),
        None => note.push_str(&format!(
            " Nothing was lost at any step: the load generators could offer at most {} on \
             this machine (sockwatch at {:.0}% of a core), so the limit measured is theirs, \
             not sockwatch's.",
            stats::rate(top.offered_per_sec()),
            top.cpu_percent
        )),
    }
    note.push_str(&capacity.unwrap_or_default());
    Some(note)
}

fn render_note(r: &Results) -> Option<String> {
    let render = r.render.as_ref()?;
    let big = render.iter().find(|x| x.rows == 100_000)?;
    let small = render.iter().find(|x| x.rows == 100)?;
    let (draw, listing, refresh) = (
        big.part("render")?.median,
        big.part("visible")?.median,
        big.part("refresh")?.median,
    );
    let mut note = String::new();
    if draw >= 5e6 {
        let grows = draw / small.part("render")?.median.max(1.0);
        note.push_str(&format!(
            "**Render of 100k rows** takes {} (target 5 ms; {:.0} times the 100-row render){}. ",
            stats::duration_ns(draw),
            grows,
            if grows > 10.0 {
                ": it grows with the table although a 50-line terminal shows about 30 rows. \
                 Proposed: build only the rows on screen, and filter and sort once per refresh, \
                 not per frame"
            } else {
                ""
            }
        ));
    }
    if refresh >= 50e6 {
        note.push_str(&format!(
            "**Refresh of 100k rows** takes {} per tick ({:.0}% of a core at the default 1 s \
             `--interval`): the filtered, sorted listing (`view_state::visible`) is {} of it, \
             the rest is the per-row bookkeeping of a snapshot (rows, rates, host names). Not a \
             target, but the next cost to cut at this scale: sort keys cached per row, and \
             snapshot rows updated in place rather than rebuilt.",
            stats::duration_ns(refresh),
            refresh / 1e9 * 100.0,
            stats::duration_ns(listing)
        ));
    }
    (!note.is_empty()).then_some(note)
}
