//! `GenerateParams`: the validated request the engine accepts. Built only by
//! [`crate::protocol::normalize::parse_request`]; the pipeline never sees wire types.

use std::path::PathBuf;

/// A validated image-generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// The caller's id (envelope `request_id`, else `data.metadata.request_id`, else generated).
    pub request_id: String,
    /// Positive prompt for both text encoders.
    pub prompt: String,
    /// Negative prompt. `None` (absent or JSON null) means "no negative prompt": SDXL zeroes the negative
    /// embeddings then (diffusers' `force_zeros_for_empty_prompt`). `Some("")` is encoded like any text.
    pub negative_prompt: Option<String>,
    /// The second encoder's prompt (`prompt_2`); `None` gives it `prompt`, as diffusers does (`prompt_2 or prompt`:
    /// an empty `prompt_2` is `None` too).
    pub prompt_2: Option<String>,
    /// The second encoder's negative prompt; `None` gives it `negative_prompt` (`negative_prompt_2 or
    /// negative_prompt`). Without a `negative_prompt` the negative conditioning is zeros whatever this says, as in
    /// diffusers (`force_zeros_for_empty_prompt` looks at `negative_prompt` only).
    pub negative_prompt_2: Option<String>,
    /// How the four prompt texts are read (`data.prompt_syntax`): diffusers' plain text cut to 77 tokens (the
    /// default), or A1111's emphasis syntax over prompts of any length ([`super::prompt_syntax`]).
    pub prompt_syntax: super::prompt_syntax::PromptSyntax,
    /// Base model name: a folder under the engine's `models_root` (`data.models.base`, legacy `data.model_name`).
    /// `None` means the engine's default model.
    pub model: Option<String>,
    /// SDXL refiner (`data.models.refiner`): a refiner model folder under `models_root` that takes over the
    /// denoising after `refiner_switch_at` of the steps (diffusers' ensemble of experts).
    pub refiner: Option<String>,
    /// The fraction of the schedule the base model denoises before the refiner takes over
    /// (`data.hyperparameters.refiner_switch_at`, in (0, 1); default 0.8): diffusers' `denoising_end` on the base
    /// and `denoising_start` on the refiner, A1111's "switch at".
    pub refiner_switch_at: f64,
    /// The refiner's aesthetic scores, positive and negative (`data.hyperparameters.refiner_aesthetic_score`,
    /// `refiner_negative_aesthetic_score`; diffusers' `aesthetic_score` / `negative_aesthetic_score`): the last of
    /// a refiner's 5 time ids. `None` when the request gives neither: diffusers' defaults 6.0 and 2.5 (A1111's and
    /// ComfyUI's too, [`Self::aesthetic_scores`]).
    pub refiner_aesthetic_scores: Option<(f32, f32)>,
    /// Custom VAE (`data.models.vae`): a VAE decoder folder under `models_root/vae/` that decodes instead of the
    /// model's own.
    pub vae: Option<String>,
    /// Denoising steps (`data.hyperparameters.num_inference_steps`), ≥ 1. Default 50 (diffusers).
    pub steps: u32,
    /// Classifier-free guidance scale (`data.hyperparameters.guidance_scale`, legacy flat `data.guidance_scale`).
    /// CFG runs when it is > 1, as in diffusers. Default 5.0.
    pub guidance_scale: f32,
    /// How far the guided noise prediction is pulled back to the conditional prediction's standard deviation
    /// (`data.hyperparameters.guidance_rescale`, in [0, 1], default 0 = off): diffusers' `guidance_rescale`
    /// (`rescale_noise_cfg`, section 3.4 of "Common Diffusion Noise Schedules and Sample Steps are Flawed"), the
    /// A1111 extension's and ComfyUI's "CFG rescale", meant for zero-terminal-SNR and v-prediction models, whose
    /// images overexpose at high guidance. Only with guidance (CFG above 1).
    pub guidance_rescale: f32,
    /// Text-encoder layers skipped beyond SDXL's penultimate one (`data.hyperparameters.clip_skip`, default 0):
    /// both encoders' hidden states come from layer `-(clip_skip + 2)` (diffusers' `clip_skip`; ComfyUI's
    /// `CLIPSetLastLayer` at `-(clip_skip + 2)`), for the prompt and the negative prompt alike (diffusers 0.42 skips
    /// only the prompt's layers, which guidance then subtracts from another layer's; the fix proposed in its PR
    /// #13796). A1111's "Clip skip 2" is SDXL's default, `clip_skip` 0. The pooled embedding stays the last
    /// layer's projection. Plain prompt syntax only.
    pub clip_skip: u32,
    /// Seed of the first image; image `i` of a batch uses `seed + i`. Resolved here: a missing, null or -1 seed
    /// becomes a random one, reported back in the response metadata.
    pub seed: u64,
    /// The image to start from (`data.init_image`: a file path, a `data:` URL or base64 image data): image-to-image
    /// as diffusers' `StableDiffusionXLImg2ImgPipeline` does it. `None`: text-to-image.
    pub init_image: Option<String>,
    /// With `init_image`, the part to redraw (`data.mask_image`, same forms; white = redraw, black = keep):
    /// inpainting as diffusers' `StableDiffusionXLInpaintPipeline` does it with a standard 4-channel UNet.
    pub mask_image: Option<String>,
    /// With `mask_image`, inpaint only the mask's bounding box grown by this many pixels (`data.padding_mask_crop`,
    /// diffusers' `padding_mask_crop`, A1111's "inpaint area: only masked"): that region, grown to the request's
    /// aspect ratio, is cut out, inpainted at the request's size and put back into the init image through the mask,
    /// so the reply has the init image's size. `None`: the whole image is inpainted.
    pub padding_mask_crop: Option<u32>,
    /// With `mask_image`, the mask is first blurred by this radius in pixels (`data.mask_blur`, ≥ 0, fractions
    /// allowed): Pillow's `ImageFilter.GaussianBlur(radius)` to the byte ([`crate::image::blur`]), as diffusers'
    /// `mask_processor.blur(mask, blur_factor=radius)` does before the pipeline is called (A1111's "mask blur"), so
    /// the crop region, the mask the run gets and the overlay all see the blurred mask. `None` (or `0`): no blur.
    pub mask_blur: Option<f64>,
    /// How much of the schedule image-to-image runs (`data.hyperparameters.strength`, in [0, 1], default 0.8):
    /// the last `int(steps × strength)` steps, starting from the init image noised to that level (diffusers'
    /// `strength`, A1111's denoising strength). Text-to-image ignores it (the seed's callers always send it).
    pub strength: f64,
    /// Image width in pixels (`data.dimensions.width`): a positive multiple of 8, or `None` for the model default.
    pub width: Option<u32>,
    /// Image height in pixels (`data.dimensions.height`): a positive multiple of 8, or `None` for the model default.
    pub height: Option<u32>,
    /// SDXL's size micro-conditioning (`data.dimensions.original_size`, `target_size`, `crops_coords_top_left`).
    pub micro: MicroConditioning,
    /// Scheduler request (`data.scheduler`), resolved against the model's `scheduler_config.json` by
    /// [`crate::schedulers`]. `None` means the model's own scheduler.
    pub scheduler: Option<SchedulerChoice>,
    /// Number of images (`data.batch.size`), 1..=limit. Default 1.
    pub batch_size: u32,
    /// Run the batch through the UNet as one tensor (`data.batch.parallel`) instead of one image at a time.
    /// Both give the same images; parallel needs more memory.
    pub batch_parallel: bool,
    /// How to return the images.
    pub output: OutputParams,
    /// Cancel the request after this many seconds (`data.metadata.timeout`); `None` = no deadline.
    pub timeout_secs: Option<f64>,
    /// Queue order when requests wait for a run slot (`data.metadata.priority`): higher first, then arrival order.
    pub priority: Priority,
    /// LoRAs to merge into the weights (`data.lora.models`, when `data.lora.enabled` is not false), in order.
    pub loras: Vec<LoraRequest>,
    /// ControlNet units conditioning the base model (`data.controlnet.models`, when `data.controlnet.enabled` is
    /// not false), in order; their residuals are summed, as diffusers' `MultiControlNetModel` does.
    pub controlnets: Vec<ControlNetRequest>,
    /// Run the ControlNets in diffusers' guess mode (`data.controlnet.guess_mode`, default false): with guidance
    /// they see only the conditional half of the batch and the unconditional half gets no residuals, and each
    /// unit's residuals are weighted from 0.1 (the first skip connection) to 1 (the middle block) on a log scale.
    /// False when no ControlNet applies. A ControlNet whose config says `global_pool_conditions` also turns it on
    /// as the first unit, except when inpainting (diffusers' pipelines; see [`crate::pipeline::controlnet`]).
    pub controlnet_guess_mode: bool,
    /// A1111's "Hires. fix" (`data.hires`, when `enabled` is not false): after the text-to-image pass, the latents
    /// or the image are upscaled to a target size and an image-to-image pass redraws them there
    /// ([`super::hires`]). `None`: one pass.
    pub hires: Option<HiresParams>,
}

impl GenerateParams {
    /// The aesthetic scores a refiner's time ids get, positive and negative: the request's, or diffusers' defaults.
    pub fn aesthetic_scores(&self) -> (f32, f32) {
        use crate::protocol::normalize::{DEFAULT_AESTHETIC_SCORE, DEFAULT_NEGATIVE_AESTHETIC_SCORE};
        self.refiner_aesthetic_scores.unwrap_or((DEFAULT_AESTHETIC_SCORE, DEFAULT_NEGATIVE_AESTHETIC_SCORE))
    }

    /// Whether [`Self::guidance_rescale`] applies: non-zero, and guidance runs (diffusers rescales only under CFG).
    pub fn rescales_guidance(&self) -> bool {
        self.guidance_rescale > 0.0 && self.guidance_scale > 1.0
    }
}

/// A validated `data.hires` that asks for a second pass (see [`super::hires`] for the rules).
#[derive(Debug, Clone, PartialEq)]
pub struct HiresParams {
    /// The second pass's size: a factor of the first pass's size, or explicit sides.
    pub target: HiresTarget,
    /// How the first pass's result is brought to the target size.
    pub upscaler: HiresUpscaler,
    /// The second pass's denoising strength (`strength`, in [0, 1]; default
    /// [`super::hires::DEFAULT_HIRES_STRENGTH`]): it runs the last `int(steps × strength)` of its `steps`.
    pub strength: f64,
    /// The second pass's `num_inference_steps` (`steps`); `None` (absent or 0): the first pass's.
    pub steps: Option<u32>,
    /// Which passes the request's ControlNet units condition (`controlnet`, default both).
    pub controlnet: HiresControlNet,
}

/// `data.hires.controlnet`: the passes of hires fix that the request's ControlNet units condition, as
/// sd-webui-controlnet's per-unit `hr_option` (`HiResFixOption`) chooses them for all the units of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HiresControlNet {
    /// Both passes (`both`, "Both"; the default): the first at the request's size, the second with each control
    /// image resized to the target size.
    #[default]
    Both,
    /// The text-to-image pass only (`first`, "Low res only").
    First,
    /// The hires pass only (`second`, "High res only").
    Second,
}

/// `data.hires`'s target size, resolved against the first pass's size by [`HiresParams::target_size`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HiresTarget {
    /// `scale`: `int(side × scale)` per side (A1111's `hr_scale`), rounded down to a multiple of 8.
    Scale(f64),
    /// `width` and/or `height` (A1111's `hr_resize_x` / `hr_resize_y`), multiples of 8; a missing side keeps the
    /// first pass's aspect ratio (`given × other / side`, rounded down to a multiple of 8).
    Size {
        /// `width`.
        width: Option<u32>,
        /// `height`.
        height: Option<u32>,
    },
}

/// How `data.hires` upscales the first pass's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HiresUpscaler {
    /// The latents themselves, interpolated as torch's `F.interpolate(mode, antialias=False)`; no VAE round trip
    /// (A1111's "Latent" upscalers).
    Latent(LatentInterpolation),
    /// Decode, Pillow's Lanczos resize to the target, encode (A1111's "Lanczos").
    Lanczos,
    /// Decode, an ONNX super-resolution model (named as `data.output.upscale.model`), a Lanczos resize to the
    /// target as needed, encode (A1111's model upscalers: R-ESRGAN, 4x-UltraSharp, …).
    Model(String),
}

/// The interpolation of [`HiresUpscaler::Latent`]: torch's `F.interpolate` modes, `align_corners=False`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentInterpolation {
    /// `mode="bilinear"` (A1111's "Latent", its default hires upscaler).
    Bilinear,
    /// `mode="nearest"` (A1111's "Latent (nearest)").
    Nearest,
    /// `mode="nearest-exact"` (A1111's "Latent (nearest-exact)", ComfyUI's default latent upscale).
    NearestExact,
}

/// One validated `data.lora.models[i]` entry. The engine resolves `name` to a file (see [`crate::lora`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraRequest {
    /// `name`: a file name under `<models_root>/loras/` (`.safetensors` added unless it ends with it) or an
    /// absolute path inside `models_root`.
    pub name: String,
    /// `weight` (default 1.0): the strength for every part the LoRA patches.
    pub weight: f32,
    /// `unet_weight`: overrides `weight` for the UNet.
    pub unet_weight: Option<f32>,
    /// `text_encoder_weight`: overrides `weight` for both text encoders.
    pub text_encoder_weight: Option<f32>,
    /// The request field that names it, for errors: `data.lora.models[i].name`, or `data.prompt` for a
    /// `<lora:…>` tag ([`super::prompt_tags`]).
    pub field: String,
}

/// One validated `data.controlnet.models[i]` unit ([`crate::protocol::controlnet`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetRequest {
    /// `model_path`: a ControlNet under `<models_root>/controlnet/` or an absolute path inside `models_root`.
    pub model: String,
    /// `type`: a label (`canny`, `depth`, …).
    pub kind: Option<String>,
    /// `control_image`: a file path, a `data:` URL or base64 image data.
    pub control_image: String,
    /// `conditioning_scale`: the factor on the ControlNet's residuals.
    pub conditioning_scale: f32,
    /// `guidance_start`: the fraction of the steps before which the unit does not apply.
    pub guidance_start: f64,
    /// `guidance_end`: the fraction of the steps after which the unit does not apply.
    pub guidance_end: f64,
    /// `preprocessor`: what turns `control_image` into the ControlNet's input first; `None`: it is used as sent.
    pub preprocessor: Option<Preprocessor>,
    /// The request field of the unit, for errors: `data.controlnet.models[i]`.
    pub field: String,
}

/// A built-in control-image preprocessor (`data.controlnet.models[i].preprocessor`), run on the control image as
/// decoded, before it is cut or resized for the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Preprocessor {
    /// OpenCV's `cv2.Canny(image, low_threshold, high_threshold)` on the RGB image, the edge map stacked to three
    /// channels ([`crate::image::canny`]); finite, `0 <= low_threshold <= high_threshold`.
    Canny {
        /// Gradients at most this (floored) are never edges; default 100.
        low_threshold: f64,
        /// Gradients above this (floored) start edges; default 200.
        high_threshold: f64,
    },
}

/// `data.metadata.priority`: `low`, `normal` (default) or `high`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Runs after waiting normal and high requests.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Runs before waiting normal and low requests.
    High,
}

/// A scheduler named in the request, with optional diffusers config overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerChoice {
    /// The name as the user typed it: a diffusers class name or an A1111/ComfyUI name.
    pub name: String,
    /// Overrides of the model's `scheduler_config.json` keys (e.g. `use_karras_sigmas`), diffusers names.
    pub overrides: serde_json::Map<String, serde_json::Value>,
}

/// Encoded image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Lossless PNG (the default).
    Png,
    /// JPEG at `OutputParams::quality`.
    Jpeg,
    /// Lossless WebP (the encoder has no lossy mode; `quality` does not apply).
    Webp,
}

impl ImageFormat {
    /// The lower-case name used in JSON and as the file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Webp => "webp",
        }
    }
}

/// Output settings (`data.output`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputParams {
    /// Encoding (`format`): png (default), jpeg/jpg, webp.
    pub format: ImageFormat,
    /// JPEG quality 1..=100 (`quality`), default 95.
    pub quality: u8,
    /// Where to write the image (`save_path`). With a batch > 1, image `i` > 0 goes to `<stem>_<i>.<ext>`.
    pub save_path: Option<PathBuf>,
    /// Replace an existing file at `save_path` (`overwrite`), default false: an existing file is an error.
    pub overwrite: bool,
    /// Put base64 image bytes in `image_data` (`return_image_data`). Default: true when there is no `save_path`.
    pub return_image_data: bool,
    /// Upscale every image before it is encoded (`upscale`); `None`: keep the generated size.
    pub upscale: Option<UpscaleParams>,
    /// Write the generation parameters into the encoded image (`embed_parameters`), as A1111 does: a PNG `parameters`
    /// text chunk (and an `sdxlrt` chunk with the full record), JPEG/WebP EXIF `UserComment`. `None` (absent or
    /// null): yes, the default; `Some(true)`: yes, and a format that cannot carry them is an error naming the field;
    /// `Some(false)`: no metadata in the file.
    pub embed_parameters: Option<bool>,
    /// Live previews in the progress callback (`preview`); `None`: none (the default).
    pub preview: Option<PreviewParams>,
}

impl OutputParams {
    /// Whether the encoded images carry the generation parameters (on unless `embed_parameters` is false).
    pub fn embeds_parameters(&self) -> bool {
        self.embed_parameters != Some(false)
    }
}

/// A validated `data.output.preview` that asks for previews (see [`super::preview`] for the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviewParams {
    /// `method`: how latents become pixels.
    pub method: PreviewMethod,
    /// `interval`: a preview after every `interval`-th denoising step (1 = every step), and always after a
    /// denoising loop's last step.
    pub interval: u32,
    /// `source`: which latents are shown.
    pub source: PreviewSource,
}

/// How `data.output.preview` turns latents into a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewMethod {
    /// `latent2rgb` (default): ComfyUI's linear SDXL latent → RGB projection, one pixel per latent pixel (width/8 ×
    /// height/8); nearly free.
    Latent2Rgb,
    /// `vae`: the pipeline's VAE decoder exactly as the final decode runs it, full size; costs one VAE decode per
    /// preview.
    Vae,
}

impl PreviewMethod {
    /// The name the protocol uses.
    pub fn name(self) -> &'static str {
        match self {
            PreviewMethod::Latent2Rgb => "latent2rgb",
            PreviewMethod::Vae => "vae",
        }
    }
}

/// Which latents `data.output.preview` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewSource {
    /// `denoised` (default): the scheduler's estimate of the final latents at this step (diffusers'
    /// `pred_original_sample`), what A1111, ComfyUI and stable-diffusion.cpp preview by default.
    Denoised,
    /// `noisy`: the latents after the step, as diffusers' `callback_on_step_end` sees them.
    Noisy,
}

impl PreviewSource {
    /// The name the protocol uses.
    pub fn name(self) -> &'static str {
        match self {
            PreviewSource::Denoised => "denoised",
            PreviewSource::Noisy => "noisy",
        }
    }
}

/// A validated `data.output.upscale` that asks for work (see [`super::upscale`] for the rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpscaleParams {
    /// `model`: an ONNX super-resolution model under `<models_root>/upscalers/` (`.onnx` added when the name does
    /// not end with it) or an absolute path inside `models_root`.
    pub model: String,
    /// `factor`: the final image is exactly `factor` × the generated width and height, 1..=8.
    pub factor: u32,
}

/// SDXL's size micro-conditioning: what the UNet's time ids tell it about the image — diffusers' `original_size`,
/// `crops_coords_top_left` and `target_size` (ComfyUI's `CLIPTextEncodeSDXL` width / height, crop_w / crop_h,
/// target_width / target_height). Every stage gets the same values, the negative rows too (a refiner's negative
/// rows keep crop (0, 0), as diffusers' `negative_crops_coords_top_left` default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MicroConditioning {
    /// `(width, height)` of the picture the model should imagine it was trained on; `None`: the image's size.
    pub original_size: Option<(u32, u32)>,
    /// `(top, left)` of the crop out of it; `(0, 0)` by default (an uncropped picture).
    pub crops_coords_top_left: (u32, u32),
    /// `(width, height)` the result should look like; `None`: the image's size.
    pub target_size: Option<(u32, u32)>,
}
