//! `--metrics`: the numbers in Prometheus's text format, for a Prometheus server to scrape.
//!
//! Series are per process name and owner (`comm`, `owner`: both bounded by what runs on the
//! machine, unlike pids), and per remote end only with `--metrics-by-remote`. Byte counters are
//! the open sockets' counts plus what closed sockets had moved by their close, so they never go
//! backwards when a socket closes; a row that moves to another holder (the socket backend)
//! leaves what it moved so far with its old series, and the new one counts from the move. Rendered at each scrape
//! from the model, in the one loop (`app.rs`); the HTTP side only carries requests to it.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::CONTENT_TYPE as CONTENT_TYPE_HEADER,
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{
    kernel::{decode::errno_name, loader::KernelCounters, tracker::Change},
    model::{processes::Processes, Model},
    socket::{Direction, Origin, Socket, SocketId, State},
    view::filter::Scope,
};

/// What a series is about: a process name and owner, and the remote end when asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Series {
    comm: Box<str>,
    owner: Arc<str>,
    remote: Option<Box<str>>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    by_remote: bool,
    /// `--pid`, `--comm`, `--port`, `-4`/`-6`: the sockets counted, as the dashboard and JSON
    /// show them.
    scope: Scope,
    /// Bytes sent and received by sockets that closed, by series.
    closed_bytes: HashMap<Series, (u64, u64)>,
    /// Connects by series and result (`ok`, `in_progress`, or the errno name).
    connects: HashMap<(Series, Box<str>), u64>,
    accepts: HashMap<Series, u64>,
    /// Closes by series and reason (`close`, `exit`, ...).
    closes: HashMap<(Series, &'static str), u64>,
    /// The last byte counts served, by series: what a counter may not fall below.
    served: HashMap<Series, (u64, u64)>,
    /// Rows that moved to another holder: their counts at the move, which their old series
    /// kept (the new one counts from there).
    baselines: HashMap<SocketId, (u64, u64)>,
}

/// The text format's content type (version 0.0.4), as Prometheus asks for it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Metrics {
    pub fn new(by_remote: bool, scope: Scope) -> Self {
        Self {
            by_remote,
            scope,
            ..Self::default()
        }
    }

    fn series(&self, socket: &Socket, processes: &Processes) -> Series {
        let owner: Arc<str> = socket
            .holder_pid()
            .and_then(|pid| processes.get(pid))
            .map_or_else(|| Arc::from(""), |p| Arc::from(p.owner.to_string()));
        Series {
            comm: socket.comm.as_str().into(),
            owner,
            // An accepted socket's peer port is the client's ephemeral one: a series per
            // connection. Its address alone is the peer.
            remote: self.by_remote.then(|| match socket.direction {
                Direction::Out => socket.remote().into(),
                Direction::In => socket.daddr().to_string().into(),
            }),
        }
    }

    /// Counts an open or a failed connect, as the kernel stage tells it, with `processes`
    /// read for its pid (closes and moves are counted on the model's row: [`Self::closed`],
    /// [`Self::moving`]).
    pub fn observe(&mut self, change: &Change, processes: &Processes) {
        match change {
            Change::Opened(socket) if self.scope.matches(socket) => {
                let series = self.series(socket, processes);
                match socket.origin {
                    Origin::Connect => {
                        let result = match socket.state {
                            State::Connecting => "in_progress",
                            State::Established => "ok",
                        };
                        *self.connects.entry((series, result.into())).or_default() += 1;
                    }
                    Origin::Accept => *self.accepts.entry(series).or_default() += 1,
                    Origin::Existing => {}
                }
            }
            Change::Failed { socket, errno } if self.scope.matches(socket) => {
                let series = self.series(socket, processes);
                let result = errno_name(*errno).into_boxed_str();
                *self.connects.entry((series, result)).or_default() += 1;
            }
            _ => {}
        }
    }

    /// `row`, as the model has it, is about to move to another holder (another series): what
    /// it moved so far stays with its series, and the new one counts from here.
    pub fn moving(&mut self, row: &Socket, to: SocketId, processes: &Processes) {
        let (sent, recv) = self.since_baseline(row);
        if self.scope.matches(row) {
            let bytes = self
                .closed_bytes
                .entry(self.series(row, processes))
                .or_default();
            bytes.0 = bytes.0.saturating_add(sent);
            bytes.1 = bytes.1.saturating_add(recv);
        }
        self.baselines.remove(&row.id);
        self.baselines.insert(to, (row.bytes_sent, row.bytes_recv));
    }

    /// `row` closed, as the model keeps it (its final counts, and the peer and local port
    /// learned while it was open).
    pub fn closed(&mut self, row: &Socket, processes: &Processes) {
        let (sent, recv) = self.since_baseline(row);
        self.baselines.remove(&row.id);
        if !self.scope.matches(row) {
            return;
        }
        let series = self.series(row, processes);
        // A connect that failed after it returned `in_progress`: its result now.
        if let Some(errno) = row.failed() {
            let result = if errno == 0 {
                "failed".into()
            } else {
                errno_name(errno)
            };
            *self
                .connects
                .entry((series.clone(), result.into_boxed_str()))
                .or_default() += 1;
        }
        let reason = row.closed.map_or("close", |c| c.cause.label());
        *self.closes.entry((series.clone(), reason)).or_default() += 1;
        let bytes = self.closed_bytes.entry(series).or_default();
        bytes.0 = bytes.0.saturating_add(sent);
        bytes.1 = bytes.1.saturating_add(recv);
    }

    /// What `socket` moved since it came to its holder (all it moved, unless it moved there).
    fn since_baseline(&self, socket: &Socket) -> (u64, u64) {
        let (sent, recv) = self.baselines.get(&socket.id).copied().unwrap_or_default();
        (
            socket.bytes_sent.saturating_sub(sent),
            socket.bytes_recv.saturating_sub(recv),
        )
    }

    /// The exposition: every series as of the model's last refresh, and sockwatch's own health.
    pub fn render(&mut self, model: &Model, counters: &KernelCounters) -> String {
        let mut open: BTreeMap<Series, u64> = BTreeMap::new();
        let mut bytes: BTreeMap<Series, (u64, u64)> = self
            .closed_bytes
            .iter()
            .map(|(series, counts)| (series.clone(), *counts))
            .collect();
        for socket in model.open.values().filter(|s| self.scope.matches(s)) {
            let series = self.series(socket, &model.processes);
            let (sent, recv) = self.since_baseline(socket);
            let entry = bytes.entry(series.clone()).or_default();
            entry.0 = entry.0.saturating_add(sent);
            entry.1 = entry.1.saturating_add(recv);
            *open.entry(series).or_default() += 1;
        }
        // Never below what was served (a counter that fell would read as a reset).
        for (series, counts) in &mut bytes {
            let served = self.served.entry(series.clone()).or_default();
            counts.0 = counts.0.max(served.0);
            counts.1 = counts.1.max(served.1);
            *served = *counts;
        }
        for (series, served) in &self.served {
            bytes.entry(series.clone()).or_insert(*served);
        }

        let mut out = String::new();
        family(
            &mut out,
            "sockwatch_bytes_sent_total",
            "counter",
            "Bytes sent on sockets, open and closed.",
            bytes.iter().map(|(s, b)| (labels(s, &[]), b.0)),
        );
        family(
            &mut out,
            "sockwatch_bytes_received_total",
            "counter",
            "Bytes received on sockets, open and closed.",
            bytes.iter().map(|(s, b)| (labels(s, &[]), b.1)),
        );
        let connects: BTreeMap<_, _> = self.connects.iter().collect();
        family(
            &mut out,
            "sockwatch_connects_total",
            "counter",
            "Outbound connects by result: ok, in_progress (a non-blocking connect under way; its \
             later failure counts again under its errno), or the errno name.",
            connects
                .iter()
                .map(|((s, result), n)| (labels(s, &[("result", result)]), **n)),
        );
        let accepts: BTreeMap<_, _> = self.accepts.iter().collect();
        family(
            &mut out,
            "sockwatch_accepts_total",
            "counter",
            "Inbound connections accepted.",
            accepts.iter().map(|(s, n)| (labels(s, &[]), **n)),
        );
        let closes: BTreeMap<_, _> = self.closes.iter().collect();
        family(
            &mut out,
            "sockwatch_closes_total",
            "counter",
            "Sockets that ended, by how: close, dup2, close_range, exec, exit, reconciled, vanished.",
            closes
                .iter()
                .map(|((s, reason), n)| (labels(s, &[("reason", reason)]), **n)),
        );
        family(
            &mut out,
            "sockwatch_open_sockets",
            "gauge",
            "Sockets open now.",
            open.iter().map(|(s, n)| (labels(s, &[]), *n)),
        );
        let own = [
            (
                "sockwatch_events_lost_total",
                "counter",
                "Kernel records lost to a full ring buffer: what they told is missing.",
                counters.ringbuf_drops,
            ),
            (
                "sockwatch_untracked_sockets_total",
                "counter",
                "Sockets not tracked because the kernel's map was full (--max-sockets).",
                counters.tracked_full,
            ),
            (
                "sockwatch_repairs_total",
                "counter",
                "Sockets whose end the checks against /proc found, not a kernel record.",
                model.totals.repairs,
            ),
        ];
        for (name, kind, help, value) in own {
            family(
                &mut out,
                name,
                kind,
                help,
                std::iter::once((String::new(), value)),
            );
        }
        family(
            &mut out,
            "sockwatch_probe_info",
            "gauge",
            "The probe backend in use (always 1).",
            std::iter::once((format!("{{probe=\"{}\"}}", escape(&model.backend)), 1)),
        );
        out
    }
}

/// A scrape waiting for its text: the loop that owns the model renders it and answers here.
pub type Scrape = oneshot::Sender<String>;

/// Scrapers served at once (Prometheus uses one connection per target).
const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take to send a request's headers (also between requests).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection is kept at most.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// The pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a scrape waits for the loop's answer (it answers between two wake-ups: at once,
/// unless the machine is starved).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` for the endpoint (before the probes attach, so that a taken port fails fast).
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
    listener
        .set_nonblocking(true)
        .context("--metrics: a non-blocking listener")?;
    Ok(listener)
}

/// Serves `GET /metrics` on `listener` (HTTP/1.1, hyper) for as long as the runtime runs: each
/// scrape goes to `scrapes` and its answer back to the scraper. Anything else is a 404.
pub fn serve(listener: std::net::TcpListener, scrapes: mpsc::Sender<Scrape>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .context("--metrics: registering the listener")?;
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            // At most MAX_CONNECTIONS at once: the rest wait in the listen backlog, and a
            // client that holds connections open cannot take sockwatch's fds.
            let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of fds, or a connection reset before it was taken: a pause, not a spin
                // of the one thread.
                Err(_) => {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let scrapes = scrapes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, scrapes.clone()));
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                // A connection lasts at most this long, idle or not.
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn answer(
    request: Request<Incoming>,
    scrapes: mpsc::Sender<Scrape>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(CONTENT_TYPE_HEADER, value);
        }
        Ok(response)
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "sockwatch: the metrics are at /metrics\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        );
    }
    let (tx, rx) = oneshot::channel();
    if scrapes.send(tx).await.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "sockwatch is stopping\n".into(),
        );
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(text)) => reply(StatusCode::OK, CONTENT_TYPE, text),
        _ => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "sockwatch did not answer in time\n".into(),
        ),
    }
}

/// One metric family: its help and type, then its samples (`{labels}`, value).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl Iterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// `{comm="curl",owner="nginx.service",remote="[::1]:80",extra="..."}`.
fn labels(series: &Series, extra: &[(&str, &str)]) -> String {
    let mut text = format!(
        "{{comm=\"{}\",owner=\"{}\"",
        escape(&series.comm),
        escape(&series.owner)
    );
    if let Some(remote) = &series.remote {
        let _ = write!(text, ",remote=\"{}\"", escape(remote));
    }
    for (name, value) in extra {
        let _ = write!(text, ",{name}=\"{}\"", escape(value));
    }
    text.push('}');
    text
}

/// A label value as the text format writes it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::socket::{CloseCause, Closed, Process, SocketKey};

    fn socket(pid: u32, fd: u32, comm: &str) -> Socket {
        let mut s = Socket::new(SocketKey { pid, fd }, 1, Ipv4Addr::LOCALHOST, 80, comm);
        s.bytes_sent = 100;
        s.bytes_recv = 10;
        s
    }

    fn sample<'a>(text: &'a str, line_start: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
    }

    /// Closed sockets' bytes stay in the totals; a connect, an accept and a close each count
    /// under their series; the owner label comes from the process.
    #[test]
    fn counters_keep_what_closed_sockets_moved() {
        let mut model = Model::counts_only("socket");
        model.update(crate::model::Action::Process {
            pid: 7,
            process: Some(Process::parse(7, "0::/system.slice/web.service\n", "")),
            now_ns: 0,
        });
        let mut metrics = Metrics::new(false, Scope::default());
        let counters = KernelCounters::default();
        for fd in [3, 4] {
            let change = Change::Opened(socket(7, fd, "curl"));
            metrics.observe(&change, &model.processes);
            model.apply(change);
        }
        let series = "{comm=\"curl\",owner=\"web.service\"}";
        let text = metrics.render(&model, &counters);
        assert_eq!(
            sample(&text, &format!("sockwatch_bytes_sent_total{series}")),
            Some("200")
        );
        assert_eq!(
            sample(&text, &format!("sockwatch_open_sockets{series}")),
            Some("2")
        );
        let mut closing = socket(7, 3, "curl");
        closing.close(
            Closed {
                at_ns: 5,
                tid: 7,
                cause: CloseCause::Exit,
            },
            150,
            20,
        );
        let kept = model
            .apply(Change::Closed(closing))
            .cloned()
            .expect("closed");
        metrics.closed(&kept, &model.processes);
        let text = metrics.render(&model, &counters);
        // 150 closed + 100 open.
        assert_eq!(
            sample(&text, &format!("sockwatch_bytes_sent_total{series}")),
            Some("250")
        );
        assert_eq!(
            sample(
                &text,
                "sockwatch_closes_total{comm=\"curl\",owner=\"web.service\",reason=\"exit\"}"
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                "sockwatch_connects_total{comm=\"curl\",owner=\"web.service\",result=\"ok\"}"
            ),
            Some("2")
        );
        assert_eq!(
            sample(&text, "sockwatch_probe_info{probe=\"socket\"}"),
            Some("1")
        );
    }

    /// A series whose socket went elsewhere stays at what it served.
    #[test]
    fn a_counter_never_goes_backwards() {
        let mut model = Model::counts_only("socket");
        let mut metrics = Metrics::new(false, Scope::default());
        let counters = KernelCounters::default();
        let change = Change::Opened(socket(7, 3, "worker"));
        model.apply(change);
        let series = "sockwatch_bytes_sent_total{comm=\"worker\",owner=\"\"}";
        assert_eq!(
            sample(&metrics.render(&model, &counters), series),
            Some("100")
        );
        model.open.remove(&SocketKey { pid: 7, fd: 3 });
        assert_eq!(
            sample(&metrics.render(&model, &counters), series),
            Some("100")
        );
    }

    /// A row that moves to another holder: its bytes so far stay with the old series, the new
    /// one counts what comes after; a new socket of the old holder adds to the old series.
    #[test]
    fn a_moved_row_splits_its_bytes_between_the_two_series() {
        let mut model = Model::counts_only("socket");
        let mut metrics = Metrics::new(false, Scope::default());
        let counters = KernelCounters::default();
        model.apply(Change::Opened(socket(7, 3, "server")));
        let from = model.open.values().next().expect("the row").id;
        let to = SocketKey { pid: 8, fd: 0 };
        let row = model.socket(from).expect("open").clone();
        metrics.moving(&row, SocketId::new(to, from.opened_ns), &model.processes);
        model.apply(Change::Moved {
            from,
            to,
            comm: "worker".into(),
        });
        model.open.get_mut(&to).expect("moved").bytes_sent = 150;
        let mut newer = socket(7, 4, "server");
        newer.bytes_sent = 60;
        model.apply(Change::Opened(newer));
        let text = metrics.render(&model, &counters);
        let sent = |comm: &str| {
            sample(
                &text,
                &format!("sockwatch_bytes_sent_total{{comm=\"{comm}\",owner=\"\"}}"),
            )
            .map(str::to_owned)
        };
        assert_eq!(sent("server").as_deref(), Some("160"), "{text}");
        assert_eq!(sent("worker").as_deref(), Some("50"), "{text}");
    }

    #[test]
    fn label_values_are_escaped_and_remotes_only_when_asked() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let model = Model::counts_only("socket");
        let mut metrics = Metrics::new(true, Scope::default());
        let s = socket(7, 3, "x");
        assert_eq!(
            labels(&metrics.series(&s, &model.processes), &[]),
            "{comm=\"x\",owner=\"\",remote=\"127.0.0.1:80\"}"
        );
        metrics.by_remote = false;
        assert_eq!(
            labels(&metrics.series(&s, &model.processes), &[]),
            "{comm=\"x\",owner=\"\"}"
        );
    }

    /// `--comm` (and the rest of the scope) narrows the metrics as it does the table.
    #[test]
    fn only_the_sockets_in_scope_count() {
        let mut model = Model::counts_only("socket");
        let scope = Scope {
            comms: vec!["curl".into()],
            ..Scope::default()
        };
        let mut metrics = Metrics::new(false, scope);
        for (fd, comm) in [(3, "curl"), (4, "wget")] {
            let change = Change::Opened(socket(7, fd, comm));
            metrics.observe(&change, &model.processes);
            model.apply(change);
        }
        let text = metrics.render(&model, &KernelCounters::default());
        assert!(text.contains("comm=\"curl\""), "{text}");
        assert!(!text.contains("wget"), "{text}");
    }
}
