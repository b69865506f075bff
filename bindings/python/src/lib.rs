//! `background_dispatcher._background_dispatcher`: the class `_BackgroundDispatcher` over
//! dispatcher-core. The public `BackgroundDispatcher` (python/background_dispatcher) extends it
//! with what is easier in Python: the context manager, `aflush`/`aclose`, `__del__`.
//!
//! Entries are Python objects, stored without serialisation: the queue holds each entry's
//! object pointer (8 bytes) and a strong reference to it, charged `len()` bytes for bytes-like
//! and `str` entries (0 for other objects). That reference is released exactly once, with the
//! GIL: after a successful dispatch, or after `on_drop` saw the entry. (A fork child leaks the
//! references its parent queued, with the rest of the parent's queue: they are the parent's.)
//!
//! GIL rules, which make deadlocks impossible by construction:
//! - `enqueue` keeps the GIL: it is cheaper than releasing it, and it never waits, except for
//!   `overflow="block"`, which releases the GIL before it waits;
//! - every other call that can wait (`flush`, `close`, dropping the last reference) releases
//!   the GIL while waiting, in slices, checking for signals between them;
//! - the worker thread attaches to Python only inside the callbacks, where dispatcher-core
//!   holds no lock, and never once the interpreter has started exiting (`EXITING`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use dispatcher_core::{
    Batch, BuildError, DispatchResult, Dispatcher, DropReason, EnqueueError, FlushError, Options,
    Overflow, ShutdownError, Stats,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyMemoryView, PyString, PyTuple};
use pyo3::{PyTraverseError, create_exception, intern};

create_exception!(
    _background_dispatcher,
    ReentrantError,
    PyRuntimeError,
    "flush() or close() was called from inside the dispatch function (or, for an async dispatch \
     function, from the event loop that runs it), where waiting would deadlock."
);

/// Set at interpreter exit (after every dispatcher was closed): from then on no worker
/// attaches to Python, which may be finalizing.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Worker callbacks attached to Python (or about to): exit waits for them to leave. Reset in
/// a fork child, which has none of its parent's workers (`reset_after_fork`).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// `pthread_atfork` child handler: only atomics, as a fork child requires.
extern "C" fn reset_after_fork() {
    ACTIVE.store(0, Ordering::SeqCst);
}

/// How long a waiting call stays detached before it checks for signals (Ctrl-C).
const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// Calls that can run Python code on the worker thread, made safe against the interpreter's
/// finalization. Before Python 3.14, a thread that wants the GIL while the interpreter
/// finalizes is ended with `pthread_exit`, which unwinds its stack; reaching Rust frames
/// through a plain `extern "C"` declaration, that unwinding aborts the whole process. These
/// are declared `"C-unwind"` with `HangThread` on the stack, so such a thread parks forever
/// instead (what Python 3.14 does itself), and the process exits normally.
mod finalize_safe {
    use pyo3::ffi::PyObject;

    #[allow(clashing_extern_declarations)]
    unsafe extern "C-unwind" {
        fn PyObject_CallObject(callable: *mut PyObject, args: *mut PyObject) -> *mut PyObject;
        fn Py_DecRef(object: *mut PyObject);
    }

    /// Dropped only by an unwinding through its frame (it is forgotten otherwise).
    struct HangThread;

    impl Drop for HangThread {
        fn drop(&mut self) {
            loop {
                std::thread::park();
            }
        }
    }

    /// `callable(*args)`: a new reference, or NULL with a Python error set.
    ///
    /// # Safety
    /// Attached to Python; `callable` and `args` (a tuple) are valid.
    pub(crate) unsafe fn call(callable: *mut PyObject, args: *mut PyObject) -> *mut PyObject {
        let guard = HangThread;
        // SAFETY: as required of the caller.
        let result = unsafe { PyObject_CallObject(callable, args) };
        std::mem::forget(guard);
        result
    }

    /// Releases a strong reference (which may run a `__del__`).
    ///
    /// # Safety
    /// Attached to Python; `object` is a strong reference the caller owns.
    pub(crate) unsafe fn decref(object: *mut PyObject) {
        let guard = HangThread;
        // SAFETY: as required of the caller.
        unsafe { Py_DecRef(object) };
        std::mem::forget(guard);
    }
}

/// Runs `f` attached to Python, unless the interpreter is exiting.
fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    let result = if EXITING.load(Ordering::SeqCst) {
        None
    } else {
        Python::try_attach(f)
    };
    // Saturating: a callback that forked leaves here in the child, where the count was reset.
    let _ = ACTIVE.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    result
}

/// Dispatchers dropped on the thread of the event loop their batches run on: that thread
/// cannot wait for them, so they finish in the background, kept here until they do, and at
/// interpreter exit they are closed like the live ones (`_close_orphans`).
static ORPHANS: Mutex<Vec<Dispatcher>> = Mutex::new(Vec::new());

fn orphans() -> std::sync::MutexGuard<'static, Vec<Dispatcher>> {
    ORPHANS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Python side of the callbacks: a `background_dispatcher._runner.Runner` holding the
/// dispatch function, `on_error`, `on_drop` and the event loop for async dispatch.
struct Shared {
    /// `None` once the garbage collector cleared it (the dispatcher is closed by then).
    runner: Mutex<Option<Py<PyAny>>>,
}

impl Shared {
    /// Locked only while attached, and never across a call into Python.
    fn runner(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.runner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| r.clone_ref(py))
    }

    /// The entries as a list of the very objects enqueued (new references; the queue's own
    /// stay until `release`).
    fn entries<'py>(py: Python<'py>, batch: &Batch<'_>) -> PyResult<Bound<'py, PyList>> {
        // SAFETY: each entry is a pointer the queue holds a strong reference to (`enqueue`).
        PyList::new(
            py,
            batch
                .iter()
                .map(|e| unsafe { Bound::from_borrowed_ptr(py, entry_ptr(e)) }),
        )
    }

    /// Releases the queue's references to a batch's entries.
    fn release(_py: Python<'_>, batch: &Batch<'_>) {
        for e in batch.iter() {
            // SAFETY: attached (`_py`); the queue's strong reference, released exactly once
            // (module docs).
            unsafe { finalize_safe::decref(entry_ptr(e)) };
        }
    }

    /// `runner.<method>(*args)`, through `finalize_safe`.
    fn call<'py>(
        py: Python<'py>,
        runner: &Py<PyAny>,
        method: &Bound<'py, PyString>,
        args: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let method = runner.bind(py).getattr(method)?;
        // SAFETY: attached; both pointers are valid for the call.
        let result = unsafe { finalize_safe::call(method.as_ptr(), args.as_ptr()) };
        // SAFETY: a new reference, or NULL with the error set.
        unsafe { Bound::from_owned_ptr_or_err(py, result) }
    }

    fn dispatch(&self, py: Python<'_>, batch: &Batch<'_>) -> bool {
        let Some(runner) = self.runner(py) else {
            return false;
        };
        let delivered = Self::entries(py, batch)
            .and_then(|list| PyTuple::new(py, [list]))
            .and_then(|args| Self::call(py, &runner, intern!(py, "dispatch"), args))
            .and_then(|ok| ok.is_truthy());
        match delivered {
            Ok(true) => {
                Self::release(py, batch);
                true
            }
            Ok(false) => false,
            Err(err) => {
                err.write_unraisable(py, Some(runner.bind(py)));
                false
            }
        }
    }

    fn dropped(&self, py: Python<'_>, batch: &Batch<'_>, reason: DropReason) {
        if let Some(runner) = self.runner(py) {
            let reason = match reason {
                DropReason::Failed => "failed",
                DropReason::Evicted => "evicted",
                DropReason::ShutdownTimeout => "shutdown_timeout",
            };
            let result = Self::entries(py, batch)
                .and_then(|list| (list, reason).into_pyobject(py))
                .and_then(|args| Self::call(py, &runner, intern!(py, "drop"), args));
            if let Err(err) = result {
                err.write_unraisable(py, Some(runner.bind(py)));
            }
        }
        Self::release(py, batch);
    }
}

fn entry_ptr(entry: &[u8]) -> *mut pyo3::ffi::PyObject {
    let mut bytes = [0u8; size_of::<usize>()];
    bytes.copy_from_slice(entry);
    usize::from_ne_bytes(bytes) as *mut pyo3::ffi::PyObject
}

/// A dispatch function failed (it raised; `on_error` or the log has the exception).
#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the dispatch function raised")
    }
}

impl std::error::Error for Failed {}

/// The bytes an entry counts against the byte limits.
#[inline]
fn charge(entry: &Bound<'_, PyAny>) -> PyResult<usize> {
    use pyo3::ffi;
    let ptr = entry.as_ptr();
    // Exact types first, by comparing type pointers: on the hot path one function call each,
    // where a subclass-aware check costs a call more.
    // SAFETY: `ptr` is a live object; the type objects are static and compared by address.
    unsafe {
        let ty = ffi::Py_TYPE(ptr);
        if ty == &raw mut ffi::PyBytes_Type {
            return Ok(ffi::PyBytes_Size(ptr) as usize);
        }
        if ty == &raw mut ffi::PyUnicode_Type {
            return Ok(ffi::PyUnicode_GetLength(ptr) as usize);
        }
        if ty == &raw mut ffi::PyDict_Type {
            return Ok(0);
        }
    }
    if let Ok(bytes) = entry.cast::<PyBytes>() {
        return Ok(bytes.as_bytes().len());
    }
    if entry.is_instance_of::<PyString>() || entry.is_instance_of::<PyByteArray>() {
        return entry.len();
    }
    if entry.is_instance_of::<PyMemoryView>() {
        return entry.getattr(intern!(entry.py(), "nbytes"))?.extract();
    }
    Ok(0)
}

/// A count limit from Python: `None` (no limit) or a positive integer.
fn count_limit(name: &str, value: Option<i64>) -> PyResult<usize> {
    match value {
        None => Ok(0),
        Some(n) if n > 0 => Ok(n as usize),
        Some(n) => Err(PyValueError::new_err(format!(
            "{name} must be a positive integer or None, not {n}"
        ))),
    }
}

/// A duration in seconds from Python: finite and not negative (`inf` allowed where said).
fn seconds(name: &str, value: f64, allow_inf: bool) -> PyResult<Duration> {
    if value.is_nan() || value < 0.0 || (value.is_infinite() && !allow_inf) {
        return Err(PyValueError::new_err(format!(
            "{name} must be a non-negative number of seconds, not {value}"
        )));
    }
    Ok(Duration::try_from_secs_f64(value).unwrap_or(Duration::MAX))
}

/// A `timeout=` argument: `None` waits without a deadline.
fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) => Ok(Instant::now().checked_add(seconds("timeout", t, true)?)),
    }
}

/// Calls `step` detached from Python in slices of at most `SIGNAL_SLICE`, until it succeeds
/// or the deadline passes; between slices, raises `KeyboardInterrupt` (or whatever a signal
/// handler raises). `step` returns `Ok(true)` when done, `Ok(false)` to wait more.
fn wait_in_slices<E: Send>(
    py: Python<'_>,
    deadline: Option<Instant>,
    step: impl Fn(Duration) -> Result<bool, E> + Sync,
) -> PyResult<Result<bool, E>> {
    loop {
        let slice = match deadline {
            None => SIGNAL_SLICE,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(SIGNAL_SLICE),
        };
        match py.detach(|| step(slice)) {
            Ok(false) if deadline.is_none_or(|d| Instant::now() < d) => py.check_signals()?,
            done => return Ok(done),
        }
    }
}

fn reentrant(what: &str) -> PyErr {
    ReentrantError::new_err(format!(
        "{what}() called from inside the dispatch function (or the event loop running it) would deadlock; \
         use aflush()/aclose() from async code"
    ))
}

/// Counters of a dispatcher, one consistent snapshot: `enqueued == dispatched + failed +
/// evicted + abandoned + queued_entries + in_flight_entries`.
#[pyclass(
    name = "DispatcherStats",
    module = "background_dispatcher",
    frozen,
    get_all,
    eq
)]
#[derive(Clone, PartialEq, Eq)]
struct PyStats {
    enqueued: u64,
    rejected: u64,
    dispatched: u64,
    failed: u64,
    evicted: u64,
    abandoned: u64,
    batches: u64,
    retries: u64,
    queued_entries: u64,
    queued_bytes: u64,
    in_flight_entries: u64,
}

impl From<Stats> for PyStats {
    fn from(s: Stats) -> Self {
        PyStats {
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
        }
    }
}

#[pymethods]
impl PyStats {
    fn __repr__(&self) -> String {
        format!(
            "DispatcherStats(enqueued={}, rejected={}, dispatched={}, failed={}, evicted={}, abandoned={}, \
             batches={}, retries={}, queued_entries={}, queued_bytes={}, in_flight_entries={})",
            self.enqueued,
            self.rejected,
            self.dispatched,
            self.failed,
            self.evicted,
            self.abandoned,
            self.batches,
            self.retries,
            self.queued_entries,
            self.queued_bytes,
            self.in_flight_entries
        )
    }
}

/// The dispatcher. See `BackgroundDispatcher` in `background_dispatcher/__init__.py`.
// `frozen`: methods borrow `&self` with no runtime borrow flag to update on every call (the
// one field that changes, the runner, is behind its own lock).
#[pyclass(
    name = "_BackgroundDispatcher",
    module = "background_dispatcher._background_dispatcher",
    subclass,
    weakref,
    frozen
)]
struct PyDispatcher {
    /// `None` only while being dropped.
    core: Option<Dispatcher>,
    shared: Arc<Shared>,
    /// The thread of the event loop that runs async batches, if the dispatcher was created
    /// inside one.
    loop_thread: Option<ThreadId>,
    /// `overflow == "block"`: an enqueue may have to release the GIL and wait.
    blocking: bool,
}

impl PyDispatcher {
    fn core(&self) -> &Dispatcher {
        self.core
            .as_ref()
            .expect("the dispatcher is only taken in drop")
    }

    /// `RuntimeError` if waiting here would deadlock: on the thread of the event loop that
    /// runs the batches, while it runs. (On the worker thread, dispatcher-core says so.)
    fn check_not_on_loop(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        if self.loop_thread != Some(thread::current().id()) {
            return Ok(());
        }
        let running = match self.shared.runner(py) {
            Some(runner) => runner
                .call_method0(py, intern!(py, "loop_is_running"))?
                .is_truthy(py)?,
            None => false,
        };
        if running {
            Err(reentrant(what))
        } else {
            Ok(())
        }
    }
}

#[pymethods]
impl PyDispatcher {
    #[new]
    #[pyo3(signature = (
        dispatch, /, *, ms_delay, max_queue_entries = Some(100_000), max_queue_bytes = None,
        max_batch_entries = None, max_batch_bytes = None, overflow = "drop_newest", block_timeout = None,
        max_attempts = 1, retry_backoff = 0.1, retry_backoff_max = 30.0, on_drop = None, on_error = None,
    ))]
    #[pyo3(
        text_signature = "(dispatch, /, *, ms_delay, max_queue_entries=100000, max_queue_bytes=None, \
        max_batch_entries=None, max_batch_bytes=None, overflow='drop_newest', block_timeout=None, max_attempts=1, \
        retry_backoff=0.1, retry_backoff_max=30.0, on_drop=None, on_error=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        dispatch: Bound<'_, PyAny>,
        ms_delay: f64,
        max_queue_entries: Option<i64>,
        max_queue_bytes: Option<i64>,
        max_batch_entries: Option<i64>,
        max_batch_bytes: Option<i64>,
        overflow: &str,
        block_timeout: Option<f64>,
        max_attempts: i64,
        retry_backoff: f64,
        retry_backoff_max: f64,
        on_drop: Option<Bound<'_, PyAny>>,
        on_error: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if !dispatch.is_callable() {
            return Err(PyTypeError::new_err(
                "the dispatch function must be callable",
            ));
        }
        for (name, f) in [("on_drop", &on_drop), ("on_error", &on_error)] {
            if f.as_ref().is_some_and(|f| !f.is_callable()) {
                return Err(PyTypeError::new_err(format!(
                    "{name} must be callable or None"
                )));
            }
        }
        if !(ms_delay > 0.0 && ms_delay.is_finite()) {
            return Err(PyValueError::new_err(format!(
                "ms_delay must be a number of milliseconds > 0, not {ms_delay}"
            )));
        }
        let overflow = match overflow {
            "drop_newest" => Overflow::DropNewest,
            "drop_oldest" => Overflow::DropOldest,
            "block" => Overflow::Block,
            other => {
                return Err(PyValueError::new_err(format!(
                    "overflow must be \"drop_newest\", \"drop_oldest\" or \"block\", not {other:?}"
                )));
            }
        };
        if max_attempts < 1 || max_attempts > i64::from(u32::MAX) {
            return Err(PyValueError::new_err(format!(
                "max_attempts must be at least 1, not {max_attempts}"
            )));
        }
        let options = Options {
            max_queue_entries: count_limit("max_queue_entries", max_queue_entries)?,
            max_queue_bytes: count_limit("max_queue_bytes", max_queue_bytes)?,
            max_batch_entries: count_limit("max_batch_entries", max_batch_entries)?,
            max_batch_bytes: count_limit("max_batch_bytes", max_batch_bytes)?,
            overflow,
            block_timeout: match block_timeout {
                None => Options::default().block_timeout,
                Some(t) => seconds("block_timeout", t, true)?,
            },
            max_attempts: max_attempts as u32,
            retry_backoff: seconds("retry_backoff", retry_backoff, false)?,
            retry_backoff_max: seconds("retry_backoff_max", retry_backoff_max, false)?,
        };
        let ms_delay = Duration::try_from_secs_f64(ms_delay / 1000.0).map_err(|_| {
            PyValueError::new_err(format!("ms_delay is too large: {} ms", ms_delay))
        })?;
        options
            .validate(ms_delay)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;

        let runner = py
            .import(intern!(py, "background_dispatcher._runner"))?
            .getattr(intern!(py, "Runner"))?
            .call1((dispatch, on_error, on_drop))?;
        let on_app_loop = !runner.getattr(intern!(py, "app_loop"))?.is_none();
        let shared = Arc::new(Shared {
            runner: Mutex::new(Some(runner.unbind())),
        });

        let mut builder = Dispatcher::builder(ms_delay).options(options);
        let loop_thread = on_app_loop.then(|| thread::current().id());
        if let Some(thread) = loop_thread {
            builder = builder.never_block_on(thread);
        }
        let on_drop_shared = Arc::clone(&shared);
        let dispatch_shared = Arc::clone(&shared);
        let core = builder
            .on_drop(move |batch, reason| {
                with_python(|py| on_drop_shared.dropped(py, batch, reason));
            })
            .build(move |batch| -> DispatchResult {
                match with_python(|py| dispatch_shared.dispatch(py, batch)) {
                    Some(true) => Ok(()),
                    _ => Err(Box::new(Failed)),
                }
            })
            .map_err(|e| match e {
                BuildError::InvalidOptions(why) => PyValueError::new_err(why),
                BuildError::ThreadSpawn(err) => {
                    PyRuntimeError::new_err(format!("could not start the worker thread: {err}"))
                }
            })?;
        Ok(PyDispatcher {
            core: Some(core),
            shared,
            loop_thread,
            blocking: overflow == Overflow::Block,
        })
    }

    /// Queues `entry`; returns whether it was accepted.
    #[pyo3(signature = (entry, /))]
    fn enqueue(&self, py: Python<'_>, entry: &Bound<'_, PyAny>) -> PyResult<bool> {
        let charge = charge(entry)?;
        let ptr = entry.clone().into_ptr();
        let data = (ptr as usize).to_ne_bytes();
        let core = self.core();
        let mut result = core.try_enqueue_charged(&data, charge);
        if result == Err(EnqueueError::WouldBlock) && self.blocking {
            result = py.detach(|| core.enqueue_charged(&data, charge));
        }
        if result.is_err() {
            // SAFETY: the reference taken above, which the queue did not keep.
            drop(unsafe { Bound::<PyAny>::from_owned_ptr(py, ptr) });
        }
        Ok(result.is_ok())
    }

    /// Queues every entry of `entries`; returns how many were accepted.
    #[pyo3(signature = (entries, /))]
    fn enqueue_many(&self, py: Python<'_>, entries: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut accepted = 0;
        for entry in entries.try_iter()? {
            accepted += usize::from(self.enqueue(py, &entry?)?);
        }
        Ok(accepted)
    }

    /// Dispatches what is queued now and waits until everything accepted before the call is
    /// dispatched or dropped; False if `timeout` (seconds) passed first.
    #[pyo3(signature = (timeout = None))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.check_not_on_loop(py, "flush")?;
        let deadline = deadline(timeout)?;
        let core = self.core();
        // One ticket, waited on in slices: each new `flush` would take in newer entries too.
        let ticket = core.request_flush().map_err(|_| reentrant("flush"))?;
        match wait_in_slices(py, deadline, |slice| {
            match core.wait_flush(ticket, Some(slice)) {
                Ok(()) => Ok(true),
                Err(FlushError::Timeout) => Ok(false),
                Err(err) => Err(err),
            }
        })? {
            Ok(done) => Ok(done),
            Err(_) => Err(reentrant("flush")),
        }
    }

    /// Stops accepting entries, dispatches what is queued, and waits; at the deadline the
    /// entries still queued go to `on_drop` ("shutdown_timeout") and False is returned.
    #[pyo3(signature = (timeout = None))]
    fn close(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.check_not_on_loop(py, "close")?;
        let deadline = deadline(timeout)?;
        let core = self.core();
        core.begin_shutdown().map_err(|_| reentrant("close"))?;
        let drained = wait_in_slices(py, deadline, |slice| {
            match core.wait_shutdown(Some(slice)) {
                Ok(()) => Ok(true),
                Err(ShutdownError::Timeout) => Ok(false),
                Err(err) => Err(err),
            }
        })?
        .map_err(|_| reentrant("close"))?;
        let drained = drained || py.detach(|| core.shutdown(Some(Duration::ZERO))).is_ok();
        if drained {
            if let Some(runner) = self.shared.runner(py) {
                runner.call_method0(py, intern!(py, "close"))?;
            }
        }
        Ok(drained)
    }

    /// Lets `BackgroundDispatcher[T]` work: the class is generic only for type checkers.
    #[classmethod]
    #[pyo3(signature = (_item, /))]
    fn __class_getitem__(
        cls: &Bound<'_, pyo3::types::PyType>,
        _item: &Bound<'_, PyAny>,
    ) -> Py<pyo3::types::PyType> {
        cls.clone().unbind()
    }

    /// Stops accepting entries without waiting (for `__del__` on the event loop's thread).
    fn _close_nowait(&self) {
        let _ = self.core().begin_shutdown();
    }

    /// Whether `close` has begun: every `enqueue` is refused from then on.
    #[getter]
    fn closed(&self) -> bool {
        self.core().is_closed()
    }

    /// A consistent snapshot of the counters.
    #[getter]
    fn stats(&self) -> PyStats {
        self.core().stats().into()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // While a closed dispatcher still drains, its worker uses the runner: not reporting it
        // makes the collector see it as referenced from outside, so the cycle it is in stays
        // alive (and is collected on a later pass, once drained) instead of being cleared
        // under the worker's feet.
        if self
            .core
            .as_ref()
            .is_some_and(|c| c.is_closed() && !c.is_finished())
        {
            return Ok(());
        }
        // Whoever holds this lock is attached, and the collector is too: it cannot be held now.
        if let Ok(runner) = self.shared.runner.try_lock() {
            if let Some(runner) = runner.as_ref() {
                visit.call(runner)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        // Only a drained dispatcher may lose its callbacks (see `__traverse__`). `__del__`
        // has begun the shutdown; the drop waits for the rest.
        if self.core.as_ref().is_some_and(|c| !c.is_finished()) {
            return;
        }
        self.shared
            .runner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

impl Drop for PyDispatcher {
    fn drop(&mut self) {
        let Some(core) = self.core.take() else { return };
        if self.loop_thread == Some(thread::current().id()) {
            // The worker may need this very thread's event loop to finish: never wait here.
            // Kept until it has finished, and closed at interpreter exit if it has not.
            let _ = core.begin_shutdown();
            let mut orphans = orphans();
            orphans.retain(|o| !o.is_finished()); // dropping a finished one does not wait
            orphans.push(core);
            return;
        }
        // Dropping waits for the worker, which may need the GIL for a last batch. If Python
        // cannot be attached (it is finalizing), the closure and `core` in it are dropped
        // without it: no worker calls into Python by then (`EXITING`).
        let _ = Python::try_attach(|py| py.detach(|| drop(core)));
    }
}

/// Called by the module's exit hook: closes the dispatchers that were dropped on their event
/// loop's thread and have not finished, within `timeout` seconds in all (what is still queued
/// at the deadline goes to `on_drop` as "shutdown_timeout").
#[pyfunction]
fn _close_orphans(py: Python<'_>, timeout: f64) {
    let deadline = Instant::now() + Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
    let pending = std::mem::take(&mut *orphans());
    py.detach(move || {
        for orphan in pending {
            let _ = orphan.shutdown(Some(deadline.saturating_duration_since(Instant::now())));
            if orphan.is_finished() {
                drop(orphan);
            } else {
                orphan.detach(); // a callback still runs past the deadline: never wait for it
            }
        }
    });
}

/// Called by the module's exit hook after closing every dispatcher: from now on no worker
/// calls into Python. Waits up to `timeout` seconds for callbacks still running.
#[pyfunction]
fn _begin_exit(py: Python<'_>, timeout: f64) -> bool {
    EXITING.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
    py.detach(|| {
        while ACTIVE.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    })
}

#[pymodule]
fn _background_dispatcher(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // SAFETY: registers a handler that only stores to an atomic. At the C level, so that it
    // also runs for forks that skip Python's `os.register_at_fork` hooks.
    unsafe { libc::pthread_atfork(None, None, Some(reset_after_fork)) };
    m.add_class::<PyDispatcher>()?;
    m.add_class::<PyStats>()?;
    m.add("ReentrantError", m.py().get_type::<ReentrantError>())?;
    m.add_function(wrap_pyfunction!(_begin_exit, m)?)?;
    m.add_function(wrap_pyfunction!(_close_orphans, m)?)?;
    Ok(())
}
