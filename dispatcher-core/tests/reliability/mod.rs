//! Helpers of the reliability suite (the `reliability_*.rs` test binaries): a seeded random
//! number generator, tagged entries that a checker can trace back to their producer, a
//! watchdog that turns a hang into a failure, and resident-memory readings.
//!
//! Every check prints its figures with `eprintln!`; `cargo test -- --nocapture` (or
//! `make test-reliability-rust`) shows them.

#![allow(dead_code)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The environment variable that fixes the seed of every reliability check, to replay a run.
pub const SEED_VAR: &str = "BD_TEST_SEED";

/// The seed of this run: `BD_TEST_SEED` if set, otherwise taken from the clock (so that runs
/// explore different schedules). Printed, with how to replay it.
pub fn seed(check: &str) -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={text:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64),
    };
    eprintln!("[{check}] seed {seed} (replay with {SEED_VAR}={seed})");
    seed
}

/// SplitMix64 (Steele, Lea, Flood 2014): one `u64` of state, good enough to pick sizes,
/// delays and outcomes, and small enough that no crate is needed for it.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// An independent stream for `index` (a producer, a run), so that each one's choices do
    /// not depend on how the threads interleave.
    pub fn stream(seed: u64, index: u64) -> Self {
        Rng(mix(seed ^ mix(index.wrapping_add(0x5851_f42d_4c95_7f2d))))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `range` (inclusive), near enough: the modulo bias is below 2^-40 here.
    pub fn range(&mut self, range: std::ops::RangeInclusive<u64>) -> u64 {
        let (lo, hi) = (*range.start(), *range.end());
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64() % n == 0
    }
}

/// The SplitMix64 finaliser: a bijection that scatters neighbouring inputs.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bytes of the tag at the front of a tagged entry: producer (1 byte), sequence (3 bytes, LE).
pub const TAG: usize = 4;

/// Writes the tag of (`producer`, `seq`) at the front of `buf`.
pub fn put_tag(buf: &mut [u8], producer: u8, seq: u32) {
    assert!(seq < 1 << 24, "sequence {seq} does not fit the 3-byte tag");
    buf[0] = producer;
    buf[1..TAG].copy_from_slice(&seq.to_le_bytes()[..3]);
}

/// Reads the tag of an entry that `put_tag` wrote.
pub fn tag_of(entry: &[u8]) -> (u8, u32) {
    assert!(
        entry.len() >= TAG,
        "an entry of {} bytes has no tag",
        entry.len()
    );
    let mut seq = [0u8; 4];
    seq[..3].copy_from_slice(&entry[1..TAG]);
    (entry[0], u32::from_le_bytes(seq))
}

/// Records which sequence numbers of each producer a checker has seen, and counts what a
/// checker must never see: duplicates, and per-producer reordering. Grows as sequence numbers
/// grow, for producers that run until they are stopped.
pub struct Ledger {
    seen: Vec<Vec<bool>>,
    highest: Vec<Option<u32>>,
    pub entries: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

impl Ledger {
    pub fn new(producers: usize, per_producer: usize) -> Self {
        Ledger {
            seen: vec![vec![false; per_producer]; producers],
            highest: vec![None; producers],
            entries: 0,
            duplicates: 0,
            reordered: 0,
        }
    }

    /// Notes one delivery of (`producer`, `seq`); false if it was a duplicate.
    pub fn note(&mut self, producer: u8, seq: u32) -> bool {
        let (p, s) = (producer as usize, seq as usize);
        assert!(
            p < self.seen.len(),
            "entry ({producer}, {seq}): no such producer"
        );
        if s >= self.seen[p].len() {
            let grown = (s + 1).next_power_of_two();
            self.seen[p].resize(grown, false);
        }
        self.entries += 1;
        if std::mem::replace(&mut self.seen[p][s], true) {
            self.duplicates += 1;
            return false;
        }
        if self.highest[p].is_some_and(|h| seq < h) {
            self.reordered += 1;
        }
        self.highest[p] = Some(self.highest[p].map_or(seq, |h| h.max(seq)));
        true
    }

    pub fn has(&self, producer: usize, seq: usize) -> bool {
        self.seen[producer].get(seq).copied().unwrap_or(false)
    }

    /// How many of the first `accepted[p]` entries of each producer were never seen.
    pub fn missing(&self, accepted: &[u32]) -> u64 {
        accepted
            .iter()
            .enumerate()
            .map(|(p, &n)| (0..n as usize).filter(|&s| !self.has(p, s)).count() as u64)
            .sum()
    }

    /// How many entries of each producer at or after `accepted[p]` were seen: entries that
    /// were refused, yet delivered.
    pub fn beyond(&self, accepted: &[u32]) -> u64 {
        accepted
            .iter()
            .enumerate()
            .map(|(p, &n)| self.seen[p].iter().skip(n as usize).filter(|&&s| s).count() as u64)
            .sum()
    }
}

/// Fails the test, loudly and at once, if it is still running after `limit`: a hang must be a
/// failure with a message, not a CI job killed after an hour. The whole process exits, since a
/// hung thread cannot be unwound.
pub struct Watchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(what: &str, limit: Duration) -> Self {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let (d, what) = (done.clone(), what.to_owned());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut finished = d.0.lock().unwrap();
            while !*finished {
                let now = Instant::now();
                if now >= deadline {
                    eprintln!("HANG: {what} still running after {limit:?}; aborting the test run");
                    std::process::exit(101);
                }
                finished = d.1.wait_timeout(finished, deadline - now).unwrap().0;
            }
        });
        Watchdog {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.done.0.lock().unwrap() = true;
        self.done.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// This process's resident memory in bytes (`VmRSS` of /proc/self/status), after asking the
/// allocator to give its free pages back.
///
/// Without that, the figure would count memory the program already freed: glibc keeps freed
/// chunks (the old copy of a vector that grew, say) and raises its mmap threshold after a
/// large free, so the same program shows tens of MiB more or less depending on what ran
/// before. What the dispatcher holds is what is still resident once the free pages are gone.
pub fn resident_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

/// Mebibytes, for printing.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
