//! The generation parameters written into encoded images (`data.output.embed_parameters`): A1111's "infotext" —
//! the text its "PNG Info" tab, civitai and most image browsers read — and sdxlrt's own JSON record of the image.
//!
//! Layer: protocol (plain data). The image layer writes what this builds: a PNG `parameters` text chunk and an
//! `sdxlrt` chunk with the record, or a JPEG/WebP EXIF `UserComment` with the infotext.
//!
//! # The infotext
//!
//! A1111's `create_infotext` (`modules/processing.py`, v1.10) writes three parts:
//!
//! ```text
//! a lighthouse at dusk <lora:detail:0.8>
//! Negative prompt: blurry
//! Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 42, Size: 1024x1024, Model: sdxl-base, RNG: CPU, Version: sdxlrt 0.1.0
//! ```
//!
//! The prompt, a `Negative prompt:` line when there is a non-empty one, then `key: value` pairs joined by `, ` in
//! A1111's order, leaving out what does not apply; a value holding `,`, `:` or a line break is written as a JSON
//! string (`infotext_utils.quote`), and the whole text is stripped. What sdxlrt writes, in A1111's names:
//!
//! - the prompt as the model read it, with each LoRA as an A1111 tag appended (`<lora:name:weight>`, or
//!   `<lora:name:te:unet>` when the weights differ), whether it came from a tag or from `data.lora.models`;
//! - `Steps`, `Sampler` and `Schedule type` (the A1111 names of the scheduler that ran, [`a1111_sampler`]),
//!   `CFG scale`, `Seed` (this image's), `Size` (the size the model generated, before upscaling or putting an
//!   inpainted crop back; with hires fix the first pass's), `Model`, `VAE` (a custom one), `Denoising strength`
//!   (image-to-image, or the hires pass's), `RNG: CPU` (the
//!   initial noise is torch's CPU generator's, A1111's "CPU" noise source);
//! - then A1111's "extra generation parameters": `Refiner` and `Refiner switch at`, `Mask blur`, `Inpaint area` and
//!   `Masked area padding`, `ControlNet i` (the sd-webui-controlnet extension's form, `Guess Mode: True` in guess
//!   mode), `Hires upscale` or `Hires resize`, `Hires steps` (when given) and `Hires upscaler` (A1111's display
//!   names, which `data.hires.upscaler` accepts), `Postprocess upscale by` and
//!   `Postprocess upscaler` (A1111's Extras tab), `Prompt 2` / `Negative prompt 2` (sdxlrt's; A1111 has no
//!   second prompt) — features added later put theirs here, in `extra_params`;
//! - `Version: sdxlrt <version>`.
//!
//! Not written, because sdxlrt cannot give them honestly: `Model hash` / `VAE hash` (A1111 hashes the checkpoint
//! file; an ONNX folder has none) and `Lora hashes` (A1111's are SHA-256 of the safetensors data; the LoRA cache
//! fingerprints files with FNV-1a, which would mislead civitai's lookups). The [`GenerationRecord`] has the rest.

use serde::Serialize;
use serde_json::{Map, Value};

use super::params::{GenerateParams, HiresTarget, MicroConditioning};
use super::prompt_syntax::PromptSyntax;
use super::response::{ImageMetadata, LoraInfo};

/// The PNG text chunk key A1111 reads the infotext from (`modules/images.py`, `pnginfo_section_name`).
pub const PNG_KEY: &str = "parameters";

/// The PNG text chunk key of the [`GenerationRecord`] JSON.
pub const RECORD_KEY: &str = "sdxlrt";

/// What an encoded image carries: the A1111 infotext and sdxlrt's JSON record of the same image.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedParameters {
    /// A1111's infotext ([`infotext`]).
    pub infotext: String,
    /// [`GenerationRecord`] as compact JSON.
    pub record: String,
}

impl EmbeddedParameters {
    /// The parameters of one image: `meta` is its reply metadata, `generated` the width and height the model
    /// generated at.
    pub fn new(params: &GenerateParams, meta: &ImageMetadata, generated: (u32, u32)) -> Self {
        let record = GenerationRecord::new(params, meta, generated);
        EmbeddedParameters {
            infotext: infotext(params, meta, generated),
            // Plain data with string keys: serializing cannot fail; an empty record would only lose the chunk.
            record: serde_json::to_string(&record).unwrap_or_default(),
        }
    }
}

/// sdxlrt's own record of an image (the PNG `sdxlrt` chunk): the prompts and settings the reply's metadata does not
/// repeat, and that metadata itself, so the image can be made again exactly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationRecord {
    /// `sdxlrt <version>`.
    pub generator: String,
    /// `data.prompt` without its LoRA tags (they are in `metadata.loras`).
    pub prompt: String,
    /// `data.negative_prompt`; null when none was sent (not the same as `""`: see the README).
    pub negative_prompt: Option<String>,
    /// `data.prompt_2`, when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_2: Option<String>,
    /// `data.negative_prompt_2`, when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt_2: Option<String>,
    /// `data.prompt_syntax`: `plain` or `weighted`.
    pub prompt_syntax: &'static str,
    /// The width the model generated at.
    pub width: u32,
    /// The height the model generated at.
    pub height: u32,
    /// `hyperparameters.refiner_switch_at`, with a refiner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refiner_switch_at: Option<f64>,
    /// The refiner's aesthetic scores `[positive, negative]`, with a refiner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refiner_aesthetic_scores: Option<[f32; 2]>,
    /// `dimensions.original_size`, `target_size`, `crops_coords_top_left`, when any differs from the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_conditioning: Option<Value>,
    /// `padding_mask_crop`, when inpainting only the mask's area.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub padding_mask_crop: Option<u32>,
    /// The image's reply metadata (`data.generated_images[i].metadata`).
    pub metadata: ImageMetadata,
}

impl GenerationRecord {
    fn new(params: &GenerateParams, meta: &ImageMetadata, (width, height): (u32, u32)) -> Self {
        let refiner = meta.model_info.refiner_model.is_some();
        let (aesthetic, negative_aesthetic) = params.aesthetic_scores();
        GenerationRecord {
            generator: generator(),
            prompt: params.prompt.clone(),
            negative_prompt: params.negative_prompt.clone(),
            prompt_2: params.prompt_2.clone(),
            negative_prompt_2: params.negative_prompt_2.clone(),
            prompt_syntax: match params.prompt_syntax {
                PromptSyntax::Plain => "plain",
                PromptSyntax::Weighted => "weighted",
            },
            width,
            height,
            refiner_switch_at: refiner.then_some(params.refiner_switch_at),
            refiner_aesthetic_scores: refiner.then_some([aesthetic, negative_aesthetic]),
            micro_conditioning: micro_conditioning(&params.micro),
            padding_mask_crop: params.padding_mask_crop,
            metadata: meta.clone(),
        }
    }
}

fn micro_conditioning(m: &MicroConditioning) -> Option<Value> {
    if *m == MicroConditioning::default() {
        return None;
    }
    let size = |s: Option<(u32, u32)>| s.map(|(width, height)| serde_json::json!({"width": width, "height": height}));
    let (top, left) = m.crops_coords_top_left;
    Some(serde_json::json!({
        "original_size": size(m.original_size),
        "target_size": size(m.target_size),
        "crops_coords_top_left": {"top": top, "left": left},
    }))
}

/// `sdxlrt <version>`: the `Version` A1111 readers show.
pub fn generator() -> String {
    format!("sdxlrt {}", env!("CARGO_PKG_VERSION"))
}

/// A1111's infotext for one image (see the module docs for what is written).
pub fn infotext(params: &GenerateParams, meta: &ImageMetadata, generated: (u32, u32)) -> String {
    let prompt = prompt_with_lora_tags(&params.prompt, &meta.loras);
    let negative = match params.negative_prompt.as_deref() {
        Some(n) if !n.is_empty() => format!("\nNegative prompt: {n}"),
        _ => String::new(),
    };
    let fields: Vec<String> =
        generation_params(params, meta, generated).into_iter().map(|(k, v)| format!("{k}: {}", quote(&v))).collect();
    format!("{prompt}{negative}\n{}", fields.join(", ")).trim().to_string()
}

/// The `key: value` pairs of the infotext's last line, in A1111's order (`create_infotext`'s `generation_params`).
pub fn generation_params(
    params: &GenerateParams,
    meta: &ImageMetadata,
    (width, height): (u32, u32),
) -> Vec<(String, String)> {
    let (sampler, schedule) = a1111_sampler(&meta.scheduler, meta.scheduler_options.as_ref());
    let fields: Vec<(&'static str, Option<String>)> = vec![
        ("Steps", Some(meta.steps.to_string())),
        ("Sampler", Some(sampler)),
        ("Schedule type", schedule.map(str::to_string)),
        ("CFG scale", Some(meta.guidance_scale.to_string())),
        ("Seed", Some(meta.seed.to_string())),
        ("Size", Some(format!("{width}x{height}"))),
        ("Model", meta.model_info.base_model.clone()),
        ("VAE", meta.model_info.vae_model.clone()),
        (
            "Denoising strength",
            meta.init_image
                .as_ref()
                .map(|i| i.strength)
                .or(meta.hires.as_ref().map(|h| h.strength))
                .map(|s| s.to_string()),
        ),
        ("RNG", Some("CPU".into())),
    ];
    let mut pairs: Vec<(String, String)> =
        fields.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))).collect();
    pairs.extend(extra_params(params, meta));
    pairs.push(("Version".into(), generator()));
    pairs
}

/// A1111's `extra_generation_params`: the settings of optional features, written after the fixed fields and before
/// `Version`, in A1111's (or sd-webui-controlnet's) names. A new feature adds its pairs here.
fn extra_params(params: &GenerateParams, meta: &ImageMetadata) -> Vec<(String, String)> {
    let mut extra = Vec::new();
    let mut push = |key: &str, value: String| extra.push((key.to_string(), value));
    // The key A1111's CFG Rescale extension (and its forks) writes; A1111 has no built-in rescale.
    if let Some(phi) = meta.guidance_rescale {
        push("CFG Rescale", phi.to_string());
    }
    if let Some(refiner) = &meta.model_info.refiner_model {
        push("Refiner", refiner.clone());
        push("Refiner switch at", params.refiner_switch_at.to_string());
    }
    if let Some(mask) = meta.init_image.as_ref().and_then(|i| i.mask.as_ref()) {
        if mask.blur > 0.0 {
            push("Mask blur", mask.blur.to_string());
        }
        if let Some(padding) = params.padding_mask_crop {
            push("Inpaint area", "Only masked".into());
            push("Masked area padding", padding.to_string());
        }
    }
    // sd-webui-controlnet's `ControlNet 0: "Module: canny, Model: …, Weight: …, Guidance Start: …, …"`.
    for (i, unit) in meta.controlnets.iter().enumerate() {
        let mut parts = vec![
            format!("Module: {}", unit.preprocessor.as_ref().map_or("none", |p| p.kind.as_str())),
            format!("Model: {}", unit.model),
            format!("Weight: {}", unit.conditioning_scale),
        ];
        if let Some(p) = &unit.preprocessor {
            parts.push(format!("Threshold A: {}", p.low_threshold));
            parts.push(format!("Threshold B: {}", p.high_threshold));
        }
        parts.push(format!("Guidance Start: {}", unit.guidance_start));
        parts.push(format!("Guidance End: {}", unit.guidance_end));
        if unit.guess_mode {
            // The unit field sd-webui-controlnet wrote before its "Control Mode" replaced guess mode.
            parts.push("Guess Mode: True".into());
        }
        push(&format!("ControlNet {i}"), parts.join(", "));
    }
    // A1111's txt2img: `Hires upscale` (hr_scale) or `Hires resize` (`{hr_resize_x}x{hr_resize_y}`, 0 for a side
    // left out), `Hires steps` only when set, `Hires upscaler` in A1111's display names; `Size` stays the first
    // pass's and `Denoising strength` is the fixed field's.
    if let Some(hires) = &params.hires {
        match hires.target {
            HiresTarget::Scale(scale) => push("Hires upscale", scale.to_string()),
            HiresTarget::Size { width, height } => {
                push("Hires resize", format!("{}x{}", width.unwrap_or(0), height.unwrap_or(0)))
            }
        }
        if let Some(steps) = hires.steps {
            push("Hires steps", steps.to_string());
        }
        push("Hires upscaler", hires.upscaler.a1111_name().to_string());
    }
    if let Some(p2) = params.prompt_2.as_deref().filter(|p| !p.is_empty()) {
        push("Prompt 2", p2.to_string());
    }
    if let Some(n2) = params.negative_prompt_2.as_deref().filter(|p| !p.is_empty()) {
        push("Negative prompt 2", n2.to_string());
    }
    if let Some(u) = &meta.upscale {
        push("Postprocess upscale by", u.factor.to_string());
        push("Postprocess upscaler", u.model.clone());
    }
    extra
}

/// `prompt` with each LoRA appended as an A1111 tag, as A1111's own infotext keeps the tags in the prompt.
fn prompt_with_lora_tags(prompt: &str, loras: &[LoraInfo]) -> String {
    let mut text = prompt.to_string();
    for lora in loras {
        let te = lora.text_encoder_weight.unwrap_or(lora.weight);
        let unet = lora.unet_weight.unwrap_or(lora.weight);
        let tag =
            if te == unet { format!("<lora:{}:{te}>", lora.name) } else { format!("<lora:{}:{te}:{unet}>", lora.name) };
        if !text.is_empty() && !text.ends_with(char::is_whitespace) {
            text.push(' ');
        }
        text.push_str(&tag);
    }
    text
}

/// A1111's `infotext_utils.quote`: a value holding `,`, `:` or a line break becomes a JSON string (Python's
/// `json.dumps(text, ensure_ascii=False)`, which escapes `"`, `\` and control characters as serde_json does).
pub fn quote(value: &str) -> String {
    if value.contains([',', ':', '\n']) {
        serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
    } else {
        value.to_string()
    }
}

/// A1111's `Sampler` and `Schedule type` for a diffusers scheduler class and the options in force that differ from
/// its defaults (`metadata.scheduler`, `metadata.scheduler_options`): the inverse of the names sdxlrt accepts
/// (diffusers' scheduler overview table), so the infotext's sampler reads back as the same scheduler. The schedule
/// type is written only for the named sigma schedules (`Karras`, `Exponential`, `Beta`): diffusers' default
/// spacing has no exact A1111 name (A1111 reads a missing one as `Automatic`). A class or option set without an
/// A1111 name keeps its diffusers class name.
pub fn a1111_sampler(class: &str, options: Option<&Map<String, Value>>) -> (String, Option<&'static str>) {
    let option = |key: &str| options.and_then(|o| o.get(key));
    let flag = |key: &str| option(key).and_then(Value::as_bool).unwrap_or(false);
    let schedule = if flag("use_karras_sigmas") {
        Some("Karras")
    } else if flag("use_exponential_sigmas") {
        Some("Exponential")
    } else if flag("use_beta_sigmas") {
        Some("Beta")
    } else {
        None
    };
    let sampler = match class {
        "EulerDiscreteScheduler" => "Euler",
        "EulerAncestralDiscreteScheduler" => "Euler a",
        "HeunDiscreteScheduler" => "Heun",
        "LMSDiscreteScheduler" => "LMS",
        "DDIMScheduler" => "DDIM",
        "UniPCMultistepScheduler" => "UniPC",
        "KDPM2DiscreteScheduler" => "DPM2",
        "KDPM2AncestralDiscreteScheduler" => "DPM2 a",
        "DPMSolverSinglestepScheduler" => "DPM++ SDE",
        "DPMSolverMultistepScheduler" => {
            let order_two = option("solver_order").and_then(Value::as_u64).is_none_or(|o| o == 2);
            match option("algorithm_type").and_then(Value::as_str) {
                None | Some("dpmsolver++") if order_two => "DPM++ 2M",
                Some("sde-dpmsolver++") if order_two => "DPM++ 2M SDE",
                _ => class,
            }
        }
        _ => class,
    };
    (sampler.to_string(), schedule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(v: Value) -> Map<String, Value> {
        v.as_object().expect("an object").clone()
    }

    use crate::protocol::normalize::{parse_request, RequestLimits};
    use crate::protocol::response::{
        ControlNetInfo, HiresInfo, InitImageInfo, MaskInfo, ModelInfo, PreprocessorInfo, UpscaleInfo,
    };

    /// The validated request of `data`.
    fn params(data: Value) -> GenerateParams {
        parse_request(&json!({ "data": data }).to_string(), &RequestLimits::default()).expect("a valid request").params
    }

    /// The metadata the engine would reply for a 30-step DPM++ 2M Karras image of `sdxl-base`, seed 42.
    fn meta() -> ImageMetadata {
        ImageMetadata {
            seed: 42,
            steps: 30,
            guidance_scale: 5.0,
            guidance_rescale: None,
            clip_skip: None,
            scheduler: "DPMSolverMultistepScheduler".into(),
            scheduler_options: Some(options(json!({"use_karras_sigmas": true, "steps_offset": 1}))),
            model_info: ModelInfo { base_model: Some("sdxl-base".into()), ..Default::default() },
            loras: Vec::new(),
            controlnets: Vec::new(),
            upscale: None,
            hires: None,
            init_image: None,
            prompt: None,
        }
    }

    fn version() -> String {
        format!("Version: sdxlrt {}", env!("CARGO_PKG_VERSION"))
    }

    #[test]
    fn txt2img_infotext_is_prompt_negative_line_then_a1111s_fields_in_order() {
        let p = params(json!({"prompt": "a lighthouse at dusk", "negative_prompt": "blurry"}));
        assert_eq!(
            infotext(&p, &meta(), (1024, 1024)),
            format!(
                "a lighthouse at dusk\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, \
                 CFG scale: 5, Seed: 42, Size: 1024x1024, Model: sdxl-base, RNG: CPU, {}",
                version()
            )
        );
    }

    #[test]
    fn no_or_an_empty_negative_prompt_writes_no_negative_prompt_line() {
        let mut m = meta();
        m.scheduler = "EulerDiscreteScheduler".into();
        m.scheduler_options = None;
        m.guidance_scale = 7.5;
        let expected = format!(
            "a cat\nSteps: 30, Sampler: Euler, CFG scale: 7.5, Seed: 42, Size: 832x1216, Model: sdxl-base, RNG: CPU, {}",
            version()
        );
        assert_eq!(infotext(&params(json!({"prompt": "a cat"})), &m, (832, 1216)), expected);
        assert_eq!(infotext(&params(json!({"prompt": "a cat", "negative_prompt": ""})), &m, (832, 1216)), expected);
    }

    #[test]
    fn img2img_inpaint_refiner_vae_and_upscale_add_their_fields_in_a1111s_places() {
        let p = params(json!({
            "prompt": "a castle", "negative_prompt": "fog",
            "models": {"base": "sdxl-base", "refiner": "sdxl-refiner", "vae": "fp16-fix"},
            "hyperparameters": {"refiner_switch_at": 0.7, "strength": 0.6},
            "init_image": "in.png", "mask_image": "mask.png", "mask_blur": 4, "padding_mask_crop": 32,
        }));
        let mut m = meta();
        m.model_info.refiner_model = Some("sdxl-refiner".into());
        m.model_info.vae_model = Some("fp16-fix".into());
        m.init_image = Some(InitImageInfo {
            strength: 0.6,
            denoising_steps: 18,
            source_width: 800,
            source_height: 600,
            mask_crop: Some([0, 0, 400, 300]),
            mask: Some(MaskInfo { blur: 4.0, redrawn_fraction: 0.25 }),
        });
        m.upscale = Some(UpscaleInfo { model: "4x-UltraSharp".into(), factor: 2, model_scale: 4, passes: 1 });
        assert_eq!(
            infotext(&p, &m, (1024, 768)),
            format!(
                "a castle\nNegative prompt: fog\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, \
                 Seed: 42, Size: 1024x768, Model: sdxl-base, VAE: fp16-fix, Denoising strength: 0.6, RNG: CPU, \
                 Refiner: sdxl-refiner, Refiner switch at: 0.7, Mask blur: 4, Inpaint area: Only masked, \
                 Masked area padding: 32, Postprocess upscale by: 2, Postprocess upscaler: 4x-UltraSharp, {}",
                version()
            )
        );
    }

    #[test]
    fn loras_become_prompt_tags_and_controlnet_units_are_quoted_values() {
        let p = params(json!({
            "prompt": "a robot <lora:ink:0.5>",
            "lora": {"models": [{"name": "detail", "weight": 0.8, "unet_weight": 1.0}]},
        }));
        let mut m = meta();
        m.loras = p.loras.iter().map(Into::into).collect();
        m.controlnets = vec![
            ControlNetInfo {
                model: "canny-sdxl".into(),
                kind: Some("canny".into()),
                conditioning_scale: 0.8,
                guidance_start: 0.0,
                guidance_end: 1.0,
                preprocessor: Some(PreprocessorInfo {
                    kind: "canny".into(),
                    low_threshold: 100.0,
                    high_threshold: 200.0,
                }),
                guess_mode: true,
                global_pool_conditions: false,
                passes: Vec::new(),
            },
            ControlNetInfo {
                model: "depth".into(),
                kind: None,
                conditioning_scale: 1.0,
                guidance_start: 0.1,
                guidance_end: 0.9,
                preprocessor: None,
                guess_mode: false,
                global_pool_conditions: false,
                passes: Vec::new(),
            },
        ];
        assert_eq!(
            infotext(&p, &m, (64, 64)),
            format!(
                "a robot <lora:detail:0.8:1> <lora:ink:0.5>\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, \
                 CFG scale: 5, Seed: 42, Size: 64x64, Model: sdxl-base, RNG: CPU, \
                 ControlNet 0: \"Module: canny, Model: canny-sdxl, Weight: 0.8, Threshold A: 100, Threshold B: 200, \
                 Guidance Start: 0, Guidance End: 1, Guess Mode: True\", \
                 ControlNet 1: \"Module: none, Model: depth, Weight: 1, Guidance Start: 0.1, Guidance End: 0.9\", {}",
                version()
            )
        );
    }

    #[test]
    fn guidance_rescale_is_written_under_the_cfg_rescale_extensions_key_only_when_applied() {
        let mut m = meta();
        let p = params(json!({"prompt": "x", "hyperparameters": {"guidance_rescale": 0.7}}));
        assert!(!infotext(&p, &m, (64, 64)).contains("CFG Rescale"));
        m.guidance_rescale = Some(0.7);
        let pairs = generation_params(&p, &m, (64, 64));
        assert!(pairs.contains(&("CFG Rescale".to_string(), "0.7".to_string())), "{pairs:?}");
    }

    #[test]
    fn hires_fix_writes_a1111s_hires_fields_and_its_denoising_strength() {
        let mut m = meta();
        m.hires = Some(HiresInfo {
            width: 1536,
            height: 1536,
            first_pass_width: 1024,
            first_pass_height: 1024,
            upscaler: "latent".into(),
            strength: 0.55,
            steps: 20,
            denoising_steps: 11,
            model_passes: None,
            controlnet: None,
        });
        let scaled = params(json!({"prompt": "x", "hires": {"scale": 1.5, "strength": 0.55, "steps": 20}}));
        assert_eq!(
            generation_params(&scaled, &m, (1024, 1024))
                .into_iter()
                .filter(|(k, _)| k.starts_with("Hires") || k == "Denoising strength" || k == "Size")
                .collect::<Vec<_>>(),
            [
                ("Size", "1024x1024"),
                ("Denoising strength", "0.55"),
                ("Hires upscale", "1.5"),
                ("Hires steps", "20"),
                ("Hires upscaler", "Latent"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let sized = params(json!({"prompt": "x", "hires": {"width": 1536, "upscaler": "latent-nearest-exact"}}));
        let text = infotext(&sized, &m, (1024, 1024));
        assert!(
            text.contains("RNG: CPU, Hires resize: 1536x0, Hires upscaler: Latent (nearest-exact), Version"),
            "no Hires steps when the first pass's are used: {text}"
        );
        for name in ["Latent", "Latent (nearest)", "Latent (nearest-exact)", "Lanczos"] {
            let p = params(json!({"prompt": "x", "hires": {"upscaler": name}}));
            let written = p.hires.as_ref().unwrap().upscaler.a1111_name();
            assert_eq!(written, name, "A1111's name reads back as the same upscaler");
        }
    }

    #[test]
    fn values_with_commas_are_quoted_in_the_fields_line() {
        let p = params(json!({"prompt": "x", "prompt_2": "oil painting, warm light", "negative_prompt_2": "text"}));
        let mut m = meta();
        m.model_info.base_model = Some("my model, v2".into());
        let text = infotext(&p, &m, (64, 64));
        let fields = text.lines().last().unwrap();
        assert!(fields.contains(r#"Model: "my model, v2", RNG: CPU"#), "{fields}");
        assert!(
            fields.contains(r#"Prompt 2: "oil painting, warm light", Negative prompt 2: text, Version"#),
            "{fields}"
        );
    }

    #[test]
    fn the_record_keeps_what_the_infotext_cannot_say() {
        let p = params(
            json!({"prompt": "a <lora:ink:0.5>", "dimensions": {"original_size": {"width": 512, "height": 512}}}),
        );
        let mut m = meta();
        m.loras = p.loras.iter().map(Into::into).collect();
        let record: Value = serde_json::from_str(&EmbeddedParameters::new(&p, &m, (64, 64)).record).unwrap();
        assert_eq!(record["generator"], format!("sdxlrt {}", env!("CARGO_PKG_VERSION")));
        assert_eq!(record["prompt"], "a ");
        assert!(record["negative_prompt"].is_null(), "none sent: null, not \"\"");
        assert_eq!(record["prompt_syntax"], "plain");
        assert_eq!((record["width"].as_u64(), record["height"].as_u64()), (Some(64), Some(64)));
        assert_eq!(record["micro_conditioning"]["original_size"], json!({"width": 512, "height": 512}));
        assert_eq!(record["metadata"], serde_json::to_value(&m).unwrap());
        assert_eq!(record["metadata"]["loras"][0]["name"], "ink");
    }

    #[test]
    fn sampler_names_are_a1111s_and_read_back_as_the_same_scheduler() {
        let cases = [
            ("EulerDiscreteScheduler", json!({}), "Euler", None),
            ("EulerAncestralDiscreteScheduler", json!({}), "Euler a", None),
            ("DPMSolverMultistepScheduler", json!({"use_karras_sigmas": true}), "DPM++ 2M", Some("Karras")),
            (
                "DPMSolverMultistepScheduler",
                json!({"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": true}),
                "DPM++ 2M SDE",
                Some("Karras"),
            ),
            ("DPMSolverMultistepScheduler", json!({"use_exponential_sigmas": true}), "DPM++ 2M", Some("Exponential")),
            ("DPMSolverSinglestepScheduler", json!({}), "DPM++ SDE", None),
            ("KDPM2AncestralDiscreteScheduler", json!({}), "DPM2 a", None),
            ("UniPCMultistepScheduler", json!({"use_karras_sigmas": false}), "UniPC", None),
            // No A1111 name: the diffusers class, which sdxlrt also accepts.
            ("DPMSolverMultistepScheduler", json!({"solver_order": 3}), "DPMSolverMultistepScheduler", None),
            (
                "DPMSolverMultistepScheduler",
                json!({"algorithm_type": "dpmsolver"}),
                "DPMSolverMultistepScheduler",
                None,
            ),
        ];
        for (class, opts, sampler, schedule) in cases {
            let opts = options(opts);
            assert_eq!(a1111_sampler(class, Some(&opts)), (sampler.to_string(), schedule), "{class} {opts:?}");
            // The name (with its schedule, A1111's pre-1.9 spelling) resolves to the same class.
            let name = match schedule {
                Some(s) => format!("{sampler} {s}"),
                None => sampler.to_string(),
            };
            let model = crate::schedulers::SchedulerConfig::default();
            let resolved = crate::schedulers::resolve(Some(&name), &Map::new(), &model);
            assert_eq!(resolved.map(|r| r.class_name).ok(), Some(class), "{name}");
        }
        assert_eq!(a1111_sampler("EulerDiscreteScheduler", None), ("Euler".to_string(), None));
        let beta = options(json!({"use_beta_sigmas": true}));
        assert_eq!(a1111_sampler("EulerDiscreteScheduler", Some(&beta)), ("Euler".to_string(), Some("Beta")));
    }

    #[test]
    fn values_with_commas_colons_or_newlines_are_json_quoted_as_a1111_does() {
        assert_eq!(quote("sdxl-base"), "sdxl-base");
        assert_eq!(quote("a, b"), r#""a, b""#);
        assert_eq!(quote("Module: canny"), r#""Module: canny""#);
        assert_eq!(quote("two\nlines"), r#""two\nlines""#);
        // json.dumps(..., ensure_ascii=False): quotes and backslashes escaped, other text kept.
        assert_eq!(quote(r#"say "hi", \o/ 猫"#), r#""say \"hi\", \\o/ 猫""#);
        assert_eq!(quote("a \"quoted\" word"), "a \"quoted\" word", "no , : or newline: written as is");
    }

    #[test]
    fn lora_tags_are_appended_to_the_prompt() {
        let lora = |name: &str, weight: f32, unet: Option<f32>, te: Option<f32>| LoraInfo {
            name: name.into(),
            weight,
            unet_weight: unet,
            text_encoder_weight: te,
        };
        assert_eq!(prompt_with_lora_tags("a cat", &[]), "a cat");
        assert_eq!(
            prompt_with_lora_tags("a cat", &[lora("detail", 0.8, None, None), lora("ink", 1.0, Some(0.5), None)]),
            "a cat <lora:detail:0.8> <lora:ink:1:0.5>"
        );
        assert_eq!(prompt_with_lora_tags("", &[lora("x", 1.0, None, Some(0.25))]), "<lora:x:0.25:1>");
        assert_eq!(prompt_with_lora_tags("a cat ", &[lora("x", 1.0, Some(1.0), None)]), "a cat <lora:x:1>");
    }
}
