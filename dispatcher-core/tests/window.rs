//! When batches are dispatched: windows, start spacing, the size trigger, and sleeping.

mod common;

use std::time::{Duration, Instant};

use common::{Recorder, entry, wait_until};
use dispatcher_core::{Dispatcher, Options};

const DELAY: Duration = Duration::from_millis(30);

#[test]
fn first_entry_opens_a_window_and_its_end_dispatches_everything() {
    let rec = Recorder::new();
    let d = Dispatcher::builder(DELAY).build(rec.ok()).unwrap();
    let opened = Instant::now();
    for i in 0..5 {
        d.enqueue(&entry(i)).unwrap();
    }
    let calls = rec.wait_calls(1);
    assert!(
        calls[0].at - opened >= DELAY,
        "dispatched {:?} after the first entry",
        calls[0].at - opened
    );
    assert_eq!(calls[0].entries, (0..5).map(entry).collect::<Vec<_>>());
    assert_eq!(calls[0].bytes, 5 * entry(0).len());
    assert_eq!(calls[0].attempt, 1);
}

#[test]
fn starts_are_at_least_ms_delay_apart_and_never_empty() {
    let rec = Recorder::new();
    let d = Dispatcher::builder(DELAY).build(rec.ok()).unwrap();
    let producer_deadline = Instant::now() + DELAY * 8;
    let mut i = 0;
    while Instant::now() < producer_deadline {
        d.enqueue(&entry(i)).unwrap();
        i += 1;
        std::thread::yield_now();
    }
    d.shutdown(None).unwrap();
    let calls = rec.calls();
    assert!(
        calls.len() >= 3,
        "expected several windows, got {}",
        calls.len()
    );
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // The final batch comes from shutdown, which does not wait.
        if pair[1].at < calls.last().unwrap().at {
            assert!(gap >= DELAY, "two starts {gap:?} apart");
        }
    }
    assert!(
        calls.iter().all(|c| !c.entries.is_empty()),
        "an empty batch was dispatched"
    );
    assert_eq!(rec.delivered(), (0..i).map(entry).collect::<Vec<_>>());
}

#[test]
fn callbacks_run_one_at_a_time_on_the_dispatcher_thread() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let rec = Recorder::new();
    let running = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicUsize::new(0));
    let (r, o, rc) = (running.clone(), overlap.clone(), rec.clone());
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_batch_entries: 3,
            ..Options::default()
        })
        .build(move |batch| {
            if r.fetch_add(1, Ordering::SeqCst) != 0 {
                o.fetch_add(1, Ordering::SeqCst);
            }
            rc.record(batch);
            std::thread::yield_now();
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let d = &d;
            s.spawn(move || (0..300).for_each(|i| d.enqueue(&entry(t * 1000 + i)).unwrap()));
        }
    });
    d.flush(None).unwrap();
    let calls = rec.calls();
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "two callbacks overlapped"
    );
    let me = std::thread::current().id();
    let worker = calls[0].thread;
    assert_ne!(worker, me);
    assert!(
        calls.iter().all(|c| c.thread == worker),
        "callbacks ran on more than one thread"
    );
    assert_eq!(rec.delivered().len(), 1200);
}

#[test]
fn a_full_batch_goes_without_waiting_for_its_window() {
    let rec = Recorder::new();
    let d = Dispatcher::builder(Duration::from_secs(3600))
        .options(Options {
            max_batch_entries: 10,
            ..Options::default()
        })
        .build(rec.ok())
        .unwrap();
    for i in 0..25 {
        d.enqueue(&entry(i)).unwrap();
    }
    let calls = rec.wait_calls(2);
    assert_eq!(calls[0].entries, (0..10).map(entry).collect::<Vec<_>>());
    assert_eq!(calls[1].entries, (10..20).map(entry).collect::<Vec<_>>());
    // The partial batch waits for its (hour-long) window.
    assert_eq!(d.stats().queued_entries, 5);
    d.flush(None).unwrap();
    assert_eq!(
        rec.calls()[2].entries,
        (20..25).map(entry).collect::<Vec<_>>()
    );
}

#[test]
fn a_byte_limit_splits_batches_and_triggers_too() {
    let rec = Recorder::new();
    let d = Dispatcher::builder(Duration::from_secs(3600))
        .options(Options {
            max_batch_bytes: 100,
            ..Options::default()
        })
        .build(rec.ok())
        .unwrap();
    for _ in 0..4 {
        d.enqueue(&[7u8; 30]).unwrap(); // 120 bytes: one full batch of 3 (90 bytes) at least
    }
    let calls = rec.wait_calls(1);
    assert_eq!(calls[0].entries.len(), 3);
    assert_eq!(calls[0].bytes, 90);
    d.flush(None).unwrap();
    assert!(rec.calls().iter().all(|c| c.bytes <= 100));
    assert_eq!(rec.delivered().len(), 4);
}

#[test]
fn everything_queued_at_a_window_end_goes_back_to_back() {
    let rec = Recorder::new();
    let d = Dispatcher::builder(Duration::from_millis(200))
        .options(Options {
            max_batch_entries: 4,
            ..Options::default()
        })
        .build(rec.ok())
        .unwrap();
    for i in 0..3 {
        d.enqueue(&entry(i)).unwrap();
    }
    let calls = rec.wait_calls(1);
    assert_eq!(
        calls[0].entries.len(),
        3,
        "a partial batch waits for the window, then goes whole"
    );
    // Now 10 entries: two full batches go at once (size trigger), the last 2 at the window end.
    let sent = Instant::now();
    for i in 3..13 {
        d.enqueue(&entry(i)).unwrap();
    }
    let calls = rec.wait_calls(4);
    assert_eq!(calls[3].entries, (11..13).map(entry).collect::<Vec<_>>());
    assert!(calls[3].at - sent >= Duration::from_millis(200) - Duration::from_millis(1));
}

#[test]
fn an_idle_dispatcher_does_not_wake_up() {
    let rec = Recorder::new();
    let d = Dispatcher::builder(Duration::from_millis(5))
        .build(rec.ok())
        .unwrap();
    d.enqueue(b"x").unwrap();
    rec.wait_calls(1);
    wait_until("the worker to go back to sleep", || {
        d.stats().in_flight_entries == 0
    });
    // Let it settle into its indefinite sleep, then watch it for a while.
    std::thread::sleep(Duration::from_millis(50));
    let before = d.worker_wakeups();
    std::thread::sleep(Duration::from_millis(300)); // observing absence of activity, not syncing
    assert_eq!(d.worker_wakeups(), before, "the idle worker woke up");
    // And it still wakes for new work.
    d.enqueue(b"y").unwrap();
    rec.wait_calls(2);
}

#[test]
fn batches_from_several_shards_respect_the_byte_limit() {
    // Regression: a shard's buffer that filled a batch exactly let the next one in whole.
    let rec = Recorder::new();
    let gate = std::sync::Arc::new(std::sync::Barrier::new(2));
    let (r, g) = (rec.clone(), gate.clone());
    let first = std::sync::atomic::AtomicBool::new(true);
    let d = Dispatcher::builder(Duration::from_millis(20))
        .options(Options {
            max_batch_bytes: 100,
            ..Options::default()
        })
        .build(move |batch| {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                g.wait(); // the test enqueues while this batch is in flight
                g.wait();
            }
            r.record(batch);
            Ok(())
        })
        .unwrap();
    d.enqueue(b"hold").unwrap();
    gate.wait();
    std::thread::scope(|s| {
        for t in 0..3u8 {
            let d = &d;
            s.spawn(move || (0..10).for_each(|_| d.enqueue(&[t; 10]).unwrap()));
        }
    });
    gate.wait();
    d.flush(None).unwrap();
    let calls = rec.calls();
    assert_eq!(rec.delivered().len(), 31);
    assert!(
        calls.iter().all(|c| c.bytes <= 100),
        "batch sizes: {:?}",
        calls.iter().map(|c| c.bytes).collect::<Vec<_>>()
    );
}
