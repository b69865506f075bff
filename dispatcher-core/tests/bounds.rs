//! Queue limits and the three overflow policies.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Gate, Recorder, entry, wait_until};

use dispatcher_core::{Dispatcher, DropReason, EnqueueError, Options, Overflow};

const HOUR: Duration = Duration::from_secs(3600);

/// A dispatcher whose first batch (entry 0) is held at `gate`, so that later entries queue up.
fn held(options: Options, rec: &Arc<Recorder>, gate: &Arc<Gate>) -> Dispatcher {
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(options)
        .on_drop(rec.on_drop())
        .build(rec.gated(gate))
        .unwrap();
    d.enqueue(&entry(0)).unwrap();
    gate.wait_for_holder();
    d
}

#[test]
fn drop_newest_rejects_at_the_entry_limit_and_the_batch_in_flight_does_not_count() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = held(
        Options {
            max_queue_entries: 3,
            ..Options::default()
        },
        &rec,
        &gate,
    );
    for i in 1..=3 {
        d.enqueue(&entry(i)).unwrap();
    }
    assert_eq!(d.enqueue(&entry(4)), Err(EnqueueError::QueueFull));
    let s = d.stats();
    assert_eq!(
        (s.queued_entries, s.in_flight_entries, s.rejected),
        (3, 1, 1)
    );
    gate.open();
    d.flush(None).unwrap();
    assert_eq!(rec.delivered(), (0..=3).map(entry).collect::<Vec<_>>());
    assert!(
        rec.drops.lock().unwrap().is_empty(),
        "a rejected entry is not handed to on_drop"
    );
}

#[test]
fn drop_newest_rejects_at_the_byte_limit() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = held(
        Options {
            max_queue_bytes: 25,
            ..Options::default()
        },
        &rec,
        &gate,
    );
    d.enqueue(&[1; 10]).unwrap();
    d.enqueue(&[2; 10]).unwrap();
    assert_eq!(d.enqueue(&[3; 10]), Err(EnqueueError::QueueFull));
    d.enqueue(&[4; 5]).unwrap(); // exactly 25
    assert_eq!(d.enqueue(&[]), Ok(()), "an empty entry costs no bytes");
    assert_eq!(d.stats().queued_bytes, 25);
    gate.open();
    d.flush(None).unwrap();
    assert_eq!(d.stats().dispatched, 5);
}

#[test]
fn too_large_entries_are_rejected_whatever_the_policy() {
    let rec = Recorder::new();
    for overflow in [Overflow::DropNewest, Overflow::DropOldest, Overflow::Block] {
        let d = Dispatcher::builder(HOUR)
            .options(Options {
                max_queue_bytes: 100,
                max_batch_bytes: 50,
                overflow,
                ..Options::default()
            })
            .build(rec.ok())
            .unwrap();
        assert_eq!(d.enqueue(&[0; 51]), Err(EnqueueError::TooLarge));
        d.enqueue(&[0; 50]).unwrap();
        let s = d.stats();
        assert_eq!((s.enqueued, s.rejected), (1, 1));
    }
    let d = Dispatcher::builder(HOUR)
        .options(Options {
            max_queue_bytes: 10,
            ..Options::default()
        })
        .build(rec.ok())
        .unwrap();
    assert_eq!(d.enqueue(&[0; 11]), Err(EnqueueError::TooLarge));
}

#[test]
fn drop_oldest_evicts_the_oldest_to_on_drop_on_the_enqueuing_thread() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = held(
        Options {
            max_queue_entries: 3,
            overflow: Overflow::DropOldest,
            ..Options::default()
        },
        &rec,
        &gate,
    );
    for i in 1..=5 {
        d.enqueue(&entry(i)).unwrap();
    }
    assert_eq!(rec.dropped(DropReason::Evicted), vec![entry(1), entry(2)]);
    let drops = rec.drops.lock().unwrap().clone();
    assert!(
        drops
            .iter()
            .all(|(_, thread, attempt, _)| *thread == std::thread::current().id() && *attempt == 0)
    );
    let s = d.stats();
    assert_eq!((s.evicted, s.queued_entries, s.rejected), (2, 3, 0));
    gate.open();
    d.flush(None).unwrap();
    assert_eq!(
        rec.delivered(),
        vec![entry(0), entry(3), entry(4), entry(5)]
    );
}

#[test]
fn drop_oldest_evicts_enough_bytes_for_a_large_entry() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = held(
        Options {
            max_queue_bytes: 30,
            overflow: Overflow::DropOldest,
            ..Options::default()
        },
        &rec,
        &gate,
    );
    for b in 1..=3u8 {
        d.enqueue(&[b; 10]).unwrap();
    }
    d.enqueue(&[9; 25]).unwrap(); // needs 25 of 30: the three oldest go
    assert_eq!(
        rec.dropped(DropReason::Evicted),
        vec![vec![1; 10], vec![2; 10], vec![3; 10]]
    );
    assert_eq!(d.stats().queued_bytes, 25);
    gate.open();
}

#[test]
fn block_waits_for_room_then_succeeds() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = held(
        Options {
            max_queue_entries: 1,
            overflow: Overflow::Block,
            block_timeout: Duration::from_secs(60),
            ..Options::default()
        },
        &rec,
        &gate,
    );
    d.enqueue(&entry(1)).unwrap();
    std::thread::scope(|s| {
        let blocked = s.spawn(|| d.enqueue(&entry(2)));
        // It must still be waiting: the queue is full until the gate opens.
        std::thread::sleep(Duration::from_millis(50)); // observing that it waits, not syncing
        assert!(
            !blocked.is_finished(),
            "a blocking enqueue returned while the queue was full"
        );
        gate.open();
        assert_eq!(blocked.join().unwrap(), Ok(()));
    });
    d.flush(None).unwrap();
    assert_eq!(rec.delivered(), (0..=2).map(entry).collect::<Vec<_>>());
}

#[test]
fn block_gives_up_after_block_timeout() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let timeout = Duration::from_millis(100);
    let d = held(
        Options {
            max_queue_entries: 1,
            overflow: Overflow::Block,
            block_timeout: timeout,
            ..Options::default()
        },
        &rec,
        &gate,
    );
    d.enqueue(&entry(1)).unwrap();
    let start = Instant::now();
    assert_eq!(d.enqueue(&entry(2)), Err(EnqueueError::QueueFull));
    assert!(start.elapsed() >= timeout);
    assert_eq!(d.stats().rejected, 1);
    gate.open();
}

#[test]
fn block_returns_closed_when_shut_down_while_waiting() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = held(
        Options {
            max_queue_entries: 1,
            overflow: Overflow::Block,
            block_timeout: Duration::from_secs(60),
            ..Options::default()
        },
        &rec,
        &gate,
    );
    d.enqueue(&entry(1)).unwrap();
    std::thread::scope(|s| {
        let blocked = s.spawn(|| d.enqueue(&entry(2)));
        std::thread::sleep(Duration::from_millis(50)); // observing that it waits, not syncing
        assert!(
            !blocked.is_finished(),
            "a blocking enqueue returned while the queue was full"
        );
        let closing = Instant::now();
        let closer = s.spawn(|| d.shutdown(None));
        assert_eq!(blocked.join().unwrap(), Err(EnqueueError::Closed));
        assert!(
            closing.elapsed() < Duration::from_secs(30),
            "closing did not wake the blocked producer"
        );
        gate.open();
        closer.join().unwrap().unwrap();
    });
    assert_eq!(rec.delivered(), vec![entry(0), entry(1)]);
}

#[test]
fn an_enqueue_from_the_dispatch_function_never_blocks() {
    let rec = Recorder::new();
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (r, res) = (rec.clone(), results.clone());
    let d = Arc::new_cyclic(|weak: &std::sync::Weak<Dispatcher>| {
        let weak = weak.clone();
        Dispatcher::builder(Duration::from_millis(1))
            .options(Options {
                max_queue_entries: 1,
                overflow: Overflow::Block,
                block_timeout: Duration::from_secs(3600),
                ..Options::default()
            })
            .build(move |batch| {
                r.record(batch);
                if let Some(d) = weak.upgrade() {
                    if batch.iter().any(|e| e == b"first") {
                        let a = d.enqueue(b"second");
                        let b = d.enqueue(b"third"); // full: must not wait an hour
                        res.lock().unwrap().extend([a, b]);
                    }
                }
                Ok(())
            })
            .unwrap()
    });
    d.enqueue(b"first").unwrap();
    wait_until("the callback to enqueue", || {
        results.lock().unwrap().len() == 2
    });
    assert_eq!(
        *results.lock().unwrap(),
        vec![Ok(()), Err(EnqueueError::QueueFull)]
    );
    d.flush(None).unwrap();
    assert_eq!(rec.delivered(), vec![b"first".to_vec(), b"second".to_vec()]);
}

#[test]
fn try_enqueue_reports_would_block_without_counting_a_rejection() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = held(
        Options {
            max_queue_entries: 1,
            overflow: Overflow::Block,
            ..Options::default()
        },
        &rec,
        &gate,
    );
    d.try_enqueue(&entry(1)).unwrap();
    assert_eq!(d.try_enqueue(&entry(2)), Err(EnqueueError::WouldBlock));
    assert_eq!(d.stats().rejected, 0, "WouldBlock is not a rejection");
    // Under the other policies try_enqueue behaves exactly like enqueue.
    let other = Dispatcher::builder(HOUR)
        .options(Options {
            max_queue_entries: 1,
            ..Options::default()
        })
        .build(rec.ok())
        .unwrap();
    other.try_enqueue(b"a").unwrap();
    assert_eq!(other.try_enqueue(b"b"), Err(EnqueueError::QueueFull));
    assert_eq!(other.stats().rejected, 1);
    gate.open();
}

#[test]
fn block_never_waits_on_a_never_block_thread() {
    let (rec, gate) = (Recorder::new(), Gate::new());
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_queue_entries: 1,
            overflow: Overflow::Block,
            block_timeout: HOUR,
            ..Options::default()
        })
        .never_block_on(std::thread::current().id())
        .build(rec.gated(&gate))
        .unwrap();
    d.enqueue(&entry(0)).unwrap();
    gate.wait_for_holder();
    d.enqueue(&entry(1)).unwrap();
    let start = Instant::now();
    assert_eq!(d.enqueue(&entry(2)), Err(EnqueueError::QueueFull));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "waited on a never-block thread"
    );
    // Another thread still waits (and gets room once the gate opens).
    std::thread::scope(|s| {
        let other = s.spawn(|| d.enqueue(&entry(3)));
        std::thread::sleep(Duration::from_millis(30)); // observing that it waits, not syncing
        assert!(!other.is_finished());
        gate.open();
        assert_eq!(other.join().unwrap(), Ok(()));
    });
}

#[test]
fn a_blocked_producer_gets_room_that_other_shards_leased_while_it_waited() {
    // Room given back while a producer waits can be leased again, in chunks, by another
    // shard and sit there unused: the waiter must take it back rather than time out.
    let rec = Recorder::new();
    let d = Dispatcher::builder(Duration::from_millis(50))
        .options(Options {
            max_queue_bytes: 1000,
            overflow: Overflow::Block,
            block_timeout: Duration::from_secs(30),
            ..Options::default()
        })
        .build(rec.ok())
        .unwrap();
    let a = |n: usize| std::thread::scope(|s| s.spawn(|| d.enqueue(&vec![1; n])).join().unwrap());
    // Each call runs on its own thread, so on its own shard with its own lease.
    a(10).unwrap();
    a(400).unwrap();
    let start = Instant::now();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| d.enqueue(&[9; 990]));
        std::thread::sleep(Duration::from_millis(10)); // let it start waiting (not syncing)
        a(10).unwrap(); // leases a chunk from what the pool holds
        assert_eq!(waiter.join().unwrap(), Ok(()));
    });
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the waiter waited for its whole timeout"
    );
    d.flush(None).unwrap();
    assert_eq!(rec.delivered().len(), 4);
}
