//! Cancellation of one request: a flag checked between steps, an optional deadline, and the ONNX Runtime
//! `RunOptions` of the graph call in flight, terminated so a long UNet or VAE call stops too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Shared between the running request and whoever may cancel it (`sdxl_cancel`, the progress callback).
#[derive(Default)]
pub struct CancelToken {
    cancelled: AtomicBool,
    deadline: Mutex<Option<Instant>>,
    in_flight: Mutex<Option<Arc<ort::session::RunOptions>>>,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken").field("cancelled", &self.cancelled.load(Ordering::SeqCst)).finish()
    }
}

impl CancelToken {
    /// A token that is not cancelled and has no deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel after `deadline` passes (checked between steps and graph calls).
    pub fn set_deadline(&self, deadline: Instant) {
        *self.deadline.lock() = Some(deadline);
    }

    /// Cancel now: sets the flag and terminates the graph call in flight, if any.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(opts) = self.in_flight.lock().as_ref() {
            // Best effort: if terminate fails the flag still stops the run at the next step.
            let _ = opts.terminate();
        }
    }

    /// True once cancelled or past the deadline.
    pub fn is_cancelled(&self) -> bool {
        if self.cancelled.load(Ordering::SeqCst) {
            return true;
        }
        if self.deadline.lock().is_some_and(|d| Instant::now() >= d) {
            self.cancelled.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// `Err(Error::Cancelled)` if cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Run options for the next graph call, registered so `cancel` can terminate it.
    pub(crate) fn begin_run(&self, stage: &'static str) -> Result<Arc<ort::session::RunOptions>> {
        let opts = ort::session::RunOptions::new()
            .map_err(|e| Error::Inference { stage, message: format!("cannot create run options: {e}") })?;
        let opts = Arc::new(opts);
        *self.in_flight.lock() = Some(opts.clone());
        // Close the race with a cancel that landed between the check and the registration.
        if self.cancelled.load(Ordering::SeqCst) {
            let _ = opts.terminate();
        }
        Ok(opts)
    }

    /// The graph call finished.
    pub(crate) fn end_run(&self) {
        *self.in_flight.lock() = None;
    }
}
