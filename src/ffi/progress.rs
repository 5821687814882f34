//! The per-call progress callback and its adapter to [`crate::pipeline::Progress`].

use std::ffi::{c_char, c_void, CString};

use crate::pipeline::{Progress, ProgressEvent, Stage};

/// What a run is doing.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum sdxl_stage {
    /// Loading models (first use of a model, or after eviction).
    Loading = 0,
    /// Tokenizing and running both text encoders.
    TextEncoding = 1,
    /// The denoising loop; `step`/`total_steps` count scheduler steps, not UNet calls.
    Denoising = 2,
    /// VAE decode.
    Decoding = 3,
    /// Encoding and writing the output.
    Saving = 4,
    /// Upscaling each image (`data.output.upscale`), after decoding and before saving; `step`/`total_steps`
    /// count the upscaler's tiles over all its passes for `image_index`.
    Upscaling = 5,
    /// Encoding the init image (`data.init_image`) with the VAE encoder, before denoising (image-to-image).
    ImageEncoding = 6,
}

/// One progress report. Borrowed for the duration of the callback only; copy what you keep.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct sdxl_progress {
    /// What the run is doing now.
    pub stage: sdxl_stage,
    /// Steps completed in this stage (denoising: 1..=total_steps).
    pub step: u32,
    /// Steps in this stage (denoising: the requested steps; image-to-image: the `int(steps × strength)` that run).
    pub total_steps: u32,
    /// Which image of the batch (0-based).
    pub image_index: u32,
    /// Images in the request.
    pub batch_size: u32,
    /// Seconds since the request started.
    pub elapsed_seconds: f64,
    /// The request's id (NUL-terminated UTF-8), valid during the callback.
    pub request_id: *const c_char,
    /// A live preview (`data.output.preview`) of image `image_index` after this denoising step: `preview_len`
    /// bytes of RGB8, `preview_width × preview_height` pixels, rows top to bottom, stride `preview_width × 3`, no
    /// padding. NULL (and the three sizes 0) when this report has none: previews off, another stage, or a step
    /// between two `interval`s. Owned by sdxlrt and valid during the callback only; copy the bytes to keep them.
    /// With a batch denoised at once (`data.batch.parallel`), a step with a preview is reported once per image.
    /// The four preview fields come after `request_id`, so a reader of the older, shorter struct still works.
    pub preview_rgb: *const u8,
    /// The preview's width in pixels (`latent2rgb`: the image width / 8; `vae`: the image width); 0 without one.
    pub preview_width: u32,
    /// The preview's height in pixels; 0 without one.
    pub preview_height: u32,
    /// The bytes at `preview_rgb`: `preview_width × preview_height × 3`; 0 without one.
    pub preview_len: usize,
}

/// Progress callback: called on the thread that called `sdxl_generate`, with the `user_data` given to that call.
/// Return 0 to continue, non-zero to cancel the run (it stops within one step and reports `SDXL_STATUS_CANCELLED`).
#[allow(non_camel_case_types)]
pub type sdxl_progress_cb = Option<unsafe extern "C" fn(user_data: *mut c_void, progress: *const sdxl_progress) -> i32>;

/// Adapts a C callback to the pipeline's [`Progress`].
pub struct CallbackProgress {
    cb: sdxl_progress_cb,
    user_data: *mut c_void,
    request_id: CString,
}

impl CallbackProgress {
    /// Wrap `cb` (may be None) and its `user_data`.
    pub fn new(cb: sdxl_progress_cb, user_data: *mut c_void) -> Self {
        CallbackProgress { cb, user_data, request_id: CString::default() }
    }
}

impl Progress for CallbackProgress {
    fn report(&mut self, event: &ProgressEvent<'_>) -> bool {
        let Some(cb) = self.cb else { return true };
        if self.request_id.as_bytes() != event.request_id.as_bytes() {
            self.request_id = CString::new(event.request_id.replace('\0', "")).unwrap_or_default();
        }
        let stage = match event.stage {
            Stage::Loading => sdxl_stage::Loading,
            Stage::TextEncoding => sdxl_stage::TextEncoding,
            Stage::Denoising => sdxl_stage::Denoising,
            Stage::Decoding => sdxl_stage::Decoding,
            Stage::Saving => sdxl_stage::Saving,
            Stage::Upscaling => sdxl_stage::Upscaling,
            Stage::ImageEncoding => sdxl_stage::ImageEncoding,
        };
        let (preview_rgb, preview_width, preview_height, preview_len) = match &event.preview {
            Some(p) => (p.rgb.as_ptr(), p.width, p.height, p.rgb.len()),
            None => (std::ptr::null(), 0, 0, 0),
        };
        let report = sdxl_progress {
            stage,
            step: event.step,
            total_steps: event.total_steps,
            image_index: event.image_index,
            batch_size: event.batch_size,
            elapsed_seconds: event.elapsed_seconds,
            request_id: self.request_id.as_ptr(),
            preview_rgb,
            preview_width,
            preview_height,
            preview_len,
        };
        // SAFETY: the caller promised `cb` is callable with its `user_data`; `report` outlives the call.
        unsafe { cb(self.user_data, &report) == 0 }
    }
}
