//! ControlNet guess mode (`data.controlnet.guess_mode`) and pooled ControlNets (`global_pool_conditions`): parity
//! with diffusers' `StableDiffusionXLControlNetPipeline` / `...Img2ImgPipeline` called with `guess_mode=True`, and
//! with a tiny ControlNet whose config says `global_pool_conditions`, on goldens made by onnx/make_controlnet.py and
//! onnx/make_img2img.py (latents after every step ≤ 1e-4 + 1e-5·|x|, image within ±1/255).

use sdxlrt::engine::Engine;
use sdxlrt::pipeline::NoProgress;

use crate::util::{check_case, options_json, Golden};

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

/// `metadata.controlnets` of the reply's first image.
fn units(reply: &serde_json::Value) -> &serde_json::Value {
    &reply["data"]["generated_images"][0]["metadata"]["controlnets"]
}

#[test]
fn guess_mode_with_guidance_runs_the_controlnet_on_the_conditional_half_only_as_diffusers_does() {
    let reply = check_case(&engine(), "controlnet_guess", true);
    assert_eq!(
        units(&reply),
        &serde_json::json!([{"model": "tiny-controlnet", "type": "test", "conditioning_scale": 0.8,
                              "guidance_start": 0.0, "guidance_end": 1.0, "guess_mode": true}])
    );
}

#[test]
fn guess_mode_without_guidance_only_weights_the_residuals() {
    check_case(&engine(), "controlnet_guess_nocfg", true);
}

#[test]
fn guess_mode_covers_every_unit_of_a_multi_controlnet() {
    let reply = check_case(&engine(), "controlnet_guess_multi", true);
    let units = units(&reply).as_array().unwrap();
    assert!(units.iter().all(|u| u["guess_mode"] == true), "{units:?}");
}

#[test]
fn guess_mode_keeps_the_guidance_window_per_evaluation() {
    check_case(&engine(), "controlnet_guess_window", true);
}

#[test]
fn guess_mode_in_image_to_image_matches_diffusers_controlnet_img2img_pipeline() {
    let reply = check_case(&engine(), "img2img_controlnet_guess", false);
    assert_eq!(units(&reply)[0]["guess_mode"], true);
}

#[test]
fn a_pooled_controlnet_runs_in_guess_mode_without_being_asked_as_diffusers_does() {
    let reply = check_case(&engine(), "controlnet_pool", true);
    assert_eq!(
        units(&reply),
        &serde_json::json!([{"model": "tiny-controlnet-pool", "type": "test", "conditioning_scale": 0.9,
                              "guidance_start": 0.0, "guidance_end": 1.0, "guess_mode": true,
                              "global_pool_conditions": true}])
    );
}

#[test]
fn a_pooled_second_controlnet_is_broadcast_onto_the_first_and_turns_nothing_on() {
    let reply = check_case(&engine(), "controlnet_pool_second", true);
    let units = units(&reply);
    assert_eq!(units[0].get("guess_mode"), None, "only the first unit's config turns guess mode on");
    assert_eq!(units[1]["global_pool_conditions"], true);
}

#[test]
fn the_guess_mode_goldens_differ_from_the_same_requests_without_it() {
    let image = |case: &str| Golden::load(case).t("image_u8").u8.clone();
    let mean_diff = |a: &[u8], b: &[u8]| {
        a.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len().min(b.len()) as f64
    };
    // controlnet_batch2_nocfg's first image is controlnet_guess_nocfg's request without guess mode (seed 0).
    let pairs = [
        ("controlnet_guess", image("controlnet")),
        ("controlnet_guess_multi", image("controlnet_multi")),
        ("controlnet_guess_window", image("controlnet_window")),
        ("controlnet_guess_nocfg", image("controlnet_batch2_nocfg")),
        ("img2img_controlnet_guess", image("img2img_controlnet")),
        ("inpaint_controlnet_guess", image("inpaint_controlnet")),
        ("controlnet_pool_second", image("controlnet_multi")),
    ];
    for (case, without) in pairs {
        let d = mean_diff(&image(case), &without);
        assert!(d > 1.0, "{case}: mean difference {d:.2}/255 from the request without guess mode, too small");
    }
}

#[test]
fn guess_mode_when_inpainting_matches_diffusers_controlnet_inpaint_pipeline() {
    let reply = check_case(&engine(), "inpaint_controlnet_guess", false);
    assert_eq!(units(&reply)[0]["guess_mode"], true);
}

#[test]
fn when_inpainting_a_pooled_first_controlnet_does_not_turn_guess_mode_on_as_in_diffusers_and_a_warning_says_so() {
    let engine = engine();
    // diffusers' ControlNet inpaint pipeline: no `guess_mode or global_pool_conditions`
    let reply = check_case(&engine, "inpaint_controlnet_pool", true);
    assert_eq!(units(&reply)[0].get("guess_mode"), None);
    assert_eq!(units(&reply)[0]["global_pool_conditions"], true);
    let warnings = reply["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w.as_str().unwrap().contains("does not turn guess mode on when inpainting")),
        "{warnings:?}"
    );
    // Asked for, it is on (and nothing to warn about).
    let mut request: serde_json::Value =
        serde_json::from_str(&Golden::load("inpaint_controlnet_pool").request("tiny-sdxl", true)).unwrap();
    request["data"]["controlnet"]["guess_mode"] = true.into();
    let outcome = engine.generate(&request.to_string(), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "{}", outcome.response_json);
    let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
    assert_eq!(units(&reply)[0]["guess_mode"], true);
    assert!(reply["warnings"].as_array().is_none_or(|w| w.iter().all(|w| !w.as_str().unwrap().contains("inpaint"))));
}

#[test]
fn guess_mode_without_a_controlnet_is_ignored_with_a_warning() {
    let engine = engine();
    let g = Golden::load("cfg_neg");
    let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    request["data"]["controlnet"] = serde_json::json!({"enabled": false, "guess_mode": true});
    let outcome = engine.generate(&request.to_string(), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "{}", outcome.response_json);
    let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
    let warnings = reply["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("guess_mode is ignored")), "{warnings:?}");
}
