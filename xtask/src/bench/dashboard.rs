//! The dashboard at scale (issue #12), in a real terminal (tmux): a storm of loopback
//! connections opened while it runs, then the same sockets held idle. What the header says was
//! dropped, the dashboard's CPU and RSS while idle, and how long `q` takes to give the shell its
//! prompt back and to leave no sockwatch process behind.

use std::time::{Duration, Instant};
use std::{fs, path::Path, process::Child, process::Command, process::Stdio, thread};

use anyhow::{bail, ensure, Context, Result};

use super::{pipeline::cpu_ns, tracer, Binaries};

const SESSION: &str = "sockwatch-bench";
/// What the shell prints once the dashboard has returned.
const RETURNED: &str = "SOCKWATCH-RETURNED-";
/// Starting the dashboard, opening the storm, the header catching up, quitting: each bounded.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug, Default)]
pub struct Scale {
    /// Sockets held open (both ends of each connection), and how long opening them took.
    pub sockets: u64,
    pub storm_secs: f64,
    /// The header's `open:`, `dropped:` and `untracked (map full):` once the storm is in.
    pub shown: u64,
    pub dropped: u64,
    pub untracked: u64,
    /// While every socket sits idle: CPU in percent of one core, RSS now and at its peak.
    pub cpu_percent: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// Then with a tenth of the sockets sending 64 bytes a second (as many receiving them):
    /// how many send, CPU and RSS.
    pub senders: u64,
    pub sending_cpu_percent: f64,
    pub sending_rss_kib: u64,
    /// From `q` to the shell's next line, and to no sockwatch process left.
    pub prompt_secs: f64,
    pub gone_secs: f64,
}

/// `holders` processes of `per_holder` connections each (a process may hold 20,000 fds here),
/// idle once the dashboard shows them: CPU over `secs` from 15 s after (the storm's aftermath
/// is not idleness), then over `secs` again with a tenth of them sending.
pub fn run(bins: &Binaries, holders: u64, per_holder: u64, secs: f64) -> Result<Scale> {
    let tmux = Tmux::start(bins)?;
    let result = measure(bins, &tmux, holders, per_holder, secs);
    drop(tmux);
    result
}

fn measure(
    bins: &Binaries,
    tmux: &Tmux,
    holders: u64,
    per_holder: u64,
    secs: f64,
) -> Result<Scale> {
    let mut scale = Scale {
        sockets: 2 * holders * per_holder,
        ..Scale::default()
    };
    let pid = tmux.dashboard_pid()?;
    let started = Instant::now();
    let mut held = Holders::spawn(bins, holders, per_holder)?;
    held.wait_ready()?;
    scale.storm_secs = started.elapsed().as_secs_f64();
    // The header has taken in every socket it will (a full map stops it short: `untracked`).
    let header = tracer::poll(STEP_TIMEOUT, || {
        let header = tmux.header()?;
        let (open, untracked) = (count(&header, "open: "), count(&header, "(map full): "));
        let settled = open.unwrap_or(0) + untracked.unwrap_or(0) >= scale.sockets;
        Ok(settled.then_some(header))
    })?;
    let header = match header {
        Some(header) => header,
        None => tmux.header()?,
    };
    scale.shown = count(&header, "open: ").context("no `open:` in the header")?;
    scale.dropped = count(&header, "dropped: ").context("no `dropped:` in the header")?;
    scale.untracked = count(&header, "(map full): ").unwrap_or(0);
    // The storm's aftermath is not idleness: the first check of every new socket against
    // /proc, and the full reads that locate them, come in the seconds after it.
    thread::sleep(Duration::from_secs_f64(secs.min(15.0)));
    scale.cpu_percent = cpu_percent(pid, secs)?;
    scale.rss_kib = rss_kib(pid, "VmRSS:")?;
    scale.peak_rss_kib = rss_kib(pid, "VmHWM:")?;
    // A tenth of the sockets sending: their rows change every second, the rest stay idle.
    held.start_sending()?;
    scale.senders = holders * senders_per_holder(per_holder);
    // The first second of sending is not the steady state.
    thread::sleep(Duration::from_secs(2));
    scale.sending_cpu_percent = cpu_percent(pid, secs)?;
    scale.sending_rss_kib = rss_kib(pid, "VmRSS:")?;
    let quit = Instant::now();
    tmux.keys(&["q"])?;
    // The echo's own line (the command line typed before names it too, after the prompt).
    let returned = |screen: String| screen.lines().any(|l| l.starts_with(RETURNED));
    let back = tracer::poll(STEP_TIMEOUT, || Ok(returned(tmux.screen()?).then_some(())));
    back?.context("the shell never got its prompt back after `q`")?;
    scale.prompt_secs = quit.elapsed().as_secs_f64();
    let gone = tracer::poll(STEP_TIMEOUT, || Ok((!sockwatch_left()).then_some(())));
    gone?.context("sockwatch processes were left after `q`")?;
    scale.gone_secs = quit.elapsed().as_secs_f64();
    held.stop()?;
    Ok(scale)
}

/// The dashboard's CPU over `secs` from now, in percent of one core.
fn cpu_percent(pid: u32, secs: f64) -> Result<f64> {
    let (cpu_before, wall) = (cpu_ns(pid)?, Instant::now());
    thread::sleep(Duration::from_secs_f64(secs));
    let cpu = cpu_ns(pid)?.saturating_sub(cpu_before);
    Ok(cpu as f64 / wall.elapsed().as_nanos() as f64 * 100.0)
}

/// A memory field (KiB) of `/proc/PID/status`.
fn rss_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    super::field(&status, field).with_context(|| format!("no {field} for pid {pid}"))
}

/// Connections of a holder that send once told to: a tenth of its sockets (two a connection).
fn senders_per_holder(per_holder: u64) -> u64 {
    per_holder / 5
}

/// A tmux session whose shell runs the dashboard; killed when dropped.
struct Tmux;

impl Tmux {
    fn start(bins: &Binaries) -> Result<Self> {
        let _ = tmux(&["kill-session", "-t", SESSION]);
        let shell = "bash --norc --noprofile";
        tmux(&[
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            "200",
            "-y",
            "50",
            shell,
        ])?;
        let tmux = Self;
        let log = bins.work.join("dashboard.log");
        let line = format!(
            "{} --max-sockets 131072 --no-resolve --log-file {}; echo {RETURNED}$?",
            bins.sockwatch.display(),
            log.display()
        );
        tmux.keys(&[&line, "Enter"])?;
        let up = tracer::poll(STEP_TIMEOUT, || {
            Ok(tmux.header()?.contains("probe:").then_some(()))
        });
        up?.with_context(|| format!("the dashboard did not start; see {}", log.display()))?;
        Ok(tmux)
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend(keys);
        tmux(&args).map(drop)
    }

    fn screen(&self) -> Result<String> {
        tmux(&["capture-pane", "-p", "-t", SESSION])
    }

    /// The dashboard's first line (its totals).
    fn header(&self) -> Result<String> {
        let screen = self.screen()?;
        let line = screen.lines().find(|l| l.contains("probe:"));
        Ok(line.unwrap_or_default().to_owned())
    }

    /// The dashboard: the one `sockwatch-tui` process under the session's shell.
    fn dashboard_pid(&self) -> Result<u32> {
        let shell = tmux(&["display-message", "-p", "-t", SESSION, "#{pane_pid}"])?;
        let shell: u32 = shell.trim().parse().context("tmux's pane pid")?;
        let mut live = tracer::processes("sockwatch-tui").filter(|p| p.state != 'Z');
        let found = live.find(|p| p.parent == shell);
        let found = found.context("no sockwatch-tui under the tmux shell")?;
        u32::try_from(found.pid).context("pid out of range")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = tmux(&["kill-session", "-t", SESSION]);
    }
}

fn tmux(args: &[&str]) -> Result<String> {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .context("running tmux")?;
    if !out.status.success() {
        bail!(
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number after `key` in the header (`open: 100000`).
fn count(header: &str, key: &str) -> Option<u64> {
    let rest = &header[header.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Whether any sockwatch process is alive (a zombie has exited).
fn sockwatch_left() -> bool {
    tracer::processes("sockwatch-tui").any(|p| p.state != 'Z')
}

/// The `sockwatch-load hold` processes of the storm; each holds until its stdin closes, and
/// sends on some connections once told to.
struct Holders {
    children: Vec<Child>,
    outputs: Vec<std::path::PathBuf>,
}

impl Holders {
    fn spawn(bins: &Binaries, holders: u64, per_holder: u64) -> Result<Self> {
        let mut held = Self {
            children: Vec::new(),
            outputs: Vec::new(),
        };
        for i in 0..holders {
            let out = bins.work.join(format!("hold{i}.out"));
            let file = fs::File::create(&out).with_context(|| format!("creating {out:?}"))?;
            let mut command = Command::new(&bins.load);
            let sending = senders_per_holder(per_holder).to_string();
            let connections = per_holder.to_string();
            command.args(["hold", "--connections", &connections, "--sending", &sending]);
            command.stdin(Stdio::piped()).stdout(file);
            held.children.push(tracer::spawn(&mut command)?);
            held.outputs.push(out);
        }
        Ok(held)
    }

    /// Once every holder has printed `held=`.
    fn wait_ready(&mut self) -> Result<()> {
        let ready = |path: &Path| fs::read_to_string(path).is_ok_and(|t| t.contains("held="));
        let all = tracer::poll(STEP_TIMEOUT, || {
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!("sockwatch-load hold exited early ({status})");
                }
            }
            Ok(self.outputs.iter().all(|p| ready(p)).then_some(()))
        })?;
        all.context("the holders did not open their connections in time")
    }

    /// Tells every holder to start sending.
    fn start_sending(&mut self) -> Result<()> {
        for child in &mut self.children {
            let stdin = child.stdin.as_mut().context("a holder's stdin")?;
            std::io::Write::write_all(stdin, b"send\n").context("telling a holder to send")?;
        }
        Ok(())
    }

    fn stop(mut self) -> Result<()> {
        for mut child in self.children.drain(..) {
            drop(child.stdin.take());
            let status = child.wait()?;
            ensure!(status.success(), "sockwatch-load hold failed ({status})");
        }
        Ok(())
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn header_counts_are_read() {
        let header = " sockwatch   probe: socket  open: 65536  connects: 32773 (0 failed)  \
                      accepts: 32763  closes: 0  dropped: 7  untracked (map full): 34464";
        assert_eq!(count(header, "open: "), Some(65_536));
        assert_eq!(count(header, "dropped: "), Some(7));
        assert_eq!(count(header, "(map full): "), Some(34_464));
        assert_eq!(
            count(" sockwatch   probe: socket  open: 3", "dropped: "),
            None
        );
    }
}
