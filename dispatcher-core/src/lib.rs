//! A background dispatcher: takes byte entries on the hot path for almost nothing, groups
//! them, and on its own thread hands each group to a dispatch function at most every
//! `ms_delay`.
//!
//! ```
//! use std::time::Duration;
//! use dispatcher_core::{Dispatcher, Options};
//!
//! let dispatcher = Dispatcher::builder(Duration::from_millis(10))
//!     .options(Options { max_batch_entries: 500, ..Options::default() })
//!     .build(|batch| {
//!         for entry in batch.iter() {
//!             let _ = entry; // post it somewhere
//!         }
//!         Ok(())
//!     })?;
//! dispatcher.enqueue(b"GET /health 200 1ms")?;
//! dispatcher.flush(Some(Duration::from_secs(1)))?;
//! assert_eq!(dispatcher.stats().dispatched, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//!
//! - **Window.** The first entry to arrive in an empty queue opens a window of `ms_delay`;
//!   when it ends, everything queued is dispatched. Callback starts are at least `ms_delay`
//!   apart, except for a full batch (`max_batch_entries` / `max_batch_bytes`, the size
//!   trigger) and for `flush` and `shutdown`, which do not wait. No empty batch, ever; no
//!   wake-up while nothing is queued.
//! - **One callback at a time**, always on the dispatcher's thread, with no lock held.
//! - **Order.** Entries enqueued by one thread are dispatched in that thread's order. There is
//!   no order across threads.
//! - **Bounded.** `max_queue_entries` / `max_queue_bytes` bound what is queued (the batch in
//!   flight is not counted); [`Overflow`] decides what happens at the bound.
//! - **Accounted.** Every accepted entry ends up dispatched, failed, evicted or abandoned, and
//!   [`Stats`] counts each, consistently, at any moment.
//! - **fork().** A child gets an empty, working dispatcher; the parent delivers what was queued
//!   before the fork.
//!
//! # Cost
//!
//! `enqueue` copies the entry into a per-thread shard buffer under an uncontended lock, and
//! in steady state makes no allocation, no syscall, no wake-up and no write to a cache line
//! that another thread writes (queue.rs explains how the limits and windows manage that).

#![warn(missing_docs)]

mod batch;
mod engine;
mod error;
mod fork;
mod options;
mod queue;
mod sync;
mod worker;

use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

pub use batch::{Batch, Entry};
pub use error::{BuildError, EnqueueError, FlushError, ShutdownError};
pub use options::{DEFAULT_MAX_QUEUE_BYTES, Options, Overflow};

use engine::{DispatchFn, DropFn, Engine};

/// What a dispatch function returns: `Ok(())` if the batch was delivered. An `Err` (or a
/// panic) fails the attempt; the error itself is not kept.
pub type DispatchResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Why entries were handed to `on_drop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Their batch failed `max_attempts` times (or a shutdown deadline stopped its retries).
    /// Called on the dispatcher's thread.
    Failed,
    /// Evicted by [`Overflow::DropOldest`] to make room. Called on the enqueuing thread.
    Evicted,
    /// Still queued when a `shutdown` deadline passed. Called on the thread that called
    /// `shutdown`.
    ShutdownTimeout,
}

/// Counters of a dispatcher, read as one consistent snapshot.
///
/// In every snapshot `enqueued == dispatched + failed + evicted + abandoned + queued_entries +
/// in_flight_entries`, and no counter but the three gauges (`queued_*`, `in_flight_entries`)
/// ever decreases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries accepted by `enqueue`.
    pub enqueued: u64,
    /// Entries refused by `enqueue` (queue full, too large, closed).
    pub rejected: u64,
    /// Entries in a batch whose dispatch call returned success.
    pub dispatched: u64,
    /// Entries in a batch that failed for good (handed to `on_drop` as `Failed`).
    pub failed: u64,
    /// Entries evicted by `DropOldest`.
    pub evicted: u64,
    /// Entries removed at a shutdown deadline.
    pub abandoned: u64,
    /// Dispatch calls made, retries included.
    pub batches: u64,
    /// Dispatch calls that were retries.
    pub retries: u64,
    /// Entries waiting in the queue.
    pub queued_entries: u64,
    /// Bytes (charges) of the entries waiting in the queue.
    pub queued_bytes: u64,
    /// Entries of the batch being dispatched or waiting for a retry.
    pub in_flight_entries: u64,
}

impl Stats {
    /// Whether the accounting identity holds.
    pub fn is_consistent(&self) -> bool {
        self.enqueued
            == self.dispatched
                + self.failed
                + self.evicted
                + self.abandoned
                + self.queued_entries
                + self.in_flight_entries
    }
}

/// A flush request, to wait on with [`Dispatcher::wait_flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushTicket(u64);

/// Configures and starts a [`Dispatcher`].
pub struct Builder {
    ms_delay: Duration,
    options: Options,
    on_drop: Option<DropFn>,
    never_block_on: Vec<ThreadId>,
}

impl Builder {
    /// Sets every limit and policy at once (see [`Options`] for the defaults).
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Receives the entries that leave the queue without a successful dispatch, with the
    /// reason. It may run on any thread (see [`DropReason`]), possibly while the dispatch
    /// function runs; a panic in it is caught and ignored.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use dispatcher_core::{Dispatcher, DropReason, Options};
    ///
    /// let failed = Arc::new(AtomicUsize::new(0));
    /// let counter = Arc::clone(&failed);
    /// let dispatcher = Dispatcher::builder(Duration::from_millis(10))
    ///     .options(Options { max_attempts: 1, ..Options::default() })
    ///     .on_drop(move |batch, reason| {
    ///         assert_eq!(reason, DropReason::Failed);
    ///         counter.fetch_add(batch.len(), Ordering::Relaxed);
    ///     })
    ///     .build(|_batch| Err("collector unreachable".into()))?;
    /// dispatcher.enqueue(b"lost, but not silently")?;
    /// dispatcher.shutdown(None)?;
    /// assert_eq!(failed.load(Ordering::Relaxed), 1);
    /// assert_eq!(dispatcher.stats().failed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_drop<F>(mut self, on_drop: F) -> Self
    where
        F: Fn(&Batch<'_>, DropReason) + Send + Sync + 'static,
    {
        self.on_drop = Some(Box::new(on_drop));
        self
    }

    /// On this thread an [`Overflow::Block`] enqueue never waits (it gets `QueueFull` at once),
    /// as on the dispatcher's own thread. For threads the dispatch function depends on, such
    /// as the event loop that runs an async dispatch: waiting there would stall the dispatch.
    pub fn never_block_on(mut self, thread: ThreadId) -> Self {
        self.never_block_on.push(thread);
        self
    }

    /// Validates the options and starts the worker thread, which calls `dispatch` with each
    /// batch, one call at a time.
    pub fn build<F>(self, dispatch: F) -> Result<Dispatcher, BuildError>
    where
        F: FnMut(&Batch<'_>) -> DispatchResult + Send + 'static,
    {
        let dispatch: DispatchFn = Box::new(dispatch);
        let engine = Engine::new(
            self.ms_delay,
            self.options,
            dispatch,
            self.on_drop,
            self.never_block_on,
        )?;
        Ok(Dispatcher { engine })
    }
}

/// A batching dispatcher with its own worker thread. Share it between threads by reference
/// (it is `Sync`) or in an `Arc`.
///
/// Dropping it shuts it down with no deadline (everything accepted is dispatched or dropped)
/// and joins the worker, except in two cases where it cannot wait: dropped from inside the
/// dispatch function, or after a `shutdown` whose deadline passed. Then the worker finishes
/// alone and frees everything after its last callback.
pub struct Dispatcher {
    engine: Arc<Engine>,
}

impl Dispatcher {
    /// Starts configuring a dispatcher whose batches are at least `ms_delay` apart.
    pub fn builder(ms_delay: Duration) -> Builder {
        Builder {
            ms_delay,
            options: Options::default(),
            on_drop: None,
            never_block_on: Vec::new(),
        }
    }

    /// Copies `data` into the queue. Never blocks, except with [`Overflow::Block`] on a full
    /// queue (and never inside the dispatch function).
    ///
    /// ```
    /// use std::time::Duration;
    /// use dispatcher_core::{Dispatcher, EnqueueError, Options};
    ///
    /// let dispatcher = Dispatcher::builder(Duration::from_millis(10))
    ///     .options(Options { max_queue_bytes: 16, ..Options::default() })
    ///     .build(|_batch| Ok(()))?;
    /// assert_eq!(dispatcher.enqueue(b"GET /health 200"), Ok(()));
    /// assert_eq!(dispatcher.enqueue(&[0; 17]), Err(EnqueueError::TooLarge));
    /// dispatcher.shutdown(None)?;
    /// assert_eq!(dispatcher.enqueue(b"too late"), Err(EnqueueError::Closed));
    /// assert_eq!(dispatcher.stats().rejected, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn enqueue(&self, data: &[u8]) -> Result<(), EnqueueError> {
        self.engine.enqueue(data, data.len(), true)
    }

    /// Like [`Dispatcher::enqueue`], but never waits: where [`Overflow::Block`] would wait for
    /// room it returns [`EnqueueError::WouldBlock`] instead, and counts nothing, so that the
    /// caller can prepare (say, release a lock) and call `enqueue`.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// use dispatcher_core::{Dispatcher, EnqueueError, Options, Overflow};
    ///
    /// let (release, gate) = mpsc::channel::<()>();
    /// let (started, first_batch) = mpsc::channel::<()>();
    /// let options = Options { max_queue_entries: 1, overflow: Overflow::Block, ..Options::default() };
    /// let dispatcher = Dispatcher::builder(Duration::from_millis(1))
    ///     .options(options)
    ///     .build(move |_batch| {
    ///         let _ = started.send(());
    ///         let _ = gate.recv(); // hold the worker until released
    ///         Ok(())
    ///     })?;
    /// dispatcher.enqueue(b"in flight")?;
    /// first_batch.recv()?;
    /// dispatcher.enqueue(b"queued")?; // the queue is now full
    /// assert_eq!(dispatcher.try_enqueue(b"would wait"), Err(EnqueueError::WouldBlock));
    /// assert_eq!(dispatcher.stats().rejected, 0); // WouldBlock is not a rejection
    /// drop(release);
    /// dispatcher.shutdown(None)?;
    /// assert_eq!(dispatcher.stats().dispatched, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_enqueue(&self, data: &[u8]) -> Result<(), EnqueueError> {
        self.engine.enqueue(data, data.len(), false)
    }

    /// Like [`Dispatcher::enqueue`], but the entry counts `charge` bytes against the byte
    /// limits (and in `Batch::bytes`) instead of `data.len()`. For bindings whose entries are
    /// handles to data stored elsewhere.
    #[inline]
    pub fn enqueue_charged(&self, data: &[u8], charge: usize) -> Result<(), EnqueueError> {
        self.engine.enqueue(data, charge, true)
    }

    /// [`Dispatcher::try_enqueue`] with a charge, as in [`Dispatcher::enqueue_charged`].
    #[inline]
    pub fn try_enqueue_charged(&self, data: &[u8], charge: usize) -> Result<(), EnqueueError> {
        self.engine.enqueue(data, charge, false)
    }

    /// Dispatches what is queued now, without waiting for the window, and waits until every
    /// entry accepted before this call has been dispatched or dropped. A batch waiting for a
    /// retry keeps its backoff. `None` waits without a deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use dispatcher_core::Dispatcher;
    ///
    /// // A long window: without the flush, these entries would wait an hour.
    /// let dispatcher = Dispatcher::builder(Duration::from_secs(3600)).build(|_batch| Ok(()))?;
    /// for i in 0..100u32 {
    ///     dispatcher.enqueue(&i.to_le_bytes())?;
    /// }
    /// dispatcher.flush(Some(Duration::from_secs(10)))?;
    /// assert_eq!(dispatcher.stats().dispatched, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush(&self, timeout: Option<Duration>) -> Result<(), FlushError> {
        self.engine.flush(timeout)
    }

    /// The first half of `flush`: asks for the round and returns a ticket for
    /// [`Dispatcher::wait_flush`]. For callers that wait in slices (to stay responsive to
    /// signals): waiting on one ticket covers what was accepted before this call only, where
    /// repeated `flush` calls would each take in newer entries.
    ///
    /// ```
    /// use std::time::Duration;
    /// use dispatcher_core::{Dispatcher, FlushError};
    ///
    /// let dispatcher = Dispatcher::builder(Duration::from_secs(3600)).build(|_batch| Ok(()))?;
    /// dispatcher.enqueue(b"entry")?;
    /// let ticket = dispatcher.request_flush()?;
    /// loop {
    ///     match dispatcher.wait_flush(ticket, Some(Duration::from_millis(50))) {
    ///         Ok(()) => break,
    ///         Err(FlushError::Timeout) => { /* check for signals, then wait again */ }
    ///         Err(e) => return Err(e.into()),
    ///     }
    /// }
    /// assert_eq!(dispatcher.stats().dispatched, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn request_flush(&self) -> Result<FlushTicket, FlushError> {
        self.engine.request_flush().map(FlushTicket)
    }

    /// The second half of `flush`: waits up to `timeout` for the round of `ticket`.
    pub fn wait_flush(
        &self,
        ticket: FlushTicket,
        timeout: Option<Duration>,
    ) -> Result<(), FlushError> {
        self.engine.wait_flush(ticket.0, timeout)
    }

    /// Whether a shutdown has begun (enqueues get `Closed`). Never blocks.
    pub fn is_closed(&self) -> bool {
        self.engine.is_closed()
    }

    /// Whether the dispatcher is shut down and everything it accepted has been dispatched or
    /// dropped (its worker has finished). Never blocks.
    pub fn is_finished(&self) -> bool {
        self.engine.is_finished()
    }

    /// Stops accepting entries (later enqueues get `Closed`), dispatches everything queued at
    /// once, and waits for it. At the deadline, entries still queued are handed to `on_drop`
    /// as [`DropReason::ShutdownTimeout`] on this thread, the batch in flight is left to
    /// finish (without further retries), and `Timeout` is returned. Idempotent, thread-safe.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// use dispatcher_core::{Dispatcher, DropReason, ShutdownError};
    ///
    /// let (release, gate) = mpsc::channel::<()>();
    /// let (started, first_batch) = mpsc::channel::<()>();
    /// let (dropped_tx, dropped) = mpsc::channel::<(usize, DropReason)>();
    /// let dispatcher = Dispatcher::builder(Duration::from_millis(1))
    ///     .on_drop(move |batch, reason| { let _ = dropped_tx.send((batch.len(), reason)); })
    ///     .build(move |_batch| {
    ///         let _ = started.send(());
    ///         let _ = gate.recv(); // a stuck collector
    ///         Ok(())
    ///     })?;
    /// dispatcher.enqueue(b"in flight")?;
    /// first_batch.recv()?;
    /// dispatcher.enqueue(b"still queued")?;
    /// let result = dispatcher.shutdown(Some(Duration::from_millis(100)));
    /// assert_eq!(result, Err(ShutdownError::Timeout));
    /// assert_eq!(dropped.recv()?, (1, DropReason::ShutdownTimeout));
    /// drop(release); // the batch in flight still finishes
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self, timeout: Option<Duration>) -> Result<(), ShutdownError> {
        self.engine.shutdown(timeout)
    }

    /// The first half of `shutdown`: stops accepting entries and returns at once, while the
    /// worker drains the queue. `Reentrant` from inside the dispatch function.
    pub fn begin_shutdown(&self) -> Result<(), ShutdownError> {
        self.engine.begin_shutdown()
    }

    /// The second half of `shutdown` (beginning it if need be): waits for the drain, but
    /// abandons nothing when the deadline passes (`Timeout` then means "not yet"). For
    /// callers that wait in slices, to stay responsive to signals.
    pub fn wait_shutdown(&self, timeout: Option<Duration>) -> Result<(), ShutdownError> {
        self.engine.wait_shutdown(timeout)
    }

    /// Shuts down without waiting: the worker delivers what is queued, then frees everything
    /// after its last callback. For a thread that must not wait for the dispatch, such as the
    /// event loop an async dispatch function runs on.
    pub fn detach(self) {
        self.engine.detach();
    }

    /// A consistent snapshot of the counters. Briefly takes every shard lock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use dispatcher_core::Dispatcher;
    ///
    /// let dispatcher = Dispatcher::builder(Duration::from_millis(10)).build(|_batch| Ok(()))?;
    /// dispatcher.enqueue(b"a")?;
    /// dispatcher.enqueue(b"b")?;
    /// let stats = dispatcher.stats();
    /// assert_eq!(stats.enqueued, 2);
    /// assert!(stats.is_consistent()); // enqueued = dispatched + ... + queued + in flight
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// The minimum time between dispatch starts.
    pub fn ms_delay(&self) -> Duration {
        self.engine.ms_delay
    }

    /// The limits and policies in force.
    pub fn options(&self) -> &Options {
        &self.engine.options
    }

    /// How many times the worker thread has woken up. For tests that check it sleeps.
    #[doc(hidden)]
    pub fn worker_wakeups(&self) -> u64 {
        self.engine.worker_wakeups()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.engine.release();
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("ms_delay", &self.engine.ms_delay)
            .field("options", &self.engine.options)
            .finish_non_exhaustive()
    }
}
