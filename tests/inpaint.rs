//! Inpainting (`data.mask_image` with `data.init_image`): parity with diffusers' `StableDiffusionXLInpaintPipeline`
//! on goldens made from the same tiny weights — with the standard 4-channel UNet (onnx/make_inpaint.py) and with a
//! 9-channel inpainting UNet (onnx/make_inpaint_unet.py) — the starting latents and the latents after every step
//! (and mask blend) ≤ 1e-4 + 1e-5·|x|, images within ±1/255; then the mask's preprocessing and errors.

use sdxlrt::engine::Engine;
use sdxlrt::image::source;
use sdxlrt::pipeline::inpaint::{latent_mask, mask_pixels};
use sdxlrt::pipeline::NoProgress;

use crate::util::{check_case, check_case_on, fixtures, inpaint_unet_root, max_u8_diff, options_json, Golden};

/// The request model holding the 9-channel inpainting UNet ([`inpaint_unet_root`]).
const INPAINT_MODEL: &str = "tiny-sdxl-inpaint";

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

#[test]
fn a_9_channel_inpainting_unet_matches_diffusers() {
    let (_root, options) = inpaint_unet_root();
    let engine = Engine::new(Some(&options)).expect("engine");
    for case in ["inpaint9", "inpaint9_dpmpp_2m"] {
        check_case_on(&engine, INPAINT_MODEL, case, false);
    }
}

#[test]
fn at_strength_one_an_inpainting_unet_starts_from_noise_without_encoding_the_image() {
    // diffusers draws no posterior sample of the init image then: the first generator's draws are the noise and
    // the masked image's sample, so the run checks the order of the draws too.
    let (_root, options) = inpaint_unet_root();
    let engine = Engine::new(Some(&options)).expect("engine");
    check_case_on(&engine, INPAINT_MODEL, "inpaint9_full", true);
}

#[test]
fn an_inpainting_unet_batch_shares_the_first_generators_masked_image_as_diffusers_does() {
    let (_root, options) = inpaint_unet_root();
    let engine = Engine::new(Some(&options)).expect("engine");
    check_case_on(&engine, INPAINT_MODEL, "inpaint9_batch2", false);
    check_case_on(&engine, INPAINT_MODEL, "inpaint9_batch2", true);
}

#[test]
fn an_inpainting_unet_without_a_mask_is_an_error_naming_the_mask_and_the_engine_keeps_working() {
    let (_root, options) = inpaint_unet_root();
    let engine = Engine::new(Some(&options)).expect("engine");
    let g = Golden::load("inpaint9");
    let good: serde_json::Value = serde_json::from_str(&g.request(INPAINT_MODEL, true)).unwrap();
    let without = |keys: &[&str]| {
        let mut r = good.clone();
        for key in keys {
            r["data"].as_object_mut().unwrap().remove(*key);
        }
        r.to_string()
    };
    let cases = [
        (without(&["mask_image", "init_image"]), "invalid_request", "data.mask_image"), // text-to-image
        (without(&["mask_image"]), "invalid_request", "data.mask_image"),               // image-to-image
    ];
    for (request, code, needle) in cases {
        let reply: serde_json::Value =
            serde_json::from_str(&engine.generate(&request, &mut NoProgress, false).response_json).unwrap();
        assert_eq!(reply["error_code"], code, "{needle}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(needle), "{needle}: {error}");
        if needle == "data.mask_image" {
            assert!(error.contains("inpainting UNet"), "the error says why: {error}");
        }
    }
    check_case_on(&engine, INPAINT_MODEL, "inpaint9", true);
}

#[test]
fn a_refiner_alone_inpaints_as_diffusers_inpaint_pipeline_does() {
    let reply = check_case_on(&engine(), "tiny-sdxl-refiner", "inpaint_on_refiner", false);
    assert_eq!(reply["warnings"], serde_json::json!([]), "{reply}");
}

#[test]
fn the_response_says_how_much_of_the_image_the_mask_redrew() {
    let g = Golden::load("inpaint");
    let reply = check_case(&engine(), "inpaint", true);
    let mask = &reply["data"]["generated_images"][0]["metadata"]["init_image"]["mask"];
    let want = g.t("mask").f32.iter().map(|&m| f64::from(m)).sum::<f64>() / g.t("mask").f32.len() as f64;
    assert_eq!(*mask, serde_json::json!({"blur": 0.0, "redrawn_fraction": want}), "diffusers' binarized mask");
    assert!((want - 0.4626).abs() < 1e-4, "{want}");
    let img2img = check_case(&engine(), "img2img", true);
    let init = &img2img["data"]["generated_images"][0]["metadata"]["init_image"];
    assert!(init.get("mask").is_none(), "image-to-image has no mask: {init}");
}
