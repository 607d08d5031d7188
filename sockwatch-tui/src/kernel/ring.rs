//! The event ring buffer (`EVENTS`, a `BPF_MAP_TYPE_RINGBUF`), read where the kernel writes it.
//!
//! aya's `RingBuf` (like libbpf) maps the ring's data area twice, back to back, so that a
//! record that wraps past the end reads as one slice. The kernel fills in every page of a ring
//! buffer mapping when it is made, so that second view costs the ring's size again in resident
//! memory (4 MiB by default, a sixteenth of the dashboard's budget at 100,000 sockets). Here
//! the data area is mapped once; the few records that wrap are copied out in two parts.
//!
//! The protocol is the kernel's (`kernel/bpf/ringbuf.c`): a producer position the kernel
//! advances, a consumer position user space advances, and before each record an 8-byte header
//! (its length, with a busy bit while the kernel still writes it and a discard bit for a
//! record withdrawn), records padded to 8 bytes.

use std::{
    io,
    ops::Deref,
    os::fd::{AsFd, AsRawFd, RawFd},
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering},
};

use aya::maps::MapData;

/// `BPF_RINGBUF_BUSY_BIT`, `BPF_RINGBUF_DISCARD_BIT` and `BPF_RINGBUF_HDR_SZ`
/// (`include/uapi/linux/bpf.h`).
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER: usize = 8;

/// The event ring buffer, mapped for reading: the consumer page (read-write), then the
/// producer page and the data area once (read-only).
pub struct EventRing {
    /// Owns the map's fd, which the mappings and the readiness watch use.
    map: MapData,
    consumer: Mapping,
    producer: Mapping,
    page: usize,
    /// The data area's size (a power of two) minus one.
    mask: usize,
    /// How far this reader has read (the consumer page has it as of the last record done).
    pos: usize,
    /// The producer position as last read: read again only once reading catches up to it.
    producer_pos: usize,
    /// A record that wraps past the end of the data area, put together.
    wrapped: Vec<u8>,
}

// SAFETY: the mappings are owned by this value and the kernel is the only other party; the
// positions are read and written through atomics.
unsafe impl Send for EventRing {}

impl EventRing {
    /// Maps ring buffer map `map`, whose size (`max_entries`, the data area's bytes) is
    /// `bytes`, a power of two and a multiple of the page size as the kernel requires.
    pub fn new(map: MapData, bytes: u32) -> io::Result<Self> {
        let bytes = bytes as usize;
        if !bytes.is_power_of_two() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::last_os_error())?;
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + bytes, libc::PROT_READ, page)?;
        let mut ring = Self {
            map,
            consumer,
            producer,
            page,
            mask: bytes - 1,
            pos: 0,
            producer_pos: 0,
            wrapped: Vec::new(),
        };
        ring.pos = ring.consumer_pos().load(Ordering::Acquire);
        ring.producer_pos = ring.producer_pos().load(Ordering::Acquire);
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the consumer page starts with the consumer position, an aligned usize the
        // kernel reads concurrently; the page lives as long as `self`.
        unsafe { self.consumer.base.cast::<AtomicUsize>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicUsize {
        // SAFETY: as for the consumer position, at the start of the producer page.
        unsafe { self.producer.base.cast::<AtomicUsize>().as_ref() }
    }

    /// The data area's byte at `offset` (below its size) on.
    fn data(&self, offset: usize) -> *const u8 {
        // SAFETY: within the producer mapping: its page, then the data area.
        unsafe { self.producer.base.as_ptr().add(self.page + offset) }
    }

    /// The next record, if one is complete; it is handed back to the kernel when dropped.
    pub fn next_record(&mut self) -> Option<Record<'_>> {
        loop {
            if self.pos == self.producer_pos {
                // The consumer position just stored must be visible before the producer's is
                // read: a submit without a wake-up flag reads ours after storing its own to
                // decide on a wake-up, and without a full fence each side could miss the
                // other's. (Ours all pass a flag, `submit_flags`: this keeps the reader right
                // should one not.)
                fence(Ordering::SeqCst);
                self.producer_pos = self.producer_pos().load(Ordering::Acquire);
                if self.pos == self.producer_pos {
                    return None;
                }
            }
            let offset = self.pos & self.mask;
            // SAFETY: headers are 8-byte aligned within the data area and never wrap (records
            // are padded to 8 and the area is a multiple of 8); the kernel writes it
            // concurrently, hence the atomic.
            let header = unsafe { &*self.data(offset).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if header & BUSY_BIT != 0 {
                // Reserved and still being written: records after it wait for it.
                return None;
            }
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
            let advance = (HEADER + len).next_multiple_of(8);
            let produced = self.producer_pos.wrapping_sub(self.pos);
            if advance > produced || advance > self.mask + 1 {
                // A length the kernel cannot have written: whatever stands here cannot be read
                // as records. An empty record (which no decoder takes: the caller says it
                // skips one) hands back everything produced so far, so that the reader neither
                // goes past the kernel nor reads on through old bytes as new.
                return Some(Record {
                    bytes: &[],
                    // SAFETY: as in `consumer_pos`.
                    consumer: unsafe { self.consumer.base.cast::<AtomicUsize>().as_ref() },
                    pos: &mut self.pos,
                    advance: produced,
                });
            }
            if header & DISCARD_BIT != 0 {
                self.pos += advance;
                self.consumer_pos().store(self.pos, Ordering::Release);
                continue;
            }
            let start = (offset + HEADER) & self.mask;
            let size = self.mask + 1;
            let bytes = if start + len <= size {
                // SAFETY: `len` bytes from `start` lie within the data area, written by the
                // kernel before it cleared the busy bit (the acquire load above).
                unsafe { std::slice::from_raw_parts(self.data(start), len) }
            } else {
                let first = size - start;
                self.wrapped.clear();
                // SAFETY: as above, the record's two parts: the end of the area, then its start.
                unsafe {
                    self.wrapped
                        .extend_from_slice(std::slice::from_raw_parts(self.data(start), first));
                    self.wrapped
                        .extend_from_slice(std::slice::from_raw_parts(self.data(0), len - first));
                }
                &self.wrapped[..]
            };
            return Some(Record {
                bytes,
                // SAFETY: as in `consumer_pos`; a separate borrow from `bytes`' (the page is
                // not part of `self`'s fields that `bytes` borrows).
                consumer: unsafe { self.consumer.base.cast::<AtomicUsize>().as_ref() },
                pos: &mut self.pos,
                advance,
            });
        }
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

/// One record of the ring, in place (or put together, if it wrapped).
pub struct Record<'a> {
    bytes: &'a [u8],
    consumer: &'a AtomicUsize,
    pos: &'a mut usize,
    advance: usize,
}

impl Deref for Record<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        // Done with it: the kernel may write over it.
        *self.pos += self.advance;
        self.consumer.store(*self.pos, Ordering::Release);
    }
}

/// A shared mapping of part of the map's fd, unmapped when dropped.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: a new shared mapping of the ring's pages; the kernel checks the offset,
        // length and protection against the ring's layout.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { base, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
