//! Which kernel socket an fd names: the `struct sock` (the kernel's identity of the socket,
//! whoever holds it) and the socket's inode number (the identity users see in /proc and ss).
//!
//! The walk reads kernel memory at offsets user space found in this kernel's BTF (the `OFFSETS`
//! global), since Rust eBPF has no CO-RE relocations. Every read goes through
//! `bpf_probe_read_kernel`, which fails cleanly instead of faulting; any failure, or offsets
//! user space could not find, gives "not known" (zeroes), never a wrong socket.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use sockwatch_common::KernelOffsets;

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

/// The calling process's `struct file` on `fd`, with the offsets that found it.
#[inline(always)]
fn file_of(fd: u32) -> Option<(KernelOffsets, u64)> {
    let offsets = offsets()?;
    // SAFETY: a helper without preconditions; the task pointer is only ever read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, offsets.task_files)?;
    let fdt: u64 = read(files, offsets.files_fdt)?;
    let max_fds: u32 = read(fdt, offsets.fdtable_max_fds)?;
    if fd >= max_fds {
        return None;
    }
    let fds: u64 = read(fdt, offsets.fdtable_fd)?;
    let file: u64 = read(fds, fd.checked_mul(8)?)?;
    Some((offsets, file))
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

/// How far the kernel is in releasing a socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// A file still holds it (or it is not known).
    Held,
    /// Its file's last reference is gone: the calling task is closing it (its close or exit).
    ByCaller,
    /// It has no file any more (orphaned): closed earlier, ending now in whatever context the
    /// network stack runs (the caller is not who closed it).
    Done,
}

/// Where the socket `sk` is in its release. [`Release::Held`] when not known, so a wrong answer
/// only delays the end until user space's check.
#[inline(always)]
pub fn release_of(sk: u64) -> Release {
    let walk = || -> Option<Release> {
        let offsets = offsets()?;
        let socket: u64 = read(sk, offsets.sock_socket)?;
        if socket == 0 {
            return Some(Release::Done);
        }
        let file: u64 = read(socket, offsets.socket_file)?;
        if file == 0 {
            return Some(Release::Done);
        }
        let count: i64 = read(file, offsets.file_count)?;
        // `file_ref_t` keeps the count minus one, and a negative (dead) value once released.
        let released = if offsets.file_ref_style != 0 {
            count < 0
        } else {
            count == 0
        };
        Some(if released {
            Release::ByCaller
        } else {
            Release::Held
        })
    };
    walk().unwrap_or(Release::Held)
}

/// The inode of the socket `sk` belongs to (`sk->sk_socket->file->f_inode->i_ino`), or 0.
#[inline(always)]
pub fn inode_of_sock(sk: u64) -> u64 {
    let walk = || -> Option<u64> {
        let offsets = offsets()?;
        let socket: u64 = read(sk, offsets.sock_socket)?;
        let file: u64 = read(socket, offsets.socket_file)?;
        let inode: u64 = read(file, offsets.file_inode)?;
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
    let Some(offsets) = offsets() else {
        return false;
    };
    // SAFETY: a helper without preconditions; the pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    read::<u32>(task, offsets.task_flags).is_some_and(|flags| flags & PF_KTHREAD == 0)
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
