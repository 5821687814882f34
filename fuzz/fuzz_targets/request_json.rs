//! Request JSON parsing and validation: bytes → `protocol::normalize::parse_request` with the default limits.
//!
//! Must never panic. On success the validated parameters must satisfy every documented bound; on failure the
//! error reply built from it (`Response::failure`) must be valid JSON with `success: false` and an `error_code`.
//! `Response::request_id_hint`, which also scans text that is not JSON, runs on every input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdxlrt::protocol::normalize::{parse_request, RequestLimits, MAX_GUIDANCE_SCALE, MAX_LORA_WEIGHT};
use sdxlrt::protocol::response::Response;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else { return };
    let limits = RequestLimits::default();

    let hint = Response::request_id_hint(json);
    if let Some(id) = &hint {
        assert!(!id.is_empty() && id.len() <= 256, "request_id_hint returned {id:?}");
    }

    match parse_request(json, &limits) {
        Ok(parsed) => check_params(json, &parsed.params, &limits),
        Err(e) => {
            let reply = Response::failure(hint.as_deref(), &e, Vec::new()).to_json();
            let v: serde_json::Value = serde_json::from_str(&reply).expect("failure reply is valid JSON");
            assert_eq!(v["success"], false);
            assert!(v["error_code"].is_string(), "no error_code in {reply}");
            assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "empty error in {reply}");
        }
    }
});

fn check_params(json: &str, p: &sdxlrt::protocol::params::GenerateParams, limits: &RequestLimits) {
    assert!(json.len() <= limits.max_json_bytes);
    assert!(!p.request_id.is_empty(), "empty request_id");
    assert!(!p.prompt.trim().is_empty(), "blank prompt accepted");
    assert!(p.model.as_ref().is_none_or(|m| !m.is_empty()), "empty model name");
    assert!((1..=limits.max_steps).contains(&p.steps), "steps {}", p.steps);
    assert!(
        p.guidance_scale.is_finite() && (0.0..=MAX_GUIDANCE_SCALE as f32).contains(&p.guidance_scale),
        "guidance_scale {}",
        p.guidance_scale
    );
    assert!(p.strength.is_finite() && (0.0..=1.0).contains(&p.strength), "strength {}", p.strength);
    for (side, max) in [(p.width, limits.max_width), (p.height, limits.max_height)] {
        if let Some(v) = side {
            assert!(v > 0 && v.is_multiple_of(8) && v <= max, "side {v}");
        }
    }
    if let (Some(w), Some(h)) = (p.width, p.height) {
        assert!(u64::from(w) * u64::from(h) <= limits.max_pixels, "{w}x{h}");
    }
    assert!((1..=limits.max_batch).contains(&p.batch_size), "batch {}", p.batch_size);
    assert!((1..=100).contains(&p.output.quality), "quality {}", p.output.quality);
    assert!(p.output.save_path.as_ref().is_none_or(|s| !s.as_os_str().is_empty()), "empty save_path");
    assert!(p.output.return_image_data || p.output.save_path.is_some(), "no way to return the image");
    if let Some(t) = p.timeout_secs {
        assert!(t.is_finite() && t > 0.0, "timeout {t}");
    }
    if let Some(s) = &p.scheduler {
        assert!(!s.name.trim().is_empty(), "blank scheduler name");
    }
    for l in &p.loras {
        assert!(!l.name.trim().is_empty(), "blank LoRA name");
        let max = MAX_LORA_WEIGHT as f32;
        for w in [Some(l.weight), l.unet_weight, l.text_encoder_weight].into_iter().flatten() {
            assert!(w.is_finite() && w.abs() <= max, "LoRA weight {w}");
        }
    }
}
