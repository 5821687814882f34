//! Models a request names besides its base model — a custom VAE (`data.models.vae`) and the SDXL refiner
//! (`data.models.refiner`) — against diffusers goldens made by onnx/make_stages.py on the same tiny weights:
//! latents after every step ≤ 1e-4 + 1e-5·|x|, image within ±1/255.

use sdxlrt::engine::Engine;
use sdxlrt::pipeline::SdxlPipeline;
use sdxlrt::runtime::SessionConfig;

use crate::util::{check_case, copy_dir, fixtures, max_u8_diff, options_json, Capture, Golden};

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

/// Largest per-pixel difference between the image of golden `a` and golden `b`.
fn image_distance(a: &str, b: &str) -> u8 {
    let (a, b) = (Golden::load(a), Golden::load(b));
    max_u8_diff(&a.t("image_u8").u8, &b.t("image_u8").u8).0
}

#[test]
fn a_custom_vae_decodes_like_diffusers_with_that_vae() {
    // custom_vae is cfg_neg with another VAE (other weights, scaling_factor 0.2): same latents, another image.
    assert!(image_distance("custom_vae", "cfg_neg") > 16, "the goldens must tell the two VAEs apart");
    let engine = engine();
    let reply = check_case(&engine, "custom_vae", true);
    let info = &reply["data"]["generated_images"][0]["metadata"]["model_info"];
    assert_eq!(info["vae_model"], "tiny-vae-b");
    // The model's own VAE is still what a request without `vae` gets, from the same engine.
    let reply = check_case(&engine, "cfg_neg", true);
    assert_eq!(reply["data"]["generated_images"][0]["metadata"]["model_info"]["vae_model"], serde_json::Value::Null);
    // Both variants share every graph but the VAE.
    let loaded = engine.status()["loaded_models"].as_array().unwrap().len();
    assert_eq!(loaded, 2, "{}", engine.status());
}

#[test]
fn tiled_vae_decode_matches_diffusers_enable_tiling() {
    // 128 x 96 with the tiny VAE's 64-pixel tiles: 2 x 3 tiles, blended where they meet.
    let options = serde_json::json!({"models_root": fixtures(), "intra_op_threads": 1, "vae_tiling": true});
    let tiled = Engine::new(Some(&options.to_string())).unwrap();
    check_case(&tiled, "vae_tiled", true);
    // Without the option the same request decodes in one piece: another image (so the test sees the tiling).
    let g = Golden::load("vae_tiled");
    let plain = engine().generate(&g.request("tiny-sdxl", true), &mut Capture::default(), true);
    let want = &g.t("image_u8").u8;
    let worst = max_u8_diff(&plain.images[0].data, want).0;
    assert!(worst > 8, "an untiled decode should differ from the tiled golden, got {worst}/255");
    // Images no larger than one tile decode in one piece with the option on too.
    check_case(&tiled, "cfg_neg", true);
}

#[test]
fn the_refiner_takes_over_at_the_switch_point_like_diffusers() {
    // 10 steps, switch at 0.8: the base runs 8, the refiner 2, on the refiner's own UNet, conditioning (second
    // text encoder only, aesthetic scores 6 / 2.5 in the time ids) and scheduler.
    // Heun: 15 evaluations on the base, 5 on the refiner (an even count made odd, re-evaluating the switch
    // timestep); DPM-Solver++ 2M: the refiner's solver starts without the base's history; Euler a: the step noise
    // continues the base's generators, also for two images, as one batch or one at a time.
    let engine = engine();
    let cases = [
        ("refiner", true, 10),
        ("refiner_euler_a", true, 10),
        ("refiner_heun", true, 20),
        ("refiner_dpmpp_2m", true, 10),
        ("refiner_batch2", true, 10),
        ("refiner_batch2", false, 20),
        ("refiner_scores", true, 10),
    ];
    for (case, parallel, evaluations) in cases {
        let reply = check_case(&engine, case, parallel);
        let info = &reply["data"]["generated_images"][0]["metadata"]["model_info"];
        let names = (info["base_model"].as_str(), info["refiner_model"].as_str());
        assert_eq!(names, (Some("tiny-sdxl"), Some("tiny-sdxl-refiner")), "{case}");
        assert_eq!(reply["data"]["processing_metrics"]["unet_evaluations"], evaluations, "{case}");
    }
}

#[test]
fn the_refiner_conditions_on_its_one_encoder_as_diffusers_does() {
    let env = &engine().runtime().env.clone();
    let refiner = SdxlPipeline::load(env, &fixtures().join("tiny-sdxl-refiner"), &SessionConfig::default()).unwrap();
    assert!(refiner.model_dir().refiner && !refiner.model_dir().force_zeros_for_empty_prompt);
    let g = Golden::load("refiner");
    let cancel = sdxlrt::runtime::CancelToken::new();
    let text = refiner.text_encoders();
    for (prompt, name) in [(&g.meta["prompt"], "refiner"), (&g.meta["negative_prompt"], "refiner_negative")] {
        // diffusers pairs [prompt, prompt_2] with the refiner's one encoder: it gets `prompt`, not `prompt_2`.
        let ids = text.tokenize_pair(prompt, "a different second prompt").unwrap();
        assert!(ids.ids_1.is_empty());
        let e = text.encode(&ids, 0, &cancel).unwrap();
        let embeds = e.embeds.iter().copied().collect::<Vec<_>>();
        assert_close!(embeds, g.t(&format!("{name}_prompt_embeds")).f32, 1e-5, 0.0, "{name} embeds");
        let pooled = e.pooled.iter().copied().collect::<Vec<_>>();
        assert_close!(pooled, g.t(&format!("{name}_pooled_prompt_embeds")).f32, 1e-5, 0.0, "{name} pooled");
    }
}

#[test]
fn a_switch_point_that_leaves_the_refiner_no_step_is_reported() {
    let g = Golden::load("refiner");
    let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    request["data"]["hyperparameters"]["refiner_switch_at"] = serde_json::json!(0.9995);
    let outcome = engine().generate(&request.to_string(), &mut Capture::default(), false);
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
    assert_eq!(reply["data"]["processing_metrics"]["unet_evaluations"], 10);
    let warnings = reply["warnings"].to_string();
    assert!(warnings.contains("the refiner got no step"), "{warnings}");
}

#[test]
fn wrong_vae_and_refiner_names_are_clear_errors_and_the_engine_keeps_working() {
    // A models_root with the fixtures plus VAEs that cannot work: no config.json, another latent scale.
    let root = tempfile::tempdir().unwrap();
    for name in ["tiny-sdxl", "tiny-sdxl-refiner", "vae"] {
        copy_dir(&fixtures().join(name), &root.path().join(name));
    }
    let vae = root.path().join("vae");
    copy_dir(&vae.join("tiny-vae-b"), &vae.join("no-config"));
    std::fs::remove_file(vae.join("no-config/config.json")).unwrap();
    copy_dir(&vae.join("tiny-vae-b"), &vae.join("scale-4"));
    let config = vae.join("scale-4/config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["block_out_channels"] = serde_json::json!([16, 32, 32]);
    std::fs::write(&config, json.to_string()).unwrap();
    let options = serde_json::json!({ "models_root": root.path(), "intra_op_threads": 1 }).to_string();
    let engine = Engine::new(Some(&options)).unwrap();

    let request = |models: serde_json::Value| {
        serde_json::json!({"data": {"prompt": "a cat", "models": models,
            "hyperparameters": {"num_inference_steps": 2, "seed": 1}, "dimensions": {"width": 64, "height": 64}}})
        .to_string()
    };
    let cases = [
        (serde_json::json!({"base": "tiny-sdxl", "vae": "missing"}), "model_not_found", "missing"),
        (serde_json::json!({"base": "tiny-sdxl", "vae": "../tiny-sdxl"}), "invalid_request", "data.models.vae"),
        (serde_json::json!({"base": "tiny-sdxl", "vae": "no-config"}), "model_not_found", "config.json"),
        (serde_json::json!({"base": "tiny-sdxl", "vae": "scale-4"}), "invalid_request", "data.models.vae"),
        // a refiner alone refines an init image; from noise it is refused
        (serde_json::json!({"base": "tiny-sdxl-refiner"}), "invalid_request", "data.init_image"),
        (serde_json::json!({"base": "tiny-sdxl", "refiner": "tiny-sdxl"}), "invalid_request", "not an SDXL refiner"),
        (serde_json::json!({"base": "tiny-sdxl", "refiner": "nope"}), "model_not_found", "nope"),
    ];
    for (models, code, mention) in cases {
        let outcome = engine.generate(&request(models.clone()), &mut Capture::default(), false);
        let error = outcome.error.unwrap_or_else(|| panic!("{models}: no error"));
        assert_eq!(error.code().as_str(), code, "{models}: {error}");
        assert!(outcome.response_json.contains(mention), "{models}: {}", outcome.response_json);
        // and the engine still works, with the refiner and VAE that do fit
        let fine =
            request(serde_json::json!({"base": "tiny-sdxl", "refiner": "tiny-sdxl-refiner", "vae": "tiny-vae-b"}));
        let outcome = engine.generate(&fine, &mut Capture::default(), false);
        assert!(outcome.error.is_none(), "after {models}: {:?}", outcome.error);
    }
    // The refiner decodes, so it alone holds the custom VAE: the base is loaded as it is (one VAE session, not two).
    let loaded = engine.status()["loaded_models"].clone();
    let variants: Vec<(&str, &str)> = loaded
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["variant"].as_str().unwrap()))
        .collect();
    assert!(variants.contains(&("tiny-sdxl", "")), "{loaded}");
    assert!(variants.iter().any(|(n, v)| *n == "tiny-sdxl-refiner" && v.starts_with("vae:")), "{loaded}");
    // (the plain refiner entry comes from the request that named it as the base)
    assert_eq!(variants.iter().filter(|(n, _)| *n == "tiny-sdxl").count(), 1, "{loaded}");
}
