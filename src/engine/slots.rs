//! A counting semaphore bounding how many requests run their pipeline at once (engine option
//! `max_concurrent_runs`). On CPU one run already uses every core through ONNX Runtime's intra-op threads, so
//! running two at once only splits the cores; queueing lets the first caller finish first. Waiting requests stay
//! cancellable.

use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::Result;
use crate::runtime::CancelToken;

/// The semaphore.
#[derive(Debug)]
pub struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// A held slot; released on drop.
pub struct Slot<'a>(&'a Slots);

impl Slots {
    /// `n` slots (at least 1).
    pub fn new(n: usize) -> Self {
        Slots { free: Mutex::new(n.max(1)), freed: Condvar::new() }
    }

    /// Wait for a slot, giving up with `Error::Cancelled` if `cancel` fires meanwhile.
    pub fn acquire(&self, cancel: &CancelToken) -> Result<Slot<'_>> {
        let mut free = self.free.lock();
        while *free == 0 {
            cancel.check()?;
            self.freed.wait_for(&mut free, Duration::from_millis(20));
        }
        cancel.check()?;
        *free -= 1;
        Ok(Slot(self))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += 1;
        self.0.freed.notify_one();
    }
}
