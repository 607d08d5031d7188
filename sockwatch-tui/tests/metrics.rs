//! `--metrics` scraped by a real Prometheus server (Debian's package): what its query API
//! returns for a process's bytes is what that process sent, and `promtool` accepts the format.

mod support;

use std::{
    fs,
    io::Write,
    net::TcpListener,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    cgroup::Cgroup,
    load::{field, Load, LOAD_TIMEOUT},
    net,
    process::{self, output_within, Lines, COMMAND_TIMEOUT},
    record_of, Sockwatch,
};

/// How long Prometheus may take to start, and to have scraped what the test looks for (it
/// scrapes every second).
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two questions to Prometheus's query API: what it has scraped cannot be awaited.
const POLL: Duration = Duration::from_millis(250);

/// A Prometheus server scraping one target every second, stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sockwatch-prometheus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a directory for Prometheus");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sockwatch\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        // A free port (Prometheus does not say which one it took when given port 0).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running prometheus (Debian's package, installed by `cargo xtask setup`)");
        let lines = Lines::of(child.stderr.take().expect("piped stderr"), "prometheus");
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            let line = lines.next(deadline.saturating_duration_since(Instant::now()));
            if line.contains("Server is ready to receive web requests") {
                break;
            }
        }
        // Its later lines are drained by `lines`' thread until it exits.
        Self { child, port, dir }
    }

    /// The value of the one series `query` selects, once Prometheus has it.
    fn query(&self, query: &str) -> Option<u64> {
        let output = output_within(
            Command::new("curl").args([
                "-sfG",
                &format!("http://127.0.0.1:{}/api/v1/query", self.port),
                "--data-urlencode",
                &format!("query={query}"),
            ]),
            COMMAND_TIMEOUT,
            "curl to Prometheus",
        );
        let answer: Value = serde_json::from_slice(&output.stdout).ok()?;
        let result = answer["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{query} selects one series: {answer}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A process in a unit's cgroup sends bytes and exits: Prometheus's `sockwatch_bytes_sent_total`
/// for that owner is what the server received (and the close record said), after the socket
/// is gone; `promtool check metrics` accepts what sockwatch serves.
#[test]
fn prometheus_scrapes_exact_bytes_of_a_process() {
    let mut sw = Sockwatch::start(&["--metrics", "127.0.0.1:0"]);
    let addr = sw.start["metrics"]
        .as_str()
        .expect("the start record says where the metrics are")
        .to_owned();
    let server = net::CountingServer::start();
    let port = server.port.to_string();
    let unit = format!("metrics-{}.service", std::process::id());
    let cgroup = Cgroup::create(&unit);
    let mut load = Load::spawn_in(
        &cgroup,
        &["exit-without-close", "--port", &port, "--bytes", "12345"],
    );
    let line = load.line(LOAD_TIMEOUT);
    let (pid, fd) = (field(&line, "pid"), field(&line, "fd") as i32);
    // Its owner is read when its first record is (a process gone by then has none).
    let connect = sw.wait_for("the connect", record_of("connect", pid, fd));
    assert_eq!(connect["owner"], unit.as_str());
    load.tell("go");
    load.wait_exit(LOAD_TIMEOUT);
    let close = sw.wait_for("the close", record_of("close", pid, fd));
    let sent = server.next_total();
    assert_eq!(sent, 12345);
    assert_eq!(close["bytes_sent"], sent);
    drop(load);
    drop(cgroup);

    let prometheus = Prometheus::start(&addr);
    let query = format!("sockwatch_bytes_sent_total{{owner=\"{unit}\"}}");
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    let scraped = loop {
        if let Some(value) = prometheus.query(&query) {
            break value;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has no {query} after {PROMETHEUS_TIMEOUT:?}"
        );
        thread::sleep(POLL);
    };
    assert_eq!(scraped, sent, "{query}");
    let closes = format!("sockwatch_closes_total{{owner=\"{unit}\",reason=\"exit\"}}");
    assert_eq!(prometheus.query(&closes), Some(1), "{closes}");

    let exposition = output_within(
        Command::new("curl").args(["-sf", &format!("http://{addr}/metrics")]),
        COMMAND_TIMEOUT,
        "curl to sockwatch",
    );
    assert!(exposition.status.success(), "{exposition:?}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    promtool
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(&exposition.stdout)
        .expect("writing to promtool");
    let status = process::wait_or_kill(&mut promtool, COMMAND_TIMEOUT, "promtool");
    let mut problems = String::new();
    if let Some(mut stderr) = promtool.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut problems);
    }
    assert!(
        status.success(),
        "promtool check metrics: {problems}\n{}",
        String::from_utf8_lossy(&exposition.stdout)
    );
}
