//! Hires fix with ControlNet (`data.hires` + `data.controlnet`): parity with diffusers'
//! `StableDiffusionXLControlNetPipeline` → upscale → `StableDiffusionXLControlNetImg2ImgPipeline` on goldens made by
//! onnx/make_hires_controlnet.py from the same tiny weights (both passes' latents after every step ≤ 1e-4 +
//! 1e-5·|x|, images within ±1/255, via tests/hires.rs's `check_hires`): one unit with the latent and Lanczos
//! upscalers, two units, `data.hires.controlnet` "first" and "second", guess mode, a guidance window, a batch; then
//! the reply's metadata and errors.

use sdxlrt::engine::Engine;
use sdxlrt::pipeline::NoProgress;
use serde_json::{json, Value};

use crate::hires::{check_hires, request};
use crate::util::{options_json, Golden};

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

fn reply(engine: &Engine, request: &Value) -> Value {
    serde_json::from_str(&engine.generate(&request.to_string(), &mut NoProgress, false).response_json).unwrap()
}

#[test]
fn one_unit_conditions_both_passes_as_diffusers_controlnet_txt2img_then_img2img() {
    // control_80x60.png: resized to 64×64 for the first pass and to 96×96 from the original for the second.
    let engine = engine();
    check_hires(&engine, "hires_controlnet_latent", true);
    check_hires(&engine, "hires_controlnet_lanczos", true);
}

#[test]
fn two_units_condition_both_passes() {
    check_hires(&engine(), "hires_controlnet_multi", true);
}

#[test]
fn first_or_second_leaves_the_other_pass_without_controlnets() {
    let engine = engine();
    check_hires(&engine, "hires_controlnet_first", true);
    check_hires(&engine, "hires_controlnet_second", true);
}

#[test]
fn guess_mode_applies_in_both_passes() {
    check_hires(&engine(), "hires_controlnet_guess", true);
}

#[test]
fn a_guidance_window_counts_each_passs_own_evaluations() {
    // First pass: [0, 1, 1, 0] of 4; second: int(10 × 0.6) = 6 run, [0, 0, 1, 1, 0, 0] of those.
    check_hires(&engine(), "hires_controlnet_window", true);
}

#[test]
fn a_batch_with_an_ancestral_scheduler_matches_per_image_and_as_one_tensor() {
    let engine = engine();
    check_hires(&engine, "hires_controlnet_batch2", false);
    check_hires(&engine, "hires_controlnet_batch2", true);
}

#[test]
fn the_reply_says_which_pass_each_unit_conditioned() {
    let engine = engine();
    for (case, choice, passes) in [
        ("hires_controlnet_multi", "both", json!(["first", "second"])),
        ("hires_controlnet_first", "first", json!(["first"])),
        ("hires_controlnet_second", "second", json!(["second"])),
    ] {
        let reply = check_hires(&engine, case, true);
        let meta = &reply["data"]["generated_images"][0]["metadata"];
        assert_eq!(meta["hires"]["controlnet"], choice, "{case}: {meta}");
        for unit in meta["controlnets"].as_array().unwrap() {
            assert_eq!(unit["passes"], passes, "{case}: {unit}");
        }
    }
    // Without hires fix the units say nothing about passes; without units metadata.hires has no controlnet.
    let g = Golden::load("controlnet");
    let plain = reply(&engine, &serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap());
    assert!(plain["data"]["generated_images"][0]["metadata"]["controlnets"][0].get("passes").is_none(), "{plain}");
    let mut r = request(&Golden::load("hires_latent"), true);
    r["data"]["hires"]["controlnet"] = json!("second");
    let no_units = reply(&engine, &r);
    assert!(no_units["data"]["generated_images"][0]["metadata"]["hires"].get("controlnet").is_none(), "{no_units}");
    let warnings = no_units["warnings"].to_string();
    assert!(warnings.contains("data.hires.controlnet (second) is ignored"), "{warnings}");
}

#[test]
fn a1111s_hr_option_names_choose_the_passes() {
    // "Low res only" is "first": the same images as the golden's.
    let engine = engine();
    let g = Golden::load("hires_controlnet_first");
    let mut r = request(&g, true);
    r["data"]["hires"]["controlnet"] = json!("Low res only");
    let outcome = engine.generate(&r.to_string(), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "{}", outcome.response_json);
    let (worst, at) = crate::util::max_u8_diff(&outcome.images[0].data, &g.t("image_u8").u8);
    assert!(worst <= 1, "differs from diffusers by {worst}/255 at byte {at}");
}

#[test]
fn invalid_or_unbuilt_combinations_are_errors_naming_the_field() {
    let engine = engine();
    let good = request(&Golden::load("hires_controlnet_latent"), true);
    let mut bad_choice = good.clone();
    bad_choice["data"]["hires"]["controlnet"] = json!("low");
    let mut wrong_type = good.clone();
    wrong_type["data"]["hires"]["controlnet"] = json!(2);
    let mut with_refiner = good.clone();
    with_refiner["data"]["models"]["refiner"] = json!("tiny-sdxl-refiner");
    let mut with_init = good.clone();
    with_init["data"]["init_image"] = json!(crate::util::fixtures().join("img2img/init_64.png"));
    for (request, code, needle) in [
        (bad_choice, "invalid_request", "data.hires.controlnet"),
        (wrong_type, "invalid_request", "data.hires.controlnet"),
        (with_refiner, "unsupported", "data.models.refiner"),
        (with_init, "unsupported", "data.init_image"),
    ] {
        let reply = reply(&engine, &request);
        assert_eq!(reply["success"], false, "{needle}: {request}");
        assert_eq!(reply["error_code"], code, "{needle}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains(needle), "{needle}: {}", reply["error"]);
    }
}
