//! Reliability, faults in the dispatch function: one that panics, returns failure, or blocks
//! forever. The worker survives, every entry is accounted for exactly (in `Stats` and through
//! `on_drop`), a shutdown deadline returns `Timeout` on time, and the handle stays usable:
//! stats readable, later calls return their documented errors at once, drop does not hang.
//!
//! failures.rs shows each failure behaviour once (no retry by default, retries, one panic, a
//! panicking `on_drop`, a deadline that stops retries); this suite drives them at volume and
//! in combination, and checks the accounting entry by entry.
//!
//! Figures go to stderr: `cargo test --test reliability_faults -- --nocapture`.

mod common;
mod reliability;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use common::{Gate, wait_until};
use dispatcher_core::{
    Dispatcher, DropReason, EnqueueError, FlushError, Options, ShutdownError, Stats,
};
use reliability::{Rng, Watchdog, put_tag, tag_of};

/// The panic message of injected faults; the panic hook stays quiet about these only.
const INJECTED: &str = "injected fault";

/// How late a call with a deadline may return before it counts as a hang, on a loaded machine.
const LATE: Duration = Duration::from_secs(2);

fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&INJECTED) {
                default(info);
            }
        }));
    });
}

/// Calls `f`, checks that it took at least `deadline` and at most `deadline + LATE`, and
/// returns its result and how long it took.
fn timed<T>(what: &str, deadline: Duration, f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let result = f();
    let took = start.elapsed();
    assert!(
        took >= deadline && took <= deadline + LATE,
        "{what} with a {deadline:?} deadline returned after {took:?}"
    );
    (result, took)
}

/// What the dispatch function and `on_drop` saw, per entry and per call.
#[derive(Default)]
struct Ledger {
    /// (producer, seq) -> (times delivered, times dropped as failed).
    fate: HashMap<(u8, u32), (u32, u32)>,
    calls: u64,
    retries: u64,
    panics: u64,
    errors: u64,
    retried_other_entries: u64,
    /// Entries of the last failed call, which its retry must carry again.
    last_failed: Option<Vec<(u8, u32)>>,
    failed_drops: u64,
    failed_drops_not_at_last_attempt: u64,
    other_drops: u64,
}

#[test]
fn panics_and_failures_at_volume_are_counted_entry_by_entry() {
    quiet_injected_panics();
    let seed = reliability::seed("faults at volume");
    let _watchdog = Watchdog::new("faults at volume", Duration::from_secs(300));
    const PRODUCERS: u8 = 4;
    const PER_PRODUCER: u32 = 20_000;
    const MAX_ATTEMPTS: u32 = 2;
    /// A producer whose entries always succeed: proof that the worker still works at the end.
    const SENTINEL: u8 = 200;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (in_dispatch, in_drop) = (ledger.clone(), ledger.clone());
    let mut rng = Rng::stream(seed, 0);
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_batch_entries: 500,
            max_queue_bytes: 0,
            max_attempts: MAX_ATTEMPTS,
            retry_backoff: Duration::from_millis(1),
            retry_backoff_max: Duration::from_millis(1),
            ..Options::default()
        })
        .on_drop(move |batch, reason| {
            let mut l = in_drop.lock().unwrap();
            if reason != DropReason::Failed {
                l.other_drops += batch.len() as u64;
                return;
            }
            l.failed_drops += 1;
            if batch.attempt() != MAX_ATTEMPTS {
                l.failed_drops_not_at_last_attempt += 1;
            }
            for entry in batch.iter() {
                l.fate.entry(tag_of(entry)).or_default().1 += 1;
            }
        })
        .build(move |batch| {
            let entries: Vec<(u8, u32)> = batch.iter().map(tag_of).collect();
            let sentinel = entries.iter().any(|e| e.0 == SENTINEL);
            // 0: success, 1: failure, 2: panic; decided before the lock is taken, so that a
            // panic never poisons the ledger.
            let outcome = if sentinel { 0 } else { rng.range(0..=4) % 3 };
            {
                let mut l = in_dispatch.lock().unwrap();
                l.calls += 1;
                if batch.attempt() > 1 {
                    l.retries += 1;
                    if l.last_failed.as_ref() != Some(&entries) {
                        l.retried_other_entries += 1;
                    }
                }
                match outcome {
                    0 => {
                        for e in &entries {
                            l.fate.entry(*e).or_default().0 += 1;
                        }
                        l.last_failed = None;
                    }
                    1 => l.errors += 1,
                    _ => l.panics += 1,
                }
                if outcome != 0 {
                    l.last_failed = Some(entries);
                }
            }
            match outcome {
                0 => Ok(()),
                1 => Err("collector refused the batch".into()),
                _ => std::panic::panic_any(INJECTED),
            }
        })
        .unwrap();

    let start = Instant::now();
    std::thread::scope(|s| {
        for p in 0..PRODUCERS {
            let d = &d;
            s.spawn(move || {
                let mut buf = [0u8; 32];
                for seq in 0..PER_PRODUCER {
                    put_tag(&mut buf, p, seq);
                    d.enqueue(&buf[..8 + (seq % 24) as usize]).unwrap();
                }
            });
        }
    });
    d.flush(Some(Duration::from_secs(60)))
        .expect("everything accepted is dispatched or dropped");
    // The worker survived every panic: a last entry is delivered.
    let mut sentinel = [0u8; 8];
    put_tag(&mut sentinel, SENTINEL, 0);
    d.enqueue(&sentinel).unwrap();
    d.shutdown(Some(Duration::from_secs(60)))
        .expect("shutdown drains");
    let took = start.elapsed();

    let l = ledger.lock().unwrap();
    let stats = d.stats();
    let total = PRODUCERS as u64 * PER_PRODUCER as u64;
    let mut delivered = 0u64;
    let mut failed = 0u64;
    let (mut lost, mut twice) = (0u64, 0u64);
    for p in 0..PRODUCERS {
        for seq in 0..PER_PRODUCER {
            let (ok, dropped) = l.fate.get(&(p, seq)).copied().unwrap_or((0, 0));
            delivered += ok as u64;
            failed += dropped as u64;
            match ok + dropped {
                0 => lost += 1,
                1 => {}
                _ => twice += 1,
            }
        }
    }
    eprintln!(
        "[faults at volume] entries {total}, calls {} (retries {}, failures {}, panics {}), \
         delivered {delivered}, dropped as failed {failed} in {} on_drop calls, lost {lost}, \
         delivered or dropped twice {twice}, retries with other entries {}, sentinel delivered \
         {}, total {took:.2?}",
        l.calls,
        l.retries,
        l.errors,
        l.panics,
        l.failed_drops,
        l.retried_other_entries,
        l.fate.get(&(SENTINEL, 0)).map_or(0, |f| f.0),
    );
    assert_eq!((lost, twice), (0, 0), "every entry exactly once");
    assert_eq!(delivered + failed, total);
    assert_eq!(
        l.fate.get(&(SENTINEL, 0)),
        Some(&(1, 0)),
        "the worker works after the panics"
    );
    assert!(
        l.panics > 0 && l.errors > 0 && failed > 0 && l.retries > 0,
        "the run did not exercise every fault"
    );
    assert_eq!(l.retried_other_entries, 0, "a retry carried other entries");
    assert_eq!(
        l.failed_drops_not_at_last_attempt, 0,
        "dropped before its last attempt"
    );
    assert_eq!(l.other_drops, 0, "drops other than Failed");
    assert_eq!(
        (
            stats.enqueued,
            stats.dispatched,
            stats.failed,
            stats.batches,
            stats.retries
        ),
        (total + 1, delivered + 1, failed, l.calls, l.retries),
        "stats disagree with what the callbacks saw: {stats:?}"
    );
    assert_eq!(
        (stats.evicted, stats.abandoned, stats.rejected),
        (0, 0, 0),
        "{stats:?}"
    );
    assert!(stats.is_consistent(), "{stats:?}");
}

/// Sets a flag when dropped: tells when the dispatcher freed the dispatch closure.
struct FreedFlag(Arc<AtomicBool>);

impl Drop for FreedFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_dispatch_blocked_forever_times_out_on_time_and_leaves_a_usable_handle() {
    let _watchdog = Watchdog::new("blocked dispatch", Duration::from_secs(120));
    let gate = Gate::new();
    let freed = Arc::new(AtomicBool::new(false));
    let flag = FreedFlag(freed.clone());
    let abandoned = Arc::new(Mutex::new(Vec::<(u8, u32)>::new()));
    let drop_threads = Arc::new(Mutex::new(Vec::new()));
    let (g, a, t) = (gate.clone(), abandoned.clone(), drop_threads.clone());
    let delivered = Arc::new(AtomicU64::new(0));
    let dl = delivered.clone();
    let d = Dispatcher::builder(Duration::from_millis(1))
        // (No assertion inside `on_drop`: a panic there is contained, so it would go unseen.)
        .on_drop(move |batch, reason| {
            t.lock()
                .unwrap()
                .push((std::thread::current().id(), reason));
            a.lock().unwrap().extend(batch.iter().map(tag_of));
        })
        .build(move |batch| {
            let _keep = &flag;
            g.pass(); // "forever": until the very end of the test
            dl.fetch_add(batch.len() as u64, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
    let mut first = [0u8; 8];
    put_tag(&mut first, 0, 0);
    d.enqueue(&first).unwrap();
    gate.wait_for_holder();

    // Producers keep enqueueing while the dispatch is stuck and a shutdown times out: each
    // ends on Closed, and what they got accepted is exactly what the deadline abandons.
    const PRODUCERS: u8 = 4;
    let (shutdown, accepted) = std::thread::scope(|s| {
        let producers: Vec<_> = (1..=PRODUCERS)
            .map(|p| {
                let d = &d;
                s.spawn(move || {
                    let mut buf = [0u8; 16];
                    let (mut accepted, mut full) = (Vec::new(), 0u64);
                    for seq in 0.. {
                        put_tag(&mut buf, p, seq);
                        match d.enqueue(&buf) {
                            Ok(()) => accepted.push((p, seq)),
                            Err(EnqueueError::QueueFull) => full += 1,
                            Err(EnqueueError::Closed) => break,
                            Err(err) => panic!("producer {p}: {err}"),
                        }
                    }
                    (accepted, full)
                })
            })
            .collect();
        // Let every producer get some entries in, then time the shutdown out.
        wait_until("every producer to have queued entries", || {
            d.stats().queued_entries >= 1000
        });
        let deadline = Duration::from_millis(300);
        let shutdown = timed("shutdown", deadline, || d.shutdown(Some(deadline)));
        let accepted: Vec<(Vec<(u8, u32)>, u64)> =
            producers.into_iter().map(|h| h.join().unwrap()).collect();
        (shutdown, accepted)
    });
    assert_eq!(shutdown.0, Err(ShutdownError::Timeout));
    let mut expected: Vec<(u8, u32)> = accepted.iter().flat_map(|a| a.0.clone()).collect();
    let full: u64 = accepted.iter().map(|a| a.1).sum();
    let mut got = abandoned.lock().unwrap().clone();
    expected.sort_unstable();
    got.sort_unstable();
    assert_eq!(
        got.len(),
        expected.len(),
        "abandoned entries vs accepted ones"
    );
    assert!(
        got == expected,
        "the deadline abandoned other entries than the queued ones"
    );
    assert!(
        drop_threads
            .lock()
            .unwrap()
            .iter()
            .all(|&d| d == (std::thread::current().id(), DropReason::ShutdownTimeout)),
        "only ShutdownTimeout drops, on the thread that called shutdown"
    );
    let after: Stats = d.stats();
    assert_eq!(
        (
            after.enqueued,
            after.abandoned,
            after.in_flight_entries,
            after.queued_entries,
            after.dispatched
        ),
        (expected.len() as u64 + 1, expected.len() as u64, 1, 0, 0),
        "{after:?}"
    );
    assert!(after.is_consistent(), "{after:?}");

    // The handle stays usable: every call returns its documented result, none hangs.
    let rejected_before = after.rejected;
    assert_eq!(d.enqueue(b"late"), Err(EnqueueError::Closed));
    assert_eq!(d.try_enqueue(b"late"), Err(EnqueueError::Closed));
    let short = Duration::from_millis(100);
    let flush = timed("flush after the timeout", short, || d.flush(Some(short)));
    assert_eq!(flush.0, Err(FlushError::Timeout));
    let again = timed("a second shutdown", short, || d.shutdown(Some(short)));
    assert_eq!(again.0, Err(ShutdownError::Timeout));
    assert_eq!(d.begin_shutdown(), Ok(()));
    let wait = timed("wait_shutdown", short, || d.wait_shutdown(Some(short)));
    assert_eq!(wait.0, Err(ShutdownError::Timeout));
    assert!(d.is_closed() && !d.is_finished());
    let now = d.stats();
    assert_eq!(now.rejected, rejected_before + 2, "{now:?}");
    assert_eq!(
        now.abandoned, after.abandoned,
        "nothing more to abandon: {now:?}"
    );
    assert!(now.is_consistent());

    // Dropping the handle does not wait for the stuck dispatch function...
    let start = Instant::now();
    drop(d);
    let drop_took = start.elapsed();
    assert!(
        drop_took <= LATE,
        "drop waited {drop_took:?} for the stuck callback"
    );
    assert!(
        !freed.load(Ordering::SeqCst),
        "freed while its callback still runs"
    );
    // ...and when the dispatch function finally returns, the worker finishes and frees it.
    gate.open();
    wait_until("the worker to free the dispatcher", || {
        freed.load(Ordering::SeqCst)
    });
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        1,
        "the batch in flight finished"
    );
    eprintln!(
        "[blocked dispatch] producers {PRODUCERS}, accepted while stuck {} (all abandoned to \
         on_drop at the deadline, on the caller's thread), queue-full {full}, shutdown Timeout \
         after {:.2?} (deadline 300ms), flush/shutdown/wait_shutdown Timeout after {:.2?}/\
         {:.2?}/{:.2?} (deadline 100ms), drop returned in {drop_took:.2?}, hangs 0",
        expected.len(),
        shutdown.1,
        flush.1,
        again.1,
        wait.1,
    );
}

#[test]
fn a_dispatcher_whose_every_call_panics_drops_everything_as_failed_and_drops_cleanly() {
    quiet_injected_panics();
    let _watchdog = Watchdog::new("always panicking", Duration::from_secs(120));
    let freed = Arc::new(AtomicBool::new(false));
    let flag = FreedFlag(freed.clone());
    let failed = Arc::new(AtomicU64::new(0));
    let (f, calls) = (failed.clone(), Arc::new(AtomicU64::new(0)));
    let c = calls.clone();
    const ENTRIES: u64 = 10_000;
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_batch_entries: 100,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(1),
            retry_backoff_max: Duration::from_millis(1),
            ..Options::default()
        })
        .on_drop(move |batch, reason| {
            // Counted only if dropped as failed after its third attempt.
            if (reason, batch.attempt()) == (DropReason::Failed, 3) {
                f.fetch_add(batch.len() as u64, Ordering::SeqCst);
            }
        })
        .build(move |_| {
            let _keep = &flag;
            c.fetch_add(1, Ordering::SeqCst);
            std::panic::panic_any(INJECTED)
        })
        .unwrap();
    for i in 0..ENTRIES {
        d.enqueue(&i.to_le_bytes()).unwrap();
    }
    let start = Instant::now();
    let stats_before_drop = d.stats();
    drop(d); // shuts down with no deadline: every batch gets its three attempts
    let took = start.elapsed();
    eprintln!(
        "[always panicking] entries {ENTRIES}, calls {} (all panicked), dropped as failed {}, \
         drop took {took:.2?}, closure freed {}",
        calls.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        freed.load(Ordering::SeqCst),
    );
    assert!(stats_before_drop.is_consistent());
    assert_eq!(failed.load(Ordering::SeqCst), ENTRIES);
    assert_eq!(
        calls.load(Ordering::SeqCst) % 3,
        0,
        "three attempts per batch"
    );
    assert!(calls.load(Ordering::SeqCst) >= 3 * ENTRIES / 100);
    assert!(
        freed.load(Ordering::SeqCst),
        "drop returned before freeing the closure"
    );
}
