//! `sdxlrt` command line: generate images through the same C ABI .NET uses.
//!
//! ```text
//! sdxlrt generate --prompt "a lighthouse at dusk" --seed 7 --steps 20 --out out/lighthouse.png
//! ```
//! Defaults to the tiny test model bundled in the source tree (`tests/fixtures/tiny-sdxl`).

use std::ffi::{c_void, CStr, CString};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sdxlrt::ffi::buffers::sdxl_string_free;
use sdxlrt::ffi::engine::{sdxl_engine_create, sdxl_engine_free, sdxl_generate};
use sdxlrt::ffi::progress::{sdxl_progress, sdxl_stage};
use sdxlrt::ffi::status::sdxl_status;

#[derive(Parser)]
#[command(name = "sdxlrt", version, about = "Stable Diffusion XL on ONNX Runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an image from a prompt.
    Generate(GenerateArgs),
}

#[derive(Parser)]
struct GenerateArgs {
    /// Folder holding model folders (ONNX layout).
    #[arg(long, default_value_os_t = bundled_models_root())]
    models_root: PathBuf,
    /// Model folder name under --models-root.
    #[arg(long, default_value = "tiny-sdxl")]
    model: String,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Negative prompt (omit for none: SDXL then zeroes the negative conditioning).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// How the prompts are read: "plain" (diffusers: the literal text, cut to 77 tokens) or "weighted" (A1111's
    /// (word:1.3) / (word) / [word] / BREAK syntax, prompts of any length).
    #[arg(long, value_parser = ["plain", "weighted"])]
    prompt_syntax: Option<String>,
    /// Seed (torch-compatible: the same seed gives diffusers' noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Denoising steps.
    #[arg(long, default_value_t = 30)]
    steps: u32,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 5.0)]
    guidance_scale: f32,
    /// diffusers' guidance_rescale, 0 to 1 (data.hyperparameters.guidance_rescale; "CFG rescale"): pulls the
    /// guided prediction back to the conditional one's spread, for zero-terminal-SNR / v-prediction models.
    #[arg(long)]
    guidance_rescale: Option<f64>,
    /// Text-encoder layers skipped beyond SDXL's penultimate one (data.hyperparameters.clip_skip; diffusers'
    /// clip_skip; A1111's "Clip skip 2" is SDXL's default, 0).
    #[arg(long)]
    clip_skip: Option<u32>,
    /// Width in pixels (default: the model's).
    #[arg(long)]
    width: Option<u32>,
    /// Height in pixels (default: the model's).
    #[arg(long)]
    height: Option<u32>,
    /// SDXL size micro-conditioning: the original size the model should imagine, WIDTHxHEIGHT (default: the image's).
    #[arg(long, value_parser = pair('x'))]
    original_size: Option<(u32, u32)>,
    /// SDXL size micro-conditioning: the target size, WIDTHxHEIGHT (default: the image's).
    #[arg(long, value_parser = pair('x'))]
    target_size: Option<(u32, u32)>,
    /// SDXL size micro-conditioning: the crop's top-left corner, TOP,LEFT (default 0,0).
    #[arg(long, value_parser = pair(','))]
    crop_top_left: Option<(u32, u32)>,
    /// Scheduler (diffusers class name or A1111 name; default: the model's).
    #[arg(long)]
    scheduler: Option<String>,
    /// Number of images.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// SDXL refiner folder under --models-root: it denoises the last part of the schedule.
    #[arg(long)]
    refiner: Option<String>,
    /// The fraction of the steps the base model runs before the refiner (default 0.8).
    #[arg(long, requires = "refiner")]
    refiner_switch_at: Option<f64>,
    /// Custom VAE folder under <models-root>/vae.
    #[arg(long)]
    vae: Option<String>,
    /// Upscaler model under <models-root>/upscalers (name without .onnx).
    #[arg(long)]
    upscale: Option<String>,
    /// Upscale factor with --upscale.
    #[arg(long, default_value_t = 2, requires = "upscale")]
    upscale_factor: u32,
    /// ControlNet under <models-root>/controlnet (a folder holding model.onnx, or NAME.onnx).
    #[arg(long, requires = "control_image")]
    controlnet: Option<String>,
    /// The control image for --controlnet (already preprocessed, e.g. an edge map; or a photo with --canny).
    #[arg(long, requires = "controlnet")]
    control_image: Option<PathBuf>,
    /// Make the control image from --control-image, a photo, with OpenCV's Canny: `--canny` for thresholds 100 and
    /// 200, or `--canny LOW HIGH`.
    #[arg(long, requires = "controlnet", num_args = 0..=2, value_names = ["LOW", "HIGH"])]
    canny: Option<Vec<f64>>,
    /// ControlNet conditioning scale with --controlnet.
    #[arg(long, default_value_t = 1.0, requires = "controlnet")]
    controlnet_scale: f64,
    /// Run the ControlNet in diffusers' guess mode (data.controlnet.guess_mode): with guidance it sees only the
    /// conditional half, and its residuals are weighted from 0.1 to 1 on a log scale.
    #[arg(long, requires = "controlnet")]
    guess_mode: bool,
    /// Image-to-image: start from this image (resized to --width x --height when given, else its own size).
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// Inpainting with --init-image: redraw only where this mask is white (black keeps the image).
    #[arg(long, requires = "init_image")]
    mask_image: Option<PathBuf>,
    /// With --mask-image: inpaint only the mask's area grown by this many pixels, at --width x --height, and put
    /// it back into the init image (the output keeps the init image's size).
    #[arg(long, requires = "mask_image")]
    padding_mask_crop: Option<u32>,
    /// With --mask-image: blur the mask first by this radius in pixels (Pillow's GaussianBlur, as diffusers'
    /// mask_processor.blur; A1111's "mask blur", there 4 by default).
    #[arg(long, requires = "mask_image")]
    mask_blur: Option<f64>,
    /// Hires fix (A1111's "Hires. fix"): after the first pass, upscale by this factor (1-8; sides rounded down to
    /// multiples of 8) and redraw at that size with image-to-image.
    #[arg(long, conflicts_with_all = ["hires_width", "hires_height"])]
    hires_scale: Option<f64>,
    /// Hires fix to this width (a multiple of 8; alone, the height keeps the aspect ratio).
    #[arg(long)]
    hires_width: Option<u32>,
    /// Hires fix to this height (a multiple of 8).
    #[arg(long)]
    hires_height: Option<u32>,
    /// Hires fix's upscaler: latent (default), latent-nearest, latent-nearest-exact, lanczos, or an upscaler model
    /// under <models-root>/upscalers (name without .onnx). Alone it turns hires fix on at scale 2.
    #[arg(long)]
    hires_upscaler: Option<String>,
    /// Hires fix's denoising strength (0-1; default 0.7).
    #[arg(long)]
    hires_strength: Option<f64>,
    /// Hires fix's steps (default: --steps).
    #[arg(long)]
    hires_steps: Option<u32>,
    /// With --controlnet and hires fix: the passes the ControlNet conditions, both (default), first (the
    /// text-to-image pass only) or second (the hires pass only); sd-webui-controlnet's "Both", "Low res only",
    /// "High res only" work too. Alone it turns hires fix on at scale 2.
    #[arg(long, requires = "controlnet")]
    hires_controlnet: Option<String>,
    /// With --init-image: the share of the steps that run (0-1; int(steps x strength) steps).
    #[arg(long, default_value_t = 0.8, requires = "init_image")]
    strength: f64,
    /// Output file (.png, .jpg or .webp).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Do not write the generation parameters (prompt, seed, sampler, ...) into the image file; by default they
    /// are written as A1111 does (PNG text chunk `parameters`, JPEG/WebP EXIF UserComment).
    #[arg(long)]
    no_embed_parameters: bool,
    /// Write live previews of the denoising into this folder (created if missing) as `step_NNN.png`
    /// (`image_I_step_NNN.png` with a batch), numbered per image across every denoising pass.
    #[arg(long)]
    preview_dir: Option<PathBuf>,
    /// With --preview-dir: latent2rgb (default; fast, 1/8 size) or vae (a full VAE decode per preview).
    #[arg(long, requires = "preview_dir")]
    preview_method: Option<String>,
    /// With --preview-dir: a preview every this many steps (default 1; the last step always has one).
    #[arg(long, requires = "preview_dir")]
    preview_interval: Option<u32>,
    /// With --preview-dir: preview the latents after each step instead of the step's estimate of the final image.
    #[arg(long, requires = "preview_dir")]
    preview_noisy: bool,
    /// Path of libonnxruntime.so (else ORT_DYLIB_PATH, beside the library, the system).
    #[arg(long)]
    onnxruntime: Option<PathBuf>,
    /// Keep ONNX Runtime-optimized graphs in this folder so later runs load faster.
    #[arg(long)]
    optimized_cache: Option<PathBuf>,
    /// More engine options, as a JSON object (e.g. '{"cpu_memory_arena": "all"}'; README's engine options).
    #[arg(long)]
    engine_options: Option<String>,
}

fn bundled_models_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn last_error() -> String {
    // SAFETY: sdxl_last_error returns a valid NUL-terminated string owned by the library.
    unsafe { CStr::from_ptr(sdxlrt::ffi::boundary::sdxl_last_error()) }.to_string_lossy().into_owned()
}

/// What the progress callback updates: the bar, and the preview files.
struct Watch {
    bar: ProgressBar,
    preview_dir: Option<PathBuf>,
    /// Previews written so far, per image.
    written: std::collections::BTreeMap<u32, u32>,
    /// The first preview that could not be written (the run is cancelled).
    failed: Option<String>,
}

impl Watch {
    /// Write the preview of report `p`, if it has one, as the next `step_NNN.png` of its image.
    fn save_preview(&mut self, p: &sdxl_progress) -> Result<(), String> {
        let Some(dir) = &self.preview_dir else { return Ok(()) };
        if p.preview_rgb.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null preview is preview_len bytes, valid during the callback.
        let rgb = unsafe { std::slice::from_raw_parts(p.preview_rgb, p.preview_len) }.to_vec();
        let n = self.written.entry(p.image_index).or_insert(0);
        *n += 1;
        let name = match p.batch_size {
            1 => format!("step_{n:03}.png"),
            _ => format!("image_{}_step_{n:03}.png", p.image_index + 1),
        };
        let path = dir.join(name);
        let image = image::RgbImage::from_raw(p.preview_width, p.preview_height, rgb)
            .ok_or_else(|| "a preview of the wrong size".to_string())?;
        image.save(&path).map_err(|e| format!("writing the preview {}: {e}", path.display()))
    }
}

unsafe extern "C" fn on_progress(user_data: *mut c_void, p: *const sdxl_progress) -> i32 {
    // SAFETY: user_data is the &mut Watch passed below; p is valid during the callback.
    let (watch, p) = unsafe { (&mut *(user_data as *mut Watch), &*p) };
    if let Err(e) = watch.save_preview(p) {
        watch.failed = Some(e);
        return 1;
    }
    let bar = &watch.bar;
    let stage = match p.stage {
        sdxl_stage::Loading => "loading",
        sdxl_stage::TextEncoding => "text",
        sdxl_stage::Denoising => "denoise",
        sdxl_stage::Decoding => "decode",
        sdxl_stage::Saving => "save",
        sdxl_stage::Upscaling => "upscale",
        sdxl_stage::ImageEncoding => "encode",
    };
    bar.set_message(format!("{stage} image {}/{}", p.image_index + 1, p.batch_size));
    if p.stage == sdxl_stage::Denoising {
        bar.set_length(u64::from(p.total_steps));
        bar.set_position(u64::from(p.step));
    }
    0
}

fn generate(args: GenerateArgs) -> Result<String, String> {
    let format = match args.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") | None => "png",
        Some("jpg") | Some("jpeg") => "jpeg",
        Some("webp") => "webp",
        Some(other) => return Err(format!("unknown output extension .{other}; use .png, .jpg or .webp")),
    };
    let mut options = serde_json::json!({ "models_root": args.models_root });
    if let Some(p) = &args.onnxruntime {
        options["onnxruntime_path"] = serde_json::json!(p);
    }
    if let Some(p) = &args.optimized_cache {
        options["optimized_model_cache"] = serde_json::json!(p);
    }
    if let Some(text) = &args.engine_options {
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("--engine-options is not a JSON object: {e}"))?;
        options.as_object_mut().expect("an object").extend(extra);
    }
    let mut data = serde_json::json!({
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "models": { "base": args.model },
        "hyperparameters": { "num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, "seed": args.seed },
        "batch": { "size": args.batch },
        "output": { "format": format, "save_path": args.out, "overwrite": args.overwrite, "return_image_data": false },
    });
    if args.no_embed_parameters {
        data["output"]["embed_parameters"] = serde_json::json!(false);
    }
    if let Some(phi) = args.guidance_rescale {
        data["hyperparameters"]["guidance_rescale"] = serde_json::json!(phi);
    }
    if let Some(skip) = args.clip_skip {
        data["hyperparameters"]["clip_skip"] = serde_json::json!(skip);
    }
    if let Some(dir) = &args.preview_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("--preview-dir {}: {e}", dir.display()))?;
        let mut preview = serde_json::json!({ "enabled": true });
        if let Some(method) = &args.preview_method {
            preview["method"] = serde_json::json!(method);
        }
        if let Some(interval) = args.preview_interval {
            preview["interval"] = serde_json::json!(interval);
        }
        if args.preview_noisy {
            preview["source"] = serde_json::json!("noisy");
        }
        data["output"]["preview"] = preview;
    }
    if args.width.is_some() || args.height.is_some() {
        data["dimensions"] = serde_json::json!({ "width": args.width, "height": args.height });
    }
    let micro = [
        args.original_size.map(|(w, h)| ("original_size", serde_json::json!({ "width": w, "height": h }))),
        args.target_size.map(|(w, h)| ("target_size", serde_json::json!({ "width": w, "height": h }))),
        args.crop_top_left.map(|(t, l)| ("crops_coords_top_left", serde_json::json!({ "top": t, "left": l }))),
    ];
    for (key, value) in micro.into_iter().flatten() {
        data["dimensions"][key] = value;
    }
    if let Some(syntax) = &args.prompt_syntax {
        data["prompt_syntax"] = serde_json::json!(syntax);
    }
    if let Some(s) = &args.scheduler {
        data["scheduler"] = serde_json::json!(s);
    }
    if let Some(r) = &args.refiner {
        data["models"]["refiner"] = serde_json::json!(r);
    }
    if let Some(at) = args.refiner_switch_at {
        data["hyperparameters"]["refiner_switch_at"] = serde_json::json!(at);
    }
    if let Some(v) = &args.vae {
        data["models"]["vae"] = serde_json::json!(v);
    }
    if let Some(model) = &args.upscale {
        data["output"]["upscale"] =
            serde_json::json!({ "enabled": true, "factor": args.upscale_factor, "model": model });
    }
    if let (Some(model), Some(image)) = (&args.controlnet, &args.control_image) {
        let mut unit = serde_json::json!({ "model_path": model, "control_image": image, "conditioning_scale": args.controlnet_scale });
        if let Some(thresholds) = &args.canny {
            let mut preprocessor = serde_json::json!({ "type": "canny" });
            for (key, value) in ["low_threshold", "high_threshold"].iter().zip(thresholds) {
                preprocessor[*key] = serde_json::json!(value);
            }
            unit["preprocessor"] = preprocessor;
        }
        data["controlnet"] = serde_json::json!({ "enabled": true, "models": [unit] });
        if args.guess_mode {
            data["controlnet"]["guess_mode"] = true.into();
        }
    }
    if let Some(image) = &args.init_image {
        data["init_image"] = serde_json::json!(image);
        data["hyperparameters"]["strength"] = serde_json::json!(args.strength);
    }
    if let Some(mask) = &args.mask_image {
        data["mask_image"] = serde_json::json!(mask);
    }
    if let Some(pad) = args.padding_mask_crop {
        data["padding_mask_crop"] = serde_json::json!(pad);
    }
    if let Some(radius) = args.mask_blur {
        data["mask_blur"] = serde_json::json!(radius);
    }
    let mut hires = serde_json::Map::new();
    let hires_flags = [
        ("scale", args.hires_scale.map(|v| serde_json::json!(v))),
        ("width", args.hires_width.map(|v| serde_json::json!(v))),
        ("height", args.hires_height.map(|v| serde_json::json!(v))),
        ("upscaler", args.hires_upscaler.as_ref().map(|v| serde_json::json!(v))),
        ("strength", args.hires_strength.map(|v| serde_json::json!(v))),
        ("steps", args.hires_steps.map(|v| serde_json::json!(v))),
        ("controlnet", args.hires_controlnet.as_ref().map(|v| serde_json::json!(v))),
    ];
    for (key, value) in hires_flags {
        if let Some(value) = value {
            hires.insert(key.into(), value);
        }
    }
    if !hires.is_empty() {
        hires.insert("enabled".into(), serde_json::json!(true));
        data["hires"] = serde_json::Value::Object(hires);
    }
    let request = serde_json::json!({ "message_type": "inference_request", "request_id": "cli", "data": data });

    let options = CString::new(options.to_string()).map_err(|e| e.to_string())?;
    let request = CString::new(request.to_string()).map_err(|e| e.to_string())?;
    let mut engine = std::ptr::null_mut();
    if sdxl_engine_create(options.as_ptr(), &mut engine) != sdxl_status::Ok {
        return Err(last_error());
    }
    let mut watch = Watch {
        bar: ProgressBar::new(u64::from(args.steps)),
        preview_dir: args.preview_dir.clone(),
        written: Default::default(),
        failed: None,
    };
    let bar = &watch.bar;
    bar.set_style(
        ProgressStyle::with_template("{msg:22} [{bar:30}] {pos}/{len} {elapsed_precise}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let mut response = std::ptr::null_mut();
    let status = sdxl_generate(
        engine,
        request.as_ptr(),
        Some(on_progress),
        &mut watch as *mut Watch as *mut c_void,
        &mut response,
    );
    watch.bar.finish_and_clear();
    let text = if response.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null response is a NUL-terminated string we own until sdxl_string_free.
        let s = unsafe { CStr::from_ptr(response) }.to_string_lossy().into_owned();
        sdxl_string_free(response);
        s
    };
    sdxl_engine_free(engine);
    if let Some(e) = watch.failed.take() {
        return Err(e);
    }
    if status == sdxl_status::Ok {
        Ok(text)
    } else if text.is_empty() {
        Err(last_error())
    } else {
        Err(text)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(args) => match generate(args) {
            Ok(json) => {
                let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                for img in value["data"]["generated_images"].as_array().into_iter().flatten() {
                    let meta = &img["metadata"];
                    let path = img["image_path"].as_str().unwrap_or("?");
                    let (w, h) = (&img["width"], &img["height"]);
                    let mut used: Vec<String> = Vec::new();
                    for (label, key) in [("refiner", "refiner_model"), ("vae", "vae_model")] {
                        if let Some(name) = meta["model_info"][key].as_str() {
                            used.push(format!("{label} {name}"));
                        }
                    }
                    for unit in meta["controlnets"].as_array().into_iter().flatten() {
                        used.push(format!("controlnet {}", unit["model"].as_str().unwrap_or("?")));
                    }
                    if let Some(name) = meta["hires"]["upscaler"].as_str() {
                        let (fw, fh) = (&meta["hires"]["first_pass_width"], &meta["hires"]["first_pass_height"]);
                        used.push(format!("hires fix from {fw}x{fh} by {name}"));
                    }
                    if let Some(name) = meta["upscale"]["model"].as_str() {
                        used.push(format!("upscaled by {name}"));
                    }
                    let used = if used.is_empty() { String::new() } else { format!(", {}", used.join(", ")) };
                    println!("wrote {path} ({w}x{h}, seed {}{used})", meta["seed"]);
                }
                let m = &value["data"]["processing_metrics"];
                println!(
                    "total {:.2}s: model load {:.2}s, text {:.2}s, denoise {:.2}s ({} UNet runs), decode {:.2}s",
                    m["total_time"].as_f64().unwrap_or(0.0),
                    m["model_load_time"].as_f64().unwrap_or(0.0),
                    m["text_encoding_time"].as_f64().unwrap_or(0.0),
                    m["denoising_time"].as_f64().unwrap_or(0.0),
                    m["unet_evaluations"],
                    m["vae_decode_time"].as_f64().unwrap_or(0.0)
                );
                for w in value["warnings"].as_array().into_iter().flatten() {
                    eprintln!("warning: {}", w.as_str().unwrap_or_default());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A clap parser of two numbers joined by `sep` (`1024x768`, `32,16`).
fn pair(sep: char) -> impl Fn(&str) -> Result<(u32, u32), String> + Clone {
    move |text: &str| {
        let parsed = text.split_once(sep).and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        parsed.ok_or_else(|| format!("expected two whole numbers joined by '{sep}', e.g. 1024{sep}768, got {text:?}"))
    }
}
