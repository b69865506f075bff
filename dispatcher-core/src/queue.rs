//! Where entries wait: per-thread shards, and the shared state producers touch as rarely as
//! possible.
//!
//! Why shards: one lock for every producer makes the lock holder's preemption everyone's tail
//! latency once producers outnumber cores. Each thread is pinned to one shard (round-robin at
//! its first enqueue), so its entries stay in its enqueue order, and producers rarely share a
//! lock. The worker swaps whole shard buffers out, so its critical section is O(1).
//!
//! Why nothing else is shared per entry: a write to a cache line that other cores also write
//! costs more than the whole enqueue. So an enqueue touches only its shard:
//! - the queue limits are *credit*: a [`Pool`] holds what no shard has leased, and a shard
//!   spends its [`Lease`] under its own lock, going back to the pool once per lease (a few
//!   percent of the limit), not once per entry;
//! - the window is stamped per shard, when an empty shard gets its first entry, and the worker
//!   is woken only if it sleeps with nothing queued (`Inner::idle`);
//! - with batch limits, a shard reports its count to an [`Approx`] total in chunks, so that a
//!   full batch is noticed without a shared write per entry.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::PoisonError;

use crate::batch::Arena;
use crate::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};

/// Pads and aligns to 128 bytes (two cache lines, for the adjacent-line prefetcher), so that
/// neighbouring shards never share a line.
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Locks, ignoring poison: every critical section here leaves its data consistent before any
/// call that could panic, and a poisoned lock must not turn one panic into a hung process.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One shard: its lock, and the stamp the worker reads without it.
#[derive(Default)]
pub(crate) struct ShardCell {
    pub(crate) shard: Mutex<Shard>,
    /// When this shard's oldest entry arrived (ns since the engine's epoch, plus 1), or 0 if
    /// it is empty. Written under the lock; read by the worker without it, to find the window.
    pub(crate) opened_at: AtomicU64,
    /// Bytes this shard's buffer held when the worker last collected it (worker only).
    pub(crate) last_used: AtomicUsize,
}

/// The records appended by the threads pinned to one shard.
#[derive(Default)]
pub(crate) struct Shard {
    pub(crate) arena: Arena,
    /// Entries ever accepted into this shard (part of `Stats::enqueued`).
    pub(crate) enqueued: u64,
    /// Credit this shard holds against the queue limits.
    pub(crate) lease: Lease,
    /// Entries and bytes appended but not yet reported to `Approx` (batch limits only).
    pub(crate) unreported: (usize, usize),
}

/// The number of shards for this machine: a power of two, at least 4 per core, at most 64.
#[cfg(not(loom))]
pub(crate) fn shard_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).next_power_of_two().clamp(8, 64)
}

/// In a model, two shards: enough for producers on different shards, and every shard is a
/// lock the checker must interleave.
#[cfg(loom)]
pub(crate) fn shard_count() -> usize {
    2
}

#[cfg(not(loom))]
thread_local! {
    /// This thread's shard number, assigned at its first enqueue (any dispatcher).
    static SHARD_HINT: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[cfg(not(loom))]
static NEXT_HINT: AtomicUsize = AtomicUsize::new(0);

// In a model, the same, but per run of the model (std's would carry over from one run to the
// next, and a model must replay exactly).
#[cfg(loom)]
loom::thread_local! {
    static SHARD_HINT: Cell<usize> = Cell::new(usize::MAX);
}

#[cfg(loom)]
loom::lazy_static! {
    static ref NEXT_HINT: AtomicUsize = AtomicUsize::new(0);
}

/// The calling thread's shard index for a dispatcher with `mask + 1` shards.
#[inline]
pub(crate) fn shard_index(mask: usize) -> usize {
    SHARD_HINT.with(|hint| {
        let mut h = hint.get();
        if h == usize::MAX {
            h = NEXT_HINT.fetch_add(1, Ordering::Relaxed);
            hint.set(h);
        }
        h & mask
    })
}

/// Credit a shard holds against the queue limits (meaningless for a limit that is 0).
#[derive(Default, Clone, Copy)]
pub(crate) struct Lease {
    pub(crate) entries: usize,
    pub(crate) bytes: usize,
}

/// The queue limits, as credit that shards lease and the worker gives back.
///
/// Invariant, for each limited dimension: `pool + unused leases + queued == limit`. So the
/// queue never exceeds a limit, and it is full exactly when the pool and every lease are spent
/// (which `Inner::steal_leases` checks before refusing anything).
pub(crate) struct Pool {
    entries: AtomicUsize,
    bytes: AtomicUsize,
    /// Bumped whenever entries leave the queue (the only event that frees credit).
    epoch: AtomicU64,
    /// The epoch at which taking every lease back last found too little room (`u64::MAX`:
    /// never): until the epoch moves, doing it again would find no more.
    fruitless: AtomicU64,
    max_entries: usize,
    max_bytes: usize,
    /// How much a shard leases at a time: a fraction of the limit, so that few trips to the
    /// pool are needed and little credit sits unused in idle shards.
    chunk_entries: usize,
    chunk_bytes: usize,
}

impl Pool {
    pub(crate) fn new(max_entries: usize, max_bytes: usize, shards: usize) -> Self {
        Pool {
            entries: AtomicUsize::new(max_entries),
            bytes: AtomicUsize::new(max_bytes),
            epoch: AtomicU64::new(0),
            fruitless: AtomicU64::new(u64::MAX),
            max_entries,
            max_bytes,
            chunk_entries: (max_entries / (4 * shards)).max(1),
            chunk_bytes: max_bytes / (4 * shards),
        }
    }

    /// Whether `lease` pays for one entry of `charge` bytes.
    #[inline]
    pub(crate) fn covers(&self, lease: &Lease, charge: usize) -> bool {
        (self.max_entries == 0 || lease.entries >= 1)
            && (self.max_bytes == 0 || lease.bytes >= charge)
    }

    /// Spends one entry of `charge` bytes from `lease` (which `covers` it).
    #[inline]
    pub(crate) fn spend(&self, lease: &mut Lease, charge: usize) {
        if self.max_entries != 0 {
            lease.entries -= 1;
        }
        if self.max_bytes != 0 {
            lease.bytes -= charge;
        }
    }

    /// Tops `lease` up from the pool so that it covers one entry of `charge` bytes, taking a
    /// chunk where it can; false (and nothing taken) if the pool cannot.
    pub(crate) fn refill(&self, lease: &mut Lease, charge: usize) -> bool {
        let need_entries = if self.max_entries != 0 && lease.entries == 0 {
            1
        } else {
            0
        };
        let need_bytes = if self.max_bytes != 0 {
            charge.saturating_sub(lease.bytes)
        } else {
            0
        };
        let Some(got_entries) = take(&self.entries, need_entries, self.chunk_entries) else {
            return false;
        };
        match take(&self.bytes, need_bytes, self.chunk_bytes.max(need_bytes)) {
            Some(got_bytes) => {
                lease.entries += got_entries;
                lease.bytes += got_bytes;
                true
            }
            None => {
                self.entries.fetch_add(got_entries, Ordering::SeqCst);
                false
            }
        }
    }

    /// Entries left the queue (taken for dispatch, evicted, abandoned): their room is free.
    pub(crate) fn freed(&self, entries: usize, bytes: usize) {
        self.give_back(entries, bytes);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// A shard's unused lease, taken back.
    pub(crate) fn return_lease(&self, lease: Lease) {
        self.give_back(lease.entries, lease.bytes);
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether taking every lease back already found too little room at `epoch`.
    pub(crate) fn fruitless_steal_at(&self, epoch: u64) -> bool {
        self.fruitless.load(Ordering::SeqCst) == epoch
    }

    pub(crate) fn steal_failed(&self, epoch: u64) {
        self.fruitless.store(epoch, Ordering::SeqCst);
    }

    fn give_back(&self, entries: usize, bytes: usize) {
        if self.max_entries != 0 && entries != 0 {
            self.entries.fetch_add(entries, Ordering::SeqCst);
        }
        if self.max_bytes != 0 && bytes != 0 {
            self.bytes.fetch_add(bytes, Ordering::SeqCst);
        }
    }

    /// What the pool lacks for one entry of `charge` bytes: `(entries, bytes)`.
    pub(crate) fn deficit(&self, charge: usize) -> (usize, usize) {
        let entries = if self.max_entries != 0 {
            1usize.saturating_sub(self.entries.load(Ordering::SeqCst))
        } else {
            0
        };
        let bytes = if self.max_bytes != 0 {
            charge.saturating_sub(self.bytes.load(Ordering::SeqCst))
        } else {
            0
        };
        (entries, bytes)
    }
}

/// Takes between `need` and `want` from `counter` (0 if `need` is 0 and it is empty); `None`
/// if it holds less than `need`.
fn take(counter: &AtomicUsize, need: usize, want: usize) -> Option<usize> {
    if need == 0 {
        return Some(0);
    }
    let mut now = counter.load(Ordering::SeqCst);
    loop {
        if now < need {
            return None;
        }
        let got = now.min(want.max(need));
        match counter.compare_exchange_weak(now, now - got, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Some(got),
            Err(actual) => now = actual,
        }
    }
}

/// Roughly how much is queued, for the size trigger: shards report in chunks, the worker
/// subtracts what it takes. Exact once every shard has reported; a shard reports early when
/// its report could complete a batch, so one producer's full batch is noticed at once.
pub(crate) struct Approx {
    pub(crate) entries: AtomicUsize,
    pub(crate) bytes: AtomicUsize,
    pub(crate) max_entries: usize,
    pub(crate) max_bytes: usize,
    chunk_entries: usize,
    chunk_bytes: usize,
    shards: usize,
}

impl Approx {
    pub(crate) fn new(max_batch_entries: usize, max_batch_bytes: usize, shards: usize) -> Self {
        Approx {
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_entries: max_batch_entries,
            max_bytes: max_batch_bytes,
            chunk_entries: (max_batch_entries / (2 * shards)).max(1),
            chunk_bytes: (max_batch_bytes / (2 * shards)).max(1),
            shards,
        }
    }

    /// Whether there are batch limits (else nothing is counted).
    pub(crate) fn active(&self) -> bool {
        self.max_entries != 0 || self.max_bytes != 0
    }

    /// Counts one entry appended to a shard; true if the queue now holds a full batch for the
    /// first time since it last did not (the caller wakes the worker).
    #[inline]
    pub(crate) fn appended(&self, unreported: &mut (usize, usize), charge: usize) -> bool {
        unreported.0 += 1;
        unreported.1 += charge;
        let (entries, bytes) = (
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        );
        // A chunk at a time; closer to a full batch, smaller reports (so that a batch spread
        // over every shard is noticed too), and at once when this one completes it. Once a
        // full batch is reported, chunks again: the worker is on it.
        let shards = self.shards;
        let due = |limit: usize, chunk: usize, mine: usize, total: usize| {
            limit != 0
                && if total >= limit {
                    mine >= chunk
                } else {
                    mine >= chunk.min(((limit - total) / shards).max(1)) || total + mine >= limit
                }
        };
        if !due(self.max_entries, self.chunk_entries, unreported.0, entries)
            && !due(self.max_bytes, self.chunk_bytes, unreported.1, bytes)
        {
            return false;
        }
        let (n, b) = std::mem::take(unreported);
        let before = (
            self.entries.fetch_add(n, Ordering::SeqCst),
            self.bytes.fetch_add(b, Ordering::SeqCst),
        );
        let crosses = |limit: usize, before: usize, add: usize| {
            limit != 0 && before < limit && before + add >= limit
        };
        crosses(self.max_entries, before.0, n) || crosses(self.max_bytes, before.1, b)
    }

    /// Whether a full batch is (roughly) queued.
    pub(crate) fn full(&self) -> bool {
        (self.max_entries != 0 && self.entries.load(Ordering::SeqCst) >= self.max_entries)
            || (self.max_bytes != 0 && self.bytes.load(Ordering::SeqCst) >= self.max_bytes)
    }

    /// The worker collected a shard with `unreported` not yet counted: count it now.
    pub(crate) fn add(&self, (entries, bytes): (usize, usize)) {
        if self.active() {
            self.entries.fetch_add(entries, Ordering::SeqCst);
            self.bytes.fetch_add(bytes, Ordering::SeqCst);
        }
    }

    /// Entries left the queue (taken, evicted, abandoned) after being counted.
    pub(crate) fn remove(&self, entries: usize, bytes: usize) {
        if self.active() {
            self.entries.fetch_sub(entries, Ordering::SeqCst);
            self.bytes.fetch_sub(bytes, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_leases_in_chunks_and_never_overcommits() {
        let pool = Pool::new(100, 1000, 8); // chunks: 3 entries, 31 bytes
        let mut lease = Lease::default();
        assert!(!pool.covers(&lease, 10));
        assert!(pool.refill(&mut lease, 10));
        assert_eq!((lease.entries, lease.bytes), (3, 31));
        pool.spend(&mut lease, 10);
        assert!(pool.covers(&lease, 21) && !pool.covers(&lease, 22));
        // A large entry takes what it needs, beyond the chunk.
        assert!(pool.refill(&mut lease, 500));
        assert_eq!(lease.bytes, 500);
        // Taking everything: the pool runs dry, then refuses without taking anything.
        let mut greedy = Lease::default();
        assert!(pool.refill(&mut greedy, 490));
        assert!(!pool.refill(&mut greedy, 1000));
        assert_eq!(pool.deficit(1), (0, 1));
        pool.freed(0, 5);
        assert_eq!(pool.deficit(1), (0, 0));
    }

    #[test]
    fn a_failed_refill_gives_its_entries_back() {
        let pool = Pool::new(10, 10, 8);
        let mut lease = Lease::default();
        assert!(!pool.refill(&mut lease, 11));
        assert_eq!(
            pool.deficit(0),
            (0, 0),
            "the entry credit taken for it came back"
        );
        assert_eq!((lease.entries, lease.bytes), (0, 0));
    }

    #[test]
    fn an_unlimited_pool_covers_everything_without_credit() {
        let pool = Pool::new(0, 0, 8);
        let lease = Lease::default();
        assert!(pool.covers(&lease, usize::MAX));
    }

    #[test]
    fn approx_reports_a_single_producers_full_batch_at_once() {
        let approx = Approx::new(1000, 0, 8); // chunk 62
        let mut mine = (0, 0);
        let crossings: Vec<usize> = (1..=1000)
            .filter(|_| approx.appended(&mut mine, 1))
            .collect();
        assert_eq!(
            crossings,
            vec![1000],
            "reported early when the report completes a batch"
        );
        assert!(approx.full());
        approx.remove(1000, 1000);
        assert!(!approx.full());
    }

    #[test]
    fn approx_notices_a_batch_spread_over_every_shard_and_then_reports_in_chunks() {
        let approx = Approx::new(1000, 0, 8); // chunk 62
        let mut shards = [(0, 0); 8];
        let mut crossed = 0;
        for _ in 0..125 {
            for mine in shards.iter_mut() {
                crossed += usize::from(approx.appended(mine, 1));
            }
        }
        assert_eq!(
            crossed, 1,
            "1000 entries over 8 shards make one full batch, noticed"
        );
        assert!(approx.full());
        // With a full batch reported, a shard reports again only after a chunk.
        let before = approx.entries.load(Ordering::SeqCst);
        for _ in 0..61 {
            approx.appended(&mut shards[0], 1);
        }
        assert_eq!(
            approx.entries.load(Ordering::SeqCst),
            before,
            "no shared write per entry"
        );
    }

    #[test]
    fn a_steal_is_skipped_until_something_leaves_the_queue() {
        let pool = Pool::new(10, 0, 8);
        let epoch = pool.epoch();
        assert!(!pool.fruitless_steal_at(epoch));
        pool.steal_failed(epoch);
        assert!(pool.fruitless_steal_at(pool.epoch()));
        pool.freed(1, 0);
        assert!(!pool.fruitless_steal_at(pool.epoch()));
    }

    #[test]
    fn shards_are_padded_and_a_power_of_two() {
        assert_eq!(std::mem::align_of::<CachePadded<ShardCell>>(), 128);
        let n = shard_count();
        assert!(n.is_power_of_two() && (8..=64).contains(&n));
        let a = shard_index(n - 1);
        assert_eq!(a, shard_index(n - 1), "a thread keeps its shard");
    }
}
