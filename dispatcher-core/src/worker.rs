//! The worker thread: decides when a batch is due, takes it, calls the dispatch function.
//!
//! When a batch is due:
//! - a *window* opens when an entry arrives in an empty queue and lasts `ms_delay`; when it
//!   ends, a *round* dispatches everything queued at that moment, in consecutive batches of at
//!   most the batch limits, back to back;
//! - starts are at least `ms_delay` apart, except that a full batch (the *size trigger*),
//!   `flush` and `shutdown` do not wait;
//! - a failed batch is retried, after its backoff, before anything newer (per-thread order).
//!
//! The worker sleeps in `park`, with a deadline only while something is queued. With nothing
//! queued it marks itself idle, and the producer of the next first entry unparks it; a
//! producer also unparks it when a batch fills up. Never once per entry.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Engine, Flight, Inner, InnerRef, State};
use crate::queue::lock;
use crate::sync::{Instant, Ordering, now, thread};
use crate::{DropReason, fork};

/// What the worker does next.
enum Step {
    Dispatch,
    /// Give up on the batch awaiting a retry (a shutdown deadline passed).
    GiveUp,
    Park(Option<Instant>),
    Exit,
}

pub(crate) fn run(engine: Arc<Engine>, inner: InnerRef) {
    // SAFETY: `inner` outlives `engine`, which this thread holds until the end.
    let inner = unsafe { &*inner.0 };
    precise_timers();
    let holder = Holder {
        engine: Some(engine),
        inner,
    };
    let exit = ExitGuard(inner);
    let engine = holder.engine.as_deref().unwrap_or_else(|| unreachable!());
    let mut worker = Worker {
        engine,
        inner,
        generation: fork::generation(),
        forked: false,
        flight: Flight::default(),
        last_start: None,
        round: None,
        round_took: false,
        rng: engine.stamp(now()) ^ (inner as *const Inner as u64) | 1,
    };
    while worker.step() {}
    if worker.forked {
        // This is a fork child's copy of the worker, back from a callback that forked: the
        // state belongs to the parent and its locks may be held by threads that do not exist
        // here. Touch nothing (`after_fork` accounts for this thread's reference); the
        // thread ends, and with it a child that has no other thread.
        std::mem::forget(exit);
        std::mem::forget(holder);
        return;
    }
    drop(exit);
    // The last reference may be this one (the handle was dropped from a callback or after a
    // shutdown deadline): then the engine, its state and the user's callbacks are freed here.
    drop(holder);
}

/// Asks the kernel not to defer this thread's timed wake-ups: by default it may add up to
/// 50 µs ("timer slack") to coalesce them, which would make every window that much late.
fn precise_timers() {
    #[cfg(all(target_os = "linux", not(loom)))]
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack (1 ns: the minimum).
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// The worker's reference to the engine, released (even on a panic) after telling a future
/// fork child that it is gone.
struct Holder<'a> {
    engine: Option<Arc<Engine>>,
    inner: &'a Inner,
}

impl Drop for Holder<'_> {
    fn drop(&mut self) {
        self.inner.worker_holds_arc.store(false, Ordering::SeqCst);
        drop(self.engine.take()); // may free `inner`: nothing touches it after this
    }
}

struct Worker<'a> {
    engine: &'a Engine,
    inner: &'a Inner,
    /// The process generation (fork.rs) this worker belongs to.
    generation: u64,
    /// A callback forked and this is the child's copy of the worker: stop at once.
    forked: bool,
    flight: Flight,
    last_start: Option<Instant>,
    /// While a round runs: the highest flush ticket it serves.
    round: Option<u64>,
    round_took: bool,
    rng: u64,
}

impl Worker<'_> {
    fn step(&mut self) -> bool {
        match self.plan() {
            Step::Dispatch => self.dispatch(),
            Step::GiveUp => self.fail(),
            Step::Park(deadline) => {
                match deadline {
                    None => thread::park(),
                    Some(at) => thread::park_timeout(at.saturating_duration_since(now())),
                }
                self.inner.wakeups.fetch_add(1, Ordering::Relaxed);
            }
            Step::Exit => return false,
        }
        !self.forked
    }

    /// Whether the callback that just returned forked this process and this is the child.
    fn forked_in_callback(&mut self) -> bool {
        self.forked = fork::generation() != self.generation;
        self.forked
    }

    fn plan(&mut self) -> Step {
        let now = now();
        let inner = self.inner;
        let mut st = lock(&inner.state);
        loop {
            if self.flight.count > 0 {
                if st.timed_out {
                    return Step::GiveUp;
                }
                let at = self.not_before(self.flight.retry_at.unwrap_or(now));
                return if now >= at {
                    Step::Dispatch
                } else {
                    Step::Park(Some(at))
                };
            }
            if self.round.is_none() {
                let flush_wanted = st.flush_requested > st.flush_done;
                let final_pass = st.closing && !st.drained_after_close;
                if flush_wanted || final_pass || self.window_end(&st).is_some_and(|end| now >= end)
                {
                    self.round = Some(st.flush_requested);
                    self.round_took = false;
                    // After this collection no entry can arrive (producers check `closed`
                    // under the shard locks this takes).
                    st.drained_after_close = st.closing;
                    inner.collect_shards(&mut st);
                } else if inner.approx.full() && !self.full_batch(&st) {
                    inner.collect_shards(&mut st);
                }
            }
            if self.full_batch(&st) || (self.round.is_some() && st.backlog_entries > 0) {
                self.take_batch(&mut st);
                return Step::Dispatch;
            }
            if let Some(ticket) = self.round.take() {
                st.flush_done = st.flush_done.max(ticket);
                inner.state_cv.notify_all();
                if self.round_took {
                    continue; // more may have arrived, or been asked for, meanwhile
                }
            }
            if st.drained_after_close {
                return Step::Exit; // closed, collected once more since, and all dispatched
            }
            if let Some(end) = self.window_end(&st) {
                return Step::Park(Some(end));
            }
            // Nothing queued: sleep without a deadline, until the producer of the next first
            // entry (or a flush or shutdown) unparks this thread.
            if inner.go_idle() {
                return Step::Park(None);
            }
        }
    }

    /// When the current window ends, if anything is queued: `ms_delay` after the oldest
    /// queued entry arrived, and not sooner than `ms_delay` after the previous start.
    fn window_end(&self, st: &State) -> Option<Instant> {
        let opened = self.inner.window_opened(st)?;
        Some(self.not_before(self.engine.instant(opened) + self.engine.ms_delay))
    }

    /// `at`, or later if the previous start was less than `ms_delay` before it.
    fn not_before(&self, at: Instant) -> Instant {
        match self.last_start {
            Some(last) => at.max(last + self.engine.ms_delay),
            None => at,
        }
    }

    /// A full batch is in the backlog.
    fn full_batch(&self, st: &State) -> bool {
        let o = &self.engine.options;
        (o.max_batch_entries != 0 && st.backlog_entries >= o.max_batch_entries)
            || (o.max_batch_bytes != 0 && st.backlog_bytes >= o.max_batch_bytes)
    }

    /// Moves the next batch from the front of the backlog into `flight`.
    fn take_batch(&mut self, st: &mut State) {
        let o = &self.engine.options;
        let limit = |max: usize, used: usize| if max == 0 { usize::MAX } else { max - used };
        let (mut entries, mut bytes) = (0, 0);
        while let Some(front) = st.backlog.front_mut() {
            let (room_entries, room_bytes) = (
                limit(o.max_batch_entries, entries),
                limit(o.max_batch_bytes, bytes),
            );
            if room_entries == 0 {
                break;
            }
            if front.entries() <= room_entries && front.bytes() <= room_bytes {
                // The whole buffer fits: move it, no copy.
                entries += front.entries();
                bytes += front.bytes();
                let whole = st.backlog.pop_front().unwrap_or_default();
                self.flight.segments.push(whole);
                continue;
            }
            let cut = front.prefix(room_entries, room_bytes);
            if cut.0 > 0 {
                let mut part =
                    crate::batch::Arena::with_buffer(st.spare_buffers.pop().unwrap_or_default());
                front.split_front(cut, &mut part);
                entries += cut.0;
                bytes += cut.1;
                self.flight.segments.push(part);
            }
            break;
        }
        st.backlog_entries -= entries;
        st.backlog_bytes -= bytes;
        st.in_flight = entries;
        self.flight.start(entries, bytes);
        self.inner.pool.freed(entries, bytes);
        self.inner.approx.remove(entries, bytes);
        self.round_took = true;
        self.inner.room_freed();
    }

    /// One attempt at the batch in flight, with no lock held.
    fn dispatch(&mut self) {
        self.flight.attempt += 1;
        let attempt = self.flight.attempt;
        self.last_start = Some(now());
        let ok = self.engine.call_dispatch(&self.flight.batch());
        if self.forked_in_callback() {
            return;
        }
        let mut st = lock(&self.inner.state);
        st.batches += 1;
        if attempt > 1 {
            st.retries += 1;
        }
        if ok {
            st.dispatched += self.flight.count as u64;
            self.finish(&mut st);
        } else if attempt < self.engine.options.max_attempts && !st.timed_out {
            self.flight.retry_at = Some(now() + self.backoff(attempt));
        } else {
            drop(st);
            self.fail();
        }
    }

    /// The batch in flight failed for good: hand it to `on_drop`, then count it.
    fn fail(&mut self) {
        self.engine
            .call_on_drop(&self.flight.batch(), DropReason::Failed);
        if self.forked_in_callback() {
            return;
        }
        let mut st = lock(&self.inner.state);
        st.failed += self.flight.count as u64;
        self.finish(&mut st);
    }

    fn finish(&mut self, st: &mut State) {
        st.in_flight = 0;
        let max_spares = self.inner.shards.len() + 2;
        let mut peak = st.buffer_peak;
        self.flight
            .clear(&mut st.spare_buffers, max_spares, &mut peak);
        st.buffer_peak = peak;
    }

    /// `retry_backoff * 2^(attempt - 1)`, capped, jittered into `[b / 2, b]`.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let o = &self.engine.options;
        let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
        let full = o
            .retry_backoff
            .saturating_mul(factor)
            .min(o.retry_backoff_max);
        // xorshift64*: plenty for jitter, and no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let unit =
            (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        full / 2 + (full / 2).mul_f64(unit)
    }
}

/// Marks the worker as gone, even if it panicked, so that no `flush` or `shutdown` waits on it.
struct ExitGuard<'a>(&'a Inner);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.worker_done = true;
        st.flush_done = st.flush_requested;
        self.0.finished.store(true, Ordering::Release);
        self.0.state_cv.notify_all();
    }
}
