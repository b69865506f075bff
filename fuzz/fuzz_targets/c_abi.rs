//! Fuzzes the C ABI: each input is a byte-coded program of `bd_*` calls on up to four
//! dispatchers, made from Rust through the `extern "C"` functions with Rust `extern "C"`
//! callbacks, exactly as a C caller would make them.
//!
//! The sanitizer (AddressSanitizer under `cargo fuzz`, with LeakSanitizer at the end of every
//! input) catches memory errors and leaks; the program itself checks what the header promises:
//!
//! - every status is one the header documents for that call (never `BD_STATUS_PANIC`), NULL
//!   arguments give `BD_STATUS_NULL_ARG`, options not made by `bd_options_init` are refused,
//!   an enqueue after `bd_shutdown` is refused;
//! - `bd_stats_get` is consistent and agrees with what this program saw accepted and refused;
//! - every batch is well formed (non-empty, `bytes` is the sum of the lengths, `attempt >= 1`)
//!   and every entry arrives with the bytes it was enqueued with;
//! - nothing is lost or duplicated: once a dispatcher is freed, each accepted entry was
//!   delivered once or (when `on_drop` is set) handed to `on_drop` once, with a reason the
//!   options allow; `user_data_free` is called exactly once, after the last callback;
//! - from inside the dispatch callback (when the input says so), `bd_flush` and `bd_shutdown`
//!   return `BD_STATUS_REENTRANT`, `bd_stats_get` works, and `bd_enqueue` does not wait; its
//!   entries are accounted like the others.
//!
//! `SOAK_FUZZ_SEEDED_LEAK=1` is the negative control of the leak check: every input then
//! leaks one allocation, which LeakSanitizer must report (`make soak` checks that it does).
//!
//! Times are clamped (ms_delay, backoffs and timeouts of a few ms, at most 4 attempts) so that
//! an input runs in milliseconds; sizes, limits, policies and the options' version are not.

#![no_main]

use std::collections::HashMap;
use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use background_dispatcher::{
    BD_NO_TIMEOUT, BD_OPTIONS_VERSION, BD_OVERFLOW_DROP_OLDEST, bd_batch, bd_dispatcher,
    bd_drop_reason, bd_enqueue, bd_flush, bd_free, bd_new, bd_options, bd_options_init,
    bd_shutdown, bd_stats, bd_stats_get, bd_status, bd_status_str, bd_version,
};
use libfuzzer_sys::fuzz_target;

/// Most dispatchers alive at once in one input.
const SLOTS: usize = 4;
/// How long a freed dispatcher may take to call `user_data_free`: far above the clamped
/// times, so only a hang reaches it.
const FREE_DEADLINE: Duration = Duration::from_secs(20);
/// Entries of at least this many bytes carry their id in the first four.
const ID_BYTES: usize = 4;

/// Reads the input front to back; past its end every read is 0, so any input is a program.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
    /// A size: mostly small, sometimes anything.
    fn size(&mut self) -> usize {
        match self.u8() % 4 {
            0 => 0,
            1 => usize::from(self.u8()),
            2 => usize::from(self.u16()),
            _ => self.u64() as usize,
        }
    }
    /// A timeout: none, a few ms, or forever.
    fn timeout_ms(&mut self) -> u64 {
        match self.u8() % 4 {
            0 => 0,
            1 | 2 => u64::from(self.u8() % 20),
            _ => BD_NO_TIMEOUT,
        }
    }
}

/// The byte at offset `i` of the entry with id `id`: a pattern the callbacks check.
fn pattern(id: u32, i: usize) -> u8 {
    (id as u8).wrapping_mul(31).wrapping_add(i as u8)
}

/// Builds entry `id` of `len` bytes, the id in its first four.
/// Short entries (no room for an id) all get the pattern of id 0.
fn entry(id: u32, len: usize) -> Vec<u8> {
    if len < ID_BYTES {
        return (0..len).map(|i| pattern(0, i)).collect();
    }
    let mut e: Vec<u8> = (0..len).map(|i| pattern(id, i)).collect();
    e[..ID_BYTES].copy_from_slice(&id.to_le_bytes());
    e
}

/// Where an entry ended up, by id (entries shorter than `ID_BYTES` are only counted).
#[derive(Default)]
struct Seen {
    delivered: HashMap<u32, u32>,
    dropped: HashMap<u32, u32>,
    delivered_short: u64,
    dropped_short: u64,
}

/// A dispatcher's `user_data`: what its callbacks saw. Owned by the harness, which keeps it
/// until `user_data_free` has been called (it only signals; freeing here would leave nothing
/// to check).
struct Tracker {
    /// Bit `n % 64` set: dispatch call `n` fails.
    fail_mask: u64,
    /// Bit `n % 64` set: dispatch call `n` first calls back into the library.
    reenter_mask: u64,
    calls: AtomicU64,
    /// The dispatcher, for those re-entrant calls. The callback makes them holding this lock,
    /// and the harness clears it (under the lock) before `bd_free`, so no callback uses a
    /// freed handle; the harness also holds it to compare stats with `Reentered`.
    handle: Mutex<Reentered>,
    overflow: u32,
    seen: Mutex<Seen>,
    freed: Mutex<u32>,
    freed_cv: Condvar,
}

/// What the dispatch callback enqueued into its own dispatcher.
struct Reentered {
    handle: *const bd_dispatcher,
    next_id: u32,
    accepted: Vec<u32>,
    rejected: u64,
}

// SAFETY: the handle is only used under the Mutex, while the harness keeps it alive, and
// every function it is passed to is documented as callable from any thread.
unsafe impl Send for Reentered {}

/// Ids of re-entrant entries: the harness's own ids stay below this.
const REENTRANT_IDS: u32 = 1 << 31;

/// From inside the dispatch callback: flush and shutdown must refuse (`REENTRANT`), stats
/// must work, and an enqueue must not wait (its entry is accounted like any other).
fn reenter(t: &Tracker) {
    let mut r = t.handle.lock().unwrap();
    if r.handle.is_null() {
        return;
    }
    let h = r.handle;
    assert_eq!(
        bd_flush(h, BD_NO_TIMEOUT),
        bd_status::Reentrant,
        "bd_flush in a callback"
    );
    assert_eq!(
        bd_shutdown(h, BD_NO_TIMEOUT),
        bd_status::Reentrant,
        "bd_shutdown in a callback"
    );
    let mut st = bd_stats::default();
    assert_eq!(
        bd_stats_get(h, &mut st),
        bd_status::Ok,
        "bd_stats_get in a callback"
    );
    let id = REENTRANT_IDS + r.next_id;
    r.next_id += 1;
    let e = entry(id, 8);
    match bd_enqueue(h, e.as_ptr(), e.len()) {
        bd_status::Ok => r.accepted.push(id),
        s => {
            status_ok_or(
                s,
                &[bd_status::QueueFull, bd_status::Closed],
                "bd_enqueue in a callback",
            );
            r.rejected += 1;
        }
    }
}

/// Checks one batch and returns its entries' ids (None for short entries).
///
/// # Safety
/// `batch` is what the library passed to a callback.
unsafe fn read_batch(batch: *const bd_batch) -> Vec<Option<u32>> {
    assert!(!batch.is_null(), "callback got a NULL batch");
    // SAFETY: valid for the duration of the callback (header: bd_batch).
    let batch = unsafe { &*batch };
    assert!(batch.count > 0, "callback got an empty batch");
    assert!(!batch.entries.is_null());
    // SAFETY: `count` entries at `entries`, valid during the callback.
    let entries = unsafe { std::slice::from_raw_parts(batch.entries, batch.count) };
    let mut bytes = 0usize;
    let mut ids = Vec::with_capacity(entries.len());
    for e in entries {
        let data: &[u8] = match e.len {
            0 => &[],
            // SAFETY: `len` readable bytes at `data`, valid during the callback.
            len => unsafe { std::slice::from_raw_parts(e.data, len) },
        };
        bytes += data.len();
        let id = (data.len() >= ID_BYTES)
            .then(|| u32::from_le_bytes(data[..ID_BYTES].try_into().unwrap()));
        let expected = entry(id.unwrap_or(0), data.len());
        assert!(
            data == &expected[..],
            "entry {id:?} of {} bytes corrupted",
            data.len()
        );
        ids.push(id);
    }
    assert_eq!(
        batch.bytes, bytes,
        "bd_batch.bytes is not the sum of the lengths"
    );
    ids
}

unsafe extern "C" fn on_dispatch(user_data: *mut c_void, batch: *const bd_batch) -> c_int {
    // SAFETY: user_data is the harness's live Tracker (kept until user_data_free).
    let t = unsafe { &*(user_data as *const Tracker) };
    // SAFETY: from the library.
    let ids = unsafe { read_batch(batch) };
    // SAFETY: checked non-NULL by read_batch.
    assert!(unsafe { (*batch).attempt } >= 1, "dispatch with attempt 0");
    let call = t.calls.fetch_add(1, Ordering::Relaxed);
    if t.reenter_mask & (1 << (call % 64)) != 0 {
        reenter(t);
    }
    if t.fail_mask & (1 << (call % 64)) != 0 {
        return -1;
    }
    let mut seen = t.seen.lock().unwrap();
    for id in ids {
        match id {
            Some(id) => *seen.delivered.entry(id).or_default() += 1,
            None => seen.delivered_short += 1,
        }
    }
    0
}

unsafe extern "C" fn on_drop(
    user_data: *mut c_void,
    batch: *const bd_batch,
    reason: bd_drop_reason,
) {
    // SAFETY: as in on_dispatch.
    let t = unsafe { &*(user_data as *const Tracker) };
    // SAFETY: from the library.
    let ids = unsafe { read_batch(batch) };
    // SAFETY: checked non-NULL by read_batch.
    let attempt = unsafe { (*batch).attempt };
    match reason {
        bd_drop_reason::Failed => assert!(attempt >= 1, "FAILED entries never dispatched"),
        bd_drop_reason::Evicted => {
            assert_eq!(
                t.overflow, BD_OVERFLOW_DROP_OLDEST,
                "EVICTED without DROP_OLDEST"
            );
            assert_eq!(attempt, 0, "evicted entries had been dispatched");
        }
        bd_drop_reason::ShutdownTimeout => assert_eq!(attempt, 0),
    }
    let mut seen = t.seen.lock().unwrap();
    for id in ids {
        match id {
            Some(id) => *seen.dropped.entry(id).or_default() += 1,
            None => seen.dropped_short += 1,
        }
    }
}

unsafe extern "C" fn on_user_data_free(user_data: *mut c_void) {
    // SAFETY: as in on_dispatch.
    let t = unsafe { &*(user_data as *const Tracker) };
    let mut freed = t.freed.lock().unwrap();
    *freed += 1;
    // Notified under the lock: once the harness sees the count it may free the tracker.
    t.freed_cv.notify_all();
}

/// Trackers of dispatchers whose end cannot be observed (see `Slot::free`).
// Boxed: the tracker's address is the worker's user_data, so it must not move.
#[allow(clippy::vec_box)]
static GRAVEYARD: Mutex<Vec<Box<Tracker>>> = Mutex::new(Vec::new());

/// A live dispatcher and what the harness did with it.
struct Slot {
    handle: *mut bd_dispatcher,
    tracker: Box<Tracker>,
    has_on_drop: bool,
    /// NULL options: no `user_data_free`, so no signal that the last callback is over.
    has_user_data_free: bool,
    /// A `bd_shutdown` returned TIMEOUT, so `bd_free` will not wait for the worker.
    timed_out: bool,
    accepted: Vec<u32>,
    accepted_short: u64,
    rejected: u64,
    shut_down: bool,
}

fn status_ok_or(s: bd_status, allowed: &[bd_status], what: &str) {
    assert!(
        s == bd_status::Ok || allowed.contains(&s),
        "{what}: undocumented status {s:?}"
    );
}

impl Slot {
    fn stats(&self) -> bd_stats {
        let mut st = bd_stats::default();
        let reentered = self.tracker.handle.lock().unwrap();
        assert_eq!(bd_stats_get(self.handle, &mut st), bd_status::Ok);
        assert_eq!(
            st.enqueued,
            st.dispatched
                + st.failed
                + st.evicted
                + st.abandoned
                + st.queued_entries
                + st.in_flight_entries,
            "stats identity broken: {st:?}"
        );
        assert_eq!(
            st.enqueued,
            (self.accepted.len() + reentered.accepted.len()) as u64 + self.accepted_short,
            "{st:?}"
        );
        assert_eq!(st.rejected, self.rejected + reentered.rejected, "{st:?}");
        st
    }

    /// Frees the dispatcher, waits for `user_data_free`, and checks where every entry went.
    fn free(self) {
        // No callback may touch the handle from here on (see `Tracker::handle`).
        self.tracker.handle.lock().unwrap().handle = ptr::null();
        bd_free(self.handle);
        if !self.has_user_data_free {
            if self.timed_out {
                // The worker may still be running callbacks on the tracker, and nothing
                // will say when it stops: keep the tracker alive (reachable, so not a
                // leak) rather than free it under the worker.
                GRAVEYARD.lock().unwrap().push(self.tracker);
                return;
            }
            // Otherwise bd_free joined the worker: its callbacks are over.
            *self.tracker.freed.lock().unwrap() = 1;
        }
        let t = &*self.tracker;
        let deadline = Instant::now() + FREE_DEADLINE;
        let mut freed = t.freed.lock().unwrap();
        while *freed == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "user_data_free not called {FREE_DEADLINE:?} after bd_free"
            );
            freed = t.freed_cv.wait_timeout(freed, left).unwrap().0;
        }
        assert_eq!(*freed, 1, "user_data_free called more than once");
        drop(freed);
        let seen = t.seen.lock().unwrap();
        let mut accepted: HashMap<u32, ()> = HashMap::new();
        let reentered = t.handle.lock().unwrap();
        for &id in self.accepted.iter().chain(&reentered.accepted) {
            accepted.insert(id, ());
            let d = seen.delivered.get(&id).copied().unwrap_or(0);
            let x = seen.dropped.get(&id).copied().unwrap_or(0);
            assert!(
                d + x <= 1,
                "entry {id}: delivered {d} times, dropped {x} times"
            );
            if self.has_on_drop {
                assert_eq!(
                    d + x,
                    1,
                    "entry {id} accepted but neither delivered nor dropped"
                );
            }
        }
        for id in seen.delivered.keys().chain(seen.dropped.keys()) {
            assert!(
                accepted.contains_key(id),
                "entry {id} came out but was never accepted"
            );
        }
        let out_short = seen.delivered_short + seen.dropped_short;
        assert!(out_short <= self.accepted_short, "short entries duplicated");
        if self.has_on_drop {
            assert_eq!(out_short, self.accepted_short, "short entries lost");
        }
        // The tracker (user_data) is dropped here, after its last callback.
    }
}

/// Reads `bd_options` for `bd_new`: NULL, the defaults with fuzzed fields, or not initialised.
fn read_options(input: &mut Input, with_on_drop: bool) -> Option<bd_options> {
    let mode = input.u8() % 8;
    if mode == 0 {
        return None;
    }
    let mut o = std::mem::MaybeUninit::<bd_options>::uninit();
    assert_eq!(bd_options_init(o.as_mut_ptr()), bd_status::Ok);
    // SAFETY: bd_options_init wrote every field.
    let mut o = unsafe { o.assume_init() };
    if mode == 1 {
        o.version = input.u32(); // garbage: bd_new must refuse anything but BD_OPTIONS_VERSION
    }
    o.max_queue_entries = input.size();
    o.max_queue_bytes = input.size();
    o.max_batch_entries = input.size();
    o.max_batch_bytes = input.size();
    o.overflow = match input.u8() % 8 {
        7 => input.u32(), // mostly unknown values
        n => u32::from(n % 3),
    };
    o.block_timeout_ms = u64::from(input.u8() % 8);
    o.max_attempts = u32::from(input.u8() % 5); // 0 is invalid
    o.retry_backoff_ms = u64::from(input.u8() % 8);
    o.retry_backoff_max_ms = u64::from(input.u8() % 10); // may be below retry_backoff_ms
    o.on_drop = with_on_drop.then_some(on_drop as _);
    o.user_data_free = Some(on_user_data_free);
    Some(o)
}

fn op_new(input: &mut Input, slots: &mut Vec<Slot>) {
    let ms_delay = u64::from(input.u8() % 6); // 0 is invalid
    let with_on_drop = !input.u8().is_multiple_of(4);
    let options = read_options(input, with_on_drop);
    let tracker = Box::new(Tracker {
        fail_mask: input.u64() & input.u64(), // sparse: about a quarter of the calls fail
        reenter_mask: input.u64() & input.u64(),
        calls: AtomicU64::new(0),
        handle: Mutex::new(Reentered {
            handle: ptr::null(),
            next_id: 0,
            accepted: Vec::new(),
            rejected: 0,
        }),
        overflow: options.as_ref().map_or(0, |o| o.overflow),
        seen: Mutex::default(),
        freed: Mutex::new(0),
        freed_cv: Condvar::new(),
    });
    let user_data = &*tracker as *const Tracker as *mut c_void;
    let opts_ptr = options
        .as_ref()
        .map_or(ptr::null(), |o| o as *const bd_options);
    let mut out: *mut bd_dispatcher = ptr::null_mut();
    match input.u8() % 16 {
        0 => {
            let s = bd_new(None, user_data, ms_delay.max(1), opts_ptr, &mut out);
            assert_eq!(s, bd_status::NullArg, "bd_new with a NULL dispatch");
            return;
        }
        1 => {
            let s = bd_new(
                Some(on_dispatch),
                user_data,
                ms_delay.max(1),
                opts_ptr,
                ptr::null_mut(),
            );
            assert_eq!(s, bd_status::NullArg, "bd_new with a NULL out");
            return;
        }
        _ => {}
    }
    if slots.len() == SLOTS {
        return;
    }
    let s = bd_new(Some(on_dispatch), user_data, ms_delay, opts_ptr, &mut out);
    let bad_version = options
        .as_ref()
        .is_some_and(|o| o.version != BD_OPTIONS_VERSION);
    if s != bd_status::Ok {
        assert_eq!(s, bd_status::InvalidOptions, "bd_new: undocumented status");
        assert!(out.is_null(), "bd_new wrote *out on failure");
        // user_data still ours, and no callback may ever see it: the Box drops here.
        return;
    }
    assert!(
        !bad_version,
        "bd_new accepted options not made by bd_options_init"
    );
    assert!(ms_delay != 0, "bd_new accepted ms_delay 0");
    assert!(!out.is_null());
    tracker.handle.lock().unwrap().handle = out;
    slots.push(Slot {
        handle: out,
        tracker,
        has_on_drop: options.as_ref().is_some_and(|o| o.on_drop.is_some()),
        has_user_data_free: options.is_some(),
        timed_out: false,
        accepted: Vec::new(),
        accepted_short: 0,
        rejected: 0,
        shut_down: false,
    });
}

/// Picks a live slot, or None for "use a NULL handle".
fn pick(input: &mut Input, slots: &[Slot]) -> Option<usize> {
    let b = input.u8();
    (b != 0xff && !slots.is_empty()).then(|| usize::from(b) % slots.len())
}

fn op_enqueue(input: &mut Input, slots: &mut [Slot], next_id: &mut u32, burst: bool) {
    let slot = pick(input, slots);
    let count = if burst {
        1 + usize::from(input.u8() % 64)
    } else {
        1
    };
    let kind = input.u8() % 16;
    let len = match kind {
        0 => 0,
        1..=3 => usize::from(input.u8() % 8), // around ID_BYTES
        4 => 4097 + usize::from(input.u16()),
        _ => usize::from(input.u16() % 4097),
    };
    let Some(i) = slot else {
        let s = bd_enqueue(ptr::null(), b"x".as_ptr(), 1);
        assert_eq!(s, bd_status::NullArg, "bd_enqueue on a NULL handle");
        return;
    };
    let slot = &mut slots[i];
    if kind == 15 {
        // NULL data: an empty entry when len is 0, NULL_ARG otherwise (SIZE_MAX included).
        let len = [0, 1, 3, usize::MAX][usize::from(input.u8() % 4)];
        let s = bd_enqueue(slot.handle, ptr::null(), len);
        if len != 0 {
            assert_eq!(s, bd_status::NullArg, "bd_enqueue(NULL, {len})");
            return;
        }
        account(slot, s, None);
        return;
    }
    for _ in 0..count {
        let id = *next_id;
        *next_id += 1;
        let e = entry(id, len);
        let s = bd_enqueue(slot.handle, e.as_ptr(), e.len());
        account(slot, s, (len >= ID_BYTES).then_some(id));
    }
}

fn account(slot: &mut Slot, s: bd_status, id: Option<u32>) {
    status_ok_or(
        s,
        &[bd_status::QueueFull, bd_status::TooLarge, bd_status::Closed],
        "bd_enqueue",
    );
    if slot.shut_down {
        assert_ne!(s, bd_status::Ok, "bd_enqueue accepted after bd_shutdown");
    }
    match (s, id) {
        (bd_status::Ok, Some(id)) => slot.accepted.push(id),
        (bd_status::Ok, None) => slot.accepted_short += 1,
        _ => slot.rejected += 1,
    }
}

fn run(data: &[u8]) {
    static SEEDED_LEAK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *SEEDED_LEAK
        .get_or_init(|| std::env::var_os("SOAK_FUZZ_SEEDED_LEAK").is_some_and(|v| v == "1"))
    {
        std::mem::forget(std::hint::black_box(vec![0x5au8; 64]));
    }
    let mut input = Input(data);
    let mut slots: Vec<Slot> = Vec::new();
    let mut next_id = 0u32;
    while !input.is_empty() {
        match input.u8() % 10 {
            0 => op_new(&mut input, &mut slots),
            1 => op_enqueue(&mut input, &mut slots, &mut next_id, false),
            2 => op_enqueue(&mut input, &mut slots, &mut next_id, true),
            3 => {
                let slot = pick(&mut input, &slots);
                let t = input.timeout_ms();
                let Some(i) = slot else {
                    assert_eq!(bd_flush(ptr::null(), t), bd_status::NullArg);
                    continue;
                };
                status_ok_or(
                    bd_flush(slots[i].handle, t),
                    &[bd_status::Timeout],
                    "bd_flush",
                );
            }
            4 => {
                let slot = pick(&mut input, &slots);
                let t = input.timeout_ms();
                let Some(i) = slot else {
                    assert_eq!(bd_shutdown(ptr::null(), t), bd_status::NullArg);
                    continue;
                };
                let s = bd_shutdown(slots[i].handle, t);
                status_ok_or(s, &[bd_status::Timeout], "bd_shutdown");
                slots[i].shut_down = true;
                slots[i].timed_out |= s == bd_status::Timeout;
            }
            5 => match pick(&mut input, &slots) {
                Some(i) => slots.swap_remove(i).free(),
                None => bd_free(ptr::null_mut()),
            },
            6 => match pick(&mut input, &slots) {
                Some(i) => {
                    let st = slots[i].stats();
                    assert!(st.queued_entries <= st.enqueued);
                    assert_eq!(
                        bd_stats_get(slots[i].handle, ptr::null_mut()),
                        bd_status::NullArg
                    );
                }
                None => {
                    let mut st = bd_stats::default();
                    assert_eq!(bd_stats_get(ptr::null(), &mut st), bd_status::NullArg);
                }
            },
            7 => {
                let code = input.u32();
                // SAFETY: documented as a static NUL-terminated string for any value.
                let text = unsafe { CStr::from_ptr(bd_status_str(code)) };
                assert!(!text.to_bytes().is_empty());
                // SAFETY: as above.
                let v = unsafe { CStr::from_ptr(bd_version()) };
                assert!(!v.to_bytes().is_empty());
            }
            8 => assert_eq!(bd_options_init(ptr::null_mut()), bd_status::NullArg),
            _ => {
                // Drain one dispatcher with no deadline: afterwards nothing is queued or in
                // flight, and the callbacks' view matches the counters.
                let Some(i) = pick(&mut input, &slots) else {
                    continue;
                };
                let slot = &mut slots[i];
                assert_eq!(bd_shutdown(slot.handle, BD_NO_TIMEOUT), bd_status::Ok);
                slot.shut_down = true;
                let st = slot.stats();
                assert_eq!((st.queued_entries, st.in_flight_entries), (0, 0), "{st:?}");
                let seen = slot.tracker.seen.lock().unwrap();
                let delivered = seen.delivered.values().map(|&n| u64::from(n)).sum::<u64>()
                    + seen.delivered_short;
                assert_eq!(
                    delivered, st.dispatched,
                    "callbacks saw {delivered}: {st:?}"
                );
                if slot.has_on_drop {
                    let dropped = seen.dropped.values().map(|&n| u64::from(n)).sum::<u64>()
                        + seen.dropped_short;
                    assert_eq!(dropped, st.failed + st.evicted + st.abandoned, "{st:?}");
                }
            }
        }
    }
    for slot in slots {
        slot.free();
    }
}

fuzz_target!(|data: &[u8]| run(data));
