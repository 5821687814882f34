//! Scheduler choice through the ABI: A1111 names resolve and are reported, two-evaluation schedulers report
//! requested steps (not UNet calls) to progress and UNet evaluations to metrics, and swapping schedulers reuses the
//! loaded sessions.

use std::ffi::c_void;
use std::sync::Mutex;

use sdxlrt::ffi::progress::{sdxl_progress, sdxl_stage};
use sdxlrt::ffi::status::sdxl_status;

use crate::util::AbiEngine;

fn request(scheduler: serde_json::Value, steps: u32) -> String {
    serde_json::json!({
        "request_id": "s",
        "data": {
            "prompt": "a fox", "models": {"base": "tiny-sdxl"}, "scheduler": scheduler,
            "hyperparameters": {"num_inference_steps": steps, "guidance_scale": 5.0, "seed": 9},
            "output": {"format": "png"},
        }
    })
    .to_string()
}

unsafe extern "C" fn record(user_data: *mut c_void, p: *const sdxl_progress) -> i32 {
    let steps = unsafe { &*(user_data as *const Mutex<Vec<(u32, u32)>>) };
    let p = unsafe { &*p };
    if p.stage == sdxl_stage::Denoising {
        steps.lock().unwrap().push((p.step, p.total_steps));
    }
    0
}

#[test]
fn two_evaluation_schedulers_count_requested_steps_and_report_unet_calls() {
    let engine = AbiEngine::fixtures();
    for name in ["Heun", "DPM2", "DPM2 a"] {
        let seen = Mutex::new(Vec::<(u32, u32)>::new());
        let reply =
            engine.generate_with(&request(serde_json::json!(name), 4), Some(record), &seen as *const _ as *mut c_void);
        assert_eq!(reply.status, sdxl_status::Ok, "{name}: {}", reply.json);
        assert_eq!(*seen.lock().unwrap(), vec![(1, 4), (2, 4), (3, 4), (4, 4)], "{name}: progress counts steps");
        let m = &reply.json["data"]["processing_metrics"];
        assert_eq!(m["steps"], 4);
        assert_eq!(m["unet_evaluations"], 7, "{name}: 2·4−1 UNet calls");
    }
}

#[test]
fn a1111_names_resolve_to_diffusers_classes_with_options_reported() {
    let engine = AbiEngine::fixtures();
    for (name, class, option) in [
        ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", Some(("use_karras_sigmas", serde_json::json!(true)))),
        (
            "DPM++ 2M SDE Karras",
            "DPMSolverMultistepScheduler",
            Some(("algorithm_type", serde_json::json!("sde-dpmsolver++"))),
        ),
        ("Euler a", "EulerAncestralDiscreteScheduler", None),
        ("UniPC", "UniPCMultistepScheduler", None),
        ("LMS", "LMSDiscreteScheduler", None),
        ("DDIM", "DDIMScheduler", None),
    ] {
        let reply = engine.generate(&request(serde_json::json!(name), 3));
        assert_eq!(reply.status, sdxl_status::Ok, "{name}: {}", reply.json);
        let meta = &reply.json["data"]["generated_images"][0]["metadata"];
        assert_eq!(meta["scheduler"], class, "{name}");
        if let Some((key, value)) = option {
            assert_eq!(meta["scheduler_options"][key], value, "{name}: {meta}");
        }
    }
    let reply =
        engine.generate(&request(serde_json::json!({"type": "Heun", "use_karras_sigmas": true, "no_such": 1}), 3));
    assert_eq!(reply.status, sdxl_status::InvalidRequest);
    assert!(reply.error.contains("no_such"), "{}", reply.error);
}

#[test]
fn swapping_schedulers_reuses_the_loaded_sessions() {
    let engine = AbiEngine::fixtures();
    let first = engine.generate(&request(serde_json::json!("Euler"), 2));
    assert!(first.json["data"]["processing_metrics"]["model_load_time"].as_f64().unwrap() > 0.0);
    for name in ["DPM++ 2M", "Heun", "Euler a"] {
        let reply = engine.generate(&request(serde_json::json!(name), 2));
        assert_eq!(reply.json["data"]["processing_metrics"]["model_load_time"], 0.0, "{name} reloaded the model");
    }
}
