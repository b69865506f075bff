//! Reliability, shutdown racing producers: 100 runs, each with 4-16 producers enqueueing
//! tagged entries while the main thread calls `shutdown` at a random moment. In every run each
//! entry is either accepted and delivered exactly once, or rejected with `Closed` (and a
//! producer that saw `Closed` is refused again on its next try); every shutdown completes
//! within its 1 s deadline; 0 hangs (a watchdog fails the run rather than letting it hang).
//!
//! The random moment is a count of accepted entries that the main thread waits for (the
//! producer that reaches it wakes it), sometimes followed by a yield, rather than a sleep: the
//! point of the race is where in the producers' streams the close lands, which a count
//! controls better than a timer on a loaded machine. Each producer offers at most 20 000
//! entries, so some runs close after some producers finished; the figures say how many
//! producers the close cut mid-stream. `ms_delay` is 1, 5 or 50 ms, so that the close finds
//! sometimes much queued, sometimes the worker asleep.
//!
//! Figures go to stderr: `cargo test --test reliability_shutdown -- --nocapture`.

mod reliability;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatcher_core::{Dispatcher, EnqueueError, Options};
use reliability::{Ledger, Rng, Watchdog, put_tag, tag_of};

const RUNS: u64 = 100;
/// Entries a producer offers before it stops on its own (if the close has not come by then).
/// A bound, so that a close that lands late (the main thread waits for a CPU behind up to
/// 16 producers) does not leave a long queue to drain.
const PER_PRODUCER: u32 = 20_000;
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(1);

/// Figures of one run.
struct Run {
    producers: usize,
    accepted: u64,
    closed: u64,
    /// Producers that saw `Closed` before offering all their entries.
    cut: usize,
    shutdown_took: Duration,
}

fn one_run(seed: u64, run: u64) -> Run {
    let mut rng = Rng::stream(seed, run);
    // Several producers per core, so that the close often finds some mid-stream.
    let producers = rng.range(4..=16) as usize;
    let ms_delay = [1, 5, 50][rng.range(0..=2) as usize];
    let close_after = rng.range(0..=producers as u64 * PER_PRODUCER as u64 * 3 / 4);
    let yield_first = rng.one_in(2);
    let context = format!("seed {seed}, run {run}");

    let ledger = Arc::new(Mutex::new(Ledger::new(producers, 1 << 12)));
    let checker = ledger.clone();
    // No queue limit: the only refusal this test expects is `Closed`.
    let d = Dispatcher::builder(Duration::from_millis(ms_delay))
        .options(Options {
            max_queue_bytes: 0,
            ..Options::default()
        })
        .build(move |batch| {
            let mut ledger = checker.lock().unwrap();
            for entry in batch.iter() {
                let (p, seq) = tag_of(entry);
                ledger.note(p, seq);
            }
            Ok(())
        })
        .unwrap();

    let accepted_so_far = AtomicU64::new(0);
    let main = std::thread::current();
    let (accepted, closed, shutdown_took) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let (d, accepted_so_far, context) = (&d, &accepted_so_far, &context);
                let main = main.clone();
                s.spawn(move || {
                    let mut buf = [0u8; 64];
                    let len = 8 + p * 3; // producers' entries differ in size
                    for seq in 0..PER_PRODUCER {
                        put_tag(&mut buf, p as u8, seq);
                        match d.enqueue(&buf[..len]) {
                            Ok(()) => {
                                if accepted_so_far.fetch_add(1, Ordering::Relaxed) + 1
                                    == close_after
                                {
                                    main.unpark();
                                }
                            }
                            Err(EnqueueError::Closed) => {
                                // Closed is final: a later enqueue is refused too.
                                let again = d.enqueue(&buf[..len]);
                                assert_eq!(
                                    again,
                                    Err(EnqueueError::Closed),
                                    "{context}: accepted after Closed"
                                );
                                return (seq, 2);
                            }
                            Err(err) => panic!("{context}: producer {p} entry {seq}: {err}"),
                        }
                    }
                    (PER_PRODUCER, 0)
                })
            })
            .collect();
        // Wait (bounded) for the chosen point in the producers' stream. The producer that
        // reaches it unparks this thread: a woken thread gets the CPU sooner than one that
        // spins against 16 producers on 2 cores.
        let wait_deadline = Instant::now() + Duration::from_secs(30);
        while accepted_so_far.load(Ordering::Relaxed) < close_after {
            let now = Instant::now();
            assert!(now < wait_deadline, "{context}: producers stalled");
            std::thread::park_timeout(wait_deadline - now);
        }
        if yield_first {
            std::thread::yield_now();
        }
        let start = Instant::now();
        let result = d.shutdown(Some(SHUTDOWN_DEADLINE));
        let took = start.elapsed();
        assert_eq!(
            result,
            Ok(()),
            "{context}: shutdown did not finish within {SHUTDOWN_DEADLINE:?} (took {took:?})"
        );
        let results: Vec<(u32, u64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (
            results.iter().map(|r| r.0).collect::<Vec<u32>>(),
            results.iter().map(|r| r.1).sum::<u64>(),
            took,
        )
    });

    // Each producer's accepted entries are exactly its first `accepted[p]`: delivered once
    // each, in order, and nothing beyond them was delivered.
    let ledger = ledger.lock().unwrap();
    let total: u64 = accepted.iter().map(|&n| n as u64).sum();
    let lost = ledger.missing(&accepted);
    let phantom = ledger.beyond(&accepted);
    assert_eq!(lost, 0, "{context}: accepted entries lost");
    assert_eq!(ledger.duplicates, 0, "{context}: duplicates");
    assert_eq!(ledger.reordered, 0, "{context}: reordered");
    assert_eq!(phantom, 0, "{context}: rejected entries delivered");
    assert_eq!(ledger.entries, total, "{context}");

    let stats = d.stats();
    assert!(stats.is_consistent(), "{context}: {stats:?}");
    assert_eq!(
        (stats.enqueued, stats.dispatched, stats.rejected),
        (total, total, closed),
        "{context}: {stats:?}"
    );
    assert_eq!(
        (
            stats.failed,
            stats.abandoned,
            stats.queued_entries,
            stats.in_flight_entries
        ),
        (0, 0, 0, 0),
        "{context}: {stats:?}"
    );
    Run {
        producers,
        accepted: total,
        closed,
        cut: accepted.iter().filter(|&&n| n < PER_PRODUCER).count(),
        shutdown_took,
    }
}

#[test]
fn a_shutdown_at_a_random_moment_loses_nothing_accepted_and_never_hangs() {
    let seed = reliability::seed("random shutdowns");
    let start = Instant::now();
    let (mut accepted, mut closed, mut producers, mut cut) = (0u64, 0u64, 0usize, 0usize);
    let mut slowest = Duration::ZERO;
    for run in 0..RUNS {
        let _watchdog = Watchdog::new(
            &format!("random shutdown run {run} (seed {seed})"),
            Duration::from_secs(60),
        );
        let r = one_run(seed, run);
        accepted += r.accepted;
        closed += r.closed;
        producers += r.producers;
        cut += r.cut;
        slowest = slowest.max(r.shutdown_took);
    }
    eprintln!(
        "[random shutdowns] runs {RUNS}, producers {producers} ({cut} cut mid-stream by the \
         close), accepted {accepted} (all delivered exactly once), rejected with Closed \
         {closed}, lost 0, duplicates 0, hangs 0, slowest shutdown {slowest:.2?} (deadline \
         {SHUTDOWN_DEADLINE:?}), total {:.2?}",
        start.elapsed()
    );
    // Not a race at all if the close always came after the producers finished.
    assert!(cut > 0, "the close never found a producer mid-stream");
}
