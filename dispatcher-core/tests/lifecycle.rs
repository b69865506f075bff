//! flush, shutdown, drop, and calls made from inside the dispatch function.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use common::{Gate, Recorder, entry, wait_until};
use dispatcher_core::{Dispatcher, DropReason, EnqueueError, FlushError, Options, ShutdownError};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn flush_dispatches_at_once_and_waits_for_everything_accepted_before() {
    let rec = Recorder::new();
    let d = Dispatcher::builder(HOUR)
        .options(Options {
            max_batch_entries: 7,
            ..Options::default()
        })
        .build(rec.ok())
        .unwrap();
    for i in 0..20 {
        d.enqueue(&entry(i)).unwrap();
    }
    let start = Instant::now();
    d.flush(Some(Duration::from_secs(30))).unwrap();
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(rec.delivered(), (0..20).map(entry).collect::<Vec<_>>());
    let s = d.stats();
    assert_eq!(
        (s.dispatched, s.queued_entries, s.in_flight_entries),
        (20, 0, 0)
    );
    // Nothing queued: returns at once.
    d.flush(Some(Duration::ZERO)).unwrap();
}

#[test]
fn flush_times_out_while_the_dispatch_function_is_stuck() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = Dispatcher::builder(Duration::from_millis(1))
        .build(rec.gated(&gate))
        .unwrap();
    d.enqueue(&entry(1)).unwrap();
    gate.wait_for_holder();
    d.enqueue(&entry(2)).unwrap();
    let start = Instant::now();
    assert_eq!(
        d.flush(Some(Duration::from_millis(50))),
        Err(FlushError::Timeout)
    );
    assert!(start.elapsed() >= Duration::from_millis(50));
    gate.open();
    d.flush(None).unwrap();
    assert_eq!(rec.delivered(), vec![entry(1), entry(2)]);
}

#[test]
fn shutdown_drains_refuses_new_entries_and_is_idempotent() {
    let rec = Recorder::new();
    let d = Dispatcher::builder(HOUR).build(rec.ok()).unwrap();
    for i in 0..10 {
        d.enqueue(&entry(i)).unwrap();
    }
    d.shutdown(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(rec.delivered().len(), 10);
    assert_eq!(d.enqueue(b"late"), Err(EnqueueError::Closed));
    d.shutdown(None).unwrap();
    d.shutdown(Some(Duration::ZERO)).unwrap();
    d.flush(Some(Duration::ZERO)).unwrap();
    let s = d.stats();
    assert_eq!((s.enqueued, s.dispatched, s.rejected), (10, 10, 1));
}

#[test]
fn concurrent_shutdowns_all_return_after_the_drain() {
    let rec = Recorder::new();
    let d = Dispatcher::builder(HOUR).build(rec.ok()).unwrap();
    for i in 0..100 {
        d.enqueue(&entry(i)).unwrap();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| d.shutdown(None))).collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), Ok(()));
            assert_eq!(
                rec.delivered().len(),
                100,
                "a shutdown returned before the drain"
            );
        }
    });
}

#[test]
fn a_shutdown_deadline_abandons_the_queue_to_on_drop_on_the_calling_thread() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = Dispatcher::builder(Duration::from_millis(1))
        .on_drop(rec.on_drop())
        .build(rec.gated(&gate))
        .unwrap();
    d.enqueue(&entry(0)).unwrap();
    gate.wait_for_holder();
    for i in 1..=3 {
        d.enqueue(&entry(i)).unwrap();
    }
    let start = Instant::now();
    assert_eq!(
        d.shutdown(Some(Duration::from_millis(60))),
        Err(ShutdownError::Timeout)
    );
    assert!(start.elapsed() >= Duration::from_millis(60));
    let drops = rec.drops.lock().unwrap().clone();
    assert_eq!(drops.len(), 1);
    assert_eq!(drops[0].0, DropReason::ShutdownTimeout);
    assert_eq!(drops[0].1, std::thread::current().id());
    assert_eq!(drops[0].2, 0);
    assert_eq!(drops[0].3, (1..=3).map(entry).collect::<Vec<_>>());
    let s = d.stats();
    assert_eq!(
        (s.abandoned, s.in_flight_entries, s.queued_entries),
        (3, 1, 0)
    );
    assert!(s.is_consistent());
    // The batch in flight still finishes.
    gate.open();
    d.shutdown(None).unwrap();
    assert_eq!(rec.delivered(), vec![entry(0)]);
    assert_eq!(d.stats().dispatched, 1);
}

#[test]
fn drop_delivers_everything_then_frees_the_callbacks() {
    struct FreedFlag(Arc<AtomicBool>);
    impl Drop for FreedFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let rec = Recorder::new();
    let freed = Arc::new(AtomicBool::new(false));
    let flag = FreedFlag(freed.clone());
    let r = rec.clone();
    let d = Dispatcher::builder(HOUR)
        .build(move |batch| {
            let _keep = &flag;
            r.record(batch);
            Ok(())
        })
        .unwrap();
    for i in 0..50 {
        d.enqueue(&entry(i)).unwrap();
    }
    drop(d);
    assert_eq!(rec.delivered().len(), 50);
    assert!(
        freed.load(Ordering::SeqCst),
        "the dispatch closure outlived the dispatcher"
    );
}

#[test]
fn drop_after_a_timed_out_shutdown_does_not_wait_for_a_stuck_callback() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let freed = Arc::new(AtomicBool::new(false));
    struct FreedFlag(Arc<AtomicBool>);
    impl Drop for FreedFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = FreedFlag(freed.clone());
    let (r, g) = (rec.clone(), gate.clone());
    let d = Dispatcher::builder(Duration::from_millis(1))
        .build(move |batch| {
            let _keep = &flag;
            g.pass();
            r.record(batch);
            Ok(())
        })
        .unwrap();
    d.enqueue(&entry(0)).unwrap();
    gate.wait_for_holder();
    assert_eq!(
        d.shutdown(Some(Duration::from_millis(20))),
        Err(ShutdownError::Timeout)
    );
    let start = Instant::now();
    drop(d);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "drop waited for the stuck callback"
    );
    assert!(
        !freed.load(Ordering::SeqCst),
        "freed while a callback still runs"
    );
    gate.open();
    wait_until("the worker to free the dispatcher", || {
        freed.load(Ordering::SeqCst)
    });
    assert_eq!(rec.delivered(), vec![entry(0)]);
}

/// A dispatcher whose dispatch function can reach its own handle.
fn self_referencing(
    f: impl Fn(&Dispatcher) + Send + Sync + 'static,
) -> (Arc<Dispatcher>, Arc<Recorder>) {
    let rec = Recorder::new();
    let r = rec.clone();
    let d = Arc::new_cyclic(|weak: &Weak<Dispatcher>| {
        let weak = weak.clone();
        Dispatcher::builder(Duration::from_millis(1))
            .build(move |batch| {
                r.record(batch);
                if let Some(d) = weak.upgrade() {
                    f(&d);
                }
                Ok(())
            })
            .unwrap()
    });
    (d, rec)
}

#[test]
fn inside_the_callback_enqueue_works_and_flush_and_shutdown_refuse() {
    let results = Arc::new(Mutex::new(None));
    let res = results.clone();
    let once = AtomicBool::new(false);
    let (d, rec) = self_referencing(move |d| {
        if once.swap(true, Ordering::SeqCst) {
            return;
        }
        let start = Instant::now();
        let flush = d.flush(None);
        let shutdown = d.shutdown(None);
        let enqueue = d.enqueue(b"from inside");
        *res.lock().unwrap() = Some((flush, shutdown, enqueue, start.elapsed()));
    });
    d.enqueue(b"outside").unwrap();
    wait_until("the callback to run", || results.lock().unwrap().is_some());
    let (flush, shutdown, enqueue, took) = results.lock().unwrap().take().unwrap();
    assert_eq!(flush, Err(FlushError::Reentrant));
    assert_eq!(shutdown, Err(ShutdownError::Reentrant));
    assert_eq!(enqueue, Ok(()));
    assert!(took < Duration::from_secs(1));
    d.flush(None).unwrap();
    assert_eq!(
        rec.delivered(),
        vec![b"outside".to_vec(), b"from inside".to_vec()]
    );
}

#[test]
fn dropping_the_last_handle_inside_the_callback_is_deferred() {
    let rec = Recorder::new();
    let holder: Arc<Mutex<Option<Arc<Dispatcher>>>> = Arc::new(Mutex::new(None));
    let calls = Arc::new(AtomicUsize::new(0));
    let (r, h, c) = (rec.clone(), holder.clone(), calls.clone());
    let d = Arc::new(
        Dispatcher::builder(Duration::from_millis(1))
            .build(move |batch| {
                r.record(batch);
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Drop the only handle from inside the callback.
                    let last = h.lock().unwrap().take();
                    drop(last);
                }
                Ok(())
            })
            .unwrap(),
    );
    d.enqueue(b"one").unwrap();
    let weak = Arc::downgrade(&d);
    *holder.lock().unwrap() = Some(d);
    wait_until("the handle to be dropped inside the callback", || {
        weak.strong_count() == 0
    });
    // Entries queued before the drop are still delivered by the detached worker: none here
    // (the handle is gone, so nothing more can be enqueued), and the worker exits cleanly.
    wait_until("the first batch", || rec.calls().len() == 1);
    assert_eq!(rec.delivered(), vec![b"one".to_vec()]);
}

#[test]
fn a_shutdown_can_be_begun_and_waited_for_in_slices_without_abandoning() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = Dispatcher::builder(Duration::from_millis(1))
        .on_drop(rec.on_drop())
        .build(rec.gated(&gate))
        .unwrap();
    d.enqueue(&entry(0)).unwrap();
    gate.wait_for_holder();
    d.enqueue(&entry(1)).unwrap();
    d.begin_shutdown().unwrap();
    assert_eq!(d.enqueue(b"late"), Err(EnqueueError::Closed));
    for _ in 0..3 {
        assert_eq!(
            d.wait_shutdown(Some(Duration::from_millis(10))),
            Err(ShutdownError::Timeout)
        );
    }
    assert_eq!(d.stats().abandoned, 0, "wait_shutdown abandons nothing");
    gate.open();
    d.wait_shutdown(None).unwrap();
    assert_eq!(rec.delivered(), vec![entry(0), entry(1)]);
}

#[test]
fn detach_returns_at_once_and_the_worker_delivers_everything() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = Dispatcher::builder(Duration::from_millis(1))
        .build(rec.gated(&gate))
        .unwrap();
    d.enqueue(&entry(0)).unwrap();
    gate.wait_for_holder();
    d.enqueue(&entry(1)).unwrap();
    let start = Instant::now();
    d.detach();
    assert!(start.elapsed() < Duration::from_secs(5));
    gate.open();
    wait_until("the detached worker to deliver", || {
        rec.delivered().len() == 2
    });
}

#[test]
fn wait_shutdown_alone_closes_and_drains() {
    let rec = Recorder::new();
    let d = Dispatcher::builder(HOUR).build(rec.ok()).unwrap();
    d.enqueue(&entry(1)).unwrap();
    d.wait_shutdown(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(rec.delivered(), vec![entry(1)]);
    assert_eq!(d.enqueue(b"late"), Err(EnqueueError::Closed));
}

#[test]
fn a_flush_ticket_covers_what_was_accepted_before_it_only() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = Dispatcher::builder(HOUR).build(rec.gated(&gate)).unwrap();
    d.enqueue(&entry(1)).unwrap();
    let ticket = d.request_flush().unwrap();
    gate.wait_for_holder();
    d.enqueue(&entry(2)).unwrap(); // after the ticket: not covered, waits for its window
    assert_eq!(
        d.wait_flush(ticket, Some(Duration::from_millis(20))),
        Err(FlushError::Timeout)
    );
    assert!(!d.is_finished());
    gate.open();
    d.wait_flush(ticket, None).unwrap();
    assert_eq!(
        rec.delivered(),
        vec![entry(1)],
        "entry 2 came after the ticket: its window is an hour"
    );
    d.shutdown(None).unwrap();
    assert!(d.is_finished());
    assert_eq!(rec.delivered(), vec![entry(1), entry(2)]);
}
