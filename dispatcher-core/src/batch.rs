//! Entries as a dispatch function sees them, and the packed byte arena they live in meanwhile.
//!
//! Why an arena: `enqueue` copies an entry once, into a contiguous `Vec<u8>` owned by a shard, as
//! the record `[len: u32 LE][charge: u32 LE][bytes]`. There is no allocation and nothing to free
//! per entry, and a whole shard changes hands by swapping one `Vec` whose capacity is kept for the
//! next round. The callback then reads the entries in place.

use std::marker::PhantomData;
use std::ops::Range;

/// Bytes in front of every record: the entry's length and its charge, both `u32`.
pub(crate) const RECORD_HEADER: usize = 8;

/// Consumed bytes at the front of an arena below which `pop_front` never compacts it: moving
/// a few records costs more than the room it wins.
const COMPACT_AFTER: usize = 4096;

/// Resident bytes past the records of an evicted-from buffer below which
/// `release_unused_pages` keeps them: releasing costs a syscall, and the next appends fault
/// the pages back in.
const RELEASE_AFTER: usize = 256 << 10;

/// The largest entry (and the largest charge) a record can describe.
pub(crate) const MAX_ENTRY_LEN: usize = u32::MAX as usize;

/// One entry of a [`Batch`]: the bytes that were enqueued, borrowed for the duration of the call.
///
/// The layout is `#[repr(C)]` `{ const uint8_t *data; size_t len; }`, the C ABI's `bd_entry`, so
/// the C library hands the array to C without converting it. `data` has no alignment guarantee
/// and is not NUL-terminated; `len` may be 0.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    data: *const u8,
    len: usize,
    _batch: PhantomData<&'a [u8]>,
}

// SAFETY: an `Entry` is a shared borrow of bytes (`&'a [u8]`), which is `Send` and `Sync`.
unsafe impl Send for Entry<'_> {}
// SAFETY: as above.
unsafe impl Sync for Entry<'_> {}

impl<'a> Entry<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Entry {
            data: bytes.as_ptr(),
            len: bytes.len(),
            _batch: PhantomData,
        }
    }

    /// The entry's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        // SAFETY: `data` and `len` come from a `&'a [u8]` in `Entry::new`.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }

    /// The entry's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the entry is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("len", &self.len).finish()
    }
}

/// A group of entries handed to the dispatch function or to `on_drop`.
///
/// Everything it points to is valid only during the call; copy what you keep.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    entries: &'a [Entry<'a>],
    bytes: usize,
    attempt: u32,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(entries: &'a [Entry<'a>], bytes: usize, attempt: u32) -> Self {
        Batch {
            entries,
            bytes,
            attempt,
        }
    }

    /// The entries, in per-thread enqueue order.
    pub fn entries(&self) -> &'a [Entry<'a>] {
        self.entries
    }

    /// The entries' bytes, in per-thread enqueue order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        self.entries.iter().map(Entry::as_bytes)
    }

    /// The number of entries (never 0 for a dispatch).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch has no entries (never true for a dispatch).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes the entries count against the byte limits: the sum of their lengths, or of
    /// their charges when they were enqueued with [`crate::Dispatcher::enqueue_charged`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// 1 on the first call with these entries, 2 on the first retry, and so on; 0 in `on_drop`
    /// for entries that were never dispatched (evicted, or abandoned at a shutdown deadline).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// An emptied buffer kept for reuse, with its capacity and the extent of its resident pages.
#[derive(Default)]
pub(crate) struct Spare {
    pub(crate) buf: Vec<u8>,
    /// Bytes from the start of `buf` whose pages have been written (so are resident).
    pub(crate) touched: usize,
}

impl Spare {
    /// Makes room for at least `want` bytes with every page already written once, so that
    /// filling it costs no page fault: a fault per 4 KiB costs about 0.4 ns per byte, more
    /// than the enqueue itself, and is better paid by the worker than by a producer.
    pub(crate) fn ready_for(&mut self, want: usize) {
        const PAGE: usize = 4096;
        self.buf.clear();
        if self.buf.capacity() < want {
            self.buf.reserve(want);
        }
        let end = want.min(self.buf.capacity());
        if self.touched >= end {
            return;
        }
        let spare = self.buf.spare_capacity_mut();
        for i in (self.touched / PAGE * PAGE..end).step_by(PAGE) {
            // SAFETY: `i` is inside the spare capacity; a volatile write is not optimised away.
            unsafe { std::ptr::write_volatile(spare[i].as_mut_ptr(), 0) };
        }
        self.touched = end;
    }
}

/// Records packed back to back in one buffer, read from `head`.
///
/// Shards append at the back; the worker and evictions consume from the front. A buffer is
/// reset (keeping its capacity) once its last record is consumed, and compacted once consumed
/// records fill an eighth of it: a shard that `DropOldest` evicts from while it keeps
/// appending never empties (the dispatch may be stuck for good), and without compaction its
/// buffer would grow by every entry ever enqueued, not by what is queued.
#[derive(Default)]
pub(crate) struct Arena {
    buf: Vec<u8>,
    /// How far into `buf` its pages have been written at least once (so are resident): past
    /// this, a first write costs a page fault (see `Engine`'s `collect_shards`).
    touched: usize,
    /// Offset of the oldest record not yet consumed.
    head: usize,
    /// Records from `head` to the end.
    entries: usize,
    /// Sum of those records' charges.
    bytes: usize,
}

impl Arena {
    /// An empty arena that reuses `spare`'s capacity.
    pub(crate) fn with_buffer(spare: Spare) -> Self {
        let Spare { mut buf, touched } = spare;
        buf.clear();
        Arena {
            buf,
            touched,
            head: 0,
            entries: 0,
            bytes: 0,
        }
    }

    /// Gives the buffer back for reuse.
    pub(crate) fn into_buffer(self) -> Spare {
        Spare {
            touched: self.touched.max(self.buf.len()),
            buf: self.buf,
        }
    }

    /// Empties the buffer, keeping its capacity (and what it knows of its pages).
    fn reset(&mut self) {
        self.touched = self.touched.max(self.buf.len());
        self.buf.clear();
        self.head = 0;
    }

    pub(crate) fn entries(&self) -> usize {
        self.entries
    }

    /// Bytes in the buffer, consumed records included: what it had to hold.
    pub(crate) fn buffer_len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Appends one record. `data.len()` and `charge` are at most [`MAX_ENTRY_LEN`].
    #[inline]
    pub(crate) fn push(&mut self, data: &[u8], charge: usize) {
        debug_assert!(data.len() <= MAX_ENTRY_LEN && charge <= MAX_ENTRY_LEN);
        let header = (data.len() as u64) | ((charge as u64) << 32);
        let len = self.buf.len();
        self.buf.reserve(RECORD_HEADER + data.len());
        // SAFETY: `reserve` made room for the header and the data after `len`; both are
        // written before `set_len` makes them part of the vector.
        unsafe {
            let end = self.buf.as_mut_ptr().add(len);
            end.cast::<[u8; RECORD_HEADER]>()
                .write_unaligned(header.to_le_bytes());
            std::ptr::copy_nonoverlapping(data.as_ptr(), end.add(RECORD_HEADER), data.len());
            self.buf.set_len(len + RECORD_HEADER + data.len());
        }
        self.entries += 1;
        self.bytes += charge;
    }

    /// The record at `pos`: where its bytes are, and its charge.
    #[inline]
    fn record_at(&self, pos: usize) -> (Range<usize>, usize) {
        let mut header = [0u8; RECORD_HEADER];
        header.copy_from_slice(&self.buf[pos..pos + RECORD_HEADER]);
        let header = u64::from_le_bytes(header);
        let start = pos + RECORD_HEADER;
        (
            start..start + (header & 0xffff_ffff) as usize,
            (header >> 32) as usize,
        )
    }

    /// Moves the oldest record into `sink` (or discards it) and returns its charge.
    pub(crate) fn pop_front(&mut self, sink: Option<&mut Arena>) -> Option<usize> {
        if self.entries == 0 {
            return None;
        }
        let (range, charge) = self.record_at(self.head);
        if let Some(sink) = sink {
            sink.push(&self.buf[range.clone()], charge);
        }
        self.head = range.end;
        self.entries -= 1;
        self.bytes -= charge;
        if self.entries == 0 {
            self.reset();
            self.release_unused_pages(range.end - range.start + RECORD_HEADER);
        } else if self.head >= COMPACT_AFTER && self.head >= self.buf.len() / 8 {
            // Keeps the buffer within 8/7 of its records, at a constant cost: at most 7 bytes
            // moved per byte consumed.
            self.touched = self.touched.max(self.buf.len());
            self.buf.drain(..self.head);
            self.head = 0;
            self.release_unused_pages(range.end - range.start + RECORD_HEADER);
        }
        Some(charge)
    }

    /// Gives pages back to the kernel when the buffer was once much fuller than it is. Only
    /// evictions consume a shard's buffer in place, and the records they leave can sit in any
    /// shard: without this, a stuck queue under `DropOldest` would keep every shard's largest
    /// buffer resident as its entries moved between shards (the bounded-memory check of
    /// 8 MiB grew by up to 19 MiB; with it, by about 11). `popped` is the size of the record
    /// just consumed.
    ///
    /// What stays resident is what the buffer's next cycles write anyway: 1.5x its records
    /// (compaction keeps it within 8/7) plus room for two records like the last one (a queue
    /// of a few large entries empties and refills its buffer on every eviction). Releasing
    /// that would cost a fault per page on every cycle; past it, pages are only released in
    /// runs of `RELEASE_AFTER` or more, at most once per compaction or reset.
    fn release_unused_pages(&mut self, popped: usize) {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: sysconf has no preconditions.
            let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
                p if p > 0 => p as usize,
                _ => return,
            };
            let records = self.buf.len();
            let keep = records + records / 2 + 2 * popped;
            let base = self.buf.as_mut_ptr() as usize;
            // Whole pages only (madvise rounds a length up to a page: `to` must be a page
            // boundary inside the capacity, or it would reach the allocator's next chunk).
            let from = (base + keep).next_multiple_of(page);
            let to = (base + self.touched.min(self.buf.capacity())) / page * page;
            if to < from + RELEASE_AFTER {
                return;
            }
            // SAFETY: `from..to` is whole pages inside `buf`'s spare capacity, past every
            // record: nothing points there and nothing reads it before writing it (the kernel
            // gives zeroed pages back on the next write). The allocator's own headers lie
            // outside the capacity.
            let released =
                unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
            if released == 0 {
                self.touched = from - base;
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = popped;
    }

    /// How many records from the front fit in `max_entries` and `max_bytes` (`usize::MAX`
    /// for no limit): `(entries, bytes, end offset)`.
    pub(crate) fn prefix(&self, max_entries: usize, max_bytes: usize) -> (usize, usize, usize) {
        let (mut entries, mut bytes, mut pos) = (0, 0, self.head);
        while entries < self.entries && entries < max_entries {
            let (range, charge) = self.record_at(pos);
            if bytes + charge > max_bytes {
                break;
            }
            entries += 1;
            bytes += charge;
            pos = range.end;
        }
        (entries, bytes, pos)
    }

    /// Moves the first `entries` records (found by [`Arena::prefix`]) into `into` with one copy.
    pub(crate) fn split_front(
        &mut self,
        (entries, bytes, end): (usize, usize, usize),
        into: &mut Arena,
    ) {
        into.buf.extend_from_slice(&self.buf[self.head..end]);
        into.entries += entries;
        into.bytes += bytes;
        self.head = end;
        self.entries -= entries;
        self.bytes -= bytes;
        if self.entries == 0 {
            self.reset();
        }
    }

    /// Appends an [`Entry`] for every record to `out`.
    ///
    /// The entries borrow this arena's buffer: they stay valid while the arena is neither
    /// changed nor dropped, even if the `Arena` value itself moves.
    pub(crate) fn entries_into(&self, out: &mut Vec<Entry<'static>>) {
        let mut pos = self.head;
        for _ in 0..self.entries {
            let (range, _) = self.record_at(pos);
            // SAFETY: only the lifetime is extended. The caller keeps this arena alive and
            // unchanged while it uses `out` (`Flight` and `Dropped` in engine.rs).
            let bytes =
                unsafe { std::mem::transmute::<&[u8], &'static [u8]>(&self.buf[range.clone()]) };
            out.push(Entry::new(bytes));
            pos = range.end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(arena: &Arena) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        arena.entries_into(&mut out);
        out.iter().map(|e| e.as_bytes().to_vec()).collect()
    }

    #[test]
    fn push_pop_and_split_keep_order_and_counts() {
        let mut a = Arena::default();
        for i in 0..10u8 {
            a.push(&vec![i; i as usize], i as usize);
        }
        assert_eq!((a.entries(), a.bytes()), (10, 45));
        let mut sink = Arena::default();
        assert_eq!(a.pop_front(Some(&mut sink)), Some(0));
        assert_eq!(a.pop_front(None), Some(1));
        assert_eq!(collect(&sink), vec![Vec::<u8>::new()]);

        // Limits: 3 entries, or 2+3+4 = 9 bytes.
        let cut = a.prefix(3, usize::MAX);
        assert_eq!((cut.0, cut.1), (3, 9));
        assert_eq!(a.prefix(usize::MAX, 0).0, 0, "a byte limit of 0 is a limit");
        let cut = a.prefix(usize::MAX, 8);
        assert_eq!((cut.0, cut.1), (2, 5));
        let mut front = Arena::default();
        a.split_front(cut, &mut front);
        assert_eq!(collect(&front), vec![vec![2; 2], vec![3; 3]]);
        assert_eq!((a.entries(), a.bytes()), (6, 4 + 5 + 6 + 7 + 8 + 9));
        while a.pop_front(None).is_some() {}
        assert!(a.is_empty());
        assert_eq!(a.buf.len(), 0, "an emptied arena resets its buffer");
    }

    #[test]
    fn an_arena_popped_while_appended_to_stays_near_the_size_of_its_records() {
        // DropOldest under a stuck dispatch: a shard never empties, one record out for each
        // one in. Its buffer must track what it holds, not everything that passed through.
        let mut a = Arena::default();
        let record = RECORD_HEADER + 1000;
        for i in 0..100u32 {
            a.push(&[i as u8; 1000], 1000);
        }
        for i in 100..100_000u32 {
            a.push(&[i as u8; 1000], 1000);
            assert_eq!(a.pop_front(None), Some(1000));
            assert!(
                a.buf.len() <= 100 * record * 8 / 7 + COMPACT_AFTER + record,
                "buffer of {} bytes for 100 records",
                a.buf.len()
            );
        }
        assert_eq!(a.entries(), 100);
        let kept = collect(&a);
        assert_eq!(kept.len(), 100);
        assert!(
            kept.iter()
                .zip(99_900u32..)
                .all(|(e, i)| e.len() == 1000 && e.iter().all(|&b| b == i as u8)),
            "compaction kept the newest records, in order"
        );
    }

    #[test]
    fn an_arena_emptied_by_evictions_gives_its_pages_back() {
        // A shard that once held 4 MiB, then lost all but ten records to evictions: what it
        // keeps resident must follow what it holds, not what it once held.
        let mut a = Arena::default();
        for i in 0..4000u32 {
            a.push(&[i as u8; 1000], 1000);
        }
        while a.entries() > 10 {
            a.pop_front(None);
        }
        assert!(
            a.touched < RELEASE_AFTER + 64 * 1024,
            "{} bytes still counted resident for {} bytes of records",
            a.touched,
            a.buf.len()
        );
        // The records left are intact, and the buffer takes new ones.
        a.push(&[7; 1000], 1000);
        let kept = collect(&a);
        assert_eq!(kept.len(), 11);
        assert!(
            kept[..10]
                .iter()
                .zip(3990u32..)
                .all(|(e, i)| e.iter().all(|&b| b == i as u8))
        );
        assert!(kept[10].iter().all(|&b| b == 7));
    }

    #[test]
    fn charge_is_independent_of_length() {
        let mut a = Arena::default();
        a.push(b"12345678", 3);
        assert_eq!((a.entries(), a.bytes()), (1, 3));
        assert_eq!(collect(&a), vec![b"12345678".to_vec()]);
        assert_eq!(a.pop_front(None), Some(3));
    }
}
