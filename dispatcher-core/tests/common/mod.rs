//! Helpers shared by the integration tests: a recorder of batches, a gate that holds the
//! dispatch function, and bounded waits (no test sleeps to synchronise).

#![allow(dead_code)]

use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use dispatcher_core::{Batch, DispatchResult, DropReason};

/// The longest any test waits for something that should happen: generous, for slow machines.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `condition` until it holds or `PATIENCE` runs out.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One dispatch call as seen by the dispatch function.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub thread: ThreadId,
    pub attempt: u32,
    pub bytes: usize,
    pub entries: Vec<Vec<u8>>,
}

/// One `on_drop` call: the reason, the thread, `batch.attempt()`, the entries.
pub type Drop = (DropReason, ThreadId, u32, Vec<Vec<u8>>);

/// Records every dispatch and drop; optionally fails or blocks.
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<Call>>,
    pub drops: Mutex<Vec<Drop>>,
    pub changed: Condvar,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn record(&self, batch: &Batch<'_>) {
        let call = Call {
            at: Instant::now(),
            thread: std::thread::current().id(),
            attempt: batch.attempt(),
            bytes: batch.bytes(),
            entries: batch.iter().map(<[u8]>::to_vec).collect(),
        };
        self.calls.lock().unwrap().push(call);
        self.changed.notify_all();
    }

    pub fn record_drop(&self, batch: &Batch<'_>, reason: DropReason) {
        let entries = batch.iter().map(<[u8]>::to_vec).collect();
        let item = (
            reason,
            std::thread::current().id(),
            batch.attempt(),
            entries,
        );
        self.drops.lock().unwrap().push(item);
        self.changed.notify_all();
    }

    /// A dispatch function that records and succeeds.
    pub fn ok(self: &Arc<Self>) -> impl FnMut(&Batch<'_>) -> DispatchResult + Send + 'static {
        let me = Arc::clone(self);
        move |batch| {
            me.record(batch);
            Ok(())
        }
    }

    /// A dispatch function that waits at `gate`, then records and succeeds.
    pub fn gated(
        self: &Arc<Self>,
        gate: &Arc<Gate>,
    ) -> impl FnMut(&Batch<'_>) -> DispatchResult + Send + 'static {
        let (me, gate) = (Arc::clone(self), Arc::clone(gate));
        move |batch| {
            gate.pass();
            me.record(batch);
            Ok(())
        }
    }

    /// An `on_drop` that records.
    pub fn on_drop(self: &Arc<Self>) -> impl Fn(&Batch<'_>, DropReason) + Send + Sync + 'static {
        let me = Arc::clone(self);
        move |batch, reason| me.record_drop(batch, reason)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn delivered(&self) -> Vec<Vec<u8>> {
        self.calls().into_iter().flat_map(|c| c.entries).collect()
    }

    pub fn dropped(&self, reason: DropReason) -> Vec<Vec<u8>> {
        let drops = self.drops.lock().unwrap();
        drops
            .iter()
            .filter(|d| d.0 == reason)
            .flat_map(|d| d.3.clone())
            .collect()
    }

    pub fn wait_calls(&self, n: usize) -> Vec<Call> {
        let deadline = Instant::now() + PATIENCE;
        let mut calls = self.calls.lock().unwrap();
        while calls.len() < n {
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {n} dispatch calls (have {})",
                calls.len()
            );
            calls = self.changed.wait_timeout(calls, deadline - now).unwrap().0;
        }
        calls.clone()
    }
}

/// Holds dispatch calls until opened.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    waiting: Mutex<usize>,
    waiting_cv: Condvar,
}

impl Gate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn pass(&self) {
        *self.waiting.lock().unwrap() += 1;
        self.waiting_cv.notify_all();
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
        *self.waiting.lock().unwrap() -= 1;
    }

    /// Waits until a dispatch call is held at the gate.
    pub fn wait_for_holder(&self) {
        let deadline = Instant::now() + PATIENCE;
        let mut waiting = self.waiting.lock().unwrap();
        while *waiting == 0 {
            let now = Instant::now();
            assert!(now < deadline, "nothing reached the gate");
            waiting = self
                .waiting_cv
                .wait_timeout(waiting, deadline - now)
                .unwrap()
                .0;
        }
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

pub fn entry(i: usize) -> Vec<u8> {
    format!("entry-{i:06}").into_bytes()
}
