//! Model checks of the hand-off between producers, the worker, `flush` and `shutdown`, on the
//! real engine (the `Dispatcher` every binding uses), under loom.
//!
//! Run with `make test-loom`, or by hand:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p dispatcher-core --profile loom --test loom_handoff -- --show-output
//! ```
//!
//! Under `cfg(loom)` every lock, condition variable, atomic, park and thread of the engine is
//! loom's (src/sync.rs), so loom runs each model below once per distinct interleaving of them
//! (bounded by `LOOM_MAX_PREEMPTIONS`, 2 unless set) and fails on any interleaving that breaks
//! an assertion, deadlocks (every thread blocked: a lost wake-up, a flush or shutdown that
//! never returns, a worker that never exits) or reads a racy cell.
//!
//! Time stands still in a model (src/sync.rs): a window never ends by itself, so everything
//! dispatched here was dispatched because of a flush, a shutdown or a full batch, never
//! because a timer happened to fire. What is checked, in every interleaving:
//! - each accepted entry is dispatched exactly once or handed to `on_drop` with a reason, and
//!   each refused one is refused with `Closed` and never dispatched;
//! - `flush` returns only after everything its thread enqueued before it was dispatched, also
//!   when a shutdown ends the worker meanwhile;
//! - `shutdown` returns only after every accepted entry was dispatched and the worker exited;
//! - a full batch wakes the sleeping worker, and room freed by the worker wakes a producer
//!   blocked on a full queue (no lost wake-up, no timer needed);
//! - dropping the last handle, from any thread, drains, joins the worker and frees the engine;
//! - a batch that fails is handed to `on_drop` as `Failed`, once, and counted as failed;
//! - the stats identity holds at the end.
//!
//! `tests/loom_mutants.py` (run by `make test-loom` after these) seeds a bug per model into a
//! copy of the engine and checks that the model fails, so a model that passes means something.

#![cfg(loom)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dispatcher_core::{Dispatcher, DropReason, EnqueueError, Options, Overflow, Stats};
use loom::sync::{Condvar, Mutex};
use loom::thread;
// std's `Arc` (an atomic count loom need not explore): loom's must be dropped while the model
// runs, and after a failure the dispatcher may be dropped once it has stopped.
use std::sync::Arc;

/// Any non-zero delay: time does not pass in a model, so windows never end by themselves.
const MS_DELAY: Duration = Duration::from_millis(10);

/// What the dispatch function and `on_drop` saw, shared with the model's threads.
#[derive(Default)]
struct Ledger {
    dispatched: Mutex<Vec<u8>>,
    dropped: Mutex<Vec<(u8, DropReason)>>,
    /// Signalled after each dispatch, for a thread that waits for one without flushing.
    changed: Condvar,
}

impl Ledger {
    fn dispatched(&self) -> Vec<u8> {
        self.dispatched.lock().unwrap().clone()
    }

    /// The entries handed to `on_drop`, whatever the reason.
    fn dropped_entries(&self) -> Vec<u8> {
        self.dropped.lock().unwrap().iter().map(|d| d.0).collect()
    }

    /// Waits until `n` entries were dispatched. No timeout: if the worker never dispatches
    /// them, every thread ends up blocked and loom reports the deadlock.
    fn wait_dispatched(&self, n: usize) {
        let mut seen = self.dispatched.lock().unwrap();
        while seen.len() < n {
            seen = self.changed.wait(seen).unwrap();
        }
    }
}

/// Set when the dispatch function is dropped, that is when the engine is freed.
struct FreedFlag(Arc<AtomicBool>);

impl Drop for FreedFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A dispatcher that records into a fresh ledger; the flag tells when its engine is freed.
/// Batches that hold `fails_on` fail (and are recorded as dropped, by `on_drop`, instead).
fn dispatcher(
    options: Options,
    fails_on: Option<u8>,
) -> (Dispatcher, Arc<Ledger>, Arc<AtomicBool>) {
    let ledger = Arc::new(Ledger::default());
    let freed = Arc::new(AtomicBool::new(false));
    let (sink, drops) = (Arc::clone(&ledger), Arc::clone(&ledger));
    let flag = FreedFlag(Arc::clone(&freed));
    let dispatcher = Dispatcher::builder(MS_DELAY)
        .options(options)
        .on_drop(move |batch, reason| {
            let mut dropped = drops.dropped.lock().unwrap();
            dropped.extend(batch.iter().map(|entry| (entry[0], reason)));
        })
        .build(move |batch| {
            let _keep = &flag;
            if fails_on.is_some_and(|bad| batch.iter().any(|entry| entry[0] == bad)) {
                return Err("this batch fails".into());
            }
            sink.dispatched
                .lock()
                .unwrap()
                .extend(batch.iter().map(|entry| entry[0]));
            sink.changed.notify_all();
            Ok(())
        })
        .expect("valid options");
    (dispatcher, ledger, freed)
}

/// The end of every model: dropping the last handle frees the engine (the worker's reference
/// included).
fn drop_last_handle<T>(dispatcher: T, freed: &AtomicBool) {
    drop(dispatcher);
    assert!(
        freed.load(Ordering::SeqCst),
        "the engine outlived its last handle"
    );
}

/// Figures summed over every interleaving of one model, printed at the end.
#[derive(Default)]
struct Tally {
    runs: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    dispatched: AtomicU64,
    dropped: AtomicU64,
}

impl Tally {
    /// Checks one run's outcome (`accepted` entries; `dispatched` and `dropped` as recorded)
    /// and counts it. Panics, failing the model, on a lost or duplicated entry.
    fn check(&self, accepted: &[u8], refused: &[u8], dispatched: &[u8], dropped: &[u8]) {
        let mut seen: BTreeMap<u8, usize> = BTreeMap::new();
        for &entry in dispatched.iter().chain(dropped) {
            *seen.entry(entry).or_default() += 1;
        }
        for &entry in accepted {
            let times = seen.remove(&entry).unwrap_or(0);
            assert_eq!(
                times, 1,
                "accepted entry {entry} was dispatched or dropped {times} times"
            );
        }
        assert!(
            seen.is_empty(),
            "entries dispatched or dropped but never accepted: {seen:?} (refused: {refused:?})"
        );
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.accepted
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        self.refused
            .fetch_add(refused.len() as u64, Ordering::Relaxed);
        self.dispatched
            .fetch_add(dispatched.len() as u64, Ordering::Relaxed);
        self.dropped
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
    }

    fn report(&self, model: &str, started: Instant) {
        println!(
            "loom {model}: {} interleavings, entries accepted {} refused {} dispatched {} \
             dropped {}, lost 0, duplicated 0, deadlocks 0, {:.1} s",
            self.runs.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.dispatched.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64(),
        );
        assert!(self.runs.load(Ordering::Relaxed) > 0, "the model never ran");
    }
}

/// Runs `model` under loom with a preemption bound of `LOOM_MAX_PREEMPTIONS`, 2 if unset.
fn explore(name: &str, model: impl Fn(&Tally) + Sync + Send + 'static) {
    let tally = Arc::new(Tally::default());
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    let started = Instant::now();
    let inside = Arc::clone(&tally);
    builder.check(move || model(&inside));
    tally.report(name, started);
}

/// The stats identity, and that the counters agree with what the model saw.
fn check_stats(stats: Stats, accepted: usize, dispatched: usize, dropped: usize) {
    assert!(stats.is_consistent(), "{stats:?}");
    assert_eq!(stats.enqueued, accepted as u64, "{stats:?}");
    assert_eq!(stats.dispatched, dispatched as u64, "{stats:?}");
    assert_eq!(
        stats.failed + stats.evicted + stats.abandoned,
        dropped as u64,
        "{stats:?}"
    );
    assert_eq!(
        stats.queued_entries + stats.in_flight_entries,
        0,
        "{stats:?}"
    );
}

/// Each producer enqueues its entry while the main thread shuts down: an entry is either
/// accepted, and then dispatched before `shutdown` returns, or refused with `Closed`. The
/// worker has exited when `shutdown` returns, and dropping the handle frees the engine.
#[test]
fn shutdown_racing_two_producers_drains_everything_accepted() {
    explore("shutdown racing 2 producers", |tally| {
        let (dispatcher, ledger, freed) = dispatcher(Options::default(), None);
        let dispatcher = Arc::new(dispatcher);
        let producers: Vec<_> = [1u8, 2]
            .into_iter()
            .map(|entry| {
                let dispatcher = Arc::clone(&dispatcher);
                thread::spawn(move || (entry, dispatcher.enqueue(&[entry])))
            })
            .collect();

        dispatcher.shutdown(None).expect("no deadline, no timeout");
        let at_shutdown = ledger.dispatched();
        assert!(
            dispatcher.is_finished(),
            "shutdown returned before the worker exited"
        );

        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
        for producer in producers {
            match producer.join().unwrap() {
                (entry, Ok(())) => accepted.push(entry),
                (entry, Err(EnqueueError::Closed)) => refused.push(entry),
                (entry, Err(other)) => panic!("entry {entry} refused with {other:?}"),
            }
        }
        for entry in &accepted {
            assert!(
                at_shutdown.contains(entry),
                "entry {entry} was accepted but not dispatched when shutdown returned \
                 (dispatched then: {at_shutdown:?})"
            );
        }
        let dropped = ledger.dropped_entries();
        check_stats(
            dispatcher.stats(),
            accepted.len(),
            at_shutdown.len(),
            dropped.len(),
        );
        tally.check(&accepted, &refused, &ledger.dispatched(), &dropped);

        drop_last_handle(dispatcher, &freed); // the last handle: joins the (finished) worker
    });
}

/// Two producers (the main thread and one more) each enqueue an entry and flush, racing each
/// other and the worker: each `flush` returns only once its own entry was dispatched, whether
/// the round that took it was its own, the other's, or one already running when it asked.
#[test]
fn flush_returns_after_what_was_enqueued_before_it() {
    explore("flush barrier, 2 producers", |tally| {
        let (dispatcher, ledger, freed) = dispatcher(Options::default(), None);
        let dispatcher = Arc::new(dispatcher);
        let enqueue_and_flush = |dispatcher: &Dispatcher, ledger: &Ledger, entry: u8| {
            dispatcher.enqueue(&[entry]).expect("open, unbounded");
            dispatcher.flush(None).expect("no deadline, no timeout");
            let at_flush = ledger.dispatched();
            assert!(
                at_flush.contains(&entry),
                "flush returned before entry {entry} was dispatched \
                 (dispatched then: {at_flush:?})"
            );
        };
        let other = {
            let (dispatcher, ledger) = (Arc::clone(&dispatcher), Arc::clone(&ledger));
            thread::spawn(move || enqueue_and_flush(&dispatcher, &ledger, 2))
        };
        enqueue_and_flush(&dispatcher, &ledger, 1);
        other.join().unwrap();

        // Both flushes returned, so both entries are out: shutting down finds nothing left.
        assert_eq!(ledger.dispatched().len(), 2);
        dispatcher.shutdown(None).expect("no deadline, no timeout");
        let dropped = ledger.dropped_entries();
        check_stats(dispatcher.stats(), 2, 2, dropped.len());
        tally.check(&[1, 2], &[], &ledger.dispatched(), &dropped);
        drop_last_handle(dispatcher, &freed);
    });
}

/// A batch of two, one entry from each of two producers (the main thread and one more, so on
/// two shards), while the worker goes to sleep with nothing queued: the producer that
/// completes the batch wakes it, and it dispatches without a flush, a shutdown or a timer. A
/// lost wake-up leaves every thread blocked, which loom reports.
#[test]
fn a_full_batch_wakes_the_sleeping_worker() {
    explore("full batch wakes worker, 2 producers", |tally| {
        let options = Options {
            max_batch_entries: 2,
            ..Options::default()
        };
        let (dispatcher, ledger, freed) = dispatcher(options, None);
        let dispatcher = Arc::new(dispatcher);
        let other = {
            let dispatcher = Arc::clone(&dispatcher);
            thread::spawn(move || dispatcher.enqueue(&[2]).expect("open, unbounded"))
        };
        dispatcher.enqueue(&[1]).expect("open, unbounded");
        ledger.wait_dispatched(2);
        other.join().unwrap();

        let dispatched = ledger.dispatched();
        dispatcher.shutdown(None).expect("no deadline, no timeout");
        check_stats(dispatcher.stats(), 2, 2, 0);
        tally.check(&[1, 2], &[], &dispatched, &[]);
        drop_last_handle(dispatcher, &freed);
    });
}

/// As the shutdown race, with a dispatch function that fails every batch holding entry 1 (no
/// retry: a retry waits for time to pass, which it does not here): each accepted entry is
/// dispatched or handed to `on_drop` as `Failed`, exactly once, before `shutdown` returns.
#[test]
fn a_failed_batch_is_dropped_with_its_reason_once() {
    explore("failed batch racing shutdown", |tally| {
        let (dispatcher, ledger, freed) = dispatcher(Options::default(), Some(1));
        let dispatcher = Arc::new(dispatcher);
        let other = {
            let dispatcher = Arc::clone(&dispatcher);
            thread::spawn(move || dispatcher.enqueue(&[2]))
        };
        let first = dispatcher.enqueue(&[1]);
        dispatcher.shutdown(None).expect("no deadline, no timeout");
        let (dispatched, dropped) = (ledger.dispatched(), ledger.dropped.lock().unwrap().clone());

        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
        for (entry, result) in [(1, first), (2, other.join().unwrap())] {
            match result {
                Ok(()) => accepted.push(entry),
                Err(EnqueueError::Closed) => refused.push(entry),
                Err(err) => panic!("entry {entry} refused with {err:?}"),
            }
        }
        assert!(
            dropped
                .iter()
                .all(|&(_, reason)| reason == DropReason::Failed),
            "dropped for another reason than Failed: {dropped:?}"
        );
        let dropped: Vec<u8> = dropped.iter().map(|d| d.0).collect();
        if accepted.contains(&1) {
            assert!(
                dropped.contains(&1),
                "entry 1's batch failed but was not dropped"
            );
        }
        let stats = dispatcher.stats();
        check_stats(stats, accepted.len(), dispatched.len(), dropped.len());
        assert_eq!(stats.failed, dropped.len() as u64, "{stats:?}");
        tally.check(&accepted, &refused, &dispatched, &dropped);
        drop_last_handle(dispatcher, &freed);
    });
}

/// A producer enqueues and flushes while the main thread shuts down: the flush returns (the
/// worker's exit ends it if its round never comes), and if the entry was accepted it was
/// dispatched by then.
#[test]
fn flush_racing_shutdown_returns_after_its_entry() {
    explore("flush racing shutdown", |tally| {
        let (dispatcher, ledger, freed) = dispatcher(Options::default(), None);
        let dispatcher = Arc::new(dispatcher);
        let producer = {
            let (dispatcher, ledger) = (Arc::clone(&dispatcher), Arc::clone(&ledger));
            thread::spawn(move || {
                let accepted = dispatcher.enqueue(&[1]);
                dispatcher.flush(None).expect("no deadline, no timeout");
                (accepted, ledger.dispatched())
            })
        };
        dispatcher.shutdown(None).expect("no deadline, no timeout");
        let (accepted, at_flush) = producer.join().unwrap();
        let (accepted, refused): (&[u8], &[u8]) = match accepted {
            Ok(()) => {
                assert!(
                    at_flush.contains(&1),
                    "flush returned before entry 1 was dispatched"
                );
                (&[1], &[])
            }
            Err(EnqueueError::Closed) => (&[], &[1]),
            Err(err) => panic!("entry 1 refused with {err:?}"),
        };
        let dropped = ledger.dropped_entries();
        check_stats(
            dispatcher.stats(),
            accepted.len(),
            ledger.dispatched().len(),
            dropped.len(),
        );
        tally.check(accepted, refused, &ledger.dispatched(), &dropped);
        drop_last_handle(dispatcher, &freed);
    });
}

/// `Overflow::Block` with room for one entry: a second producer waits for room while the first
/// entry is queued, and the worker's taking that entry (on the main thread's flush) wakes it.
/// Time stands still, so the waiter's 100 ms safety wake-up never fires: only the worker's
/// signal can end the wait, and a lost one leaves every thread blocked.
#[test]
fn a_blocked_producer_is_woken_when_room_is_freed() {
    explore("blocked producer woken by the worker", |tally| {
        let options = Options {
            max_queue_entries: 1,
            overflow: Overflow::Block,
            ..Options::default()
        };
        let (dispatcher, ledger, freed) = dispatcher(options, None);
        let dispatcher = Arc::new(dispatcher);
        dispatcher.enqueue(&[1]).expect("room for one");
        let producer = {
            let dispatcher = Arc::clone(&dispatcher);
            thread::spawn(move || dispatcher.enqueue(&[2]).expect("room, once 1 is taken"))
        };
        dispatcher.flush(None).expect("no deadline, no timeout");
        producer.join().unwrap();
        dispatcher.shutdown(None).expect("no deadline, no timeout");

        let dispatched = ledger.dispatched();
        check_stats(dispatcher.stats(), 2, dispatched.len(), 0);
        tally.check(&[1, 2], &[], &dispatched, &[]);
        drop_last_handle(dispatcher, &freed);
    });
}

/// No one calls `shutdown`: a producer enqueues and drops its handle while the main thread
/// drops the other. Whichever drop is last shuts down with no deadline, drains, joins the
/// worker and frees the engine, on its own thread.
#[test]
fn the_last_handle_dropped_on_any_thread_drains_and_frees() {
    explore("last handle dropped on any thread", |tally| {
        let (dispatcher, ledger, freed) = dispatcher(Options::default(), None);
        let dispatcher = Arc::new(dispatcher);
        let producer = {
            let dispatcher = Arc::clone(&dispatcher);
            thread::spawn(move || {
                dispatcher.enqueue(&[1]).expect("open, unbounded");
                drop(dispatcher);
            })
        };
        drop(dispatcher);
        producer.join().unwrap();

        assert!(
            freed.load(Ordering::SeqCst),
            "the engine outlived its last handle"
        );
        let dropped = ledger.dropped_entries();
        tally.check(&[1], &[], &ledger.dispatched(), &dropped);
    });
}

/// The models see only what goes through src/sync.rs: a lock, atomic, park or clock taken
/// from std directly elsewhere in the engine would be invisible to loom (or, blocking inside
/// a model, hang it). fork.rs keeps std's atomics on purpose: its statics outlive a model
/// run, and under `cfg(loom)` it is replaced by a constant.
#[test]
fn the_engine_takes_its_primitives_from_the_sync_module() {
    let forbidden = [
        "std::sync::Mutex",
        "std::sync::Condvar",
        "std::sync::OnceLock",
        "std::sync::RwLock",
        "std::sync::mpsc",
        "std::sync::atomic",
        "std::sync::{",
        "std::thread::park",
        "std::thread::spawn",
        "std::thread::Builder",
        "std::thread::yield_now",
        "std::thread::{",
        "Instant::now(",
    ];
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = 0;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&src).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".rs") || name == "sync.rs" || name == "fork.rs" {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("a readable source file");
        for (line, code) in text.lines().enumerate() {
            if code.trim_start().starts_with("//") {
                continue;
            }
            for pattern in forbidden.iter().filter(|p| code.contains(*p)) {
                found.push(format!("src/{name}:{}: {pattern}", line + 1));
            }
        }
    }
    println!(
        "loom seam: {files} source files checked, {} direct uses of std primitives",
        found.len()
    );
    assert!(
        files >= 6,
        "found only {files} source files in {}",
        src.display()
    );
    assert!(
        found.is_empty(),
        "use crate::sync instead, so that the loom models see it:\n{}",
        found.join("\n")
    );
}
