//! ControlNet (`data.controlnet`): the UNet's load-time residual inputs, parity with diffusers'
//! `StableDiffusionXLControlNetPipeline` on goldens made by onnx/make_controlnet.py from the same tiny weights
//! (latents after every step ≤ 1e-4 + 1e-5·|x|, image within ±1/255), and errors.

use base64::Engine as _;
use ndarray::{ArrayD, IxDyn};
use sdxlrt::engine::Engine;
use sdxlrt::image::source;
use sdxlrt::lora::formats::Component;
use sdxlrt::lora::LoraSet;
use sdxlrt::pipeline::controlnet::control_tensor;
use sdxlrt::pipeline::{NoProgress, SdxlPipeline};
use sdxlrt::runtime::controlnet_inputs::{down_input, MID_INPUT};
use sdxlrt::runtime::tensor::float_value;
use sdxlrt::runtime::{CancelToken, ModelSession, SessionConfig};

use crate::util::{check_case, fixtures, max_u8_diff, options_json, Golden};

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

/// Deterministic values in [-1, 1) of `shape`.
fn filled(shape: &[usize], seed: u32) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let v = (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 8_388_608.0 - 1.0);
    ArrayD::from_shape_vec(IxDyn(shape), v.collect()).unwrap()
}

/// The tiny UNet's skip-connection shapes at a 64×64 image (8×8 latents), batch 2: conv_in, the two resnets and
/// the downsampler of block 0, the two resnets of block 1; then the middle block.
const SKIPS: [[usize; 4]; 7] =
    [[2, 16, 8, 8], [2, 16, 8, 8], [2, 16, 8, 8], [2, 16, 4, 4], [2, 32, 4, 4], [2, 32, 4, 4], [2, 32, 4, 4]];

/// One UNet call on fixed inputs, with `residuals` (name, values) added to them.
fn unet_output(session: &ModelSession, residuals: Vec<(String, ArrayD<f32>)>) -> Vec<f32> {
    let mut inputs = vec![
        ("sample".to_string(), filled(&[2, 4, 8, 8], 1)),
        ("timestep".to_string(), ArrayD::from_elem(IxDyn(&[]), 500.0)),
        ("encoder_hidden_states".to_string(), filled(&[2, 77, 64], 2)),
        ("text_embeds".to_string(), filled(&[2, 32], 3)),
        ("time_ids".to_string(), ndarray::arr2(&[[64.0f32, 64.0, 0.0, 0.0, 64.0, 64.0]; 2]).into_dyn()),
    ];
    inputs.extend(residuals);
    let values = inputs
        .into_iter()
        .map(|(name, a)| {
            let elem = session.input(&name).unwrap().elem;
            let v = float_value(a, elem, "unet", &name).unwrap();
            (name, v)
        })
        .collect();
    session.run(values, &["out_sample"], &CancelToken::new()).unwrap().remove(0).iter().copied().collect()
}

#[test]
fn a_unet_given_controlnet_inputs_is_the_plain_unet_at_zero_residuals_and_moves_with_them() {
    let engine = engine();
    // Our export, optimum's constant-folded one and the float16 one.
    for model in ["tiny-sdxl", "tiny-sdxl-folded", "tiny-sdxl-fp16"] {
        check_residual_inputs(&engine, model);
    }
}

fn check_residual_inputs(engine: &Engine, model: &str) {
    let env = &engine.runtime().env;
    let path = fixtures().join(model).join("unet/model.onnx");
    let plain_config = SessionConfig { intra_op_threads: Some(1), ..Default::default() };
    let plain = ModelSession::load(env, &path, "unet", &plain_config).unwrap();
    let config = SessionConfig { controlnet_inputs: true, ..plain_config.clone() };
    let with_inputs = ModelSession::load(env, &path, "unet", &config).unwrap();
    assert_eq!(with_inputs.rewrites().unwrap().residual_inputs, 6, "{model}");
    let names: Vec<String> = (0..6).map(down_input).chain([MID_INPUT.to_string()]).collect();
    let zeros: Vec<(String, ArrayD<f32>)> =
        names.iter().zip(SKIPS).map(|(n, s)| (n.clone(), ArrayD::zeros(IxDyn(&s)))).collect();
    let reference = unet_output(&plain, Vec::new());
    assert_eq!(
        unet_output(&with_inputs, zeros.clone()),
        reference,
        "{model}: zero residuals change nothing, to the bit"
    );
    // Each residual reaches the output (conv_in's skip, the deepest skip, the middle block).
    for k in [0, 5, 6] {
        let mut r = zeros.clone();
        r[k].1 = filled(&SKIPS[k], 7 + k as u32);
        let moved = unet_output(&with_inputs, r);
        let diff = moved.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff > 1e-3, "{model}: residual {} moved the output by only {diff}", names[k]);
    }
}

#[test]
fn a_controlnet_variant_shares_the_text_encoders_and_vae_but_not_the_unet() {
    let engine = engine();
    let env = &engine.runtime().env;
    let config = SessionConfig { intra_op_threads: Some(1), ..Default::default() };
    let root = fixtures().join("tiny-sdxl");
    let base = SdxlPipeline::load(env, &root, &config).unwrap();
    assert!(!base.takes_controlnets());
    let cn_config = SessionConfig { controlnet_inputs: true, ..config.clone() };
    let cn = SdxlPipeline::load_variant(env, &root, &cn_config, &LoraSet::empty(), None, Some(&base)).unwrap();
    assert!(cn.takes_controlnets());
    assert!(cn.shares_graph(&base, Component::TextEncoder) && cn.shares_graph(&base, Component::TextEncoder2));
    assert!(!cn.shares_graph(&base, Component::Unet));
    // And back: a plain variant reusing the ControlNet one gets a plain UNet.
    let plain = SdxlPipeline::load_variant(env, &root, &config, &LoraSet::empty(), None, Some(&cn)).unwrap();
    assert!(!plain.takes_controlnets());
}

#[test]
fn one_controlnet_matches_diffusers() {
    let reply = check_case(&engine(), "controlnet", true);
    let units = &reply["data"]["generated_images"][0]["metadata"]["controlnets"];
    assert_eq!(
        units,
        &serde_json::json!([{"model": "tiny-controlnet", "type": "test", "conditioning_scale": 0.8,
                              "guidance_start": 0.0, "guidance_end": 1.0}])
    );
}

#[test]
fn a_control_image_of_another_size_is_resized_as_diffusers_does() {
    check_case(&engine(), "controlnet_resized", true);
    // The tensor the ControlNet gets equals diffusers' preprocessed image to the bit (Pillow's Lanczos, / 255).
    let g = Golden::load("controlnet_resized");
    let image = source::load(fixtures().join("controlnet/control_80x60.png").to_str().unwrap(), "f").unwrap();
    assert_eq!((image.width, image.height), (80, 60));
    let t = control_tensor(&image, 96, 64);
    assert_eq!(t.shape(), g.t("control_image_0").shape.as_slice());
    assert_eq!(t.iter().copied().collect::<Vec<f32>>(), g.t("control_image_0").f32);
}

#[test]
fn two_controlnets_are_summed_as_diffusers_multicontrolnet_does() {
    check_case(&engine(), "controlnet_multi", true);
}

#[test]
fn the_guidance_window_is_applied_per_evaluation_with_a_second_order_scheduler() {
    check_case(&engine(), "controlnet_window", true);
}

#[test]
fn a_batch_without_cfg_matches_as_one_tensor_and_one_image_at_a_time() {
    let engine = engine();
    check_case(&engine, "controlnet_batch2_nocfg", true);
    check_case(&engine, "controlnet_batch2_nocfg", false);
}

#[test]
fn the_controlnet_goldens_differ_from_each_other_and_from_the_plain_image() {
    let mean_diff = |a: &str, b: &str| {
        let (a, b) = (Golden::load(a), Golden::load(b));
        let (a, b) = (&a.t("image_u8").u8, &b.t("image_u8").u8);
        a.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len() as f64
    };
    // cfg_neg is the same request without the ControlNet.
    let pairs = [
        ("controlnet", "cfg_neg"),
        ("controlnet_multi", "controlnet"),
        ("controlnet_window", "controlnet"),
        ("controlnet_refiner", "refiner"),
    ];
    for (a, b) in pairs {
        let d = mean_diff(a, b);
        assert!(d > 5.0, "{a} vs {b}: mean difference {d:.2}/255, too small for the test to tell them apart");
    }
}

#[test]
fn control_images_given_as_base64_or_data_urls_give_the_same_image_as_the_file() {
    let engine = engine();
    let g = Golden::load("controlnet");
    let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    let bytes = std::fs::read(fixtures().join("controlnet/control_64.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut images = Vec::new();
    for image in [format!("data:image/png;base64,{b64}"), b64] {
        request["data"]["controlnet"]["models"][0]["control_image"] = serde_json::json!(image);
        let outcome = engine.generate(&request.to_string(), &mut NoProgress, true);
        assert!(outcome.error.is_none(), "{}", outcome.response_json);
        images.push(outcome.images[0].data.clone());
    }
    let (worst, at) = max_u8_diff(&images[0], &g.t("image_u8").u8);
    assert!(worst <= 1, "data: URL image differs from diffusers by {worst}/255 at {at}");
    assert_eq!(images[0], images[1]);
}

#[test]
fn bad_units_are_errors_naming_the_field_and_the_engine_keeps_working() {
    let engine = engine();
    let g = Golden::load("controlnet");
    let good: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut r = good.clone();
        r["data"]["controlnet"]["models"][0][key] = value;
        r.to_string()
    };
    let not_png = std::env::temp_dir().join(format!("sdxlrt-not-an-image-{}.png", std::process::id()));
    std::fs::write(&not_png, b"not an image").unwrap();
    let cases = [
        (with("model_path", "no-such-controlnet".into()), "data.controlnet.models[0].model_path"),
        (with("model_path", "../tiny-sdxl".into()), "data.controlnet.models[0].model_path"),
        (with("control_image", "/no/such/edges.png".into()), "data.controlnet.models[0].control_image"),
        (with("control_image", not_png.to_str().unwrap().into()), "data.controlnet.models[0].control_image"),
        (with("conditioning_scale", 11.into()), "data.controlnet.models[0].conditioning_scale"),
    ];
    for (request, field) in cases {
        let outcome = engine.generate(&request, &mut NoProgress, false);
        let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
        assert_eq!(reply["success"], false, "{field}");
        assert!(reply["error"].as_str().unwrap().contains(field), "{field}: {}", reply["error"]);
    }
    std::fs::remove_file(&not_png).unwrap();
    // A graph that is not a ControlNet (inside models_root, so it resolves) is refused for what it lacks.
    let unet = fixtures().join("tiny-sdxl/unet/model.onnx").canonicalize().unwrap();
    let outcome = engine.generate(&with("model_path", unet.to_str().unwrap().into()), &mut NoProgress, false);
    let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
    assert_eq!(reply["error_code"], "model_invalid", "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("controlnet_cond"), "{}", reply["error"]);
    let outcome = engine.generate(&good.to_string(), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "the engine still works: {}", outcome.response_json);
    let status: serde_json::Value =
        serde_json::from_str(&engine.generate(r#"{"message_type": "status"}"#, &mut NoProgress, false).response_json)
            .unwrap();
    let loaded = status["data"]["loaded_controlnets"].as_array().unwrap();
    assert!(loaded.iter().any(|p| p.as_str().unwrap().ends_with("tiny-controlnet/model.onnx")), "{loaded:?}");
    let unload = r#"{"message_type": "unload_model", "data": {"model_name": "tiny-controlnet"}}"#;
    let reply: serde_json::Value =
        serde_json::from_str(&engine.generate(unload, &mut NoProgress, false).response_json).unwrap();
    assert_eq!(reply["data"]["unloaded_controlnets"], 1, "{reply}");
}

#[test]
fn a_lora_merges_into_the_unet_that_takes_the_controlnet() {
    let engine = engine();
    let g = Golden::load("controlnet");
    let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    let plain = engine.generate(&request.to_string(), &mut NoProgress, true);
    request["data"]["lora"] = serde_json::json!({"models": [{"name": "kohya_a", "weight": 1.0}]});
    let both = engine.generate(&request.to_string(), &mut NoProgress, true);
    assert!(both.error.is_none(), "{}", both.response_json);
    let reply: serde_json::Value = serde_json::from_str(&both.response_json).unwrap();
    let meta = &reply["data"]["generated_images"][0]["metadata"];
    assert_eq!(meta["loras"][0]["name"], "kohya_a");
    assert_eq!(meta["controlnets"][0]["model"], "tiny-controlnet");
    let (worst, _) = max_u8_diff(&plain.images[0].data, &both.images[0].data);
    assert!(worst > 10, "the LoRA changed the ControlNet image by only {worst}/255");
}

#[test]
fn with_a_refiner_the_controlnet_conditions_the_base_models_part_as_diffusers_does() {
    let reply = check_case(&engine(), "controlnet_refiner", true);
    let meta = &reply["data"]["generated_images"][0]["metadata"];
    assert_eq!(meta["model_info"]["refiner_model"], "tiny-sdxl-refiner");
    assert_eq!(meta["controlnets"][0]["model"], "tiny-controlnet");
}
