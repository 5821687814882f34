//! The C ABI as a host calls it: every status code, NULL and bad pointers, bad UTF-8, panics, cancellation,
//! raw image buffers, ownership of returned memory.

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicU32, Ordering};

use sdxlrt::ffi::buffers::{sdxl_image_batch_free, sdxl_string_free};
use sdxlrt::ffi::engine::{
    sdxl_cancel, sdxl_debug_panic, sdxl_engine_create, sdxl_engine_free, sdxl_generate, sdxl_generate_images,
};
use sdxlrt::ffi::progress::{sdxl_progress, sdxl_stage};
use sdxlrt::ffi::sdxl_version;
use sdxlrt::ffi::status::{sdxl_status, sdxl_status_str};

use crate::util::{copy_dir, fixtures, last_error, AbiEngine};

fn request(extra: serde_json::Value) -> String {
    let mut data = serde_json::json!({
        "prompt": "a red cube on a table",
        "models": { "base": "tiny-sdxl" },
        "hyperparameters": { "num_inference_steps": 2, "guidance_scale": 5.0, "seed": 1 },
        "dimensions": { "width": 64, "height": 64 },
        "output": { "format": "png" },
    });
    merge(&mut data, extra);
    serde_json::json!({ "message_type": "inference_request", "request_id": "abi-test", "data": data }).to_string()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn assert_failure(reply: &crate::util::Reply, status: sdxl_status, code: &str, needle: &str) {
    assert_eq!(reply.status, status, "{}", reply.json);
    assert_eq!(reply.json["success"], false);
    assert_eq!(reply.json["error_code"], code, "{}", reply.json);
    let msg = reply.json["error"].as_str().unwrap();
    assert!(msg.contains(needle), "error `{msg}` should mention `{needle}`");
    assert_eq!(reply.error, msg, "sdxl_last_error equals the response's error");
}

#[test]
fn version_and_status_names_are_static_strings() {
    let v = unsafe { CStr::from_ptr(sdxl_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    for s in sdxl_status::ALL {
        let name = unsafe { CStr::from_ptr(sdxl_status_str(s as u32)) }.to_str().unwrap();
        assert!(!name.is_empty() && name != "unknown", "{s:?}");
    }
    assert_eq!(unsafe { CStr::from_ptr(sdxl_status_str(12345)) }.to_str().unwrap(), "unknown");
}

#[test]
fn null_arguments_are_refused_not_dereferenced() {
    let mut engine = std::ptr::null_mut();
    assert_eq!(sdxl_engine_create(std::ptr::null(), std::ptr::null_mut()), sdxl_status::NullArgument);
    assert!(last_error().contains("engine_out"));
    // NULL options are the defaults.
    assert_eq!(sdxl_engine_create(std::ptr::null(), &mut engine), sdxl_status::Ok, "{}", last_error());
    let req = CString::new(request(serde_json::json!({}))).unwrap();
    let mut out: *mut c_char = std::ptr::null_mut();
    assert_eq!(
        sdxl_generate(std::ptr::null(), req.as_ptr(), None, std::ptr::null_mut(), &mut out),
        sdxl_status::NullArgument
    );
    assert_eq!(
        sdxl_generate(engine, std::ptr::null(), None, std::ptr::null_mut(), &mut out),
        sdxl_status::NullArgument
    );
    assert!(last_error().contains("request_json"));
    assert_eq!(
        sdxl_generate(engine, req.as_ptr(), None, std::ptr::null_mut(), std::ptr::null_mut()),
        sdxl_status::NullArgument
    );
    let mut batch = std::ptr::null_mut();
    assert_eq!(
        sdxl_generate_images(engine, req.as_ptr(), None, std::ptr::null_mut(), &mut out, std::ptr::null_mut()),
        sdxl_status::NullArgument
    );
    assert_eq!(
        sdxl_generate_images(engine, req.as_ptr(), None, std::ptr::null_mut(), std::ptr::null_mut(), &mut batch),
        sdxl_status::NullArgument
    );
    assert_eq!(sdxl_cancel(engine, std::ptr::null()), sdxl_status::NullArgument);
    assert_eq!(sdxl_cancel(std::ptr::null(), req.as_ptr()), sdxl_status::NullArgument);
    assert!(out.is_null(), "nothing written on ABI errors");
    // Freeing NULL is a no-op.
    sdxl_string_free(std::ptr::null_mut());
    sdxl_image_batch_free(std::ptr::null_mut());
    sdxl_engine_free(std::ptr::null_mut());
    sdxl_engine_free(engine);
}

#[test]
fn invalid_utf8_is_refused() {
    let engine = AbiEngine::fixtures();
    let bad = [b'{', 0xff, 0xfe, b'}', 0];
    let mut out: *mut c_char = std::ptr::null_mut();
    let status = sdxl_generate(engine.0, bad.as_ptr().cast(), None, std::ptr::null_mut(), &mut out);
    assert_eq!(status, sdxl_status::InvalidUtf8);
    assert!(last_error().contains("UTF-8"));
    let mut e = std::ptr::null_mut();
    assert_eq!(sdxl_engine_create(bad.as_ptr().cast(), &mut e), sdxl_status::InvalidUtf8);
    assert_eq!(sdxl_cancel(engine.0, bad.as_ptr().cast()), sdxl_status::InvalidUtf8);
}

#[test]
fn freed_and_foreign_engine_pointers_are_detected() {
    let engine = AbiEngine::fixtures();
    let raw = engine.0;
    drop(engine);
    let req = CString::new(request(serde_json::json!({}))).unwrap();
    let mut out: *mut c_char = std::ptr::null_mut();
    assert_eq!(sdxl_generate(raw, req.as_ptr(), None, std::ptr::null_mut(), &mut out), sdxl_status::InvalidHandle);
    assert!(last_error().contains("not a live engine"));
    let mut local = 0u64;
    let foreign = (&mut local as *mut u64).cast();
    assert_eq!(sdxl_generate(foreign, req.as_ptr(), None, std::ptr::null_mut(), &mut out), sdxl_status::InvalidHandle);
    assert_eq!(sdxl_cancel(foreign, req.as_ptr()), sdxl_status::InvalidHandle);
    // Double free and freeing a foreign pointer are no-ops.
    sdxl_engine_free(raw);
    sdxl_engine_free(foreign);
}

#[test]
fn a_panic_never_crosses_the_boundary_and_the_engine_keeps_working() {
    let engine = AbiEngine::fixtures();
    assert_eq!(sdxl_debug_panic(), sdxl_status::Panic);
    assert!(last_error().contains("panicked"), "{}", last_error());
    let reply = engine.generate(&request(serde_json::json!({})));
    assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
}

#[test]
fn invalid_json_gives_a_json_reply_with_error_code() {
    let engine = AbiEngine::fixtures();
    let reply = engine.generate("{\"request_id\": \"r9\", \"data\": {");
    assert_failure(&reply, sdxl_status::InvalidJson, "invalid_json", "line");
    assert_eq!(reply.json["request_id"], "r9", "the id is recovered from broken JSON");
}

#[test]
fn invalid_fields_are_named_with_allowed_values() {
    let engine = AbiEngine::fixtures();
    let cases = [
        (serde_json::json!({"dimensions": {"width": 63}}), "data.dimensions.width"),
        (serde_json::json!({"dimensions": {"width": 72}}), "multiple of 16"),
        (
            serde_json::json!({"hyperparameters": {"num_inference_steps": 0}}),
            "data.hyperparameters.num_inference_steps",
        ),
        (serde_json::json!({"output": {"format": "bmp"}}), "data.output.format"),
        (serde_json::json!({"scheduler": "NoSuchScheduler"}), "EulerDiscreteScheduler"),
        (serde_json::json!({"models": {"base": "../etc"}}), "data.models.base"),
    ];
    for (extra, needle) in cases {
        let reply = engine.generate(&request(extra.clone()));
        assert_failure(&reply, sdxl_status::InvalidRequest, "invalid_request", needle);
    }
}

#[test]
fn features_not_built_yet_are_errors_naming_the_field() {
    let engine = AbiEngine::fixtures();
    let unit = serde_json::json!({"model_path": "c", "control_image": "e.png", "preprocessor": "depth_midas"});
    let cases = [(serde_json::json!({"controlnet": {"models": [unit]}}), "data.controlnet.models[0].preprocessor")];
    for (extra, needle) in cases {
        let reply = engine.generate(&request(extra.clone()));
        assert_failure(&reply, sdxl_status::Unsupported, "unsupported", needle);
    }
    // The refiner and custom VAEs are built (tests/stages.rs): an unknown name is a missing model.
    for (extra, needle) in
        [(serde_json::json!({"models": {"refiner": "ref"}}), "ref"), (serde_json::json!({"models": {"vae": "v"}}), "v")]
    {
        let reply = engine.generate(&request(extra));
        assert_failure(&reply, sdxl_status::ModelNotFound, "model_not_found", needle);
    }
    // LoRA is built (tests/lora.rs); an unknown LoRA name is an invalid request naming its field.
    let reply = engine.generate(&request(serde_json::json!({"lora": {"models": [{"name": "x", "weight": 0.8}]}})));
    assert_failure(&reply, sdxl_status::InvalidRequest, "invalid_request", "data.lora.models[0].name");
}

#[test]
fn unknown_model_and_broken_models_are_clear_errors() {
    let engine = AbiEngine::fixtures();
    let reply = engine.generate(&request(serde_json::json!({"models": {"base": "no-such-model"}})));
    assert_failure(&reply, sdxl_status::ModelNotFound, "model_not_found", "no-such-model");

    // A model folder whose UNet external-data file is missing, and one whose UNet is not a UNet.
    let root = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-sdxl"), &root.path().join("no-data"));
    std::fs::remove_file(root.path().join("no-data/unet/model.onnx_data")).unwrap();
    copy_dir(&fixtures().join("tiny-sdxl"), &root.path().join("wrong-unet"));
    std::fs::copy(fixtures().join("tiny-sdxl/vae_decoder/model.onnx"), root.path().join("wrong-unet/unet/model.onnx"))
        .unwrap();
    copy_dir(&fixtures().join("tiny-sdxl"), &root.path().join("bad-tokenizer"));
    std::fs::write(root.path().join("bad-tokenizer/tokenizer/tokenizer.json"), "{ not json").unwrap();
    let engine = AbiEngine::create(Some(&serde_json::json!({"models_root": root.path()}).to_string())).unwrap();
    for (model, needle) in [("no-data", "unet"), ("wrong-unet", "sample"), ("bad-tokenizer", "tokenizer")] {
        let reply = engine.generate(&request(serde_json::json!({"models": {"base": model}})));
        assert_failure(&reply, sdxl_status::ModelInvalid, "model_invalid", needle);
    }
}

#[test]
fn an_onnx_runtime_failure_is_an_inference_error_and_the_engine_recovers() {
    // Claim a one-level UNet so 72 px passes validation; the real graph then fails in ONNX Runtime.
    let root = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-sdxl"), &root.path().join("m"));
    let cfg_path = root.path().join("m/unet/config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["block_out_channels"] = serde_json::json!([16]);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let engine = AbiEngine::create(Some(&serde_json::json!({"models_root": root.path()}).to_string())).unwrap();
    let bad = request(serde_json::json!({"models": {"base": "m"}, "dimensions": {"width": 72, "height": 72}}));
    let reply = engine.generate(&bad);
    assert_failure(&reply, sdxl_status::InferenceFailed, "inference_failed", "unet");
    let good = request(serde_json::json!({"models": {"base": "m"}}));
    assert_eq!(engine.generate(&good).status, sdxl_status::Ok);
}

#[test]
fn bad_engine_options_are_refused() {
    for (options, status, needle) in [
        ("{\"models_rot\": \"x\"}", sdxl_status::InvalidOption, "models_rot"),
        ("{\"models_root\": \"/no/such/folder\"}", sdxl_status::InvalidOption, "models_root"),
        ("{\"intra_op_threads\": 0}", sdxl_status::InvalidOption, "intra_op_threads"),
        ("{\"cpu_memory_arena\": \"some\"}", sdxl_status::InvalidOption, "unet_only"),
        ("{\"max_steps\": 0}", sdxl_status::InvalidOption, "max_steps"),
        ("{\"onnxruntime_path\": \"relative/lib.so\"}", sdxl_status::InvalidOption, "absolute"),
        ("[1,", sdxl_status::InvalidJson, "options"),
    ] {
        match AbiEngine::create(Some(options)) {
            Ok(_) => panic!("{options} was accepted"),
            Err((s, msg)) => {
                assert_eq!(s, status, "{options}: {msg}");
                assert!(msg.contains(needle), "{options}: {msg}");
            }
        }
    }
    // A request without models_root in the engine.
    let engine = AbiEngine::create(Some("{}")).unwrap();
    let reply = engine.generate(&request(serde_json::json!({})));
    assert_failure(&reply, sdxl_status::InvalidOption, "invalid_option", "models_root");
}

#[test]
fn outputs_are_written_atomically_and_never_clobbered() {
    let engine = AbiEngine::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.png");
    std::fs::write(&path, b"precious").unwrap();
    let reply = engine.generate(&request(serde_json::json!({"output": {"save_path": path}})));
    assert_failure(&reply, sdxl_status::OutputExists, "output_exists", "img.png");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious", "the user's file is untouched");

    let reply = engine.generate(&request(serde_json::json!({"output": {"save_path": path, "overwrite": true}})));
    assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
    let img = image::open(&path).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    assert!(reply.json["data"]["generated_images"][0]["image_data"].is_null(), "no base64 unless asked with a path");

    // A folder where the file should go.
    let blocked = dir.path().join("a-file");
    std::fs::write(&blocked, b"x").unwrap();
    let reply = engine.generate(&request(serde_json::json!({"output": {"save_path": blocked.join("img.png")}})));
    assert_failure(&reply, sdxl_status::OutputFailed, "output_failed", "a-file");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");

    // jpeg and webp encode and decode to the requested size; batches get numbered names.
    for fmt in ["jpeg", "webp"] {
        let p = dir.path().join(format!("b.{fmt}"));
        let reply = engine.generate(&request(serde_json::json!({
            "output": {"format": fmt, "save_path": p, "quality": 80}, "batch": {"size": 2}
        })));
        assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
        let second = dir.path().join(format!("b_1.{fmt}"));
        for f in [&p, &second] {
            let img = image::open(f).unwrap();
            assert_eq!((img.width(), img.height()), (64, 64));
        }
    }
}

struct CancelAt {
    step: u32,
    seen: AtomicU32,
    stages: std::sync::Mutex<Vec<(sdxl_stage, u32, u32)>>,
}

unsafe extern "C" fn progress_cb(user_data: *mut c_void, p: *const sdxl_progress) -> i32 {
    let state = unsafe { &*(user_data as *const CancelAt) };
    let p = unsafe { &*p };
    let id = unsafe { CStr::from_ptr(p.request_id) }.to_str().unwrap();
    assert_eq!(id, "abi-test");
    state.stages.lock().unwrap().push((p.stage, p.step, p.total_steps));
    if p.stage == sdxl_stage::Denoising {
        state.seen.store(p.step, Ordering::SeqCst);
        if p.step >= state.step {
            return 1;
        }
    }
    0
}

#[test]
fn progress_reports_every_step_and_a_nonzero_return_cancels() {
    let engine = AbiEngine::fixtures();
    let req = request(serde_json::json!({"hyperparameters": {"num_inference_steps": 4}}));
    let state = CancelAt { step: 99, seen: AtomicU32::new(0), stages: Default::default() };
    let reply = engine.generate_with(&req, Some(progress_cb), &state as *const _ as *mut c_void);
    assert_eq!(reply.status, sdxl_status::Ok);
    let stages = state.stages.lock().unwrap().clone();
    let denoise: Vec<_> = stages.iter().filter(|s| s.0 == sdxl_stage::Denoising).map(|s| (s.1, s.2)).collect();
    assert_eq!(denoise, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert!(stages.iter().any(|s| s.0 == sdxl_stage::Decoding));

    let state = CancelAt { step: 2, seen: AtomicU32::new(0), stages: Default::default() };
    let reply = engine.generate_with(&req, Some(progress_cb), &state as *const _ as *mut c_void);
    assert_failure(&reply, sdxl_status::Cancelled, "cancelled", "cancelled");
    assert_eq!(state.seen.load(Ordering::SeqCst), 2, "stopped right after the step that asked");
    assert_eq!(engine.generate(&req).status, sdxl_status::Ok, "the next request works");
}

struct CancelFromThread {
    engine: *const sdxlrt::ffi::handles::sdxl_engine,
}

unsafe extern "C" fn cancel_from_other_thread(user_data: *mut c_void, p: *const sdxl_progress) -> i32 {
    let state = unsafe { &*(user_data as *const CancelFromThread) };
    if unsafe { (*p).stage } == sdxl_stage::Denoising && unsafe { (*p).step } == 1 {
        let engine = state.engine as usize;
        std::thread::spawn(move || {
            let id = CString::new("abi-test").unwrap();
            assert_eq!(sdxl_cancel(engine as *const _, id.as_ptr()), sdxl_status::Ok);
        })
        .join()
        .unwrap();
    }
    0
}

#[test]
fn sdxl_cancel_from_another_thread_stops_the_run() {
    let engine = AbiEngine::fixtures();
    let req = request(serde_json::json!({"hyperparameters": {"num_inference_steps": 6}}));
    let state = CancelFromThread { engine: engine.0 };
    let reply = engine.generate_with(&req, Some(cancel_from_other_thread), &state as *const _ as *mut c_void);
    assert_failure(&reply, sdxl_status::Cancelled, "cancelled", "cancelled");
    // Cancelling an id before its request arrives cancels that request when it starts.
    let id = CString::new("early").unwrap();
    assert_eq!(sdxl_cancel(engine.0, id.as_ptr()), sdxl_status::Ok);
    let early = req.replace("\"abi-test\"", "\"early\"");
    assert_eq!(engine.generate(&early).status, sdxl_status::Cancelled);
    assert_eq!(engine.generate(&early).status, sdxl_status::Ok, "remembered once only");
}

#[test]
fn a_timeout_cancels_the_request() {
    let engine = AbiEngine::fixtures();
    let reply = engine.generate(&request(serde_json::json!({"metadata": {"timeout": 0.000001}})));
    assert_failure(&reply, sdxl_status::Cancelled, "cancelled", "cancelled");
}

#[test]
fn raw_image_batches_describe_their_pixels_and_free_once() {
    let engine = AbiEngine::fixtures();
    let (reply, images) = engine.generate_images(&request(serde_json::json!({"batch": {"size": 2}})));
    assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
    assert_eq!(images.len(), 2);
    assert_eq!(images.iter().map(|i| i.seed).collect::<Vec<_>>(), vec![1, 2]);
    assert_ne!(images[0].data, images[1].data, "different seeds, different images");
    // Failure: no batch.
    let (reply, images) = engine.generate_images(&request(serde_json::json!({"dimensions": {"width": 1}})));
    assert_eq!(reply.status, sdxl_status::InvalidRequest);
    assert!(images.is_empty());
}

#[test]
fn raw_pixels_need_no_png_and_plain_generate_needs_some_output() {
    let engine = AbiEngine::fixtures();
    let req = request(serde_json::json!({"output": {"return_image_data": false}}));
    let reply = engine.generate(&req);
    assert_failure(&reply, sdxl_status::InvalidRequest, "invalid_request", "sdxl_generate_images");
    let (reply, images) = engine.generate_images(&req);
    assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
    assert_eq!(images.len(), 1);
    assert!(reply.json["data"]["generated_images"][0]["image_data"].is_null(), "no PNG encoded");
}

#[test]
fn seeds_resolve_like_diffusers_and_random_seeds_are_reported() {
    let engine = AbiEngine::fixtures();
    let a = engine.generate_images(&request(serde_json::json!({"hyperparameters": {"seed": -1}})));
    let seed = a.0.json["data"]["generated_images"][0]["metadata"]["seed"].as_u64().unwrap();
    let b = engine.generate_images(&request(serde_json::json!({"hyperparameters": {"seed": seed}})));
    assert_eq!(a.1, b.1, "the reported random seed reproduces the image");
}
