//! Serde mirrors of the request JSON exactly as our callers send it: the seed's C# `TransformEnhancedSDXLRequest`
//! output, the bare `data` object, and the legacy flat fields. Nothing here is validated beyond JSON types;
//! [`crate::protocol::normalize`] turns a [`WireRequest`] into [`crate::protocol::params::GenerateParams`].
//!
//! Decoding walks a [`serde_json::Value`] by hand instead of using `#[derive(Deserialize)]`, for three reasons
//! the callers force on us:
//! - a wrong type must name its JSON path (`data.dimensions.width`), which serde's derive cannot report;
//! - unknown keys become warnings (`ignored unknown field data.foo`) at every level, never failures;
//! - C# serializers write explicit `null` for every absent optional, and write `7.0` for some integers and `7`
//!   for some doubles, so `null` reads as "absent" and integral numbers are accepted in either spelling.
//!
//! The types still derive [`Serialize`], so a Rust caller (the CLI, tests) can build a request and send it.
//!
//! # Accepted shapes
//!
//! - Envelope: `{"message_type": "inference_request" | "enhanced_inference_request", "request_id": "...",
//!   "data": {...}}` — any top-level object with a `data` key.
//! - Bare: the `data` object itself (a top-level object without a `data` key). It may carry the envelope's
//!   `message_type` and `request_id` beside its own fields.
//!
//! Error and warning paths always name fields as in the envelope form (`data.prompt`), whichever form was sent.
//!
//! # Legacy flat fields
//!
//! Besides the nested fields, `data` may carry `model_name` (the seed sends it next to `models.base`),
//! `guidance_scale` (the seed's legacy flat hyperparameter) and, tolerated the same way, `num_inference_steps`,
//! `seed`, `strength`, `width` and `height`. When a flat field and its nested twin are both given they must agree.
//!
//! # Feature blocks
//!
//! `data.controlnet` has the shape of the C# binding's `ControlNetContract` ([`WireControlNet`]; also a bare
//! `true`/`false` for `enabled`). `data.output.upscale` has the shape of its
//! `UpscaleContract` ([`WireUpscale`]). `data.hires` has the shape of its `HiresContract` ([`WireHires`]; also a bare
//! `true`/`false` for `enabled`).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Which of the two accepted top-level shapes a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestForm {
    /// `{"message_type", "request_id", "data": {...}}`.
    #[default]
    Envelope,
    /// The `data` object alone.
    Bare,
}

/// A request as sent: the envelope and its `data`. Serializes as the envelope form.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireRequest {
    /// Which shape the JSON had (not serialized: serialization always writes the envelope).
    #[serde(skip)]
    pub form: RequestForm,
    /// `message_type`: `inference_request` or `enhanced_inference_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// Envelope `request_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The request proper.
    pub data: WireData,
}

/// The `data` object (the seed's `TransformEnhancedSDXLRequest` output), legacy flat fields included.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireData {
    /// `worker_type`: `sdxl_worker` or `enhanced_sdxl_worker`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_type: Option<String>,
    /// `prompt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// `negative_prompt`: `null` and absent both read as `None`; `""` stays `Some("")`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// `prompt_2`: the text for the second (OpenCLIP bigG) encoder, as diffusers' SDXL pipeline takes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_2: Option<String>,
    /// `negative_prompt_2`: the negative text for the second encoder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt_2: Option<String>,
    /// `prompt_syntax`: `"plain"` (default, diffusers' reading) or `"weighted"` (A1111's emphasis syntax and long
    /// prompts; [`super::prompt_syntax`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_syntax: Option<String>,
    /// `init_image`: the image to start from (image-to-image): a file path, a `data:` URL or base64 image data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
    /// `mask_image`: with `init_image`, the part to redraw (inpainting; white = redraw), as `init_image` is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_image: Option<String>,
    /// `padding_mask_crop`: with `mask_image`, inpaint only the mask's bounding box grown by this many pixels
    /// (diffusers' `padding_mask_crop`, A1111's "only masked" with its padding).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub padding_mask_crop: Option<i64>,
    /// `mask_blur`: with `mask_image`, blur the mask first by this radius in pixels (diffusers'
    /// `mask_processor.blur(mask, blur_factor)`, Pillow's `GaussianBlur`; A1111's "mask blur").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_blur: Option<f64>,
    /// Legacy `model_name` (the seed sends it together with `models.base`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// `models`: base, refiner and VAE names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<WireModels>,
    /// `hyperparameters`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hyperparameters: Option<WireHyperparameters>,
    /// `dimensions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<WireDimensions>,
    /// `scheduler`: a name, or an object with a name and config overrides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<WireScheduler>,
    /// `lora`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<WireLora>,
    /// `controlnet`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controlnet: Option<WireControlNet>,
    /// `hires`: A1111's "Hires. fix" (a second, image-to-image pass at a larger size), validated by
    /// [`crate::protocol::hires`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hires: Option<WireHires>,
    /// `output`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<WireOutput>,
    /// `batch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<WireBatch>,
    /// `metadata`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<WireMetadata>,
    /// Legacy flat `guidance_scale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    /// Tolerated flat `num_inference_steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_inference_steps: Option<i64>,
    /// Tolerated flat `seed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i128>,
    /// Tolerated flat `strength`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// Tolerated flat `width`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<i64>,
    /// Tolerated flat `height`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
}

/// `data.models`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireModels {
    /// `base`: the model folder name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// `refiner`: an SDXL refiner model name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refiner: Option<String>,
    /// `vae`: a custom VAE name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
}

/// `data.hyperparameters`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireHyperparameters {
    /// `num_inference_steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_inference_steps: Option<i64>,
    /// `guidance_scale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    /// `seed`: any JSON integer from -2^63 to 2^64-1 (range is checked by normalize).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i128>,
    /// `strength`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// `refiner_switch_at`: the fraction of the steps after which the refiner takes over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refiner_switch_at: Option<f64>,
    /// `refiner_aesthetic_score`: the refiner's positive aesthetic conditioning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refiner_aesthetic_score: Option<f64>,
    /// `refiner_negative_aesthetic_score`: the refiner's negative aesthetic conditioning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refiner_negative_aesthetic_score: Option<f64>,
    /// `guidance_rescale`: diffusers' rescale of the guided noise prediction (0 to 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_rescale: Option<f64>,
    /// `clip_skip`: text-encoder layers skipped beyond SDXL's penultimate one (diffusers' `clip_skip`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<i64>,
}

/// `data.dimensions`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireDimensions {
    /// `width` in pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<i64>,
    /// `height` in pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    /// `original_size`: `{width, height}`, SDXL's size micro-conditioning (diffusers' `original_size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_size: Option<WireSize>,
    /// `target_size`: `{width, height}` (diffusers' `target_size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_size: Option<WireSize>,
    /// `crops_coords_top_left`: `{top, left}` (diffusers' `crops_coords_top_left`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crops_coords_top_left: Option<WireCrop>,
}

/// A `{width, height}` object of `data.dimensions`' micro-conditioning.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireSize {
    /// `width` in pixels.
    pub width: Option<i64>,
    /// `height` in pixels.
    pub height: Option<i64>,
}

/// `data.dimensions.crops_coords_top_left`: `{top, left}` in pixels.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireCrop {
    /// `top`: rows cut off above.
    pub top: Option<i64>,
    /// `left`: columns cut off on the left.
    pub left: Option<i64>,
}

/// `data.scheduler`: `"EulerDiscreteScheduler"` or `{"type": "...", "use_karras_sigmas": true, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum WireScheduler {
    /// A bare name.
    Name(String),
    /// An object: `type` (or `name`) plus diffusers config overrides.
    Object(WireSchedulerObject),
}

/// The object form of `data.scheduler`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireSchedulerObject {
    /// The `type` (or `name`) key.
    #[serde(rename = "type")]
    pub name: String,
    /// Every other key with a non-null value: diffusers `scheduler_config.json` overrides, unvalidated.
    #[serde(flatten)]
    pub overrides: Map<String, Value>,
}

/// `data.lora`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireLora {
    /// `enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `models`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<WireLoraModel>>,
}

/// One entry of `data.lora.models`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireLoraModel {
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `weight`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// `unet_weight`: the weight for the UNet only (A1111's `<lora:name:te:unet>`); default `weight`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unet_weight: Option<f64>,
    /// `text_encoder_weight`: the weight for both text encoders only; default `weight`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_encoder_weight: Option<f64>,
}

/// `data.controlnet` (the C# `ControlNetContract`), validated by [`crate::protocol::controlnet`].
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireControlNet {
    /// `enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `models`: the ControlNet units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<WireControlNetUnit>>,
    /// `guess_mode`: diffusers' `guess_mode`, for all the units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guess_mode: Option<bool>,
}

/// One entry of `data.controlnet.models`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireControlNetUnit {
    /// `type`: what the control image shows (`canny`, `depth`, …); a label.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `model_path`: the ControlNet under `<models_root>/controlnet/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_path: Option<String>,
    /// `control_image`: a file path, a `data:` URL or base64 image data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_image: Option<String>,
    /// `conditioning_scale`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditioning_scale: Option<f64>,
    /// `guidance_start`: the fraction of the steps after which the unit starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_start: Option<f64>,
    /// `guidance_end`: the fraction of the steps after which it stops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_end: Option<f64>,
    /// `preprocessor`: a name, or an object with a `type`/`name` (the seed's `preprocessor` settings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocessor: Option<Value>,
}

/// `data.hires` (the C# `HiresContract`), validated by [`crate::protocol::hires`].
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireHires {
    /// `enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `scale`: the target is this many times the first pass's width and height (A1111's `hr_scale`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// `width`: the target width in pixels (A1111's `hr_resize_x`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<i64>,
    /// `height`: the target height in pixels (A1111's `hr_resize_y`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    /// `upscaler`: `latent`, `latent-nearest`, `latent-nearest-exact`, `lanczos` or an upscaler model's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upscaler: Option<String>,
    /// `strength`: the second pass's denoising strength (A1111's `denoising_strength`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// `steps`: the second pass's `num_inference_steps` (A1111's `hr_second_pass_steps`; 0: the first pass's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<i64>,
    /// `controlnet`: which passes the request's ControlNet units condition, `both`, `first` or `second`
    /// (sd-webui-controlnet's `hr_option`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controlnet: Option<String>,
}

/// `data.output`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireOutput {
    /// `format`: png, jpeg, jpg or webp, any case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `quality`: JPEG quality.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<i64>,
    /// `save_path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_path: Option<String>,
    /// `upscale`: `{"enabled", "factor", "model"}`; `true`/`false` alone read as `{"enabled": …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upscale: Option<WireUpscale>,
    /// `overwrite`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    /// `return_image_data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_image_data: Option<bool>,
    /// `embed_parameters`: write the generation parameters into the encoded image (default: yes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed_parameters: Option<bool>,
    /// `preview`: `{"enabled", "method", "interval", "source"}`; `true`/`false` alone read as `{"enabled": …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<WirePreview>,
}

/// `data.output.preview` (the C# `PreviewContract`), validated by [`crate::protocol::preview`].
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WirePreview {
    /// `enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `method`: `latent2rgb` or `vae`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `interval`: a preview every this many denoising steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    /// `source`: `denoised` or `noisy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `data.output.upscale` (the C# `UpscaleContract`), validated by [`crate::protocol::upscale`].
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireUpscale {
    /// `enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `factor`: how many times wider and taller the image gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<i64>,
    /// `model`: the upscaler's ONNX file under `<models_root>/upscalers/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// `data.batch`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireBatch {
    /// `size`: number of images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// `parallel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel: Option<bool>,
}

/// `data.metadata`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WireMetadata {
    /// `request_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `priority`: `low`, `normal` or `high`; orders requests waiting for a run slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// `timeout` in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// `tags` (accepted, unused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// Keys of the envelope.
const ENVELOPE_KEYS: &[&str] = &["message_type", "request_id", "data"];
/// Keys of `data`, legacy flat fields included.
const DATA_KEYS: &[&str] = &[
    "worker_type",
    "prompt",
    "negative_prompt",
    "prompt_2",
    "negative_prompt_2",
    "prompt_syntax",
    "init_image",
    "mask_image",
    "padding_mask_crop",
    "mask_blur",
    "model_name",
    "models",
    "hyperparameters",
    "dimensions",
    "scheduler",
    "lora",
    "controlnet",
    "hires",
    "output",
    "batch",
    "metadata",
    "guidance_scale",
    "num_inference_steps",
    "seed",
    "strength",
    "width",
    "height",
];

impl WireRequest {
    /// Decodes a request from parsed JSON. Type errors name the field's JSON path; unknown keys are appended to
    /// `warnings` as `ignored unknown field <path>`.
    pub fn from_value(value: &Value, warnings: &mut Vec<String>) -> Result<Self> {
        let Value::Object(top) = value else {
            return Err(Error::InvalidJson(format!(
                "a request must be a JSON object (the envelope or its data object), got {}",
                describe(value)
            )));
        };
        let top = Obj { map: top, path: String::new() };
        let message_type = top.string("message_type")?;
        let request_id = top.string("request_id")?;
        if top.map.contains_key("data") {
            let data = match top.child("data")? {
                Some(data) => WireData::decode(&data, warnings)?,
                None => return Err(Error::field("data", "missing: the envelope must carry the request in `data`")),
            };
            top.warn_unknown(ENVELOPE_KEYS, warnings);
            Ok(WireRequest { form: RequestForm::Envelope, message_type, request_id, data })
        } else {
            // The bare form: the paths still read `data.<field>`, as in the envelope form.
            let data_obj = Obj { map: top.map, path: "data".to_owned() };
            let data = WireData::decode_with_extra(&data_obj, &["message_type", "request_id"], warnings)?;
            Ok(WireRequest { form: RequestForm::Bare, message_type, request_id, data })
        }
    }
}

/// Names other tools give an inpainting mask (A1111 `mask`): refused, not ignored.
const OTHER_MASK_KEYS: &[&str] = &["mask"];

impl WireData {
    fn decode(obj: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Self> {
        Self::decode_with_extra(obj, &[], warnings)
    }

    /// Decodes `data`; `extra_keys` are keys a caller has already consumed (the bare form's envelope keys).
    fn decode_with_extra(obj: &Obj<'_>, extra_keys: &[&str], warnings: &mut Vec<String>) -> Result<Self> {
        let data = WireData {
            worker_type: obj.string("worker_type")?,
            prompt: obj.string("prompt")?,
            negative_prompt: obj.string("negative_prompt")?,
            prompt_2: obj.string("prompt_2")?,
            negative_prompt_2: obj.string("negative_prompt_2")?,
            prompt_syntax: obj.string("prompt_syntax")?,
            init_image: obj.string("init_image")?,
            mask_image: obj.string("mask_image")?,
            padding_mask_crop: obj.int("padding_mask_crop")?,
            mask_blur: obj.float("mask_blur")?,
            model_name: obj.string("model_name")?,
            models: obj.child("models")?.map(|o| WireModels::decode(&o, warnings)).transpose()?,
            hyperparameters: obj
                .child("hyperparameters")?
                .map(|o| WireHyperparameters::decode(&o, warnings))
                .transpose()?,
            dimensions: obj.child("dimensions")?.map(|o| WireDimensions::decode(&o, warnings)).transpose()?,
            scheduler: obj.get("scheduler").map(|v| WireScheduler::decode(v, &obj.path_of("scheduler"))).transpose()?,
            lora: obj.child("lora")?.map(|o| WireLora::decode(&o, warnings)).transpose()?,
            controlnet: WireControlNet::decode(obj, warnings)?,
            hires: WireHires::decode(obj, warnings)?,
            output: obj.child("output")?.map(|o| WireOutput::decode(&o, warnings)).transpose()?,
            batch: obj.child("batch")?.map(|o| WireBatch::decode(&o, warnings)).transpose()?,
            metadata: obj.child("metadata")?.map(|o| WireMetadata::decode(&o, warnings)).transpose()?,
            guidance_scale: obj.float("guidance_scale")?,
            num_inference_steps: obj.int("num_inference_steps")?,
            seed: obj.big_int("seed")?,
            strength: obj.float("strength")?,
            width: obj.int("width")?,
            height: obj.int("height")?,
        };
        // A mask under another tool's name must not be dropped with a warning: the request would redraw the whole
        // image.
        for key in OTHER_MASK_KEYS {
            if obj.get(key).is_some_and(|v| !v.is_null()) {
                return Err(Error::field(obj.path_of(key), "the inpainting mask is data.mask_image"));
            }
        }
        let known: Vec<&str> = DATA_KEYS.iter().chain(extra_keys).chain(OTHER_MASK_KEYS).copied().collect();
        obj.warn_unknown(&known, warnings);
        Ok(data)
    }
}

impl WireModels {
    fn decode(obj: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Self> {
        let models = WireModels { base: obj.string("base")?, refiner: obj.string("refiner")?, vae: obj.string("vae")? };
        obj.warn_unknown(&["base", "refiner", "vae"], warnings);
        Ok(models)
    }
}

impl WireHyperparameters {
    fn decode(obj: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Self> {
        let h = WireHyperparameters {
            num_inference_steps: obj.int("num_inference_steps")?,
            guidance_scale: obj.float("guidance_scale")?,
            seed: obj.big_int("seed")?,
            strength: obj.float("strength")?,
            refiner_switch_at: obj.float("refiner_switch_at")?,
            refiner_aesthetic_score: obj.float("refiner_aesthetic_score")?,
            refiner_negative_aesthetic_score: obj.float("refiner_negative_aesthetic_score")?,
            guidance_rescale: obj.float("guidance_rescale")?,
            clip_skip: obj.int("clip_skip")?,
        };
        let known = [
            "num_inference_steps",
            "guidance_scale",
            "seed",
            "strength",
            "refiner_switch_at",
            "refiner_aesthetic_score",
            "refiner_negative_aesthetic_score",
            "guidance_rescale",
            "clip_skip",
        ];
        obj.warn_unknown(&known, warnings);
        Ok(h)
    }
}

impl WireDimensions {
    fn decode(obj: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Self> {
        let size = |key: &str, warnings: &mut Vec<String>| -> Result<Option<WireSize>> {
            let Some(o) = obj.child(key)? else { return Ok(None) };
            o.warn_unknown(&["width", "height"], warnings);
            Ok(Some(WireSize { width: o.int("width")?, height: o.int("height")? }))
        };
        let crop = match obj.child("crops_coords_top_left")? {
            Some(o) => {
                o.warn_unknown(&["top", "left"], warnings);
                Some(WireCrop { top: o.int("top")?, left: o.int("left")? })
            }
            None => None,
        };
        let d = WireDimensions {
            width: obj.int("width")?,
            height: obj.int("height")?,
            original_size: size("original_size", warnings)?,
            target_size: size("target_size", warnings)?,
            crops_coords_top_left: crop,
        };
        obj.warn_unknown(&["width", "height", "original_size", "target_size", "crops_coords_top_left"], warnings);
        Ok(d)
    }
}

impl WireScheduler {
    /// The scheduler name, whichever form was sent.
    pub fn name(&self) -> &str {
        match self {
            WireScheduler::Name(name) => name,
            WireScheduler::Object(o) => &o.name,
        }
    }

    fn decode(value: &Value, path: &str) -> Result<Self> {
        match value {
            Value::String(name) => Ok(WireScheduler::Name(name.clone())),
            Value::Object(map) => {
                let obj = Obj { map, path: path.to_owned() };
                let name = match (obj.string("type")?, obj.string("name")?) {
                    (Some(t), Some(n)) if t != n => {
                        return Err(Error::field(
                            path,
                            format!("has both `type` ({t:?}) and `name` ({n:?}); give the scheduler name once"),
                        ))
                    }
                    (Some(name), _) | (None, Some(name)) => name,
                    (None, None) => {
                        return Err(Error::field(
                            obj.path_of("type"),
                            "missing: a scheduler object needs a string `type` (or `name`), e.g. \
                             {\"type\": \"EulerDiscreteScheduler\", \"use_karras_sigmas\": true}",
                        ))
                    }
                };
                // Everything else is a config override; null means "not set", like every other optional.
                let overrides = map
                    .iter()
                    .filter(|(k, v)| k.as_str() != "type" && k.as_str() != "name" && !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Ok(WireScheduler::Object(WireSchedulerObject { name, overrides }))
            }
            other => Err(type_error(path, "a scheduler name (string) or an object with a string `type`", other)),
        }
    }
}

impl WireLora {
    fn decode(obj: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Self> {
        let models = match obj.get("models") {
            None => None,
            Some(Value::Array(items)) => {
                let base = obj.path_of("models");
                let mut models = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{base}[{i}]");
                    let Value::Object(map) = item else {
                        return Err(type_error(&path, "an object {\"name\", \"weight\"}", item));
                    };
                    let m = Obj { map, path };
                    models.push(WireLoraModel {
                        name: m.string("name")?,
                        weight: m.float("weight")?,
                        unet_weight: m.float("unet_weight")?,
                        text_encoder_weight: m.float("text_encoder_weight")?,
                    });
                    m.warn_unknown(&["name", "weight", "unet_weight", "text_encoder_weight"], warnings);
                }
                Some(models)
            }
            Some(other) => return Err(type_error(&obj.path_of("models"), "an array", other)),
        };
        let lora = WireLora { enabled: obj.boolean("enabled")?, models };
        obj.warn_unknown(&["enabled", "models"], warnings);
        Ok(lora)
    }
}

/// Keys of one `data.controlnet.models[i]` entry.
const CONTROLNET_UNIT_KEYS: &[&str] =
    &["type", "model_path", "control_image", "conditioning_scale", "guidance_start", "guidance_end", "preprocessor"];

impl WireControlNet {
    /// `controlnet` of the `data` object `parent`: an object, or a bare `true`/`false` for `enabled`.
    fn decode(parent: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Option<Self>> {
        let path = parent.path_of("controlnet");
        match parent.get("controlnet") {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(WireControlNet { enabled: Some(*b), ..Default::default() })),
            Some(Value::Object(map)) => {
                let obj = Obj { map, path };
                let models = match obj.get("models") {
                    None => None,
                    Some(Value::Array(items)) => Some(units(items, &obj.path_of("models"), warnings)?),
                    Some(other) => return Err(type_error(&obj.path_of("models"), "an array", other)),
                };
                let cn =
                    WireControlNet { enabled: obj.boolean("enabled")?, models, guess_mode: obj.boolean("guess_mode")? };
                obj.warn_unknown(&["enabled", "models", "guess_mode"], warnings);
                Ok(Some(cn))
            }
            Some(other) => Err(type_error(&path, "an object {\"enabled\", \"models\", \"guess_mode\"}", other)),
        }
    }
}

/// The ControlNet units of the array `items` at `base`.
fn units(items: &[Value], base: &str, warnings: &mut Vec<String>) -> Result<Vec<WireControlNetUnit>> {
    let mut units = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("{base}[{i}]");
        let Value::Object(map) = item else {
            return Err(type_error(&path, "an object {\"model_path\", \"control_image\", ...}", item));
        };
        let u = Obj { map, path };
        units.push(WireControlNetUnit {
            kind: u.string("type")?,
            model_path: u.string("model_path")?,
            control_image: u.string("control_image")?,
            conditioning_scale: u.float("conditioning_scale")?,
            guidance_start: u.float("guidance_start")?,
            guidance_end: u.float("guidance_end")?,
            preprocessor: u.get("preprocessor").cloned(),
        });
        u.warn_unknown(CONTROLNET_UNIT_KEYS, warnings);
    }
    Ok(units)
}

/// Keys of `data.hires`.
const HIRES_KEYS: &[&str] = &["enabled", "scale", "width", "height", "upscaler", "strength", "steps", "controlnet"];

impl WireHires {
    /// `hires` of the `data` object `parent`: an object, or a bare `true`/`false` for `enabled`.
    fn decode(parent: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Option<Self>> {
        let path = parent.path_of("hires");
        match parent.get("hires") {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(WireHires { enabled: Some(*b), ..Default::default() })),
            Some(Value::Object(map)) => {
                let obj = Obj { map, path };
                let hires = WireHires {
                    enabled: obj.boolean("enabled")?,
                    scale: obj.float("scale")?,
                    width: obj.int("width")?,
                    height: obj.int("height")?,
                    upscaler: obj.string("upscaler")?,
                    strength: obj.float("strength")?,
                    steps: obj.int("steps")?,
                    controlnet: obj.string("controlnet")?,
                };
                obj.warn_unknown(HIRES_KEYS, warnings);
                Ok(Some(hires))
            }
            Some(other) => Err(type_error(
                &path,
                "an object {\"enabled\", \"scale\", \"upscaler\", \"strength\", \"steps\", ...} (or true/false)",
                other,
            )),
        }
    }
}

impl WireOutput {
    fn decode(obj: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Self> {
        let output = WireOutput {
            format: obj.string("format")?,
            quality: obj.int("quality")?,
            save_path: obj.string("save_path")?,
            upscale: WireUpscale::decode(obj, warnings)?,
            overwrite: obj.boolean("overwrite")?,
            return_image_data: obj.boolean("return_image_data")?,
            embed_parameters: obj.boolean("embed_parameters")?,
            preview: WirePreview::decode(obj, warnings)?,
        };
        obj.warn_unknown(
            &[
                "format",
                "quality",
                "save_path",
                "upscale",
                "overwrite",
                "return_image_data",
                "embed_parameters",
                "preview",
            ],
            warnings,
        );
        Ok(output)
    }
}

impl WireUpscale {
    /// `upscale` of the `output` object `parent`: an object, or a bare `true`/`false` for `enabled`.
    fn decode(parent: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Option<Self>> {
        match parent.get("upscale") {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(WireUpscale { enabled: Some(*b), ..Default::default() })),
            Some(Value::Object(map)) => {
                let obj = Obj { map, path: parent.path_of("upscale") };
                let upscale = WireUpscale {
                    enabled: obj.boolean("enabled")?,
                    factor: obj.int("factor")?,
                    model: obj.string("model")?,
                };
                obj.warn_unknown(&["enabled", "factor", "model"], warnings);
                Ok(Some(upscale))
            }
            Some(other) => Err(type_error(
                &parent.path_of("upscale"),
                "an object {\"enabled\", \"factor\", \"model\"} (or true/false)",
                other,
            )),
        }
    }
}

impl WirePreview {
    /// `preview` of the `output` object `parent`: an object, or a bare `true`/`false` for `enabled`.
    fn decode(parent: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Option<Self>> {
        match parent.get("preview") {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(WirePreview { enabled: Some(*b), ..Default::default() })),
            Some(Value::Object(map)) => {
                let obj = Obj { map, path: parent.path_of("preview") };
                let preview = WirePreview {
                    enabled: obj.boolean("enabled")?,
                    method: obj.string("method")?,
                    interval: obj.int("interval")?,
                    source: obj.string("source")?,
                };
                obj.warn_unknown(&["enabled", "method", "interval", "source"], warnings);
                Ok(Some(preview))
            }
            Some(other) => Err(type_error(
                &parent.path_of("preview"),
                "an object {\"enabled\", \"method\", \"interval\", \"source\"} (or true/false)",
                other,
            )),
        }
    }
}

impl WireBatch {
    fn decode(obj: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Self> {
        let batch = WireBatch { size: obj.int("size")?, parallel: obj.boolean("parallel")? };
        obj.warn_unknown(&["size", "parallel"], warnings);
        Ok(batch)
    }
}

impl WireMetadata {
    fn decode(obj: &Obj<'_>, warnings: &mut Vec<String>) -> Result<Self> {
        let tags = match obj.get("tags") {
            None => None,
            Some(Value::Array(items)) => {
                let base = obj.path_of("tags");
                let tags = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::String(s) => Ok(s.clone()),
                        other => Err(type_error(&format!("{base}[{i}]"), "a string", other)),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(tags)
            }
            Some(other) => return Err(type_error(&obj.path_of("tags"), "an array of strings", other)),
        };
        let metadata = WireMetadata {
            request_id: obj.string("request_id")?,
            priority: obj.string("priority")?,
            timeout: obj.float("timeout")?,
            tags,
        };
        obj.warn_unknown(&["request_id", "priority", "timeout", "tags"], warnings);
        Ok(metadata)
    }
}

/// A JSON object being decoded, with its path for messages.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    /// Path of this object (`""` for the top level).
    path: String,
}

impl<'a> Obj<'a> {
    /// The path of `key` inside this object.
    fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`; JSON null reads as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn child(&self, key: &str) -> Result<Option<Obj<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj { map, path: self.path_of(key) })),
            Some(other) => Err(type_error(&self.path_of(key), "an object", other)),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(type_error(&self.path_of(key), "a string", other)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(type_error(&self.path_of(key), "true or false", other)),
        }
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) => Ok(Some(f)),
                None => Err(Error::field(self.path_of(key), format!("number {n} is out of range"))),
            },
            Some(other) => Err(type_error(&self.path_of(key), "a number", other)),
        }
    }

    /// An integer in i64 range; integral floats (`7.0`) are accepted.
    fn int(&self, key: &str) -> Result<Option<i64>> {
        let Some(v) = self.big_int(key)? else { return Ok(None) };
        i64::try_from(v).map(Some).map_err(|_| Error::field(self.path_of(key), format!("{v} is out of range")))
    }

    /// An integer from -2^63 to 2^64-1; integral floats (`7.0`) are accepted.
    fn big_int(&self, key: &str) -> Result<Option<i128>> {
        match self.get(key) {
            None => Ok(None),
            Some(value @ Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    Ok(Some(i.into()))
                } else if let Some(u) = n.as_u64() {
                    Ok(Some(u.into()))
                } else {
                    match n.as_f64() {
                        // 2^64 is exact in f64; every finite integral float in [-2^63, 2^64) converts exactly.
                        Some(f) if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(64) => {
                            Ok(Some(f as i128))
                        }
                        Some(f) if f.fract() == 0.0 => {
                            Err(Error::field(self.path_of(key), format!("{n} is out of range")))
                        }
                        _ => Err(type_error(&self.path_of(key), "an integer", value)),
                    }
                }
            }
            Some(other) => Err(type_error(&self.path_of(key), "an integer", other)),
        }
    }

    /// Appends `ignored unknown field <path>` for every key not in `known`.
    fn warn_unknown(&self, known: &[&str], warnings: &mut Vec<String>) {
        for key in self.map.keys().filter(|k| !known.contains(&k.as_str())) {
            warnings.push(format!("ignored unknown field {}", self.path_of(key)));
        }
    }
}

/// `invalid value for <path>: expected <expected>, got <what>`.
fn type_error(path: &str, expected: &str, got: &Value) -> Error {
    Error::field(path, format!("expected {expected}, got {}", describe(got)))
}

/// A short description of a JSON value for error messages (long strings are cut).
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => {
            const MAX: usize = 40;
            if s.chars().count() > MAX {
                let head: String = s.chars().take(MAX).collect();
                format!("string {head:?}...")
            } else {
                format!("string {s:?}")
            }
        }
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: Value) -> (Result<WireRequest>, Vec<String>) {
        let mut warnings = Vec::new();
        let r = WireRequest::from_value(&v, &mut warnings);
        (r, warnings)
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidField { field, .. } => field,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn envelope_and_bare_forms_decode_the_same_data() {
        let data = json!({"prompt": "a cat", "dimensions": {"width": 512, "height": 768}});
        let (env, w1) = decode(json!({"message_type": "inference_request", "request_id": "r1", "data": data}));
        let (bare, w2) = decode(data);
        let (env, bare) = (env.unwrap(), bare.unwrap());
        assert!(w1.is_empty() && w2.is_empty(), "{w1:?} {w2:?}");
        assert_eq!(env.form, RequestForm::Envelope);
        assert_eq!(bare.form, RequestForm::Bare);
        assert_eq!(env.request_id.as_deref(), Some("r1"));
        assert_eq!(env.data, bare.data);
        assert_eq!(
            env.data.dimensions,
            Some(WireDimensions { width: Some(512), height: Some(768), ..Default::default() })
        );
    }

    #[test]
    fn nulls_read_as_absent_and_integral_floats_as_integers() {
        let (r, w) = decode(json!({"data": {
            "prompt": "x", "negative_prompt": null, "models": null, "lora": null, "controlnet": null,
            "hyperparameters": {"num_inference_steps": 30.0, "seed": null, "guidance_scale": 7},
            "output": {"upscale": null, "quality": 90.0}
        }}));
        let d = r.unwrap().data;
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(d.negative_prompt, None);
        assert_eq!(d.models, None);
        assert_eq!(d.lora, None);
        assert_eq!(d.controlnet, None);
        let h = d.hyperparameters.unwrap();
        assert_eq!((h.num_inference_steps, h.seed, h.guidance_scale), (Some(30), None, Some(7.0)));
        let o = d.output.unwrap();
        assert_eq!((o.upscale, o.quality), (None, Some(90)));
    }

    #[test]
    fn seed_spans_minus_2_63_to_2_64_minus_1() {
        let (r, _) = decode(json!({"prompt": "x", "hyperparameters": {"seed": u64::MAX}}));
        assert_eq!(r.unwrap().data.hyperparameters.unwrap().seed, Some(u64::MAX as i128));
        let (r, _) = decode(json!({"prompt": "x", "seed": -1}));
        assert_eq!(r.unwrap().data.seed, Some(-1));
        let (r, _) = decode(serde_json::from_str(r#"{"prompt": "x", "seed": 1e30}"#).unwrap());
        assert_eq!(field_of(r.unwrap_err()), "data.seed");
    }

    #[test]
    fn wrong_types_name_their_path() {
        let cases = [
            (json!({"prompt": 5}), "data.prompt"),
            (json!({"data": {"dimensions": {"width": "abc"}}}), "data.dimensions.width"),
            (json!({"data": {"dimensions": {"width": 512.5}}}), "data.dimensions.width"),
            (json!({"data": {"dimensions": 5}}), "data.dimensions"),
            (json!({"data": {"hyperparameters": {"guidance_scale": "7"}}}), "data.hyperparameters.guidance_scale"),
            (json!({"data": {"output": {"overwrite": "yes"}}}), "data.output.overwrite"),
            (json!({"data": {"lora": {"models": [{"name": 3}]}}}), "data.lora.models[0].name"),
            (json!({"data": {"lora": {"models": [5]}}}), "data.lora.models[0]"),
            (json!({"data": {"lora": {"models": {}}}}), "data.lora.models"),
            (json!({"data": {"metadata": {"tags": ["a", 1]}}}), "data.metadata.tags[1]"),
            (json!({"data": {"scheduler": 3}}), "data.scheduler"),
            (json!({"data": {"scheduler": {"use_karras_sigmas": true}}}), "data.scheduler.type"),
            (json!({"data": {"scheduler": {"type": "A", "name": "B"}}}), "data.scheduler"),
            (json!({"data": {"batch": {"size": 1e20}}}), "data.batch.size"),
            (json!({"message_type": 1, "data": {}}), "message_type"),
            (json!({"data": 5}), "data"),
            (json!({"data": null}), "data"),
        ];
        for (value, path) in cases {
            let (r, _) = decode(value.clone());
            assert_eq!(field_of(r.unwrap_err()), path, "for {value}");
        }
    }

    #[test]
    fn non_object_top_level_is_invalid_json() {
        let (r, _) = decode(json!([1, 2]));
        assert!(matches!(r, Err(Error::InvalidJson(_))));
    }

    #[test]
    fn unknown_keys_become_warnings_with_paths() {
        let (r, mut w) = decode(json!({"extra": 1, "data": {
            "prompt": "x", "foo": 1, "models": {"bar": 2}, "lora": {"models": [{"name": "a", "baz": 1}]},
            "controlnet": {"anything": "goes", "models": [{"model_path": "c", "weight": 1}]},
            "output": {"upscale": {"factor": 2, "scale": 4}, "qux": 1}
        }}));
        r.unwrap();
        w.sort();
        assert_eq!(
            w,
            [
                "ignored unknown field data.controlnet.anything",
                "ignored unknown field data.controlnet.models[0].weight",
                "ignored unknown field data.foo",
                "ignored unknown field data.lora.models[0].baz",
                "ignored unknown field data.models.bar",
                "ignored unknown field data.output.qux",
                "ignored unknown field data.output.upscale.scale",
                "ignored unknown field extra",
            ]
        );
        let (r, w) = decode(json!({"prompt": "x", "message_type": "inference_request", "request_id": "r", "z": 0}));
        let r = r.unwrap();
        assert_eq!(r.message_type.as_deref(), Some("inference_request"));
        assert_eq!(r.request_id.as_deref(), Some("r"));
        assert_eq!(w, ["ignored unknown field data.z"]);
    }

    #[test]
    fn a_mask_under_another_name_is_refused_not_ignored() {
        let (r, _) = decode(json!({"data": {"prompt": "x", "init_image": "a.png", "mask": "m.png"}}));
        match r {
            Err(Error::InvalidField { field, message }) => {
                assert_eq!(field, "data.mask");
                assert!(message.contains("data.mask_image"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let (r, w) = decode(json!({"data": {"prompt": "x", "mask": null, "mask_image": "m.png"}}));
        assert!(r.is_ok() && w.is_empty(), "{w:?}");
        assert_eq!(r.unwrap().data.mask_image.as_deref(), Some("m.png"));
    }

    #[test]
    fn controlnet_forms() {
        let unit = |name: &str| WireControlNetUnit { model_path: Some(name.into()), ..Default::default() };
        let (r, _) = decode(json!({"prompt": "x", "controlnet": false}));
        assert_eq!(r.unwrap().data.controlnet, Some(WireControlNet { enabled: Some(false), ..Default::default() }));
        let (r, _) = decode(json!({"prompt": "x", "controlnet": {"models": [{"model_path": "a"}]}}));
        assert_eq!(
            r.unwrap().data.controlnet,
            Some(WireControlNet { models: Some(vec![unit("a")]), ..Default::default() })
        );
        let (r, _) = decode(json!({"prompt": "x", "controlnet": {"guess_mode": true, "models": []}}));
        assert_eq!(r.unwrap().data.controlnet.unwrap().guess_mode, Some(true));
        for (bad, field) in [
            (json!({"controlnet": "canny"}), "data.controlnet"),
            (json!({"controlnet": {"models": {}}}), "data.controlnet.models"),
            (json!({"controlnet": {"models": [3]}}), "data.controlnet.models[0]"),
            (json!({"controlnet": [{"model_path": "a"}]}), "data.controlnet"),
            (
                json!({"controlnet": {"models": [{"conditioning_scale": "1"}]}}),
                "data.controlnet.models[0].conditioning_scale",
            ),
            (json!({"controlnet": {"enabled": "yes"}}), "data.controlnet.enabled"),
            (json!({"controlnet": {"guess_mode": 1}}), "data.controlnet.guess_mode"),
        ] {
            match decode(bad).0 {
                Err(Error::InvalidField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn scheduler_forms() {
        let (r, _) = decode(json!({"prompt": "x", "scheduler": "EulerDiscreteScheduler"}));
        assert_eq!(r.unwrap().data.scheduler, Some(WireScheduler::Name("EulerDiscreteScheduler".into())));
        let (r, _) =
            decode(json!({"prompt": "x", "scheduler": {"name": "DPM++ 2M", "use_karras_sigmas": true, "x": null}}));
        let s = r.unwrap().data.scheduler.unwrap();
        assert_eq!(s.name(), "DPM++ 2M");
        let WireScheduler::Object(o) = s else { panic!("object form expected") };
        assert_eq!(Value::Object(o.overrides), json!({"use_karras_sigmas": true}));
    }

    #[test]
    fn serialization_round_trips() {
        let v = json!({"message_type": "inference_request", "request_id": "r", "data": {
            "prompt": "x", "negative_prompt": "", "models": {"base": "m"},
            "hyperparameters": {"num_inference_steps": 20, "guidance_scale": 6.5, "seed": u64::MAX},
            "scheduler": {"type": "EulerDiscreteScheduler", "timestep_spacing": "trailing"},
            "lora": {"enabled": false, "models": []},
            "controlnet": {"enabled": true, "models": [{"type": "canny", "model_path": "c", "control_image": "e.png",
                "conditioning_scale": 0.5, "guidance_start": 0.1, "guidance_end": 0.9, "preprocessor": "none"}]},
            "output": {"format": "png", "upscale": {"enabled": false}}, "batch": {"size": 2},
            "metadata": {"tags": ["a"], "timeout": 10.5}
        }});
        let (r, w) = decode(v.clone());
        let r = r.unwrap();
        assert!(w.is_empty());
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back, v);
    }
}
