//! The C ABI with random bytes: `sdxl_generate` / `sdxl_generate_images` / `sdxl_cancel` on one engine created
//! once over the bundled fixtures (`models_root` = tests/fixtures, default model `tiny-sdxl`, ONNX Runtime from env
//! `ORT_DYLIB_PATH`, which `scripts/fuzz.sh` sets).
//!
//! Every call must return a status (never crash, never SDXL_STATUS_PANIC or SDXL_STATUS_INTERNAL), write a JSON
//! response that agrees with the status, hand out images only on success, and every response and image batch is
//! freed again. The input is what a C caller would pass: its bytes up to the first NUL.
//!
//! Speed: the engine's limits are `max_steps` 2, `max_width`/`max_height` 128, `max_batch` 2, so bigger requests
//! are (cheap) limit errors; requests that parse with more steps (no step count given: the default of 50) are
//! skipped. Saved files stay inside a temporary `output_root`, emptied after every call.
#![no_main]

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sdxlrt::engine::manage;
use sdxlrt::engine::options::EngineOptions;
use sdxlrt::ffi::buffers::{sdxl_image_batch, sdxl_image_batch_free, sdxl_string_free};
use sdxlrt::ffi::engine::{sdxl_cancel, sdxl_engine_create, sdxl_generate, sdxl_generate_images};
use sdxlrt::ffi::handles::sdxl_engine;
use sdxlrt::ffi::progress::{sdxl_progress, sdxl_stage};
use sdxlrt::ffi::status::sdxl_status;
use sdxlrt::protocol::normalize::{parse_request, RequestLimits};

/// Steps above which a request is skipped (too slow to fuzz).
const MAX_STEPS: u32 = 2;

struct Fixture {
    engine: usize,
    output_root: PathBuf,
    limits: RequestLimits,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        assert!(
            std::env::var_os("ORT_DYLIB_PATH").is_some(),
            "abi_generate needs env ORT_DYLIB_PATH (eval \"$(scripts/setup.sh)\"; scripts/fuzz.sh does it)"
        );
        let models_root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"));
        let output_root = std::env::temp_dir().join(format!("sdxlrt-fuzz-out-{}", std::process::id()));
        std::fs::create_dir_all(&output_root).expect("create the fuzz output_root");
        let options = serde_json::json!({
            "models_root": models_root.canonicalize().expect("tests/fixtures exists"),
            "default_model": "tiny-sdxl",
            "output_root": output_root,
            "intra_op_threads": 1,
            "max_steps": MAX_STEPS,
            "max_width": 128,
            "max_height": 128,
            "max_batch": 2,
            "max_cached_models": 4,
        })
        .to_string();
        let limits = EngineOptions::from_json(Some(&options)).expect("fuzz engine options are valid").limits();
        let c_options = CString::new(options).expect("no NUL");
        let mut engine: *mut sdxl_engine = std::ptr::null_mut();
        let status = sdxl_engine_create(c_options.as_ptr(), &mut engine);
        assert_eq!(status, sdxl_status::Ok, "sdxl_engine_create: {}", last_error());
        Fixture { engine: engine as usize, output_root, limits }
    })
}

fn last_error() -> String {
    // SAFETY: sdxl_last_error returns a NUL-terminated string owned by sdxlrt, valid until the next call.
    unsafe { CStr::from_ptr(sdxlrt::ffi::boundary::sdxl_last_error() as *const c_char) }.to_string_lossy().into()
}

/// What the progress callback sees; `cancel_at` makes it return non-zero at that event.
struct ProgressState {
    events: u32,
    cancel_at: Option<u32>,
}

unsafe extern "C" fn on_progress(user_data: *mut c_void, progress: *const sdxl_progress) -> i32 {
    // SAFETY: user_data is the &mut ProgressState passed to this call; progress is valid during the callback.
    let (state, p) = unsafe { (&mut *(user_data as *mut ProgressState), &*progress) };
    assert!(!p.request_id.is_null(), "progress without request_id");
    assert!(p.batch_size >= 1 && p.image_index < p.batch_size, "image {} of {}", p.image_index, p.batch_size);
    if p.stage == sdxl_stage::Denoising {
        assert!(p.step >= 1 && p.step <= p.total_steps, "step {} of {}", p.step, p.total_steps);
    }
    assert!(p.elapsed_seconds.is_finite() && p.elapsed_seconds >= 0.0);
    state.events += 1;
    i32::from(state.cancel_at == Some(state.events))
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let engine = fx.engine as *const sdxl_engine;
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let bytes = &data[..end];
    let text = std::str::from_utf8(bytes).ok();

    // Skip generation requests too slow to run here (the engine's steps limit does not cover the default 50).
    if let Some(t) = text {
        if matches!(manage::parse(t), Ok(None)) {
            if let Ok(p) = parse_request(t, &fx.limits) {
                if p.params.steps > MAX_STEPS {
                    return;
                }
            }
        }
    }

    let request = CString::new(bytes).expect("no interior NUL");
    // Deterministic per input: which entry point, and whether the callback cancels (and at which event).
    let selector = data.len() + data.last().map_or(0, |&b| usize::from(b));
    let cancel_at = selector.is_multiple_of(5).then_some((selector / 5 % 4) as u32 + 1);
    let mut state = ProgressState { events: 0, cancel_at };
    let user_data = &mut state as *mut ProgressState as *mut c_void;
    let want_images = !selector.is_multiple_of(2);

    let mut response: *mut c_char = std::ptr::null_mut();
    let mut images: *mut sdxl_image_batch = std::ptr::null_mut();
    let status = if want_images {
        sdxl_generate_images(engine, request.as_ptr(), Some(on_progress), user_data, &mut response, &mut images)
    } else {
        sdxl_generate(engine, request.as_ptr(), Some(on_progress), user_data, &mut response)
    };
    assert!(
        !matches!(status, sdxl_status::Panic | sdxl_status::Internal),
        "sdxl_generate returned {status:?}: {}",
        last_error()
    );

    if text.is_none() {
        assert_eq!(status, sdxl_status::InvalidUtf8);
        assert!(response.is_null() && images.is_null());
    } else {
        assert!(!response.is_null(), "no response for status {status:?}");
        // SAFETY: a NUL-terminated string from sdxlrt, freed below.
        let reply = unsafe { CStr::from_ptr(response) }.to_str().expect("response is UTF-8").to_owned();
        sdxl_string_free(response);
        let v: serde_json::Value = serde_json::from_str(&reply).expect("response is JSON");
        let ok = status == sdxl_status::Ok;
        assert_eq!(v["success"].as_bool(), Some(ok), "status {status:?} but response {reply}");
        assert_eq!(v["error_code"].is_string(), !ok, "status {status:?} but response {reply}");
        if ok && state.cancel_at.is_some_and(|n| n <= state.events) {
            panic!("the progress callback cancelled at event {:?} but the request succeeded", state.cancel_at);
        }
        if want_images {
            if ok && v["data"]["generated_images"].is_array() {
                assert!(!images.is_null(), "success without images");
                // SAFETY: a live batch from sdxlrt, freed below.
                let batch = unsafe { &*images };
                assert_eq!(Some(batch.count), v["data"]["generated_images"].as_array().map(Vec::len));
                for i in 0..batch.count {
                    // SAFETY: `count` images follow `images`.
                    let img = unsafe { &*batch.images.add(i) };
                    assert!(img.width > 0 && img.height > 0 && img.channels == 3 && !img.data.is_null());
                    assert!(img.stride >= img.width * 3);
                    // SAFETY: stride × height bytes per image; touch the last one.
                    let last = unsafe { *img.data.add((img.stride * img.height) as usize - 1) };
                    std::hint::black_box(last);
                }
            } else if !ok {
                assert!(images.is_null(), "images on failure");
            }
            sdxl_image_batch_free(images);
        }
    }

    let status = sdxl_cancel(engine, request.as_ptr());
    assert!(matches!(status, sdxl_status::Ok | sdxl_status::InvalidUtf8), "sdxl_cancel returned {status:?}");

    // Keep the output folder empty (no-clobber would make the same save_path fail next time).
    if std::fs::read_dir(&fx.output_root).is_ok_and(|mut d| d.next().is_some()) {
        let _ = std::fs::remove_dir_all(&fx.output_root);
        std::fs::create_dir_all(&fx.output_root).expect("recreate output_root");
    }
});
