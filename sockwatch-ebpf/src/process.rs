//! Ends that come without a close: exec (close-on-exec fds) and process exit (every fd).
//! The kernel only says which process; user space settles its sockets from the map, whose
//! counters are final since the fds can no longer be used.

use sockwatch_common::EventKind;

use crate::{
    maps::PROCS,
    state::{current, emit, has_tracked_sockets, process_event},
};

/// `execve`/`execveat` returned: a successful exec has closed the close-on-exec fds.
pub fn exec_exit(ret: i64) {
    let (pid_tgid, pid) = current();
    if ret != 0 || !has_tracked_sockets(pid) {
        return;
    }
    emit(&process_event(EventKind::Exec, pid, pid_tgid as u32, 0, 0));
}

/// `sched:sched_process_exit` for the thread-group leader: the process is going away.
pub fn process_exit() {
    let (pid_tgid, pid) = current();
    if pid_tgid as u32 != pid || !has_tracked_sockets(pid) {
        return;
    }
    let _ = PROCS.remove(pid);
    emit(&process_event(EventKind::ProcessExit, pid, pid, 0, 0));
}
