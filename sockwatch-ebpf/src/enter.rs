//! Syscall entries: decide whether the call matters and, if so, stash what its exit needs.
//! Calls on fds we do not track cost one `TRACKED` lookup here and nothing else.

use aya_ebpf::helpers::bpf_probe_read_user;
use sockwatch_common::{
    directions, ipv4_mapped, CallKind, InflightCall, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    args::SyscallArgs,
    identity::{file_shared, inode_of_fd},
    maps::{family_in_scope, tracking, TRACKED},
    state::{call, current, has_tracked_sockets, is_tracked, key, mark_partial, stash},
};

const SOCK_STREAM: u64 = 1;
const SOCK_DGRAM: u64 = 2;
/// `SOCK_NONBLOCK | SOCK_CLOEXEC` and any other flag bits of `socket()`'s type.
const SOCK_TYPE_MASK: u64 = 0xf;

/// The leading fields of `struct sockaddr_in`, read from user memory in one go.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrIn {
    family: u16,
    /// Network byte order.
    port: u16,
    /// Network byte order.
    addr: u32,
}

/// `struct sockaddr_in6` up to the address.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    /// `struct in6_addr`'s words, network byte order.
    addr: [u32; 4],
}

/// The inet address in a user `sockaddr` (`AF_INET` or `AF_INET6`): `(addr, port)`, the
/// address as `TrackedSocket::daddr` (an IPv4 one IPv4-mapped; an IPv4-mapped IPv6 one, as
/// dual-stack programs connect to IPv4, stays so), the port in network order.
#[inline(always)]
pub fn inet_sockaddr(ptr: u64) -> Option<([u32; 4], u16)> {
    if ptr == 0 {
        return None;
    }
    // SAFETY: checked reads of user memory; a bad pointer gives an error, never a fault.
    let family = unsafe { bpf_probe_read_user(ptr as *const u16) }.ok()?;
    match family {
        AF_INET => {
            // SAFETY: as above.
            let sa = unsafe { bpf_probe_read_user(ptr as *const SockaddrIn) }.ok()?;
            Some((ipv4_mapped(sa.addr), sa.port))
        }
        AF_INET6 => {
            // SAFETY: as above.
            let sa = unsafe { bpf_probe_read_user(ptr as *const SockaddrIn6) }.ok()?;
            Some((sa.addr, sa.port))
        }
        _ => None,
    }
}

/// `socket(family, type, protocol)`: remember the protocol of inet sockets for their connect.
pub fn socket(args: &impl SyscallArgs) {
    let (Some(family), Some(kind), Some(protocol)) = (args.arg(0), args.arg(1), args.arg(2)) else {
        return;
    };
    if family != u64::from(AF_INET) && family != u64::from(AF_INET6) {
        return;
    }
    let proto = match (kind & SOCK_TYPE_MASK, protocol as u32) {
        (SOCK_STREAM, 0 | IPPROTO_TCP) => IPPROTO_TCP,
        (SOCK_DGRAM, 0 | IPPROTO_UDP) => IPPROTO_UDP,
        _ => return,
    };
    let (pid_tgid, _) = current();
    stash(pid_tgid, call(CallKind::Socket, 0, 0, u64::from(proto)));
}

pub fn connect(args: &impl SyscallArgs) {
    if !tracking(directions::OUTBOUND) {
        return;
    }
    let (Some(fd), Some(addr)) = (args.arg(0), args.arg(1)) else {
        return;
    };
    let Some((daddr, dport)) = inet_sockaddr(addr) else {
        return;
    };
    if !family_in_scope(&daddr) {
        return;
    }
    let (pid_tgid, _) = current();
    stash(
        pid_tgid,
        InflightCall {
            daddr,
            dport: u16::from_be(dport),
            ..call(CallKind::Connect, fd as u32, 0, 0)
        },
    );
}

/// `accept`/`accept4(fd, addr, addrlen, ...)`: the peer's address is in `addr` at exit.
pub fn accept(args: &impl SyscallArgs) {
    if !tracking(directions::INBOUND) {
        return;
    }
    let (Some(listener), Some(addr)) = (args.arg(0), args.arg(1)) else {
        return;
    };
    let (pid_tgid, _) = current();
    stash(pid_tgid, call(CallKind::Accept, listener as u32, addr, 0));
}

/// Any call whose first argument is an fd and whose exit is handled by `kind` alone
/// (byte counts, close, ...): stashed only when the fd is tracked; then `(pid, fd)`.
#[inline(always)]
fn on_tracked_fd(
    args: &impl SyscallArgs,
    kind: CallKind,
    ptr_arg: Option<usize>,
) -> Option<(u32, u32)> {
    let fd = args.arg(0)? as u32;
    let (pid_tgid, pid) = current();
    if !is_tracked(pid, fd) {
        return None;
    }
    let ptr = ptr_arg.and_then(|n| args.arg(n)).unwrap_or(0);
    stash(pid_tgid, call(kind, fd, ptr, 0));
    Some((pid, fd))
}

/// `write`, `writev`, `sendto`, `sendmsg`, `sendfile64` (out fd first): bytes out.
pub fn send(args: &impl SyscallArgs) {
    on_tracked_fd(args, CallKind::Send, None);
}

/// `read`, `readv`, `recvfrom`, `recvmsg`: bytes in.
pub fn recv(args: &impl SyscallArgs) {
    on_tracked_fd(args, CallKind::Recv, None);
}

/// `sendmmsg(fd, msgvec, vlen, flags)`: the per-message byte counts are in `msgvec` at exit.
pub fn sendmmsg(args: &impl SyscallArgs) {
    on_tracked_fd(args, CallKind::SendMmsg, Some(1));
}

pub fn recvmmsg(args: &impl SyscallArgs) {
    on_tracked_fd(args, CallKind::RecvMmsg, Some(1));
}

pub fn close(args: &impl SyscallArgs) {
    let Some(fd) = args.arg(0) else {
        return;
    };
    let (pid_tgid, pid) = current();
    let Some((sk, ino)) = tracked_here(pid, fd as u32) else {
        return;
    };
    flag_if_shared(pid, fd as u32);
    // Which socket this close ends: once the fd is freed, another thread may get the number and
    // a socket tracked there, before this call's exit.
    stash(pid_tgid, call(CallKind::Close, fd as u32, sk, ino));
}

/// `(sk, ino)` of the socket tracked on `(pid, fd)`, if the fd still holds it. An exec
/// (close-on-exec) or a `close_range` may have closed it, and the program reused the number,
/// before user space settled it from that call's record: a close or dup2 on the number then
/// is not that socket's. Where the file's identity is not known, it is taken to hold it.
#[inline(always)]
fn tracked_here(pid: u32, fd: u32) -> Option<(u64, u64)> {
    // SAFETY: copied out at once.
    let tracked = unsafe { TRACKED.get(key(pid, fd)) }?;
    let (sk, ino) = (tracked.sk, tracked.ino);
    (ino == 0 || inode_of_fd(fd).is_none_or(|now| now == ino)).then_some((sk, ino))
}

/// A tracked fd whose file others still hold (a forked child, a passed fd) is closed here but
/// the socket lives on: what they move from now on is not counted, and the row says so.
#[inline(always)]
fn flag_if_shared(pid: u32, fd: u32) {
    if file_shared(fd) {
        mark_partial(pid, fd);
    }
}

/// `close_range(first, last, flags)`: reported (for user space to settle) only for processes
/// that have tracked sockets.
pub fn close_range(args: &impl SyscallArgs) {
    let (Some(first), Some(last), Some(flags)) = (args.arg(0), args.arg(1), args.arg(2)) else {
        return;
    };
    let (pid_tgid, pid) = current();
    if !has_tracked_sockets(pid) {
        return;
    }
    let arg = (flags << 32) | (last & 0xffff_ffff);
    stash(pid_tgid, call(CallKind::CloseRange, first as u32, 0, arg));
}

/// `dup2`/`dup3(oldfd, newfd, ...)`: a tracked `newfd` is closed by the call.
pub fn dup_onto(args: &impl SyscallArgs) {
    let (Some(old), Some(new)) = (args.arg(0), args.arg(1)) else {
        return;
    };
    let (pid_tgid, pid) = current();
    // dup2(fd, fd) is a no-op that closes nothing.
    if old == new {
        return;
    }
    let Some((sk, ino)) = tracked_here(pid, new as u32) else {
        return;
    };
    flag_if_shared(pid, new as u32);
    stash(pid_tgid, call(CallKind::DupOnto, new as u32, sk, ino));
}

/// `F_DUPFD` / `F_DUPFD_CLOEXEC`: `fcntl` commands that copy an fd.
const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

/// `dup(fd)`: bytes written through the copy bypass this backend's accounting of `fd`.
pub fn dup_copy(args: &impl SyscallArgs) {
    if let Some(fd) = args.arg(0) {
        mark_partial(current().1, fd as u32);
    }
}

/// `fcntl(fd, F_DUPFD[_CLOEXEC], ...)`: the same as `dup`.
pub fn fcntl_dup(args: &impl SyscallArgs) {
    let (Some(fd), Some(cmd)) = (args.arg(0), args.arg(1)) else {
        return;
    };
    if cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC {
        mark_partial(current().1, fd as u32);
    }
}

/// `splice(fd_in, off_in, fd_out, ...)`: the bytes move inside the kernel, past read and write.
pub fn splice(args: &impl SyscallArgs) {
    let (Some(fd_in), Some(fd_out)) = (args.arg(0), args.arg(2)) else {
        return;
    };
    let pid = current().1;
    mark_partial(pid, fd_in as u32);
    mark_partial(pid, fd_out as u32);
}
