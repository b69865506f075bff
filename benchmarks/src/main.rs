//! `dispatcher-bench`: dispatcher-core against its peers, in one process, on one workload.
//!
//! Not a test: it times things, and its numbers only mean something as ratios between sinks
//! measured in the same run. `benchmarks/run.py` (`make bench`) runs each subcommand, repeats
//! what needs fresh processes, and writes `benchmarks/RESULTS.md`. Every subcommand prints one
//! JSON object per line.
//!
//! Sinks (all take an entry by reference and copy it):
//! - `ours`: `dispatcher_core::Dispatcher`, `ms_delay` 10 ms, no queue bound;
//! - `crossbeam`: an unbounded `crossbeam-channel` of `Vec<u8>` (one allocation per entry),
//!   drained every 10 ms by a consumer thread: the obvious design;
//! - `mutex_vec`: a `Mutex<Vec<Vec<u8>>>` swapped out every 10 ms;
//! - `floor`: what no design can beat, one uncontended lock/unlock and a 104-byte copy into a
//!   pre-allocated buffer (a private buffer per producer thread).
//!
//! Every consumer touches every byte it is given, as a real serialiser would.

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dispatcher_core::{Dispatcher, Options};

/// The window (ours) and the drain period (peers): 10 ms, or `BENCH_TICK_MS`.
static TICK: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
    let ms = std::env::var("BENCH_TICK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    Duration::from_millis(ms)
});

fn touch(data: &[u8]) -> u64 {
    data.iter().map(|&b| u64::from(b)).sum()
}

trait Sink: Sync {
    fn enqueue(&self, producer: usize, data: &[u8]);
    /// Waits until the consumer has processed everything, so that one sink's backlog never
    /// runs on the CPU while another sink's round is measured.
    fn settle(&self) {}
}

/// Runs `drain` every `TICK` on its own thread until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(mut drain: impl FnMut() + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let mut next = Instant::now() + *TICK;
            while !s.load(Ordering::Relaxed) {
                thread::sleep(next.saturating_duration_since(Instant::now()));
                next += *TICK;
                drain();
            }
            drain();
        });
        Ticker {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Ours(Dispatcher);

impl Ours {
    fn new() -> Self {
        let touched = AtomicU64::new(0);
        let d = Dispatcher::builder(*TICK)
            .options(Options {
                max_queue_bytes: 0,
                ..Options::default()
            })
            .build(move |batch| {
                let sum: u64 = batch.iter().map(touch).sum();
                touched.fetch_add(black_box(sum), Ordering::Relaxed);
                Ok(())
            })
            .expect("valid options");
        Ours(d)
    }
}

impl Sink for Ours {
    #[inline]
    fn enqueue(&self, _: usize, data: &[u8]) {
        if self.0.enqueue(data).is_err() {
            panic!("ours rejected an entry: the measurement would be wrong");
        }
    }
    fn settle(&self) {
        self.0.flush(None).expect("flush");
    }
}

struct Crossbeam {
    tx: crossbeam_channel::Sender<Vec<u8>>,
    busy: Arc<AtomicBool>,
    _consumer: Ticker,
}

impl Crossbeam {
    fn new() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        let busy = Arc::new(AtomicBool::new(false));
        let b = busy.clone();
        let consumer = Ticker::start(move || {
            b.store(true, Ordering::SeqCst);
            let sum: u64 = rx.try_iter().map(|e| touch(&e)).sum();
            black_box(sum);
            b.store(false, Ordering::SeqCst);
        });
        Crossbeam {
            tx,
            busy,
            _consumer: consumer,
        }
    }
}

impl Sink for Crossbeam {
    #[inline]
    fn enqueue(&self, _: usize, data: &[u8]) {
        self.tx.send(data.to_vec()).expect("consumer alive");
    }
    fn settle(&self) {
        while !self.tx.is_empty() || self.busy.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

struct MutexVec {
    queue: Arc<Mutex<Vec<Vec<u8>>>>,
    _consumer: Ticker,
}

impl MutexVec {
    fn new() -> Self {
        let queue = Arc::new(Mutex::new(Vec::new()));
        let q = queue.clone();
        let consumer = Ticker::start(move || {
            let batch: Vec<Vec<u8>> = std::mem::take(&mut *q.lock().unwrap());
            black_box(batch.iter().map(|e| touch(e)).sum::<u64>());
        });
        MutexVec {
            queue,
            _consumer: consumer,
        }
    }
}

impl Sink for MutexVec {
    #[inline]
    fn enqueue(&self, _: usize, data: &[u8]) {
        self.queue.lock().unwrap().push(data.to_vec());
    }
    fn settle(&self) {
        // The consumer swaps the queue out, then drops it: twice its period covers both.
        while !self.queue.lock().unwrap().is_empty() {
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(*TICK * 2);
    }
}

#[repr(align(128))]
struct Padded<T>(T);

struct Floor(Vec<Padded<Mutex<Vec<u8>>>>);

impl Floor {
    fn new(producers: usize) -> Self {
        Floor(
            (0..producers)
                .map(|_| Padded(Mutex::new(Vec::with_capacity(4 << 20))))
                .collect(),
        )
    }
}

impl Sink for Floor {
    #[inline]
    fn enqueue(&self, producer: usize, data: &[u8]) {
        let mut buf = self.0[producer].0.lock().unwrap();
        if buf.len() + 4 + data.len() > buf.capacity() {
            buf.clear();
        }
        buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        buf.extend_from_slice(data);
    }
}

fn make_sink(name: &str, producers: usize) -> Box<dyn Sink> {
    match name {
        "ours" => Box::new(Ours::new()),
        "crossbeam" => Box::new(Crossbeam::new()),
        "mutex_vec" => Box::new(MutexVec::new()),
        "floor" => Box::new(Floor::new(producers)),
        other => panic!("unknown sink {other}"),
    }
}

/// Long-lived producer threads that run one job (a sink, a count) per round.
struct Producers<'s> {
    job: Mutex<Option<(&'s dyn Sink, usize)>>,
    start: Barrier,
    end: Barrier,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Throughput: interleaved rounds over all sinks, each on its long-lived sink and threads.
fn enqueue(args: &Args) {
    let sinks = args.list("sinks", "ours,crossbeam,mutex_vec,floor");
    for size in args.numbers("sizes", "100") {
        for p in args.numbers("threads", "1,2,4,8") {
            let total = args.number("per-round", 2_000_000);
            let per_producer = total / p;
            let rounds = args.number("rounds", 7);
            let built: Vec<(String, Box<dyn Sink>)> =
                sinks.iter().map(|s| (s.clone(), make_sink(s, p))).collect();
            let producers = Producers {
                job: Mutex::new(None),
                start: Barrier::new(p + 1),
                end: Barrier::new(p + 1),
            };
            let data = vec![0x5au8; size];
            let mut walls: Vec<Vec<f64>> = vec![Vec::new(); built.len()];
            thread::scope(|s| {
                for id in 0..p {
                    let (producers, data) = (&producers, &data);
                    s.spawn(move || {
                        loop {
                            producers.start.wait();
                            let Some((sink, n)) = *producers.job.lock().unwrap() else {
                                break;
                            };
                            for _ in 0..n {
                                sink.enqueue(id, black_box(data));
                            }
                            producers.end.wait();
                        }
                    });
                }
                // Round 0 warms every sink up (buffers grown, caches warm); it is not counted.
                for round in 0..=rounds {
                    for k in 0..built.len() {
                        let i = (k + round) % built.len();
                        *producers.job.lock().unwrap() = Some((built[i].1.as_ref(), per_producer));
                        // Taken before the start: a producer can begin, even finish, a short
                        // round before this thread returns from the barrier.
                        let t0 = Instant::now();
                        producers.start.wait();
                        producers.end.wait();
                        let wall = t0.elapsed().as_secs_f64();
                        built[i].1.settle();
                        if round > 0 {
                            walls[i].push(wall);
                        }
                    }
                }
                *producers.job.lock().unwrap() = None;
                producers.start.wait();
            });
            let ours = sinks.iter().position(|s| s == "ours");
            for (i, (name, _)) in built.iter().enumerate() {
                let ns: Vec<f64> = walls[i]
                    .iter()
                    .map(|w| w * 1e9 / per_producer as f64)
                    .collect();
                let rate: Vec<f64> = walls[i]
                    .iter()
                    .map(|w| (per_producer * p) as f64 / w / 1e6)
                    .collect();
                // Ratios per round, ours over this sink, then their median.
                let ratio = ours
                    .map(|o| median(walls[o].iter().zip(&walls[i]).map(|(a, b)| a / b).collect()));
                println!(
                    "{{\"bench\":\"enqueue\",\"sink\":\"{name}\",\"size\":{size},\"threads\":{p},\"rounds\":{rounds},\
                     \"ns_per_op\":{:.2},\"mops\":{:.3},\"ours_over_this\":{}}}",
                    median(ns),
                    median(rate),
                    ratio.map_or("null".into(), |r| format!("{r:.4}")),
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn cycles() -> u64 {
    // SAFETY: lfence and rdtsc have no preconditions on x86-64. The fence keeps the read from
    // moving across the measured call (rdtsc alone is not ordered with other instructions).
    unsafe {
        std::arch::x86_64::_mm_lfence();
        let t = std::arch::x86_64::_rdtsc();
        std::arch::x86_64::_mm_lfence();
        t
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cycles() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Nanoseconds per `cycles()` tick.
fn ns_per_cycle() -> f64 {
    let (c0, t0) = (cycles(), Instant::now());
    thread::sleep(Duration::from_millis(200));
    t0.elapsed().as_nanos() as f64 / (cycles() - c0) as f64
}

/// Per-call latency of producer 0 while P producers run, on a warmed-up sink.
fn latency(args: &Args) {
    let scale = ns_per_cycle();
    let calls = args.number("calls", 1_000_000);
    let size = args.number("size", 100);
    for p in args.numbers("threads", "1,8") {
        for name in args.list("sinks", "ours,crossbeam,mutex_vec") {
            let sink = make_sink(&name, p);
            let data = vec![0x5au8; size];
            let mut samples = vec![0u32; calls];
            let mut faults = 0;
            let passes = args.number("passes", 3);
            for pass in 0..passes {
                // The passes before the last warm up (buffers grown and faulted in).
                let go = Barrier::new(p);
                thread::scope(|s| {
                    for id in 1..p {
                        let (sink, data, go) = (&sink, &data, &go);
                        s.spawn(move || {
                            go.wait();
                            for _ in 0..calls {
                                sink.enqueue(id, black_box(data));
                            }
                        });
                    }
                    go.wait();
                    let faults_before = thread_faults();
                    for slot in samples.iter_mut() {
                        let t0 = cycles();
                        sink.enqueue(0, black_box(&data));
                        *slot = (cycles() - t0).min(u64::from(u32::MAX)) as u32;
                    }
                    faults = thread_faults() - faults_before;
                });
                if pass + 1 < passes {
                    continue;
                }
            }
            samples.sort_unstable();
            let q = |f: f64| samples[((samples.len() as f64 - 1.0) * f) as usize] as f64 * scale;
            println!(
                "{{\"bench\":\"latency\",\"sink\":\"{name}\",\"threads\":{p},\"size\":{size},\"p50\":{:.0},\
                 \"p99\":{:.0},\"p999\":{:.0},\"p9999\":{:.0},\"max\":{:.0},\"faults_per_1000\":{:.1}}}",
                q(0.5),
                q(0.99),
                q(0.999),
                q(0.9999),
                q(1.0),
                faults as f64 * 1000.0 / calls as f64
            );
        }
    }
}

/// Page faults taken by the calling thread so far.
fn thread_faults() -> i64 {
    // SAFETY: getrusage writes into the struct we pass.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    usage.ru_minflt + usage.ru_majflt
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("linux");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm");
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// Resident memory per queued entry, with `entries` queued and nothing dispatched.
fn memory(args: &Args) {
    let name = args.list("sinks", "ours")[0].clone();
    let entries = args.number("entries", 1_000_000);
    let data = vec![0x5au8; args.number("size", 100)];
    let before = resident_bytes();
    let keep: Box<dyn std::any::Any> = match name.as_str() {
        "ours" => {
            let d = Dispatcher::builder(Duration::from_secs(3600))
                .options(Options {
                    max_queue_bytes: 0,
                    ..Options::default()
                })
                .build(|_| Ok(()))
                .unwrap();
            for _ in 0..entries {
                d.enqueue(&data).unwrap();
            }
            assert_eq!(d.stats().queued_entries, entries as u64);
            Box::new(d)
        }
        "crossbeam" => {
            let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
            for _ in 0..entries {
                tx.send(data.clone()).unwrap();
            }
            Box::new((tx, rx))
        }
        other => panic!("unknown sink {other}"),
    };
    let after = resident_bytes();
    println!(
        "{{\"bench\":\"memory\",\"sink\":\"{name}\",\"entries\":{entries},\"bytes_per_entry\":{:.1}}}",
        (after - before) as f64 / entries as f64
    );
    // Dropping `ours` would dispatch the hour-long window's million entries; no need.
    std::mem::forget(keep);
}

/// Dispatch start times against their window ends, under a steady load, with a native callback.
fn timing(args: &Args) {
    let delay = Duration::from_millis(args.number("ms-delay", 10) as u64);
    let seconds = args.float("seconds", 3.0);
    let epoch = Instant::now();
    let starts: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let s = starts.clone();
    let d = Dispatcher::builder(delay)
        .options(Options {
            max_queue_bytes: 0,
            ..Options::default()
        })
        .build(move |batch| {
            let start = epoch.elapsed().as_nanos() as u64;
            let first = u64::from_le_bytes(batch.entries()[0].as_bytes()[..8].try_into().unwrap());
            black_box(batch.iter().map(touch).sum::<u64>());
            s.lock().unwrap().push((start, first));
            Ok(())
        })
        .unwrap();
    // One producer at ~500k entries/s: each entry carries its enqueue time.
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut entry = [0u8; 100];
    while Instant::now() < end {
        entry[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
        d.enqueue(&entry).unwrap();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_micros(2) {
            std::hint::spin_loop();
        }
    }
    drop(d);
    let starts = starts.lock().unwrap();
    // The first and last batches are not in steady state (start-up, the drop's flush).
    let steady = &starts[1..starts.len() - 1];
    let d_ns = delay.as_nanos() as u64;
    let mut lateness = Vec::new();
    let mut too_close = 0;
    for w in steady.windows(2) {
        let (prev_start, (start, first)) = (w[0].0, w[1]);
        let window_end = (first + d_ns).max(prev_start + d_ns);
        lateness.push(start.saturating_sub(window_end) as f64 / 1e3);
        too_close += usize::from(start - prev_start < d_ns);
    }
    let period =
        (steady[steady.len() - 1].0 - steady[0].0) as f64 / (steady.len() - 1) as f64 / 1e6;
    let mut sorted = lateness.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |f: f64| sorted[((sorted.len() as f64 - 1.0) * f) as usize];
    println!(
        "{{\"bench\":\"timing\",\"ms_delay\":{},\"batches\":{},\"late_p50_us\":{:.1},\"late_p99_us\":{:.1},\
         \"late_max_us\":{:.1},\"mean_period_ms\":{:.4},\"starts_too_close\":{too_close}}}",
        delay.as_millis(),
        steady.len(),
        q(0.5),
        q(0.99),
        q(1.0),
        period
    );
}

/// A steady single-producer load for `strace -c -f`; prints the enqueue count.
fn steady(args: &Args) {
    let sink = Ours::new();
    let data = [0x5au8; 100];
    let end = Instant::now() + Duration::from_secs_f64(args.float("seconds", 2.0));
    let mut n = 0u64;
    while Instant::now() < end {
        for _ in 0..1000 {
            sink.enqueue(0, black_box(&data));
        }
        n += 1000;
    }
    drop(sink);
    println!("{{\"bench\":\"steady\",\"enqueues\":{n}}}");
}

fn cpu_micros() -> u64 {
    // SAFETY: getrusage writes into the struct we pass.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// CPU used by a dispatcher that has delivered its entries and now has nothing to do.
fn idle(args: &Args) {
    let d = Ours::new();
    d.enqueue(0, b"one entry");
    d.0.flush(None).unwrap();
    let seconds = args.float("seconds", 5.0);
    let before = cpu_micros();
    thread::sleep(Duration::from_secs_f64(seconds));
    let used = cpu_micros() - before;
    println!(
        "{{\"bench\":\"idle\",\"seconds\":{seconds},\"cpu_us\":{used},\"wakeups\":{}}}",
        d.0.worker_wakeups()
    );
}

/// `--name value` arguments.
struct Args(Vec<String>);

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        let flag = format!("--{name}");
        self.0
            .iter()
            .position(|a| *a == flag)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }
    fn list(&self, name: &str, default: &str) -> Vec<String> {
        self.get(name)
            .unwrap_or(default)
            .split(',')
            .map(str::to_owned)
            .collect()
    }
    fn numbers(&self, name: &str, default: &str) -> Vec<usize> {
        self.list(name, default)
            .iter()
            .map(|s| s.parse().expect("a number"))
            .collect()
    }
    fn number(&self, name: &str, default: usize) -> usize {
        self.get(name)
            .map_or(default, |s| s.parse().expect("a number"))
    }
    fn float(&self, name: &str, default: f64) -> f64 {
        self.get(name)
            .map_or(default, |s| s.parse().expect("a number"))
    }
}

fn main() {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_default();
    let args = Args(argv.collect());
    match command.as_str() {
        "enqueue" => enqueue(&args),
        "latency" => latency(&args),
        "memory" => memory(&args),
        "timing" => timing(&args),
        "steady" => steady(&args),
        "idle" => idle(&args),
        _ => {
            eprintln!(
                "usage: dispatcher-bench enqueue|latency|memory|timing|steady|idle [--name value ...]"
            );
            std::process::exit(2);
        }
    }
}
