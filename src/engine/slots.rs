//! A counting semaphore bounding how many requests run their pipeline at once (engine option
//! `max_concurrent_runs`). On CPU one run already uses every core through ONNX Runtime's intra-op threads, so
//! running two at once only splits the cores; queueing lets the first caller finish first. Waiting requests are
//! served by `data.metadata.priority` (high, normal, low), then in arrival order, and stay cancellable.

use std::collections::BTreeSet;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::Result;
use crate::protocol::params::Priority;
use crate::runtime::CancelToken;

/// The semaphore.
#[derive(Debug)]
pub struct Slots {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    free: usize,
    next_ticket: u64,
    /// Waiting requests ordered by (reversed priority, ticket): the first one is served next.
    waiting: BTreeSet<(std::cmp::Reverse<Priority>, u64)>,
}

/// A held slot; released on drop.
pub struct Slot<'a>(&'a Slots);

impl Slots {
    /// `n` slots (at least 1).
    pub fn new(n: usize) -> Self {
        Slots {
            state: Mutex::new(State { free: n.max(1), next_ticket: 0, waiting: BTreeSet::new() }),
            changed: Condvar::new(),
        }
    }

    /// Wait for a slot in priority order, giving up with `Error::Cancelled` if `cancel` fires meanwhile.
    pub fn acquire(&self, priority: Priority, cancel: &CancelToken) -> Result<Slot<'_>> {
        let mut state = self.state.lock();
        let me = (std::cmp::Reverse(priority), state.next_ticket);
        state.next_ticket += 1;
        state.waiting.insert(me);
        loop {
            if let Err(e) = cancel.check() {
                state.waiting.remove(&me);
                self.changed.notify_all();
                return Err(e);
            }
            if state.free > 0 && state.waiting.first() == Some(&me) {
                state.waiting.remove(&me);
                state.free -= 1;
                // Another slot may be free for the next in line.
                self.changed.notify_all();
                return Ok(Slot(self));
            }
            self.changed.wait_for(&mut state, Duration::from_millis(20));
        }
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.state.lock().waiting.len()
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.state.lock().free += 1;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn waiting_requests_are_served_by_priority_then_arrival() {
        let slots = Arc::new(Slots::new(1));
        let cancel = CancelToken::new();
        let held = slots.acquire(Priority::Normal, &cancel).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for (name, p) in [
            ("low", Priority::Low),
            ("normal-1", Priority::Normal),
            ("high", Priority::High),
            ("normal-2", Priority::Normal),
        ] {
            let (mine, order) = (slots.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let _slot = mine.acquire(p, &CancelToken::new()).unwrap();
                order.lock().push(name);
            }));
            // Arrival order is the spawn order.
            while slots.waiting() < threads.len() {
                std::thread::yield_now();
            }
        }
        drop(held);
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*order.lock(), ["high", "normal-1", "normal-2", "low"]);
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue() {
        let slots = Slots::new(1);
        let _held = slots.acquire(Priority::Normal, &CancelToken::new()).unwrap();
        let cancel = CancelToken::new();
        cancel.cancel();
        assert!(slots.acquire(Priority::High, &cancel).is_err());
        assert_eq!(slots.waiting(), 0);
    }
}
