//! Limits and policies of a dispatcher, with their defaults and their validation.
//!
//! One plain struct serves the Rust builder, the C `bd_options` and the Python keyword arguments,
//! so the three cannot drift apart: each converts its own form into [`Options`] and calls
//! [`Options::validate`].

use std::time::Duration;

use crate::error::BuildError;

/// What `enqueue` does when the queue is at `max_queue_entries` or `max_queue_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Reject the new entry with [`crate::EnqueueError::QueueFull`].
    #[default]
    DropNewest,
    /// Evict the oldest queued entries to make room and hand them to `on_drop` with
    /// [`crate::DropReason::Evicted`], on the enqueuing thread.
    DropOldest,
    /// Wait up to `block_timeout` for room, then reject with `QueueFull`. An enqueue from inside
    /// the dispatch function never waits.
    Block,
}

/// Limits and policies. `0` means "no limit" for every `max_*` size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Most entries queued at once (not counting the batch in flight).
    pub max_queue_entries: usize,
    /// Most bytes queued at once (not counting the batch in flight). Default 64 MiB, so that a
    /// dead collector cannot exhaust memory.
    pub max_queue_bytes: usize,
    /// Most entries in one batch; a batch that reaches it is dispatched without waiting for
    /// its window.
    pub max_batch_entries: usize,
    /// Most bytes in one batch; same trigger as `max_batch_entries`.
    pub max_batch_bytes: usize,
    /// What happens when the queue is full.
    pub overflow: Overflow,
    /// How long a [`Overflow::Block`] enqueue waits for room.
    pub block_timeout: Duration,
    /// Calls per batch, the first included: 1 means no retry.
    pub max_attempts: u32,
    /// Wait before the first retry; it doubles on each retry, up to `retry_backoff_max`, and
    /// is jittered into `[backoff / 2, backoff]`.
    pub retry_backoff: Duration,
    /// The cap on the retry wait.
    pub retry_backoff_max: Duration,
}

/// The default `max_queue_bytes`: 64 MiB.
pub const DEFAULT_MAX_QUEUE_BYTES: usize = 64 << 20;

impl Default for Options {
    fn default() -> Self {
        Options {
            max_queue_entries: 0,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            max_batch_entries: 0,
            max_batch_bytes: 0,
            overflow: Overflow::DropNewest,
            block_timeout: Duration::from_millis(1000),
            max_attempts: 1,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_millis(30_000),
        }
    }
}

impl Options {
    /// Checks that the options make sense together, and `ms_delay` with them.
    pub fn validate(&self, ms_delay: Duration) -> Result<(), BuildError> {
        let invalid = |why| Err(BuildError::InvalidOptions(why));
        if ms_delay.is_zero() {
            return invalid("ms_delay must be greater than 0");
        }
        if self.max_batch_entries != 0
            && self.max_queue_entries != 0
            && self.max_batch_entries > self.max_queue_entries
        {
            return invalid("max_batch_entries is larger than max_queue_entries");
        }
        if self.max_batch_bytes != 0
            && self.max_queue_bytes != 0
            && self.max_batch_bytes > self.max_queue_bytes
        {
            return invalid("max_batch_bytes is larger than max_queue_bytes");
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts must be at least 1");
        }
        if self.retry_backoff_max < self.retry_backoff {
            return invalid("retry_backoff_max is shorter than retry_backoff");
        }
        Ok(())
    }

    /// The largest charge one entry may have: an entry above either byte limit could never be
    /// queued or dispatched.
    pub(crate) fn max_entry_charge(&self) -> usize {
        let limit = |n: usize| if n == 0 { usize::MAX } else { n };
        limit(self.max_queue_bytes)
            .min(limit(self.max_batch_bytes))
            .min(crate::batch::MAX_ENTRY_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(10);

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let o = Options::default();
        assert_eq!(o.validate(MS), Ok(()));
        assert_eq!(o.max_queue_bytes, 64 * 1024 * 1024);
        assert_eq!(
            (o.max_queue_entries, o.max_batch_entries, o.max_batch_bytes),
            (0, 0, 0)
        );
        assert_eq!(o.overflow, Overflow::DropNewest);
        assert_eq!(o.block_timeout, Duration::from_millis(1000));
        assert_eq!(o.max_attempts, 1);
        assert_eq!(o.retry_backoff, Duration::from_millis(100));
        assert_eq!(o.retry_backoff_max, Duration::from_millis(30_000));
    }

    #[test]
    fn contradictions_are_rejected() {
        let bad = |o: Options, d: Duration| o.validate(d).is_err();
        assert!(bad(Options::default(), Duration::ZERO));
        assert!(bad(
            Options {
                max_queue_entries: 5,
                max_batch_entries: 6,
                ..Default::default()
            },
            MS
        ));
        assert!(bad(
            Options {
                max_queue_bytes: 5,
                max_batch_bytes: 6,
                ..Default::default()
            },
            MS
        ));
        assert!(bad(
            Options {
                max_attempts: 0,
                ..Default::default()
            },
            MS
        ));
        assert!(bad(
            Options {
                retry_backoff: MS * 2,
                retry_backoff_max: MS,
                ..Default::default()
            },
            MS
        ));
        // A batch limit with no queue limit, or equal limits, are fine.
        assert!(!bad(
            Options {
                max_queue_bytes: 0,
                max_batch_bytes: 6,
                ..Default::default()
            },
            MS
        ));
        assert!(!bad(
            Options {
                max_queue_entries: 6,
                max_batch_entries: 6,
                ..Default::default()
            },
            MS
        ));
    }

    #[test]
    fn max_entry_charge_is_the_smallest_byte_limit() {
        let o = Options {
            max_queue_bytes: 100,
            max_batch_bytes: 10,
            ..Default::default()
        };
        assert_eq!(o.max_entry_charge(), 10);
        let o = Options {
            max_queue_bytes: 0,
            max_batch_bytes: 0,
            ..Default::default()
        };
        assert_eq!(o.max_entry_charge(), u32::MAX as usize);
    }
}
