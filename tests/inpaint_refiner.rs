//! Inpainting with the SDXL refiner (`data.mask_image` with `data.models.refiner`): parity with diffusers' documented
//! recipe — the inpaint pipeline on the base with `denoising_end` and `output_type="latent"`, then on the refiner's
//! components with `image=` those latents and `denoising_start` — on goldens made from the same tiny weights
//! (onnx/make_inpaint_refiner.py): the starting latents and the latents after every base and refiner step (and mask
//! blend) ≤ 1e-4 + 1e-5·|x|, images within ±1/255. With ControlNets too (onnx/make_inpaint_refiner.py's
//! `inpaint_controlnet_refiner*`): diffusers' ControlNet inpaint pipeline as the base, the ControlNets
//! conditioning the base only.

use sdxlrt::engine::Engine;
use sdxlrt::pipeline::NoProgress;

use crate::util::{check_case, check_case_on, copy_dir, fixtures, options_json, Golden};

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

/// A models_root holding the base model `base` (tiny-sdxl, its UNet replaced by the one in `base_unet`, a fixture
/// folder holding `unet/`) and `tiny-sdxl-refiner` (its UNet replaced by the one in `refiner_unet`), and engine
/// options for it.
fn root_with(base: &str, base_unet: Option<&str>, refiner_unet: Option<&str>) -> (tempfile::TempDir, String) {
    let root = tempfile::tempdir().unwrap();
    for (model, from, unet) in
        [(base, "tiny-sdxl", base_unet), ("tiny-sdxl-refiner", "tiny-sdxl-refiner", refiner_unet)]
    {
        let dir = root.path().join(model);
        copy_dir(&fixtures().join(from), &dir);
        if let Some(unet) = unet {
            std::fs::remove_dir_all(dir.join("unet")).unwrap();
            copy_dir(&fixtures().join(unet).join("unet"), &dir.join("unet"));
        }
    }
    let options = serde_json::json!({ "models_root": root.path(), "intra_op_threads": 1 }).to_string();
    (root, options)
}

#[test]
fn a_refiner_inpaints_the_latents_the_base_hands_over_as_diffusers_recipe_does() {
    // The base's blend keeps the clean image latents after its own last step (diffusers tests the last step against
    // the truncated timesteps), the refiner blends those latents with its own noise; Heun's refiner re-evaluates
    // the switch timestep, DPM++ 2M's starts without the base's history.
    let engine = engine();
    for case in ["inpaint_refiner", "inpaint_refiner_heun", "inpaint_refiner_dpmpp_2m"] {
        let reply = check_case(&engine, case, false);
        let g = Golden::load(case);
        let evaluations = g.t("base_timesteps").f32.len() + g.t("refiner_timesteps").f32.len();
        let metrics = &reply["data"]["processing_metrics"];
        assert_eq!(metrics["unet_evaluations"].as_u64(), Some(evaluations as u64), "{case}: {metrics}");
    }
}

#[test]
fn the_refiner_draws_its_noise_from_each_images_generator_after_the_bases_draws() {
    // Euler ancestral draws step noise in both stages: a refiner noise drawn before the base's step noise, or from
    // the first generator only, moves every refiner step; one chunk of 2 and two chunks of 1 both match.
    let engine = engine();
    check_case(&engine, "inpaint_refiner_euler_a_batch2", true);
    check_case(&engine, "inpaint_refiner_euler_a_batch2", false);
}

#[test]
fn a_9_channel_inpainting_base_hands_over_to_a_refiner_that_blends() {
    // The 9-channel base does no blend: the latents it hands over are its own outside the mask too, and the
    // refiner keeps them there (not the init image's latents).
    let (_root, options) = root_with("tiny-sdxl-inpaint", Some("tiny-sdxl-inpaint-unet"), None);
    let engine = Engine::new(Some(&options)).expect("engine");
    check_case_on(&engine, "tiny-sdxl-inpaint", "inpaint9_refiner", false);
}

#[test]
fn only_the_masked_area_is_inpainted_with_a_refiner_too() {
    // padding_mask_crop: the engine crops and resizes before both stages and puts the result back after the
    // refiner's decode, as diffusers' processors compose around the recipe (diffusers refuses the crop with latents).
    let reply = check_case(&engine(), "inpaint_refiner_crop", false);
    let image = &reply["data"]["generated_images"][0];
    assert_eq!((image["width"].as_u64(), image["height"].as_u64()), (Some(80), Some(60)), "the init image's size");
}

#[test]
fn a_blurred_mask_reaches_both_stages() {
    // data.mask_blur 4: the base and the refiner blend with the blurred mask (it moves the image by 8.5/255 on
    // average from the sharp mask's inpaint_refiner), as diffusers' docs blur it before the pipeline. (The
    // 4-channel pipelines binarize the mask, so only the blur's 0.5 contour matters here; radius 2 gives the same
    // 8×8 mask. The blur itself is matched to the bit by tests/inpaint_crop.rs.)
    let reply = check_case(&engine(), "inpaint_refiner_blur", false);
    assert_eq!(reply["data"]["generated_images"][0]["metadata"]["init_image"]["mask"]["blur"], 4.0);
}

#[test]
fn a_refiner_with_an_inpainting_unet_is_refused_by_name_and_the_engine_keeps_working() {
    let (_root, options) = root_with("tiny-sdxl", None, Some("tiny-sdxl-inpaint-unet"));
    let engine = Engine::new(Some(&options)).expect("engine");
    let request: serde_json::Value =
        serde_json::from_str(&Golden::load("inpaint_refiner").request("tiny-sdxl", false)).unwrap();
    let reply: serde_json::Value =
        serde_json::from_str(&engine.generate(&request.to_string(), &mut NoProgress, false).response_json).unwrap();
    assert_eq!(reply["error_code"], "invalid_request", "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("data.models.refiner") && error.contains("inpainting UNet"), "{error}");
    let mut without_refiner = request;
    without_refiner["data"]["models"].as_object_mut().unwrap().remove("refiner");
    let outcome = engine.generate(&without_refiner.to_string(), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "the engine still works: {}", outcome.response_json);
}

#[test]
fn controlnets_condition_only_the_inpainting_base_with_windows_over_the_steps_strength_leaves() {
    // diffusers' ControlNet inpaint pipeline on the base (denoising_end, latents out), then the inpaint pipeline on
    // the refiner's components: the windows count the 4 evaluations strength leaves, before the switch cuts the list
    // to the base's 2 (0.2..0.5 keeps the second: over the cut list it would keep none, over all 5 steps the first);
    // the refiner runs without ControlNets. With two units, Euler ancestral and a batch of 2: one chunk and two.
    let engine = engine();
    let g = Golden::load("inpaint_controlnet_refiner");
    assert_eq!(g.t("controlnet_scales").f32, [0.0, 0.8]);
    let reply = check_case(&engine, "inpaint_controlnet_refiner", false);
    let evaluations = g.t("base_timesteps").f32.len() + g.t("refiner_timesteps").f32.len();
    assert_eq!(reply["data"]["processing_metrics"]["unet_evaluations"].as_u64(), Some(evaluations as u64));
    let g = Golden::load("inpaint_controlnet_refiner_euler_a_batch2");
    assert_eq!(g.t("controlnet_scales").f32, [0.7, 0.0, 0.7, 0.5]);
    check_case(&engine, "inpaint_controlnet_refiner_euler_a_batch2", true);
    check_case(&engine, "inpaint_controlnet_refiner_euler_a_batch2", false);
}
