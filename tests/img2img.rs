//! Image-to-image (`data.init_image` + `strength`): parity with diffusers' `StableDiffusionXLImg2ImgPipeline` on
//! goldens made by onnx/make_img2img.py from the same tiny weights — the noised init latents and the latents after
//! every step ≤ 1e-4 + 1e-5·|x|, images within ±1/255 — for every scheduler, a resized init image, a batch, full
//! and low strength, a ControlNet, a refiner and a tiled VAE; then sizes, progress, metadata and errors.

use ndarray::Array4;
use sdxlrt::engine::Engine;
use sdxlrt::image::source;
use sdxlrt::pipeline::encode::{image_latents, pixels, VaeEncoder};
use sdxlrt::pipeline::model_dir::ModelDir;
use sdxlrt::pipeline::vae_tiles::Tiling;
use sdxlrt::pipeline::{NoProgress, Stage};
use sdxlrt::runtime::{CancelToken, SessionConfig};

use crate::util::{check_case, check_case_on, fixtures, max_u8_diff, options_json, Golden, Stages};

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

fn reply(engine: &Engine, request: &str) -> serde_json::Value {
    serde_json::from_str(&engine.generate(request, &mut NoProgress, false).response_json).unwrap()
}

fn tensor4(t: &crate::util::Tensor) -> Array4<f32> {
    let s = &t.shape;
    Array4::from_shape_vec((s[0], s[1], s[2], s[3]), t.f32.clone()).unwrap()
}

#[test]
fn img2img_matches_diffusers_with_every_scheduler() {
    let engine = engine();
    for case in [
        "img2img",
        "img2img_euler_a",
        "img2img_ddim",
        "img2img_dpmpp_2m",
        "img2img_dpmpp_single",
        "img2img_unipc",
        "img2img_lms",
        "img2img_heun",
        "img2img_kdpm2",
        "img2img_kdpm2_a",
    ] {
        check_case(&engine, case, false);
    }
}

#[test]
fn the_response_says_how_the_init_image_was_used() {
    let reply = check_case(&engine(), "img2img", true);
    let meta = &reply["data"]["generated_images"][0]["metadata"];
    assert_eq!(meta["steps"], 5, "{meta}");
    assert_eq!(
        meta["init_image"],
        serde_json::json!({"strength": 0.6, "denoising_steps": 3, "source_width": 64,
        "source_height": 64})
    );
    let metrics = &reply["data"]["processing_metrics"];
    assert_eq!((metrics["steps"].as_u64(), metrics["unet_evaluations"].as_u64()), (Some(3), Some(3)), "{metrics}");
    assert!(metrics["vae_encode_time"].as_f64().unwrap() > 0.0, "{metrics}");
}

#[test]
fn an_init_image_of_another_size_is_resized_with_lanczos_as_diffusers_preprocess_does() {
    check_case(&engine(), "img2img_resized", true);
    let g = Golden::load("img2img_resized");
    let image = source::load(fixtures().join("img2img/init_80x60.png").to_str().unwrap(), "test").unwrap();
    let got = pixels(&image, 96, 64);
    assert_eq!(got.shape(), g.t("init_image").shape.as_slice());
    assert_eq!(got.iter().copied().collect::<Vec<f32>>(), g.t("init_image").f32, "pixels differ from diffusers'");
}

#[test]
fn a_batch_draws_each_images_posterior_and_noise_from_its_own_generator() {
    let engine = engine();
    check_case(&engine, "img2img_batch2", false);
    check_case(&engine, "img2img_batch2", true);
}

#[test]
fn full_and_low_strength_run_the_steps_diffusers_runs() {
    let engine = engine();
    // Strength 1 starts at the first timestep that runs (667 with leading spacing), not at pure noise.
    check_case(&engine, "img2img_full", true);
    // 25 × 0.12 is 3.0 in float64 (3 steps); a float32 strength would give 2.
    check_case(&engine, "img2img_low_strength", true);
}

#[test]
fn a_controlnets_window_counts_the_steps_image_to_image_runs() {
    let reply = check_case(&engine(), "img2img_controlnet", true);
    assert_eq!(reply["data"]["generated_images"][0]["metadata"]["controlnets"][0]["model"], "tiny-controlnet");
}

#[test]
fn the_refiner_takes_over_from_an_image_to_image_base_as_diffusers_does() {
    let reply = check_case(&engine(), "img2img_refiner", true);
    assert_eq!(reply["data"]["generated_images"][0]["metadata"]["model_info"]["refiner_model"], "tiny-sdxl-refiner");
}

#[test]
fn an_image_to_image_base_at_strength_one_hands_over_to_the_refiner_as_diffusers_does() {
    check_case(&engine(), "img2img_refiner_full", true);
}

#[test]
fn a_base_left_no_step_by_strength_hands_the_noised_init_image_to_the_refiner_as_diffusers_does() {
    // strength 0.15 of 10 steps leaves timestep 1, below the switch (200): the base never runs, the refiner
    // denoises the init latents noised at 1 from its own first timestep (101), adding no noise.
    let reply = check_case(&engine(), "img2img_refiner_base_no_step", true);
    assert_eq!(reply["data"]["processing_metrics"]["unet_evaluations"], 2);
    assert!(reply["warnings"].to_string().contains("the base model got no step"), "{}", reply["warnings"]);
}

#[test]
fn the_vae_encoder_and_the_posterior_sample_match_diffusers() {
    let engine = engine();
    let g = Golden::load("img2img");
    let encoder = tiny_encoder(&engine);
    let image = source::load(fixtures().join("img2img/init_64.png").to_str().unwrap(), "test").unwrap();
    let input = pixels(&image, 64, 64);
    assert_eq!(input.iter().copied().collect::<Vec<f32>>(), g.t("init_image").f32, "pixels differ from diffusers'");
    let moments = encoder.moments(input, 4, (8, 8), None, &CancelToken::new()).unwrap();
    let got: Vec<f32> = moments.iter().copied().collect();
    assert_close!(got, g.t("encoder_moments").f32, 1e-4, 1e-5, "VAE encoder moments");
    let vae = ModelDir::open(&fixtures().join("tiny-sdxl")).unwrap().vae;
    let z = image_latents(&tensor4(g.t("encoder_moments")), &g.t("encoder_noise").f32, 1, &vae).unwrap();
    let got: Vec<f32> = z.iter().copied().collect();
    assert_close!(got, g.t("image_latents").f32, 1e-6, 1e-6, "posterior sample × scaling_factor");
}

/// The tiny model's VAE encoder, as the engine loads it.
fn tiny_encoder(engine: &Engine) -> VaeEncoder {
    let config = SessionConfig { intra_op_threads: Some(1), ..Default::default() };
    let path = VaeEncoder::graph_beside(&fixtures().join("tiny-sdxl/vae_decoder"));
    VaeEncoder::load(&engine.runtime().env, &path, &config).unwrap()
}

#[test]
fn tiled_vae_encode_matches_diffusers_enable_tiling() {
    // 128 x 96 with the tiny VAE's 64-pixel tiles: 2 x 3 pixel tiles, their moments blended where they meet (and
    // the decode tiled as well).
    let options = serde_json::json!({"models_root": fixtures(), "intra_op_threads": 1, "vae_tiling": true});
    let tiled = Engine::new(Some(&options.to_string())).unwrap();
    check_case(&tiled, "img2img_vae_tiled", true);
    // The encode alone: the blended moments, and the posterior sample drawn from them.
    let g = Golden::load("img2img_vae_tiled");
    let encoder = tiny_encoder(&tiled);
    let image = source::load(fixtures().join("img2img/init_64.png").to_str().unwrap(), "test").unwrap();
    let input = pixels(&image, 128, 96);
    assert_eq!(input.iter().copied().collect::<Vec<f32>>(), g.t("init_image").f32, "pixels differ from diffusers'");
    let vae = ModelDir::open(&fixtures().join("tiny-sdxl")).unwrap().vae;
    let cancel = CancelToken::new();
    let moments = encoder.moments(input.clone(), 4, (12, 16), Some(Tiling::encode(&vae)), &cancel).unwrap();
    let got: Vec<f32> = moments.iter().copied().collect();
    assert_close!(got, g.t("encoder_moments").f32, 1e-4, 1e-5, "tiled VAE encoder moments");
    let z = image_latents(&moments, &g.t("encoder_noise").f32, 1, &vae).unwrap();
    let got: Vec<f32> = z.iter().copied().collect();
    assert_close!(got, g.t("image_latents").f32, 1e-4, 1e-5, "image latents from the tiled moments");
    // Untiled, the same image gives diffusers' untiled moments, far from the tiled ones (so the test sees tiling).
    let plain = encoder.moments(input, 4, (12, 16), None, &cancel).unwrap();
    let got: Vec<f32> = plain.iter().copied().collect();
    assert_close!(got, g.t("encoder_moments_untiled").f32, 1e-4, 1e-5, "untiled VAE encoder moments");
    let apart = got.iter().zip(&g.t("encoder_moments").f32).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(apart > 0.5, "tiled and untiled moments differ by only {apart}");
}

#[test]
fn an_image_no_larger_than_one_tile_encodes_exactly_as_untiled() {
    // diffusers tiles only an image larger than sample_size (64 here) in either dimension.
    let engine = engine();
    let encoder = tiny_encoder(&engine);
    let vae = ModelDir::open(&fixtures().join("tiny-sdxl")).unwrap().vae;
    let image = source::load(fixtures().join("img2img/init_64.png").to_str().unwrap(), "test").unwrap();
    let cancel = CancelToken::new();
    for (w, h) in [(64, 64), (64, 48), (40, 64)] {
        let input = pixels(&image, w, h);
        let latent = (h as usize / 8, w as usize / 8);
        let tiled = encoder.moments(input.clone(), 4, latent, Some(Tiling::encode(&vae)), &cancel).unwrap();
        let plain = encoder.moments(input, 4, latent, None, &cancel).unwrap();
        assert_eq!(tiled, plain, "{w} x {h}");
    }
    // And through the engine: the 64 x 64 golden with the option on.
    let options = serde_json::json!({"models_root": fixtures(), "intra_op_threads": 1, "vae_tiling": true});
    check_case(&Engine::new(Some(&options.to_string())).unwrap(), "img2img", true);
}

#[test]
fn the_init_images_content_reaches_the_latents() {
    // The goldens would not catch an ignored init image if it did not matter: a flat grey one moves the first
    // step's latents far beyond the tolerance.
    let engine = engine();
    let g = Golden::load("img2img");
    let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    let grey = image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
    let mut png = Vec::new();
    grey.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    use base64::Engine as _;
    request["data"]["init_image"] = base64::engine::general_purpose::STANDARD.encode(&png).into();
    let outcome = engine.generate(&request.to_string(), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "{}", outcome.response_json);
    let (worst, _) = max_u8_diff(&outcome.images[0].data, &g.t("image_u8").u8);
    assert!(worst >= 5, "a grey init image changed the image by only {worst}/255");
}

#[test]
fn without_dimensions_the_init_images_size_rounded_down_is_used() {
    let engine = engine();
    let g = Golden::load("img2img");
    let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    request["data"].as_object_mut().unwrap().remove("dimensions");
    request["data"]["init_image"] = fixtures().join("img2img/init_80x60.png").to_str().unwrap().into();
    let outcome = engine.generate(&request.to_string(), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "{}", outcome.response_json);
    let m = ModelDir::open(&fixtures().join("tiny-sdxl")).unwrap().size_multiple();
    assert_eq!((outcome.images[0].width, outcome.images[0].height), (80 - 80 % m, 60 - 60 % m));
    let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
    let info = &reply["data"]["generated_images"][0]["metadata"]["init_image"];
    assert_eq!((info["source_width"].as_u64(), info["source_height"].as_u64()), (Some(80), Some(60)));
}

#[test]
fn progress_reports_the_encode_stage_and_counts_only_the_steps_that_run() {
    let engine = engine();
    let g = Golden::load("img2img_heun");
    let mut seen = Stages::default();
    let outcome = engine.generate(&g.request("tiny-sdxl", true), &mut seen, false);
    assert!(outcome.error.is_none(), "{}", outcome.response_json);
    let encode = seen.0.iter().position(|s| s.0 == Stage::ImageEncoding).expect("an ImageEncoding report");
    let first_step = seen.0.iter().position(|s| s.0 == Stage::Denoising).unwrap();
    assert!(encode < first_step);
    let steps: Vec<(u32, u32)> = seen.0.iter().filter(|s| s.0 == Stage::Denoising).map(|s| (s.1, s.2)).collect();
    // Heun, 6 steps at strength 0.5: 3 steps run (5 UNet evaluations), reported 1/3, 2/3, 3/3.
    assert_eq!(steps, [(1, 3), (2, 3), (3, 3)]);
}

#[test]
fn bad_init_images_are_errors_naming_the_field_and_the_engine_keeps_working() {
    let engine = engine();
    let g = Golden::load("img2img");
    let good: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    let with = |path: &[&str], value: serde_json::Value| {
        let mut r = good.clone();
        let mut at = &mut r["data"];
        for key in path {
            at = &mut at[*key];
        }
        *at = value;
        r.to_string()
    };
    let tiny = std::env::temp_dir().join(format!("sdxlrt-4x4-{}.png", std::process::id()));
    image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9])).save(&tiny).unwrap();
    let no_size = {
        let mut r: serde_json::Value =
            serde_json::from_str(&with(&["init_image"], tiny.to_str().unwrap().into())).unwrap();
        r["data"].as_object_mut().unwrap().remove("dimensions");
        r.to_string()
    };
    let cases = [
        (with(&["init_image"], "/no/such/photo.png".into()), "invalid_request", "data.init_image"),
        (with(&["init_image"], "".into()), "invalid_request", "data.init_image"),
        (no_size, "invalid_request", "data.init_image"),
        (with(&["hyperparameters", "strength"], 0.1.into()), "invalid_request", "data.hyperparameters.strength"),
        // tiny-vae-b is a decoder alone.
        (with(&["models", "vae"], "tiny-vae-b".into()), "model_not_found", "vae_encoder"),
    ];
    for (request, code, needle) in cases {
        let reply = reply(&engine, &request);
        assert_eq!(reply["success"], false, "{needle}");
        assert_eq!(reply["error_code"], code, "{needle}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains(needle), "{needle}: {}", reply["error"]);
    }
    std::fs::remove_file(&tiny).unwrap();
    let outcome = engine.generate(&good.to_string(), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "the engine still works: {}", outcome.response_json);
    let (worst, at) = max_u8_diff(&outcome.images[0].data, &g.t("image_u8").u8);
    assert!(worst <= 1, "after the errors the image differs from diffusers by {worst}/255 at {at}");
}

/// A float16 export (onnx/export_onnx.py --fp16, its vae_encoder included) encodes the init image through the same
/// path: pixels converted to float16, the posterior back to float32. float16 weights cannot match float32 diffusers
/// to 1e-4, so this checks the conversion path at float16's precision against the float32 goldens, for
/// image-to-image and for inpainting (the masked blend and the encoded image latents).
#[test]
fn an_fp16_export_does_img2img_and_inpainting_close_to_the_fp32_goldens() {
    let engine = engine();
    for case in ["img2img", "inpaint"] {
        let g = Golden::load(case);
        let mut seen = crate::util::Sequence::default();
        let outcome = engine.generate(&g.request("tiny-sdxl-fp16", true), &mut seen, true);
        assert!(outcome.error.is_none(), "{case}: {:?}", outcome.error);
        let noised: Vec<f32> = seen.initial.values().flatten().copied().collect();
        let want = &g.t("noised_latents").f32;
        let start = noised.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(start < 0.02, "{case}: fp16 noised init latents differ from fp32 diffusers by {start}");
        let evaluations = g.tensors.keys().filter(|k| k.starts_with("latents_step_")).count();
        let last: Vec<f32> = seen.steps.values().flat_map(|s| s[evaluations - 1].iter().copied()).collect();
        let want = &g.t(&format!("latents_step_{}", evaluations - 1)).f32;
        let end = last.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(end < 0.05, "{case}: fp16 final latents differ from fp32 diffusers by {end}");
        let (worst, at) = max_u8_diff(&outcome.images[0].data, &g.t("image_u8").u8);
        assert!(worst <= 3, "{case}: fp16 image differs from the fp32 golden by {worst}/255 at byte {at}");
        eprintln!(
            "{case}, fp16 export vs fp32 diffusers: noised latents {start:.2e}, final {end:.2e}, image {worst}/255"
        );
    }
}

#[test]
fn a_model_folder_without_a_vae_encoder_is_refused_for_img2img_naming_the_folder() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("no-encoder");
    crate::util::copy_dir(&fixtures().join("tiny-sdxl"), &model);
    std::fs::remove_dir_all(model.join("vae_encoder")).unwrap();
    let options = serde_json::json!({ "models_root": root.path(), "intra_op_threads": 1 }).to_string();
    let engine = Engine::new(Some(&options)).unwrap();
    let g = Golden::load("img2img");
    let reply = reply(&engine, &g.request("no-encoder", true));
    assert_eq!(reply["error_code"], "model_not_found", "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("no-encoder") && error.contains("vae_encoder"), "{error}");
    let outcome = engine.generate(&Golden::load("cfg_neg").request("no-encoder", true), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "text-to-image needs no encoder: {}", outcome.response_json);
}

#[test]
fn a_refiner_alone_refines_an_init_image_as_diffusers_img2img_pipeline_does() {
    let engine = engine();
    let reply = check_case_on(&engine, "tiny-sdxl-refiner", "img2img_on_refiner", false);
    assert_eq!(reply["warnings"], serde_json::json!([]), "{reply}");
    let meta = &reply["data"]["generated_images"][0]["metadata"];
    assert_eq!(meta["model_info"]["base_model"], "tiny-sdxl-refiner", "{meta}");
    check_case_on(&engine, "tiny-sdxl-refiner", "img2img_on_refiner_batch2", false);
    check_case_on(&engine, "tiny-sdxl-refiner", "img2img_on_refiner_batch2", true);
}

#[test]
fn aesthetic_scores_steer_a_refiner_alone_and_are_reported_ignored_without_one() {
    let engine = engine();
    let g = Golden::load("img2img_on_refiner");
    let with_scores = |model: &str| {
        let mut r: serde_json::Value = serde_json::from_str(&g.request(model, true)).unwrap();
        r["data"]["hyperparameters"]["refiner_aesthetic_score"] = 9.0.into();
        r.to_string()
    };
    let on_refiner = engine.generate(&with_scores("tiny-sdxl-refiner"), &mut NoProgress, true);
    assert!(on_refiner.error.is_none(), "{}", on_refiner.response_json);
    let (moved, _) = max_u8_diff(&on_refiner.images[0].data, &g.t("image_u8").u8);
    assert!(moved >= 5, "the score is the refiner's fifth time id: it must change the image (by {moved}/255)");
    let reply: serde_json::Value = serde_json::from_str(&on_refiner.response_json).unwrap();
    assert_eq!(reply["warnings"], serde_json::json!([]), "{reply}");
    let on_base = engine.generate(&with_scores("tiny-sdxl"), &mut NoProgress, true);
    let reply: serde_json::Value = serde_json::from_str(&on_base.response_json).unwrap();
    let warnings = reply["warnings"].to_string();
    assert!(warnings.contains("refiner_aesthetic_score") && warnings.contains("no SDXL refiner runs"), "{reply}");
}

#[test]
fn a_base_models_lora_on_a_refiner_alone_is_a_clear_error_and_the_engine_keeps_working() {
    let engine = engine();
    let g = Golden::load("img2img_on_refiner");
    let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl-refiner", true)).unwrap();
    request["data"]["lora"] = serde_json::json!({"enabled": true, "models": [{"name": "kohya_a", "weight": 0.8}]});
    let reply = reply(&engine, &request.to_string());
    assert_eq!(reply["error_code"], "model_invalid", "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("kohya_a.safetensors") && error.contains("another model"), "{error}");
    check_case_on(&engine, "tiny-sdxl-refiner", "img2img_on_refiner", true);
}
