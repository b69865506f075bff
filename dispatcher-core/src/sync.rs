//! The concurrency primitives the engine is built on: std's, or loom's under `cfg(loom)`.
//!
//! The model checks (`tests/loom_*.rs`, run by `make test-loom`) drive the real engine, not a
//! copy of it. For that every lock, condition variable, atomic, thread and park the hand-off
//! between producers, the worker and `flush`/`shutdown` goes through is named here, once: a
//! normal build re-exports std's and compiles to exactly what it did without this module;
//! `RUSTFLAGS="--cfg loom"` swaps in loom's, which explore every interleaving of them.
//!
//! What loom cannot model gets a deterministic stand-in under `cfg(loom)` only:
//! - **time** stands still ([`now`] is one fixed instant), so a timed wait ([`park_timeout`],
//!   `Condvar::wait_timeout`) ends only by a wake-up, never by its timeout. A model therefore
//!   proves that flush, shutdown, the size trigger and `Block` waiters never depend on a
//!   timer to make progress; windows that end by time alone are left to the timing tests;
//! - **`SeqCst` accesses**, which loom treats as `AcqRel` (its README, "Unsupported
//!   features"): it then reports the store-buffering pattern that `SeqCst` exists to forbid
//!   as a bug. The engine relies on that pattern where a waiter registers and then re-checks
//!   (`space_waiters` against the pool, in `wait_for_room` / `room_freed`). So under loom a
//!   `SeqCst` access is a `SeqCst` fence on each side of the access, which loom does model.
//!   That is what x86 does, and never weaker than C11's `SeqCst` (stronger for the plain
//!   accesses around it: a bug that needs exactly that weakness, as on ARM, goes unseen);
//! - **`OnceLock`**, which loom lacks: a flag published with release/acquire over a cell,
//!   which is what std's does;
//! - **fork** (fork.rs), **the shard count and a thread's shard** (queue.rs) and **timer
//!   slack** (worker.rs) are replaced next to their code.
//!
//! The engine's `Arc` stays std's (its receivers are `self: &Arc<Self>`, which loom's `Arc`
//! cannot be); the models check instead that the engine is freed once the worker exits.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

#[cfg(loom)]
pub(crate) use self::seq_cst::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::Ordering;
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

pub(crate) use std::time::Instant;

/// Threads, parking and the worker's handle.
pub(crate) mod thread {
    #[cfg(not(loom))]
    pub(crate) use std::thread::{
        Builder, JoinHandle, Thread, current, park, park_timeout, yield_now,
    };

    #[cfg(loom)]
    pub(crate) use self::model::{Builder, JoinHandle, Thread, current, park, park_timeout};
    #[cfg(loom)]
    pub(crate) use loom::thread::yield_now;

    /// Parking with std's token semantics, for loom.
    ///
    /// loom 0.7's own `Thread::unpark` also wakes a thread that is blocked on something other
    /// than `park` (a mutex, a join), which then fails inside loom ("expected to be able to
    /// acquire lock"; tokio-rs/loom#249). The worker is unparked while it may be waiting for
    /// the state lock, so each thread here parks on its own token instead: a flag under a
    /// loom mutex, with a condition variable. That is std's contract (`unpark` makes the
    /// token available, `park` consumes it or blocks until it is), minus spurious wake-ups,
    /// which the worker's loop tolerates anyway.
    #[cfg(loom)]
    mod model {
        use std::cell::RefCell;
        // std's `Arc`: loom's must be dropped while the model runs, and a thread's locals
        // may be dropped after a failed model has stopped.
        use std::sync::Arc;
        use std::time::Duration;

        use loom::sync::{Condvar, Mutex};

        #[derive(Default)]
        struct Parker {
            token: Mutex<bool>,
            unparked: Condvar,
        }

        impl Parker {
            fn park(&self) {
                let mut token = self.token.lock().unwrap();
                while !*token {
                    token = self.unparked.wait(token).unwrap();
                }
                *token = false;
            }

            fn unpark(&self) {
                *self.token.lock().unwrap() = true;
                self.unparked.notify_one();
            }
        }

        loom::thread_local! {
            /// This thread's token: installed by `Builder::spawn`, or made at first use.
            static PARKER: RefCell<Option<Arc<Parker>>> = RefCell::new(None);
        }

        fn parker() -> Arc<Parker> {
            PARKER.with(|slot| Arc::clone(slot.borrow_mut().get_or_insert_with(Arc::default)))
        }

        #[derive(Clone)]
        pub(crate) struct Thread {
            thread: loom::thread::Thread,
            parker: Arc<Parker>,
        }

        impl Thread {
            pub(crate) fn id(&self) -> loom::thread::ThreadId {
                self.thread.id()
            }

            pub(crate) fn unpark(&self) {
                self.parker.unpark();
            }
        }

        pub(crate) fn current() -> Thread {
            Thread {
                thread: loom::thread::current(),
                parker: parker(),
            }
        }

        pub(crate) fn park() {
            parker().park();
        }

        /// Time stands still in a model: a timed park ends only when the thread is unparked.
        pub(crate) fn park_timeout(_timeout: Duration) {
            park();
        }

        pub(crate) struct Builder(loom::thread::Builder);

        impl Builder {
            pub(crate) fn new() -> Self {
                Builder(loom::thread::Builder::new())
            }

            pub(crate) fn name(self, name: String) -> Self {
                Builder(self.0.name(name))
            }

            pub(crate) fn spawn<F, T>(self, f: F) -> std::io::Result<JoinHandle<T>>
            where
                F: FnOnce() -> T + Send + 'static,
                T: Send + 'static,
            {
                let parker = Arc::new(Parker::default());
                let mine = Arc::clone(&parker);
                let handle = self.0.spawn(move || {
                    PARKER.with(|slot| *slot.borrow_mut() = Some(mine));
                    f()
                })?;
                let thread = Thread {
                    thread: handle.thread().clone(),
                    parker,
                };
                Ok(JoinHandle { handle, thread })
            }
        }

        pub(crate) struct JoinHandle<T> {
            handle: loom::thread::JoinHandle<T>,
            thread: Thread,
        }

        impl<T> JoinHandle<T> {
            pub(crate) fn thread(&self) -> &Thread {
                &self.thread
            }

            pub(crate) fn join(self) -> std::thread::Result<T> {
                self.handle.join()
            }
        }
    }
}

/// The current time (`Instant::now()`), or under `cfg(loom)` one fixed instant.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// The current time (`Instant::now()`), or under `cfg(loom)` one fixed instant.
#[cfg(loom)]
pub(crate) fn now() -> Instant {
    static FROZEN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *FROZEN.get_or_init(Instant::now)
}

/// loom's atomics, with `SeqCst` accesses fenced on both sides (see the module docs).
#[cfg(loom)]
mod seq_cst {
    use loom::sync::atomic::{self as loom_atomic, Ordering, fence};

    /// Runs `access` with the ordering `order`; a `SeqCst` one between two `SeqCst` fences.
    fn fenced<R>(order: Ordering, access: impl FnOnce() -> R) -> R {
        if order != Ordering::SeqCst {
            return access();
        }
        fence(Ordering::SeqCst);
        let result = access();
        fence(Ordering::SeqCst);
        result
    }

    macro_rules! fenced_atomic {
        ($name:ident $(<$param:ident>)?, $value:ty $(, $arith:ident)*) => {
            #[derive(Default)]
            pub(crate) struct $name$(<$param>)?(loom_atomic::$name$(<$param>)?);

            // The engine uses a different subset of the methods on each type.
            #[allow(dead_code)]
            impl$(<$param>)? $name$(<$param>)? {
                pub(crate) fn new(value: $value) -> Self {
                    Self(loom_atomic::$name::new(value))
                }
                pub(crate) fn load(&self, order: Ordering) -> $value {
                    fenced(order, || self.0.load(order))
                }
                pub(crate) fn store(&self, value: $value, order: Ordering) {
                    fenced(order, || self.0.store(value, order))
                }
                pub(crate) fn swap(&self, value: $value, order: Ordering) -> $value {
                    fenced(order, || self.0.swap(value, order))
                }
                pub(crate) fn compare_exchange(
                    &self,
                    current: $value,
                    new: $value,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$value, $value> {
                    fenced(success, || self.0.compare_exchange(current, new, success, failure))
                }
                pub(crate) fn compare_exchange_weak(
                    &self,
                    current: $value,
                    new: $value,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$value, $value> {
                    fenced(success, || {
                        self.0.compare_exchange_weak(current, new, success, failure)
                    })
                }
                $(
                    pub(crate) fn $arith(&self, value: $value, order: Ordering) -> $value {
                        fenced(order, || self.0.$arith(value, order))
                    }
                )*
            }
        };
    }

    fenced_atomic!(AtomicBool, bool);
    fenced_atomic!(AtomicU64, u64, fetch_add, fetch_sub);
    fenced_atomic!(AtomicUsize, usize, fetch_add, fetch_sub);
    fenced_atomic!(AtomicPtr<T>, *mut T);
}

/// `std::sync::OnceLock` for loom: set once (here always under a lock), read without one.
#[cfg(loom)]
pub(crate) struct OnceLock<T> {
    ready: AtomicBool,
    value: loom::cell::UnsafeCell<Option<T>>,
}

// SAFETY: the value is written once, before `ready` is released, and only read after `ready`
// is acquired, as in std's `OnceLock`; loom's cell checks that these accesses never race.
#[cfg(loom)]
unsafe impl<T: Send + Sync> Sync for OnceLock<T> {}

#[cfg(loom)]
impl<T> OnceLock<T> {
    pub(crate) fn new() -> Self {
        OnceLock {
            ready: AtomicBool::new(false),
            value: loom::cell::UnsafeCell::new(None),
        }
    }

    pub(crate) fn get(&self) -> Option<&T> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: `ready` is set only after the value was written, and it is never written
        // again; the reference lives as long as `self`.
        self.value.with(|value| unsafe { (*value).as_ref() })
    }

    /// Sets the value, or hands it back if there is one already. Callers serialise `set`
    /// among themselves (the engine holds `Inner::join`), as std's does for them.
    pub(crate) fn set(&self, value: T) -> Result<(), T> {
        if self.ready.load(Ordering::Acquire) {
            return Err(value);
        }
        // SAFETY: not `ready`, so no reader looks at the cell, and callers serialise writers.
        self.value.with_mut(|cell| unsafe { *cell = Some(value) });
        self.ready.store(true, Ordering::Release);
        Ok(())
    }
}
