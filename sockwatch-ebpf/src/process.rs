//! Ends that come without a close: exec (close-on-exec fds) and process exit (every fd); and
//! new holders: a fork. The kernel only says which process; user space settles its sockets from
//! the map (on the socket backend, moving one to another process that still holds it).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sockwatch_common::EventKind;

use crate::{
    identity::files_and_mm_of,
    maps::{count_by_socket, EXECS, FORKED, PROCS},
    state::{current, emit_process, has_tracked_sockets, now_ns},
};

/// `execve`/`execveat` returned: a successful exec has closed the close-on-exec fds.
pub fn exec_exit(ret: i64) {
    let (pid_tgid, pid) = current();
    if ret != 0 || !has_tracked_sockets(pid) {
        return;
    }
    emit_process(EventKind::Exec, pid, pid_tgid as u32, 0, 0);
}

/// `sched:sched_process_exit` for the thread-group leader: the process is going away. On the
/// socket backend, the release of each socket it held last ends its row; the exit is reported
/// only for a process that forked, whose sockets a child may hold on to.
pub fn process_exit() {
    let (pid_tgid, pid) = current();
    if pid_tgid as u32 != pid || !has_tracked_sockets(pid) {
        return;
    }
    // SAFETY: copied out at once.
    let forked = unsafe { PROCS.get(pid) }.is_some_and(|flags| flags & FORKED != 0);
    let _ = PROCS.remove(pid);
    if count_by_socket() && !forked {
        return;
    }
    emit_process(EventKind::ProcessExit, pid, pid, 0, u32::from(forked));
}

/// `sched:sched_process_fork` (`TP_PROTO(struct task_struct *parent, struct task_struct
/// *child)`). The socket backend counts a child's bytes wherever it holds the socket, and only
/// notes that the process forked: at its exit its sockets may live on in a child, which user
/// space then looks for. For the syscall backends, a child with its own copy of the fd table
/// holds every socket its parent does, and moves bytes those backends do not count. A thread
/// (or `CLONE_FILES`) shares the table, and the parent's row already counts it; a child sharing
/// the parent's memory (vfork, posix_spawn: how programs start others) execs or exits before it
/// can use a socket. Where the kernel's layout is not known, every fork is reported (flagging
/// too much, never too little).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let (pid_tgid, pid) = current();
    if count_by_socket() {
        note_fork(pid);
        return 0;
    }
    if !has_tracked_sockets(pid) {
        return 0;
    }
    let (parent, child): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    if let (Some(parent), Some(child)) = (files_and_mm_of(parent), files_and_mm_of(child)) {
        if parent.0 == child.0 || parent.1 == child.1 {
            return 0;
        }
    }
    emit_process(EventKind::Fork, pid, pid_tgid as u32, 0, 0);
    0
}

/// Marks a process with tracked sockets as having forked (the socket backend).
#[inline(always)]
fn note_fork(pid: u32) {
    if let Some(flags) = PROCS.get_ptr_mut(pid) {
        // SAFETY: a valid map value pointer; a u32 read and stored whole (a lost race with
        // another fork of the same process sets the same bit).
        unsafe { core::ptr::write_volatile(flags, core::ptr::read_volatile(flags) | FORKED) };
    }
}

/// `sched:sched_process_exec` (the socket backend): a process with tracked sockets exec'd; its
/// close-on-exec sockets are released as the exec returns (see `identity::letting_go`).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    let (pid_tgid, pid) = current();
    if has_tracked_sockets(pid) {
        let _ = EXECS.insert(pid_tgid, now_ns(), 0);
    }
    0
}
