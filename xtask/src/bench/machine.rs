//! Where the benchmark ran: the machine, the kernel, the date, the tools, and whether anything
//! else was using the CPU (a 2-core machine shares every measurement with whatever else runs).

use std::{
    collections::HashMap,
    fs,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub bpftrace: String,
    pub commit: String,
    pub rustc: String,
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

pub fn describe() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown".into(), |m| m.trim().to_owned());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let root = crate::cmd::workspace_root();
    let root = root.to_string_lossy();
    let mut commit = command_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    if !command_line("git", &["-C", &root, "status", "--porcelain"]).is_empty() {
        commit.push_str(" + uncommitted changes");
    }
    Machine {
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cpu,
        cores,
        memory_gib,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |k| k.trim().to_owned()),
        bpftrace: command_line("bpftrace", &["--version"]),
        commit,
        rustc: command_line("rustc", &["--version"]),
    }
}

/// Other processes that used a noticeable share of a core: the benchmark's own processes
/// and kernel threads aside, anything here competed with the measurements.
#[derive(Clone, Debug, Default)]
pub struct Busy {
    /// `(command, highest percent of one core over a sampling window)`, busiest first.
    pub processes: Vec<(String, f64)>,
    /// The parts of the benchmark during which any of them was busy.
    pub phases: Vec<String>,
}

/// Percent of one core above which another process counts as load.
const BUSY_PERCENT: f64 = 5.0;

impl Busy {
    /// Samples every process's CPU time over `window`.
    pub fn sample(window: Duration) -> Self {
        let before = processes();
        let start = Instant::now();
        thread::sleep(window);
        let mut busy = Self::default();
        busy.add(&before, &processes(), start.elapsed());
        busy
    }

    /// Adds the processes that were busy between two snapshots `elapsed` apart, during
    /// `phase`.
    fn add_during(&mut self, before: &Snapshot, after: &Snapshot, elapsed: Duration, phase: &str) {
        if self.add(before, after, elapsed)
            && !phase.is_empty()
            && !self.phases.iter().any(|p| p == phase)
        {
            self.phases.push(phase.to_owned());
        }
    }

    /// Adds the processes that were busy between two snapshots `elapsed` apart; returns
    /// whether there was any.
    fn add(&mut self, before: &Snapshot, after: &Snapshot, elapsed: Duration) -> bool {
        let me = std::process::id();
        let mut any = false;
        for (pid, process) in after {
            if is_kernel_thread(*pid, after) || descends_from(*pid, me, after) {
                continue;
            }
            let old = before.get(pid).map_or(0, |p| p.ticks);
            // USER_HZ is 100: a tick is 10 ms.
            let percent =
                process.ticks.saturating_sub(old) as f64 / 100.0 / elapsed.as_secs_f64() * 100.0;
            if percent < BUSY_PERCENT {
                continue;
            }
            any = true;
            match self
                .processes
                .iter_mut()
                .find(|(name, _)| *name == process.name)
            {
                Some((_, max)) => *max = max.max(percent),
                None => self.processes.push((process.name.clone(), percent)),
            }
        }
        self.processes.sort_by(|a, b| b.1.total_cmp(&a.1));
        any
    }

    pub fn is_quiet(&self) -> bool {
        self.processes.is_empty()
    }

    pub fn describe(&self) -> String {
        if self.processes.is_empty() {
            return format!("quiet (no other process above {BUSY_PERCENT:.0}% of a core)");
        }
        let list: Vec<String> = self
            .processes
            .iter()
            .map(|(name, percent)| format!("{name} up to {percent:.0}%"))
            .collect();
        if self.phases.is_empty() {
            format!("BUSY: {} of a core", list.join(", "))
        } else {
            format!(
                "BUSY: {} of a core, during: {}",
                list.join(", "),
                self.phases.join("; ")
            )
        }
    }
}

/// Watches the other processes in the background while the benchmark runs, and notes in
/// which part of it (`set_phase`) they were busy.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    phase: Arc<Mutex<String>>,
    handle: JoinHandle<Busy>,
}

impl Watcher {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(Mutex::new(String::new()));
        let (flag, current) = (Arc::clone(&stop), Arc::clone(&phase));
        let handle = thread::spawn(move || {
            let mut busy = Busy::default();
            let mut before = processes();
            let mut at = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(250));
                if at.elapsed() < Duration::from_secs(2) && !flag.load(Ordering::Relaxed) {
                    continue;
                }
                let now = processes();
                let phase = current.lock().map(|p| p.clone()).unwrap_or_default();
                busy.add_during(&before, &now, at.elapsed(), &phase);
                before = now;
                at = Instant::now();
            }
            busy
        });
        Self {
            stop,
            phase,
            handle,
        }
    }

    /// Names the part of the benchmark now running.
    pub fn set_phase(&self, phase: &str) {
        if let Ok(mut current) = self.phase.lock() {
            phase.clone_into(&mut current);
        }
    }

    pub fn stop(self) -> Busy {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

struct Process {
    name: String,
    ppid: u32,
    ticks: u64,
}

type Snapshot = HashMap<u32, Process>;

fn is_kernel_thread(pid: u32, all: &Snapshot) -> bool {
    pid == 2 || all.get(&pid).is_some_and(|p| p.ppid == 2)
}

fn descends_from(mut pid: u32, ancestor: u32, all: &Snapshot) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        match all.get(&pid) {
            Some(p) if p.ppid > 1 => pid = p.ppid,
            _ => return false,
        }
    }
    false
}

/// Every process: its name, parent and utime + stime.
fn processes() -> Snapshot {
    let mut all = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return all;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 3, ppid 4, utime 14, stime 15.
        let number = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        all.insert(
            pid,
            Process {
                name,
                ppid: u32::try_from(number(1)).unwrap_or(0),
                ticks: number(11) + number(12),
            },
        );
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(name: &str, ppid: u32, ticks: u64) -> Process {
        Process {
            name: name.into(),
            ppid,
            ticks,
        }
    }

    #[test]
    fn only_other_user_processes_count() {
        let me = std::process::id();
        let before: Snapshot = [
            (10, process("rustc", 1, 0)),
            (11, process("kworker/0:1", 2, 0)),
            (12, process("cargo", me, 0)),
            (13, process("idle", 1, 0)),
            (14, process("table-bench", 12, 0)),
        ]
        .into_iter()
        .collect();
        let after: Snapshot = [
            (10, process("rustc", 1, 150)),
            (11, process("kworker/0:1", 2, 150)),
            (12, process("cargo", me, 150)),
            (13, process("idle", 1, 1)),
            (14, process("table-bench", 12, 200)),
        ]
        .into_iter()
        .collect();
        let mut busy = Busy::default();
        busy.add_during(&before, &after, Duration::from_secs(2), "overhead");
        assert_eq!(busy.processes, [("rustc".to_owned(), 75.0)]);
        assert_eq!(
            busy.describe(),
            "BUSY: rustc up to 75% of a core, during: overhead"
        );
        assert!(Busy::default().is_quiet());
    }
}
