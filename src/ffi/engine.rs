//! Engine lifetime and generation: `sdxl_engine_create`, `sdxl_engine_free`, `sdxl_generate`,
//! `sdxl_generate_images`, `sdxl_cancel`.

use std::ffi::{c_char, c_void};

use super::args::{opt_str_arg, out_arg, str_arg, try_arg};
use super::boundary::{clear_last_error, fail, ffi_boundary, set_last_error};
use super::buffers::{batch_to_c, sdxl_image_batch, string_to_c};
use super::handles::{self, sdxl_engine};
use super::progress::{sdxl_progress_cb, CallbackProgress};
use super::status::sdxl_status;
use crate::engine::Engine;

/// Create an engine.
///
/// - `options_json`: NUL-terminated UTF-8 JSON object of engine options, or NULL for the defaults. Keys:
///   `models_root` (folder holding model folders), `default_model`, `onnxruntime_path`, `intra_op_threads`,
///   and request limits (`max_width`, `max_height`, `max_pixels`, `max_steps`, `max_batch`, `max_request_bytes`).
///   Borrowed for the duration of the call.
/// - `engine_out`: receives the new engine on success (untouched on failure). The caller owns it and frees it
///   with `sdxl_engine_free`.
///
/// ONNX Runtime is looked up in this order: option `onnxruntime_path`, env `ORT_DYLIB_PATH`, a
/// `libonnxruntime.so*` beside the sdxlrt library, the system loader. Failure is `SDXL_STATUS_RUNTIME_UNAVAILABLE`.
/// Details of any failure: `sdxl_last_error()`.
#[no_mangle]
pub extern "C" fn sdxl_engine_create(options_json: *const c_char, engine_out: *mut *mut sdxl_engine) -> sdxl_status {
    ffi_boundary! {
        clear_last_error();
        let options = try_arg!(unsafe { opt_str_arg(options_json, "options_json") });
        let engine_out = try_arg!(out_arg(engine_out, "engine_out"));
        match Engine::new(options) {
            Ok(engine) => {
                // SAFETY: checked non-null; the caller provides a writable pointer.
                unsafe { *engine_out = handles::register(engine) };
                sdxl_status::Ok
            }
            Err(e) => fail((&e).into(), &e.to_string()),
        }
    }
}

/// Free an engine. NULL, or a handle already freed, is a no-op. Calls still running on other threads finish first
/// (they hold their own reference); the models are released when the last one returns.
#[no_mangle]
pub extern "C" fn sdxl_engine_free(engine: *mut sdxl_engine) {
    ffi_boundary! {
        if !engine.is_null() {
            handles::release(engine);
        }
    }
}

/// Generate images for one request.
///
/// - `engine`: borrowed; several threads may call `sdxl_generate` on one engine at once.
/// - `request_json`: NUL-terminated UTF-8, the seed's request (`{"message_type", "request_id", "data"}`) or a bare
///   `data` object; borrowed for the duration of the call.
/// - `progress_cb`: may be NULL; called on the calling thread with `user_data`; return non-zero to cancel.
/// - `response_out`: receives the JSON response (the seed's shape plus `error_code`), owned by the caller and freed
///   with `sdxl_string_free`. It is written for every status except NULL_ARGUMENT, INVALID_UTF8, INVALID_HANDLE
///   and PANIC; on a request failure it holds `success: false`, `error` and `error_code`.
///
/// Returns `SDXL_STATUS_OK` when the request succeeded, else the failure's status (message in `sdxl_last_error()`).
#[no_mangle]
pub extern "C" fn sdxl_generate(
    engine: *const sdxl_engine,
    request_json: *const c_char,
    progress_cb: sdxl_progress_cb,
    user_data: *mut c_void,
    response_out: *mut *mut c_char,
) -> sdxl_status {
    generate_into(engine, request_json, progress_cb, user_data, response_out, None)
}

/// Like [`sdxl_generate`], and also return the images as raw RGB8 pixels (no PNG/base64 round trip).
///
/// - `images_out`: receives an `sdxl_image_batch*` on success (NULL on failure), owned by the caller and freed with
///   `sdxl_image_batch_free`. The response JSON still describes each image; `image_data` is omitted unless the
///   request asks for it.
///
/// Other arguments, ownership and statuses as for `sdxl_generate`.
#[no_mangle]
pub extern "C" fn sdxl_generate_images(
    engine: *const sdxl_engine,
    request_json: *const c_char,
    progress_cb: sdxl_progress_cb,
    user_data: *mut c_void,
    response_out: *mut *mut c_char,
    images_out: *mut *mut sdxl_image_batch,
) -> sdxl_status {
    generate_into(engine, request_json, progress_cb, user_data, response_out, Some(images_out))
}

/// The body of both generate calls; `images_out` is `Some` for the raw-pixels variant (and then must be non-NULL).
fn generate_into(
    engine: *const sdxl_engine,
    request_json: *const c_char,
    progress_cb: sdxl_progress_cb,
    user_data: *mut c_void,
    response_out: *mut *mut c_char,
    images_out: Option<*mut *mut sdxl_image_batch>,
) -> sdxl_status {
    ffi_boundary! {
        clear_last_error();
        let engine = try_arg!(handles::clone(engine));
        let request = try_arg!(unsafe { str_arg(request_json, "request_json") });
        let response_out = try_arg!(out_arg(response_out, "response_out"));
        let images_out = match images_out {
            Some(ptr) => Some(try_arg!(out_arg(ptr, "images_out"))),
            None => None,
        };
        let mut progress = CallbackProgress::new(progress_cb, user_data);
        let outcome = engine.generate(request, &mut progress, images_out.is_some());
        let status = outcome.status();
        if let Some(e) = &outcome.error {
            set_last_error(&e.to_string());
        }
        // SAFETY: both out-pointers were checked non-null; the caller provides writable pointers.
        unsafe {
            if let Some(images_out) = images_out {
                *images_out =
                    if outcome.error.is_none() { batch_to_c(outcome.images) } else { std::ptr::null_mut() };
            }
            *response_out = string_to_c(outcome.response_json);
        }
        status
    }
}

/// Cancel the request with `request_id` on this engine, from any thread. A running request stops within one step
/// (a running ONNX Runtime call is interrupted too) and returns `SDXL_STATUS_CANCELLED`; a request that has not
/// started yet is cancelled when it starts (the id is remembered for a while).
///
/// `request_id` is NUL-terminated UTF-8, borrowed for the call. Returns `SDXL_STATUS_OK`, or an ABI error.
#[no_mangle]
pub extern "C" fn sdxl_cancel(engine: *const sdxl_engine, request_id: *const c_char) -> sdxl_status {
    ffi_boundary! {
        clear_last_error();
        let engine = try_arg!(handles::clone(engine));
        let request_id = try_arg!(unsafe { str_arg(request_id, "request_id") });
        engine.cancel(request_id);
        sdxl_status::Ok
    }
}

/// Force a panic inside the ABI boundary and return what the boundary makes of it (`SDXL_STATUS_PANIC`, message in
/// `sdxl_last_error()`). For tests of host bindings: proves panics never unwind into the caller.
#[no_mangle]
pub extern "C" fn sdxl_debug_panic() -> sdxl_status {
    ffi_boundary! {
        clear_last_error();
        panic!("sdxl_debug_panic was called");
    }
}
