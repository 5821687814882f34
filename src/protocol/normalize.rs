//! Turns request JSON into the validated [`GenerateParams`]: parse, decode the wire shape, resolve defaults and
//! legacy fields, check every value, and refuse features this version does not implement.
//!
//! Every error names the field's JSON path and the values it accepts. Warnings (unknown fields, settings that
//! have no effect) go back to the caller in the response; they never fail a request.
//!
//! Defaults, where the request leaves a field out or sends null: 50 steps and guidance 5.0 (diffusers'
//! `StableDiffusionXLPipeline.__call__`), a random seed, strength 0.8, the model's own size and scheduler, one
//! image, PNG at quality 95, image data returned when there is no `save_path`, no timeout.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::params::{
    GenerateParams, ImageFormat, LoraRequest, MicroConditioning, OutputParams, Priority, SchedulerChoice,
};
use crate::protocol::wire::{WireData, WireDimensions, WireRequest, WireScheduler, WireSize};

/// Accepted `message_type` values.
pub const MESSAGE_TYPES: [&str; 2] = ["inference_request", "enhanced_inference_request"];
/// Accepted `data.worker_type` values. Both are served by the same engine.
pub const WORKER_TYPES: [&str; 2] = ["sdxl_worker", "enhanced_sdxl_worker"];
/// Default `data.hyperparameters.num_inference_steps` (diffusers' default).
pub const DEFAULT_STEPS: u32 = 50;
/// Default `data.hyperparameters.guidance_scale` (diffusers' SDXL default).
pub const DEFAULT_GUIDANCE_SCALE: f32 = 5.0;
/// Largest accepted `clip_skip` (SDXL's CLIP ViT-L has 12 layers; a model's own count is checked when it runs).
pub const MAX_CLIP_SKIP: i64 = 11;
/// Largest accepted `guidance_scale`.
pub const MAX_GUIDANCE_SCALE: f64 = 100.0;
/// Default `data.hyperparameters.strength` (the seed's C# default).
pub const DEFAULT_STRENGTH: f64 = 0.8;
/// Default `data.hyperparameters.refiner_switch_at`: diffusers' documented `high_noise_frac` and A1111's default
/// "switch at".
pub const DEFAULT_REFINER_SWITCH_AT: f64 = 0.8;
/// Default `data.hyperparameters.refiner_aesthetic_score` (diffusers' `aesthetic_score`).
pub const DEFAULT_AESTHETIC_SCORE: f32 = 6.0;
/// Default `data.hyperparameters.refiner_negative_aesthetic_score` (diffusers' `negative_aesthetic_score`).
pub const DEFAULT_NEGATIVE_AESTHETIC_SCORE: f32 = 2.5;
/// Largest accepted aesthetic score: the refiner was trained on 0–10 ratings; a bound catches typos only.
pub const MAX_AESTHETIC_SCORE: f64 = 10.0;
/// Largest accepted `data.mask_blur` (pixels): far past any useful blur (A1111's slider stops at 64), it catches
/// typos and keeps Pillow's `float` radius and 24-bit box weights in range.
pub const MAX_MASK_BLUR: f64 = 1024.0;
/// Default `data.output.quality`.
pub const DEFAULT_QUALITY: u8 = 95;
/// Random seeds are drawn from `0..RANDOM_SEED_BOUND` (2^32), so every caller's integer type can hold them.
pub const RANDOM_SEED_BOUND: u64 = 1 << 32;

/// Upper bounds on what a request may ask for. They protect the process, not the model: the engine may refuse
/// sizes its model cannot do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest accepted request text in bytes. Default 1 MiB.
    pub max_json_bytes: usize,
    /// Largest `width` in pixels. Default 4096.
    pub max_width: u32,
    /// Largest `height` in pixels. Default 4096.
    pub max_height: u32,
    /// Largest `width * height`. Default 4096 * 4096.
    pub max_pixels: u64,
    /// Largest `num_inference_steps`. Default 500.
    pub max_steps: u32,
    /// Largest `batch.size`. Default 16.
    pub max_batch: u32,
    /// Most LoRA models in one request. Default 8.
    pub max_loras: u32,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_json_bytes: 1 << 20,
            max_width: 4096,
            max_height: 4096,
            max_pixels: 4096 * 4096,
            max_steps: 500,
            max_batch: 16,
            max_loras: 8,
        }
    }
}

impl RequestLimits {
    /// Checks a final image size against the limits (multiples of 8, maxima, pixel count).
    ///
    /// [`parse_request`] calls it when the request gives both sides; the engine should call it again once it
    /// has filled a missing side from the model's default.
    pub fn check_size(&self, width: u32, height: u32) -> Result<()> {
        check_side("data.dimensions.width", width.into(), self.max_width)?;
        check_side("data.dimensions.height", height.into(), self.max_height)?;
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(Error::field(
                "data.dimensions",
                format!("{width}x{height} is {pixels} pixels; at most {} are allowed", self.max_pixels),
            ));
        }
        Ok(())
    }
}

/// A validated request and the warnings met on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    /// What to generate.
    pub params: GenerateParams,
    /// Things the caller should know but that do not stop the request (e.g. `ignored unknown field data.foo`).
    pub warnings: Vec<String>,
}

/// Parses, decodes and validates one request (envelope or bare `data` object).
pub fn parse_request(json: &str, limits: &RequestLimits) -> Result<ParsedRequest> {
    if json.len() > limits.max_json_bytes {
        return Err(Error::InvalidJson(format!(
            "the request is {} bytes; at most {} are accepted",
            json.len(),
            limits.max_json_bytes
        )));
    }
    // serde_json's message ends with "at line L column C".
    let value: Value = serde_json::from_str(json).map_err(|e| Error::InvalidJson(e.to_string()))?;
    let mut warnings = Vec::new();
    let wire = WireRequest::from_value(&value, &mut warnings)?;
    let params = normalize(&wire, limits, &mut warnings)?;
    Ok(ParsedRequest { params, warnings })
}

/// Validates a decoded request and resolves its defaults, legacy fields and random seed.
pub fn normalize(wire: &WireRequest, limits: &RequestLimits, warnings: &mut Vec<String>) -> Result<GenerateParams> {
    if let Some(mt) = &wire.message_type {
        if !MESSAGE_TYPES.contains(&mt.as_str()) {
            return Err(Error::field("message_type", format!("must be {}, got {mt:?}", one_of(&MESSAGE_TYPES))));
        }
    }
    let d = &wire.data;
    if let Some(wt) = &d.worker_type {
        if !WORKER_TYPES.contains(&wt.as_str()) {
            return Err(Error::field("data.worker_type", format!("must be {}, got {wt:?}", one_of(&WORKER_TYPES))));
        }
    }

    let prompt = match &d.prompt {
        Some(p) if !p.trim().is_empty() => p.clone(),
        Some(_) => return Err(Error::field("data.prompt", "must not be empty")),
        None => return Err(Error::field("data.prompt", "missing: a request needs a non-empty prompt")),
    };

    let (prompt, tagged) = super::prompt_tags::extract(&prompt)?;
    if prompt.trim().is_empty() {
        return Err(Error::field("data.prompt", "holds only LoRA tags; give some text too"));
    }
    for (field, text) in [
        ("data.negative_prompt", &d.negative_prompt),
        ("data.prompt_2", &d.prompt_2),
        ("data.negative_prompt_2", &d.negative_prompt_2),
    ] {
        if let Some(text) = text {
            super::prompt_tags::refuse_in(field, text)?;
        }
    }
    let prompt_syntax = match &d.prompt_syntax {
        Some(name) => super::prompt_syntax::PromptSyntax::parse(name)?,
        None => super::prompt_syntax::PromptSyntax::Plain,
    };
    if prompt_syntax == super::prompt_syntax::PromptSyntax::Weighted {
        // Syntax errors surface here, naming the field, before any model loads.
        for (field, text) in [
            ("data.prompt", Some(&prompt)),
            ("data.negative_prompt", d.negative_prompt.as_ref()),
            ("data.prompt_2", d.prompt_2.as_ref()),
            ("data.negative_prompt_2", d.negative_prompt_2.as_ref()),
        ] {
            if let Some(text) = text {
                super::prompt_syntax::parse_attention(field, text)?;
            }
        }
    }
    // diffusers: `prompt_2 or prompt` (an empty string falls back too).
    let second = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
    let model = resolve_model(d)?;
    let loras = lora_requests(d, tagged, warnings)?;
    if loras.len() > limits.max_loras as usize {
        let tags = loras.iter().filter(|l| l.field == super::prompt_tags::FIELD).count();
        let counted =
            if tags > 0 { format!(" ({tags} of them <lora:…> tags in data.prompt)") } else { String::new() };
        return Err(Error::field(
            "data.lora.models",
            format!("{} LoRA models{counted}; at most {} are allowed per request", loras.len(), limits.max_loras),
        ));
    }

    let h = d.hyperparameters.clone().unwrap_or_default();
    let steps = merge(
        "data.num_inference_steps",
        d.num_inference_steps,
        "data.hyperparameters.num_inference_steps",
        h.num_inference_steps,
    )?;
    let steps = match steps {
        None if DEFAULT_STEPS <= limits.max_steps => DEFAULT_STEPS,
        None => {
            return Err(Error::field(
                "data.hyperparameters.num_inference_steps",
                format!(
                    "the default of {DEFAULT_STEPS} steps is over this engine's limit of {}; give num_inference_steps",
                    limits.max_steps
                ),
            ))
        }
        Some(s) if s >= 1 && s <= i64::from(limits.max_steps) => s as u32,
        Some(s) => {
            return Err(Error::field(
                "data.hyperparameters.num_inference_steps",
                format!("must be an integer from 1 to {}, got {s}", limits.max_steps),
            ))
        }
    };

    let guidance =
        merge("data.guidance_scale", d.guidance_scale, "data.hyperparameters.guidance_scale", h.guidance_scale)?;
    let guidance_scale = match guidance {
        None => DEFAULT_GUIDANCE_SCALE,
        Some(g) if g.is_finite() && (0.0..=MAX_GUIDANCE_SCALE).contains(&g) => g as f32,
        Some(g) => {
            return Err(Error::field(
                "data.hyperparameters.guidance_scale",
                format!("must be a number from 0 to {MAX_GUIDANCE_SCALE} (CFG runs above 1), got {g}"),
            ))
        }
    };

    let guidance_rescale = match h.guidance_rescale {
        None => 0.0,
        Some(r) if (0.0..=1.0).contains(&r) => r as f32,
        Some(r) => {
            return Err(Error::field(
                "data.hyperparameters.guidance_rescale",
                format!("must be a number from 0 (off) to 1, got {r}"),
            ))
        }
    };

    if guidance_rescale > 0.0 && guidance_scale <= 1.0 {
        warnings.push(format!(
            "data.hyperparameters.guidance_rescale is ignored: it rescales guidance, and guidance_scale {guidance_scale} \
             (at most 1) runs none"
        ));
    }

    let clip_skip = match h.clip_skip {
        None | Some(0) => 0,
        Some(_) if prompt_syntax == super::prompt_syntax::PromptSyntax::Weighted => {
            return Err(Error::field(
                "data.hyperparameters.clip_skip",
                "is not built for data.prompt_syntax \"weighted\" yet (its reference, compel, reads only the \
                 penultimate layer); use the plain syntax or leave clip_skip out",
            ))
        }
        Some(c) if (1..=MAX_CLIP_SKIP).contains(&c) => c as u32,
        Some(c) => {
            return Err(Error::field(
                "data.hyperparameters.clip_skip",
                format!("must be an integer from 0 (SDXL's penultimate layer) to {MAX_CLIP_SKIP}, got {c}"),
            ))
        }
    };

    let seed = merge("data.seed", d.seed, "data.hyperparameters.seed", h.seed)?;
    let seed = match seed {
        None | Some(-1) => random_seed(),
        Some(s) => u64::try_from(s).map_err(|_| {
            Error::field(
                "data.hyperparameters.seed",
                format!("must be -1 or null (random) or an integer from 0 to {}, got {s}", u64::MAX),
            )
        })?,
    };

    let strength = merge("data.strength", d.strength, "data.hyperparameters.strength", h.strength)?;
    let strength = match strength {
        None => DEFAULT_STRENGTH,
        Some(s) if (0.0..=1.0).contains(&s) => s,
        Some(s) => {
            return Err(Error::field("data.hyperparameters.strength", format!("must be a number from 0 to 1, got {s}")))
        }
    };
    let image_text = |field: &str, text: &Option<String>| match text {
        Some(t) if t.trim().is_empty() => {
            Err(Error::field(field, "is empty: give a file path, a data: URL or base64 image data"))
        }
        other => Ok(other.clone()),
    };
    let init_image = image_text("data.init_image", &d.init_image)?;
    let mask_image = image_text("data.mask_image", &d.mask_image)?;
    if mask_image.is_some() && init_image.is_none() {
        return Err(Error::field("data.mask_image", "needs data.init_image, the image whose masked part is redrawn"));
    }
    let padding_mask_crop = match d.padding_mask_crop {
        None => None,
        Some(_) if mask_image.is_none() => {
            return Err(Error::field(
                "data.padding_mask_crop",
                "needs data.mask_image: it inpaints only the area around the mask",
            ))
        }
        Some(pad) => Some(u32::try_from(pad).map_err(|_| {
            Error::field("data.padding_mask_crop", format!("must be a number of pixels from 0 up, got {pad}"))
        })?),
    };
    let mask_blur = match d.mask_blur {
        None => None,
        Some(_) if mask_image.is_none() => {
            return Err(Error::field(
                "data.mask_blur",
                "needs data.mask_image: it is the radius the mask is blurred by",
            ))
        }
        Some(r) if (0.0..=MAX_MASK_BLUR).contains(&r) => Some(r),
        Some(r) => {
            return Err(Error::field(
                "data.mask_blur",
                format!("must be a radius in pixels from 0 to {MAX_MASK_BLUR}, got {r}"),
            ))
        }
    };
    if init_image.is_some() && img2img_steps(steps, strength) == 0 {
        return Err(Error::field(
            "data.hyperparameters.strength",
            format!(
                "{strength} leaves none of the {steps} steps to run: image-to-image runs int(steps × strength) steps, \
                 so raise strength to at least {} or use more steps",
                min_img2img_strength(steps)
            ),
        ));
    }

    let named = |name: Option<&String>| name.filter(|n| !n.trim().is_empty()).cloned();
    let refiner = named(d.models.as_ref().and_then(|m| m.refiner.as_ref()));
    let vae = named(d.models.as_ref().and_then(|m| m.vae.as_ref()));
    let refiner_switch_at = match h.refiner_switch_at {
        None => DEFAULT_REFINER_SWITCH_AT,
        Some(f) if f > 0.0 && f < 1.0 => f,
        Some(f) => {
            return Err(Error::field(
                "data.hyperparameters.refiner_switch_at",
                format!("must be a fraction of the steps between 0 and 1 (exclusive), got {f}"),
            ))
        }
    };
    let score = |key: &str, v: Option<f64>, default: f32| -> Result<f32> {
        match v {
            None => Ok(default),
            Some(s) if s.is_finite() && (0.0..=MAX_AESTHETIC_SCORE).contains(&s) => Ok(s as f32),
            Some(s) => Err(Error::field(
                format!("data.hyperparameters.{key}"),
                format!(
                    "must be a number from 0 to {MAX_AESTHETIC_SCORE} (aesthetic scores are ratings of 0-10), got {s}"
                ),
            )),
        }
    };
    // Read even without a refiner: a refiner can also be the base model (refining an init image), which only the
    // engine knows; the pipeline warns when no refiner runs.
    let refiner_aesthetic_scores = match (h.refiner_aesthetic_score, h.refiner_negative_aesthetic_score) {
        (None, None) => None,
        (positive, negative) => Some((
            score("refiner_aesthetic_score", positive, DEFAULT_AESTHETIC_SCORE)?,
            score("refiner_negative_aesthetic_score", negative, DEFAULT_NEGATIVE_AESTHETIC_SCORE)?,
        )),
    };
    if refiner.is_none() && h.refiner_switch_at.is_some() {
        warnings.push("data.hyperparameters.refiner_switch_at is ignored: no data.models.refiner".into());
    }

    let controlnets = super::controlnet::controlnet_requests(d.controlnet.as_ref(), warnings)?;
    let controlnet_guess_mode = super::controlnet::guess_mode(d.controlnet.as_ref(), &controlnets, warnings);
    let hires = super::hires::hires_params(d.hires.as_ref(), steps, limits.max_steps)?;
    if hires.is_some() {
        let other = if init_image.is_some() {
            Some((
                "data.init_image",
                "hires fix is text-to-image's second pass; image-to-image already starts from an image",
            ))
        } else if refiner.is_some() {
            Some(("data.models.refiner", "a refiner after the hires pass is not built"))
        } else {
            None
        };
        if let Some((field, why)) = other {
            return Err(Error::unsupported("data.hires", format!("cannot be combined with {field}: {why}")));
        }
    }
    if let Some(h) = &hires {
        if controlnets.is_empty() && d.hires.as_ref().is_some_and(|w| w.controlnet.is_some()) {
            warnings.push(format!(
                "data.hires.controlnet ({}) is ignored: the request has no ControlNet units",
                h.controlnet.name()
            ));
        }
    }
    let dims = d.dimensions.clone().unwrap_or_default();
    let width = merge("data.width", d.width, "data.dimensions.width", dims.width)?
        .map(|w| check_side("data.dimensions.width", w, limits.max_width))
        .transpose()?;
    let height = merge("data.height", d.height, "data.dimensions.height", dims.height)?
        .map(|h| check_side("data.dimensions.height", h, limits.max_height))
        .transpose()?;
    if let (Some(w), Some(h)) = (width, height) {
        limits.check_size(w, h)?;
    }
    let micro = micro_conditioning(&dims)?;

    let scheduler = d.scheduler.as_ref().map(scheduler_choice).transpose()?;

    let batch = d.batch.clone().unwrap_or_default();
    let batch_size = match batch.size {
        None => 1,
        Some(n) if n >= 1 && n <= i64::from(limits.max_batch) => n as u32,
        Some(n) => {
            return Err(Error::field(
                "data.batch.size",
                format!("must be an integer from 1 to {}, got {n}", limits.max_batch),
            ))
        }
    };
    let batch_parallel = batch.parallel.unwrap_or(false);

    let output = output_params(d, warnings)?;

    let metadata = d.metadata.clone().unwrap_or_default();
    let timeout_secs = match metadata.timeout {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 => Some(t),
        Some(t) => {
            return Err(Error::field("data.metadata.timeout", format!("must be a positive number of seconds, got {t}")))
        }
    };

    let priority = match metadata.priority.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("normal") => Priority::Normal,
        Some("low") => Priority::Low,
        Some("high") => Priority::High,
        Some(other) => {
            return Err(Error::field("data.metadata.priority", format!("must be low, normal or high, got {other:?}")))
        }
    };

    let envelope_id = wire.request_id.clone().filter(|s| !s.is_empty());
    let data_id = metadata.request_id.filter(|s| !s.is_empty());
    let request_id = match (envelope_id, data_id) {
        (Some(e), Some(m)) => {
            if e != m {
                warnings.push(format!(
                    "request_id {e:?} and data.metadata.request_id {m:?} differ; using request_id {e:?}"
                ));
            }
            e
        }
        (Some(id), None) | (None, Some(id)) => id,
        (None, None) => format!("req-{:016x}", random_u64()),
    };

    Ok(GenerateParams {
        request_id,
        prompt,
        negative_prompt: d.negative_prompt.clone(),
        prompt_2: second(&d.prompt_2),
        negative_prompt_2: second(&d.negative_prompt_2),
        prompt_syntax,
        model,
        refiner,
        refiner_switch_at,
        refiner_aesthetic_scores,
        vae,
        steps,
        guidance_scale,
        guidance_rescale,
        clip_skip,
        seed,
        init_image,
        mask_image,
        padding_mask_crop,
        mask_blur,
        strength,
        width,
        height,
        micro,
        scheduler,
        batch_size,
        batch_parallel,
        output,
        timeout_secs,
        priority,
        loras,
        controlnets,
        controlnet_guess_mode,
        hires,
    })
}

/// The steps image-to-image runs for `steps` and `strength`: diffusers' `get_timesteps`,
/// `min(int(steps × strength), steps)` (float64 product, truncated); the first `steps − that` are skipped.
pub fn img2img_steps(steps: u32, strength: f64) -> u32 {
    ((f64::from(steps) * strength) as u32).min(steps)
}

/// The smallest strength with three decimals that runs at least one of `steps` steps ([`img2img_steps`]; `1 /
/// steps` itself can fall short, e.g. 49 × (1/49) is 0.9999999999999999 in float64).
fn min_img2img_strength(steps: u32) -> f64 {
    let mut thousandths = (1000.0 / f64::from(steps.max(1))).ceil();
    while img2img_steps(steps, thousandths / 1000.0) == 0 {
        thousandths += 1.0;
    }
    thousandths / 1000.0
}

/// Largest accepted absolute LoRA weight. Real use stays within ±2; the bound only catches typos (e.g. 80 for 0.8).
pub const MAX_LORA_WEIGHT: f64 = 20.0;

/// `data.lora`: the models to merge, then those of the prompt's `<lora:…>` tags (`tagged`), unless `enabled` is
/// false (then all are ignored with a warning). Weights default to 1.0; `unet_weight` / `text_encoder_weight`
/// override it per part.
fn lora_requests(d: &WireData, tagged: Vec<LoraRequest>, warnings: &mut Vec<String>) -> Result<Vec<LoraRequest>> {
    let Some(lora) = &d.lora else { return Ok(tagged) };
    let models = lora.models.clone().unwrap_or_default();
    if lora.enabled == Some(false) {
        if !models.is_empty() || !tagged.is_empty() {
            warnings.push(format!("data.lora.enabled is false: {} LoRA model(s) ignored", models.len() + tagged.len()));
        }
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(models.len());
    for (i, m) in models.iter().enumerate() {
        let path = format!("data.lora.models[{i}]");
        let name = match &m.name {
            Some(n) if !n.trim().is_empty() => n.clone(),
            _ => return Err(Error::field(format!("{path}.name"), "missing: each LoRA needs a file name")),
        };
        let check = |key: &str, v: Option<f64>| -> Result<Option<f32>> {
            match v {
                None => Ok(None),
                Some(w) if w.is_finite() && w.abs() <= MAX_LORA_WEIGHT => Ok(Some(w as f32)),
                Some(w) => Err(Error::field(
                    format!("{path}.{key}"),
                    format!("must be a number from -{MAX_LORA_WEIGHT} to {MAX_LORA_WEIGHT}, got {w}"),
                )),
            }
        };
        out.push(LoraRequest {
            name,
            weight: check("weight", m.weight)?.unwrap_or(1.0),
            unet_weight: check("unet_weight", m.unet_weight)?,
            text_encoder_weight: check("text_encoder_weight", m.text_encoder_weight)?,
            field: format!("{path}.name"),
        });
    }
    out.extend(tagged);
    if lora.enabled == Some(true) && out.is_empty() {
        warnings.push("data.lora.enabled is true but data.lora.models is empty: no LoRA applied".into());
    }
    Ok(out)
}

/// A random seed in `0..2^32` from a non-deterministic source (per-process random hash keys, the clock and a
/// counter). Used for missing, null and -1 seeds; the chosen seed is reported back in the response.
pub fn random_seed() -> u64 {
    random_u64() % RANDOM_SEED_BOUND
}

/// 64 unpredictable bits: std's randomly keyed SipHash over the clock and a process-wide counter. Not for
/// cryptography; good for seeds and ids.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// `models.base`, else legacy `model_name`; both given must agree. Empty names read as absent (the seed's C#
/// treats an empty model string as "none").
fn resolve_model(d: &WireData) -> Result<Option<String>> {
    let base = d.models.as_ref().and_then(|m| m.base.clone()).filter(|s| !s.is_empty());
    let legacy = d.model_name.clone().filter(|s| !s.is_empty());
    match (base, legacy) {
        (Some(b), Some(l)) if b != l => Err(Error::field(
            "data.models.base",
            format!("{b:?} differs from data.model_name {l:?}; give one of them, or the same name in both"),
        )),
        (Some(name), _) | (None, Some(name)) => Ok(Some(name)),
        (None, None) => Ok(None),
    }
}

/// Merges a legacy flat field with its nested twin: either may be given; both must then agree.
fn merge<T: PartialEq + std::fmt::Debug>(
    flat_path: &str,
    flat: Option<T>,
    nested_path: &str,
    nested: Option<T>,
) -> Result<Option<T>> {
    match (flat, nested) {
        (Some(f), Some(n)) if f != n => Err(Error::field(
            flat_path,
            format!("{f:?} conflicts with {nested_path} = {n:?}; give one of them, or the same value in both"),
        )),
        (_, Some(v)) | (Some(v), None) => Ok(Some(v)),
        (None, None) => Ok(None),
    }
}

/// A width or height: a positive multiple of 8 no larger than `max`.
/// The largest number a micro-conditioning size or crop may hold (SDXL was trained on sizes up to a few thousand).
const MAX_MICRO_CONDITIONING: i64 = 16384;

/// `data.dimensions`' `original_size`, `target_size` (`{width, height}`, both needed, each 1..=16384) and
/// `crops_coords_top_left` (`{top, left}`, each 0..=16384, a missing one 0).
fn micro_conditioning(dims: &WireDimensions) -> Result<MicroConditioning> {
    let number = |path: String, v: Option<i64>, min: i64| -> Result<Option<u32>> {
        match v {
            Some(v) if (min..=MAX_MICRO_CONDITIONING).contains(&v) => Ok(Some(v as u32)),
            Some(v) => Err(Error::field(
                path,
                format!("must be a whole number from {min} to {MAX_MICRO_CONDITIONING}, got {v}"),
            )),
            None => Ok(None),
        }
    };
    let size = |key: &str, s: &Option<WireSize>| -> Result<Option<(u32, u32)>> {
        let Some(s) = s else { return Ok(None) };
        let path = |side: &str| format!("data.dimensions.{key}.{side}");
        let w = number(path("width"), s.width, 1)?;
        let h = number(path("height"), s.height, 1)?;
        match (w, h) {
            (Some(w), Some(h)) => Ok(Some((w, h))),
            (None, _) => Err(Error::field(path("width"), "missing: give both width and height")),
            (_, None) => Err(Error::field(path("height"), "missing: give both width and height")),
        }
    };
    let crop = match &dims.crops_coords_top_left {
        None => (0, 0),
        Some(c) => {
            let path = |side: &str| format!("data.dimensions.crops_coords_top_left.{side}");
            (number(path("top"), c.top, 0)?.unwrap_or(0), number(path("left"), c.left, 0)?.unwrap_or(0))
        }
    };
    Ok(MicroConditioning {
        original_size: size("original_size", &dims.original_size)?,
        crops_coords_top_left: crop,
        target_size: size("target_size", &dims.target_size)?,
    })
}

fn check_side(path: &str, v: i64, max: u32) -> Result<u32> {
    if v > 0 && v % 8 == 0 && v <= i64::from(max) {
        Ok(v as u32)
    } else {
        Err(Error::field(path, format!("must be a positive multiple of 8 no larger than {max}, got {v}")))
    }
}

fn scheduler_choice(s: &WireScheduler) -> Result<SchedulerChoice> {
    let (name, overrides) = match s {
        WireScheduler::Name(name) => (name.clone(), Default::default()),
        WireScheduler::Object(o) => (o.name.clone(), o.overrides.clone()),
    };
    if name.trim().is_empty() {
        return Err(Error::field(
            "data.scheduler",
            "the scheduler name must not be empty; omit scheduler (or send null) for the model's own scheduler",
        ));
    }
    Ok(SchedulerChoice { name, overrides })
}

fn output_params(d: &WireData, warnings: &mut Vec<String>) -> Result<OutputParams> {
    let o = d.output.clone().unwrap_or_default();
    let format = match o.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("png") => ImageFormat::Png,
        Some("jpeg" | "jpg") => ImageFormat::Jpeg,
        Some("webp") => ImageFormat::Webp,
        Some(_) => {
            return Err(Error::field(
                "data.output.format",
                format!("must be one of png, jpeg, jpg, webp (any case), got {:?}", o.format.unwrap_or_default()),
            ))
        }
    };
    let quality = match o.quality {
        None => DEFAULT_QUALITY,
        Some(q @ 1..=100) => q as u8,
        Some(q) => {
            return Err(Error::field("data.output.quality", format!("must be an integer from 1 to 100, got {q}")))
        }
    };
    // The C# transformer always sends the default 95; only a deliberate other quality is worth a warning.
    if format == ImageFormat::Webp && o.quality.is_some_and(|q| q != i64::from(DEFAULT_QUALITY)) {
        warnings.push("data.output.quality has no effect with webp: the WebP encoder is lossless".to_owned());
    }
    let save_path = match o.save_path {
        None => None,
        Some(p) if p.is_empty() => {
            return Err(Error::field(
                "data.output.save_path",
                "must not be empty; omit it (or send null) to get the image back as image_data only",
            ))
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    let return_image_data = o.return_image_data.unwrap_or(save_path.is_none());
    // `false` without a save_path is only useful with raw pixels (`sdxl_generate_images`); the engine checks that.
    let upscale = super::upscale::upscale_params(o.upscale.as_ref(), warnings)?;
    let preview = super::preview::preview_params(o.preview.as_ref())?;
    Ok(OutputParams {
        format,
        quality,
        save_path,
        overwrite: o.overwrite.unwrap_or(false),
        return_image_data,
        upscale,
        embed_parameters: o.embed_parameters,
        preview,
    })
}

/// `"a", "b" or "c"`.
fn one_of(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::invalid_field;
    use serde_json::json;

    /// What the seed's C# `TransformEnhancedSDXLRequest` sends for a plain text-to-image request, serialized the
    /// way System.Text.Json writes an anonymous object: every property present, absent values as null, doubles
    /// with no fraction as integers (7.0 -> 7).
    const SEED_REQUEST: &str = r#"{
      "message_type": "inference_request",
      "request_id": "5b0f3c1e-9a77-4a53-8d0e-2f6a1c9e4b21",
      "data": {
        "worker_type": "sdxl_worker",
        "prompt": "a lighthouse on a cliff at dusk, oil painting",
        "negative_prompt": null,
        "model_name": "cyberrealisticPony_v125",
        "hyperparameters": {"num_inference_steps": 30, "guidance_scale": 7, "seed": 12345, "strength": 0.8},
        "dimensions": {"width": 1024, "height": 768},
        "scheduler": "DPMSolverMultistepScheduler",
        "models": {"base": "cyberrealisticPony_v125", "refiner": null, "vae": null},
        "lora": {"enabled": false, "models": []},
        "controlnet": {"enabled": false, "models": []},
        "output": {
          "format": "png", "quality": 95, "save_path": null,
          "upscale": {"enabled": false, "factor": 2, "model": null}
        },
        "batch": {"size": 1, "parallel": false},
        "metadata": {
          "request_id": "5b0f3c1e-9a77-4a53-8d0e-2f6a1c9e4b21",
          "priority": "normal",
          "timeout": 300,
          "tags": ["enhanced_sdxl", "c_sharp_service"]
        }
      }
    }"#;

    fn parse(json: &str) -> Result<ParsedRequest> {
        parse_request(json, &RequestLimits::default())
    }

    fn parse_value(v: Value) -> Result<ParsedRequest> {
        parse(&v.to_string())
    }

    /// The seed request with `data` edited by `f`.
    fn seed_with(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        let mut v: Value = serde_json::from_str(SEED_REQUEST).unwrap();
        f(v["data"].as_object_mut().unwrap());
        v
    }

    fn minimal(extra: Value) -> Value {
        let mut v = json!({"prompt": "a cat"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn the_default_step_count_obeys_the_engine_limit() {
        let limits = RequestLimits { max_steps: 2, ..Default::default() };
        let (field, message) = invalid_field(parse_request(r#"{"prompt": "x"}"#, &limits));
        assert_eq!(field, "data.hyperparameters.num_inference_steps");
        assert!(message.contains("limit of 2"), "{message}");
        let ok = parse_request(r#"{"prompt": "x", "hyperparameters": {"num_inference_steps": 2}}"#, &limits);
        assert_eq!(ok.unwrap().params.steps, 2);
    }

    #[test]
    fn too_many_loras_are_refused() {
        let limits = RequestLimits { max_loras: 1, ..Default::default() };
        let two = r#"{"prompt": "x", "lora": {"enabled": true, "models": [{"name": "a"}, {"name": "b"}]}}"#;
        let (field, message) = invalid_field(parse_request(two, &limits));
        assert_eq!(field, "data.lora.models");
        assert!(message.contains("at most 1"), "{message}");
    }

    fn unsupported_field(r: Result<ParsedRequest>) -> String {
        match r {
            Err(Error::Unsupported { field, .. }) => field,
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn seed_transformer_output_round_trips() {
        let p = parse(SEED_REQUEST).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let expected = GenerateParams {
            request_id: "5b0f3c1e-9a77-4a53-8d0e-2f6a1c9e4b21".into(),
            prompt: "a lighthouse on a cliff at dusk, oil painting".into(),
            negative_prompt: None,
            prompt_2: None,
            negative_prompt_2: None,
            prompt_syntax: crate::protocol::prompt_syntax::PromptSyntax::Plain,
            model: Some("cyberrealisticPony_v125".into()),
            refiner: None,
            refiner_switch_at: 0.8,
            refiner_aesthetic_scores: None,
            vae: None,
            steps: 30,
            guidance_scale: 7.0,
            guidance_rescale: 0.0,
            clip_skip: 0,
            seed: 12345,
            init_image: None,
            mask_image: None,
            padding_mask_crop: None,
            mask_blur: None,
            strength: 0.8,
            width: Some(1024),
            height: Some(768),
            micro: MicroConditioning::default(),
            scheduler: Some(SchedulerChoice {
                name: "DPMSolverMultistepScheduler".into(),
                overrides: Default::default(),
            }),
            batch_size: 1,
            batch_parallel: false,
            output: OutputParams {
                format: ImageFormat::Png,
                quality: 95,
                save_path: None,
                overwrite: false,
                return_image_data: true,
                upscale: None,
                embed_parameters: None,
                preview: None,
            },
            timeout_secs: Some(300.0),
            priority: Priority::Normal,
            loras: Vec::new(),
            controlnets: Vec::new(),
            controlnet_guess_mode: false,
            hires: None,
        };
        assert_eq!(p.params, expected);

        // Decoding, serializing and decoding again gives the same request.
        let mut w = Vec::new();
        let wire = WireRequest::from_value(&serde_json::from_str(SEED_REQUEST).unwrap(), &mut w).unwrap();
        let again = parse(&serde_json::to_string(&wire).unwrap()).unwrap();
        assert_eq!(again.params, expected);
    }

    #[test]
    fn enhanced_message_and_worker_types_are_accepted() {
        let mut v = seed_with(|d| {
            d.insert("worker_type".into(), json!("enhanced_sdxl_worker"));
        });
        v["message_type"] = json!("enhanced_inference_request");
        let p = parse_value(v).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(p.params.steps, 30);
    }

    #[test]
    fn bare_data_form_uses_defaults() {
        let p = parse(r#"{"prompt": "a cat"}"#).unwrap();
        assert!(p.warnings.is_empty());
        let q = &p.params;
        assert_eq!((q.steps, q.guidance_scale, q.strength), (DEFAULT_STEPS, DEFAULT_GUIDANCE_SCALE, DEFAULT_STRENGTH));
        assert_eq!((q.width, q.height, q.model.as_deref(), q.scheduler.as_ref()), (None, None, None, None));
        assert_eq!((q.batch_size, q.batch_parallel, q.timeout_secs), (1, false, None));
        assert_eq!(q.output.format, ImageFormat::Png);
        assert_eq!((q.output.quality, q.output.overwrite, q.output.return_image_data), (95, false, true));
        assert!(q.seed < RANDOM_SEED_BOUND);
        assert!(q.request_id.starts_with("req-") && q.request_id.len() == 20, "{}", q.request_id);

        // The bare form may carry the envelope's request_id.
        let p = parse(r#"{"prompt": "a cat", "request_id": "r7", "message_type": "inference_request"}"#).unwrap();
        assert_eq!(p.params.request_id, "r7");
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn legacy_flat_fields() {
        let p = parse_value(json!({"data": {
            "prompt": "x", "model_name": "old_model", "guidance_scale": 6.5, "num_inference_steps": 12,
            "seed": 7, "strength": 0.3, "width": 640, "height": 512
        }}))
        .unwrap();
        let q = p.params;
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(q.model.as_deref(), Some("old_model"));
        assert_eq!((q.guidance_scale, q.steps, q.seed, q.strength), (6.5, 12, 7, 0.3));
        assert_eq!((q.width, q.height), (Some(640), Some(512)));

        // Flat and nested twins may both be given when they agree; models.base wins over an empty model_name.
        let p = parse_value(minimal(json!({"guidance_scale": 7.0, "hyperparameters": {"guidance_scale": 7},
            "models": {"base": "m"}, "model_name": ""})))
        .unwrap();
        assert_eq!((p.params.guidance_scale, p.params.model.as_deref()), (7.0, Some("m")));
    }

    #[test]
    fn conflicting_twins_are_errors() {
        let cases = [
            (json!({"model_name": "a", "models": {"base": "b"}}), "data.models.base"),
            (json!({"guidance_scale": 5, "hyperparameters": {"guidance_scale": 6}}), "data.guidance_scale"),
            (json!({"seed": 1, "hyperparameters": {"seed": 2}}), "data.seed"),
            (json!({"width": 512, "dimensions": {"width": 1024}}), "data.width"),
            (
                json!({"num_inference_steps": 5, "hyperparameters": {"num_inference_steps": 6}}),
                "data.num_inference_steps",
            ),
        ];
        for (extra, path) in cases {
            assert_eq!(invalid_field(parse_value(minimal(extra.clone()))).0, path, "for {extra}");
        }
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let err = parse("{\n  \"prompt\": \"x\",\n  oops\n}").unwrap_err();
        let Error::InvalidJson(msg) = &err else { panic!("{err:?}") };
        assert!(msg.contains("line 3 column 3"), "{msg}");
        assert_eq!(err.code().as_str(), "invalid_json");
        assert!(matches!(parse("[]"), Err(Error::InvalidJson(_))));
        assert!(matches!(parse(""), Err(Error::InvalidJson(_))));
        let limits = RequestLimits { max_json_bytes: 10, ..Default::default() };
        assert!(matches!(parse_request(r#"{"prompt": "a cat"}"#, &limits), Err(Error::InvalidJson(_))));
    }

    #[test]
    fn guidance_rescale_defaults_to_off_and_without_guidance_is_ignored_with_a_warning() {
        let l = RequestLimits::default();
        let plain = parse_request(r#"{"prompt": "x"}"#, &l).unwrap();
        assert_eq!((plain.params.guidance_rescale, plain.params.rescales_guidance()), (0.0, false));
        let on = parse_request(r#"{"prompt": "x", "hyperparameters": {"guidance_rescale": 0.7}}"#, &l).unwrap();
        assert_eq!((on.params.guidance_rescale, on.params.rescales_guidance()), (0.7, true));
        assert_eq!(on.warnings, Vec::<String>::new());
        let text = r#"{"prompt": "x", "hyperparameters": {"guidance_rescale": 0.7, "guidance_scale": 1}}"#;
        let unguided = parse_request(text, &l).unwrap();
        assert!(!unguided.params.rescales_guidance());
        assert_eq!(unguided.warnings.len(), 1, "{:?}", unguided.warnings);
        assert!(unguided.warnings[0].starts_with("data.hyperparameters.guidance_rescale is ignored"));
    }

    #[test]
    fn every_validation_error_names_its_field() {
        let l = RequestLimits::default();
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!({"message_type": "do_it", "data": {"prompt": "x"}}), "message_type", "enhanced_inference_request"),
            (json!({"prompt": "x", "worker_type": "gpu_worker"}), "data.worker_type", "enhanced_sdxl_worker"),
            (json!({"negative_prompt": "y"}), "data.prompt", "missing"),
            (json!({"prompt": null}), "data.prompt", "missing"),
            (json!({"prompt": "  "}), "data.prompt", "empty"),
            (json!({"data": {"prompt": "x", "dimensions": {"width": "abc"}}}), "data.dimensions.width", "integer"),
            (
                minimal(json!({"hyperparameters": {"num_inference_steps": 0}})),
                "data.hyperparameters.num_inference_steps",
                "1 to 500",
            ),
            (
                minimal(json!({"hyperparameters": {"num_inference_steps": 501}})),
                "data.hyperparameters.num_inference_steps",
                "1 to 500",
            ),
            (
                minimal(json!({"hyperparameters": {"guidance_scale": -0.5}})),
                "data.hyperparameters.guidance_scale",
                "0 to 100",
            ),
            (
                minimal(json!({"hyperparameters": {"guidance_scale": 100.5}})),
                "data.hyperparameters.guidance_scale",
                "0 to 100",
            ),
            (minimal(json!({"hyperparameters": {"seed": -2}})), "data.hyperparameters.seed", "18446744073709551615"),
            (minimal(json!({"hyperparameters": {"seed": "42"}})), "data.hyperparameters.seed", "integer"),
            (minimal(json!({"hyperparameters": {"strength": 1.5}})), "data.hyperparameters.strength", "0 to 1"),
            (minimal(json!({"hyperparameters": {"strength": -0.1}})), "data.hyperparameters.strength", "0 to 1"),
            (
                minimal(json!({"hyperparameters": {"guidance_rescale": 1.2}})),
                "data.hyperparameters.guidance_rescale",
                "0 (off) to 1",
            ),
            (
                minimal(json!({"hyperparameters": {"clip_skip": 12}})),
                "data.hyperparameters.clip_skip",
                "0 (SDXL's penultimate layer) to 11",
            ),
            (minimal(json!({"hyperparameters": {"clip_skip": -1}})), "data.hyperparameters.clip_skip", "0 (SDXL"),
            (
                minimal(json!({"prompt_syntax": "weighted", "hyperparameters": {"clip_skip": 1}})),
                "data.hyperparameters.clip_skip",
                "not built for data.prompt_syntax",
            ),
            (
                minimal(json!({"hyperparameters": {"guidance_rescale": -0.1}})),
                "data.hyperparameters.guidance_rescale",
                "0 (off) to 1",
            ),
            (minimal(json!({"init_image": " "})), "data.init_image", "empty"),
            (minimal(json!({"init_image": 7})), "data.init_image", "string"),
            (minimal(json!({"mask_image": "m.png"})), "data.mask_image", "needs data.init_image"),
            (minimal(json!({"init_image": "a.png", "mask_image": ""})), "data.mask_image", "empty"),
            (
                minimal(json!({"init_image": "a.png", "padding_mask_crop": 8})),
                "data.padding_mask_crop",
                "needs data.mask_image",
            ),
            (
                minimal(json!({"init_image": "a.png", "mask_image": "m.png", "padding_mask_crop": -1})),
                "data.padding_mask_crop",
                "from 0 up",
            ),
            (minimal(json!({"init_image": "a.png", "mask_blur": 4})), "data.mask_blur", "needs data.mask_image"),
            (
                minimal(json!({"init_image": "a.png", "mask_image": "m.png", "mask_blur": -0.5})),
                "data.mask_blur",
                "from 0 to 1024",
            ),
            (
                minimal(json!({"init_image": "a.png", "mask_image": "m.png", "mask_blur": 1024.5})),
                "data.mask_blur",
                "from 0 to 1024",
            ),
            (
                minimal(json!({"init_image": "a.png", "mask_image": "m.png", "mask_blur": "4"})),
                "data.mask_blur",
                "number",
            ),
            (
                minimal(json!({"init_image": "a.png", "hyperparameters": {"num_inference_steps": 4, "strength": 0.2}})),
                "data.hyperparameters.strength",
                "at least 0.25",
            ),
            (minimal(json!({"dimensions": {"width": 1001}})), "data.dimensions.width", "multiple of 8"),
            (minimal(json!({"dimensions": {"width": 0}})), "data.dimensions.width", "multiple of 8"),
            (minimal(json!({"dimensions": {"height": -8}})), "data.dimensions.height", "multiple of 8"),
            (minimal(json!({"dimensions": {"height": 4104}})), "data.dimensions.height", "4096"),
            (minimal(json!({"batch": {"size": 0}})), "data.batch.size", "1 to 16"),
            (minimal(json!({"batch": {"size": 17}})), "data.batch.size", "1 to 16"),
            (minimal(json!({"output": {"format": "gif"}})), "data.output.format", "png, jpeg, jpg, webp"),
            (minimal(json!({"output": {"format": ""}})), "data.output.format", "png, jpeg, jpg, webp"),
            (minimal(json!({"output": {"quality": 0}})), "data.output.quality", "1 to 100"),
            (minimal(json!({"output": {"quality": 101}})), "data.output.quality", "1 to 100"),
            (minimal(json!({"output": {"save_path": ""}})), "data.output.save_path", "empty"),
            (minimal(json!({"metadata": {"timeout": 0}})), "data.metadata.timeout", "positive"),
            (minimal(json!({"metadata": {"timeout": -3.5}})), "data.metadata.timeout", "positive"),
            (minimal(json!({"metadata": {"priority": "urgent"}})), "data.metadata.priority", "low, normal or high"),
            (minimal(json!({"scheduler": ""})), "data.scheduler", "empty"),
            (minimal(json!({"scheduler": 5})), "data.scheduler", "string"),
            (minimal(json!({"scheduler": {"name": 5}})), "data.scheduler.name", "string"),
            (minimal(json!({"controlnet": {"enabled": "yes"}})), "data.controlnet.enabled", "true or false"),
            (minimal(json!({"controlnet": "canny"})), "data.controlnet", "object"),
            (minimal(json!({"controlnet": [{"type": "canny"}]})), "data.controlnet", "object"),
            (
                minimal(json!({"controlnet": {"models": [{"type": "canny"}]}})),
                "data.controlnet.models[0].model_path",
                "missing",
            ),
        ];
        for (value, path, hint) in cases {
            let (field, message) = invalid_field(parse_value(value.clone()));
            assert_eq!(field, path, "for {value}");
            assert!(message.contains(hint), "{path}: {message:?} should mention {hint:?}");
            assert_eq!(Error::field(&field, &message).code().as_str(), "invalid_request");
        }

        // Pixel count: both sides fine alone, too many together.
        let small = RequestLimits { max_pixels: 512 * 512, ..l };
        let r = parse_request(r#"{"prompt": "x", "dimensions": {"width": 1024, "height": 512}}"#, &small);
        assert_eq!(invalid_field(r).0, "data.dimensions");
        assert!(small.check_size(512, 512).is_ok());
        assert!(small.check_size(520, 512).is_err());
    }

    #[test]
    fn limits_bounds_are_inclusive() {
        let p = parse_value(minimal(json!({
            "hyperparameters": {"num_inference_steps": 500, "guidance_scale": 100, "strength": 1, "seed": u64::MAX},
            "dimensions": {"width": 4096, "height": 4096}, "batch": {"size": 16},
            "output": {"quality": 1, "format": "JPG"}
        })))
        .unwrap()
        .params;
        assert_eq!((p.steps, p.guidance_scale, p.strength, p.seed), (500, 100.0, 1.0, u64::MAX));
        assert_eq!((p.width, p.height, p.batch_size), (Some(4096), Some(4096), 16));
        assert_eq!((p.output.format, p.output.quality), (ImageFormat::Jpeg, 1));
        let p = parse_value(minimal(json!({"hyperparameters": {"guidance_scale": 0, "strength": 0, "seed": 0}})))
            .unwrap()
            .params;
        assert_eq!((p.guidance_scale, p.strength, p.seed), (0.0, 0.0, 0));
    }

    #[test]
    fn init_image_is_read_and_strength_counts_steps_as_diffusers() {
        let p =
            parse_value(minimal(json!({"init_image": "in.png", "hyperparameters": {"strength": 0.6}}))).unwrap().params;
        assert_eq!((p.init_image.as_deref(), p.strength), (Some("in.png"), 0.6));
        // int(steps * strength) in float64, truncated: 0.29 * 100 = 28.999999999999996 runs 28 steps, as Python.
        assert_eq!(img2img_steps(100, 0.29), 28);
        assert_eq!((img2img_steps(5, 0.6), img2img_steps(30, 1.0), img2img_steps(4, 0.2)), (3, 30, 0));
        // The strength the error suggests runs a step, for every step count (1 / 49 alone would not).
        assert_eq!(img2img_steps(49, 1.0 / 49.0), 0);
        for steps in 1..=500 {
            let s = min_img2img_strength(steps);
            assert!(img2img_steps(steps, s) >= 1 && s <= 1.0, "{steps} steps: {s}");
        }
        assert_eq!((min_img2img_strength(4), min_img2img_strength(3)), (0.25, 0.334));
        // Text-to-image ignores strength, however small.
        let p = parse_value(minimal(json!({"hyperparameters": {"strength": 0.0}}))).unwrap().params;
        assert_eq!((p.init_image, p.strength), (None, 0.0));
    }

    #[test]
    fn size_micro_conditioning_is_read_as_width_height_and_top_left_and_checked() {
        let dims = json!({"width": 64, "height": 64, "original_size": {"width": 1024, "height": 768},
            "crops_coords_top_left": {"top": 32}, "target_size": {"width": 512, "height": 256}});
        let p = parse_value(minimal(json!({"dimensions": dims}))).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let want = MicroConditioning {
            original_size: Some((1024, 768)),
            crops_coords_top_left: (32, 0),
            target_size: Some((512, 256)),
        };
        assert_eq!(p.params.micro, want);
        assert_eq!(parse_value(minimal(json!({}))).unwrap().params.micro, MicroConditioning::default());
        for (dims, field) in [
            (json!({"original_size": {"width": 1024}}), "data.dimensions.original_size.height"),
            (json!({"target_size": {"width": 0, "height": 8}}), "data.dimensions.target_size.width"),
            (json!({"target_size": {"width": 8, "height": 16385}}), "data.dimensions.target_size.height"),
            (json!({"crops_coords_top_left": {"top": -1}}), "data.dimensions.crops_coords_top_left.top"),
            (json!({"crops_coords_top_left": {"left": 1.5}}), "data.dimensions.crops_coords_top_left.left"),
        ] {
            assert_eq!(invalid_field(parse_value(minimal(json!({"dimensions": dims.clone()})))).0, field, "{dims}");
        }
        let typo = parse_value(minimal(json!({"dimensions": {"original_size": {"width": 8, "height": 8, "w": 1}}})));
        assert_eq!(typo.unwrap().warnings, ["ignored unknown field data.dimensions.original_size.w"]);
    }

    #[test]
    fn refiner_vae_and_switch_point_are_read_and_checked() {
        let p = parse_value(minimal(json!({
            "models": {"base": "m", "refiner": "sdxl-refiner", "vae": "sdxl-vae-fp16-fix"},
            "hyperparameters": {"refiner_switch_at": 0.7}
        })))
        .unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let q = &p.params;
        assert_eq!((q.refiner.as_deref(), q.vae.as_deref()), (Some("sdxl-refiner"), Some("sdxl-vae-fp16-fix")));
        assert_eq!(q.refiner_switch_at, 0.7);
        let p = parse_value(minimal(json!({"models": {"base": "m", "refiner": " ", "vae": ""}}))).unwrap();
        assert_eq!((p.params.refiner, p.params.vae, p.params.refiner_switch_at), (None, None, 0.8));
        let p = parse_value(minimal(json!({"hyperparameters": {"refiner_switch_at": 0.5}}))).unwrap();
        assert_eq!(p.warnings, ["data.hyperparameters.refiner_switch_at is ignored: no data.models.refiner"]);
        for bad in [0.0, 1.0, -0.2, 1.5] {
            let r = parse_value(minimal(json!({"hyperparameters": {"refiner_switch_at": bad}})));
            assert_eq!(invalid_field(r).0, "data.hyperparameters.refiner_switch_at", "for {bad}");
        }
        let scores = json!({"refiner_aesthetic_score": 7.5, "refiner_negative_aesthetic_score": 1});
        let p = parse_value(minimal(json!({"models": {"refiner": "r"}, "hyperparameters": scores}))).unwrap();
        assert_eq!(p.params.refiner_aesthetic_scores, Some((7.5, 1.0)));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(parse_value(minimal(json!({}))).unwrap().params.aesthetic_scores(), (6.0, 2.5));
        let one = parse_value(minimal(json!({"hyperparameters": {"refiner_negative_aesthetic_score": 3}}))).unwrap();
        assert_eq!(one.params.refiner_aesthetic_scores, Some((6.0, 3.0)));
        assert!(one.warnings.is_empty(), "a refiner may be the base model: the pipeline warns: {:?}", one.warnings);
        for (key, bad) in [("refiner_aesthetic_score", -1.0), ("refiner_negative_aesthetic_score", 11.0)] {
            let r = parse_value(minimal(json!({"hyperparameters": {key: bad}})));
            assert_eq!(invalid_field(r).0, format!("data.hyperparameters.{key}"), "for {bad}");
        }
    }

    #[test]
    fn controlnet_units_reach_the_params() {
        let unit = json!({"type": "canny", "model_path": "cn", "control_image": "e.png", "conditioning_scale": 0.5});
        let p = parse_value(minimal(json!({"controlnet": {"enabled": true, "models": [unit.clone()]}}))).unwrap();
        let got: Vec<(&str, Option<&str>, f32)> =
            p.params.controlnets.iter().map(|c| (c.model.as_str(), c.kind.as_deref(), c.conditioning_scale)).collect();
        assert_eq!(got, [("cn", Some("canny"), 0.5)]);
        let p = parse_value(minimal(json!({"controlnet": {"enabled": false, "models": [{"type": "canny"}]}}))).unwrap();
        assert!(p.params.controlnets.is_empty());
        assert!(p.warnings.iter().any(|w| w.contains("1 ControlNet unit(s) ignored")), "{:?}", p.warnings);
        let p = parse_value(minimal(json!({"controlnet": {"models": [unit]}, "models": {"refiner": "r"}}))).unwrap();
        assert_eq!((p.params.controlnets.len(), p.params.refiner.as_deref()), (1, Some("r")));
        let unit = json!({"model_path": "cn", "control_image": "e.png", "preprocessor": "depth_midas"});
        let r = parse_value(minimal(json!({"controlnet": {"models": [unit]}})));
        assert_eq!(unsupported_field(r), "data.controlnet.models[0].preprocessor");
    }

    #[test]
    fn inpainting_is_read_with_controlnets_and_a_refiner() {
        let inpaint = json!({"init_image": "a.png", "mask_image": "m.png"});
        let p = parse_value(minimal(inpaint.clone())).unwrap().params;
        assert_eq!((p.init_image.as_deref(), p.mask_image.as_deref()), (Some("a.png"), Some("m.png")));
        assert_eq!(p.padding_mask_crop, None);
        let mut cropped = inpaint.clone();
        cropped["padding_mask_crop"] = json!(32);
        assert_eq!(parse_value(minimal(cropped)).unwrap().params.padding_mask_crop, Some(32));
        assert_eq!(p.mask_blur, None);
        for radius in [0.0, 4.0, 7.3] {
            let mut blurred = inpaint.clone();
            blurred["mask_blur"] = json!(radius);
            assert_eq!(parse_value(minimal(blurred)).unwrap().params.mask_blur, Some(radius));
        }
        let unit = json!({"model_path": "cn", "control_image": "e.png"});
        let mut with_cn = inpaint.clone();
        with_cn["controlnet"] = json!({"models": [unit]});
        assert_eq!(parse_value(minimal(with_cn.clone())).unwrap().params.controlnets.len(), 1);
        // with a refiner too (diffusers' ControlNet inpaint pipeline on the base, the inpaint pipeline on the refiner)
        with_cn["models"] = json!({"base": "m", "refiner": "r"});
        let p = parse_value(minimal(with_cn)).unwrap().params;
        assert_eq!((p.controlnets.len(), p.mask_image.as_deref(), p.refiner.as_deref()), (1, Some("m.png"), Some("r")));
    }

    #[test]
    fn inpainting_is_read_with_a_refiner() {
        let inpaint = json!({"init_image": "a.png", "mask_image": "m.png", "padding_mask_crop": 8});
        let mut with_refiner = inpaint;
        with_refiner["models"] = json!({"base": "m", "refiner": "r"});
        let p = parse_value(minimal(with_refiner)).unwrap().params;
        assert_eq!((p.mask_image.as_deref(), p.refiner.as_deref()), (Some("m.png"), Some("r")));
        assert_eq!(p.padding_mask_crop, Some(8));
    }

    #[test]
    fn disabled_or_empty_feature_blocks_are_fine() {
        for extra in [
            json!({"lora": {"enabled": false, "models": []}}),
            json!({"lora": {}}),
            json!({"lora": {"enabled": true, "models": []}}),
            json!({"controlnet": {}}),
            json!({"controlnet": false}),
            json!({"controlnet": {"enabled": false, "conditioning_scale": 1.0, "models": []}}),
            json!({"controlnet": {"models": [], "type": null}}),
            json!({"models": {"refiner": "", "vae": ""}}),
            json!({"output": {"upscale": {"enabled": false, "factor": 4, "model": "RealESRGAN"}}}),
            json!({"output": {"upscale": {}}}),
            json!({"output": {"upscale": false}}),
        ] {
            parse_value(minimal(extra.clone())).unwrap_or_else(|e| panic!("{extra}: {e}"));
        }
    }

    #[test]
    fn prompt_lora_tags_join_the_requested_loras_and_leave_the_text() {
        let p = parse_value(json!({"prompt": "a cat <lora:ink:0.5:1.5>", "lora": {"models": [{"name": "detail"}]}}))
            .unwrap();
        assert_eq!(p.params.prompt, "a cat ");
        let got: Vec<(&str, f32, Option<f32>, &str)> =
            p.params.loras.iter().map(|l| (l.name.as_str(), l.weight, l.unet_weight, l.field.as_str())).collect();
        assert_eq!(got, [("detail", 1.0, None, "data.lora.models[0].name"), ("ink", 0.5, Some(1.5), "data.prompt")]);
        // Tags without data.lora apply; data.lora.enabled false turns them off too, with a warning.
        assert_eq!(parse_value(json!({"prompt": "x <lora:ink>"})).unwrap().params.loras.len(), 1);
        let off = parse_value(json!({"prompt": "x <lora:ink>", "lora": {"enabled": false}})).unwrap();
        assert!(off.params.loras.is_empty());
        assert_eq!(off.warnings, ["data.lora.enabled is false: 1 LoRA model(s) ignored"]);
        let (field, message) = invalid_field(parse_value(json!({"prompt": " <lora:ink:1> "})));
        assert_eq!((field.as_str(), message.contains("only LoRA tags")), ("data.prompt", true), "{message}");
        let (field, _) = invalid_field(parse_value(json!({"prompt": "x", "negative_prompt": "<lora:ink:1>"})));
        assert_eq!(field, "data.negative_prompt");
        let limits = RequestLimits { max_loras: 1, ..Default::default() };
        let two = r#"{"prompt": "x <lora:a> <lora:b>"}"#;
        let (field, message) = invalid_field(parse_request(two, &limits));
        assert_eq!(
            (field.as_str(), message.contains("2 of them <lora:…> tags")),
            ("data.lora.models", true),
            "{message}"
        );
    }

    #[test]
    fn lora_requests_are_validated() {
        let p = parse_value(minimal(json!({"lora": {"enabled": true, "models": [
            {"name": "detail", "weight": 0.8},
            {"name": "styles/ink.safetensors"},
            {"name": "x", "weight": -0.3, "unet_weight": 0.5, "text_encoder_weight": 0}
        ]}})))
        .unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let field = |i: usize| format!("data.lora.models[{i}].name");
        let want = vec![
            LoraRequest {
                name: "detail".into(),
                weight: 0.8,
                unet_weight: None,
                text_encoder_weight: None,
                field: field(0),
            },
            LoraRequest {
                name: "styles/ink.safetensors".into(),
                weight: 1.0,
                unet_weight: None,
                text_encoder_weight: None,
                field: field(1),
            },
            LoraRequest {
                name: "x".into(),
                weight: -0.3,
                unet_weight: Some(0.5),
                text_encoder_weight: Some(0.0),
                field: field(2),
            },
        ];
        assert_eq!(p.params.loras, want);
        // enabled absent: models apply; enabled false: ignored with a warning.
        let p = parse_value(minimal(json!({"lora": {"models": [{"name": "detail"}]}}))).unwrap();
        assert_eq!(p.params.loras.len(), 1);
        let p = parse_value(minimal(json!({"lora": {"enabled": false, "models": [{"name": "detail"}]}}))).unwrap();
        assert!(p.params.loras.is_empty());
        assert_eq!(p.warnings, ["data.lora.enabled is false: 1 LoRA model(s) ignored"]);
        let p = parse_value(minimal(json!({"lora": {"enabled": true, "models": []}}))).unwrap();
        assert_eq!(p.warnings.len(), 1);
        let cases = [
            (json!({"models": [{"weight": 1}]}), "data.lora.models[0].name", "missing"),
            (json!({"models": [{"name": "a"}, {"name": " "}]}), "data.lora.models[1].name", "missing"),
            (json!({"models": [{"name": "a", "weight": 21}]}), "data.lora.models[0].weight", "-20 to 20"),
            (json!({"models": [{"name": "a", "unet_weight": -25}]}), "data.lora.models[0].unet_weight", "-20 to 20"),
            (
                json!({"models": [{"name": "a", "text_encoder_weight": "x"}]}),
                "data.lora.models[0].text_encoder_weight",
                "number",
            ),
        ];
        for (lora, path, hint) in cases {
            let (field, message) = invalid_field(parse_value(minimal(json!({ "lora": lora }))));
            assert_eq!(field, path, "for {lora}");
            assert!(message.contains(hint), "{path}: {message}");
        }
    }

    #[test]
    fn prompt_syntax_defaults_to_plain_and_checks_weighted_prompts_early() {
        use crate::protocol::prompt_syntax::PromptSyntax;
        let syntax = |v: Value| parse_value(v).map(|p| p.params.prompt_syntax);
        assert_eq!(syntax(json!({"prompt": "(a:1.2.3)"})).unwrap(), PromptSyntax::Plain);
        assert_eq!(syntax(json!({"prompt": "x", "prompt_syntax": "plain"})).unwrap(), PromptSyntax::Plain);
        assert_eq!(syntax(json!({"prompt": "(x:1.2)", "prompt_syntax": "weighted"})).unwrap(), PromptSyntax::Weighted);
        let (field, message) = invalid_field(parse_value(json!({"prompt": "x", "prompt_syntax": "compel"})));
        assert_eq!(field, "data.prompt_syntax", "{message}");
        let (field, _) = invalid_field(parse_value(json!({"prompt": "x", "prompt_syntax": 1})));
        assert_eq!(field, "data.prompt_syntax");
        for key in ["prompt", "negative_prompt", "prompt_2", "negative_prompt_2"] {
            let mut v = json!({"prompt": "x", "prompt_syntax": "weighted"});
            v[key] = json!("(a:1.2.3)");
            let (field, message) = invalid_field(parse_value(v));
            assert_eq!(field, format!("data.{key}"), "{message}");
        }
    }

    #[test]
    fn second_encoder_prompts_fall_back_like_diffusers() {
        let p = |v: Value| {
            let p = parse_value(v).unwrap().params;
            (p.prompt_2, p.negative_prompt_2)
        };
        assert_eq!(p(json!({"prompt": "x"})), (None, None));
        assert_eq!(p(json!({"prompt": "x", "prompt_2": "", "negative_prompt_2": null})), (None, None));
        assert_eq!(
            p(json!({"prompt": "x", "prompt_2": "y", "negative_prompt_2": "z"})),
            (Some("y".into()), Some("z".into()))
        );
        let (field, _) = invalid_field(parse_value(json!({"prompt": "x", "prompt_2": "<lora:a:1>"})));
        assert_eq!(field, "data.prompt_2");
    }

    #[test]
    fn negative_prompt_null_vs_empty() {
        let p = |v: Value| parse_value(v).unwrap().params.negative_prompt;
        assert_eq!(p(json!({"prompt": "x"})), None);
        assert_eq!(p(json!({"prompt": "x", "negative_prompt": null})), None);
        assert_eq!(p(json!({"prompt": "x", "negative_prompt": ""})), Some(String::new()));
        assert_eq!(p(json!({"prompt": "x", "negative_prompt": "blurry"})), Some("blurry".into()));
    }

    #[test]
    fn random_seed_resolution() {
        for seed in [json!(null), json!(-1), json!(-1.0)] {
            let seeds: Vec<u64> = (0..8)
                .map(|_| parse_value(minimal(json!({"hyperparameters": {"seed": seed}}))).unwrap().params.seed)
                .collect();
            assert!(seeds.iter().all(|&s| s < RANDOM_SEED_BOUND), "{seeds:?}");
            let mut unique = seeds.clone();
            unique.sort_unstable();
            unique.dedup();
            // Eight draws from 2^32 values: a repeat means the source is not random.
            assert_eq!(unique.len(), seeds.len(), "{seeds:?}");
        }
        assert_eq!(parse_value(minimal(json!({"seed": 42.0}))).unwrap().params.seed, 42);
        let a = parse(r#"{"prompt": "x"}"#).unwrap().params.request_id;
        let b = parse(r#"{"prompt": "x"}"#).unwrap().params.request_id;
        assert_ne!(a, b);
    }

    #[test]
    fn request_id_sources() {
        let id = |v: Value| parse_value(v).unwrap();
        assert_eq!(id(json!({"request_id": "env", "data": {"prompt": "x"}})).params.request_id, "env");
        assert_eq!(id(json!({"data": {"prompt": "x", "metadata": {"request_id": "meta"}}})).params.request_id, "meta");
        let p = id(json!({"request_id": "env", "data": {"prompt": "x", "metadata": {"request_id": "meta"}}}));
        assert_eq!(p.params.request_id, "env");
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(id(json!({"request_id": "", "data": {"prompt": "x"}})).params.request_id.starts_with("req-"));
    }

    #[test]
    fn output_settings() {
        let p = parse_value(minimal(json!({"output": {"save_path": "out/a.png", "overwrite": true}}))).unwrap().params;
        assert_eq!(p.output.save_path, Some(PathBuf::from("out/a.png")));
        assert!(p.output.overwrite);
        assert!(!p.output.return_image_data, "with a save_path, image data is opt-in");
        let p = parse_value(minimal(json!({"output": {"save_path": "a.png", "return_image_data": true}}))).unwrap();
        assert!(p.params.output.return_image_data);
        let p = parse_value(minimal(json!({"output": {"format": "WebP", "quality": 80}}))).unwrap();
        assert_eq!(p.params.output.format, ImageFormat::Webp);
        assert_eq!(p.warnings, ["data.output.quality has no effect with webp: the WebP encoder is lossless"]);
        assert!(parse_value(minimal(json!({"output": {"format": "webp"}}))).unwrap().warnings.is_empty());
        let p = parse_value(minimal(json!({"output": {"format": "webp", "quality": 95}}))).unwrap();
        assert!(p.warnings.is_empty(), "the seed's default quality is not worth a warning");
        assert_eq!(
            parse_value(minimal(json!({"output": {"format": "Jpeg"}}))).unwrap().params.output.format,
            ImageFormat::Jpeg
        );
    }

    #[test]
    fn embed_parameters_defaults_on_and_can_be_turned_off() {
        let output = |v: Value| parse_value(minimal(json!({ "output": v }))).unwrap().params.output;
        let default = output(json!({}));
        assert_eq!(default.embed_parameters, None);
        assert!(default.embeds_parameters(), "on by default, as A1111, ComfyUI and sd.cpp do");
        assert!(output(json!({"embed_parameters": null})).embeds_parameters());
        assert_eq!(output(json!({"embed_parameters": true})).embed_parameters, Some(true));
        let off = output(json!({"embed_parameters": false}));
        assert!(!off.embeds_parameters());
        let err = parse_value(minimal(json!({"output": {"embed_parameters": "no"}}))).unwrap_err();
        assert!(err.to_string().contains("data.output.embed_parameters"), "{err}");
    }

    #[test]
    fn scheduler_choice_carries_overrides_unvalidated() {
        let p = parse_value(minimal(json!({"scheduler": {"type": "DPM++ 2M Karras", "use_karras_sigmas": true,
            "solver_order": 2, "final_sigmas_type": null}})))
        .unwrap()
        .params;
        let s = p.scheduler.unwrap();
        assert_eq!(s.name, "DPM++ 2M Karras");
        assert_eq!(Value::Object(s.overrides), json!({"use_karras_sigmas": true, "solver_order": 2}));
        let s = parse_value(minimal(json!({"scheduler": "NoSuchScheduler"}))).unwrap().params.scheduler.unwrap();
        assert_eq!((s.name.as_str(), s.overrides.len()), ("NoSuchScheduler", 0));
    }

    #[test]
    fn unknown_keys_warn_but_do_not_fail() {
        let v = seed_with(|d| {
            d.insert("style".into(), json!("cinematic"));
            d["hyperparameters"]["clip_cut"] = json!(2);
        });
        let mut w = parse_value(v).unwrap().warnings;
        w.sort();
        assert_eq!(w, ["ignored unknown field data.hyperparameters.clip_cut", "ignored unknown field data.style"]);
    }

    #[test]
    fn one_of_lists_values() {
        assert_eq!(one_of(&["a", "b", "c"]), r#""a", "b" or "c""#);
        assert_eq!(one_of(&["a"]), r#""a""#);
    }

    #[test]
    fn hires_is_refused_with_an_init_image_or_a_refiner() {
        let unit = json!({"model_path": "c", "control_image": "e.png"});
        for extra in [
            json!({"init_image": "a.png"}),
            json!({"init_image": "a.png", "mask_image": "m.png"}),
            json!({"models": {"refiner": "r"}}),
            json!({"models": {"refiner": "r"}, "controlnet": {"models": [unit]}}),
        ] {
            let mut request = minimal(extra.clone());
            request["hires"] = json!({"enabled": true});
            assert_eq!(unsupported_field(parse_value(request)), "data.hires", "{extra}");
        }
        // Disabled, it is not checked.
        let mut request = minimal(json!({"init_image": "a.png"}));
        request["hires"] = json!({"enabled": false, "scale": 2});
        assert_eq!(parse_value(request).unwrap().params.hires, None);
    }

    #[test]
    fn hires_takes_controlnet_units_and_warns_when_its_controlnet_choice_has_none() {
        use crate::protocol::params::HiresControlNet;
        let unit = json!({"model_path": "c", "control_image": "e.png"});
        let mut request = minimal(json!({"controlnet": {"models": [unit]}}));
        request["hires"] = json!({"controlnet": "High res only"});
        let p = parse_value(request).unwrap();
        assert_eq!((p.params.controlnets.len(), p.params.hires.unwrap().controlnet), (1, HiresControlNet::Second));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let mut request = minimal(json!({}));
        request["hires"] = json!({"controlnet": "first"});
        let p = parse_value(request).unwrap();
        assert!(p.params.hires.is_some());
        assert_eq!(p.warnings, ["data.hires.controlnet (first) is ignored: the request has no ControlNet units"]);
    }
}
