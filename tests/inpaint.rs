//! Inpainting (`data.mask_image` with `data.init_image`): parity with diffusers' `StableDiffusionXLInpaintPipeline`
//! (standard 4-channel UNet) on goldens made by onnx/make_inpaint.py from the same tiny weights — the starting
//! latents and the latents after every step and mask blend ≤ 1e-4 + 1e-5·|x|, images within ±1/255 — then the
//! mask's preprocessing and errors.

use sdxlrt::engine::Engine;
use sdxlrt::image::source;
use sdxlrt::pipeline::inpaint::{latent_mask, mask_pixels};
use sdxlrt::pipeline::NoProgress;

use crate::util::{check_case, fixtures, max_u8_diff, options_json, Golden};

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

#[test]
fn inpainting_matches_diffusers_with_each_kind_of_scheduler() {
    let engine = engine();
    for case in ["inpaint", "inpaint_euler_a", "inpaint_ddim", "inpaint_heun", "inpaint_dpmpp_2m"] {
        check_case(&engine, case, false);
    }
}

#[test]
fn at_strength_one_inpainting_starts_from_pure_noise_as_diffusers_does() {
    check_case(&engine(), "inpaint_full", true);
}

#[test]
fn a_batch_shares_the_first_generators_image_latents_as_diffusers_does() {
    let engine = engine();
    check_case(&engine, "inpaint_batch2", false);
    check_case(&engine, "inpaint_batch2", true);
}

#[test]
fn a_mask_of_another_size_is_resized_and_binarized_as_diffusers_does() {
    check_case(&engine(), "inpaint_resized", true);
    for (case, file) in [("inpaint", "mask_64.png"), ("inpaint_resized", "mask_80x60.png")] {
        let g = Golden::load(case);
        let (w, h) = (g.meta::<u32>("width"), g.meta::<u32>("height"));
        let mask = source::load(fixtures().join("inpaint").join(file).to_str().unwrap(), "test").unwrap();
        let pixels = mask_pixels(&mask, w, h);
        assert_eq!(pixels.iter().copied().collect::<Vec<f32>>(), g.t("mask").f32, "{case}: mask pixels");
        let latent = latent_mask(&pixels, (h / 8) as usize, (w / 8) as usize);
        assert_eq!(latent.iter().copied().collect::<Vec<f32>>(), g.t("mask_latents").f32, "{case}: latent mask");
    }
}

#[test]
fn the_mask_changes_the_result_compared_with_image_to_image() {
    // Without the mask the same request is image-to-image: the images must differ clearly.
    let engine = engine();
    let g = Golden::load("inpaint");
    let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    request["data"].as_object_mut().unwrap().remove("mask_image");
    let outcome = engine.generate(&request.to_string(), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "{}", outcome.response_json);
    let (worst, _) = max_u8_diff(&outcome.images[0].data, &g.t("image_u8").u8);
    assert!(worst >= 5, "the mask changed the image by only {worst}/255");
}

#[test]
fn bad_masks_are_errors_naming_the_field_and_the_engine_keeps_working() {
    let engine = engine();
    let g = Golden::load("inpaint");
    let good: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut r = good.clone();
        r["data"][key] = value;
        r.to_string()
    };
    let mut no_image = good.clone();
    no_image["data"].as_object_mut().unwrap().remove("init_image");
    let cases = [
        (with("mask_image", "/no/such/mask.png".into()), "invalid_request", "data.mask_image"),
        (no_image.to_string(), "invalid_request", "data.mask_image"),
        (with("mask", "m.png".into()), "invalid_request", "data.mask"),
        (
            with(
                "controlnet",
                serde_json::json!({"models": [{"model_path": "tiny-controlnet", "control_image": "x"}]}),
            ),
            "unsupported",
            "data.controlnet",
        ),
    ];
    for (request, code, needle) in cases {
        let reply: serde_json::Value =
            serde_json::from_str(&engine.generate(&request, &mut NoProgress, false).response_json).unwrap();
        assert_eq!(reply["error_code"], code, "{needle}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains(needle), "{needle}: {}", reply["error"]);
    }
    let outcome = engine.generate(&good.to_string(), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "the engine still works: {}", outcome.response_json);
    let (worst, at) = max_u8_diff(&outcome.images[0].data, &g.t("image_u8").u8);
    assert!(worst <= 1, "after the errors the image differs from diffusers by {worst}/255 at {at}");
}
