//! Where entries wait: per-thread shards, and the budget that enforces the queue limits.
//!
//! Why shards: one lock for every producer makes the lock holder's preemption everyone's tail
//! latency once producers outnumber cores. Each thread is pinned to one shard (round-robin at
//! its first enqueue), so its entries stay in its enqueue order, and producers rarely share a
//! lock. The worker swaps whole shard buffers out, so its critical section is O(1).
//!
//! Why a separate budget: the limits are global, but summing the shards on every enqueue would
//! touch every shard's cache line. The budget holds the total as two atomics that producers
//! reserve from before they append, and the worker releases when entries leave the queue.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::batch::Arena;

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

/// One shard: the records appended by the threads pinned to it.
#[derive(Default)]
pub(crate) struct Shard {
    pub(crate) arena: Arena,
    /// Entries ever accepted into this shard (part of `Stats::enqueued`).
    pub(crate) enqueued: u64,
}

/// The number of shards for this machine: a power of two, at least 4 per core, at most 64.
pub(crate) fn shard_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).next_power_of_two().clamp(8, 64)
}

thread_local! {
    /// This thread's shard number, assigned at its first enqueue (any dispatcher).
    static SHARD_HINT: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_HINT: AtomicUsize = AtomicUsize::new(0);

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

/// What a successful reservation saw before it: enough to tell who opened a window and who
/// crossed a batch limit.
#[derive(Clone, Copy)]
pub(crate) struct Reserved {
    pub(crate) prev_entries: usize,
    pub(crate) prev_bytes: usize,
}

/// Queued entries and bytes, reserved before an entry is appended and released when it leaves
/// the queue (taken for dispatch, evicted or abandoned). They are never below the true queue
/// contents, so the limits are never exceeded; `Stats` counts from the shards, not from here.
pub(crate) struct Budget {
    entries: AtomicUsize,
    bytes: AtomicUsize,
    max_entries: usize,
    max_bytes: usize,
    /// Bytes are counted only when a byte limit exists (queue or batch).
    track_bytes: bool,
}

impl Budget {
    pub(crate) fn new(max_entries: usize, max_bytes: usize, track_bytes: bool) -> Self {
        Budget {
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_entries,
            max_bytes,
            track_bytes,
        }
    }

    pub(crate) fn entries(&self) -> usize {
        self.entries.load(Ordering::SeqCst)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Reserves room for one entry of `charge` bytes, or returns `None` if a limit is reached.
    #[inline]
    ///
    /// Bytes are reserved first, so that the entry count only ever moves for reservations
    /// that succeed: the producer that takes it from 0 to 1 is the one whose entry really
    /// opens the window, and a crossing of `max_batch_entries` is never undone.
    pub(crate) fn reserve(&self, charge: usize) -> Option<Reserved> {
        let prev_bytes = if self.track_bytes {
            add_within(&self.bytes, charge, self.max_bytes)?
        } else {
            0
        };
        match add_within(&self.entries, 1, self.max_entries) {
            Some(prev_entries) => Some(Reserved {
                prev_entries,
                prev_bytes,
            }),
            None => {
                if self.track_bytes {
                    self.bytes.fetch_sub(charge, Ordering::SeqCst);
                }
                None
            }
        }
    }

    /// Gives back room; returns the entries still reserved.
    pub(crate) fn release(&self, entries: usize, bytes: usize) -> usize {
        if self.track_bytes {
            self.bytes.fetch_sub(bytes, Ordering::SeqCst);
        }
        self.entries.fetch_sub(entries, Ordering::SeqCst) - entries
    }

    /// How far the queue is over its limits if one more entry of `charge` bytes came in.
    pub(crate) fn excess(&self, charge: usize) -> (usize, usize) {
        let over = |now: usize, add: usize, max: usize| {
            if max == 0 {
                0
            } else {
                (now + add).saturating_sub(max)
            }
        };
        let bytes = if self.track_bytes {
            over(self.bytes(), charge, self.max_bytes)
        } else {
            0
        };
        (over(self.entries(), 1, self.max_entries), bytes)
    }
}

/// Adds `n` to `counter` unless that takes it above `max` (0 = no limit); returns the value
/// before. Exact: a reservation never fails because of a racing one that itself fails.
#[inline]
fn add_within(counter: &AtomicUsize, n: usize, max: usize) -> Option<usize> {
    if max == 0 {
        return Some(counter.fetch_add(n, Ordering::SeqCst));
    }
    let mut now = counter.load(Ordering::SeqCst);
    loop {
        if now + n > max {
            return None;
        }
        match counter.compare_exchange_weak(now, now + n, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(prev) => return Some(prev),
            Err(actual) => now = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_enforces_both_limits_and_undoes_a_partial_reservation() {
        let b = Budget::new(3, 10, true);
        assert_eq!(b.reserve(4).map(|r| r.prev_entries), Some(0));
        assert_eq!(b.reserve(4).map(|r| r.prev_bytes), Some(4));
        assert!(b.reserve(4).is_none(), "12 bytes > 10");
        assert_eq!(
            b.entries(),
            2,
            "a failed byte reservation never touches the entry count"
        );
        assert_eq!(b.excess(4), (0, 2));
        assert!(b.reserve(2).is_some());
        assert!(b.reserve(0).is_none(), "4 entries > 3");
        assert_eq!(
            b.bytes(),
            10,
            "a failed entry reservation gave its bytes back"
        );
        assert_eq!(b.release(1, 4), 2);
        assert_eq!((b.entries(), b.bytes()), (2, 6));
    }

    #[test]
    fn untracked_bytes_cost_nothing() {
        let b = Budget::new(0, 0, false);
        for _ in 0..1000 {
            b.reserve(usize::MAX / 2).unwrap();
        }
        assert_eq!((b.entries(), b.bytes()), (1000, 0));
    }

    #[test]
    fn shards_are_padded_and_a_power_of_two() {
        assert_eq!(std::mem::align_of::<CachePadded<Mutex<Shard>>>(), 128);
        let n = shard_count();
        assert!(n.is_power_of_two() && (8..=64).contains(&n));
        let a = shard_index(n - 1);
        assert_eq!(a, shard_index(n - 1), "a thread keeps its shard");
    }
}
