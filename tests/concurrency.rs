//! One engine, many threads: every call succeeds and a seed gives the same image as a lone call.

use crate::util::AbiEngine;

#[test]
fn parallel_generates_on_one_engine_match_a_lone_call() {
    let engine = AbiEngine::fixtures();
    let req = |seed: u64| {
        serde_json::json!({
            "request_id": format!("c{seed}"),
            "data": {
                "prompt": "a small house", "models": {"base": "tiny-sdxl"},
                "hyperparameters": {"num_inference_steps": 3, "guidance_scale": 5.0, "seed": seed},
                "output": {"format": "png"},
            }
        })
        .to_string()
    };
    let lone: Vec<_> = (0..2).map(|s| engine.generate_images(&req(s)).1).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                let engine = &engine;
                let req = req(i % 2);
                scope.spawn(move || engine.generate_images(&req))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let (reply, images) = h.join().unwrap();
            assert_eq!(reply.status, sdxlrt::ffi::status::sdxl_status::Ok, "{}", reply.json);
            assert_eq!(images, lone[i % 2], "thread {i} got a different image");
        }
    });
}
