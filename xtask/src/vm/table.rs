//! The README's kernel-support table (kernel, backend, result, date), rewritten between its
//! markers after each run. A run's rows replace those of the same slot (the host, or one VM
//! series such as 6.1, whatever its build: a security update replaces its predecessor's rows);
//! other slots' rows stay as their last run left them.

use std::{
    fs,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

const START: &str = "<!-- kernel-support:start -->";
const END: &str = "<!-- kernel-support:end -->";
const HEADER: &str = "| kernel | backend | result | date |\n|---|---|---|---|\n";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The release first (`6.1.0-56-amd64 (Debian ...)`, `6.18.4 (host)`): rows are grouped
    /// by it.
    pub kernel: String,
    pub backend: String,
    pub result: String,
    pub date: String,
}

impl Row {
    /// A row dated today (UTC).
    pub fn new(kernel: &str, backend: &str, result: &str) -> Self {
        Self {
            kernel: kernel.to_owned(),
            backend: backend.to_owned(),
            result: result.replace('|', "/"),
            date: today(),
        }
    }

    fn release(&self) -> &str {
        self.kernel.split_whitespace().next().unwrap_or_default()
    }

    fn is_host(&self) -> bool {
        self.kernel.ends_with("(host)")
    }

    /// `(major, minor)` of the release (`6.12.117+deb12-amd64` → (6, 12)); (0, 0) if unreadable.
    fn series(&self) -> (u32, u32) {
        let mut numbers = self
            .release()
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse().unwrap_or(0));
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
    }

    /// Rows of one slot replace each other: the host's, or one VM series'.
    fn same_slot(&self, other: &Row) -> bool {
        match (self.is_host(), other.is_host()) {
            (true, true) => true,
            (false, false) => self.series() == other.series(),
            _ => false,
        }
    }
}

/// The host kernel's rows after `cargo test` ran the real-kernel tests on it (`passed`).
pub fn host_rows(auto_passed: bool, tracepoint_passed: bool) -> Vec<Row> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let kernel = format!("{release} (host)");
    let events = |path: &str| {
        ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .any(|root| Path::new(root).join("events").join(path).exists())
    };
    let tracepoints = events("syscalls/sys_enter_connect");
    let socket_layer = tracepoints && events("sock/sock_send_length");
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let verdict = |passed: bool| if passed { "pass" } else { "**FAIL**" };
    let mut rows = Vec::new();
    // `cargo test` runs with `--probe auto`: the socket layer, else tracepoints, else kprobes.
    if socket_layer {
        rows.push(Row::new(&kernel, "socket", verdict(auto_passed)));
    }
    if tracepoints {
        // Its own run when auto picked the socket backend; the same run otherwise.
        let passed = if socket_layer {
            tracepoint_passed
        } else {
            auto_passed
        };
        rows.push(Row::new(&kernel, "tracepoint", verdict(passed)));
    } else if kprobes {
        rows.push(Row::new(&kernel, "kprobe", verdict(auto_passed)));
    }
    if !kprobes {
        rows.push(Row::new(
            &kernel,
            "kprobe",
            "n/a: no kprobes in this kernel",
        ));
    }
    rows
}

/// Rewrites the table in `readme` with `rows`.
pub fn update(readme: &Path, rows: &[Row]) -> Result<()> {
    let text =
        fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let updated = merge(&text, rows)
        .with_context(|| format!("{} has no `{START}` ... `{END}` section", readme.display()))?;
    if updated != text {
        fs::write(readme, updated).with_context(|| format!("writing {}", readme.display()))?;
    }
    Ok(())
}

/// `text` with the table between the markers replaced; `None` without the markers.
fn merge(text: &str, rows: &[Row]) -> Option<String> {
    let start = text.find(START)? + START.len();
    let end = start + text[start..].find(END)?;
    let mut all: Vec<Row> = text[start..end]
        .lines()
        .filter_map(parse_row)
        .filter(|old| !rows.iter().any(|new| new.same_slot(old)))
        .collect();
    all.extend(rows.iter().cloned());
    // VM series oldest first, then the host; stable: each kernel's rows keep their order.
    all.sort_by_key(|row| (row.is_host(), row.series()));
    let mut table = String::from("\n");
    table.push_str(HEADER);
    for row in &all {
        table.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.kernel, row.backend, row.result, row.date
        ));
    }
    Some(format!("{}{table}{}", &text[..start], &text[end..]))
}

fn parse_row(line: &str) -> Option<Row> {
    let cells: Vec<_> = line
        .trim()
        .strip_prefix('|')?
        .strip_suffix('|')?
        .split('|')
        .map(str::trim)
        .collect();
    let [kernel, backend, result, date] = cells[..] else {
        return None;
    };
    if kernel == "kernel" || kernel.starts_with("---") {
        return None;
    }
    Some(Row {
        kernel: kernel.to_owned(),
        backend: backend.to_owned(),
        result: result.to_owned(),
        date: date.to_owned(),
    })
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a (year, month, day) of the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kernel: &str, backend: &str, result: &str, date: &str) -> Row {
        Row {
            kernel: kernel.to_owned(),
            backend: backend.to_owned(),
            result: result.to_owned(),
            date: date.to_owned(),
        }
    }

    #[test]
    fn a_run_replaces_its_slots_rows_only() {
        let readme = format!(
            "# x\n{START}\n{HEADER}\
             | 6.1.0-1-amd64 (Debian 6.1.1-1, QEMU) | kprobe | **FAIL**: x | 2020-01-01 |\n\
             | 6.12.9+deb12-amd64 (Debian 6.12.9-1, QEMU) | kprobe | pass (3 tests) | 2020-01-01 |\n\
             | 6.18.4 (host) | tracepoint | pass | 2020-01-01 |\n\
             {END}\nafter\n"
        );
        // A newer build of the 6.1 series replaces the old build's rows.
        let new = [
            row(
                "6.1.0-2-amd64 (Debian 6.1.2-1, QEMU)",
                "kprobe",
                "pass (3 tests)",
                "2021-02-03",
            ),
            row(
                "6.1.0-2-amd64 (Debian 6.1.2-1, QEMU)",
                "auto",
                "pass: picks tracepoint",
                "2021-02-03",
            ),
        ];
        let merged = merge(&readme, &new).expect("markers");
        assert_eq!(
            merged,
            format!(
                "# x\n{START}\n{HEADER}\
                 | 6.1.0-2-amd64 (Debian 6.1.2-1, QEMU) | kprobe | pass (3 tests) | 2021-02-03 |\n\
                 | 6.1.0-2-amd64 (Debian 6.1.2-1, QEMU) | auto | pass: picks tracepoint | 2021-02-03 |\n\
                 | 6.12.9+deb12-amd64 (Debian 6.12.9-1, QEMU) | kprobe | pass (3 tests) | 2020-01-01 |\n\
                 | 6.18.4 (host) | tracepoint | pass | 2020-01-01 |\n\
                 {END}\nafter\n"
            )
        );
        // Idempotent, and an empty section is filled.
        assert_eq!(merge(&merged, &new).as_deref(), Some(merged.as_str()));
        let empty = format!("{START}\n{END}\n");
        assert!(merge(&empty, &new).expect("markers").contains("| auto |"));
        assert_eq!(merge("no markers", &new), None);

        // The host's rows replace the host's, even on another release, and come last.
        let host = [row("6.19.1 (host)", "tracepoint", "pass", "2021-02-03")];
        let merged = merge(&merged, &host).expect("markers");
        assert!(!merged.contains("6.18.4"));
        assert!(merged.contains("| 6.12.9+deb12-amd64 (Debian 6.12.9-1, QEMU) | kprobe | pass (3 tests) | 2020-01-01 |\n| 6.19.1 (host) |"));
    }

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
