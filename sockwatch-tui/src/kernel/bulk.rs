//! Reading whole maps at a cost that does not grow with a syscall per entry: a hash map in
//! batches (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6) and an array through a memory mapping
//! (`BPF_F_MMAPABLE`, Linux 5.5). aya 0.14 offers neither: its iterators make two syscalls per
//! entry (next key, then lookup), 200,000 a refresh for 100,000 sockets.

use std::{
    io,
    marker::PhantomData,
    mem::{size_of, MaybeUninit},
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::{
    maps::{HashMap, IterableMap, MapData},
    Pod,
};

/// Entries asked for per batch call: few calls for 100k entries, buffers of a few hundred KiB.
/// (A hash map hands out whole buckets, far smaller than this.)
pub const BATCH: u32 = 4096;

/// `BPF_MAP_LOOKUP_BATCH`, from `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `bpf_attr`'s `batch` member: the only part of the union this command reads. The kernel
/// zero-fills the rest of `bpf_attr` when the size passed is smaller.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of `map`, at most `limit`: in batches of `batch` entries where the kernel has
/// them, else (or should a batch fail) through aya's iterator, two syscalls an entry.
///
/// Unlike the iterator, a batch walk goes bucket by bucket, so an entry the kernel deletes
/// meanwhile cannot send it back to the first key: it ends after one pass.
pub fn hash_entries<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    limit: usize,
    batch: u32,
) -> Vec<(K, V)> {
    match batch_entries(map.map(), limit, batch.max(1)) {
        Ok(entries) => entries,
        Err(_) => map.iter().take(limit).filter_map(Result::ok).collect(),
    }
}

fn batch_entries<K: Pod, V: Pod>(
    map: &MapData,
    limit: usize,
    batch: u32,
) -> io::Result<Vec<(K, V)>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let batch_len = batch as usize;
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(batch_len);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(batch_len);
    keys.resize_with(batch_len, MaybeUninit::uninit);
    values.resize_with(batch_len, MaybeUninit::uninit);
    // The kernel's cursor (a bucket index for hash maps): what one call returns, the next
    // passes back.
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut entries = Vec::new();
    // Each call moves past at least one bucket; the bound is for a kernel that misbehaves.
    for call in 0..=limit {
        let mut attr = BatchAttr {
            in_batch: if call == 0 {
                0
            } else {
                &raw const cursor_in as u64
            },
            out_batch: &raw mut cursor_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attr points at buffers of `batch` keys and values of the map's own key and
        // value types (aya checked their sizes against the map's when it was opened) and at
        // two u64 cursors, all alive for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        // The kernel reports how many it filled in `count`, also with ENOENT (the end).
        let done = ret < 0;
        if done {
            let error = io::Error::last_os_error();
            // Anything but the end leaves the read incomplete, and a socket missing from a
            // read may be taken for one whose close was lost: the caller reads it all again.
            if error.raw_os_error() != Some(libc::ENOENT) {
                return Err(error);
            }
        }
        let filled = (attr.count as usize).min(batch_len);
        for (key, value) in keys.iter().zip(&values).take(filled) {
            // SAFETY: the kernel wrote the first `filled` keys and values.
            entries.push(unsafe { (key.assume_init_read(), value.assume_init_read()) });
        }
        if done || entries.len() >= limit {
            break;
        }
        cursor_in = cursor_out;
    }
    entries.truncate(limit);
    Ok(entries)
}

/// A `BPF_F_MMAPABLE` array, mapped read-only: reading a slot is a memory read. Values are
/// read as they are at that moment, field by field (aligned u64s do not tear, but the kernel
/// may update one field between two reads, as with a lookup).
pub struct MappedArray<V> {
    base: NonNull<V>,
    len: usize,
    bytes: usize,
    _values: PhantomData<V>,
}

// SAFETY: the mapping is read-only shared memory owned by this value; reads are volatile.
unsafe impl<V: Send> Send for MappedArray<V> {}

impl<V: Pod> MappedArray<V> {
    /// Maps the `len` slots of an array map created with `BPF_F_MMAPABLE`.
    pub fn new(map: &MapData, len: u32) -> io::Result<Self> {
        // The kernel lays an mmapable array's values out at a stride of their size rounded up
        // to 8: only types already that size can be read as a slice of `V`.
        if !size_of::<V>().is_multiple_of(8) || size_of::<V>() == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let len = len as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::last_os_error())?;
        let bytes = (len * size_of::<V>()).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a new shared read-only mapping of the map's value area (offset 0), no wider
        // than its page-rounded size, which the kernel checks too.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<V>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            base,
            len,
            bytes,
            _values: PhantomData,
        })
    }

    /// Slot `index`'s value as of now.
    pub fn get(&self, index: u32) -> Option<V> {
        let index = index as usize;
        // SAFETY: in bounds, aligned (page-aligned base, 8-multiple stride), and the kernel
        // writes it concurrently: volatile, so each call really reads it.
        (index < self.len).then(|| unsafe { self.base.as_ptr().add(index).read_volatile() })
    }
}

impl<V> Drop for MappedArray<V> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
