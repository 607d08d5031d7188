//! How a TCP socket's connect went and who ended it, on every backend: the kernel's TCP state
//! changes and resets, kept by `struct sock *` in `SK_FATE` and copied into the socket's
//! connect and close records as they go out (`state::emit`). None of these hooks is a syscall:
//! they cost nothing to calls that do not change a connection's state.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sockwatch_common::{ClosedBy, EventKind, RecordFate, TcpFate, EINPROGRESS};

use crate::{
    identity::{inet_peer, local_port, sock_error},
    maps::{family_in_scope, pid_in_scope, ports_in_scope, SK_FATE},
    state::{current, now_ns},
};

/// TCP states (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
pub const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;

const ECONNRESET: u32 = 104;
const ETIMEDOUT: u32 = 110;

/// Whether socket `sk` (of process `pid`, where known) is within `--pid`, `--port`, `-4`/`-6`.
#[inline(always)]
fn in_scope(sk: u64, pid: Option<u32>) -> bool {
    pid.is_none_or(pid_in_scope)
        && inet_peer(sk).is_none_or(|(addr, dport)| {
            family_in_scope(&addr) && ports_in_scope(u16::from_be(dport), local_port(sk))
        })
}

/// Socket `sk` went from state `old` to `new` (`inet_sock_set_state`). Entries are made only
/// where a socket starts (a connect, an accept); later changes update an entry, never make
/// one, so what happens after a close was reported (TCP's own close, after the socket
/// backend's release hook) leaves nothing behind.
#[inline(always)]
pub fn on_state(sk: u64, old: i32, new: i32) {
    match (old, new) {
        // A connect starts: whatever an earlier socket at this address left is replaced. Not
        // for a socket out of `--pid`/`--port`: it is never reported, and its entry would only
        // push others out. (In the connecting process, its local port bound.)
        (TCP_CLOSE, TCP_SYN_SENT) if in_scope(sk, Some(current().1)) => {
            let fate = TcpFate {
                syn_ns: now_ns(),
                closed_by: ClosedBy::Followed as u32,
                ..TcpFate::default()
            };
            let _ = SK_FATE.insert(sk, fate, 0);
        }
        // An accepted socket starts (its process not known yet: the ports only).
        (TCP_SYN_RECV, TCP_ESTABLISHED) if in_scope(sk, None) => {
            let fate = TcpFate {
                closed_by: ClosedBy::Followed as u32,
                ..TcpFate::default()
            };
            let _ = SK_FATE.insert(sk, fate, 0);
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            if let Some(fate) = SK_FATE.get_ptr_mut(sk) {
                // SAFETY: a valid map value pointer.
                unsafe { (*fate).handshake_ns = now_ns() };
            }
        }
        (TCP_SYN_SENT, TCP_CLOSE) => {
            // The kernel sets the socket's error before it gives up on a handshake (a reset,
            // an ICMP error, a timeout). Without one, this end gave up (closed or disconnected
            // the socket while it was connecting): aborted, not failed. (So does a connect that
            // found no local port, EADDRNOTAVAIL: the syscall backends see that errno at the
            // syscall's return; the port is already released when this tracepoint fires, so
            // it cannot tell the two apart.)
            let error = sock_error(sk) as u32;
            let now = now_ns();
            update(sk, |fate| {
                fate.handshake_ns = now;
                if error != 0 {
                    fate.closed_by = ClosedBy::Failed as u32;
                    fate.error = error;
                } else {
                    fate.closed_by = ClosedBy::Local as u32;
                }
            });
        }
        (TCP_ESTABLISHED, TCP_CLOSE_WAIT) => first_end(sk, ClosedBy::Peer),
        (TCP_ESTABLISHED, TCP_FIN_WAIT1) => first_end(sk, ClosedBy::Local),
        (_, TCP_CLOSE) => {
            // Retransmissions or keepalives unanswered: the kernel gives up with ETIMEDOUT.
            if sock_error(sk) as u32 == ETIMEDOUT {
                overriding(sk, ClosedBy::Timeout, ETIMEDOUT);
            }
        }
        _ => {}
    }
}

/// Updates `sk`'s fate, if it has one.
#[inline(always)]
fn update(sk: u64, change: impl FnOnce(&mut TcpFate)) {
    if let Some(fate) = SK_FATE.get_ptr_mut(sk) {
        // SAFETY: a valid map value pointer; two CPUs changing one socket's state at once do
        // not happen (the socket is locked), and the worst a race does is pick either sign.
        unsafe { change(&mut *fate) };
    }
}

/// The first FIN: who sent it ended the connection, unless something said so before.
#[inline(always)]
fn first_end(sk: u64, by: ClosedBy) {
    update(sk, |fate| {
        if fate.closed_by == ClosedBy::Followed as u32 {
            fate.closed_by = by as u32;
        }
    });
}

/// A reset or a timeout tells more than a FIN before it (an app that closed with unread
/// data sends a reset): it wins over `Local`/`Peer`, but not over another reset or a failure.
#[inline(always)]
fn overriding(sk: u64, by: ClosedBy, error: u32) {
    update(sk, |fate| {
        let known = fate.closed_by;
        if known == ClosedBy::Followed as u32
            || known == ClosedBy::Local as u32
            || known == ClosedBy::Peer as u32
        {
            fate.closed_by = by as u32;
            fate.error = error;
        }
    });
}

/// The socket backend tracks TCP connect `sk` before the kernel performs it: until its SYN
/// goes out, its fate is `Pending` (replacing whatever an older socket at this address left).
#[inline(always)]
pub fn connect_pending(sk: u64) {
    let fate = TcpFate {
        closed_by: ClosedBy::Pending as u32,
        ..TcpFate::default()
    };
    let _ = SK_FATE.insert(sk, fate, 0);
}

/// `TP_PROTO(const struct sock *sk)`: a reset arrived for `sk`.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        overriding(sk, ClosedBy::ResetReceived, ECONNRESET);
    }
    0
}

/// `TP_PROTO(const struct sock *sk, const struct sk_buff *skb, ...)`: a reset was sent, for
/// `sk` when not null (a reply to a segment for no socket names none).
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if sk != 0 {
        overriding(sk, ClosedBy::ResetSent, 0);
    }
    0
}

/// Writes the fate of socket `sk` into the ring buffer record (`out`) of an event of `kind`
/// (`result`: a connect's return value): for a connect, how the handshake went; for a close,
/// also who ended it. The entry goes once reported for
/// good (a close, a failed connect).
///
/// # Safety
/// `out` must point into a reserved ring buffer record.
#[inline(always)]
pub unsafe fn annotate(kind: EventKind, result: i32, sk: u64, out: *mut RecordFate) {
    let close = kind as u32 == EventKind::Close as u32;
    let connect = kind as u32 == EventKind::Connect as u32;
    let mut fate = TcpFate::default();
    if sk != 0 && (close || connect) {
        // SAFETY: copied out at once.
        if let Some(found) = unsafe { SK_FATE.get(sk) } {
            fate = *found;
            // A connect reported failed is the socket's last report (it is not tracked
            // further). One reported in progress whose handshake has already failed is still
            // tracked: its close reports the failure.
            let failed = connect
                && result < 0
                && result != -EINPROGRESS
                && fate.closed_by == ClosedBy::Failed as u32;
            if close || failed {
                let _ = SK_FATE.remove(sk);
            }
        }
    }
    // SAFETY: guaranteed by the caller.
    unsafe { out.write(RecordFate::of(&fate)) };
}
