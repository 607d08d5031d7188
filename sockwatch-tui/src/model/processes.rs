//! What each process with a row is, beyond pid and name: its owner (systemd unit, container)
//! and namespace pid ([`Process`]), by pid. Kept here rather than on each row: a row is 256
//! bytes with no room left, and a process's rows share one reading anyway.
//!
//! `app.rs` reads `/proc` (`kernel::procfs::process`) for a pid this table [`wants`]
//! (`Processes::wants`) before the change that names it is applied, and hands the reading in
//! (`Action::Process`): read once per process, and again only for a pid without open rows whose
//! reading is [`REREAD_NS`] old, which may be another process by now (pids are reused once the
//! kernel's counter wraps).

use std::{collections::HashMap, sync::Arc};

use crate::{
    open_sockets::OpenSockets,
    socket::{Process, Socket},
};

/// How old a pid's reading may be and still stand for a new socket of a pid with no open row.
/// Re-reading at every such socket would cost two file reads per connect for a program that
/// connects and closes in turn; a pid reused within this long would need the kernel to hand out
/// every other pid first.
pub const REREAD_NS: u64 = 10_000_000_000;

#[derive(Clone, Debug, Default)]
struct Entry {
    /// `None`: the process was gone before it could be read.
    process: Option<Arc<Process>>,
    read_ns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Processes {
    by_pid: HashMap<u32, Entry>,
    /// How many entries the last sweep kept: the next sweeps when there are twice as many.
    kept: usize,
}

/// Sweeps start past this many entries.
const SWEEP_FLOOR: usize = 256;

impl Processes {
    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.by_pid.get(&pid)?.process.as_deref()
    }

    /// Whether `pid` was read: `Some(None)` when it was gone by then.
    pub fn read(&self, pid: u32) -> Option<Option<&Process>> {
        self.by_pid.get(&pid).map(|entry| entry.process.as_deref())
    }

    /// [`Self::get`], to keep beside a borrow of the model.
    pub fn shared(&self, pid: u32) -> Option<Arc<Process>> {
        self.by_pid.get(&pid)?.process.clone()
    }

    /// Whether `pid` should be read before a change about it (see the module's doc).
    pub fn wants(&self, pid: u32, now_ns: u64, open: &OpenSockets) -> bool {
        match self.by_pid.get(&pid) {
            None => true,
            Some(entry) => {
                now_ns.saturating_sub(entry.read_ns) >= REREAD_NS && !has_rows(open, pid)
            }
        }
    }

    pub fn insert(&mut self, pid: u32, process: Option<Process>, now_ns: u64) {
        let entry = Entry {
            process: process.map(Arc::new),
            read_ns: now_ns,
        };
        self.by_pid.insert(pid, entry);
    }

    /// Forgets the processes no row names any more (open or in `closed`), once the table has
    /// doubled since the last sweep: a machine that runs many short programs does not grow it
    /// without end.
    pub fn sweep<'a>(&mut self, open: &OpenSockets, closed: impl Iterator<Item = &'a Socket>) {
        if self.by_pid.len() < SWEEP_FLOOR.max(self.kept * 2) {
            return;
        }
        let logged: std::collections::HashSet<u32> = closed.map(Socket::pid).collect();
        self.by_pid
            .retain(|pid, _| logged.contains(pid) || has_rows(open, *pid));
        self.kept = self.by_pid.len();
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

fn has_rows(open: &OpenSockets, pid: u32) -> bool {
    open.of_process(pid).next().is_some()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::socket::SocketKey;

    fn process(unit: &str) -> Process {
        Process::parse(7, &format!("0::/system.slice/{unit}\n"), "")
    }

    fn row(pid: u32) -> Socket {
        Socket::new(SocketKey { pid, fd: 3 }, 1, Ipv4Addr::LOCALHOST, 80, "x")
    }

    #[test]
    fn a_pid_is_read_once_while_it_has_rows_and_again_once_stale_without() {
        let mut processes = Processes::default();
        let mut open = OpenSockets::default();
        assert!(processes.wants(7, 0, &open));
        processes.insert(7, Some(process("a.service")), 0);
        open.insert(row(7));
        assert!(!processes.wants(7, 1, &open));
        assert!(
            !processes.wants(7, REREAD_NS * 5, &open),
            "it still has rows"
        );
        open.remove(&SocketKey { pid: 7, fd: 3 });
        assert!(!processes.wants(7, REREAD_NS - 1, &open), "read lately");
        assert!(processes.wants(7, REREAD_NS, &open));
        assert_eq!(
            processes.get(7).map(|p| p.owner.to_string()).as_deref(),
            Some("a.service")
        );
        // A process gone before it was read is remembered as such, not read at every socket.
        processes.insert(8, None, 0);
        assert!(processes.get(8).is_none() && !processes.wants(8, 1, &open));
    }

    #[test]
    fn a_sweep_keeps_the_pids_that_rows_name() {
        let mut processes = Processes::default();
        let mut open = OpenSockets::default();
        for pid in 1..=SWEEP_FLOOR as u32 {
            processes.insert(pid, Some(process("a.service")), 0);
        }
        open.insert(row(1));
        let closed = [row(2)];
        processes.sweep(&open, closed.iter());
        assert_eq!(processes.len(), 2);
        assert!(processes.get(1).is_some() && processes.get(2).is_some());
        // Below twice what it kept (and the floor): no sweep.
        processes.insert(3, None, 0);
        processes.sweep(&open, std::iter::empty());
        assert_eq!(processes.len(), 3);
    }
}
