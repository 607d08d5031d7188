//! The socket backend's lifecycle, from hooks that fire only for sockets: no syscall
//! tracepoint, since any enabled one puts every syscall of every task on the slow path.
//!
//! - `cgroup/connect4`, `cgroup/connect6` (an IPv4-mapped peer kept as IPv4): a TCP or UDP
//!   `connect()`, in the connecting thread, before the kernel performs it. The socket is tracked
//!   from here; a TCP connect is reported when its handshake ends, a UDP one at the socket's
//!   first use or release (its local port is bound after this hook).
//! - `sock:inet_sock_set_state`: the end of a connect's handshake (established, or failed with
//!   the socket's error); and the end of an inbound one, which notes the socket for its first
//!   use (see `socket_layer`).
//! - `cgroup/sock_release`: the last reference to a socket goes (its last holder closed it,
//!   exited, or exec'd with it close-on-exec), in the releasing task: the row ends with its
//!   final counts, whoever moved them.
//!
//! The cgroup programs must return 1: 0 would refuse the connect or the release.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::bpf_probe_read_kernel,
    macros::{cgroup_sock, cgroup_sock_addr, raw_tracepoint},
    programs::{RawTracePointContext, SockAddrContext, SockContext},
};
use sockwatch_common::{
    directions, flags, ipv4_mapped, same_address, CloseHow, EventKind, SocketKey, SocketState,
    TrackedSocket, EINPROGRESS, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    fate::{self, TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_RECV, TCP_SYN_SENT},
    hot,
    identity::{
        current_is_user, fd_of_sock, file_of_sock, inet_peer, inode_of_sock, letting_go,
        local_port, non_blocking, sock_error, Letting,
    },
    maps::{
        count_by_socket, family_in_scope, pid_in_scope, ports_in_scope, tracking, ACCEPTED,
        ADOPTED, ADOPTED_PENDING, SK_BYTES, SK_FATE, TRACKED,
    },
    socket_layer::{accepted_socket, report_udp_connect, track_socket, unknown_fd, NO_LISTENER},
    state::{comm, current, emit, key, now_ns, Draft, Head},
};

/// Allow the call: a cgroup program's verdict.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the context's fields are readable by a connect4 program.
    let (daddr, port, proto, sk) = unsafe {
        (
            (*sa).user_ip4,
            (*sa).user_port,
            (*sa).protocol,
            (*sa).__bindgen_anon_1.sk as u64,
        )
    };
    connecting(ipv4_mapped(daddr), port, proto, sk);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the context's fields are readable by a connect6 program; the address a word
    // at a time, the access every kernel's verifier allows on it.
    let (ip6, port, proto, sk) = unsafe {
        let words = &raw const (*sa).user_ip6;
        let word = |i: usize| core::ptr::read_volatile(words.cast::<u32>().add(i));
        (
            [word(0), word(1), word(2), word(3)],
            (*sa).user_port,
            (*sa).protocol,
            (*sa).__bindgen_anon_1.sk as u64,
        )
    };
    // `struct in6_addr`'s words, as the records keep it (an IPv4-mapped peer, as dual-stack
    // programs connect to IPv4, stays mapped: it is IPv4).
    connecting(ip6, port, proto, sk);
    ALLOW
}

/// The address of the socket a cgroup program's context points to, as a plain number: the
/// verifier refuses arithmetic on that pointer, but a copy read back from the stack is a scalar.
#[inline(always)]
fn address_of(pointer: u64) -> u64 {
    let slot = pointer;
    // SAFETY: reads our own stack slot.
    unsafe { bpf_probe_read_kernel(&raw const slot) }.unwrap_or(0)
}

/// A `connect()` of socket `sk` (`pointer`) to `daddr:port` (as `TrackedSocket::daddr`;
/// port in network order) is about to be performed: it is tracked from now on.
#[inline(always)]
fn connecting(daddr: [u32; 4], port: u32, proto: u32, pointer: u64) {
    if !tracking(directions::OUTBOUND) || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return;
    }
    let sk = address_of(pointer);
    // A socket without a file is the kernel's own (NFS, iSCSI...): no process holds it, and its
    // release skips the hook.
    if sk == 0 || file_of_sock(sk) == 0 {
        return;
    }
    let dport = u16::from_be(port as u16);
    // A UDP socket connected again: the same peer changes nothing; a new one ends the row and
    // starts another.
    // SAFETY: copied out at once.
    if let Some(bytes) = unsafe { SK_BYTES.get(sk) }.copied() {
        let same = TRACKED.get_ptr(bytes.key).is_some_and(|row| {
            // SAFETY: a valid map value pointer; fields read whole.
            unsafe {
                (*row).sk == sk && same_address(&(*row).daddr, &daddr) && (*row).dport == dport
            }
        });
        if same {
            return;
        }
        released(sk, Letting::Close);
    }
    // Out of `--pid`/`--port`/`-4`/`-6`: never tracked (a local port not bound yet is decided
    // at the handshake's end).
    if !pid_in_scope(current().1)
        || !family_in_scope(&daddr)
        || !ports_in_scope(dport, local_port(sk))
    {
        return;
    }
    track_connect(sk, &daddr, dport, proto);
}

/// Tracks socket `sk` connecting to `daddr:dport` (as `TrackedSocket::daddr`, host order) now.
/// Not inlined (nor is `released`): their stack frames then do not add up in one program.
#[inline(never)]
fn track_connect(sk: u64, daddr: &[u32; 4], dport: u16, proto: u32) {
    let (pid_tgid, pid) = current();
    let ino = inode_of_sock(sk);
    let fd = fd_of_sock(sk).unwrap_or_else(|| unknown_fd(ino));
    let udp = proto == IPPROTO_UDP;
    let state = if udp {
        SocketState::Established
    } else {
        SocketState::Connecting
    };
    let socket = TrackedSocket {
        connect_ns: now_ns(),
        sk,
        ino,
        daddr: *daddr,
        dport,
        lport: local_port(sk),
        tid: pid_tgid as u32,
        state: state as u32,
        proto,
        comm: comm(),
        ..TrackedSocket::default()
    };
    if !udp {
        fate::connect_pending(sk);
    }
    // A TCP connect is reported when its handshake ends (`handshake_ended`); a UDP one once
    // its local port is bound, at its first use or its release.
    let _ = track_socket(key(pid, fd), &socket, u32::from(udp));
}

/// `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let (sk, old, new): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    // Every backend: how connects go and who ends connections.
    fate::on_state(sk, old as i32, new as i32);
    if !count_by_socket() {
        return 0;
    }
    match (old as i32, new as i32) {
        (TCP_SYN_SENT, TCP_ESTABLISHED) => handshake_ended(sk, true),
        (TCP_SYN_SENT, TCP_CLOSE) => handshake_ended(sk, false),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => inbound_established(sk),
        _ => {}
    }
    0
}

/// A tracked connect's handshake ended (in whatever context the network stack runs): reported
/// with what the `connect()` returned, 0 or `-EINPROGRESS` by the file's blocking mode; or
/// failed: a blocking connect returns the error (`-errno`) and is no longer tracked; a
/// non-blocking one returned `-EINPROGRESS`, and stays tracked until its release.
#[inline(always)]
fn handshake_ended(sk: u64, established: bool) {
    // SAFETY: copied out at once.
    let Some(bytes) = unsafe { SK_BYTES.get(sk) }.copied() else {
        return;
    };
    let Some(row) = TRACKED.get_ptr_mut(bytes.key) else {
        return;
    };
    // SAFETY: a valid map value pointer; aligned fields read and stored whole.
    let (row_sk, state, dport) = unsafe { ((*row).sk, (*row).state, (*row).dport) };
    if row_sk != sk || state != SocketState::Connecting as u32 {
        return;
    }
    let lport = local_port(sk);
    // Its local port bound now: out of `--port` after all, it stops being tracked, unreported.
    if !ports_in_scope(dport, lport) {
        if SK_BYTES.remove(sk).is_ok() {
            hot::free(sk, &bytes);
            let _ = TRACKED.remove(bytes.key);
            let _ = SK_FATE.remove(sk);
        }
        return;
    }
    // SAFETY: as above.
    let head = Head::opened(EventKind::Connect, bytes.key, unsafe { &*row });
    if established {
        // SAFETY: as above.
        unsafe {
            core::ptr::write_volatile(&raw mut (*row).lport, lport);
            core::ptr::write_volatile(&raw mut (*row).state, SocketState::Established as u32);
        }
        // The record tells what the connect() returned; the row is established from now on.
        let (result, state) = if non_blocking(sk) {
            (-EINPROGRESS, SocketState::Connecting)
        } else {
            (0, SocketState::Established)
        };
        if let Some(mut draft) = Draft::new(head.result(result), row) {
            // SAFETY: the record's socket in our reserved slot.
            unsafe { (*draft.socket()).state = state as u32 };
            draft.send();
        }
        return;
    }
    if non_blocking(sk) || sock_error(sk) == 0 {
        // The connect returned EINPROGRESS and the failure is the application's to find out;
        // or, without an error, this end gave up on it (closed or disconnected it while it
        // was connecting). The row stays, still connecting, and its release reports how it
        // ended (`fate`).
        return;
    }
    if SK_BYTES.remove(sk).is_err() {
        return;
    }
    hot::free(sk, &bytes);
    if let Some(mut draft) = Draft::removing(head.result(-sock_error(sk)), bytes.key, row) {
        let socket = draft.socket();
        // SAFETY: the record's socket in our reserved slot.
        unsafe {
            (*socket).lport = lport;
            (*socket).state = 0;
        }
        draft.send();
    }
}

/// An inbound TCP handshake completed: the socket waits in its listener's queue for an
/// `accept()`, and is tracked at its first use.
#[inline(always)]
fn inbound_established(sk: u64) {
    if !tracking(directions::INBOUND) {
        return;
    }
    // Its process is not known before its first use (`socket_layer::accepted`): the ports
    // only, here.
    if let Some((daddr, dport)) = inet_peer(sk) {
        if family_in_scope(&daddr) && ports_in_scope(u16::from_be(dport), local_port(sk)) {
            let _ = ACCEPTED.insert(sk, now_ns(), 0);
        }
    }
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let sock: *mut bpf_sock = ctx.sock;
    let sk = address_of(sock as u64);
    if sk != 0 {
        released(sk, letting_go());
    }
    ALLOW
}

/// The kernel is releasing socket `sk` (`how`: why its last holder let go): a tracked socket
/// ends with its final counts; an accepted one nobody used is reported now, under the
/// releasing process (its fd is gone).
#[inline(never)]
fn released(sk: u64, how: Letting) {
    // SAFETY: copied out at once.
    let Some(bytes) = unsafe { SK_BYTES.get(sk) }.copied() else {
        never_used(sk, how);
        return;
    };
    // Only the one caller that removes the counters reports the end.
    if SK_BYTES.remove(sk).is_err() {
        return;
    }
    let key = bytes.key;
    if bytes.unreported != 0 {
        report_udp_connect(sk, key);
    }
    let head = closing(key, how);
    let draft = match TRACKED.get_ptr(key) {
        // SAFETY: a valid map value pointer; fields read whole.
        Some(row) if unsafe { (*row).sk } == sk => {
            // Closed before its handshake ended: its connect is still under way.
            // SAFETY: as above.
            if unsafe { (*row).state } == SocketState::Connecting as u32 {
                // SAFETY: as above.
                let opened = Head::opened(EventKind::Connect, key, unsafe { &*row });
                emit(opened.result(-EINPROGRESS), row);
            }
            Draft::removing(head, key, row)
        }
        // User space moved its row (or a newer socket took its fd first): it finds the row by
        // the socket's inode.
        _ => {
            let socket = TrackedSocket {
                sk,
                ino: bytes.ino,
                flags: flags::REPLACED,
                ..TrackedSocket::default()
            };
            Draft::new(head, &socket)
        }
    };
    let counts = hot::free(sk, &bytes);
    let Some(mut draft) = draft else {
        return;
    };
    let port = local_port(sk);
    let socket = draft.socket();
    // SAFETY: the record's socket in our reserved slot.
    unsafe {
        ((*socket).bytes_sent, (*socket).bytes_recv) = counts;
        if port != 0 {
            (*socket).lport = port;
        }
    }
    draft.send();
}

/// The head of the close record of the socket at `key`, made by the calling task (no thread
/// when a kernel thread released it).
#[inline(always)]
fn closing(key: SocketKey, how: Letting) -> Head {
    let tid = if current_is_user() {
        current().0 as u32
    } else {
        0
    };
    let how = match how {
        Letting::Exit => CloseHow::Exit,
        Letting::Exec => CloseHow::Exec,
        Letting::Close => CloseHow::Close,
    };
    Head::now(EventKind::Close, key, tid).arg(how as u32)
}

/// A socket released without ever being counted: one accepted and closed before any use, or
/// one found open at start that never moved a byte.
#[inline(always)]
fn never_used(sk: u64, how: Letting) {
    // SAFETY: copied out at once.
    if unsafe { ACCEPTED.get(sk) }.is_some() {
        if ACCEPTED.remove(sk).is_err() {
            return;
        }
        let (pid_tgid, pid) = current();
        let Some(socket) = accepted_socket(sk, pid_tgid as u32) else {
            return;
        };
        // A kernel thread's release (a deferred one) names no process: pid 0.
        let pid = if current_is_user() { pid } else { 0 };
        if !pid_in_scope(pid) {
            return;
        }
        let at = key(pid, unknown_fd(socket.ino));
        emit(
            Head::opened(EventKind::Accept, at, &socket).arg(NO_LISTENER),
            &socket,
        );
        emit(closing(at, how), &socket);
        return;
    }
    if ADOPTED_PENDING.get(0).is_none_or(|pending| *pending == 0) {
        return;
    }
    let inode = inode_of_sock(sk);
    // SAFETY: copied out at once.
    let Some(at) = unsafe { ADOPTED.get(inode) }.copied() else {
        return;
    };
    let _ = ADOPTED.remove(inode);
    let Some(row) = TRACKED.get_ptr(at) else {
        return;
    };
    // SAFETY: a valid map value pointer; a field read whole.
    if unsafe { (*row).ino } != inode {
        return;
    }
    if let Some(draft) = Draft::removing(closing(at, how), at, row) {
        draft.send();
    }
}
