//! One small error type per operation, so that a caller matches only the failures its call can
//! have.

use std::fmt;

/// Why [`crate::Builder::build`] failed.
#[derive(Debug)]
pub enum BuildError {
    /// The options contradict each other or `ms_delay` is 0; the text says which.
    InvalidOptions(&'static str),
    /// The worker thread could not be started.
    ThreadSpawn(std::io::Error),
}

impl PartialEq for BuildError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (BuildError::InvalidOptions(a), BuildError::InvalidOptions(b)) => a == b,
            (BuildError::ThreadSpawn(a), BuildError::ThreadSpawn(b)) => a.kind() == b.kind(),
            _ => false,
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::InvalidOptions(why) => write!(f, "invalid options: {why}"),
            BuildError::ThreadSpawn(err) => write!(f, "could not start the worker thread: {err}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::ThreadSpawn(err) => Some(err),
            BuildError::InvalidOptions(_) => None,
        }
    }
}

/// Why [`crate::Dispatcher::enqueue`] did not accept an entry. A rejected entry is not queued,
/// is counted in `Stats::rejected`, and is not handed to `on_drop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueError {
    /// The queue is at a limit and the overflow policy rejected the entry.
    QueueFull,
    /// The entry is larger than `max_batch_bytes` or `max_queue_bytes` (or 4 GiB), so it could
    /// never be queued.
    TooLarge,
    /// The dispatcher is shut down.
    Closed,
    /// The worker thread, started lazily in a forked child, could not be started.
    ThreadSpawn,
    /// Only from `try_enqueue`: [`crate::Overflow::Block`] would wait for room. Not counted as
    /// a rejection.
    WouldBlock,
}

impl fmt::Display for EnqueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnqueueError::QueueFull => "queue full",
            EnqueueError::TooLarge => "entry larger than the byte limits",
            EnqueueError::Closed => "dispatcher is shut down",
            EnqueueError::ThreadSpawn => "could not start the worker thread",
            EnqueueError::WouldBlock => "queue full; enqueue would wait",
        })
    }
}

impl std::error::Error for EnqueueError {}

/// Why [`crate::Dispatcher::flush`] returned before everything was dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushError {
    /// The deadline passed first; the flush still goes on in the background.
    Timeout,
    /// Called from inside the dispatch function, where waiting for the worker would deadlock.
    Reentrant,
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlushError::Timeout => "flush deadline passed",
            FlushError::Reentrant => "flush called from inside the dispatch function",
        })
    }
}

impl std::error::Error for FlushError {}

/// Why [`crate::Dispatcher::shutdown`] returned before everything was dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownError {
    /// The deadline passed: entries still queued were handed to `on_drop` with
    /// [`crate::DropReason::ShutdownTimeout`]; the batch in flight may still finish.
    Timeout,
    /// Called from inside the dispatch function, where waiting for the worker would deadlock.
    Reentrant,
}

impl fmt::Display for ShutdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownError::Timeout => "shutdown deadline passed; queued entries were abandoned",
            ShutdownError::Reentrant => "shutdown called from inside the dispatch function",
        })
    }
}

impl std::error::Error for ShutdownError {}
