//! The reply JSON: the seed's `EnhancedResponseTransformer` shape plus a machine-readable `error_code`.
//!
//! ```json
//! {"request_id": "r1", "success": true,
//!  "data": {"generated_images": [{"image_path": null, "image_data": "iVBOR...", "format": "png",
//!                                 "width": 1024, "height": 1024,
//!                                 "metadata": {"seed": 42, "steps": 30, "guidance_scale": 7.0,
//!                                              "scheduler": "EulerDiscreteScheduler",
//!                                              "model_info": {"base_model": "sdxl", "refiner_model": null,
//!                                                             "vae_model": null}}}],
//!           "processing_metrics": {"total_time": 12.5, ...}},
//!  "warnings": [], "error": null, "error_code": null}
//! ```
//!
//! On failure `data` is null, `error` is the message and `error_code` one of [`crate::ErrorCode::as_str`]
//! (a cancelled run is `"cancelled"`). Metrics that cannot be measured are null, never a made-up number.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

/// One reply to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id; null only when a failed request carried none we could read.
    pub request_id: Option<String>,
    /// Whether images were produced.
    pub success: bool,
    /// The images and metrics; null on failure.
    pub data: Option<ResponseData>,
    /// Non-fatal notes (unknown fields, settings without effect), also on failure.
    pub warnings: Vec<String>,
    /// The error message on failure, else null.
    pub error: Option<String>,
    /// The stable error kind on failure (`invalid_request`, `cancelled`, ...), else null.
    pub error_code: Option<String>,
}

/// `data` of a successful reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseData {
    /// One entry per image, in batch order.
    pub generated_images: Vec<GeneratedImage>,
    /// Timings and device facts for the whole request.
    pub processing_metrics: ProcessingMetrics,
}

/// One generated image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedImage {
    /// Where the image was written, or null when it was not saved.
    pub image_path: Option<String>,
    /// Base64 of the encoded file, or null when the request did not ask for it.
    pub image_data: Option<String>,
    /// Encoding: `png`, `jpeg` or `webp`.
    pub format: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// How the image was made.
    pub metadata: ImageMetadata,
}

/// `metadata` of one image: enough to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMetadata {
    /// The seed this image used (the request's resolved seed + its batch index).
    pub seed: u64,
    /// Denoising steps requested (image-to-image runs `init_image.denoising_steps` of them).
    pub steps: u32,
    /// Guidance scale.
    pub guidance_scale: f32,
    /// `data.hyperparameters.guidance_rescale` when it was applied (non-zero, with guidance); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_rescale: Option<f32>,
    /// `data.hyperparameters.clip_skip` when it was not 0; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<u32>,
    /// The diffusers class name of the scheduler that ran.
    pub scheduler: String,
    /// The scheduler config keys that differ from the model's `scheduler_config.json`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_options: Option<Map<String, Value>>,
    /// The models used.
    pub model_info: ModelInfo,
    /// The LoRAs merged into the weights, in request order; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraInfo>,
    /// The ControlNet units that conditioned the image, in request order; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controlnets: Vec<ControlNetInfo>,
    /// How the image was upscaled after decoding; absent when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upscale: Option<UpscaleInfo>,
    /// The init image it started from (image-to-image); absent for text-to-image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<InitImageInfo>,
    /// With `data.hires`: the second pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hires: Option<HiresInfo>,
    /// How the prompts were read with `data.prompt_syntax: "weighted"`; absent in the default plain mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptInfo>,
}

/// `metadata.prompt`: a weighted prompt's size (`data.prompt_syntax: "weighted"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptInfo {
    /// `"weighted"`.
    pub syntax: String,
    /// The prompt's tokens (the more of the two tokenizers'), bos/eos/padding not counted.
    pub tokens: usize,
    /// The negative prompt's tokens; absent when there is none (or no guidance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_tokens: Option<usize>,
    /// The 77-token chunks each text encoder ran for the prompt and the negative prompt (the base model's).
    pub chunks: usize,
}

/// `metadata.init_image`: how image-to-image used `data.init_image` (the image itself is not echoed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitImageInfo {
    /// The strength it ran with.
    pub strength: f64,
    /// The steps that ran: `int(steps × strength)`.
    pub denoising_steps: u32,
    /// The init image's width as given (it was resized to the image's width when they differ).
    pub source_width: u32,
    /// The init image's height as given.
    pub source_height: u32,
    /// With `data.padding_mask_crop`: the region of the init image that was inpainted, `[x1, y1, x2, y2]` (columns
    /// `x1..x2`, rows `y1..y2`; diffusers' `crops_coords`), generated at the request's size and put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_crop: Option<[u32; 4]>,
    /// With `data.mask_image` (inpainting): how the mask was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<MaskInfo>,
}

/// `metadata.init_image.mask`: the mask of an inpainting request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskInfo {
    /// The blur radius applied to it (`data.mask_blur`; 0: none).
    pub blur: f64,
    /// The share of the generated pixels the mask marked for redrawing (white after binarizing at 0.5), from 0 to
    /// 1; with `data.padding_mask_crop`, of the cropped region's.
    pub redrawn_fraction: f64,
}

/// `metadata.upscale`: what `data.output.upscale` did to the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpscaleInfo {
    /// The upscaler as requested (`data.output.upscale.model`).
    pub model: String,
    /// The requested factor: the image is this many times the generated width and height.
    pub factor: u32,
    /// The model's native scale.
    pub model_scale: u32,
    /// Runs of the model per image; a Lanczos resize followed when `model_scale ^ passes != factor`.
    pub passes: u32,
}

/// `metadata.hires`: what hires fix's second pass (`data.hires`) did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HiresInfo {
    /// The second pass's (and the image's, before `data.output.upscale`) width.
    pub width: u32,
    /// The second pass's height.
    pub height: u32,
    /// The first (text-to-image) pass's width.
    pub first_pass_width: u32,
    /// The first pass's height.
    pub first_pass_height: u32,
    /// The upscaler: `latent`, `latent-nearest`, `latent-nearest-exact`, `lanczos` or the model's name.
    pub upscaler: String,
    /// The second pass's denoising strength.
    pub strength: f64,
    /// The second pass's `num_inference_steps`.
    pub steps: u32,
    /// The steps the second pass ran: `int(steps × strength)`.
    pub denoising_steps: u32,
    /// With an upscaler model: its runs per image (a Lanczos resize to the target followed when the size differed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_passes: Option<u32>,
    /// With ControlNet units: the passes they conditioned (`data.hires.controlnet`): `both`, `first` or `second`;
    /// absent without units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlnet: Option<String>,
}

/// One entry of `metadata.loras`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraInfo {
    /// The name as requested.
    pub name: String,
    /// The requested weight.
    pub weight: f32,
    /// The UNet weight, when the request gave one different from `weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet_weight: Option<f32>,
    /// The text-encoder weight, when the request gave one different from `weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder_weight: Option<f32>,
}

impl From<&super::params::LoraRequest> for LoraInfo {
    /// The LoRA as this request asked for it (a cached pipeline may have been built for another request that
    /// spelled the same file and weights differently).
    fn from(r: &super::params::LoraRequest) -> Self {
        let differs = |w: Option<f32>| w.filter(|&w| w != r.weight);
        LoraInfo {
            name: r.name.clone(),
            weight: r.weight,
            unet_weight: differs(r.unet_weight),
            text_encoder_weight: differs(r.text_encoder_weight),
        }
    }
}

/// One entry of `metadata.controlnets` (the control image itself is not echoed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlNetInfo {
    /// `model_path` as requested.
    pub model: String,
    /// `type` as requested; absent when not given.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The conditioning scale.
    pub conditioning_scale: f32,
    /// The fraction of the steps where the unit started applying.
    pub guidance_start: f64,
    /// The fraction of the steps where it stopped.
    pub guidance_end: f64,
    /// The preprocessor that made the control image from the one sent; absent when it was used as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessor: Option<PreprocessorInfo>,
    /// True when the unit ran in diffusers' guess mode (`data.controlnet.guess_mode`, or a first unit with
    /// `global_pool_conditions`); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guess_mode: bool,
    /// True when the ControlNet's config says `global_pool_conditions` (its residuals were averaged over the
    /// image); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global_pool_conditions: bool,
    /// With hires fix: the passes the unit conditioned, in order (`first`: text-to-image at the request's size,
    /// `second`: the hires pass, its control image resized to the target size); absent without hires fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passes: Vec<String>,
}

/// `metadata.controlnets[i].preprocessor`: the built-in preprocessor that ran, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessorInfo {
    /// Its name: `canny`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Canny's low threshold.
    pub low_threshold: f64,
    /// Canny's high threshold.
    pub high_threshold: f64,
}

impl From<&super::params::ControlNetRequest> for ControlNetInfo {
    fn from(r: &super::params::ControlNetRequest) -> Self {
        ControlNetInfo {
            model: r.model.clone(),
            kind: r.kind.clone(),
            conditioning_scale: r.conditioning_scale,
            guidance_start: r.guidance_start,
            guidance_end: r.guidance_end,
            preprocessor: r.preprocessor.map(|p| match p {
                super::params::Preprocessor::Canny { low_threshold, high_threshold } => {
                    PreprocessorInfo { kind: "canny".into(), low_threshold, high_threshold }
                }
            }),
            guess_mode: false,
            global_pool_conditions: false,
            passes: Vec::new(),
        }
    }
}

/// `model_info` of one image.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The base model's name.
    pub base_model: Option<String>,
    /// The refiner's name (always null until the refiner exists).
    pub refiner_model: Option<String>,
    /// The custom VAE's name (null: the model's own VAE).
    pub vae_model: Option<String>,
}

/// `processing_metrics`: seconds unless noted. One set per request, summed over the batch.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessingMetrics {
    /// From receiving the request to the reply, parsing and model loading included.
    pub total_time: f64,
    /// Text encoding + VAE encode (image-to-image) + denoising + VAE decode.
    pub inference_time: f64,
    /// Loading the model's sessions for this request (0 when it was already loaded).
    #[serde(default)]
    pub model_load_time: f64,
    /// Both text encoders, positive and negative prompts.
    pub text_encoding_time: f64,
    /// The whole denoising loop.
    pub denoising_time: f64,
    /// `denoising_time` divided by the number of steps run.
    pub denoising_step_avg: f64,
    /// The VAE decoder.
    pub vae_decode_time: f64,
    /// The VAE encoder on the init image (image-to-image, `data.init_image`); 0 otherwise.
    #[serde(default)]
    pub vae_encode_time: f64,
    /// Image encoding, base64 and file writing.
    pub encode_save_time: f64,
    /// The upscaler's passes and resizes (`data.output.upscale`), the whole batch; 0 without upscaling.
    #[serde(default)]
    pub upscale_time: f64,
    /// Time inside ONNX Runtime graph calls (every graph, the whole batch); `total_time` minus this is what
    /// sdxlrt itself spent (parsing, tokenizing, scheduler math, copies, encoding, waiting for a run slot).
    #[serde(default)]
    pub onnxruntime_time: f64,
    /// UNet runs (a CFG batch of 2 counts once; a batch run one image at a time counts per image).
    pub unet_evaluations: u32,
    /// Denoising steps per image: the requested ones, or image-to-image's `int(steps × strength)`.
    pub steps: u32,
    /// The execution provider and device, e.g. `CPU` or `CUDA:0 (NVIDIA H100)`.
    pub device_name: String,
    /// Memory in use on the request's device after the run, in bytes: this process's RSS on CPU, the GPU's used
    /// memory (NVML, whole device) on CUDA; null where it cannot be read.
    pub device_memory_used: Option<u64>,
    /// The largest such reading during the run (sampled at stage boundaries and every step), in bytes; null where
    /// it cannot be read.
    pub peak_memory: Option<u64>,
}

impl Response {
    /// A successful reply.
    pub fn success(
        request_id: impl Into<String>,
        images: Vec<GeneratedImage>,
        metrics: ProcessingMetrics,
        warnings: Vec<String>,
    ) -> Self {
        Response {
            request_id: Some(request_id.into()),
            success: true,
            data: Some(ResponseData { generated_images: images, processing_metrics: metrics }),
            warnings,
            error: None,
            error_code: None,
        }
    }

    /// A failed reply: `error` is `err`'s message, `error_code` its [`crate::ErrorCode`] name.
    pub fn failure(request_id: Option<&str>, err: &Error, warnings: Vec<String>) -> Self {
        Response {
            request_id: request_id.map(str::to_owned),
            success: false,
            data: None,
            warnings,
            error: Some(err.to_string()),
            error_code: Some(err.code().as_str().to_owned()),
        }
    }

    /// The reply as compact JSON. Infallible: these types always serialize (non-finite floats become null);
    /// should serde_json still fail, a minimal `internal` failure reply is returned instead of panicking.
    pub fn to_json(&self) -> String {
        match serde_json::to_string(self) {
            Ok(json) => json,
            Err(e) => {
                let fallback = Response::failure(
                    self.request_id.as_deref(),
                    &Error::Internal(format!("cannot serialize the response: {e}")),
                    Vec::new(),
                );
                serde_json::to_string(&fallback).unwrap_or_else(|_| LAST_RESORT_JSON.to_owned())
            }
        }
    }

    /// Best effort: the `request_id` of a request that failed to parse or validate, so its failure reply can
    /// still carry it. Looks at the envelope's `request_id`, then `data.metadata.request_id` (or
    /// `metadata.request_id` in the bare form); for text that is not JSON, at the first `"request_id": "..."`.
    /// Empty ids and ids over 256 bytes are not returned.
    pub fn request_id_hint(json: &str) -> Option<String> {
        const MAX_PARSE_BYTES: usize = 16 << 20;
        let usable = |s: &str| !s.is_empty() && s.len() <= 256;
        if json.len() <= MAX_PARSE_BYTES {
            if let Ok(value) = serde_json::from_str::<Value>(json) {
                let candidates = [
                    value.get("request_id"),
                    value.get("data").and_then(|d| d.get("metadata")).and_then(|m| m.get("request_id")),
                    value.get("metadata").and_then(|m| m.get("request_id")),
                ];
                return candidates
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find(|s| usable(s))
                    .map(str::to_owned);
            }
        }
        scan_request_id(json).filter(|s| usable(s))
    }
}

/// The reply when even the fallback reply cannot be serialized (never seen; kept so `to_json` cannot panic).
const LAST_RESORT_JSON: &str = concat!(
    r#"{"request_id":null,"success":false,"data":null,"warnings":[],"#,
    r#""error":"internal error: cannot serialize the response","error_code":"internal"}"#
);

/// Finds the first `"request_id"` key followed by `:` and a string literal in text that need not be valid JSON.
fn scan_request_id(text: &str) -> Option<String> {
    const KEY: &str = "\"request_id\"";
    let mut rest = text;
    while let Some(pos) = rest.find(KEY) {
        rest = &rest[pos + KEY.len()..];
        let Some(after_colon) = rest.trim_start().strip_prefix(':') else { continue };
        let literal = after_colon.trim_start();
        if !literal.starts_with('"') {
            continue;
        }
        // The literal ends at the first quote not escaped by a backslash.
        let bytes = literal.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        if i < bytes.len() {
            if let Ok(s) = serde_json::from_str::<String>(&literal[..=i]) {
                return Some(s);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> GeneratedImage {
        GeneratedImage {
            image_path: Some("out/a.png".into()),
            image_data: None,
            format: "png".into(),
            width: 1024,
            height: 768,
            metadata: ImageMetadata {
                seed: u64::MAX,
                steps: 30,
                guidance_scale: 7.5,
                guidance_rescale: None,
                clip_skip: None,
                scheduler: "EulerDiscreteScheduler".into(),
                scheduler_options: None,
                model_info: ModelInfo { base_model: Some("sdxl".into()), ..Default::default() },
                loras: Vec::new(),
                controlnets: Vec::new(),
                upscale: None,
                init_image: None,
                hires: None,
                prompt: None,
            },
        }
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn success_json_shape() {
        let metrics = ProcessingMetrics {
            total_time: 2.5,
            steps: 30,
            unet_evaluations: 30,
            device_name: "CPU".into(),
            peak_memory: Some(123),
            ..Default::default()
        };
        let r = Response::success("r1", vec![image()], metrics, vec!["w".into()]);
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(keys(&v), ["data", "error", "error_code", "request_id", "success", "warnings"]);
        assert_eq!((v["request_id"].as_str(), v["success"].as_bool()), (Some("r1"), Some(true)));
        assert!(v["error"].is_null() && v["error_code"].is_null());
        assert_eq!(v["warnings"], serde_json::json!(["w"]));
        assert_eq!(keys(&v["data"]), ["generated_images", "processing_metrics"]);
        let img = &v["data"]["generated_images"][0];
        assert_eq!(keys(img), ["format", "height", "image_data", "image_path", "metadata", "width"]);
        assert!(img["image_data"].is_null());
        assert_eq!(keys(&img["metadata"]), ["guidance_scale", "model_info", "scheduler", "seed", "steps"]);
        assert_eq!(img["metadata"]["seed"].as_u64(), Some(u64::MAX));
        assert_eq!(img["metadata"]["guidance_scale"].as_f64(), Some(7.5));
        assert_eq!(keys(&img["metadata"]["model_info"]), ["base_model", "refiner_model", "vae_model"]);
        let m = &v["data"]["processing_metrics"];
        assert_eq!(
            keys(m),
            [
                "denoising_step_avg",
                "denoising_time",
                "device_memory_used",
                "device_name",
                "encode_save_time",
                "inference_time",
                "model_load_time",
                "onnxruntime_time",
                "peak_memory",
                "steps",
                "text_encoding_time",
                "total_time",
                "unet_evaluations",
                "upscale_time",
                "vae_decode_time",
                "vae_encode_time",
            ]
        );
        assert!(m["device_memory_used"].is_null());
        assert_eq!((m["peak_memory"].as_u64(), m["total_time"].as_f64()), (Some(123), Some(2.5)));
        // The types read back what they wrote.
        assert_eq!(serde_json::from_str::<Response>(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn scheduler_options_appear_when_set() {
        let mut img = image();
        img.metadata.scheduler_options =
            Some(serde_json::json!({"use_karras_sigmas": true}).as_object().unwrap().clone());
        let v = serde_json::to_value(&img).unwrap();
        assert_eq!(v["metadata"]["scheduler_options"]["use_karras_sigmas"], true);
    }

    #[test]
    fn upscale_metadata_appears_when_the_image_was_upscaled() {
        let mut img = image();
        img.metadata.upscale = Some(UpscaleInfo { model: "4x".into(), factor: 3, model_scale: 4, passes: 1 });
        let v = serde_json::to_value(&img).unwrap();
        assert_eq!(
            v["metadata"]["upscale"],
            serde_json::json!({"model": "4x", "factor": 3, "model_scale": 4, "passes": 1})
        );
        assert_eq!(serde_json::from_value::<GeneratedImage>(v).unwrap(), img);
    }

    #[test]
    fn failure_json_shape() {
        let err = Error::field("data.dimensions.width", "must be a positive multiple of 8, got 7");
        let r = Response::failure(Some("r2"), &err, vec!["ignored unknown field data.x".into()]);
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(keys(&v), ["data", "error", "error_code", "request_id", "success", "warnings"]);
        assert_eq!(v["success"], false);
        assert!(v["data"].is_null());
        assert_eq!(v["error_code"], "invalid_request");
        assert_eq!(v["error"], err.to_string());
        assert!(v["error"].as_str().unwrap().contains("data.dimensions.width"));

        let v: Value = serde_json::from_str(&Response::failure(None, &Error::Cancelled, vec![]).to_json()).unwrap();
        assert!(v["request_id"].is_null());
        assert_eq!((v["error_code"].as_str(), v["error"].as_str()), (Some("cancelled"), Some("cancelled")));
    }

    #[test]
    fn last_resort_reply_is_a_failure_reply() {
        let r: Response = serde_json::from_str(LAST_RESORT_JSON).unwrap();
        assert_eq!(r, Response::failure(None, &Error::Internal("cannot serialize the response".into()), vec![]));
    }

    #[test]
    fn non_finite_metrics_serialize_as_null() {
        let metrics = ProcessingMetrics { denoising_step_avg: f64::NAN, ..Default::default() };
        let v: Value = serde_json::from_str(&Response::success("r", vec![], metrics, vec![]).to_json()).unwrap();
        assert!(v["data"]["processing_metrics"]["denoising_step_avg"].is_null());
    }

    #[test]
    fn request_id_hint_from_valid_and_broken_requests() {
        let hint = Response::request_id_hint;
        assert_eq!(hint(r#"{"request_id": "env", "data": {"prompt": 5}}"#).as_deref(), Some("env"));
        assert_eq!(hint(r#"{"data": {"metadata": {"request_id": "meta"}}}"#).as_deref(), Some("meta"));
        assert_eq!(hint(r#"{"request_id": null, "metadata": {"request_id": "bare"}}"#).as_deref(), Some("bare"));
        assert_eq!(hint(r#"{"request_id": 5}"#), None);
        assert_eq!(hint(r#"{"prompt": "x"}"#), None);
        // Not JSON: the first "request_id": "..." wins, escapes decoded.
        assert_eq!(hint(r#"{"request_id" : "a\"b", "data": {"prompt": }"#).as_deref(), Some("a\"b"));
        assert_eq!(hint(r#"{"request_id": 7, "x": {"request_id": "second"}, oops"#).as_deref(), Some("second"));
        assert_eq!(hint(r#"{"request_id": "unterminated"#), None);
        assert_eq!(hint(r#"{"prompt": "say \"request_id\": \"no\"", "#), None);
        assert_eq!(hint("garbage"), None);
        assert_eq!(hint(&format!(r#"{{"request_id": "{}"}}"#, "x".repeat(300))), None);
    }
}
