//! Cancellation of one request: a flag checked between steps, an optional deadline, and the ONNX Runtime
//! `RunOptions` of the graph call in flight, terminated so a long UNet or VAE call stops too. The token brackets
//! every graph call of its request, so it also adds up the time spent inside ONNX Runtime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Shared between the running request and whoever may cancel it (`sdxl_cancel`, the progress callback).
#[derive(Default)]
pub struct CancelToken {
    cancelled: AtomicBool,
    deadline: Mutex<Option<Instant>>,
    in_flight: Mutex<Option<(Arc<ort::session::RunOptions>, Instant)>>,
    run_nanos: AtomicU64,
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
        if let Some((opts, _)) = self.in_flight.lock().as_ref() {
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

    /// Seconds spent inside ONNX Runtime graph calls of this request so far.
    pub fn onnxruntime_seconds(&self) -> f64 {
        self.run_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Run options for the next graph call, registered so `cancel` can terminate it. `release_arenas` (ORT's
    /// `memory.enable_memory_arena_shrinkage` syntax, e.g. `cpu:0` or `gpu:0`) gives the named arenas' free memory
    /// back once the call ends.
    pub(crate) fn begin_run(
        &self,
        stage: &'static str,
        release_arenas: Option<&str>,
    ) -> Result<Arc<ort::session::RunOptions>> {
        let fail = |e: ort::Error| Error::Inference { stage, message: format!("cannot create run options: {e}") };
        let mut opts = ort::session::RunOptions::new().map_err(fail)?;
        if let Some(arenas) = release_arenas {
            opts.set("memory.enable_memory_arena_shrinkage", arenas).map_err(fail)?;
        }
        let opts = Arc::new(opts);
        *self.in_flight.lock() = Some((opts.clone(), Instant::now()));
        // Close the race with a cancel that landed between the check and the registration.
        if self.cancelled.load(Ordering::SeqCst) {
            let _ = opts.terminate();
        }
        Ok(opts)
    }

    /// The graph call finished.
    pub(crate) fn end_run(&self) {
        if let Some((_, started)) = self.in_flight.lock().take() {
            self.run_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}
