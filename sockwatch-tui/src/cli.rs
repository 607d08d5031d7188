//! Command-line flags.

use std::{path::PathBuf, time::Duration};

use clap::{error::ErrorKind, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::{
    socket::Families,
    view::{filter::Scope, state::ViewOptions},
};

pub use crate::kernel::loader::ProbeChoice;

/// What else sockwatch-tui does besides watching.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// What this machine offers and what sockwatch will use: each backend (or why not), BTF,
    /// tracefs, the ring buffer, privileges, perf_event_paranoid, lockdown, the pid
    /// namespace. Exits 0 when a backend can attach.
    Check,
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff; `man -l` shows it).
    Man,
}

/// Which sockets to track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectionChoice {
    /// Sockets this machine connected (connect).
    Out,
    /// Connections peers made to us (accept).
    In,
    Both,
}

impl DirectionChoice {
    /// As a `sockwatch_common::directions` mask.
    pub fn mask(self) -> u32 {
        use sockwatch_common::directions::{INBOUND, OUTBOUND};
        match self {
            Self::Out => OUTBOUND,
            Self::In => INBOUND,
            Self::Both => OUTBOUND | INBOUND,
        }
    }
}

/// Watch TCP and UDP sockets (IPv4 and IPv6) live with eBPF: every connect, the bytes each
/// socket sends, every close.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "sockwatch-tui",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Without one: the dashboard (or --json, --headless).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Probe backend.
    #[arg(long, value_enum, default_value_t = ProbeChoice::Auto)]
    pub probe: ProbeChoice,

    /// Track outbound (connect), inbound (accept) or both.
    #[arg(long, value_enum, default_value_t = DirectionChoice::Both)]
    pub direction: DirectionChoice,

    /// Only IPv4 sockets (an IPv6 socket whose peer is IPv4-mapped counts as IPv4).
    #[arg(short = '4', long, conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6 sockets.
    #[arg(short = '6', long)]
    pub ipv6: bool,

    /// Do not pick up the sockets already open when sockwatch starts.
    #[arg(long)]
    pub no_existing: bool,

    /// Headless: write one JSON object per line to stdout for each connect and close.
    #[arg(long)]
    pub json: bool,

    /// With --json: also a `sample` record per open socket at every refresh (counts, RTT,
    /// retransmits, window, queues).
    #[arg(long, requires = "json")]
    pub json_samples: bool,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (with the dashboard, --json, or
    /// --headless): bytes, connects, accepts, closes and open sockets per process name and
    /// owner, and sockwatch's own health.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// With --metrics: series per remote end too (one per address and port: mind the
    /// cardinality).
    #[arg(long, requires = "metrics")]
    pub metrics_by_remote: bool,

    /// Neither the dashboard nor JSON: only the --metrics endpoint (runs as a service).
    #[arg(long, requires = "metrics", conflicts_with = "json")]
    pub headless: bool,

    /// Play back a recorded --json run (`-`: from stdin) in the dashboard, at its recorded
    /// pace (`+`/`-` change it, space pauses), ending on its final state. Needs no root;
    /// record with --json-samples for rates between records.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "headless", "metrics"])]
    pub replay: Option<PathBuf>,

    /// Stop by itself after this many seconds (with the dashboard too).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// Refresh interval of the dashboard and of byte counters, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub interval: u64,

    /// Write diagnostics to this file (never to the dashboard's screen).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Most sockets tracked at once in the kernel map.
    #[arg(long, value_name = "N", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(64..=4_194_304))]
    pub max_sockets: u32,

    /// How often tracked sockets are checked against /proc, in milliseconds, whatever a check
    /// costs (for tests; by default every 5 s, or less often as it keeps the checks under their
    /// share of a core).
    #[arg(long, value_name = "MS", hide = true,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub reconcile_ms: Option<u64>,

    /// How often TCP health is read at most, in milliseconds, whatever a read costs (for tests;
    /// by default as often as keeps the reads under their share of a core). Reads come with
    /// refreshes: 1 means at every refresh.
    #[arg(long, value_name = "MS", hide = true,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub health_ms: Option<u64>,

    /// Entries a batched read of a kernel map asks for per call (for tests: a few sockets then
    /// take several calls).
    #[arg(long, value_name = "N", default_value_t = crate::kernel::bulk::BATCH, hide = true,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub read_batch: u32,

    /// How long after a refresh that read the maps whole the next may, in milliseconds (by
    /// default: spaced by what one costs). For tests: refreshes that read only what moved.
    #[arg(long, value_name = "MS", hide = true,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub full_read_ms: Option<u64>,

    /// Hot counter slots of the socket backend (an even number; by default a slot and a half
    /// per `--max-sockets`). For tests: a few slots make sockets count without one.
    #[arg(long, value_name = "N", hide = true, value_parser = parse_hot_slots)]
    pub hot_slots: Option<u32>,

    /// Size of the kernel-to-user event ring buffer, in KiB (a power of two).
    ///
    /// 4 MiB takes a storm of 50,000 loopback connections opened in a second (100,000 sockets):
    /// the bench's storm dropped none at 4 MiB, with records drained every 100 ms and on a
    /// wake-up once a sixteenth of the ring waits; 2 MiB began to drop (4,240 in one run, none
    /// in another). It is resident in sockwatch's memory whole (mapped once: `kernel/ring.rs`).
    #[arg(long, value_name = "KIB", default_value_t = 4_096, value_parser = parse_ring_kib)]
    pub ring_kib: u32,

    /// Show only these processes (repeat or comma-separate for several).
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,

    /// Show only processes whose name contains NAME (repeatable).
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,

    /// Show only sockets with this remote or local port (repeat or comma-separate).
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub port: Vec<u16>,

    /// Dashboard: do not look up host names of destinations (the `n` key turns them on).
    #[arg(long)]
    pub no_resolve: bool,

    /// Dashboard: keep closed sockets listed, dimmed, for SECS (the `c` key toggles, 5 s).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub linger: Option<Duration>,
}

impl Args {
    /// The families to track, as a `sockwatch_common::families` mask (both by default).
    pub fn families(&self) -> u32 {
        use sockwatch_common::families::{BOTH, IPV4, IPV6};
        match (self.ipv4, self.ipv6) {
            (true, _) => IPV4,
            (_, true) => IPV6,
            _ => BOTH,
        }
    }

    /// What clap cannot check by itself, failing as its own errors do (exit status 2): the
    /// kernel keeps at most `scope::MAX_VALUES` of each of `--pid` and `--port`.
    pub fn checked(self) -> Result<Self, clap::Error> {
        let most = sockwatch_common::scope::MAX_VALUES as usize;
        for (flag, values) in [("--pid", self.pid.len()), ("--port", self.port.len())] {
            if values > most {
                let message = format!("{flag}: at most {most} values");
                return Err(Self::command().error(ErrorKind::TooManyValues, message));
            }
        }
        Ok(self)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval)
    }

    /// How often the checks against /proc come at most (`--reconcile-ms`, or 5 s).
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_millis(self.reconcile_ms.unwrap_or(5000))
    }

    /// `--pid`/`--comm`/`--port` and `-4`/`-6`: which sockets are shown, in the dashboard and
    /// in JSON.
    pub fn scope(&self) -> Scope {
        Scope {
            pids: self.pid.clone(),
            comms: self.comm.clone(),
            ports: self.port.clone(),
            families: Families::from_mask(self.families()),
        }
    }

    /// The dashboard's starting view: the scope and `--linger`.
    pub fn view_options(&self, color: bool) -> ViewOptions {
        ViewOptions {
            scope: self.scope(),
            linger_ns: self
                .linger
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            color,
        }
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 31_536_000.0) {
        return Err(format!("`{text}` must be between 0 and one year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of KiB"))?;
    // The kernel wants a power-of-two multiple of the page size.
    if !(4..=1_048_576).contains(&kib) || !kib.is_power_of_two() {
        return Err(format!(
            "`{text}` must be a power of two between 4 and 1048576"
        ));
    }
    Ok(kib)
}

fn parse_hot_slots(value: &str) -> Result<u32, String> {
    let slots: u32 = value.parse().map_err(|e| format!("{e}"))?;
    if !(2..=1 << 22).contains(&slots) || !slots.is_multiple_of(2) {
        return Err("an even number from 2 to 4194304".into());
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_be_positive_numbers() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-3").is_err());
        assert!(parse_seconds("soon").is_err());
        assert!(parse_seconds("NaN").is_err());
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_kib("4096"), Ok(4096));
        assert!(parse_ring_kib("3000").is_err());
        assert!(parse_ring_kib("2").is_err());
    }

    #[test]
    fn defaults_parse() {
        let args = Args::try_parse_from(["sockwatch-tui"]).expect("defaults are valid");
        assert_eq!(args.probe, ProbeChoice::Auto);
        assert!(!args.json);
        assert_eq!(args.interval(), Duration::from_secs(1));
        assert!(Args::try_parse_from(["sockwatch-tui", "--probe", "fentry"]).is_err());
        assert!(Args::try_parse_from(["sockwatch-tui", "--interval", "5"]).is_err());
    }

    #[test]
    fn dashboard_scope_flags() {
        let args = Args::try_parse_from([
            "sockwatch-tui",
            "--pid",
            "42,43",
            "--port",
            "443",
            "--comm",
            "curl",
            "--linger",
            "2.5",
        ])
        .expect("valid");
        let options = args.view_options(false);
        assert_eq!(options.scope.pids, [42, 43]);
        assert_eq!(options.scope.ports, [443]);
        assert_eq!(options.scope.comms, ["curl"]);
        assert_eq!(options.linger_ns, Some(2_500_000_000));
        let json = Args::try_parse_from(["sockwatch-tui", "--json", "--pid", "7", "--port", "80"])
            .expect("the scope applies to JSON too");
        assert_eq!((json.scope().pids, json.scope().ports), (vec![7], vec![80]));
        assert_eq!(options.scope.families, Families::Both);
        for bad in [
            &["--pid", "abc"][..],
            &["--port", "70000"],
            &["--linger", "-1"],
            &["--pid", "1", "--port", "x"],
        ] {
            let argv = std::iter::once("sockwatch-tui").chain(bad.iter().copied());
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_family_flag_narrows_the_scope() {
        let families = |argv: &[&str]| {
            let argv = std::iter::once("sockwatch-tui").chain(argv.iter().copied());
            Args::try_parse_from(argv).map(|args| args.scope().families)
        };
        assert_eq!(families(&[]).expect("valid"), Families::Both);
        assert_eq!(families(&["-4"]).expect("valid"), Families::Ipv4);
        assert_eq!(families(&["--ipv6"]).expect("valid"), Families::Ipv6);
        assert!(families(&["-4", "-6"]).is_err());
    }
}
