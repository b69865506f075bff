//! Reliability, bounded memory under `Overflow::DropOldest`: 1 000 000 enqueue attempts of 1 KiB
//! against a queue capped at 10 000 entries / 8 MiB whose dispatch function is blocked. Entries
//! beyond the cap evict the oldest, each eviction handed to `on_drop`; resident memory grows by at most 16 MiB; after the release every
//! accepted entry not evicted is delivered once. See `reliability/memory.rs`.
//!
//! Figures go to stderr: `cargo test --test reliability_memory_drop_oldest -- --nocapture`.

mod common;
#[path = "reliability/memory.rs"]
mod memory;
mod reliability;

#[test]
fn a_capped_queue_stays_within_its_bounds_under_a_blocked_dispatch() {
    memory::run(dispatcher_core::Overflow::DropOldest);
}
