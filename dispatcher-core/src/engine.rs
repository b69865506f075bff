//! The state shared by producers, the worker and the callers of `flush`/`shutdown`, and every
//! operation on it except the worker loop (worker.rs).
//!
//! Locks and what they guard (always taken in this order, never held during a callback):
//! 1. `Inner::state`: the backlog (shards already collected by the worker), the in-flight
//!    count, the outcome counters and the flush/shutdown requests;
//! 2. one shard at a time, in index order: the entries appended since the last collection,
//!    and the shard's lease of credit against the queue limits (queue.rs);
//! 3. `Inner::space`: only to sleep and wake [`Overflow::Block`] producers.
//!
//! Every move of an entry between counters happens under the locks of both sides, so a stats
//! snapshot taken under all of them satisfies
//! `enqueued == dispatched + failed + evicted + abandoned + queued + in_flight`.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

use crate::batch::{Arena, Batch, Entry, MAX_ENTRY_LEN, Spare};
use crate::error::{BuildError, EnqueueError, FlushError, ShutdownError};
use crate::options::{Options, Overflow};
use crate::queue::{Approx, CachePadded, Pool, ShardCell, lock, shard_count, shard_index};
use crate::sync::thread::{self, JoinHandle, Thread};
use crate::sync::{
    AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Condvar, Instant, Mutex, MutexGuard, OnceLock,
    Ordering, now,
};
use crate::{DispatchResult, DropReason, Stats, fork, worker};

/// The dispatch function, type-erased.
pub(crate) type DispatchFn = Box<dyn FnMut(&Batch<'_>) -> DispatchResult + Send>;
/// The `on_drop` function, type-erased. Runs on whichever thread drops entries.
pub(crate) type DropFn = Box<dyn Fn(&Batch<'_>, DropReason) + Send + Sync>;

/// Set in `Engine::generation` (with the generation being built) while one thread rebuilds
/// the state in a fork child. Tagged, so that a grandchild forked in the middle of it, which
/// inherits the mark but not the thread, can take over.
const RESETTING: u64 = 1 << 63;

/// Everything about one dispatcher. Shared by the handle and the worker thread (`Arc`).
pub(crate) struct Engine {
    pub(crate) ms_delay: Duration,
    pub(crate) options: Options,
    max_entry_charge: usize,
    /// Called only by the worker thread. Not in a `Mutex`: a fork child must be able to call
    /// it even if the parent's worker was inside it at the fork.
    dispatch: UnsafeCell<DispatchFn>,
    on_drop: Option<DropFn>,
    /// Threads on which an `Overflow::Block` enqueue never waits (besides the worker).
    never_block_on: Vec<ThreadId>,
    /// Time origin of the `u64` timestamps in `Inner` (0 there means "never").
    pub(crate) epoch: Instant,
    shard_mask: usize,
    /// The process generation (fork.rs) that `inner` belongs to.
    generation: AtomicU64,
    /// The per-process state. Replaced, and the old one leaked, only in a fork child; freed
    /// when the engine drops. So a reference obtained through `inner()` lives as long as the
    /// engine.
    inner: AtomicPtr<Inner>,
}

// SAFETY: every field is `Sync` except `dispatch`, which only the single worker thread of the
// current process ever touches (the thread that `Inner::worker` names; a fork child has none
// of its parent's threads).
unsafe impl Sync for Engine {}

/// The state of one dispatcher in one process.
pub(crate) struct Inner {
    pub(crate) shards: Box<[CachePadded<ShardCell>]>,
    /// Credit against the queue limits that no shard holds.
    pub(crate) pool: Pool,
    /// Roughly how much is queued, for the size trigger (only with batch limits).
    pub(crate) approx: Approx,
    /// Set by the worker when it sleeps with nothing queued; the producer that appends the
    /// first entry clears it and wakes the worker. Read by producers only on a shard's first
    /// entry, so it is almost never written: no shared write per entry.
    pub(crate) idle: CachePadded<AtomicBool>,
    /// Set once by `shutdown` (or drop); later enqueues get `Closed`.
    pub(crate) closed: AtomicBool,
    /// The worker has exited (`State::worker_done`, readable without the lock).
    pub(crate) finished: AtomicBool,
    pub(crate) rejected: AtomicU64,
    pub(crate) state: Mutex<State>,
    /// Signalled when a round ends (flush), when the worker exits (shutdown).
    pub(crate) state_cv: Condvar,
    space: Mutex<()>,
    space_cv: Condvar,
    /// Block-policy producers asleep on `space_cv`; the worker signals only when there are.
    space_waiters: AtomicUsize,
    /// The worker thread, once started.
    worker: OnceLock<Thread>,
    /// The worker holds an `Arc<Engine>`: cleared just before it drops it. Read in a fork
    /// child, where that thread is gone (see `Engine::after_fork`).
    pub(crate) worker_holds_arc: AtomicBool,
    join: Mutex<Option<JoinHandle<()>>>,
    /// How often the worker woke up (tests check that an idle worker sleeps).
    pub(crate) wakeups: AtomicU64,
}

/// Guarded by `Inner::state`.
pub(crate) struct State {
    /// Shard buffers collected by the worker, oldest first, not yet dispatched.
    pub(crate) backlog: VecDeque<Arena>,
    pub(crate) backlog_entries: usize,
    pub(crate) backlog_bytes: usize,
    /// Entries of the batch being dispatched or waiting for its retry.
    pub(crate) in_flight: usize,
    /// When the oldest backlog entry arrived (an `Inner` timestamp), if there is one.
    pub(crate) backlog_opened: u64,
    /// Emptied buffers, capacity kept, for the shards to fill next.
    pub(crate) spare_buffers: Vec<Spare>,
    /// The largest buffer recent batches needed, decaying (see `Flight::clear`).
    pub(crate) buffer_peak: usize,
    pub(crate) dispatched: u64,
    pub(crate) failed: u64,
    pub(crate) evicted: u64,
    pub(crate) abandoned: u64,
    pub(crate) batches: u64,
    pub(crate) retries: u64,
    /// Flush tickets handed out, and the highest one whose round has finished.
    pub(crate) flush_requested: u64,
    pub(crate) flush_done: u64,
    pub(crate) closing: bool,
    /// The worker collected every shard after `closing` was set: nothing more can arrive.
    pub(crate) drained_after_close: bool,
    /// A shutdown deadline passed: no more retries, and dropping the handle does not wait.
    pub(crate) timed_out: bool,
    /// `Dispatcher::detach` was called: dropping the handle does not wait.
    pub(crate) detached: bool,
    pub(crate) worker_done: bool,
}

/// Entries removed from the queue for `on_drop`, owned by the thread that removed them.
pub(crate) struct Dropped {
    arenas: Vec<Arena>,
    entries: usize,
    bytes: usize,
}

impl Dropped {
    fn new() -> Self {
        Dropped {
            arenas: Vec::new(),
            entries: 0,
            bytes: 0,
        }
    }

    fn add(&mut self, arena: Arena) {
        self.entries += arena.entries();
        self.bytes += arena.bytes();
        self.arenas.push(arena);
    }

    /// Hands the entries to `on_drop` (if any) on this thread; no lock is held.
    fn deliver(self, engine: &Engine, reason: DropReason) {
        if self.entries == 0 || engine.on_drop.is_none() {
            return;
        }
        let mut entries = Vec::with_capacity(self.entries);
        for arena in &self.arenas {
            arena.entries_into(&mut entries);
        }
        // `entries` borrows `self.arenas`, which live until the end of this function.
        engine.call_on_drop(&Batch::new(&entries, self.bytes, 0), reason);
    }
}

/// A `&Inner` that the worker thread may carry; see `Engine::inner` for its lifetime.
pub(crate) struct InnerRef(pub(crate) *const Inner);

// SAFETY: `Inner` is `Sync`; the pointer stays valid while the worker holds its `Arc<Engine>`.
unsafe impl Send for InnerRef {}

impl Engine {
    pub(crate) fn new(
        ms_delay: Duration,
        options: Options,
        dispatch: DispatchFn,
        on_drop: Option<DropFn>,
        never_block_on: Vec<ThreadId>,
    ) -> Result<Arc<Engine>, BuildError> {
        options.validate(ms_delay)?;
        fork::init();
        let shards = shard_count();
        let engine = Arc::new(Engine {
            ms_delay,
            max_entry_charge: options.max_entry_charge(),
            dispatch: UnsafeCell::new(dispatch),
            on_drop,
            never_block_on,
            epoch: now(),
            shard_mask: shards - 1,
            generation: AtomicU64::new(fork::generation()),
            inner: AtomicPtr::new(std::ptr::null_mut()),
            options,
        });
        let inner = Box::into_raw(Box::new(Inner::new(&engine, shards, false)));
        engine.inner.store(inner, Ordering::Release);
        engine
            .spawn_worker(engine.inner())
            .map_err(BuildError::ThreadSpawn)?;
        Ok(engine)
    }

    /// This process's state, rebuilt first if this is a fork child that has not noticed yet.
    #[inline]
    pub(crate) fn inner(&self) -> &Inner {
        self.inner_at().0
    }

    /// `inner()`, and the process generation it belongs to.
    #[inline]
    fn inner_at(&self) -> (&Inner, u64) {
        let generation = fork::generation();
        if self.generation.load(Ordering::Acquire) != generation {
            self.after_fork(generation);
        }
        // SAFETY: see the `inner` field: never freed while `self` lives.
        (unsafe { &*self.inner.load(Ordering::Acquire) }, generation)
    }

    /// Gives a fork child an empty dispatcher of its own. The inherited state is leaked: its
    /// entries are the parent's to deliver, and its locks may be held by threads that do not
    /// exist here. The worker starts at the child's first enqueue.
    #[cold]
    fn after_fork(&self, generation: u64) {
        loop {
            let seen = self.generation.load(Ordering::Acquire);
            if seen == generation {
                return;
            }
            if seen == RESETTING | generation
                || self
                    .generation
                    .compare_exchange(
                        seen,
                        RESETTING | generation,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_err()
            {
                thread::yield_now(); // another thread of this process is rebuilding
                continue;
            }
            // SAFETY: as in `inner`; only read, never locked.
            let old = unsafe { &*self.inner.load(Ordering::Acquire) };
            let closed = old.closed.load(Ordering::SeqCst);
            if old.worker_holds_arc.load(Ordering::SeqCst) {
                // The parent's worker held a reference to this engine; that thread does not
                // exist here, so its reference would keep the engine (and the user's
                // callbacks, never freed) alive forever. Every caller of `inner()` holds
                // another reference, so this never reaches zero.
                // SAFETY: `self` lives in an `Arc` (`Engine::new`), whose count includes it.
                unsafe { Arc::decrement_strong_count(self as *const Engine) };
            }
            let fresh = Box::into_raw(Box::new(Inner::new(self, self.shard_mask + 1, closed)));
            self.inner.store(fresh, Ordering::Release);
            self.generation.store(generation, Ordering::Release);
            return;
        }
    }

    fn spawn_worker(self: &Arc<Self>, inner: &Inner) -> std::io::Result<()> {
        let mut join = lock(&inner.join);
        if inner.worker.get().is_some() {
            return Ok(());
        }
        let engine = Arc::clone(self);
        inner.worker_holds_arc.store(true, Ordering::SeqCst);
        let inner_ref = InnerRef(inner);
        let handle = thread::Builder::new()
            .name("bd-dispatcher".into())
            .spawn(move || worker::run(engine, inner_ref))?;
        let _ = inner.worker.set(handle.thread().clone());
        *join = Some(handle);
        Ok(())
    }

    /// A timestamp for `Inner`'s `u64` fields.
    pub(crate) fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    pub(crate) fn instant(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_nanos(stamp - 1)
    }

    /// Calls the dispatch function; a panic counts as a failure.
    pub(crate) fn call_dispatch(&self, batch: &Batch<'_>) -> bool {
        // SAFETY: only the worker thread calls this (see the `dispatch` field).
        let dispatch = unsafe { &mut *self.dispatch.get() };
        matches!(
            catch_unwind(AssertUnwindSafe(|| dispatch(batch))),
            Ok(Ok(()))
        )
    }

    /// Calls `on_drop`, if any; a panic in it is contained.
    pub(crate) fn call_on_drop(&self, batch: &Batch<'_>, reason: DropReason) {
        if let Some(on_drop) = &self.on_drop {
            let _ = catch_unwind(AssertUnwindSafe(|| on_drop(batch, reason)));
        }
    }

    /// Enqueues `data`, charged `charge` bytes. `may_wait` says whether a full queue under
    /// [`Overflow::Block`] may wait; if not, the result is `WouldBlock`, which is not a
    /// rejection (nothing is counted: the caller is expected to try again, waiting).
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        data: &[u8],
        charge: usize,
        may_wait: bool,
    ) -> Result<(), EnqueueError> {
        let mut wait = None;
        loop {
            let (inner, generation) = self.inner_at();
            match self.enqueue_in(inner, generation, data, charge, may_wait, &mut wait) {
                Ok(()) => return Ok(()),
                Err(Stop::Refused(EnqueueError::WouldBlock)) => {
                    return Err(EnqueueError::WouldBlock);
                }
                Err(Stop::Refused(err)) => {
                    inner.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(err);
                }
                // `on_drop` forked while room was made, and this is the child: the child's
                // own state is empty, try there.
                Err(Stop::Forked) => continue,
            }
        }
    }

    /// The hot path: one shard lock, no shared write in steady state (queue.rs says why).
    #[inline]
    fn enqueue_in(
        self: &Arc<Self>,
        inner: &Inner,
        generation: u64,
        data: &[u8],
        charge: usize,
        may_wait: bool,
        wait: &mut Option<Option<Instant>>,
    ) -> Result<(), Stop> {
        if charge > self.max_entry_charge || data.len() > MAX_ENTRY_LEN {
            return Err(EnqueueError::TooLarge.into());
        }
        if inner.worker.get().is_none() {
            self.spawn_worker(inner)
                .map_err(|_| EnqueueError::ThreadSpawn)?;
        }
        let cell = &inner.shards[shard_index(self.shard_mask)];
        let mut shard = lock(&cell.shard);
        loop {
            // Checked under the shard lock: after `closed` is set, the worker collects every
            // shard once more, so an entry appended before that is delivered, and any later
            // one sees the flag (the lock orders the two).
            if inner.closed.load(Ordering::Relaxed) {
                return Err(EnqueueError::Closed.into());
            }
            if inner.pool.covers(&shard.lease, charge)
                || inner.pool.refill(&mut shard.lease, charge)
            {
                break;
            }
            drop(shard);
            self.make_room(inner, charge, may_wait, wait)?;
            if fork::generation() != generation {
                return Err(Stop::Forked);
            }
            shard = lock(&cell.shard);
        }
        inner.pool.spend(&mut shard.lease, charge);
        let mut wake = false;
        if shard.arena.is_empty() {
            // The shard's first entry since the worker last collected it: it may open a window
            // (the oldest shard stamp does), and it wakes the worker if the worker sleeps
            // with nothing queued. Once per window, not per entry.
            cell.opened_at.store(self.stamp(now()), Ordering::Release);
            wake = inner.idle.load(Ordering::Relaxed) && inner.idle.swap(false, Ordering::AcqRel);
        }
        shard.arena.push(data, charge);
        shard.enqueued += 1;
        if inner.approx.active() {
            wake |= inner.approx.appended(&mut shard.unreported, charge);
        }
        drop(shard);
        if wake {
            inner.wake_worker();
        }
        Ok(())
    }

    /// The queue refused an entry: take back unused credit, then apply the overflow policy.
    /// `Ok` means "try again".
    #[cold]
    fn make_room(
        &self,
        inner: &Inner,
        charge: usize,
        may_wait: bool,
        wait: &mut Option<Option<Instant>>,
    ) -> Result<(), EnqueueError> {
        if inner.steal_leases(charge) {
            return Ok(());
        }
        match self.options.overflow {
            Overflow::DropNewest => Err(EnqueueError::QueueFull),
            Overflow::DropOldest => {
                // Evicting for an entry that closing will refuse would lose deliverable ones.
                if inner.closed.load(Ordering::SeqCst) {
                    return Err(EnqueueError::Closed);
                }
                let (dropped, evicted) = inner.evict(self, charge);
                if evicted == 0 && inner.closed.load(Ordering::SeqCst) {
                    return Err(EnqueueError::Closed);
                }
                if evicted == 0 {
                    // What there was to evict is in flight, and the room went to another
                    // producer: let it run.
                    thread::yield_now();
                }
                dropped.deliver(self, DropReason::Evicted);
                Ok(())
            }
            Overflow::Block if !may_wait => Err(EnqueueError::WouldBlock),
            Overflow::Block => {
                let deadline =
                    *wait.get_or_insert_with(|| deadline_after(Some(self.options.block_timeout)));
                self.wait_for_room(inner, charge, deadline)
            }
        }
    }

    fn wait_for_room(
        &self,
        inner: &Inner,
        charge: usize,
        deadline: Option<Instant>,
    ) -> Result<(), EnqueueError> {
        // `never_block_on` holds the public (std) thread ids, under loom too.
        let me = std::thread::current().id();
        if inner.on_worker_thread() || self.never_block_on.contains(&me) {
            // The worker frees room; waiting for it from its own thread would wait forever
            // (and on a thread the dispatch depends on, such as an event loop, for long).
            return Err(EnqueueError::QueueFull);
        }
        loop {
            // Room may sit unused in other shards' leases (given back to the pool and leased
            // again while this thread slept): take it back at every turn.
            if inner.steal_leases(charge) {
                return Ok(());
            }
            if inner.closed.load(Ordering::SeqCst) {
                return Err(EnqueueError::Closed);
            }
            let now = now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(EnqueueError::QueueFull);
            }
            // Registered as a waiter before the last check under `space`, so that room given
            // back after it finds the waiter and signals. Wakes at least every 100 ms anyway.
            let guard = lock(&inner.space);
            inner.space_waiters.fetch_add(1, Ordering::SeqCst);
            if inner.pool.deficit(charge) != (0, 0) && !inner.closed.load(Ordering::SeqCst) {
                let wait = deadline.map_or(Duration::from_millis(100), |d| {
                    (d - now).min(Duration::from_millis(100))
                });
                drop(inner.space_cv.wait_timeout(guard, wait));
            }
            inner.space_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn flush(&self, timeout: Option<Duration>) -> Result<(), FlushError> {
        let ticket = self.request_flush()?;
        self.wait_flush(ticket, timeout)
    }

    /// Asks the worker for a round covering everything accepted so far; the ticket to wait
    /// on (0: nothing to wait for).
    pub(crate) fn request_flush(&self) -> Result<u64, FlushError> {
        let inner = self.inner();
        if inner.on_worker_thread() {
            return Err(FlushError::Reentrant);
        }
        let mut st = lock(&inner.state);
        if inner.worker.get().is_none() || st.worker_done || inner.is_empty(&st) {
            return Ok(0); // nothing accepted is still queued or in flight
        }
        st.flush_requested += 1;
        inner.wake_worker();
        Ok(st.flush_requested)
    }

    /// Waits until the round of `ticket` is done.
    pub(crate) fn wait_flush(
        &self,
        ticket: u64,
        timeout: Option<Duration>,
    ) -> Result<(), FlushError> {
        let inner = self.inner();
        if inner.on_worker_thread() {
            return Err(FlushError::Reentrant);
        }
        let deadline = deadline_after(timeout);
        let st = lock(&inner.state);
        wait_until(&inner.state_cv, st, deadline, |st| {
            st.flush_done >= ticket || st.worker_done
        })
        .map(drop)
        .map_err(|_| FlushError::Timeout)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner().closed.load(Ordering::Acquire)
    }

    /// Whether the dispatcher is shut down and its worker has finished (or never started).
    pub(crate) fn is_finished(&self) -> bool {
        let inner = self.inner();
        inner.finished.load(Ordering::Acquire)
            || (inner.closed.load(Ordering::Acquire) && inner.worker.get().is_none())
    }

    pub(crate) fn shutdown(&self, timeout: Option<Duration>) -> Result<(), ShutdownError> {
        self.begin_shutdown()?;
        match self.wait_shutdown(timeout) {
            Err(ShutdownError::Timeout) => {}
            done => return done,
        }
        let inner = self.inner();
        let mut st = lock(&inner.state);
        if st.worker_done {
            return Ok(()); // finished between the deadline and this lock
        }
        let dropped = inner.abandon(&mut st);
        st.timed_out = true;
        drop(st);
        inner.wake_worker(); // a retry waiting for its backoff gives up now
        dropped.deliver(self, DropReason::ShutdownTimeout);
        Err(ShutdownError::Timeout)
    }

    /// Stops accepting entries; the worker drains the queue in the background.
    pub(crate) fn begin_shutdown(&self) -> Result<(), ShutdownError> {
        let inner = self.inner();
        if inner.on_worker_thread() {
            return Err(ShutdownError::Reentrant);
        }
        inner.close(&mut lock(&inner.state));
        Ok(())
    }

    /// Waits for the shutdown (begun here if need be) to finish, abandoning nothing at the
    /// deadline.
    pub(crate) fn wait_shutdown(&self, timeout: Option<Duration>) -> Result<(), ShutdownError> {
        let inner = self.inner();
        if inner.on_worker_thread() {
            return Err(ShutdownError::Reentrant);
        }
        let deadline = deadline_after(timeout);
        let mut st = lock(&inner.state);
        inner.close(&mut st);
        if inner.worker.get().is_none() {
            return Ok(()); // never started: nothing was accepted
        }
        wait_until(&inner.state_cv, st, deadline, |st| st.worker_done)
            .map(drop)
            .map_err(|_| ShutdownError::Timeout)
    }

    pub(crate) fn stats(&self) -> Stats {
        let inner = self.inner();
        let st = lock(&inner.state);
        let mut stats = Stats {
            rejected: inner.rejected.load(Ordering::Relaxed),
            dispatched: st.dispatched,
            failed: st.failed,
            evicted: st.evicted,
            abandoned: st.abandoned,
            batches: st.batches,
            retries: st.retries,
            queued_entries: st.backlog_entries as u64,
            queued_bytes: st.backlog_bytes as u64,
            in_flight_entries: st.in_flight as u64,
            ..Stats::default()
        };
        // Holding every lock at once makes this one consistent snapshot.
        let shards: Vec<_> = inner.shards.iter().map(|c| lock(&c.shard)).collect();
        for shard in &shards {
            stats.enqueued += shard.enqueued;
            stats.queued_entries += shard.arena.entries() as u64;
            stats.queued_bytes += shard.arena.bytes() as u64;
        }
        stats
    }

    /// The handle is gone: shut down with no deadline and join the worker, unless waiting is
    /// impossible (called from the worker itself), was given up on (a shutdown deadline
    /// passed) or declined (`detach`). Then the worker finishes alone and frees the engine
    /// with its last reference.
    pub(crate) fn release(&self) {
        let inner = self.inner();
        let wait = {
            let mut st = lock(&inner.state);
            inner.close(&mut st);
            !(inner.on_worker_thread() || st.timed_out || st.detached)
        };
        if !wait {
            return;
        }
        let _ = self.shutdown(None);
        let handle = lock(&inner.join).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Makes `release` return without waiting.
    pub(crate) fn detach(&self) {
        let inner = self.inner();
        let mut st = lock(&inner.state);
        inner.close(&mut st);
        st.detached = true;
    }

    #[doc(hidden)]
    pub(crate) fn worker_wakeups(&self) -> u64 {
        self.inner().wakeups.load(Ordering::Relaxed)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let inner = self.inner() as *const Inner as *mut Inner;
        // SAFETY: the last reference to the engine is going away, so nothing else uses the
        // current `Inner`; it was made by `Box::into_raw`.
        drop(unsafe { Box::from_raw(inner) });
    }
}

impl Inner {
    fn new(engine: &Engine, shards: usize, closed: bool) -> Self {
        let o = &engine.options;
        Inner {
            shards: (0..shards)
                .map(|_| CachePadded(ShardCell::default()))
                .collect(),
            pool: Pool::new(o.max_queue_entries, o.max_queue_bytes, shards),
            approx: Approx::new(o.max_batch_entries, o.max_batch_bytes, shards),
            idle: CachePadded(AtomicBool::new(false)),
            closed: AtomicBool::new(closed),
            finished: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
            state: Mutex::new(State {
                backlog: VecDeque::new(),
                backlog_entries: 0,
                backlog_bytes: 0,
                in_flight: 0,
                backlog_opened: 0,
                spare_buffers: Vec::new(),
                buffer_peak: 0,
                dispatched: 0,
                failed: 0,
                evicted: 0,
                abandoned: 0,
                batches: 0,
                retries: 0,
                flush_requested: 0,
                flush_done: 0,
                closing: closed,
                drained_after_close: false,
                timed_out: false,
                detached: false,
                worker_done: false,
            }),
            state_cv: Condvar::new(),
            space: Mutex::new(()),
            space_cv: Condvar::new(),
            space_waiters: AtomicUsize::new(0),
            worker: OnceLock::new(),
            worker_holds_arc: AtomicBool::new(false),
            join: Mutex::new(None),
            wakeups: AtomicU64::new(0),
        }
    }

    pub(crate) fn on_worker_thread(&self) -> bool {
        self.worker
            .get()
            .is_some_and(|w| w.id() == thread::current().id())
    }

    /// Unparks the worker. Costs no syscall unless it is asleep.
    pub(crate) fn wake_worker(&self) {
        if let Some(worker) = self.worker.get() {
            worker.unpark();
        }
    }

    /// Wakes `Block` producers after room was freed or the dispatcher closed.
    pub(crate) fn room_freed(&self) {
        if self.space_waiters.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&self.space);
            self.space_cv.notify_all();
        }
    }

    /// Stops accepting entries; the worker drains what is queued and exits.
    fn close(&self, st: &mut State) {
        if !st.closing {
            st.closing = true;
            self.closed.store(true, Ordering::SeqCst);
        }
        self.wake_worker();
        self.room_freed();
    }

    /// Whether nothing is queued or in flight (so nothing accepted awaits dispatch).
    pub(crate) fn is_empty(&self, st: &State) -> bool {
        st.backlog_entries == 0
            && st.in_flight == 0
            && self
                .shards
                .iter()
                .all(|c| c.opened_at.load(Ordering::Acquire) == 0)
    }

    /// When the oldest queued entry arrived, if anything is queued (an `Inner` timestamp).
    pub(crate) fn window_opened(&self, st: &State) -> Option<u64> {
        let shards = self
            .shards
            .iter()
            .map(|c| c.opened_at.load(Ordering::Acquire));
        let backlog = (st.backlog_entries > 0).then_some(st.backlog_opened);
        shards.chain(backlog).filter(|&t| t != 0).min()
    }

    /// Moves every shard's entries to the back of the backlog, swapping in spare buffers.
    ///
    /// Each shard gets a spare at least as large as what it filled last time, with its pages
    /// already touched: growing a buffer, or writing fresh pages, costs a page fault per
    /// 4 KiB, and that is better paid here than by a producer inside its enqueue.
    pub(crate) fn collect_shards(&self, st: &mut State) {
        for cell in self.shards.iter() {
            // An empty shard needs no lock: a stamp not yet visible here belongs to an entry
            // still being appended, not yet accepted, which a later round collects. But the
            // pass after closing must lock every shard: it is what orders closing with the
            // producers' checks of `closed`.
            if !st.closing && cell.opened_at.load(Ordering::Acquire) == 0 {
                continue;
            }
            let mut spare = st.spare_buffers.pop().unwrap_or_default();
            spare.ready_for(cell.last_used.load(Ordering::Relaxed));
            let mut shard = lock(&cell.shard);
            if shard.arena.is_empty() {
                st.spare_buffers.push(spare);
                continue;
            }
            let full = std::mem::replace(&mut shard.arena, Arena::with_buffer(spare));
            let unreported = std::mem::take(&mut shard.unreported);
            let opened = cell.opened_at.swap(0, Ordering::AcqRel);
            drop(shard);
            cell.last_used.store(full.buffer_len(), Ordering::Relaxed);
            self.approx.add(unreported);
            if st.backlog_entries == 0 || opened < st.backlog_opened {
                st.backlog_opened = opened;
            }
            st.backlog_entries += full.entries();
            st.backlog_bytes += full.bytes();
            st.backlog.push_back(full);
        }
    }

    /// Takes every shard's unused lease back into the pool; whether the pool now has room for
    /// one entry of `charge` bytes. Before refusing anything, so that "full" is exact.
    ///
    /// Skipped (false) when no entry left the queue since the last steal that found too
    /// little: only that frees credit, so a full queue refuses without locking every shard.
    fn steal_leases(&self, charge: usize) -> bool {
        let epoch = self.pool.epoch();
        if self.pool.deficit(charge) == (0, 0) {
            return true;
        }
        if self.pool.fruitless_steal_at(epoch) {
            return false;
        }
        for cell in self.shards.iter() {
            let lease = std::mem::take(&mut lock(&cell.shard).lease);
            self.pool.return_lease(lease);
        }
        let room = self.pool.deficit(charge) == (0, 0);
        if !room {
            self.pool.steal_failed(epoch);
        }
        room
    }

    /// Sleeps-to-be: marks the worker idle if nothing is queued (checked under every shard
    /// lock after setting the flag, so that a producer either is seen here or sees the flag).
    /// Called with the state lock held and the backlog empty.
    pub(crate) fn go_idle(&self) -> bool {
        self.idle.store(true, Ordering::SeqCst);
        for cell in self.shards.iter() {
            if !lock(&cell.shard).arena.is_empty() {
                self.idle.store(false, Ordering::SeqCst);
                return false;
            }
        }
        true
    }

    /// Evicts the oldest queued entries until one more entry of `charge` bytes fits: the
    /// backlog first (collected earliest), then the caller's own shard, then the others.
    fn evict(&self, engine: &Engine, charge: usize) -> (Dropped, usize) {
        let mut st = lock(&self.state);
        if st.closing {
            // Everything queued will be delivered: evicting for an entry that closing
            // refuses would lose deliverable entries for nothing.
            return (Dropped::new(), 0);
        }
        let (over_entries, over_bytes) = self.pool.deficit(charge);
        let mut eviction = Eviction {
            over_entries,
            over_bytes,
            sink: engine.on_drop.as_ref().map(|_| Arena::default()),
            entries: 0,
            bytes: 0,
        };
        while let Some(front) = st.backlog.front_mut() {
            let (entries, bytes) = eviction.pop_from(front);
            let emptied = front.is_empty();
            st.backlog_entries -= entries;
            st.backlog_bytes -= bytes;
            self.approx.remove(entries, bytes);
            if !emptied {
                break;
            }
            let empty = st.backlog.pop_front().unwrap_or_default();
            st.spare_buffers.push(empty.into_buffer());
        }
        let own = shard_index(engine.shard_mask);
        let order = std::iter::once(own).chain((0..self.shards.len()).filter(|&i| i != own));
        for i in order {
            let cell = &self.shards[i];
            let mut shard = lock(&cell.shard);
            let before = (shard.arena.entries(), shard.arena.bytes());
            let (entries, bytes) = eviction.pop_from(&mut shard.arena);
            if entries == 0 {
                continue;
            }
            // The oldest entries go first, so they come out of the part already reported.
            let unreported = shard.unreported;
            let reported = (before.0 - unreported.0, before.1 - unreported.1);
            let (from_reported, from_reported_bytes) =
                (entries.min(reported.0), bytes.min(reported.1));
            shard.unreported = (
                unreported.0 - (entries - from_reported),
                unreported.1 - (bytes - from_reported_bytes),
            );
            self.approx.remove(from_reported, from_reported_bytes);
            if shard.arena.is_empty() {
                cell.opened_at.store(0, Ordering::Release);
            }
        }
        st.evicted += eviction.entries as u64;
        self.pool.freed(eviction.entries, eviction.bytes);
        drop(st);
        let mut dropped = Dropped::new();
        dropped.add(eviction.sink.unwrap_or_default());
        (dropped, eviction.entries)
    }

    /// Removes everything queued (not the batch in flight) at a shutdown deadline.
    fn abandon(&self, st: &mut State) -> Dropped {
        let mut dropped = Dropped::new();
        self.approx.remove(st.backlog_entries, st.backlog_bytes);
        for arena in st.backlog.drain(..) {
            dropped.add(arena);
        }
        for cell in self.shards.iter() {
            let mut shard = lock(&cell.shard);
            let arena = std::mem::take(&mut shard.arena);
            let unreported = std::mem::take(&mut shard.unreported);
            cell.opened_at.store(0, Ordering::Release);
            drop(shard);
            self.approx
                .remove(arena.entries() - unreported.0, arena.bytes() - unreported.1);
            dropped.add(arena);
        }
        st.backlog_entries = 0;
        st.backlog_bytes = 0;
        st.abandoned += dropped.entries as u64;
        self.pool.freed(dropped.entries, dropped.bytes);
        self.room_freed();
        dropped
    }
}

/// Why `Engine::enqueue_in` stopped short of appending.
enum Stop {
    Refused(EnqueueError),
    /// A callback forked while room was made; this is the child.
    Forked,
}

impl From<EnqueueError> for Stop {
    fn from(err: EnqueueError) -> Self {
        Stop::Refused(err)
    }
}

/// Progress of one `evict` call.
struct Eviction {
    /// How far the queue is still over its limits.
    over_entries: usize,
    over_bytes: usize,
    /// Where evicted records are copied for `on_drop` (none without `on_drop`).
    sink: Option<Arena>,
    entries: usize,
    bytes: usize,
}

impl Eviction {
    /// Pops from the front of `arena` while the queue is over its limits; returns what it took.
    fn pop_from(&mut self, arena: &mut Arena) -> (usize, usize) {
        let (mut entries, mut bytes) = (0, 0);
        while self.over_entries > 0 || self.over_bytes > 0 {
            let Some(charge) = arena.pop_front(self.sink.as_mut()) else {
                break;
            };
            self.over_entries = self.over_entries.saturating_sub(1);
            self.over_bytes = self.over_bytes.saturating_sub(charge);
            entries += 1;
            bytes += charge;
        }
        self.entries += entries;
        self.bytes += bytes;
        (entries, bytes)
    }
}

/// `now + timeout`, or `None` (no deadline) for `None` or a timeout too large to add.
pub(crate) fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| now().checked_add(t))
}

/// Waits on `cv` until `done(state)` or the deadline; returns the guard either way.
fn wait_until<'a>(
    cv: &Condvar,
    mut guard: MutexGuard<'a, State>,
    deadline: Option<Instant>,
    done: impl Fn(&State) -> bool,
) -> Result<MutexGuard<'a, State>, MutexGuard<'a, State>> {
    loop {
        if done(&guard) {
            return Ok(guard);
        }
        guard = match deadline {
            None => cv.wait(guard).unwrap_or_else(|e| e.into_inner()),
            Some(deadline) => {
                let now = now();
                if now >= deadline {
                    return Err(guard);
                }
                cv.wait_timeout(guard, deadline - now)
                    .map_or_else(|e| e.into_inner().0, |r| r.0)
            }
        };
    }
}

/// The entries of a batch the worker owns while it is in flight.
///
/// `entries` points into `segments`' buffers, which are neither changed nor dropped until the
/// batch is finished (`clear`), so it is valid for every attempt.
#[derive(Default)]
pub(crate) struct Flight {
    pub(crate) segments: Vec<Arena>,
    entries: Vec<Entry<'static>>,
    pub(crate) count: usize,
    pub(crate) bytes: usize,
    pub(crate) attempt: u32,
    pub(crate) retry_at: Option<Instant>,
}

impl Flight {
    pub(crate) fn start(&mut self, count: usize, bytes: usize) {
        self.entries.clear();
        for segment in &self.segments {
            segment.entries_into(&mut self.entries);
        }
        debug_assert_eq!(self.entries.len(), count);
        (self.count, self.bytes, self.attempt, self.retry_at) = (count, bytes, 0, None);
    }

    pub(crate) fn batch(&self) -> Batch<'_> {
        Batch::new(&self.entries, self.bytes, self.attempt)
    }

    /// Ends the batch and returns its buffers to the spares.
    ///
    /// Capacity is kept, because a buffer freed and allocated again costs a page fault per
    /// 4 KiB on first touch (about 0.4 ns per byte, more than the enqueue itself). Only a
    /// buffer far larger than what recent windows needed (`peak`, which decays by an eighth
    /// per batch) is dropped, so memory is returned some twenty windows after a burst.
    pub(crate) fn clear(&mut self, spares: &mut Vec<Spare>, max_spares: usize, peak: &mut usize) {
        const RETAIN: usize = 64 << 10;
        self.entries.clear();
        let used = self
            .segments
            .iter()
            .map(|s| s.buffer_len())
            .max()
            .unwrap_or(0);
        *peak = used.max(*peak - *peak / 8);
        for segment in self.segments.drain(..) {
            let spare = segment.into_buffer();
            if spares.len() < max_spares && spare.buf.capacity() <= 4 * (*peak).max(RETAIN) {
                spares.push(spare);
            }
        }
        (self.count, self.bytes, self.attempt, self.retry_at) = (0, 0, 0, None);
    }
}
