//! Reliability, under load: 8 producers × 100 000 entries of random size, at `ms_delay` 1 ms
//! and 10 ms. Every entry carries (producer, sequence), so the checker inside the dispatch
//! function counts loss, duplicates, per-producer reordering and corruption: all must be 0.
//!
//! Sizes are uniform in 4 B ..= 4 KiB: 4 bytes is the smallest entry that can carry its
//! (producer, sequence) tag. The queue uses `Overflow::Block` with a long `block_timeout`, so
//! that every entry is eventually accepted and "0 lost" covers all 800 000, not only the ones
//! a full queue let in; a producer whose wait still times out retries the same entry and the
//! retries are counted (and must equal `Stats::rejected`).
//!
//! Figures go to stderr: `cargo test --test reliability_load -- --nocapture`.

mod reliability;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dispatcher_core::{Dispatcher, EnqueueError, Options, Overflow};
use reliability::{Ledger, TAG, Watchdog, mix, put_tag, tag_of};

const PRODUCERS: usize = 8;
const PER_PRODUCER: u32 = 100_000;
const MAX_LEN: u64 = 4096;

/// The length and the last byte of entry (`producer`, `seq`), both derived from the seed so
/// that the checker can tell a truncated or mixed-up entry from a good one.
fn shape(seed: u64, producer: u8, seq: u32) -> (usize, u8) {
    let h = mix(seed ^ ((producer as u64) << 32) ^ seq as u64);
    (
        TAG + (h % (MAX_LEN - TAG as u64 + 1)) as usize,
        (h >> 56) as u8,
    )
}

/// What the dispatch function saw.
struct Seen {
    ledger: Ledger,
    corrupt: u64,
    bytes: u64,
    calls: u64,
}

fn run(seed: u64, ms_delay: u64, options: Options) {
    let label = format!("load ms_delay={ms_delay}ms");
    let _watchdog = Watchdog::new(&label, Duration::from_secs(600));
    let seen = Arc::new(Mutex::new(Seen {
        ledger: Ledger::new(PRODUCERS, PER_PRODUCER as usize),
        corrupt: 0,
        bytes: 0,
        calls: 0,
    }));
    let checker = seen.clone();
    let d = Dispatcher::builder(Duration::from_millis(ms_delay))
        .options(options)
        .build(move |batch| {
            let mut seen = checker.lock().unwrap();
            seen.calls += 1;
            seen.bytes += batch.bytes() as u64;
            for entry in batch.iter() {
                let (producer, seq) = tag_of(entry);
                let (len, last) = shape(seed, producer, seq);
                if entry.len() != len || (len > TAG && entry[len - 1] != last) {
                    seen.corrupt += 1;
                }
                seen.ledger.note(producer, seq);
            }
            Ok(())
        })
        .unwrap();

    let start = Instant::now();
    let retries: u64 = std::thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS as u8)
            .map(|p| {
                let d = &d;
                s.spawn(move || {
                    let mut buf = vec![0u8; MAX_LEN as usize];
                    let mut retries = 0u64;
                    for seq in 0..PER_PRODUCER {
                        let (len, last) = shape(seed, p, seq);
                        put_tag(&mut buf, p, seq);
                        buf[len - 1] = if len > TAG { last } else { buf[len - 1] };
                        loop {
                            match d.enqueue(&buf[..len]) {
                                Ok(()) => break,
                                Err(EnqueueError::QueueFull) => retries += 1,
                                Err(err) => panic!("producer {p}, entry {seq}: {err}"),
                            }
                        }
                    }
                    retries
                })
            })
            .collect();
        producers.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let produced_in = start.elapsed();
    d.shutdown(Some(Duration::from_secs(120)))
        .expect("shutdown drains everything");
    let elapsed = start.elapsed();

    let stats = d.stats();
    let seen = seen.lock().unwrap();
    let total = PRODUCERS as u64 * PER_PRODUCER as u64;
    let lost = seen.ledger.missing(&[PER_PRODUCER; PRODUCERS]);
    eprintln!(
        "[{label}] producers {PRODUCERS}, entries {total}, delivered {}, bytes {:.1} MiB, \
         batches {}, lost {lost}, duplicates {}, reordered {}, corrupt {}, queue-full retries \
         {retries}, enqueue phase {:.2?}, total {:.2?}",
        seen.ledger.entries,
        reliability::mib(seen.bytes),
        seen.calls,
        seen.ledger.duplicates,
        seen.ledger.reordered,
        seen.corrupt,
        produced_in,
        elapsed,
    );
    assert_eq!(lost, 0, "[{label}] lost entries");
    assert_eq!(seen.ledger.duplicates, 0, "[{label}] duplicated entries");
    assert_eq!(
        seen.ledger.reordered, 0,
        "[{label}] per-producer order broken"
    );
    assert_eq!(seen.corrupt, 0, "[{label}] corrupted entries");
    assert_eq!(seen.ledger.entries, total);
    assert!(stats.is_consistent(), "{stats:?}");
    assert_eq!(
        (stats.enqueued, stats.dispatched, stats.rejected),
        (total, total, retries),
        "[{label}] stats disagree with what the producers and the checker counted: {stats:?}"
    );
    assert_eq!(
        (stats.failed, stats.evicted, stats.abandoned, stats.batches),
        (0, 0, 0, seen.calls),
        "{stats:?}"
    );
}

fn options(max_batch_entries: usize, max_batch_bytes: usize) -> Options {
    Options {
        max_batch_entries,
        max_batch_bytes,
        overflow: Overflow::Block,
        block_timeout: Duration::from_secs(60),
        ..Options::default()
    }
}

#[test]
fn eight_producers_lose_nothing_at_ms_delay_1() {
    let seed = reliability::seed("load ms_delay=1ms");
    // No batch limits: each window's round is one batch.
    run(seed, 1, options(0, 0));
}

#[test]
fn eight_producers_lose_nothing_at_ms_delay_10() {
    let seed = reliability::seed("load ms_delay=10ms");
    // Batch limits split rounds and fire the size trigger as well.
    run(seed, 10, options(1000, 1 << 20));
}
