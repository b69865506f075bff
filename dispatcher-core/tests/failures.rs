//! Failed dispatches: no retry by default, opt-in retries with backoff, panics.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Gate, Recorder, entry, wait_until};
use dispatcher_core::{Dispatcher, DropReason, Options};

#[test]
fn a_failed_batch_is_not_retried_by_default_and_goes_to_on_drop() {
    let rec = Recorder::new();
    let r = rec.clone();
    let d = Dispatcher::builder(Duration::from_millis(5))
        .on_drop(rec.on_drop())
        .build(move |batch| {
            r.record(batch);
            Err("collector down".into())
        })
        .unwrap();
    d.enqueue(&entry(1)).unwrap();
    d.enqueue(&entry(2)).unwrap();
    d.flush(None).unwrap();
    assert_eq!(rec.calls().len(), 1);
    assert_eq!(rec.dropped(DropReason::Failed), vec![entry(1), entry(2)]);
    let drops = rec.drops.lock().unwrap().clone();
    assert_eq!(
        drops[0].1,
        rec.calls()[0].thread,
        "FAILED drops run on the dispatcher thread"
    );
    assert_eq!(drops[0].2, 1, "the attempt that failed");
    let s = d.stats();
    assert_eq!((s.failed, s.dispatched, s.batches, s.retries), (2, 0, 1, 0));
    assert!(s.is_consistent());
}

#[test]
fn retries_back_off_exponentially_and_redeliver_the_same_entries() {
    let rec = Recorder::new();
    let r = rec.clone();
    let backoff = Duration::from_millis(40);
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_attempts: 3,
            retry_backoff: backoff,
            retry_backoff_max: Duration::from_secs(1),
            ..Options::default()
        })
        .on_drop(rec.on_drop())
        .build(move |batch| {
            r.record(batch);
            if batch.attempt() < 3 {
                Err("try again".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
    d.enqueue(&entry(1)).unwrap();
    let calls = rec.wait_calls(3);
    assert_eq!(
        calls.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(calls.iter().all(|c| c.entries == vec![entry(1)]));
    // Jitter keeps each wait within [b/2, b]: at least 20 ms, then at least 40 ms.
    assert!(calls[1].at - calls[0].at >= backoff / 2);
    assert!(calls[2].at - calls[1].at >= backoff);
    d.flush(None).unwrap();
    let s = d.stats();
    assert_eq!((s.dispatched, s.failed, s.batches, s.retries), (1, 0, 3, 2));
    assert!(rec.drops.lock().unwrap().is_empty());
}

#[test]
fn newer_entries_wait_behind_a_batch_being_retried() {
    let rec = Recorder::new();
    let r = rec.clone();
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_attempts: 2,
            retry_backoff: Duration::from_millis(30),
            ..Options::default()
        })
        .on_drop(rec.on_drop())
        .build(move |batch| {
            r.record(batch);
            if batch.attempt() == 1 && batch.iter().any(|e| e == entry(1)) {
                Err("once".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
    d.enqueue(&entry(1)).unwrap();
    rec.wait_calls(1);
    d.enqueue(&entry(2)).unwrap(); // queued during the backoff, within the bounds
    d.flush(None).unwrap();
    assert_eq!(
        rec.delivered(),
        vec![entry(1), entry(1), entry(2)],
        "order: the retry first"
    );
}

#[test]
fn exhausted_retries_drop_as_failed_with_the_last_attempt() {
    let rec = Recorder::new();
    let r = rec.clone();
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_attempts: 2,
            retry_backoff: Duration::from_millis(5),
            retry_backoff_max: Duration::from_millis(5),
            ..Options::default()
        })
        .on_drop(rec.on_drop())
        .build(move |batch| {
            r.record(batch);
            Err("down".into())
        })
        .unwrap();
    d.enqueue(&entry(7)).unwrap();
    d.flush(None).unwrap();
    let drops = rec.drops.lock().unwrap().clone();
    assert_eq!(drops.len(), 1);
    assert_eq!(
        (drops[0].0, drops[0].2, drops[0].3.clone()),
        (DropReason::Failed, 2, vec![entry(7)])
    );
    let s = d.stats();
    assert_eq!((s.failed, s.batches, s.retries), (1, 2, 1));
}

#[test]
fn a_panicking_dispatch_function_is_a_failure_and_the_worker_survives() {
    let rec = Recorder::new();
    let calls = Arc::new(AtomicU32::new(0));
    let (r, c) = (rec.clone(), calls.clone());
    let d = Dispatcher::builder(Duration::from_millis(1))
        .on_drop(rec.on_drop())
        .build(move |batch| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("bug in the callback");
            }
            r.record(batch);
            Ok(())
        })
        .unwrap();
    d.enqueue(&entry(1)).unwrap();
    d.flush(None).unwrap();
    d.enqueue(&entry(2)).unwrap();
    d.flush(None).unwrap();
    assert_eq!(rec.dropped(DropReason::Failed), vec![entry(1)]);
    assert_eq!(rec.delivered(), vec![entry(2)]);
}

#[test]
fn a_panicking_on_drop_is_contained() {
    let d = Dispatcher::builder(Duration::from_millis(1))
        .on_drop(|_, _| panic!("bug in on_drop"))
        .build(|_| Err("no".into()))
        .unwrap();
    d.enqueue(b"x").unwrap();
    d.flush(None).unwrap();
    d.enqueue(b"y").unwrap();
    d.flush(None).unwrap();
    assert_eq!(d.stats().failed, 2);
}

#[test]
fn a_shutdown_deadline_stops_retries() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let (r, g) = (rec.clone(), gate.clone());
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_attempts: 100,
            retry_backoff: Duration::from_secs(3600),
            retry_backoff_max: Duration::from_secs(3600),
            ..Options::default()
        })
        .on_drop(rec.on_drop())
        .build(move |batch| {
            r.record(batch);
            g.pass();
            Err("down".into())
        })
        .unwrap();
    d.enqueue(&entry(1)).unwrap();
    gate.open();
    rec.wait_calls(1);
    wait_until("the failure to be counted", || d.stats().batches == 1);
    assert_eq!(
        d.shutdown(Some(Duration::from_millis(50))),
        Err(dispatcher_core::ShutdownError::Timeout)
    );
    wait_until("the retry to be given up", || d.stats().failed == 1);
    assert_eq!(rec.dropped(DropReason::Failed), vec![entry(1)]);
    assert_eq!(rec.calls().len(), 1, "no retry after the deadline");
}
