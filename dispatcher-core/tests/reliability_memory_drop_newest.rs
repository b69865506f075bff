//! Reliability, bounded memory under `Overflow::DropNewest`: 1 000 000 enqueue attempts of 1 KiB
//! against a queue capped at 10 000 entries / 8 MiB whose dispatch function is blocked. Entries
//! beyond the cap refused with `QueueFull`, counted exactly; resident memory grows by at most 16 MiB; after the release every
//! accepted entry not evicted is delivered once. See `reliability/memory.rs`.
//!
//! Figures go to stderr: `cargo test --test reliability_memory_drop_newest -- --nocapture`.

mod common;
#[path = "reliability/memory.rs"]
mod memory;
mod reliability;

#[test]
fn a_capped_queue_stays_within_its_bounds_under_a_blocked_dispatch() {
    memory::run(dispatcher_core::Overflow::DropNewest);
}
