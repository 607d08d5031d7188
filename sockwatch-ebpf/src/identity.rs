//! Which kernel socket an fd names: the `struct sock` (the kernel's identity of the socket,
//! whoever holds it) and the socket's inode number (the identity users see in /proc and ss).
//!
//! The walk reads kernel memory at offsets user space found in this kernel's BTF (the `OFFSETS`
//! global), since Rust eBPF has no CO-RE relocations. Every read goes through
//! `bpf_probe_read_kernel`, which fails cleanly instead of faulting; any failure, or offsets
//! user space could not find, gives "not known" (zeroes), never a wrong socket.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_current_task, bpf_loop, bpf_probe_read_kernel};
use sockwatch_common::{ipv4_mapped, KernelOffsets, AF_INET, AF_INET6};

/// Set by user space at load time; `valid` stays 0 where the kernel has no BTF.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_private_data: 0,
    file_inode: 0,
    inode_ino: 0,
    socket_sk: 0,
    sock_socket: 0,
    socket_file: 0,
    task_mm: 0,
    file_count: 0,
    file_ref_style: 0,
    task_flags: 0,
    sock_num: 0,
    sock_daddr: 0,
    sock_dport: 0,
    sock_family: 0,
    sock_v6_daddr: 0,
    sock_err: 0,
    file_flags: 0,
    files_next_fd: 0,
    valid: 0,
};

/// `*(base + offset)` as a `T`, read from kernel memory.
#[inline(always)]
fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: a checked read of kernel memory; a bad address makes it fail, not fault.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// `(sk, ino)` of the socket on the calling process's `fd`, or zeroes when not known. Only
/// for fds known to hold a socket (a connect or accept on them just succeeded): the file's
/// `private_data` is a `struct socket` then.
#[inline(always)]
pub fn socket_of(fd: u32) -> (u64, u64) {
    walk(fd).unwrap_or((0, 0))
}

#[inline(always)]
fn walk(fd: u32) -> Option<(u64, u64)> {
    let (offsets, file) = file_of(fd)?;
    let socket: u64 = read(file, offsets.file_private_data)?;
    let inode: u64 = read(file, offsets.file_inode)?;
    let sk: u64 = read(socket, offsets.socket_sk)?;
    let ino: u64 = read(inode, offsets.inode_ino)?;
    Some((sk, ino))
}

/// The offsets user space set at load time, if it found them all.
#[inline(always)]
fn offsets() -> Option<KernelOffsets> {
    // SAFETY: a volatile read of our own read-only global, so the offsets user space set at
    // load time are used rather than the compile-time zeroes.
    let offsets = unsafe { core::ptr::read_volatile(&raw const OFFSETS) };
    (offsets.valid != 0).then_some(offsets)
}

/// The calling task's `task_struct` field at `offset`.
#[inline(always)]
fn current_task_field<T: Copy>(offset: u32) -> Option<T> {
    // SAFETY: a helper without preconditions; the task pointer is only ever read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    read(task, offset)
}

/// The fd array of the fd table `files` and its length (`files->fdt->{fd, max_fds}`).
#[inline(always)]
fn fd_array(offsets: &KernelOffsets, files: u64) -> Option<(u64, u32)> {
    let fdt: u64 = read(files, offsets.files_fdt)?;
    let max_fds: u32 = read(fdt, offsets.fdtable_max_fds)?;
    let fds: u64 = read(fdt, offsets.fdtable_fd)?;
    Some((fds, max_fds))
}

/// The `struct file` at `fd` in the fd table `files` (0 for a free fd).
#[inline(always)]
fn file_at(offsets: &KernelOffsets, files: u64, fd: u32) -> Option<u64> {
    let (fds, max_fds) = fd_array(offsets, files)?;
    if fd >= max_fds {
        return None;
    }
    read(fds, fd.checked_mul(8)?)
}

/// The calling process's `struct file` on `fd`, with the offsets that found it.
#[inline(always)]
fn file_of(fd: u32) -> Option<(KernelOffsets, u64)> {
    let offsets = offsets()?;
    let files: u64 = current_task_field(offsets.task_files)?;
    Some((offsets, file_at(&offsets, files, fd)?))
}

/// The inode of the file on the calling process's `fd` (any file), or `None` when not known.
#[inline(always)]
pub fn inode_of_fd(fd: u32) -> Option<u64> {
    let (offsets, file) = file_of(fd)?;
    let inode: u64 = read(file, offsets.file_inode)?;
    read(inode, offsets.inode_ino)
}

/// Whether the file on `fd` has other holders than this fd (a forked child's copy, a `dup`,
/// an fd in flight over a Unix socket, or another thread's call in progress): closing it then
/// leaves the socket open elsewhere. `false` when not known.
#[inline(always)]
pub fn file_shared(fd: u32) -> bool {
    let Some((offsets, file)) = file_of(fd) else {
        return false;
    };
    let Some(count) = read::<i64>(file, offsets.file_count) else {
        return false;
    };
    // `file_ref_t` keeps the count minus one (0 is one reference).
    let holders = if offsets.file_ref_style != 0 {
        count.saturating_add(1)
    } else {
        count
    };
    holders > 1
}

/// The inode of the socket `sk` belongs to (`sk->sk_socket->file->f_inode->i_ino`), or 0.
#[inline(always)]
pub fn inode_of_sock(sk: u64) -> u64 {
    let walk = || -> Option<u64> {
        let offsets = offsets()?;
        let inode: u64 = read(file_of_sock(sk), offsets.file_inode)?;
        read(inode, offsets.inode_ino)
    };
    walk().unwrap_or(0)
}

/// The local port of socket `sk` (host order), or 0 when not known or not bound yet.
#[inline(always)]
pub fn local_port(sk: u64) -> u16 {
    offsets()
        .and_then(|offsets| read::<u16>(sk, offsets.sock_num))
        .unwrap_or(0)
}

/// `PF_KTHREAD` in `task_struct.flags`.
const PF_KTHREAD: u32 = 0x0020_0000;

/// Whether the calling task is a user process's thread (not a kernel thread); `false` when not
/// known.
#[inline(always)]
pub fn current_is_user() -> bool {
    current_flags().is_some_and(|flags| flags & PF_KTHREAD == 0)
}

/// The calling task's `task_struct.flags` (`PF_*`), or `None` when not known.
#[inline(always)]
fn current_flags() -> Option<u32> {
    current_task_field(offsets()?.task_flags)
}

/// A task's fd table and memory (`task->files`, `task->mm`), or `None` when not known.
#[inline(always)]
pub fn files_and_mm_of(task: u64) -> Option<(u64, u64)> {
    let offsets = offsets()?;
    Some((
        read(task, offsets.task_files)?,
        read(task, offsets.task_mm)?,
    ))
}

/// `PF_EXITING` in `task_struct.flags`.
const PF_EXITING: u32 = 0x4;

/// Why the calling task is letting go of a socket: it is exiting, or it has just exec'd (a
/// close-on-exec fd: the exec's file releases run as it returns to the new program), or neither
/// (a close, a `dup2` or `close_range` onto it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Letting {
    Exit,
    Exec,
    Close,
}

/// How soon after its exec a thread's socket releases are the exec's own: they run in one batch
/// as the exec returns, long before the new program could close anything itself. 100 ms, not
/// 10: a task preempted on its way back from the exec (a loaded machine, an emulated guest:
/// CI's 6.12 guest took longer than 10 ms once) still releases the exec's sockets then.
const EXEC_RELEASES_NS: u64 = 100_000_000;

#[inline(always)]
pub fn letting_go() -> Letting {
    if current_flags().is_some_and(|flags| flags & PF_EXITING != 0) {
        return Letting::Exit;
    }
    let pid_tgid = crate::state::current().0;
    // SAFETY: copied out at once.
    if let Some(at) = unsafe { crate::maps::EXECS.get(pid_tgid) }.copied() {
        if crate::state::now_ns().saturating_sub(at) < EXEC_RELEASES_NS {
            return Letting::Exec;
        }
    }
    Letting::Close
}

/// The peer of inet socket `sk`: its address as `TrackedSocket::daddr` (an IPv4 one
/// IPv4-mapped, also a dual-stack socket's IPv4 peer, which the kernel keeps mapped) and its
/// port (network order); `None` for another family or when not known.
#[inline(always)]
pub fn inet_peer(sk: u64) -> Option<([u32; 4], u16)> {
    let offsets = offsets()?;
    let family: u16 = read(sk, offsets.sock_family)?;
    let addr = match family {
        AF_INET => ipv4_mapped(read(sk, offsets.sock_daddr)?),
        AF_INET6 => read(sk, offsets.sock_v6_daddr)?,
        _ => return None,
    };
    Some((addr, read(sk, offsets.sock_dport)?))
}

/// The socket's pending error (`sk->sk_err`: why a connect failed), 0 when none or not known.
#[inline(always)]
pub fn sock_error(sk: u64) -> i32 {
    offsets()
        .and_then(|offsets| read(sk, offsets.sock_err))
        .unwrap_or(0)
}

/// `O_NONBLOCK` on x86_64 and arm64.
const O_NONBLOCK: u32 = 0o4000;

/// Whether the file of socket `sk` is non-blocking (its connect returned `EINPROGRESS`).
#[inline(always)]
pub fn non_blocking(sk: u64) -> bool {
    offsets()
        .and_then(|offsets| read::<u32>(file_of_sock(sk), offsets.file_flags))
        .is_some_and(|flags| flags & O_NONBLOCK != 0)
}

/// How many fd-table entries one step of the scan compares (`maps::FD_CHUNK`).
const CHUNK: usize = crate::maps::FD_CHUNK;
/// The most steps a scan takes: fd tables up to a million entries.
const MAX_CHUNKS: u32 = 1 << 14;

/// What [`scan_chunk`] looks for and finds: the state of one fd-table scan, on the caller's
/// stack.
#[repr(C)]
struct FdScan {
    fds: u64,
    file: u64,
    max_fds: u32,
    found: u32,
}

/// One step of `bpf_loop` over the fd table: compares entries `index * CHUNK ..` with the
/// file looked for. Returns 1 (stop) once found or unreadable.
#[inline(never)]
extern "C" fn scan_chunk(index: u64, ctx: *mut c_void) -> i64 {
    let scan = ctx.cast::<FdScan>();
    // SAFETY: `ctx` is the `FdScan` on the stack of `fd_of_sock`, which waits for the loop.
    let (fds, file, max_fds) = unsafe { ((*scan).fds, (*scan).file, (*scan).max_fds) };
    let first = index * CHUNK as u64;
    // The entries are copied into a per-CPU scratch buffer, not onto the stack: this callback's
    // frame adds to its caller's, and the two must fit in 512 bytes.
    let Some(entries) = crate::maps::FD_SCAN.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: a checked read of kernel memory into our own map value.
    let read = unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel_buf(
            (fds + first * 8) as *const u8,
            core::slice::from_raw_parts_mut(entries.cast::<u8>(), CHUNK * 8),
        )
    };
    if read.is_err() {
        return 1;
    }
    let mut i = 0;
    while i < CHUNK {
        // SAFETY: within the map value, `CHUNK` entries long.
        if unsafe { (*entries)[i] } == file {
            let fd = first + i as u64;
            if fd < u64::from(max_fds) {
                // SAFETY: as above.
                unsafe { (*scan).found = fd as u32 };
            }
            return 1;
        }
        i += 1;
    }
    0
}

/// The calling process's fd for socket `sk` (when it has several: the one just below
/// `next_fd`, else the lowest), or `None` when it has none or it is not known. The kernel gives
/// a new fd the lowest free number, so a socket just made or accepted is most often at
/// `files->next_fd - 1`, checked first; else the whole table is scanned, [`CHUNK`] entries a
/// step.
#[inline(always)]
pub fn fd_of_sock(sk: u64) -> Option<u32> {
    let offsets = offsets()?;
    let file = file_of_sock(sk);
    if file == 0 {
        return None;
    }
    let files: u64 = current_task_field(offsets.task_files)?;
    let (fds, max_fds) = fd_array(&offsets, files)?;
    let next: u32 = read(files, offsets.files_next_fd)?;
    if next > 0 && next <= max_fds && read::<u64>(fds, (next - 1).checked_mul(8)?) == Some(file) {
        return Some(next - 1);
    }
    let mut scan = FdScan {
        fds,
        file,
        max_fds,
        found: u32::MAX,
    };
    let steps = max_fds.div_ceil(CHUNK as u32).min(MAX_CHUNKS);
    // SAFETY: `scan_chunk` only touches `scan`, which outlives the call.
    unsafe { bpf_loop(steps, scan_chunk as *mut c_void, (&raw mut scan).cast(), 0) };
    (scan.found != u32::MAX).then_some(scan.found)
}

/// The `struct file` of socket `sk`, or 0 when not known (or it has none).
#[inline(always)]
pub fn file_of_sock(sk: u64) -> u64 {
    let walk = || -> Option<u64> {
        let offsets = offsets()?;
        let socket: u64 = read(sk, offsets.sock_socket)?;
        read(socket, offsets.socket_file)
    };
    walk().unwrap_or(0)
}

/// The calling process's fd table (`task->files`), or 0 when not known.
#[inline(always)]
pub fn current_files() -> u64 {
    offsets()
        .and_then(|offsets| current_task_field(offsets.task_files))
        .unwrap_or(0)
}

/// Whether the fd table `files` has `file` at `fd`. `false` when not known: the table of a
/// process that has exited reads as anything, and a match with this very file is as good as
/// impossible.
#[inline(always)]
pub fn holds(files: u64, fd: u32, file: u64) -> bool {
    file != 0 && offsets().and_then(|offsets| file_at(&offsets, files, fd)) == Some(file)
}
