//! The C ABI of background-dispatcher: `bd_*` over [`dispatcher_core`].
//!
//! Rust items carry their C names, so one grep finds a name on both sides; the header
//! `include/background_dispatcher.h` is generated from this file by cbindgen (`make header`),
//! and its comments are the `///` comments here.
//!
//! Statuses and drop reasons are Rust enums because only Rust produces them. `bd_overflow` is a
//! plain `u32` with constants because C writes it: an out-of-range value must be an error
//! (`BD_STATUS_INVALID_OPTIONS`), not undefined behaviour.

#![allow(non_camel_case_types)]
// C hands us raw pointers; every one is NULL-checked and documented in the header, and
// marking the exports `unsafe` would mean nothing to a C caller.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod boundary;

use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use boundary::{ffi_boundary, try_mut, try_ref};
use dispatcher_core::{
    Batch, BuildError, Dispatcher, DropReason, EnqueueError, Entry, FlushError, Options, Overflow,
    ShutdownError,
};

/// A dispatcher: an opaque handle made by `bd_new` and released by `bd_free`.
///
/// Thread safety: every function taking a `const bd_dispatcher *` may be called from any
/// number of threads at once. `bd_free` takes a non-const pointer: call it once, when no other
/// thread uses the handle any more.
pub struct bd_dispatcher {
    dispatcher: Dispatcher,
}

/// The result of every fallible function. 0 is success. Values are stable and only ever
/// appended; `bd_status_str` describes any of them.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum bd_status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL. Nothing was changed.
    NullArg = 1,
    /// The options or `ms_delay` are invalid: options not initialised by `bd_options_init`,
    /// an unknown `overflow`, `ms_delay == 0`, `max_attempts == 0`, a batch limit above the
    /// matching queue limit, or `retry_backoff_max_ms < retry_backoff_ms`. Nothing was created.
    InvalidOptions = 2,
    /// The queue is full and the overflow policy refused the entry. It was not queued.
    QueueFull = 3,
    /// The entry is larger than `max_batch_bytes` or `max_queue_bytes`, or 4 GiB or larger. It
    /// was not queued (and its bytes were not read).
    TooLarge = 4,
    /// The dispatcher is shut down. The entry was not queued.
    Closed = 5,
    /// The deadline passed before the flush or shutdown completed.
    Timeout = 6,
    /// Called from inside the dispatch callback, where waiting would deadlock. Nothing was done.
    Reentrant = 7,
    /// The worker thread could not be started.
    ThreadSpawn = 8,
    /// A bug in the library panicked; it was contained. Please report it.
    Panic = 9,
}

/// Why entries are handed to `on_drop`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum bd_drop_reason {
    /// The batch failed `max_attempts` times (or a shutdown deadline stopped its retries).
    /// On the dispatcher's thread.
    Failed = 0,
    /// Evicted by `BD_OVERFLOW_DROP_OLDEST` to make room. On the thread calling `bd_enqueue`.
    Evicted = 1,
    /// Still queued when a `bd_shutdown` deadline passed. On the thread calling `bd_shutdown`.
    ShutdownTimeout = 2,
}

/// What `bd_enqueue` does when the queue is full: one of `BD_OVERFLOW_*`.
pub type bd_overflow = u32;
/// Refuse the new entry with `BD_STATUS_QUEUE_FULL` (the default).
pub const BD_OVERFLOW_DROP_NEWEST: bd_overflow = 0;
/// Evict the oldest queued entries to `on_drop` (`BD_DROP_REASON_EVICTED`) to make room.
pub const BD_OVERFLOW_DROP_OLDEST: bd_overflow = 1;
/// Wait up to `block_timeout_ms` for room, then `BD_STATUS_QUEUE_FULL`. A `bd_enqueue` from
/// inside the dispatch callback never waits.
pub const BD_OVERFLOW_BLOCK: bd_overflow = 2;

/// Set by `bd_options_init` in `bd_options.version`; `bd_new` refuses any other value.
pub const BD_OPTIONS_VERSION: u32 = 0x6264_0001;

/// `bd_flush` / `bd_shutdown` timeout meaning "no deadline".
pub const BD_NO_TIMEOUT: u64 = u64::MAX;

/// The longest entry `dispatcher_core` can hold (its records store lengths as `u32`).
const MAX_ENTRY_LEN: usize = u32::MAX as usize;

/// One entry of a batch. `data` is borrowed for the duration of the callback only, is not
/// NUL-terminated and has no alignment guarantee; `len` may be 0.
#[repr(C)]
pub struct bd_entry {
    /// The entry's bytes.
    pub data: *const u8,
    /// Their number.
    pub len: usize,
}

/// A group of entries given to a callback. The struct, the `entries` array and every
/// `entries[i].data` are valid only until the callback returns: copy what you keep.
#[repr(C)]
pub struct bd_batch {
    /// `count` entries, in per-thread enqueue order.
    pub entries: *const bd_entry,
    /// Number of entries; never 0 for a dispatch.
    pub count: usize,
    /// Sum of the entries' lengths.
    pub bytes: usize,
    /// 1 on the first dispatch of these entries, 2 on the first retry...; 0 in `on_drop` for
    /// entries that were never dispatched (evicted or abandoned).
    pub attempt: u32,
}

/// The dispatch callback. Returns 0 if the batch was delivered, anything else if it failed.
///
/// Called only on the dispatcher's own thread, never concurrently with itself, at most every
/// `ms_delay` ms (sooner for a full batch, `bd_flush` or `bd_shutdown`), never with an empty
/// batch, and with no library lock held: it may call `bd_enqueue` (which then never blocks),
/// `bd_stats_get` and `bd_free` (deferred until it returns); `bd_flush` and `bd_shutdown`
/// return `BD_STATUS_REENTRANT`. It must not unwind (no C++ exception may escape it).
pub type bd_dispatch_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, batch: *const bd_batch) -> c_int>;

/// Receives entries that leave the queue without a successful dispatch. Runs on the thread
/// named by the reason (see `bd_drop_reason`), possibly at the same time as the dispatch
/// callback, so `user_data` must be safe to share. Same buffer rules as `bd_dispatch_fn`.
pub type bd_drop_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, batch: *const bd_batch, reason: bd_drop_reason),
>;

/// Frees `user_data`. Called exactly once, after the last callback, by `bd_free` (or by the
/// dispatcher's thread when `bd_free` could not wait; see `bd_free`). Never called when
/// `bd_new` fails: then the caller still owns `user_data`.
pub type bd_user_data_free_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// Limits and policies. Initialise with `bd_options_init`, then change fields. Every `max_*`
/// size is 0 for "no limit".
#[repr(C)]
pub struct bd_options {
    /// Set by `bd_options_init`; do not change.
    pub version: u32,
    /// Most entries queued at once, the batch in flight not counted. Default 0.
    pub max_queue_entries: usize,
    /// Most bytes queued at once, the batch in flight not counted. Default 64 MiB.
    pub max_queue_bytes: usize,
    /// Most entries per batch; a full batch is dispatched without waiting. Default 0.
    pub max_batch_entries: usize,
    /// Most bytes per batch; same trigger. Default 0.
    pub max_batch_bytes: usize,
    /// `BD_OVERFLOW_*`. Default `BD_OVERFLOW_DROP_NEWEST`.
    pub overflow: bd_overflow,
    /// How long a `BD_OVERFLOW_BLOCK` enqueue waits for room. Default 1000.
    pub block_timeout_ms: u64,
    /// Dispatch attempts per batch, the first included. Default 1 (no retry).
    pub max_attempts: u32,
    /// Wait before the first retry; doubles per retry, jittered into [b/2, b]. Default 100.
    pub retry_backoff_ms: u64,
    /// The cap on the retry wait. Default 30000.
    pub retry_backoff_max_ms: u64,
    /// Optional: receives failed, evicted and abandoned entries. Default NULL.
    pub on_drop: bd_drop_fn,
    /// Optional: frees `user_data` after the last callback. Default NULL.
    pub user_data_free: bd_user_data_free_fn,
}

/// Counters, as one consistent snapshot: `enqueued == dispatched + failed + evicted +
/// abandoned + queued_entries + in_flight_entries`, always. Only the last three decrease.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct bd_stats {
    /// Entries accepted by `bd_enqueue`.
    pub enqueued: u64,
    /// Entries refused by `bd_enqueue` (`QUEUE_FULL`, `TOO_LARGE`, `CLOSED`).
    pub rejected: u64,
    /// Entries in a batch whose dispatch callback returned 0.
    pub dispatched: u64,
    /// Entries in a batch that failed for good.
    pub failed: u64,
    /// Entries evicted by `BD_OVERFLOW_DROP_OLDEST`.
    pub evicted: u64,
    /// Entries removed at a `bd_shutdown` deadline.
    pub abandoned: u64,
    /// Dispatch callback calls, retries included.
    pub batches: u64,
    /// Dispatch callback calls that were retries.
    pub retries: u64,
    /// Entries waiting in the queue.
    pub queued_entries: u64,
    /// Bytes of the entries waiting in the queue.
    pub queued_bytes: u64,
    /// Entries of the batch being dispatched or waiting for a retry.
    pub in_flight_entries: u64,
}

// `bd_entry` must be `dispatcher_core::Entry`'s layout: batches are handed over without a copy.
const _: () = {
    assert!(size_of::<bd_entry>() == size_of::<Entry<'static>>());
    assert!(align_of::<bd_entry>() == align_of::<Entry<'static>>());
};

/// The caller's `user_data`, freed with its `user_data_free` once armed (after `bd_new`
/// succeeded) and once the last callback holding it is gone.
struct UserData {
    ptr: *mut c_void,
    free: bd_user_data_free_fn,
    armed: AtomicBool,
}

// SAFETY: the header requires `user_data` to be usable from the dispatcher's thread (and, with
// `on_drop`, from any thread); the library only passes the pointer back to the caller's code.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

impl Drop for UserData {
    fn drop(&mut self) {
        if let (Some(free), true) = (self.free, self.armed.load(Ordering::Acquire)) {
            // SAFETY: the caller gave us `free` for exactly this pointer; this runs once.
            unsafe { free(self.ptr) };
        }
    }
}

/// A dispatch callback returned non-zero.
#[derive(Debug)]
struct CallbackFailed;

impl std::fmt::Display for CallbackFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the dispatch callback returned non-zero")
    }
}

impl std::error::Error for CallbackFailed {}

fn c_batch(batch: &Batch<'_>) -> bd_batch {
    bd_batch {
        entries: batch.entries().as_ptr().cast::<bd_entry>(),
        count: batch.len(),
        bytes: batch.bytes(),
        attempt: batch.attempt(),
    }
}

fn c_reason(reason: DropReason) -> bd_drop_reason {
    match reason {
        DropReason::Failed => bd_drop_reason::Failed,
        DropReason::Evicted => bd_drop_reason::Evicted,
        DropReason::ShutdownTimeout => bd_drop_reason::ShutdownTimeout,
    }
}

fn timeout(ms: u64) -> Option<Duration> {
    (ms != BD_NO_TIMEOUT).then(|| Duration::from_millis(ms))
}

fn core_options(options: &bd_options) -> Result<Options, bd_status> {
    if options.version != BD_OPTIONS_VERSION {
        return Err(bd_status::InvalidOptions);
    }
    let overflow = match options.overflow {
        BD_OVERFLOW_DROP_NEWEST => Overflow::DropNewest,
        BD_OVERFLOW_DROP_OLDEST => Overflow::DropOldest,
        BD_OVERFLOW_BLOCK => Overflow::Block,
        _ => return Err(bd_status::InvalidOptions),
    };
    Ok(Options {
        max_queue_entries: options.max_queue_entries,
        max_queue_bytes: options.max_queue_bytes,
        max_batch_entries: options.max_batch_entries,
        max_batch_bytes: options.max_batch_bytes,
        overflow,
        block_timeout: Duration::from_millis(options.block_timeout_ms),
        max_attempts: options.max_attempts,
        retry_backoff: Duration::from_millis(options.retry_backoff_ms),
        retry_backoff_max: Duration::from_millis(options.retry_backoff_max_ms),
    })
}

impl From<EnqueueError> for bd_status {
    fn from(err: EnqueueError) -> Self {
        match err {
            EnqueueError::QueueFull | EnqueueError::WouldBlock => bd_status::QueueFull,
            EnqueueError::TooLarge => bd_status::TooLarge,
            EnqueueError::Closed => bd_status::Closed,
            EnqueueError::ThreadSpawn => bd_status::ThreadSpawn,
        }
    }
}

impl From<FlushError> for bd_status {
    fn from(err: FlushError) -> Self {
        match err {
            FlushError::Timeout => bd_status::Timeout,
            FlushError::Reentrant => bd_status::Reentrant,
        }
    }
}

impl From<ShutdownError> for bd_status {
    fn from(err: ShutdownError) -> Self {
        match err {
            ShutdownError::Timeout => bd_status::Timeout,
            ShutdownError::Reentrant => bd_status::Reentrant,
        }
    }
}

fn status<E: Into<bd_status>>(result: Result<(), E>) -> bd_status {
    result.map_or_else(Into::into, |()| bd_status::Ok)
}

/// Fills `*options` with the defaults and sets its version. Call it before changing fields.
///
/// Returns `BD_STATUS_NULL_ARG` if `options` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn bd_options_init(options: *mut bd_options) -> bd_status {
    ffi_boundary!(bd_status::Panic, {
        if options.is_null() {
            return bd_status::NullArg;
        }
        // SAFETY: non-NULL, and the caller promises room for a `bd_options`; `write` reads
        // nothing, so uninitialised memory is fine.
        unsafe { options.write(default_options()) };
        bd_status::Ok
    })
}

fn default_options() -> bd_options {
    let d = Options::default();
    let ms = |t: Duration| t.as_millis() as u64;
    bd_options {
        version: BD_OPTIONS_VERSION,
        max_queue_entries: d.max_queue_entries,
        max_queue_bytes: d.max_queue_bytes,
        max_batch_entries: d.max_batch_entries,
        max_batch_bytes: d.max_batch_bytes,
        overflow: BD_OVERFLOW_DROP_NEWEST,
        block_timeout_ms: ms(d.block_timeout),
        max_attempts: d.max_attempts,
        retry_backoff_ms: ms(d.retry_backoff),
        retry_backoff_max_ms: ms(d.retry_backoff_max),
        on_drop: None,
        user_data_free: None,
    }
}

/// Creates a dispatcher and starts its thread. On success writes the handle to `*out`; on any
/// failure `*out` is untouched and the caller still owns `user_data`.
///
/// - `dispatch`: called with each batch on the dispatcher's thread (see `bd_dispatch_fn`).
/// - `user_data`: passed to every callback unchanged; it must be usable from the dispatcher's
///   thread (and from any thread if `on_drop` is set). Freed by `options->user_data_free`.
/// - `ms_delay`: minimum time between dispatch starts, in ms; must not be 0.
/// - `options`: NULL for the defaults; copied, so it may be freed after the call.
///
/// Returns `BD_STATUS_NULL_ARG` (NULL `dispatch` or `out`), `BD_STATUS_INVALID_OPTIONS`,
/// `BD_STATUS_THREAD_SPAWN`.
#[unsafe(no_mangle)]
pub extern "C" fn bd_new(
    dispatch: bd_dispatch_fn,
    user_data: *mut c_void,
    ms_delay: u64,
    options: *const bd_options,
    out: *mut *mut bd_dispatcher,
) -> bd_status {
    ffi_boundary!(bd_status::Panic, {
        let Some(dispatch) = dispatch else {
            return bd_status::NullArg;
        };
        let out = try_mut!(out);
        let defaults;
        let options = match options.is_null() {
            true => {
                defaults = default_options();
                &defaults
            }
            false => try_ref!(options),
        };
        let core = match core_options(options) {
            Ok(core) => core,
            Err(status) => return status,
        };
        let user = Arc::new(UserData {
            ptr: user_data,
            free: options.user_data_free,
            armed: AtomicBool::new(false),
        });
        let mut builder = Dispatcher::builder(Duration::from_millis(ms_delay)).options(core);
        if let Some(on_drop) = options.on_drop {
            let user = Arc::clone(&user);
            builder = builder.on_drop(move |batch, reason| {
                let batch = c_batch(batch);
                // SAFETY: the caller's callback with the caller's pointer; see `bd_drop_fn`.
                unsafe { on_drop(user.ptr, &batch, c_reason(reason)) };
            });
        }
        let dispatch_user = Arc::clone(&user);
        let built = builder.build(move |batch| {
            let batch = c_batch(batch);
            // SAFETY: the caller's callback with the caller's pointer; see `bd_dispatch_fn`.
            match unsafe { dispatch(dispatch_user.ptr, &batch) } {
                0 => Ok(()),
                _ => Err(Box::new(CallbackFailed)),
            }
        });
        match built {
            Ok(dispatcher) => {
                user.armed.store(true, Ordering::Release);
                *out = Box::into_raw(Box::new(bd_dispatcher { dispatcher }));
                bd_status::Ok
            }
            Err(BuildError::InvalidOptions(_)) => bd_status::InvalidOptions,
            Err(BuildError::ThreadSpawn(_)) => bd_status::ThreadSpawn,
        }
    })
}

/// Copies `len` bytes at `data` into the queue. Any thread, any number at once.
///
/// Returns at once (no allocation in steady state, no syscall), except with
/// `BD_OVERFLOW_BLOCK` on a full queue. `data` may be NULL only if `len` is 0.
/// Returns `BD_STATUS_NULL_ARG`, `BD_STATUS_QUEUE_FULL`, `BD_STATUS_TOO_LARGE`,
/// `BD_STATUS_CLOSED`, or `BD_STATUS_THREAD_SPAWN` (first enqueue in a fork child). The
/// arguments are checked first: after `bd_shutdown`, a NULL `data` still gives
/// `BD_STATUS_NULL_ARG` and an oversized `len` `BD_STATUS_TOO_LARGE`; any other entry gets
/// `BD_STATUS_CLOSED`.
#[unsafe(no_mangle)]
pub extern "C" fn bd_enqueue(d: *const bd_dispatcher, data: *const u8, len: usize) -> bd_status {
    ffi_boundary!(bd_status::Panic, {
        let d = try_ref!(d);
        let bytes: &[u8] = match (data.is_null(), len) {
            (true, 0) => &[],
            (true, _) => return bd_status::NullArg,
            // No entry can be this long: refused (and counted) on the length alone, charged
            // with nothing to copy. `data` is never read, and no slice of `len` bytes is
            // formed, which above `isize::MAX` would be undefined behaviour.
            (false, _) if len > MAX_ENTRY_LEN => {
                return status(d.dispatcher.enqueue_charged(&[], len));
            }
            // SAFETY: the caller promises `len` readable bytes at `data`.
            (false, _) => unsafe { std::slice::from_raw_parts(data, len) },
        };
        status(d.dispatcher.enqueue(bytes))
    })
}

/// Dispatches what is queued without waiting for the window, and waits up to `timeout_ms`
/// (`BD_NO_TIMEOUT`: forever) until every entry accepted before the call is dispatched or
/// dropped. Any thread. Returns `BD_STATUS_TIMEOUT` (the flush goes on) or
/// `BD_STATUS_REENTRANT` (called from a callback).
#[unsafe(no_mangle)]
pub extern "C" fn bd_flush(d: *const bd_dispatcher, timeout_ms: u64) -> bd_status {
    ffi_boundary!(bd_status::Panic, {
        let d = try_ref!(d);
        status(d.dispatcher.flush(timeout(timeout_ms)))
    })
}

/// Stops accepting entries (later `bd_enqueue` calls get `BD_STATUS_CLOSED`), dispatches
/// everything queued at once, and waits up to `timeout_ms` (`BD_NO_TIMEOUT`: forever).
/// Any thread; idempotent.
///
/// At the deadline, entries still queued are removed and handed to `on_drop` with
/// `BD_DROP_REASON_SHUTDOWN_TIMEOUT` on this thread, and `BD_STATUS_TIMEOUT` is returned; the
/// batch in flight may still finish (without further retries). From a callback:
/// `BD_STATUS_REENTRANT`.
#[unsafe(no_mangle)]
pub extern "C" fn bd_shutdown(d: *const bd_dispatcher, timeout_ms: u64) -> bd_status {
    ffi_boundary!(bd_status::Panic, {
        let d = try_ref!(d);
        status(d.dispatcher.shutdown(timeout(timeout_ms)))
    })
}

/// Writes a consistent snapshot of the counters to `*out`. Any thread, any time.
#[unsafe(no_mangle)]
pub extern "C" fn bd_stats_get(d: *const bd_dispatcher, out: *mut bd_stats) -> bd_status {
    ffi_boundary!(bd_status::Panic, {
        let d = try_ref!(d);
        let out = try_mut!(out);
        let s = d.dispatcher.stats();
        *out = bd_stats {
            enqueued: s.enqueued,
            rejected: s.rejected,
            dispatched: s.dispatched,
            failed: s.failed,
            evicted: s.evicted,
            abandoned: s.abandoned,
            batches: s.batches,
            retries: s.retries,
            queued_entries: s.queued_entries,
            queued_bytes: s.queued_bytes,
            in_flight_entries: s.in_flight_entries,
        };
        bd_status::Ok
    })
}

/// Shuts the dispatcher down with no deadline (everything accepted is dispatched or dropped),
/// joins its thread, calls `user_data_free(user_data)`, and frees the handle. NULL is a no-op.
///
/// Call it once, after every other thread has stopped using `d`. It does not wait in two
/// cases: called from inside a callback, or after a `bd_shutdown` that returned
/// `BD_STATUS_TIMEOUT`. Then the dispatcher's thread finishes alone and frees everything
/// (calling `user_data_free`) after its last callback returns. Either way `d` is invalid once
/// this returns.
#[unsafe(no_mangle)]
pub extern "C" fn bd_free(d: *mut bd_dispatcher) {
    ffi_boundary!((), {
        if !d.is_null() {
            // SAFETY: `d` came from `Box::into_raw` in `bd_new`, and the caller frees it once.
            drop(unsafe { Box::from_raw(d) });
        }
    })
}

/// A static, NUL-terminated description of any status value. Never NULL; do not free.
/// Values that are not a `bd_status` all give the same text, "unknown status".
#[unsafe(no_mangle)]
pub extern "C" fn bd_status_str(status: u32) -> *const c_char {
    ffi_boundary!(c"internal panic".as_ptr(), {
        status_text(status).as_ptr().cast()
    })
}

fn status_text(status: u32) -> &'static [u8] {
    let text: &'static [u8] = match status {
        0 => b"ok\0",
        1 => b"a required pointer argument is NULL\0",
        2 => b"invalid options\0",
        3 => b"queue full\0",
        4 => b"entry larger than the byte limits\0",
        5 => b"dispatcher is shut down\0",
        6 => b"deadline passed\0",
        7 => b"called from inside a dispatcher callback\0",
        8 => b"could not start the dispatcher thread\0",
        9 => b"internal panic (a bug; please report it)\0",
        _ => b"unknown status\0",
    };
    text
}

/// The library version, e.g. "0.1.0": static, NUL-terminated, never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn bd_version() -> *const c_char {
    ffi_boundary!(c"unknown".as_ptr(), {
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
    })
}

#[cfg(test)]
mod tests;
