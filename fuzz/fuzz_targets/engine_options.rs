//! Engine options: bytes → `engine::options::EngineOptions::from_json`, which must never panic; accepted options
//! must satisfy their documented bounds.
//!
//! When ONNX Runtime can be loaded (env `ORT_DYLIB_PATH`, as `scripts/fuzz.sh` sets), the same text also goes
//! through the ABI: `sdxl_engine_create` must agree with `from_json` (options rejected by the parser are
//! INVALID_JSON / INVALID_OPTION, accepted ones create an engine, which is freed again). ONNX Runtime is loaded
//! once first, so a fuzzed `onnxruntime_path` is only compared with it, never loaded.
#![no_main]

use std::ffi::{c_char, CStr, CString};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sdxlrt::engine::options::EngineOptions;
use sdxlrt::ffi::engine::{sdxl_engine_create, sdxl_engine_free};
use sdxlrt::ffi::handles::sdxl_engine;
use sdxlrt::ffi::status::sdxl_status;

/// Whether ONNX Runtime is loaded in this process (by creating, and freeing, one default engine).
fn runtime_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            eprintln!("engine_options: ORT_DYLIB_PATH unset, fuzzing the parser only (not sdxl_engine_create)");
            return false;
        }
        let mut engine: *mut sdxl_engine = std::ptr::null_mut();
        let status = sdxl_engine_create(std::ptr::null(), &mut engine);
        assert_eq!(status, sdxl_status::Ok, "cannot create a default engine: {}", last_error());
        sdxl_engine_free(engine);
        true
    })
}

fn last_error() -> String {
    // SAFETY: sdxl_last_error returns a NUL-terminated string owned by sdxlrt, valid until the next call.
    unsafe { CStr::from_ptr(sdxlrt::ffi::boundary::sdxl_last_error() as *const c_char) }.to_string_lossy().into()
}

fuzz_target!(|data: &[u8]| {
    let text = std::str::from_utf8(data).ok();
    let parsed = text.map(|t| EngineOptions::from_json(Some(t)));
    if let Some(Ok(o)) = &parsed {
        assert_ne!(o.intra_op_threads, Some(0));
        assert_ne!(o.max_cached_models, Some(0));
        assert_ne!(o.max_concurrent_runs, Some(0));
        assert!(o.memory_threshold.is_none_or(|t| t > 0.0 && t <= 1.0));
        assert!(o.onnxruntime_path.as_ref().is_none_or(|p| p.is_absolute()));
        let _ = o.limits();
    }

    if !runtime_loaded() {
        return;
    }
    // What a C caller passes: the bytes up to the first NUL.
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let c_text = CString::new(&data[..end]).expect("no interior NUL");
    let mut engine: *mut sdxl_engine = std::ptr::null_mut();
    let status = sdxl_engine_create(c_text.as_ptr(), &mut engine);
    let expected = match std::str::from_utf8(&data[..end]).map(|t| EngineOptions::from_json(Some(t))) {
        Err(_) => Some(sdxl_status::InvalidUtf8),
        Ok(Ok(_)) => Some(sdxl_status::Ok),
        Ok(Err(_)) => None,
    };
    match expected {
        Some(want) => assert_eq!(status, want, "sdxl_engine_create: {}", last_error()),
        None => assert!(
            matches!(status, sdxl_status::InvalidJson | sdxl_status::InvalidOption),
            "sdxl_engine_create gave {status:?} for options from_json rejects: {}",
            last_error()
        ),
    }
    if status == sdxl_status::Ok {
        assert!(!engine.is_null());
        sdxl_engine_free(engine);
    } else {
        assert!(engine.is_null(), "engine_out written on failure");
    }
});
