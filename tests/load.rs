//! A bounded load test: 8 threads × 50 requests on one engine, mixed valid, invalid and cancelled; every reply is
//! checked, valid ones are deterministic per seed, and memory does not grow. Plus a panic inside a pipeline stage.

use std::collections::HashMap;
use std::sync::Mutex;

use sdxlrt::engine::memory::process_rss;
use sdxlrt::engine::Engine;
use sdxlrt::ffi::status::sdxl_status;
use sdxlrt::pipeline::{Progress, ProgressEvent, Stage};

use crate::util::{options_json, AbiEngine};

fn request(id: &str, seed: u64, steps: u32) -> String {
    serde_json::json!({
        "request_id": id,
        "data": {
            "prompt": "a windmill", "models": {"base": "tiny-sdxl"},
            "hyperparameters": {"num_inference_steps": steps, "guidance_scale": 5.0, "seed": seed},
            "output": {"format": "png"},
        }
    })
    .to_string()
}

#[test]
fn eight_threads_of_mixed_requests_all_get_correct_replies_and_memory_stays_bounded() {
    let engine = AbiEngine::fixtures();
    let first = engine.generate_images(&request("warm", 0, 2));
    assert_eq!(first.0.status, sdxl_status::Ok);
    let rss_after_first = process_rss().unwrap();
    let images: Mutex<HashMap<u64, Vec<u8>>> = Mutex::new(HashMap::new());
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let engine = &engine;
            let images = &images;
            scope.spawn(move || {
                for i in 0..50u64 {
                    let id = format!("t{t}-{i}");
                    match i % 5 {
                        // Invalid: a bad width.
                        0 => {
                            let bad =
                                request(&id, 1, 2).replace("\"seed\":1", "\"seed\":1},\"dimensions\":{\"width\":7");
                            let reply = engine.generate(&bad);
                            assert_eq!(reply.status, sdxl_status::InvalidRequest, "{id}: {}", reply.json);
                            assert_eq!(reply.json["request_id"], id.as_str());
                        }
                        // Cancelled before it starts.
                        1 => {
                            let c = std::ffi::CString::new(id.clone()).unwrap();
                            assert_eq!(sdxlrt::ffi::engine::sdxl_cancel(engine.0, c.as_ptr()), sdxl_status::Ok);
                            let reply = engine.generate(&request(&id, 2, 2));
                            assert_eq!(reply.status, sdxl_status::Cancelled, "{id}");
                        }
                        // Not JSON.
                        2 => assert_eq!(engine.generate("{{{").status, sdxl_status::InvalidJson),
                        // Valid, one of three seeds: the same seed must give the same pixels everywhere.
                        _ => {
                            let seed = (t + i) % 3;
                            let (reply, imgs) = engine.generate_images(&request(&id, seed, 2));
                            assert_eq!(reply.status, sdxl_status::Ok, "{id}: {}", reply.json);
                            assert_eq!(reply.json["request_id"], id.as_str());
                            let mut seen = images.lock().unwrap();
                            let entry = seen.entry(seed).or_insert_with(|| imgs[0].data.clone());
                            assert!(*entry == imgs[0].data, "{id}: seed {seed} gave a different image");
                        }
                    }
                }
            });
        }
    });
    assert_eq!(images.lock().unwrap().len(), 3);
    let rss = process_rss().unwrap();
    // Other tests run in this process too, so allow generous headroom; a per-request leak of the 400 requests'
    // buffers (≥ 400 × 64×64×3 bytes plus responses) or of sessions would still show.
    assert!(rss < rss_after_first + (256 << 20), "RSS grew from {rss_after_first} to {rss}");
}

/// A Progress that panics at the first denoising step: stands in for a bug inside a pipeline stage.
struct PanicAtStep;

impl Progress for PanicAtStep {
    fn report(&mut self, event: &ProgressEvent<'_>) -> bool {
        if event.stage == Stage::Denoising {
            panic!("test hook: panic inside the denoising stage");
        }
        true
    }
}

#[test]
fn a_panic_inside_a_pipeline_stage_becomes_an_error_and_the_engine_keeps_working() {
    let engine = Engine::new(Some(&options_json())).unwrap();
    let outcome = engine.generate(&request("boom", 1, 3), &mut PanicAtStep, false);
    let err = outcome.error.expect("an error, not an unwinding panic");
    assert!(err.to_string().contains("panicked"), "{err}");
    let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
    assert_eq!(reply["request_id"], "boom");
    assert_eq!(reply["error_code"], "internal");
    let again = engine.generate(&request("after", 1, 2), &mut sdxlrt::pipeline::NoProgress, false);
    assert!(again.error.is_none(), "{:?}", again.error);
}
