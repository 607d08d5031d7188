//! Types shared by sockwatch's kernel programs and its user space.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and free of implicit padding (explicit `_pad`
//! fields instead), so the bytes the kernel writes are exactly the bytes user space reads.
//! Map names are defined once here so the loader and the kernel side cannot disagree.
#![no_std]

/// `AF_INET` from `<sys/socket.h>`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`: only IPv4-mapped destinations (`::ffff:a.b.c.d`) are tracked.
pub const AF_INET6: u16 = 10;
/// `EINPROGRESS`: a non-blocking `connect()` that is still under way.
pub const EINPROGRESS: i32 = 115;
/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// `IPPROTO_TCP` / `IPPROTO_UDP`; 0 when not known.
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
/// The kernel's limit on the messages of one `sendmmsg`/`recvmmsg` (`UIO_MAXIOV`), so the
/// eBPF loop over them is bounded and still exact.
pub const MAX_MMSG: u32 = 1024;

/// Bits of [`TrackedSocket::flags`].
pub mod flags {
    /// Returned by `accept()`: the peer connected to us.
    pub const INBOUND: u32 = 1;
    /// Found in `/proc` when sockwatch started, inserted by user space.
    pub const PREEXISTING: u32 = 2;
    /// An `accept()` whose caller passed no address buffer: the peer is filled in by user space.
    pub const PEER_UNKNOWN: u32 = 4;
    /// Bytes may move where a syscall backend cannot count them: the socket went through
    /// io_uring or `splice`, or its fd was copied with `dup`/`fcntl(F_DUPFD)`.
    pub const PARTIAL: u32 = 8;
    /// A close whose `TRACKED` entry is not this socket's: a newer socket on the same fd had
    /// replaced it (another thread got the freed number first), or, on the socket backend, user
    /// space moved the row to another holder. The record holds the socket's identity (`sk`,
    /// `ino`) and, on the socket backend, its final counts (else it is also `PARTIAL`): user
    /// space finds the row by inode.
    pub const REPLACED: u32 = 32;
}

/// Bits of the `DIRECTIONS` global: which sockets to track.
pub mod directions {
    pub const OUTBOUND: u32 = 1;
    pub const INBOUND: u32 = 2;
}

/// Which address families to track (`-4`, `-6`; the `FAMILIES` global's bits), by the remote
/// end: an IPv4-mapped IPv6 peer is IPv4, as it is shown.
pub mod families {
    pub const IPV4: u32 = 1;
    pub const IPV6: u32 = 2;
    pub const BOTH: u32 = IPV4 | IPV6;
}

/// Which of `--pid` and `--port` the kernel applies (the `SCOPE` global's bits): a socket is
/// tracked only if it is in every one given (`SCOPE_PIDS`, `SCOPE_PORTS`).
pub mod scope {
    pub const PIDS: u32 = 1;
    pub const PORTS: u32 = 2;
    /// A port of `SCOPE_PORTS` lies in the kernel's ephemeral range
    /// (`net.ipv4.ip_local_port_range`): a socket whose local port is not bound yet may still
    /// get it, so it is decided once bound. Otherwise it is decided by its remote port alone.
    pub const UNBOUND_MAY_MATCH: u32 = 4;
    /// Values each of `SCOPE_PIDS` and `SCOPE_PORTS` holds at most.
    pub const MAX_VALUES: u32 = 1024;
}

/// Names of the maps in the eBPF object, shared by both sides.
pub mod maps {
    /// `HashMap<SocketKey, TrackedSocket>`: the sockets being watched, with their counters.
    pub const TRACKED: &str = "TRACKED";
    /// `HashMap<u64 /* pid_tgid */, InflightCall>`: a syscall's arguments, from entry to exit.
    pub const INFLIGHT: &str = "INFLIGHT";
    /// `RingBuf` of [`super::EventRecord`].
    pub const EVENTS: &str = "EVENTS";
    /// `LruHashMap<u64 /* struct sock * */, TcpFate>`: how each TCP socket's connect went and
    /// who ended it (see [`super::TcpFate`]).
    pub const SK_FATE: &str = "SK_FATE";
    /// `PerCpuArray<u64>` indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `LruHashMap<SocketKey, u32>`: the protocol of inet sockets made by `socket()` while we
    /// run, consumed by their `connect()`.
    pub const NEW_SOCKETS: &str = "NEW_SOCKETS";
    /// `HashMap<u32, u32>`: processes that own (or owned) a tracked socket, so that only their
    /// exit, exec and `close_range` are reported to user space.
    pub const PROCS: &str = "PROCS";
    /// `HashMap<u64 /* struct sock * */, SkBytes>`: the socket backend's tracked sockets, by
    /// the kernel's own socket, whoever moves the bytes (their counters, unless in `SK_HOT`).
    pub const SK_BYTES: &str = "SK_BYTES";
    /// `Array<HotCounts>`: the socket backend's counters where the socket layer finds them
    /// without a hash lookup (see [`super::HotCounts`]); its size is even (pairs of slots).
    pub const SK_HOT: &str = "SK_HOT";
    /// `Array<u64>`, mmapable, half `SK_HOT`'s size: one generation per pair of hot slots,
    /// raised each time a socket whose pair it is counts bytes in `SK_BYTES` instead (it has no
    /// slot, or a message raced the claim of its slot). User space reads a socket's `SK_BYTES`
    /// again only when its pair's generation moved (see [`super::hot_pair`]).
    pub const SK_SPILL: &str = "SK_SPILL";
    /// `HashMap<u64 /* inode */, SocketKey>`: sockets found open at start whose kernel socket the
    /// socket backend has yet to learn (at their first byte), and where they are tracked.
    pub const ADOPTED: &str = "ADOPTED";
    /// `Array<u32>` of one: how many `ADOPTED` entries user space put there and may still be
    /// unresolved (0 spares the socket layer the lookup).
    pub const ADOPTED_PENDING: &str = "ADOPTED_PENDING";
    /// `LruHashMap<u64 /* struct sock * */, u64 /* ns */>`: the socket backend's accepted TCP
    /// sockets, from their handshake until a process first uses them.
    pub const ACCEPTED: &str = "ACCEPTED";
    /// `HashMap<u32 /* pid */, u8>`: `--pid`, when given (see [`super::scope`]).
    pub const SCOPE_PIDS: &str = "SCOPE_PIDS";
    /// `HashMap<u16 /* port */, u8>`: `--port`, when given.
    pub const SCOPE_PORTS: &str = "SCOPE_PORTS";
}

/// A [`SocketKey::fd`] at or above this is not an fd number: the socket's fd was not found
/// (an io_uring fixed file, an fd table too large to scan, or a socket ending after its fd
/// was closed). The low bits keep such keys apart within a process.
pub const FD_UNKNOWN: u32 = 1 << 31;

/// Byte offsets of the kernel struct fields on the way from an fd to its socket, read by user
/// space from the running kernel's BTF (`/sys/kernel/btf/vmlinux`) and set at load time (the
/// `OFFSETS` global): Rust eBPF has no CO-RE relocations, so the layout cannot be compiled in.
///
/// `task_struct.files → files_struct.fdt → fdtable.{max_fds, fd}[fd] → file.{private_data
/// (the struct socket), f_inode} → socket.sk, inode.i_ino`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub socket_sk: u32,
    /// The other way, for sockets found open at start: `sock.sk_socket → socket.file`.
    pub sock_socket: u32,
    pub socket_file: u32,
    /// `task_struct.mm`: a child sharing its parent's memory (vfork, posix_spawn) runs exec or
    /// exits before it can use the sockets it holds.
    pub task_mm: u32,
    /// The file's reference count (`file.f_ref` since 6.13, `file.f_count` before): a close
    /// while other holders remain (a forked child, an fd passed on) does not end the socket.
    pub file_count: u32,
    /// 1 for `f_ref` (`file_ref_t`, which stores the count minus one), 0 for `f_count`.
    pub file_ref_style: u32,
    /// `task_struct.flags`: `PF_KTHREAD` tells a kernel thread (a deferred file release)
    /// from the process that let go of a socket.
    pub task_flags: u32,
    /// `sock.__sk_common.skc_num`: the local port (host order), set by the kernel when it binds
    /// the socket (at connect for an outbound one).
    pub sock_num: u32,
    /// `sock.__sk_common.{skc_daddr, skc_dport, skc_family, skc_v6_daddr}`: the peer of an
    /// accepted socket, and whether it is IPv4 (or IPv4-mapped) at all.
    pub sock_daddr: u32,
    pub sock_dport: u32,
    pub sock_family: u32,
    pub sock_v6_daddr: u32,
    /// `sock.sk_err`: why a connect failed.
    pub sock_err: u32,
    /// `file.f_flags`: whether a connect was non-blocking (`O_NONBLOCK`).
    pub file_flags: u32,
    /// `files_struct.next_fd`: the lowest fd that may be free; a new socket's fd is most often
    /// the one just below it.
    pub files_next_fd: u32,
    /// 1 when every offset above was found; 0 leaves sockets' `sk` and `ino` at 0.
    pub valid: u32,
}

/// The socket backend's counters of one kernel socket: the value of `SK_BYTES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkBytes {
    /// Sum of the lengths `sock:sock_send_length` reported (bytes), added atomically.
    pub bytes_sent: u64,
    /// Sum of the lengths `sock:sock_recv_length` reported, peeks excluded.
    pub bytes_recv: u64,
    /// The socket's inode (0 where not known): so user space knows it among those it finds
    /// held in /proc, whoever holds it.
    pub ino: u64,
    /// The `files_struct` of the process at `key`: whether it still holds the socket is
    /// checked there when another process moves its bytes (the row moves only once it does
    /// not). 0 when not known.
    pub files: u64,
    /// Where the kernel last put its `TRACKED` entry: the process that moves its bytes, and
    /// its fd there. Written only by the kernel (user space moving a row leaves it stale; the
    /// kernel finds the row at the holder's fd then).
    pub key: SocketKey,
    /// 1 while a UDP connect is not reported yet: its local port is bound after the connect
    /// hook, so it is reported at the socket's first use (or its release), with that port.
    pub unreported: u32,
    /// `SK_HOT` index + 1 of the slot holding this socket's counters, or 0: both slots it may
    /// use were taken. The socket's counts are the slot's plus the ones above (which stay 0
    /// with a slot, but for a message racing its claim).
    pub hot: u32,
}

/// One slot of `SK_HOT`: a tracked socket's counters, found by the kernel from its
/// `struct sock *` by arithmetic (sockwatch-ebpf's `hot.rs`) rather than a hash-map lookup,
/// which on every message was most of what counting cost; user space reads it by
/// [`SkBytes::hot`]. `sk` 0: free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotCounts {
    /// The socket whose counters these are (claimed with a compare-and-swap from 0).
    pub sk: u64,
    /// As [`SkBytes::bytes_sent`].
    pub bytes_sent: u64,
    /// As [`SkBytes::bytes_recv`].
    pub bytes_recv: u64,
    /// `SkBytes::key.pid`, copied: a message from this process, with `slow` 0, is only counted.
    pub pid: u32,
    /// Non-zero while a message must take the full path first (a UDP connect to report).
    pub slow: u32,
}

/// The first of the two `SK_HOT` slots socket `sk` may use (the other is this one `^ 1`, in
/// the same cache line); `pairs` is half `SK_HOT`'s size. The kernel finds a socket's slot
/// with it.
#[inline(always)]
pub fn hot_slot(sk: u64, pairs: u32) -> u32 {
    hot_pair(sk, pairs) * 2
}

/// Socket `sk`'s pair of `SK_HOT` slots (of `pairs`): its index in `SK_SPILL`.
#[inline(always)]
pub fn hot_pair(sk: u64, pairs: u32) -> u32 {
    // `struct sock`s are slab objects of a few KiB: the low bits say little, so multiply
    // (Fibonacci hashing) and take bits from the middle of the product.
    let hash = ((sk >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
    // Onto 0..pairs by a multiply and a shift (Lemire's reduction), not a mask: the array
    // need not be a power of two, so it can be sized to the sockets and not up to twice that
    // (a mapped array is resident whole: 2 MiB less at 100k sockets).
    ((u64::from(hash) * u64::from(pairs)) >> 32) as u32
}

/// Names of the global variables user space sets at load time.
pub mod globals {
    /// `u32`: 1 for the socket backend, whose counters live in `SK_BYTES` (keyed by the kernel
    /// socket) rather than in `TRACKED` (keyed by the fd).
    pub const COUNT_BY_SOCKET: &str = "COUNT_BY_SOCKET";
    /// [`super::KernelOffsets`].
    pub const OFFSETS: &str = "OFFSETS";
    /// `u32`: half the size of `SK_HOT`: its pairs of slots, and `SK_SPILL`'s size.
    pub const HOT_PAIRS: &str = "HOT_PAIRS";
    /// `u32`: 1 when the kprobe backend's syscall symbols take a `struct pt_regs *` of the
    /// user registers (x86_64's `__x64_sys_*` wrappers), 0 when they take the arguments directly.
    pub const SYSCALL_WRAPPER: &str = "SYSCALL_WRAPPER";
    /// `u32`: a [`super::directions`] mask.
    pub const DIRECTIONS: &str = "DIRECTIONS";
    /// `u32`: a [`super::families`] mask.
    pub const FAMILIES: &str = "FAMILIES";
    /// `u32`: a [`super::scope`] mask.
    pub const SCOPE: &str = "SCOPE";
}

/// The one list of hooked syscalls, passed to `$callback!` as one row per syscall:
///
/// `name hook entry exit;`
/// - `name`: as in `syscalls:sys_enter_<name>` and the kernel's `__x64_sys_<name>`;
/// - `hook`: `both` (entry and exit), `optional` (both, where the kernel has the syscall) or
///   `exit_only` (exec: only its return matters), the [`Syscall`] constructor of the row;
/// - `entry`: the function of sockwatch-ebpf's `enter` module that stashes the call (`_` for
///   `exit_only` rows);
/// - `exit`: the [`CallKind`] the exit may find stashed, or `Exec` for exec's return.
///
/// From it come [`SYSCALLS`] (what user space attaches) and, in sockwatch-ebpf, both backends'
/// programs (`enter_<name>`/`exit_<name>` tracepoints, `kp_<name>`/`kret_<name>` kprobes), so
/// the three can never disagree (sockwatch-tui's `tests/object.rs` checks the built object).
#[macro_export]
macro_rules! for_each_syscall {
    ($callback:ident) => {
        $callback! {
            socket      both      socket       Socket;
            connect     both      connect      Connect;
            accept      both      accept       Accept;
            accept4     both      accept       Accept;
            write       both      send         Send;
            writev      both      send         Send;
            sendto      both      send         Send;
            sendmsg     both      send         Send;
            sendmmsg    both      sendmmsg     SendMmsg;
            sendfile64  both      send         Send;
            read        both      recv         Recv;
            readv       both      recv         Recv;
            recvfrom    both      recv         Recv;
            recvmsg     both      recv         Recv;
            recvmmsg    both      recvmmsg     RecvMmsg;
            close       both      close        Close;
            close_range optional  close_range  CloseRange;
            dup2        both      dup_onto     DupOnto;
            dup3        both      dup_onto     DupOnto;
            dup         both      dup_copy     Partial;
            fcntl       both      fcntl_dup    Partial;
            splice      both      splice       Partial;
            execve      exit_only _            Exec;
            execveat    exit_only _            Exec;
        }
    };
}

/// Builds [`SYSCALLS`] from the table's rows.
macro_rules! syscall_list {
    ($($name:ident $hook:ident $entry:tt $exit:ident;)*) => {
        /// The syscalls the probes hook, and which side of each: user space attaches
        /// `enter_<name>` / `exit_<name>` tracepoint programs or `kp_<name>` / `kret_<name>`
        /// kprobes by these names.
        pub const SYSCALLS: [Syscall; [$(stringify!($name)),*].len()] =
            [$(Syscall::$hook(stringify!($name))),*];
    };
}

for_each_syscall!(syscall_list);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    /// As in `syscalls:sys_enter_<name>`.
    pub name: &'static str,
    /// Whether the entry is hooked too (exec needs only its exit).
    pub enter: bool,
    /// Newer than the oldest kernel we support (close_range: 5.9): skipped where absent,
    /// since nothing can call a syscall the kernel does not have.
    pub optional: bool,
}

impl Syscall {
    const fn both(name: &'static str) -> Self {
        Self {
            name,
            enter: true,
            optional: false,
        }
    }
    const fn optional(name: &'static str) -> Self {
        Self {
            name,
            enter: true,
            optional: true,
        }
    }
    const fn exit_only(name: &'static str) -> Self {
        Self {
            name,
            enter: false,
            optional: false,
        }
    }
}

/// A socket is identified by the process that owns the fd table and the fd number.
/// Not by thread (fds belong to the process) and not by comm.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketKey {
    /// Process id (the kernel's tgid).
    pub pid: u32,
    pub fd: u32,
}

/// Where a tracked socket stands, as far as the syscalls we watch can tell.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketState {
    /// A non-blocking `connect()` returned `-EINPROGRESS` and nothing has been sent yet.
    Connecting = 1,
    /// `connect()` returned 0, or a send on the socket succeeded.
    Established = 2,
}

impl SocketState {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Connecting),
            2 => Some(Self::Established),
            _ => None,
        }
    }
}

/// The kernel's record of one watched socket: the value of the `TRACKED` map, and the socket
/// part of every [`SocketEvent`]. `Default` is all zeroes: no socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackedSocket {
    /// Sum of successful send return values (bytes), added atomically by every thread.
    pub bytes_sent: u64,
    /// Sum of successful receive return values (bytes).
    pub bytes_recv: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the connect returned.
    pub connect_ns: u64,
    /// The kernel's `struct sock` address: the socket's identity inside the kernel, whoever
    /// holds it. 0 when not known (see [`KernelOffsets`]). Never shown to users.
    pub sk: u64,
    /// The socket's inode number, as `/proc/PID/fd` (`socket:[N]`) and `ss -e` show it: its
    /// identity for users. 0 when not known.
    pub ino: u64,
    /// Destination (for inbound sockets: peer) address, as `struct in6_addr` holds it (network
    /// byte order): an IPv4 one IPv4-mapped ([`ipv4_mapped`]).
    pub daddr: [u32; 4],
    /// Destination port, host byte order.
    pub dport: u16,
    /// Local port, host byte order; 0 when the kernel side does not know it.
    pub lport: u16,
    /// The thread that connected (or accepted).
    pub tid: u32,
    /// A [`SocketState`] value.
    pub state: u32,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or 0 when not known.
    pub proto: u32,
    /// [`flags`] bits.
    pub flags: u32,
    pub _pad0: u32,
    pub comm: [u8; COMM_LEN],
}

/// IPv4 address `addr` (network byte order) as the IPv4-mapped IPv6 one (`::ffff:a.b.c.d`),
/// in `struct in6_addr`'s words: how the shared records hold an IPv4 address.
#[inline(always)]
pub const fn ipv4_mapped(addr: u32) -> [u32; 4] {
    [0, 0, u32::to_be(0xffff), addr]
}

/// Whether `addr` (as [`TrackedSocket::daddr`]) is an IPv4 one: IPv4-mapped.
#[inline(always)]
pub fn is_ipv4(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::to_be(0xffff)
}

/// Whether two addresses are the same, word by word (an array `==` may become a `memcmp`
/// call, which the BPF target has not).
#[inline(always)]
pub fn same_address(a: &[u32; 4], b: &[u32; 4]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// What a thread is in the middle of: the value of the `INFLIGHT` map, written at syscall
/// entry and consumed (deleted) at exit, so the exit sees both the arguments and the result.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InflightCall {
    /// A [`CallKind`] value: the exit handler acts on it.
    pub kind: u32,
    pub fd: u32,
    /// For connect: destination address (as [`TrackedSocket::daddr`]) and port (host order).
    pub daddr: [u32; 4],
    pub dport: u16,
    pub _pad0: u16,
    pub _pad1: u32,
    /// A user pointer kept for the exit: the `mmsghdr` vector, the accept address buffer; for
    /// close and dup2, the closed socket's `struct sock *`.
    pub ptr: u64,
    /// Another argument: `close_range`'s last fd and flags, `socket()`'s protocol; for close
    /// and dup2, the closed socket's inode.
    pub arg: u64,
}

/// What the syscall in flight was, as far as the exit handler cares.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Connect = 1,
    /// Bytes out: the return value is a byte count.
    Send = 2,
    /// Bytes in: the return value is a byte count.
    Recv = 3,
    /// `sendmmsg`: the return value is a message count; bytes are in the vector.
    SendMmsg = 4,
    RecvMmsg = 5,
    Close = 6,
    CloseRange = 7,
    /// `dup2`/`dup3` onto a tracked fd, which closes it.
    DupOnto = 8,
    Accept = 9,
    Socket = 10,
    /// Nothing to do at the exit: the entry marked the socket partial.
    Partial = 11,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An IPv4 `connect()` returned; `result` holds its return value.
    Connect = 1,
    /// A tracked socket was closed; byte counts are final. `arg` is a [`CloseHow`].
    Close = 2,
    /// `accept()` returned an IPv4 socket (`fd`); `arg` is the listening fd.
    Accept = 3,
    /// The leader of a process with tracked sockets exited: its fds are gone. `arg` is 1 if it
    /// forked since (the socket backend: a child may still hold its sockets).
    ProcessExit = 4,
    /// A process with tracked sockets exec'd: its close-on-exec fds are gone.
    Exec = 5,
    /// `close_range(fd, arg)` succeeded in a process with tracked sockets.
    CloseRange = 6,
    /// A process with tracked sockets forked a child with its own copy of the fd table: the
    /// child holds the same sockets (the syscall backends cannot count its bytes).
    Fork = 7,
    /// Another process moved the bytes of a tracked socket (the socket backend): its row is
    /// under that process's fd (`key`) from now on. `arg` is the pid it was under, `result`
    /// the fd (as `i32`); the counts are those so far.
    Moved = 8,
}

impl EventKind {
    pub const fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Connect,
            2 => Self::Close,
            3 => Self::Accept,
            4 => Self::ProcessExit,
            5 => Self::Exec,
            6 => Self::CloseRange,
            7 => Self::Fork,
            8 => Self::Moved,
            _ => return None,
        })
    }
}

/// How the kernel side saw a tracked socket end.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseHow {
    Close = 1,
    /// `dup2`/`dup3` put another file on its fd.
    DupOnto = 2,
    /// The socket backend: released by its last holder's exit, or by its exec (a close-on-exec
    /// fd). (That backend sees a release, not the call, so `dup2` and `close_range` read as
    /// `Close`.)
    Exit = 3,
    Exec = 4,
}

/// Who ended a TCP connection, as the kernel's TCP state changes and resets tell it
/// ([`TcpFate::closed_by`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedBy {
    /// Not followed: no entry (a socket from before sockwatch started, or one the LRU map
    /// evicted).
    Unknown = 0,
    /// This end closed (or shut down) first: it sent the first FIN.
    Local = 1,
    /// The peer's FIN came first.
    Peer = 2,
    ResetSent = 3,
    ResetReceived = 4,
    /// Retransmissions or keepalives went unanswered (`ETIMEDOUT`).
    Timeout = 5,
    /// The handshake failed: `error` says why.
    Failed = 6,
    /// Followed since its connect or accept, and nothing has ended it yet: released by this
    /// end before any sign (the socket backend's release runs before TCP's close).
    Followed = 7,
    /// A connect the socket backend tracked before the kernel performed it: until its SYN
    /// goes out (SYN_SENT makes it `Followed`). Still so at its release, it failed before
    /// sending anything (no route, no local port), with an errno that backend cannot see.
    Pending = 8,
}

impl ClosedBy {
    pub const fn from_u32(value: u32) -> Self {
        match value {
            1 => Self::Local,
            2 => Self::Peer,
            3 => Self::ResetSent,
            4 => Self::ResetReceived,
            5 => Self::Timeout,
            6 => Self::Failed,
            7 => Self::Followed,
            8 => Self::Pending,
            _ => Self::Unknown,
        }
    }
}

/// What the kernel's TCP told of a socket's start and end, by `struct sock *` (the `SK_FATE`
/// map): made when a TCP socket starts connecting or is accepted while sockwatch runs, tracked
/// or not (an LRU map: knowing whether it is tracked would cost a lookup at each change),
/// updated as it ends, copied into its connect and close records.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFate {
    /// When it entered SYN_SENT (its connect started); 0 when not seen.
    pub syn_ns: u64,
    /// When its handshake ended, established or failed; 0 when not seen.
    pub handshake_ns: u64,
    /// A [`ClosedBy`] value.
    pub closed_by: u32,
    /// The errno that ended it (a failed handshake, a reset, a timeout); 0 otherwise.
    pub error: u32,
}

/// What a record tells of its socket's [`TcpFate`] (for a connect or a close): what user space
/// shows of it, in 8 bytes rather than the 24 the kernel keeps to work it out (a record of a
/// storm's 100,000 sockets is one of many waiting in the ring).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordFate {
    /// How long its handshake took (SYN sent to established or failed), in µs;
    /// [`RecordFate::NO_CONNECT_US`] when not seen.
    pub connect_us: u32,
    /// A [`ClosedBy`] value.
    pub closed_by: u16,
    /// The errno that ended it (a failed handshake, a reset, a timeout); 0 otherwise (errnos
    /// are below 4096).
    pub error: u16,
}

impl RecordFate {
    pub const NO_CONNECT_US: u32 = u32::MAX;

    /// What a record tells of `fate`.
    #[inline(always)]
    pub fn of(fate: &TcpFate) -> Self {
        let connect_us = if fate.syn_ns != 0 && fate.handshake_ns >= fate.syn_ns {
            let us = (fate.handshake_ns - fate.syn_ns) / 1000;
            if us >= Self::NO_CONNECT_US as u64 {
                Self::NO_CONNECT_US - 1
            } else {
                us as u32
            }
        } else {
            Self::NO_CONNECT_US
        };
        Self {
            connect_us,
            closed_by: fate.closed_by as u16,
            error: fate.error as u16,
        }
    }
}

impl Default for RecordFate {
    /// No fate: not followed, no handshake seen.
    fn default() -> Self {
        Self {
            connect_us: Self::NO_CONNECT_US,
            closed_by: ClosedBy::Unknown as u16,
            error: 0,
        }
    }
}

/// One record in the `EVENTS` ring buffer: the event, and for a connect or a close the TCP
/// fate of its socket, written by `emit` straight into the ring buffer (never on a program's
/// stack, where every byte counts).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub event: SocketEvent,
    pub fate: RecordFate,
}

/// One event: what happened (`kind`, by whom, when) to which
/// socket, with the socket's record as the kernel tracks it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEvent {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// The thread that made the call (for a close: the closing thread; `socket.tid` is the
    /// one that connected).
    pub tid: u32,
    /// The socket (for process events: the process, and the first fd of a `close_range`).
    pub key: SocketKey,
    /// `bpf_ktime_get_ns()` when the event happened (for a connect or an accept it equals
    /// `socket.connect_ns`).
    pub ts_ns: u64,
    /// For a connect: the syscall's return value (0, `-EINPROGRESS` or `-errno`). 0 otherwise.
    pub result: i32,
    /// Per kind: [`CloseHow`], the listening fd, the last fd of a range.
    pub arg: u32,
    /// Connect, accept: the socket as it starts being tracked (also for a failed connect,
    /// which is not tracked: `state` is 0 then). Close: the final record, counters included.
    /// Process events: only `comm` is set.
    pub socket: TrackedSocket,
}

impl SocketEvent {
    /// An event of `kind` about `socket` (`key`), made by thread `tid` at `ts_ns`. `result`
    /// and `arg` are 0: the kinds that have them set them with struct update syntax.
    pub const fn new(
        kind: EventKind,
        key: SocketKey,
        tid: u32,
        ts_ns: u64,
        socket: TrackedSocket,
    ) -> Self {
        Self {
            kind: kind as u32,
            tid,
            key,
            ts_ns,
            result: 0,
            arg: 0,
            socket,
        }
    }
}

/// Indices into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An event could not be reserved in the ring buffer: it was lost.
    RingbufDrops = 0,
    /// A connect could not be tracked because `TRACKED` was full.
    TrackedFull = 1,
    /// A syscall's arguments could not be stashed because `INFLIGHT` was full.
    InflightFull = 2,
    /// A socket found open at start had its kernel socket learned (at its first byte): user
    /// space finds where it is counted from then on.
    Adopted = 3,
}

/// Number of entries in the `COUNTERS` array.
pub const COUNTER_COUNT: u32 = 4;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding, so any bit
    // pattern the kernel writes is a valid value.
    unsafe impl aya::Pod for super::SocketKey {}
    unsafe impl aya::Pod for super::TrackedSocket {}
    unsafe impl aya::Pod for super::InflightCall {}
    unsafe impl aya::Pod for super::SocketEvent {}
    unsafe impl aya::Pod for super::TcpFate {}
    unsafe impl aya::Pod for super::EventRecord {}
    unsafe impl aya::Pod for super::RecordFate {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::SkBytes {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HotCounts {}
}

// Layout checks: the kernel and user space must agree byte for byte.
const _: () = {
    assert!(core::mem::size_of::<SocketKey>() == 8);
    assert!(core::mem::size_of::<TrackedSocket>() == 96);
    assert!(core::mem::size_of::<InflightCall>() == 48);
    assert!(core::mem::size_of::<SocketEvent>() == 128);
    assert!(core::mem::size_of::<TcpFate>() == 24);
    assert!(core::mem::size_of::<RecordFate>() == 8);
    // No larger than before addresses took 16 bytes: a storm's records fill the ring no sooner.
    assert!(core::mem::size_of::<EventRecord>() == 136);
    assert!(core::mem::size_of::<KernelOffsets>() == 92);
    assert!(core::mem::size_of::<SkBytes>() == 48);
    assert!(core::mem::size_of::<HotCounts>() == 32);
    // The socket starts right after the event's own 32 bytes, 8-byte aligned: no padding.
    assert!(core::mem::offset_of!(SocketEvent, socket) == 32);
};
