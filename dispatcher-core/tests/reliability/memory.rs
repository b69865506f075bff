//! The bounded-memory check, shared by `reliability_memory_drop_newest.rs` and
//! `reliability_memory_drop_oldest.rs`: a queue capped at 10 000 entries / 8 MiB, a dispatch
//! function blocked for the whole run, and 1 000 000 enqueue attempts of 1 KiB (4 producers ×
//! 250 000) under one drop policy.
//!
//! What is queued never exceeds the caps (sampled throughout, and exact at the end: the byte
//! cap binds first, at 8 192 entries of 1 KiB); refusals (`DropNewest`) and evictions
//! (`DropOldest`, each one handed to `on_drop`) are counted exactly, the callers' and
//! `on_drop`'s counts equal to `Stats`; resident memory (VmRSS) grows by at most 16 MiB; no
//! enqueue waits for the blocked dispatch function (each policy refuses or evicts at once:
//! the run ends while the dispatch is still blocked, and the slowest enqueue is printed); and
//! once it is released, every accepted entry that was not evicted is delivered, exactly once.
//!
//! Resident memory is per process, and what one run frees changes how the allocator serves
//! the next, so each policy runs in its own test binary, alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::Gate;
use crate::reliability::{Watchdog, mib, put_tag, resident_bytes, tag_of};
use dispatcher_core::{Dispatcher, DropReason, EnqueueError, Options, Overflow};

const PRODUCERS: usize = 4;
const PER_PRODUCER: usize = 250_000;
const ENTRY: usize = 1024;
const CAP_ENTRIES: usize = 10_000;
const CAP_BYTES: usize = 8 << 20;
/// The entries that fit: the byte cap binds before the entry cap.
const FITS: usize = if CAP_BYTES / ENTRY < CAP_ENTRIES {
    CAP_BYTES / ENTRY
} else {
    CAP_ENTRIES
};
const MAX_GROWTH: u64 = 16 << 20;
/// Producer id of the entry that holds the dispatch function (it is in flight, not queued).
const PLUG: u8 = 255;

/// What became of each entry: a bit per outcome, so that a second outcome is caught.
const ACCEPTED: u8 = 1;
const DELIVERED: u8 = 2;
const EVICTED: u8 = 4;

fn id(producer: u8, seq: u32) -> usize {
    producer as usize * PER_PRODUCER + seq as usize
}

/// Outcomes, as the callbacks saw them.
struct Outcomes {
    fate: Vec<u8>,
    twice: u64,
    delivered: u64,
    evicted: u64,
    plug_delivered: u64,
    other_drops: u64,
}

impl Outcomes {
    fn mark(&mut self, entry: &[u8], outcome: u8) {
        let (producer, seq) = tag_of(entry);
        if producer == PLUG {
            self.plug_delivered += (outcome == DELIVERED) as u64;
            return;
        }
        let fate = &mut self.fate[id(producer, seq)];
        if *fate & (DELIVERED | EVICTED) != 0 {
            self.twice += 1;
        }
        *fate |= outcome;
        match outcome {
            DELIVERED => self.delivered += 1,
            _ => self.evicted += 1,
        }
    }
}

/// What one producer saw.
#[derive(Default)]
struct Producer {
    accepted: u64,
    full: u64,
    slowest: Duration,
    /// Highest queued entries / bytes / resident growth seen while sampling (producer 0).
    queued_entries: u64,
    queued_bytes: u64,
    growth: u64,
}

pub fn run(overflow: Overflow) {
    let label = format!("memory {overflow:?}");
    // An enqueue that waited for room would wait for the blocked dispatch, that is forever:
    // the watchdog turns that into a failure.
    let _watchdog = Watchdog::new(&label, Duration::from_secs(120));
    let total = PRODUCERS * PER_PRODUCER;
    // Everything the checker needs is allocated, and its pages written, before the baseline.
    let outcomes = Arc::new(Mutex::new(Outcomes {
        fate: vec![0u8; total],
        twice: 0,
        delivered: 0,
        evicted: 0,
        plug_delivered: 0,
        other_drops: 0,
    }));
    // (A value the compiler cannot see is 0, so that the writes that fault the pages in stay.)
    outcomes
        .lock()
        .unwrap()
        .fate
        .iter_mut()
        .for_each(|f| *f = std::hint::black_box(0));
    // Per producer: which of its entries were accepted (1) or not (0), written in place.
    let mut accepted_flags: Vec<Vec<u8>> =
        (0..PRODUCERS).map(|_| vec![2u8; PER_PRODUCER]).collect();
    let gate = Gate::new();

    let (in_dispatch, in_drop, g) = (outcomes.clone(), outcomes.clone(), gate.clone());
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_queue_entries: CAP_ENTRIES,
            max_queue_bytes: CAP_BYTES,
            overflow,
            ..Options::default()
        })
        .on_drop(move |batch, reason| {
            let mut o = in_drop.lock().unwrap();
            for entry in batch.iter() {
                if reason == DropReason::Evicted {
                    o.mark(entry, EVICTED);
                } else {
                    o.other_drops += 1;
                }
            }
        })
        .build(move |batch| {
            g.pass();
            let mut o = in_dispatch.lock().unwrap();
            batch.iter().for_each(|entry| o.mark(entry, DELIVERED));
            Ok(())
        })
        .unwrap();
    let mut plug = [0u8; ENTRY];
    put_tag(&mut plug, PLUG, 0);
    d.enqueue(&plug).unwrap();
    gate.wait_for_holder();
    let baseline = resident_bytes();

    // Set when a sample finds the bounds broken: every producer stops rather than let memory
    // grow without bound; the assertions below report it.
    let broken = AtomicBool::new(false);
    let start = Instant::now();
    let producers: Vec<Producer> = std::thread::scope(|s| {
        let handles: Vec<_> = accepted_flags
            .iter_mut()
            .enumerate()
            .map(|(p, accepted)| {
                let (d, label, broken, p) = (&d, &label, &broken, p as u8);
                s.spawn(move || {
                    let mut me = Producer::default();
                    let mut buf = [0u8; ENTRY];
                    for seq in 0..PER_PRODUCER as u32 {
                        if broken.load(Ordering::Relaxed) {
                            break;
                        }
                        put_tag(&mut buf, p, seq);
                        let t = Instant::now();
                        let result = d.enqueue(&buf);
                        me.slowest = me.slowest.max(t.elapsed());
                        accepted[seq as usize] = result.is_ok() as u8;
                        match result {
                            Ok(()) => me.accepted += 1,
                            Err(EnqueueError::QueueFull) if overflow == Overflow::DropNewest => {
                                me.full += 1;
                            }
                            Err(err) => panic!("[{label}] producer {p} entry {seq}: {err}"),
                        }
                        if p == 0 && seq % 2048 == 0 {
                            let s = d.stats();
                            me.queued_entries = me.queued_entries.max(s.queued_entries);
                            me.queued_bytes = me.queued_bytes.max(s.queued_bytes);
                            me.growth = me.growth.max(resident_bytes().saturating_sub(baseline));
                            if me.growth > MAX_GROWTH
                                || s.queued_entries > CAP_ENTRIES as u64
                                || s.queued_bytes > CAP_BYTES as u64
                            {
                                broken.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    me
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let enqueue_phase = start.elapsed();
    let held = d.stats();
    let growth = resident_bytes()
        .saturating_sub(baseline)
        .max(producers[0].growth);
    let queued_max = (
        producers[0].queued_entries.max(held.queued_entries),
        producers[0].queued_bytes.max(held.queued_bytes),
    );
    let slowest = producers.iter().map(|p| p.slowest).max().unwrap();
    let accepted: u64 = producers.iter().map(|p| p.accepted).sum();
    let full: u64 = producers.iter().map(|p| p.full).sum();
    let evicted_while_held = outcomes.lock().unwrap().evicted;
    {
        let mut o = outcomes.lock().unwrap();
        for (p, flags) in accepted_flags.iter().enumerate() {
            for (seq, _) in flags.iter().enumerate().filter(|(_, f)| **f == 1) {
                o.fate[id(p as u8, seq as u32)] |= ACCEPTED;
            }
        }
    }

    // Release the dispatch function: everything still queued must now be delivered.
    gate.open();
    d.shutdown(Some(Duration::from_secs(60)))
        .expect("shutdown after the release");
    let done = d.stats();
    let o = outcomes.lock().unwrap();
    let never_settled = o
        .fate
        .iter()
        .filter(|&&f| f & ACCEPTED != 0 && f & (DELIVERED | EVICTED) == 0)
        .count();
    let not_accepted_but_seen = o
        .fate
        .iter()
        .filter(|&&f| f & ACCEPTED == 0 && f != 0)
        .count();

    eprintln!(
        "[{label}] attempts {total} of {ENTRY} B, cap {CAP_ENTRIES} entries / {} MiB (fits \
         {FITS}): accepted {accepted}, rejected {full} (stats {}), evicted {} (on_drop {}), \
         queued at most {} entries / {:.2} MiB, resident growth {:.2} MiB (limit {} MiB), \
         slowest enqueue {slowest:.2?}, enqueue phase {enqueue_phase:.2?}; after release: \
         delivered {} + plug {}, undelivered 0 expected, found {never_settled}, delivered \
         twice {}",
        CAP_BYTES >> 20,
        done.rejected,
        done.evicted,
        o.evicted,
        queued_max.0,
        mib(queued_max.1),
        mib(growth),
        MAX_GROWTH >> 20,
        o.delivered,
        o.plug_delivered,
        o.twice,
    );

    assert!(
        growth <= MAX_GROWTH,
        "[{label}] resident memory grew {:.1} MiB",
        mib(growth)
    );
    assert!(
        queued_max.0 <= CAP_ENTRIES as u64 && queued_max.1 <= CAP_BYTES as u64,
        "[{label}] queue over its caps: {queued_max:?}"
    );
    assert_eq!(
        accepted + full,
        total as u64,
        "[{label}] a producer stopped early"
    );
    // Full, exactly: a refusal takes back unused credit first, so the caps are exact.
    assert_eq!(
        held.queued_entries, FITS as u64,
        "[{label}] queue not exactly full: {held:?}"
    );
    match overflow {
        Overflow::DropNewest => {
            assert_eq!(accepted, FITS as u64, "[{label}] accepted beyond the cap");
            assert_eq!(evicted_while_held, 0);
        }
        Overflow::DropOldest => {
            assert_eq!(full, 0, "[{label}] DropOldest refused an entry");
            assert_eq!(
                evicted_while_held,
                accepted - FITS as u64,
                "[{label}] evictions"
            );
        }
        Overflow::Block => unreachable!("not a drop policy"),
    }
    // The callers' counts, on_drop's and the stats agree exactly.
    assert_eq!(done.rejected, full, "[{label}] {done:?}");
    assert_eq!(done.enqueued, accepted + 1, "[{label}] {done:?}");
    assert_eq!(done.evicted, o.evicted, "[{label}] {done:?}");
    assert_eq!(done.dispatched, o.delivered + 1, "[{label}] {done:?}");
    assert_eq!(o.other_drops, 0, "[{label}] drops other than evictions");
    assert!(done.is_consistent(), "[{label}] {done:?}");
    // Every accepted entry: delivered or evicted, once; nothing refused shows up.
    assert_eq!(
        never_settled, 0,
        "[{label}] accepted entries never delivered"
    );
    assert_eq!(o.twice, 0, "[{label}] entries delivered or evicted twice");
    assert_eq!(not_accepted_but_seen, 0, "[{label}] refused entries seen");
    assert_eq!(o.delivered + o.evicted, accepted, "[{label}]");
    assert_eq!(o.plug_delivered, 1);
}
