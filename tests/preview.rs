//! Live previews in the progress callback (`data.output.preview`) against goldens made by onnx/make_preview.py from
//! the same tiny weights: the scheduler's x₀ estimate a preview shows ≤ 1e-4 + 1e-5·|x| of diffusers' (Euler,
//! Euler a, DDIM, DPM++ 2M, UniPC, Heun), `latent2rgb` previews within ±1/255 of ComfyUI's formula in numpy on
//! diffusers' tensors, `vae` previews within ±1/255 of diffusers' decode; then through the C ABI the interval, NULL
//! previews when off, the last `vae` preview being the image, a batch, the other denoising stages, cancellation and
//! errors.

use std::ffi::c_void;

use sdxlrt::engine::Engine;
use sdxlrt::ffi::progress::{sdxl_progress, sdxl_stage};
use sdxlrt::ffi::status::sdxl_status;
use sdxlrt::pipeline::{Progress, ProgressEvent};
use serde_json::{json, Value};

use crate::util::{max_u8_diff, options_json, pixels_of_image_data, AbiEngine, Golden};

/// One report as the C callback saw it, the preview copied out.
#[derive(Debug, Clone)]
struct Report {
    stage: sdxl_stage,
    step: u32,
    total_steps: u32,
    image_index: u32,
    preview: Option<(u32, u32, Vec<u8>)>,
}

/// Records every report; cancels at the first preview when `cancel_at_preview`.
#[derive(Default)]
struct Recorder {
    reports: Vec<Report>,
    cancel_at_preview: bool,
}

impl Recorder {
    /// The reports with a preview, as (step, image index, width, height, bytes).
    fn previews(&self) -> Vec<(u32, u32, u32, u32, &[u8])> {
        self.reports
            .iter()
            .filter_map(|r| r.preview.as_ref().map(|(w, h, rgb)| (r.step, r.image_index, *w, *h, &rgb[..])))
            .collect()
    }
}

unsafe extern "C" fn record(user_data: *mut c_void, p: *const sdxl_progress) -> i32 {
    let rec = &mut *(user_data as *mut Recorder);
    let p = &*p;
    let preview = if p.preview_rgb.is_null() {
        assert_eq!((p.preview_width, p.preview_height, p.preview_len), (0, 0, 0), "sizes without a preview");
        None
    } else {
        assert_eq!(p.preview_len, (p.preview_width * p.preview_height * 3) as usize, "RGB8 without padding");
        let bytes = std::slice::from_raw_parts(p.preview_rgb, p.preview_len).to_vec();
        Some((p.preview_width, p.preview_height, bytes))
    };
    let has_preview = preview.is_some();
    rec.reports.push(Report {
        stage: p.stage,
        step: p.step,
        total_steps: p.total_steps,
        image_index: p.image_index,
        preview,
    });
    i32::from(rec.cancel_at_preview && has_preview)
}

/// Golden `case`'s request with `data.output.preview` = `preview`.
fn request(g: &Golden, parallel: bool, preview: Value) -> Value {
    let mut r: Value = serde_json::from_str(&g.request("tiny-sdxl", parallel)).unwrap();
    r["data"]["output"]["preview"] = preview;
    r
}

/// Run `request` through `sdxl_generate` with the recorder.
fn run(engine: &AbiEngine, request: &Value, rec: &mut Recorder) -> (sdxl_status, Value, String) {
    let reply = engine.generate_with(&request.to_string(), Some(record), rec as *mut Recorder as *mut c_void);
    (reply.status, reply.json, reply.error)
}

/// The image `k` (`[B, h, w, 3]` u8) of golden tensor `key`.
fn golden_u8<'g>(g: &'g Golden, key: &str, k: usize) -> &'g [u8] {
    let t = g.t(key);
    let per = t.u8.len() / t.shape[0];
    &t.u8[k * per..(k + 1) * per]
}

/// Every preview of a run equals the golden `prefix_{step}` of its image within ±1/255, and there is one per step
/// and image.
fn check_previews(g: &Golden, rec: &Recorder, prefix: &str, size: (u32, u32)) {
    let (steps, batch) = (g.meta::<u32>("steps"), g.meta::<usize>("batch_size"));
    let previews = rec.previews();
    assert_eq!(previews.len(), steps as usize * batch, "{}: one {prefix} preview per step and image", g.name);
    for (step, image, w, h, rgb) in previews {
        assert_eq!((w, h), size, "{}: {prefix} step {step}", g.name);
        let want = golden_u8(g, &format!("{prefix}_{step}"), image as usize);
        let (worst, at) = max_u8_diff(rgb, want);
        assert!(worst <= 1, "{}: {prefix} preview of step {step}, image {image}: {worst}/255 at byte {at}", g.name);
    }
}

/// Records the latents each preview is made from, per (first image index, step).
#[derive(Default)]
struct Shown(std::collections::BTreeMap<(u32, u32), Vec<f32>>);

impl Progress for Shown {
    fn report(&mut self, _: &ProgressEvent<'_>) -> bool {
        true
    }
    fn on_preview_latents(&mut self, image_index: u32, step: u32, latents: ndarray::ArrayViewD<'_, f32>) {
        self.0.insert((image_index, step), latents.iter().copied().collect());
    }
}

const SCHEDULER_CASES: [&str; 6] =
    ["preview_euler", "preview_euler_a", "preview_ddim", "preview_dpmpp_2m", "preview_unipc", "preview_heun"];

#[test]
fn denoised_previews_show_the_x0_estimate_diffusers_schedulers_compute() {
    let engine = Engine::new(Some(&options_json())).expect("engine");
    for case in SCHEDULER_CASES {
        let g = Golden::load(case);
        let mut shown = Shown::default();
        let r = request(&g, true, json!({"enabled": true}));
        let outcome = engine.generate(&r.to_string(), &mut shown, false);
        assert!(outcome.error.is_none(), "{case}: {:?}", outcome.error);
        let steps = g.meta::<u32>("steps");
        assert_eq!(shown.0.len(), steps as usize, "{case}: one preview per step");
        for ((_, step), got) in &shown.0 {
            let want = &g.t(&format!("denoised_{step}")).f32;
            assert_close!(got, want, 1e-4, 1e-5, "{case}: x0 estimate of step {step}");
        }
    }
}

#[test]
fn latent2rgb_previews_match_comfyuis_sdxl_factors_on_diffusers_x0() {
    let engine = AbiEngine::fixtures();
    for case in SCHEDULER_CASES {
        let g = Golden::load(case);
        let mut rec = Recorder::default();
        let (status, reply, error) = run(&engine, &request(&g, true, json!({"enabled": true})), &mut rec);
        assert_eq!(status, sdxl_status::Ok, "{case}: {error} {reply}");
        check_previews(&g, &rec, "l2r_denoised", (8, 8));
    }
}

#[test]
fn noisy_previews_show_the_latents_after_each_step() {
    let engine = AbiEngine::fixtures();
    let g = Golden::load("preview_euler");
    let mut rec = Recorder::default();
    let (status, _, error) = run(&engine, &request(&g, true, json!({"source": "noisy"})), &mut rec);
    assert_eq!(status, sdxl_status::Ok, "{error}");
    check_previews(&g, &rec, "l2r_noisy", (8, 8));
}

#[test]
fn vae_previews_decode_like_diffusers_and_the_last_is_the_image() {
    let engine = AbiEngine::fixtures();
    let g = Golden::load("preview_euler");
    for (source, prefix) in [("denoised", "vae_denoised"), ("noisy", "vae_noisy")] {
        let mut rec = Recorder::default();
        let r = request(&g, true, json!({"enabled": true, "method": "vae", "source": source}));
        let (status, reply, error) = run(&engine, &r, &mut rec);
        assert_eq!(status, sdxl_status::Ok, "{error}");
        check_previews(&g, &rec, prefix, (64, 64));
        let image = pixels_of_image_data(reply["data"]["generated_images"][0]["image_data"].as_str().unwrap());
        let last = rec.previews().last().map(|p| p.4.to_vec()).unwrap();
        assert_eq!(last, image, "{source}: the last step's vae preview is the returned image, byte for byte");
    }
}

#[test]
fn previews_come_every_interval_steps_and_after_the_last_step() {
    let engine = AbiEngine::fixtures();
    let g = Golden::load("preview_euler");
    for (interval, want) in [(1, vec![1, 2, 3, 4]), (2, vec![2, 4]), (3, vec![3, 4]), (4, vec![4]), (9, vec![4])] {
        let mut rec = Recorder::default();
        let (status, _, error) = run(&engine, &request(&g, true, json!({"interval": interval})), &mut rec);
        assert_eq!(status, sdxl_status::Ok, "{error}");
        let steps: Vec<u32> = rec.previews().iter().map(|p| p.0).collect();
        assert_eq!(steps, want, "interval {interval}");
        let denoising = rec.reports.iter().filter(|r| r.stage == sdxl_stage::Denoising).count();
        assert_eq!(denoising, 4, "interval {interval}: still one denoising report per step");
        assert!(rec.reports.iter().all(|r| r.preview.is_none() || r.stage == sdxl_stage::Denoising));
        // Each preview is the golden's preview of that step.
        for (step, _, _, _, rgb) in rec.previews() {
            assert!(max_u8_diff(rgb, golden_u8(&g, &format!("l2r_denoised_{step}"), 0)).0 <= 1, "step {step}");
        }
    }
}

#[test]
fn without_previews_every_report_has_a_null_preview() {
    let engine = AbiEngine::fixtures();
    let g = Golden::load("preview_euler");
    for preview in [Value::Null, json!(false), json!({"enabled": false, "method": "vae"})] {
        let mut rec = Recorder::default();
        let (status, _, error) = run(&engine, &request(&g, true, preview.clone()), &mut rec);
        assert_eq!(status, sdxl_status::Ok, "{error}");
        assert!(rec.reports.iter().any(|r| r.stage == sdxl_stage::Denoising && r.step == r.total_steps));
        assert!(rec.previews().is_empty(), "{preview}: no preview");
    }
}

#[test]
fn a_batch_gets_one_preview_per_image_and_step_in_both_batch_modes() {
    let engine = AbiEngine::fixtures();
    let g = Golden::load("preview_batch2");
    for parallel in [true, false] {
        let mut rec = Recorder::default();
        let (status, _, error) = run(&engine, &request(&g, parallel, json!(true)), &mut rec);
        assert_eq!(status, sdxl_status::Ok, "{error}");
        check_previews(&g, &rec, "l2r_denoised", (8, 8));
        for image in 0..2 {
            let steps: Vec<u32> = rec.previews().iter().filter(|p| p.1 == image).map(|p| p.0).collect();
            assert_eq!(steps, vec![1, 2, 3, 4], "parallel {parallel}: image {image}");
        }
    }
}

#[test]
fn a_callback_that_cancels_at_a_preview_stops_the_run() {
    let engine = AbiEngine::fixtures();
    let g = Golden::load("preview_euler");
    let mut rec = Recorder { cancel_at_preview: true, ..Default::default() };
    let (status, _, _) = run(&engine, &request(&g, true, json!({"interval": 2})), &mut rec);
    assert_eq!(status, sdxl_status::Cancelled);
    let last = rec.reports.last().unwrap();
    assert_eq!((last.stage, last.step, last.preview.is_some()), (sdxl_stage::Denoising, 2, true));
    // The engine still works afterwards.
    let mut rec = Recorder::default();
    assert_eq!(run(&engine, &request(&g, true, json!(true)), &mut rec).0, sdxl_status::Ok);
}

#[test]
fn refiner_and_hires_stages_preview_every_step_and_the_last_vae_preview_is_the_image() {
    let engine = AbiEngine::fixtures();
    // The refiner case: 10 steps, 8 on the base and 2 on the refiner, counted on together.
    let g = Golden::load("refiner");
    let mut rec = Recorder::default();
    let (status, reply, error) = run(&engine, &request(&g, true, json!({"method": "vae"})), &mut rec);
    assert_eq!(status, sdxl_status::Ok, "{error}");
    let steps: Vec<u32> = rec.previews().iter().map(|p| p.0).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    let image = pixels_of_image_data(reply["data"]["generated_images"][0]["image_data"].as_str().unwrap());
    assert_eq!(rec.previews().last().unwrap().4, &image[..], "the refiner's VAE decodes the last preview");
    // Hires fix: both passes preview, the second at the target size.
    let g = Golden::load("hires_latent");
    let mut r = request(&g, true, json!({"interval": 1}));
    r["data"]["hires"] = serde_json::from_str(&g.meta["hires"]).unwrap();
    let mut rec = Recorder::default();
    let (status, _, error) = run(&engine, &r, &mut rec);
    assert_eq!(status, sdxl_status::Ok, "{error}");
    let sizes: Vec<(u32, u32)> = rec.previews().iter().map(|p| (p.2, p.3)).collect();
    let (first, second) = sizes.split_at(4);
    assert!(first.iter().all(|&s| s == (8, 8)), "{sizes:?}");
    assert!(!second.is_empty() && second.iter().all(|&s| s == (12, 12)), "{sizes:?}");
}

#[test]
fn image_to_image_previews_count_the_steps_that_run() {
    let engine = AbiEngine::fixtures();
    let g = Golden::load("img2img");
    let mut rec = Recorder::default();
    let (status, _, error) = run(&engine, &request(&g, true, json!(true)), &mut rec);
    assert_eq!(status, sdxl_status::Ok, "{error}");
    let previews = rec.previews();
    let total = rec.reports.iter().find(|r| r.stage == sdxl_stage::Denoising).unwrap().total_steps;
    let steps: Vec<u32> = previews.iter().map(|p| p.0).collect();
    assert_eq!(steps, (1..=total).collect::<Vec<_>>());
}

#[test]
fn invalid_preview_fields_are_errors_naming_the_field() {
    let engine = AbiEngine::fixtures();
    let g = Golden::load("preview_euler");
    let cases = [
        (json!({"method": "taesd"}), "data.output.preview.method"),
        (json!({"enabled": true, "method": ""}), "data.output.preview.method"),
        (json!({"source": "x0"}), "data.output.preview.source"),
        (json!({"interval": 0}), "data.output.preview.interval"),
        (json!({"interval": -2}), "data.output.preview.interval"),
        (json!({"interval": "2"}), "data.output.preview.interval"),
        (json!({"enabled": "yes"}), "data.output.preview.enabled"),
        (json!("latent2rgb"), "data.output.preview"),
    ];
    for (preview, field) in cases {
        let mut rec = Recorder::default();
        let (status, reply, error) = run(&engine, &request(&g, true, preview.clone()), &mut rec);
        assert_eq!(status, sdxl_status::InvalidRequest, "{preview}: {reply}");
        assert!(error.contains(field), "{preview}: {error}");
        assert!(rec.previews().is_empty());
    }
}
