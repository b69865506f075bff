//! Noticing that this process is a `fork()` child, without a syscall on the hot path.
//!
//! After `fork()` the child has a copy of every dispatcher but none of their worker threads, and
//! any lock a parent thread held at that instant stays locked forever. So each dispatcher records
//! the *process generation* its state belongs to; when the generation changes it leaks the
//! inherited state (the parent delivers those entries) and starts afresh.
//!
//! Two independent signals move the generation, because some forking code skips one of them:
//! - a `pthread_atfork` child handler (runs on every libc `fork()`);
//! - a page mapped with `MADV_WIPEONFORK`, which the kernel zeroes in a child however it was
//!   created (Linux 4.14+), even by a raw `clone` that runs no atfork handler.
//!
//! Reading the generation is two plain loads; `getpid()` would be a syscall per call.
//!
//! Under `cfg(loom)` (sync.rs) there is no fork: the generation is always 1, and the statics
//! and the atfork handler, which would outlive the model's runs, are not used.

#![cfg_attr(loom, allow(dead_code))]

use std::sync::Once;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// The highest generation handed out in this process or its ancestors (ordinary memory, so a
/// child starts from its parent's value and never reuses one).
static LAST_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Used when no wipe-on-fork page could be mapped.
static FALLBACK: AtomicU64 = AtomicU64::new(1);

/// The current generation lives here: the wipe-on-fork page if there is one, else `FALLBACK`.
/// 0 means "a fork happened and nobody has noticed yet".
static CURRENT: AtomicPtr<AtomicU64> =
    AtomicPtr::new(&FALLBACK as *const AtomicU64 as *mut AtomicU64);

static INIT: Once = Once::new();

/// Installs the atfork handler and the wipe-on-fork page, once per process.
#[cfg(not(loom))]
pub(crate) fn init() {
    INIT.call_once(|| {
        if let Some(page) = wipe_on_fork_page() {
            page.store(FALLBACK.load(Ordering::Relaxed), Ordering::Relaxed);
            CURRENT.store(
                page as *const AtomicU64 as *mut AtomicU64,
                Ordering::Release,
            );
        }
        // SAFETY: `child_after_fork` only touches atomics, which is async-signal-safe, as a
        // handler run in a fork child must be.
        unsafe { libc::pthread_atfork(None, None, Some(child_after_fork)) };
    });
}

/// The generation of this process. Changes exactly once in each fork child.
#[cfg(not(loom))]
#[inline]
pub(crate) fn generation() -> u64 {
    // SAFETY: `CURRENT` points at a static or at a page that is never unmapped.
    let current = unsafe { &*CURRENT.load(Ordering::Acquire) };
    match current.load(Ordering::Acquire) {
        0 => claim_new_generation(current),
        generation => generation,
    }
}

/// No fork in a model.
#[cfg(loom)]
pub(crate) fn init() {}

/// No fork in a model: always the first generation.
#[cfg(loom)]
#[inline]
pub(crate) fn generation() -> u64 {
    1
}

/// Moves a wiped page to a fresh generation; racing threads agree on one winner.
#[cold]
fn claim_new_generation(current: &AtomicU64) -> u64 {
    let fresh = LAST_GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
    match current.compare_exchange(0, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh,
        Err(winner) => winner,
    }
}

extern "C" fn child_after_fork() {
    // Only the forking thread exists in the child at this point.
    let fresh = LAST_GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
    // SAFETY: as in `generation`.
    unsafe { &*CURRENT.load(Ordering::Acquire) }.store(fresh, Ordering::Release);
}

#[cfg(target_os = "linux")]
fn wipe_on_fork_page() -> Option<&'static AtomicU64> {
    // SAFETY: an anonymous private mapping of one page; checked for failure before use, and
    // never unmapped, so the `'static` reference stays valid.
    unsafe {
        let len = 4096;
        let page = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if page == libc::MAP_FAILED {
            return None;
        }
        if libc::madvise(page, len, libc::MADV_WIPEONFORK) != 0 {
            libc::munmap(page, len);
            return None;
        }
        Some(&*(page as *const AtomicU64))
    }
}

#[cfg(not(target_os = "linux"))]
fn wipe_on_fork_page() -> Option<&'static AtomicU64> {
    None
}
