//! The upscaler (`data.output.upscale`): torch parity on onnx/make_upscaler.py's goldens, A1111's passes and
//! Lanczos resize, tiling, the request path with its metadata and progress, and its errors.

use std::time::Instant;

use sdxlrt::engine::Engine;
use sdxlrt::image::lanczos;
use sdxlrt::image::RgbImage;
use sdxlrt::pipeline::upscale::tiles::Tiling;
use sdxlrt::pipeline::upscale::{ReportAs, Upscaler};
use sdxlrt::pipeline::{NoProgress, Progress, ProgressEvent, RunContext, Stage};
use sdxlrt::runtime::{CancelToken, SessionConfig};
use serde_json::{json, Value};

use crate::util::{fixtures, max_u8_diff, options_json, Golden};

/// The golden's `input` as an image.
fn golden_input(g: &Golden) -> RgbImage {
    let t = g.t("input");
    RgbImage { width: t.shape[1] as u32, height: t.shape[0] as u32, seed: 0, data: t.u8.clone() }
}

fn load(engine: &Engine, file: &str) -> sdxlrt::Result<Upscaler> {
    let config = SessionConfig { intra_op_threads: Some(1), ..Default::default() };
    Upscaler::load(&engine.runtime().env, &fixtures().join("upscalers").join(file), &config)
}

/// Upscale `image` by `factor` outside any request.
fn upscale(upscaler: &Upscaler, image: &RgbImage, factor: u32, tiling: Tiling) -> RgbImage {
    let cancel = CancelToken::new();
    let mut ctx = RunContext { progress: &mut NoProgress, cancel: &cancel, started: Instant::now(), vae_tiling: false };
    let report = ReportAs { request_id: "t", image_index: 0, batch_size: 1 };
    upscaler.upscale(image, factor, tiling, &mut ctx, &report).expect("upscale")
}

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

/// A one-step 64×64 request on the tiny model with `upscale` as `data.output.upscale`.
fn request(upscale: Value) -> String {
    json!({"prompt": "a cat", "models": {"base": "tiny-sdxl"}, "dimensions": {"width": 64, "height": 64},
           "hyperparameters": {"num_inference_steps": 1, "seed": 7}, "output": {"upscale": upscale}})
    .to_string()
}

/// Progress that records the upscaling events and can cancel at the `cancel_at`-th one.
#[derive(Default)]
struct Record {
    upscaling: Vec<(u32, u32, u32)>,
    cancel_at: Option<usize>,
}

impl Progress for Record {
    fn report(&mut self, event: &ProgressEvent<'_>) -> bool {
        if event.stage == Stage::Upscaling {
            self.upscaling.push((event.image_index, event.step, event.total_steps));
            return self.cancel_at != Some(self.upscaling.len());
        }
        true
    }
}

#[test]
fn upscaler_matches_torch_on_the_golden_image() {
    let g = Golden::load("upscale_x2");
    let engine = engine();
    let upscaler = load(&engine, "tiny-x2.onnx").unwrap();
    assert_eq!(upscaler.scale(), 2);
    let input = golden_input(&g);
    let x2 = upscale(&upscaler, &input, 2, Tiling::default());
    assert_eq!((x2.width, x2.height), (80, 48));
    let (diff, at) = max_u8_diff(&x2.data, &g.t("output_x2").u8);
    assert!(diff <= 1, "×2: off by {diff}/255 at byte {at}");
    // Factor 4 with a ×2 model: a second pass over the first one's 8-bit pixels, as A1111's loop does.
    let x4 = upscale(&upscaler, &input, 4, Tiling::default());
    assert_eq!((x4.width, x4.height), (160, 96));
    let (diff, at) = max_u8_diff(&x4.data, &g.t("output_x4").u8);
    assert!(diff <= 1, "×4: off by {diff}/255 at byte {at}");
}

#[test]
fn factors_between_model_powers_resize_with_lanczos_like_pil() {
    let g = Golden::load("upscale_x2");
    let engine = engine();
    let upscaler = load(&engine, "tiny-x2.onnx").unwrap();
    let input = golden_input(&g);
    // Factor 3: two passes (×4), then Lanczos down to ×3, as A1111 does with PIL's LANCZOS.
    assert_eq!(upscaler.plan(40, 24, 3).unwrap().passes, 2);
    let x3 = upscale(&upscaler, &input, 3, Tiling::default());
    assert_eq!((x3.width, x3.height), (120, 72));
    let (diff, at) = max_u8_diff(&x3.data, &g.t("lanczos_x3").u8);
    assert!(diff <= 1, "×3: off by {diff}/255 at byte {at} from torch + PIL");
    // Factor 1: one pass and a resize back to the input size.
    let plan = upscaler.plan(40, 24, 1).unwrap();
    assert_eq!((plan.passes, plan.model_scale), (1, 2));
    let x1 = upscale(&upscaler, &input, 1, Tiling::default());
    assert_eq!((x1.width, x1.height), (40, 24));
    assert_ne!(x1.data, input.data, "the model ran");
}

#[test]
fn lanczos_resize_is_pils_bit_for_bit() {
    let g = Golden::load("upscale_x2");
    let x4 = g.t("output_x4");
    let x4 = RgbImage { width: x4.shape[1] as u32, height: x4.shape[0] as u32, seed: 0, data: x4.u8.clone() };
    assert_eq!(lanczos::resize(&x4, 120, 72).data, g.t("lanczos_x3").u8, "down 160×96 → 120×72");
    assert_eq!(lanczos::resize(&golden_input(&g), 100, 60).data, g.t("lanczos_up").u8, "up 40×24 → 100×60");
}

#[test]
fn tiled_passes_equal_the_untiled_pass() {
    let g = Golden::load("upscale_x2");
    let engine = engine();
    let upscaler = load(&engine, "tiny-x2.onnx").unwrap();
    let input = golden_input(&g);
    let whole = upscale(&upscaler, &input, 4, Tiling::default());
    // Windows of at most 24×24: 5 × 1 on the first pass, 10 × 6 on the second; the model sees ±6 pixels, the
    // overlap is 8.
    let small = Tiling { tile: 24, overlap: 8 };
    assert_eq!((small.count(40, 24), small.count(80, 48)), (5, 60));
    let tiled = upscale(&upscaler, &input, 4, small);
    let (diff, at) = max_u8_diff(&tiled.data, &whole.data);
    assert!(diff <= 1, "tiled vs whole: off by {diff}/255 at byte {at}");
    // Without context the seams show: the comparison above can fail.
    let seams = upscale(&upscaler, &input, 4, Tiling { tile: 24, overlap: 0 });
    assert!(max_u8_diff(&seams.data, &whole.data).0 > 8, "tiles without overlap should differ at the seams");
}

#[test]
fn float16_upscalers_run_like_float32() {
    let g = Golden::load("upscale_x2");
    let engine = engine();
    let upscaler = load(&engine, "tiny-x2-fp16.onnx").unwrap();
    let x2 = upscale(&upscaler, &golden_input(&g), 2, Tiling::default());
    let (diff, at) = max_u8_diff(&x2.data, &g.t("output_x2").u8);
    assert!(diff <= 2, "fp16 ×2: off by {diff}/255 at byte {at}");
}

#[test]
fn upscaled_requests_return_factor_times_the_size_with_metadata_and_progress() {
    let engine = engine();
    let plain = engine.generate(&request(json!({"enabled": false, "factor": 2, "model": null})), &mut NoProgress, true);
    assert!(plain.error.is_none(), "{}", plain.response_json);
    let mut record = Record::default();
    let up = request(json!({"enabled": true, "factor": 4, "model": "tiny-x2"}));
    let out = engine.generate(&up, &mut record, true);
    assert!(out.error.is_none(), "{}", out.response_json);
    let reply: Value = serde_json::from_str(&out.response_json).unwrap();
    let image = &reply["data"]["generated_images"][0];
    assert_eq!((image["width"].as_u64(), image["height"].as_u64()), (Some(256), Some(256)));
    assert_eq!(image["metadata"]["upscale"], json!({"model": "tiny-x2", "factor": 4, "model_scale": 2, "passes": 2}));
    assert!(reply["data"]["processing_metrics"]["upscale_time"].as_f64().unwrap() > 0.0);
    assert_eq!((out.images[0].width, out.images[0].height), (256, 256));
    // The pixels are the upscaler's on the image the same request makes without upscaling.
    let upscaler = load(&engine, "tiny-x2.onnx").unwrap();
    let want = upscale(&upscaler, &plain.images[0], 4, Tiling::default());
    let (diff, at) = max_u8_diff(&out.images[0].data, &want.data);
    assert!(diff <= 1, "request vs direct upscale: off by {diff}/255 at byte {at}");
    // One event per window, 64² then 128², each under the 512 tile: 2 windows.
    assert_eq!(record.upscaling, [(0, 1, 2), (0, 2, 2)]);
    // The cached upscaler is reused: no load time.
    let again = engine.generate(&up, &mut NoProgress, false);
    let reply: Value = serde_json::from_str(&again.response_json).unwrap();
    assert_eq!(reply["data"]["processing_metrics"]["model_load_time"], 0.0, "{reply}");
    // `status` lists it and `unload_model` with its name releases it.
    let loaded = |e: &Engine| e.status()["loaded_upscalers"].as_array().unwrap().len();
    assert_eq!(loaded(&engine), 1, "{}", engine.status());
    let unload = r#"{"message_type": "unload_model", "request_id": "u", "data": {"model_name": "tiny-x2"}}"#;
    let reply: Value = serde_json::from_str(&engine.generate(unload, &mut NoProgress, false).response_json).unwrap();
    assert_eq!(reply["data"]["unloaded_upscalers"], 1, "{reply}");
    assert_eq!(loaded(&engine), 0);
    let after = engine.generate(&up, &mut NoProgress, false);
    let reply: Value = serde_json::from_str(&after.response_json).unwrap();
    assert!(reply["data"]["processing_metrics"]["model_load_time"].as_f64().unwrap() > 0.0, "loaded again: {reply}");
}

#[test]
fn the_upscale_tiling_option_tiles_requests_with_the_same_pixels() {
    let options = json!({"models_root": fixtures(), "intra_op_threads": 1,
                         "upscale_tiling": {"tile": 40, "overlap": 8}})
    .to_string();
    let tiled_engine = Engine::new(Some(&options)).unwrap();
    let up = request(json!({"enabled": true, "factor": 2, "model": "tiny-x2.onnx"}));
    let mut record = Record::default();
    let tiled = tiled_engine.generate(&up, &mut record, true);
    assert!(tiled.error.is_none(), "{}", tiled.response_json);
    // 64 px in windows of at most 40 with 8 of context on each side: 3 × 3 windows.
    assert_eq!(record.upscaling.len(), 9);
    let whole = engine().generate(&up, &mut NoProgress, true);
    let (diff, at) = max_u8_diff(&tiled.images[0].data, &whole.images[0].data);
    assert!(diff <= 1, "tiled request vs whole: off by {diff}/255 at byte {at}");
    let bad = json!({"models_root": fixtures(), "upscale_tiling": {"tile": 16, "overlap": 8}}).to_string();
    let err = Engine::new(Some(&bad)).unwrap_err();
    assert!(err.to_string().contains("upscale_tiling"), "{err}");
}

#[test]
fn cancelling_during_upscaling_stops_between_tiles() {
    let options = json!({"models_root": fixtures(), "intra_op_threads": 1,
                         "upscale_tiling": {"tile": 40, "overlap": 8}})
    .to_string();
    let engine = Engine::new(Some(&options)).unwrap();
    let mut record = Record { cancel_at: Some(2), ..Default::default() };
    let out = engine.generate(&request(json!({"enabled": true, "model": "tiny-x2"})), &mut record, true);
    assert!(matches!(out.error, Some(sdxlrt::Error::Cancelled)), "{}", out.response_json);
    assert_eq!(record.upscaling.len(), 2, "no tile after the cancel");
}

/// Runs `upscale` through the engine and returns (error_code, error message).
fn failure(engine: &Engine, upscale: Value) -> (String, String) {
    let out = engine.generate(&request(upscale.clone()), &mut NoProgress, false);
    let reply: Value = serde_json::from_str(&out.response_json).unwrap();
    assert_eq!(reply["success"], false, "{upscale}: {reply}");
    (reply["error_code"].as_str().unwrap().into(), reply["error"].as_str().unwrap().into())
}

#[test]
fn bad_upscalers_and_factors_are_clear_errors_and_the_engine_goes_on() {
    let engine = engine();
    let outside = tempfile::tempdir().unwrap();
    let stray = outside.path().join("stray.onnx");
    std::fs::copy(fixtures().join("upscalers/tiny-x2.onnx"), &stray).unwrap();
    let text_encoder = fixtures().join("tiny-sdxl/text_encoder/model.onnx");
    let cases = [
        (json!({"enabled": true, "model": "no-such-upscaler"}), "invalid_request", "does not exist"),
        (json!({"enabled": true, "model": "../tiny-x2"}), "invalid_request", "without `..`"),
        (json!({"enabled": true, "model": stray}), "invalid_request", "outside models_root"),
        (json!({"enabled": true, "model": text_encoder}), "model_invalid", "float32 or float16 image"),
        (json!({"enabled": true, "model": "bad-scale-1.5x"}), "model_invalid", "whole number"),
        (json!({"enabled": true, "factor": 9, "model": "tiny-x2"}), "invalid_request", "from 1 to 8"),
        (json!({"enabled": true, "factor": 0, "model": "tiny-x2"}), "invalid_request", "from 1 to 8"),
        (json!({"enabled": true, "factor": "2", "model": "tiny-x2"}), "invalid_request", "expected an integer"),
        (json!({"enabled": true, "factor": 2}), "invalid_request", "no built-in upscaler"),
    ];
    for (upscale, code, needle) in cases {
        let (got_code, message) = failure(&engine, upscale.clone());
        assert_eq!(got_code, code, "{upscale}: {message}");
        assert!(message.contains(needle), "{upscale}: {message}");
        let field = if needle.contains("from 1 to 8") || needle.contains("integer") { "factor" } else { "model" };
        assert!(message.contains(&format!("data.output.upscale.{field}")), "{upscale}: {message}");
        let ok = engine.generate(&request(json!({"enabled": true, "model": "tiny-x2"})), &mut NoProgress, false);
        assert!(ok.error.is_none(), "after {upscale}: {}", ok.response_json);
    }
}

#[test]
fn upscales_past_the_pixel_limit_are_refused_before_any_work() {
    let engine = engine();
    let upscaler = load(&engine, "tiny-x2.onnx").unwrap();
    assert!(upscaler.plan(4096, 4096, 2).is_ok());
    // 2048 × 8 = 16384 per side; factor 5 with a ×2 model passes through ×8 (3 passes) too.
    for (side, factor) in [(2048, 8), (1536, 5)] {
        let err = upscaler.plan(side, side, factor).unwrap_err();
        assert!(err.to_string().contains("data.output.upscale.factor"), "{err}");
    }
}
