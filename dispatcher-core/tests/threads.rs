//! Many producers: nothing lost, nothing duplicated, per-thread order, exact stats.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::Recorder;
use dispatcher_core::{Dispatcher, Options, Overflow, Stats};

fn tagged(thread: u32, seq: u32) -> [u8; 8] {
    let mut e = [0; 8];
    e[..4].copy_from_slice(&thread.to_le_bytes());
    e[4..].copy_from_slice(&seq.to_le_bytes());
    e
}

#[test]
fn eight_threads_lose_nothing_and_keep_their_order() {
    const THREADS: u32 = 8;
    const PER_THREAD: u32 = 20_000;
    let rec = Recorder::new();
    let d = Dispatcher::builder(Duration::from_millis(2))
        .options(Options {
            max_queue_bytes: 0,
            max_batch_entries: 1000,
            ..Options::default()
        })
        .build(rec.ok())
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let d = &d;
            s.spawn(move || {
                for seq in 0..PER_THREAD {
                    d.enqueue(&tagged(t, seq)).unwrap();
                }
            });
        }
    });
    d.shutdown(None).unwrap();
    let mut next: HashMap<u32, u32> = HashMap::new();
    for e in rec.delivered() {
        let t = u32::from_le_bytes(e[..4].try_into().unwrap());
        let seq = u32::from_le_bytes(e[4..].try_into().unwrap());
        let expected = next.entry(t).or_insert(0);
        assert_eq!(seq, *expected, "thread {t}: got {seq}, expected {expected}");
        *expected += 1;
    }
    assert_eq!(next.len(), THREADS as usize);
    assert!(
        next.values().all(|&n| n == PER_THREAD),
        "lost entries: {next:?}"
    );
    let s = d.stats();
    assert_eq!(
        (s.enqueued, s.dispatched),
        ((THREADS * PER_THREAD) as u64, (THREADS * PER_THREAD) as u64)
    );
    assert!(rec.calls().iter().all(|c| c.entries.len() <= 1000));
}

#[test]
fn every_stats_snapshot_is_consistent_under_load_and_counters_never_go_back() {
    let failures = Arc::new(AtomicU64::new(0));
    let f = failures.clone();
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_queue_entries: 500,
            max_batch_entries: 64,
            overflow: Overflow::DropOldest,
            max_attempts: 2,
            retry_backoff: Duration::from_millis(1),
            ..Options::default()
        })
        .on_drop(|_, _| {})
        .build(move |_| {
            // Every third call fails.
            if f.fetch_add(1, Ordering::Relaxed) % 3 == 0 {
                Err("flaky".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
    let stop = AtomicBool::new(false);
    let monotone = |a: &Stats, b: &Stats| {
        b.enqueued >= a.enqueued
            && b.rejected >= a.rejected
            && b.dispatched >= a.dispatched
            && b.failed >= a.failed
            && b.evicted >= a.evicted
            && b.abandoned >= a.abandoned
            && b.batches >= a.batches
            && b.retries >= a.retries
    };
    let snapshots = std::thread::scope(|s| {
        let checker = s.spawn(|| {
            let mut last = Stats::default();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let now = d.stats();
                assert!(now.is_consistent(), "inconsistent snapshot: {now:?}");
                assert!(
                    monotone(&last, &now),
                    "a counter went back: {last:?} -> {now:?}"
                );
                last = now;
                n += 1;
            }
            n
        });
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let d = &d;
                s.spawn(move || {
                    (0..50_000u32).for_each(|i| {
                        let _ = d.enqueue(&tagged(t, i));
                    })
                })
            })
            .collect();
        producers.into_iter().for_each(|p| p.join().unwrap());
        d.shutdown(None).unwrap();
        stop.store(true, Ordering::Relaxed);
        checker.join().unwrap()
    });
    let s = d.stats();
    assert!(s.is_consistent());
    assert_eq!(s.enqueued + s.rejected, 200_000);
    assert_eq!((s.queued_entries, s.in_flight_entries), (0, 0));
    assert!(
        s.evicted > 0 && s.failed + s.retries > 0,
        "the load did not exercise eviction and failure: {s:?}"
    );
    assert!(snapshots > 10, "only {snapshots} snapshots taken");
}

#[test]
fn racing_producers_at_a_byte_bound_never_strand_an_entry() {
    // Several producers race for room that only some of them get. The ones that lose must
    // not leave the winners' entries queued with the worker asleep (every round must be
    // delivered by its window, long before the generous deadline).
    let rec = Recorder::new();
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_queue_bytes: 100,
            ..Options::default()
        })
        .build(rec.ok())
        .unwrap();
    let barrier = std::sync::Barrier::new(4);
    let mut accepted = 0u64;
    for _round in 0..500 {
        let results: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (d, barrier) = (&d, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        d.enqueue(&[1; 60]).is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        accepted += results.iter().filter(|&&ok| ok).count() as u64;
        common::wait_until("the round to be dispatched without a flush", || {
            d.stats().dispatched == accepted
        });
    }
}

#[test]
fn shutdown_racing_producers_never_strands_an_accepted_entry() {
    for round in 0..300u32 {
        let rec = Recorder::new();
        let d = Dispatcher::builder(Duration::from_millis(1))
            .build(rec.ok())
            .unwrap();
        let accepted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..3 {
                let (d, accepted) = (&d, &accepted);
                s.spawn(move || {
                    for seq in 0..200 {
                        if d.enqueue(&tagged(t, seq)).is_ok() {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            if round % 2 == 0 {
                std::thread::yield_now();
            }
            d.shutdown(Some(Duration::from_secs(20))).unwrap();
        });
        let s = d.stats();
        assert_eq!(
            (s.dispatched, s.queued_entries),
            (accepted.load(Ordering::Relaxed), 0),
            "round {round}: an accepted entry was left behind: {s:?}"
        );
        assert_eq!(rec.delivered().len() as u64, s.dispatched);
    }
}
