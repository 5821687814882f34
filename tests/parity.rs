//! Parity with diffusers' StableDiffusionXLPipeline on the same tiny weights (goldens from onnx/goldens.py):
//! token ids exact, embeddings ≤ 1e-5, initial noise bit-exact, latents after every step ≤ 1e-4 + 1e-5·|x|,
//! final image within ±1/255. Images go through the C ABI; intermediates through the Rust API the ABI wraps.

use std::collections::BTreeMap;

use sdxlrt::engine::Engine;
use sdxlrt::pipeline::SdxlPipeline;
use sdxlrt::rng::{BatchGenerators, NoiseSource};
use sdxlrt::runtime::SessionConfig;

use crate::util::{fixtures, options_json, AbiEngine, Capture, Golden};

const CASES: &[&str] =
    &["cfg_neg", "cfg_zero_neg", "empty_neg", "no_cfg", "batch2_wide", "long_prompt", "big_seed", "prompt_2"];

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

fn ids(t: &crate::util::Tensor) -> Vec<i64> {
    t.i64.clone()
}

/// The golden's prompt (or its negative prompt, which must exist) tokenized as the request gives it: the second
/// encoder gets `prompt_2` / `negative_prompt_2` when the case has one.
fn golden_ids(p: &SdxlPipeline, g: &Golden, negative: bool) -> sdxlrt::pipeline::text::PromptIds {
    let (first, second) = if negative { ("negative_prompt", "negative_prompt_2") } else { ("prompt", "prompt_2") };
    let text = &g.meta[first];
    p.text_encoders().tokenize_pair(text, g.meta.get(second).unwrap_or(text)).unwrap()
}

#[test]
fn token_ids_equal_diffusers() {
    let engine = engine();
    let p =
        SdxlPipeline::load(&engine.runtime().env, &fixtures().join("tiny-sdxl"), &SessionConfig::default()).unwrap();
    for case in CASES {
        let g = Golden::load(case);
        let got = golden_ids(&p, &g, false);
        assert_eq!(got.ids_1, ids(g.t("input_ids")), "{case}: tokenizer ids");
        assert_eq!(got.ids_2, ids(g.t("input_ids_2")), "{case}: tokenizer_2 ids");
        assert_eq!(got.truncated, *case == "long_prompt", "{case}: truncation flag");
        if g.meta.contains_key("negative_prompt") {
            let got = golden_ids(&p, &g, true);
            assert_eq!(got.ids_1, ids(g.t("negative_input_ids")), "{case}: negative tokenizer ids");
            assert_eq!(got.ids_2, ids(g.t("negative_input_ids_2")), "{case}: negative tokenizer_2 ids");
        }
    }
}

#[test]
fn prompt_embeddings_match_diffusers() {
    let engine = engine();
    let p =
        SdxlPipeline::load(&engine.runtime().env, &fixtures().join("tiny-sdxl"), &SessionConfig::default()).unwrap();
    let cancel = sdxlrt::runtime::CancelToken::new();
    for case in CASES {
        let g = Golden::load(case);
        let e = p.text_encoders().encode(&golden_ids(&p, &g, false), 0, &cancel).unwrap();
        assert_close!(
            e.embeds.iter().copied().collect::<Vec<_>>(),
            g.t("prompt_embeds").f32,
            1e-5,
            0.0,
            "{case}: prompt_embeds"
        );
        assert_close!(
            e.pooled.iter().copied().collect::<Vec<_>>(),
            g.t("pooled_prompt_embeds").f32,
            1e-5,
            0.0,
            "{case}: pooled"
        );
        if g.meta.contains_key("negative_prompt") {
            let e = p.text_encoders().encode(&golden_ids(&p, &g, true), 0, &cancel).unwrap();
            assert_close!(
                e.embeds.iter().copied().collect::<Vec<_>>(),
                g.t("negative_prompt_embeds").f32,
                1e-5,
                0.0,
                "{case}: negative_prompt_embeds"
            );
            assert_close!(
                e.pooled.iter().copied().collect::<Vec<_>>(),
                g.t("negative_pooled_prompt_embeds").f32,
                1e-5,
                0.0,
                "{case}: negative pooled"
            );
        } else if g.meta::<f32>("guidance_scale") > 1.0 {
            // No negative prompt: diffusers zeroes the negative conditioning (force_zeros_for_empty_prompt).
            assert!(g.t("negative_prompt_embeds").f32.iter().all(|&v| v == 0.0), "{case}: golden negative is zeros");
        }
    }
}

#[test]
fn initial_noise_is_bit_identical_to_torch() {
    for case in CASES {
        let g = Golden::load(case);
        let want = g.t("init_noise");
        let mut noise = BatchGenerators::new(g.meta("seed"), want.shape[0]);
        let got = noise.randn(&want.shape);
        let same = got.iter().zip(&want.f32).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same && got.len() == want.f32.len(), "{case}: initial noise differs from torch.randn");
    }
}

/// Run one golden case through the Rust engine (capturing latents) and check every stage.
fn check_case(engine: &Engine, model: &str, case: &str, parallel: bool) {
    let g = Golden::load(case);
    let mut capture = Capture::default();
    let outcome = engine.generate(&g.request(model, parallel), &mut capture, true);
    assert!(outcome.error.is_none(), "{case}: {:?}\n{}", outcome.error, outcome.response_json);
    let sigmas = &g.t("sigmas").f32;
    let batch: usize = g.meta("batch_size");
    let per_image = g.t("init_noise").f32.len() / batch;
    // Initial latents = torch noise × init_noise_sigma, bit for bit (diffusers multiplies in float32).
    let init_sigma = (sigmas.iter().fold(0f32, |m, &s| m.max(s)).powi(2) + 1.0).sqrt();
    let mut initial = Vec::new();
    for (_, v) in capture.initial.iter() {
        initial.extend_from_slice(v);
    }
    let want_initial: Vec<f32> = g.t("init_noise").f32.iter().map(|&v| v * init_sigma).collect();
    assert_close!(initial, want_initial, 1e-6, 1e-6, "{case}: initial latents");
    let steps: usize = g.meta("steps");
    let mut worst_latents = 0f32;
    for i in 0..steps {
        let mut got = Vec::new();
        for (&(_, step), v) in capture.steps.iter().filter(|((_, s), _)| *s == i) {
            let _ = step;
            got.extend_from_slice(v);
        }
        assert_eq!(got.len(), per_image * batch, "{case}: latents after step {i}");
        let max = assert_close!(
            got,
            g.t(&format!("latents_step_{i}")).f32,
            1e-4,
            1e-5,
            "{case} ({model}): latents after step {i}"
        );
        worst_latents = worst_latents.max(max);
    }
    let want = &g.t("image_u8").u8;
    let got: Vec<u8> = outcome.images.iter().flat_map(|im| im.data.iter().copied()).collect();
    assert_eq!(got.len(), want.len(), "{case}: image size");
    let worst = got.iter().zip(want).map(|(a, b)| (*a as i16 - *b as i16).abs()).max().unwrap();
    assert!(worst <= 1, "{case} ({model}): image differs from diffusers by {worst}/255");
    eprintln!("parity {case} ({model}): latents max |diff| {worst_latents:.2e} over {steps} steps, image {worst}/255");
}

#[test]
fn every_case_matches_diffusers_step_by_step() {
    let engine = engine();
    for case in CASES {
        check_case(&engine, "tiny-sdxl", case, true);
    }
}

#[test]
fn batch_one_image_at_a_time_matches_diffusers_too() {
    check_case(&engine(), "tiny-sdxl", "batch2_wide", false);
}

#[test]
fn folded_int32_export_without_tokenizer_json_matches_diffusers() {
    // Constant-folded graphs (renamed, transposed weights), int32 input_ids, vocab.json + merges.txt only.
    let engine = engine();
    for case in ["cfg_neg", "cfg_zero_neg"] {
        check_case(&engine, "tiny-sdxl-folded", case, true);
    }
}

#[test]
fn fused_attention_export_matches_diffusers() {
    // The projections keep their names; only the attention cores became MultiHeadAttention nodes.
    let (_root, options) = crate::util::fused_attention_root();
    let engine = Engine::new(Some(&options)).expect("engine");
    for case in ["cfg_neg", "batch2_wide"] {
        check_case(&engine, "tiny-sdxl-fused", case, true);
    }
}

/// The latents after every step of golden `case` on the tiny model.
fn step_latents(engine: &Engine, case: &str) -> BTreeMap<(u32, usize), Vec<f32>> {
    let mut capture = Capture::default();
    let outcome = engine.generate(&Golden::load(case).request("tiny-sdxl", true), &mut capture, true);
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    capture.steps
}

/// A load-time rewrite (engine option `option`, on by default) against the files run as exported (`option:
/// false`): both match diffusers; their latents differ in the last bits, which shows the rewritten graph is what
/// runs by default (a rewrite silently dropped would make them equal); `status` reports `rewrites` of them
/// (`field`) and none as exported.
fn check_rewrite_against_as_exported(option: &str, field: &str, rewrites: u64) {
    let mut as_exported = serde_json::json!({"models_root": fixtures(), "intra_op_threads": 1});
    as_exported[option] = serde_json::json!(false);
    let as_exported = Engine::new(Some(&as_exported.to_string())).expect("engine");
    let rewritten = engine();
    for case in ["cfg_neg", "batch2_wide"] {
        check_case(&as_exported, "tiny-sdxl", case, true);
        check_case(&rewritten, "tiny-sdxl", case, true);
    }
    let same = step_latents(&rewritten, "cfg_neg") == step_latents(&as_exported, "cfg_neg");
    assert!(!same, "{option}: rewritten and as exported gave identical latents");
    let count = |e: &Engine| e.status()["loaded_models"][0][field].clone();
    assert_eq!(count(&rewritten), serde_json::json!(rewrites), "{field}");
    assert_eq!(count(&as_exported), serde_json::json!(0), "{field}");
}

#[test]
fn attention_fused_at_load_and_as_exported_both_match_diffusers_and_differ() {
    // The UNet's 24 attention cores and the VAE's one become MultiHeadAttention at load.
    check_rewrite_against_as_exported("fuse_attention", "fused_attention", 25);
}

#[test]
fn upsampling_made_subpixel_at_load_and_as_exported_both_match_diffusers_and_differ() {
    // The UNet's upsample convolution and the VAE decoder's three become four 2×2 phase convolutions each (the
    // UNet's sums its taps in another order, so the latents change in the last bits).
    check_rewrite_against_as_exported("subpixel_upsample", "subpixel_upsamples", 4);
}

#[test]
fn images_through_the_c_abi_match_diffusers() {
    let engine = AbiEngine::fixtures();
    for case in ["cfg_neg", "batch2_wide"] {
        let g = Golden::load(case);
        let (reply, images) = engine.generate_images(&g.request("tiny-sdxl", true));
        assert_eq!(reply.status, sdxlrt::ffi::status::sdxl_status::Ok, "{case}: {}", reply.error);
        let want = &g.t("image_u8");
        let (h, w) = (want.shape[1] as u32, want.shape[2] as u32);
        let got: Vec<u8> = images.iter().flat_map(|im| im.data.iter().copied()).collect();
        assert!(images.iter().all(|im| im.width == w && im.height == h && im.stride == 3 * w));
        let worst = got.iter().zip(&want.u8).map(|(a, b)| (*a as i16 - *b as i16).abs()).max().unwrap();
        assert!(worst <= 1, "{case}: ABI image differs from diffusers by {worst}/255");
        // The PNG in the JSON decodes to the same pixels.
        let b64 = reply.json["data"]["generated_images"][0]["image_data"].as_str().unwrap();
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(decoded.as_raw(), &images[0].data, "{case}: PNG pixels equal the raw buffer");
        let seeds: Vec<u64> = images.iter().map(|im| im.seed).collect();
        let first: u64 = g.meta("seed");
        assert_eq!(seeds, (0..images.len() as u64).map(|i| first + i).collect::<Vec<_>>());
    }
}

/// Every diffusers scheduler, end to end on the tiny model (goldens from onnx/scheduler_pipeline_goldens.py):
/// latents after every UNet evaluation and the final pixels, with stochastic schedulers drawing their noise from
/// the same seeded generator as diffusers.
#[test]
fn every_scheduler_matches_diffusers_end_to_end() {
    let engine = engine();
    let mut names: Vec<_> = std::fs::read_dir(fixtures().join("goldens"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("sched_")?.strip_suffix(".safetensors").map(str::to_string))
        .collect();
    names.sort();
    assert!(names.len() >= 12, "scheduler goldens missing: {names:?}");
    let mut failures = Vec::new();
    for name in names {
        let g = Golden::load(&format!("sched_{name}"));
        let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
        let mut choice: serde_json::Value = serde_json::from_str(&g.meta["scheduler_options"]).unwrap();
        choice["type"] = serde_json::json!(g.meta["scheduler"]);
        request["data"]["scheduler"] = choice;
        let mut capture = Capture::default();
        let outcome = engine.generate(&request.to_string(), &mut capture, true);
        if let Some(e) = &outcome.error {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        let evaluations = g.tensors.keys().filter(|k| k.starts_with("latents_step_")).count();
        assert_eq!(capture.steps.len(), evaluations, "{name}: UNet evaluations");
        for i in 0..evaluations {
            let got = &capture.steps[&(0, i)];
            if let Err(msg) = crate::util::check_close(
                got,
                &g.t(&format!("latents_step_{i}")).f32,
                1e-4,
                1e-5,
                &format!("{name}: latents after evaluation {i}"),
            ) {
                failures.push(msg);
                break;
            }
        }
        let got: Vec<u8> = outcome.images.iter().flat_map(|im| im.data.iter().copied()).collect();
        let worst =
            got.iter().zip(&g.t("image_u8").u8).map(|(a, b)| (*a as i16 - *b as i16).abs()).max().unwrap_or(255);
        if worst > 1 {
            failures.push(format!("{name}: image differs by {worst}/255"));
        }
        let reported = outcome.response_json.contains(&format!("\"scheduler\":\"{}\"", g.meta["scheduler"]));
        if !reported {
            failures.push(format!("{name}: response metadata does not name {}", g.meta["scheduler"]));
        }
    }
    assert!(failures.is_empty(), "{} scheduler(s) differ from diffusers:\n{}", failures.len(), failures.join("\n"));
}

/// An fp16 export (onnx/export_onnx.py --fp16: float16 graphs and I/O, float32 timestep) runs through the same
/// pipeline: inputs are converted to float16 and outputs back. float16 weights cannot match float32 diffusers to
/// 1e-4, so this checks the conversion path at fp16's precision: the same image within a few levels.
#[test]
fn an_fp16_export_runs_and_stays_close_to_the_fp32_golden() {
    let engine = engine();
    let g = Golden::load("cfg_neg");
    let mut capture = Capture::default();
    let outcome = engine.generate(&g.request("tiny-sdxl-fp16", true), &mut capture, true);
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let steps: usize = g.meta("steps");
    let last = &capture.steps[&(0, steps - 1)];
    let want = &g.t(&format!("latents_step_{}", steps - 1)).f32;
    let max = last.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max < 0.05, "fp16 final latents differ from fp32 diffusers by {max}");
    let got: Vec<u8> = outcome.images.iter().flat_map(|im| im.data.iter().copied()).collect();
    let worst = got.iter().zip(&g.t("image_u8").u8).map(|(a, b)| (*a as i16 - *b as i16).abs()).max().unwrap();
    assert!(worst <= 3, "fp16 image differs from the fp32 golden by {worst}/255");
    eprintln!("fp16 export vs fp32 diffusers: final latents max |diff| {max:.2e}, image {worst}/255");
    // On the CPU float16 attention stays as exported (ONNX Runtime's CPU MultiHeadAttention is slower in float16).
    let fp16 =
        engine.status()["loaded_models"].as_array().unwrap().iter().find(|m| m["name"] == "tiny-sdxl-fp16").cloned();
    let fp16 = fp16.unwrap();
    assert_eq!(fp16["fused_attention"], serde_json::json!(0));
    // Nor are its float16 upsample convolutions made sub-pixel (float32 weights only).
    assert_eq!(fp16["subpixel_upsamples"], serde_json::json!(0));
}

/// SDXL's size micro-conditioning (`data.dimensions.original_size`, `crops_coords_top_left`, `target_size`) as
/// diffusers' arguments of those names, in text-to-image, image-to-image and the ensemble with the refiner (whose
/// negative rows keep crop (0, 0)): onnx/make_micro_conditioning.py's goldens, each ≥ 5/255 from the same request
/// without them.
#[test]
fn size_micro_conditioning_matches_diffusers_in_each_pipeline() {
    let engine = engine();
    for case in ["micro_conditioning", "micro_conditioning_img2img", "micro_conditioning_refiner"] {
        let reply = crate::util::check_case(&engine, case, false);
        assert_eq!(reply["warnings"], serde_json::json!([]), "{case}: {reply}");
    }
}

/// diffusers' `guidance_rescale` (`data.hyperparameters.guidance_rescale`) at every UNet evaluation, per image, in
/// text-to-image (Euler; DPM++ 2M with a batch of 2; Heun's two evaluations per step), image-to-image, inpainting
/// and the ensemble with the refiner (both calls rescaled): onnx/make_guidance_rescale.py's goldens, whose last
/// latents are ≥ 0.01 from the same request's without it. The reply's metadata says what was applied.
#[test]
fn guidance_rescale_matches_diffusers_in_each_pipeline() {
    let engine = engine();
    for case in [
        "guidance_rescale",
        "guidance_rescale_batch2",
        "guidance_rescale_heun",
        "guidance_rescale_img2img",
        "guidance_rescale_inpaint",
        "guidance_rescale_refiner",
    ] {
        let reply = crate::util::check_case(&engine, case, false);
        assert_eq!(reply["warnings"], serde_json::json!([]), "{case}: {reply}");
        for image in reply["data"]["generated_images"].as_array().unwrap() {
            assert_eq!(image["metadata"]["guidance_rescale"].as_f64(), Some(0.7), "{case}: {}", image["metadata"]);
        }
    }
}

/// `data.hyperparameters.clip_skip`: both encoders' hidden states from layer `-(clip_skip + 2)` for the prompt and
/// the negative prompt (diffusers' `clip_skip`, with its negative-prompt path skipping too), in text-to-image (a
/// batch of 2 too), image-to-image and the ensemble with the refiner: onnx/make_clip_skip.py's goldens, whose last
/// latents are ≥ 0.01 from the same request's without clip_skip and from diffusers' prompt-only skip.
#[test]
fn clip_skip_matches_diffusers_on_both_guidance_halves() {
    let engine = engine();
    for case in ["clip_skip", "clip_skip_3_batch2", "clip_skip_img2img", "clip_skip_refiner"] {
        let reply = crate::util::check_case(&engine, case, false);
        assert_eq!(reply["warnings"], serde_json::json!([]), "{case}: {reply}");
        let want = Golden::load(case).meta::<u64>("clip_skip");
        for image in reply["data"]["generated_images"].as_array().unwrap() {
            assert_eq!(image["metadata"]["clip_skip"].as_u64(), Some(want), "{case}: {}", image["metadata"]);
        }
    }
}

/// A clip_skip past the first layer of a model's encoder is an error naming the field and the layer count (the tiny
/// encoders have 5 layers: clip_skip 4 reads their embeddings, 5 would read before them); the engine keeps working.
#[test]
fn clip_skip_beyond_the_encoders_layers_is_an_error_naming_the_field() {
    let engine = engine();
    let request = |skip: u32| {
        serde_json::json!({"prompt": "x", "models": {"base": "tiny-sdxl"}, "dimensions": {"width": 64, "height": 64},
            "hyperparameters": {"num_inference_steps": 1, "clip_skip": skip}})
        .to_string()
    };
    let outcome = engine.generate(&request(5), &mut sdxlrt::pipeline::NoProgress, true);
    let err = outcome.error.expect("clip_skip 5 on 5 layers");
    let text = err.to_string();
    assert!(text.contains("data.hyperparameters.clip_skip") && text.contains("5 layers allow at most 4"), "{text}");
    let ok = engine.generate(&request(4), &mut sdxlrt::pipeline::NoProgress, true);
    assert!(ok.error.is_none(), "{:?}", ok.error);
}
