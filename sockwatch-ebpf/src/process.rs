//! Ends that come without a close: exec (close-on-exec fds) and process exit (every fd); and
//! new holders: a fork. The kernel only says which process; user space settles its sockets from
//! the map, whose counters are final since the fds can no longer be used.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sockwatch_common::EventKind;

use crate::{
    identity::files_and_mm_of,
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

/// `sched:sched_process_fork` (`TP_PROTO(struct task_struct *parent, struct task_struct
/// *child)`), attached for the syscall backends only: a child with its own copy of the fd table
/// holds every socket its parent does, and moves bytes those backends do not count. A thread
/// (or `CLONE_FILES`) shares the table, and the parent's row already counts it; a child sharing
/// the parent's memory (vfork, posix_spawn: how programs start others) execs or exits before it
/// can use a socket. Where the kernel's layout is not known, every fork is reported (flagging
/// too much, never too little).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let (pid_tgid, pid) = current();
    if !has_tracked_sockets(pid) {
        return 0;
    }
    let (parent, child): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    if let (Some(parent), Some(child)) = (files_and_mm_of(parent), files_and_mm_of(child)) {
        if parent.0 == child.0 || parent.1 == child.1 {
            return 0;
        }
    }
    emit(&process_event(EventKind::Fork, pid, pid_tgid as u32, 0, 0));
    0
}
