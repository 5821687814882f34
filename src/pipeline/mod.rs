//! SDXL text-to-image, as diffusers' `StableDiffusionXLPipeline` does it: prompts → both text encoders →
//! conditioning → seeded noise → denoising loop → VAE decode → RGB8; optionally handing the latents to an SDXL
//! refiner for the last part of the schedule (`experts.rs`), conditioned by ControlNets ([`controlnet`]), and
//! decoding with a custom VAE ([`decode`]).
//!
//! Touches ONNX Runtime only through [`crate::runtime`].

pub mod controlnet;
pub mod decode;
pub mod denoise;
pub mod encode;
mod experts;
pub mod guidance;
pub mod hires;
pub mod inpaint;
pub mod model_dir;
pub mod preview;
pub mod prompt_chunks;
mod start;
pub mod text;
pub mod upscale;
pub mod vae_tiles;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ndarray::{concatenate, Array2, Array3, Axis};

use self::controlnet::ControlUnit;
use self::decode::VaeDecoder;
use self::denoise::{denoise, DenoiseContext, UnetConditioning};
use self::encode::{InitImage, VaeEncoder};
use self::experts::{img2img_begin, stage_range, Expert};
use self::inpaint::{Inpainting, UnetInput};
use self::model_dir::ModelDir;
use self::start::Origin;
use self::text::{PromptEmbeds, TextEncoders, WeightedIds};
use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::lora::formats::Component;
use crate::lora::{AppliedLora, LoraReport, LoraSet};
use crate::protocol::params::GenerateParams;
use crate::protocol::prompt_syntax::{parse_attention, PromptSyntax};
use crate::protocol::response::PromptInfo;
use crate::rng::BatchGenerators;
use crate::runtime::onnx_proto::OnnxModel;
use crate::runtime::{CancelToken, ModelSession, Placement, SessionConfig};

/// What a run is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Loading models.
    Loading,
    /// Tokenizing and encoding prompts.
    TextEncoding,
    /// Denoising.
    Denoising,
    /// VAE decode.
    Decoding,
    /// Encoding and writing outputs.
    Saving,
    /// Running the upscaler (`data.output.upscale`); steps count tiles over all passes of one image.
    Upscaling,
    /// VAE-encoding the init image (`data.init_image`, image-to-image).
    ImageEncoding,
}

/// One progress report.
#[derive(Debug, Clone)]
pub struct ProgressEvent<'a> {
    /// Current stage.
    pub stage: Stage,
    /// Steps done in this stage.
    pub step: u32,
    /// Steps in this stage.
    pub total_steps: u32,
    /// Image of the batch (0-based).
    pub image_index: u32,
    /// Images in the request.
    pub batch_size: u32,
    /// Seconds since the request started.
    pub elapsed_seconds: f64,
    /// The request's id.
    pub request_id: &'a str,
    /// A live preview of image `image_index` (`data.output.preview`): on denoising reports where one is due, else
    /// `None`.
    pub preview: Option<preview::PreviewImage<'a>>,
}

/// Receives progress; return false to cancel the run.
pub trait Progress {
    /// Called at each stage change and after every denoising step.
    fn report(&mut self, event: &ProgressEvent<'_>) -> bool;

    /// Sees the latents of the batch starting at `image_index`: `step` None for the initial latents (noise ×
    /// `init_noise_sigma`), `Some(i)` after scheduler step `i` (one per UNet evaluation). For previews and parity
    /// tests; the default ignores them.
    fn on_latents(&mut self, image_index: u32, step: Option<usize>, latents: ndarray::ArrayViewD<'_, f32>) {
        let _ = (image_index, step, latents);
    }

    /// Sees the latents a due preview is made from (`data.output.preview`; the scheduler's x₀ estimate or the
    /// latents after the step, per its `source`) for the batch starting at `image_index`, before the reports of
    /// denoising step `step` (1-based). For parity tests; the default ignores them.
    fn on_preview_latents(&mut self, image_index: u32, step: u32, latents: ndarray::ArrayViewD<'_, f32>) {
        let _ = (image_index, step, latents);
    }
}

/// A progress sink that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn report(&mut self, _: &ProgressEvent<'_>) -> bool {
        true
    }
}

/// Per-request run state shared by the stages.
pub struct RunContext<'a> {
    /// Progress sink.
    pub progress: &'a mut dyn Progress,
    /// Cancellation.
    pub cancel: &'a CancelToken,
    /// When the request started.
    pub started: Instant,
    /// Encode and decode in tiles as diffusers' `vae.enable_tiling()` does (engine option `vae_tiling`).
    pub vae_tiling: bool,
}

/// Seconds spent per stage, and UNet calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageTimings {
    /// Tokenize + both text encoders.
    pub text_encoding: f64,
    /// The whole denoising loop(s).
    pub denoising: f64,
    /// VAE decode(s).
    pub vae_decode: f64,
    /// VAE encode of the init image (image-to-image; 0 otherwise).
    pub vae_encode: f64,
    /// UNet evaluations (CFG batches count once).
    pub unet_evaluations: u32,
    /// Scheduler steps each image went through: the requested steps, or image-to-image's `int(steps × strength)`.
    pub denoising_steps: u32,
}

/// Images and facts of one run.
#[derive(Debug, Clone)]
pub struct PipelineOutput {
    /// One image per batch item, in order.
    pub images: Vec<RgbImage>,
    /// Timings.
    pub timings: StageTimings,
    /// The scheduler in force (`{"name", "options"}`).
    pub scheduler: serde_json::Value,
    /// Image size used.
    pub width: u32,
    /// Image size used.
    pub height: u32,
    /// Things the user should know (truncated prompts, defaults used, skipped LoRA tensors).
    pub warnings: Vec<String>,
    /// The LoRAs merged into the weights, in request order.
    pub loras: Vec<AppliedLora>,
    /// With `data.prompt_syntax: "weighted"`, the base model's prompt tokens and chunks.
    pub prompt: Option<PromptInfo>,
    /// With `data.hires`, what the second pass did.
    pub hires: Option<hires::HiresFacts>,
}

/// A loaded SDXL model — a base model, with the LoRAs (if any) merged into its weights, or a refiner — and the VAE
/// that decodes its latents (its own, or a custom one).
#[derive(Debug)]
pub struct SdxlPipeline {
    dir: ModelDir,
    text: TextEncoders,
    unet: Arc<ModelSession>,
    vae: VaeDecoder,
    /// [`crate::lora::GraphPlan::key`] of text_encoder, text_encoder_2 and unet (0: base weights).
    graph_keys: [u64; 3],
    lora: LoraReport,
    /// What the UNet's `sample` takes: the latents, or also the mask and masked image (an inpainting UNet).
    unet_input: UnetInput,
    /// The VAE encoder beside `vae`'s decoder, loaded on the first image-to-image request.
    encoder: once_cell::sync::OnceCell<Arc<VaeEncoder>>,
}

/// A loaded text encoder or UNet: its session, its [`crate::lora::GraphPlan::key`] and the LoRA keys it matched.
type LoadedGraph = (Arc<ModelSession>, u64, Vec<(usize, usize)>);

fn key_slot(component: Component) -> usize {
    match component {
        Component::TextEncoder => 0,
        Component::TextEncoder2 => 1,
        Component::Unet => 2,
    }
}

impl SdxlPipeline {
    /// Load every graph of the model folder `root`, with no LoRA and its own VAE.
    pub fn load(env: &ort::environment::Environment, root: &Path, config: &SessionConfig) -> Result<Self> {
        Self::load_variant(env, root, config, &LoraSet::empty(), None, None)
    }

    /// Load the model folder `root` with `loras` merged into the UNet and text-encoder weights, decoding with the
    /// VAE decoder in the folder `vae` (a custom VAE, see [`decode`]) instead of its own `vae_decoder/`.
    ///
    /// `reuse` is a pipeline already loaded from the same folder: every graph whose merged weights would be the
    /// same (the VAE when it is the same one; a text encoder no LoRA of either set touches; equal file hashes and
    /// weights; the UNet when both have ControlNet inputs or neither) shares its session instead of being loaded
    /// again. With no LoRA this is a plain load: no graph is parsed.
    ///
    /// With [`SessionConfig::controlnet_inputs`] the UNet gets ControlNet residual inputs
    /// ([`crate::runtime::controlnet_inputs`]) and the pipeline can run ControlNets.
    pub fn load_variant(
        env: &ort::environment::Environment,
        root: &Path,
        config: &SessionConfig,
        loras: &LoraSet,
        vae: Option<&Path>,
        reuse: Option<&SdxlPipeline>,
    ) -> Result<Self> {
        let dir = ModelDir::open(root)?;
        let reuse = reuse.filter(|r| r.dir.root == dir.root);
        // A UNet with ControlNet inputs is another graph.
        let reuse_unet = reuse.filter(|r| r.takes_controlnets() == config.controlnet_inputs);
        // A refiner has no first text encoder (and takes no LoRA: the engine gives LoRAs to the base only).
        let components: &[Component] =
            if dir.refiner { &[Component::TextEncoder2, Component::Unet] } else { &Component::ALL };
        let own_vae = dir.root.join("vae_decoder");
        let vae_folder = vae.map_or_else(|| own_vae.clone(), Path::to_path_buf);
        // Graphs that need optimizing load one after another: optimizing two at once adds their memory peaks (the
        // bench model at 512²: +1 GB peak RSS). Graphs all in the optimized-graph cache load at once, one thread
        // each (session creation is mostly single-threaded work; bench model: median 1.93 s instead of 2.5 s).
        let load_component = |component: Component| -> Result<LoadedGraph> {
            let stage = component.folder();
            let path = dir.graph(stage);
            let from = if component == Component::Unet { reuse_unet } else { reuse };
            let previous = from.and_then(|r| Some((r.session(component)?, r.graph_keys[key_slot(component)])));
            if !loras.touches(component) {
                return match previous {
                    Some((s, 0)) => Ok((s, 0, Vec::new())),
                    _ => Ok((Arc::new(ModelSession::load(env, &path, stage, config)?), 0, Vec::new())),
                };
            }
            let model = OnnxModel::read(&path)?;
            let plan = loras.plan_graph(model, component, previous.as_ref().map(|p| p.1), &Placement::default())?;
            let matched = plan.matched.clone();
            let (session, key) = match (previous, plan.overrides) {
                (Some((s, k)), _) if k == plan.key => (s, k),
                (_, Some(o)) => (Arc::new(ModelSession::load_with_overrides(env, stage, config, o)?), plan.key),
                (_, None) => (Arc::new(ModelSession::load(env, &path, stage, config)?), 0),
            };
            Ok((session, key, matched))
        };
        let load_vae = || -> Result<VaeDecoder> {
            if let Some(r) = reuse.filter(|r| r.vae.folder() == vae_folder) {
                return Ok(r.vae.clone());
            }
            if vae.is_none() {
                let session = ModelSession::load(env, &dir.graph("vae_decoder"), "vae_decoder", config)?;
                return VaeDecoder::new(Arc::new(session), dir.vae.clone(), own_vae.clone());
            }
            let custom = VaeDecoder::load(env, &vae_folder, config)?;
            custom.check_fits(&dir)?;
            Ok(custom)
        };
        let all_cached = components
            .iter()
            .all(|c| !loras.touches(*c) && ModelSession::is_cached(&dir.graph(c.folder()), c.folder(), config))
            && ModelSession::is_cached(&VaeDecoder::graph_in(&vae_folder), "vae_decoder", config);
        let (loaded, vae_decoder) = if !all_cached {
            let loaded = components.iter().map(|&c| load_component(c)).collect::<Result<Vec<_>>>()?;
            (loaded.into_iter().map(Ok).collect::<Vec<_>>(), None)
        } else {
            std::thread::scope(|scope| {
                let threads: Vec<_> = components.iter().map(|&c| scope.spawn(move || load_component(c))).collect();
                let vae = scope.spawn(load_vae);
                fn joined<T>(r: std::thread::Result<Result<T>>) -> Result<T> {
                    r.unwrap_or_else(|_| Err(Error::Internal("a graph load panicked".into())))
                }
                (threads.into_iter().map(|t| joined(t.join())).collect::<Vec<_>>(), Some(joined(vae.join())))
            })
        };
        let mut matched = vec![(0usize, 0usize); loras.loras().len()];
        let mut graph_keys = [0u64; 3];
        let mut sessions: Vec<Arc<ModelSession>> = Vec::with_capacity(3);
        for (component, loaded) in components.iter().zip(loaded) {
            let (session, key, counts) = loaded?;
            for (m, p) in matched.iter_mut().zip(&counts) {
                m.0 += p.0;
                m.1 += p.1;
            }
            graph_keys[key_slot(*component)] = key;
            sessions.push(session);
        }
        let lora = loras.report(&matched)?;
        let unet = sessions.pop().expect("a UNet");
        let encoder_2 = sessions.pop().expect("text_encoder_2");
        let text = TextEncoders::from_sessions(&dir, sessions.pop(), encoder_2)?;
        for name in ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"] {
            unet.input(name)?;
        }
        let unet_input =
            UnetInput::from_channels(unet.input("sample")?.shape.get(1).copied().unwrap_or(-1), unet.path())?;
        let vae = match vae_decoder {
            Some(loaded) => loaded?,
            None => load_vae()?,
        };
        crate::runtime::heap::release_free_memory();
        let encoder = once_cell::sync::OnceCell::new();
        Ok(SdxlPipeline { dir, text, unet, vae, graph_keys, lora, unet_input, encoder })
    }

    /// True when the UNet has ControlNet residual inputs (loaded with [`SessionConfig::controlnet_inputs`]).
    pub fn takes_controlnets(&self) -> bool {
        self.unet.input(crate::runtime::controlnet_inputs::MID_INPUT).is_ok()
    }

    /// How many skip connections the UNet has ControlNet inputs for (0 without [`Self::takes_controlnets`]).
    fn residual_inputs(&self) -> usize {
        let prefix = crate::runtime::controlnet_inputs::DOWN_INPUT_PREFIX;
        self.unet.inputs().iter().filter(|i| i.name.starts_with(prefix)).count()
    }

    /// Refuses `controlnets` made for another UNet.
    fn check_controlnets(&self, controlnets: &[ControlUnit]) -> Result<()> {
        if controlnets.is_empty() {
            return Ok(());
        }
        let inputs = self.residual_inputs();
        for unit in controlnets {
            if unit.net().down_residuals() != inputs {
                return Err(Error::field(
                    format!("{}.model_path", unit.field()),
                    format!(
                        "{} returns {} skip-connection residuals but the UNet of this model takes {inputs}: it is a \
                         ControlNet for another model architecture",
                        unit.net().path().display(),
                        unit.net().down_residuals()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Refuses a request this model's UNet cannot run: a refiner's without an init image (diffusers runs a refiner
    /// alone only in its image-to-image and inpainting pipelines), an inpainting UNet's without a mask (text-to-image,
    /// plain image-to-image; diffusers' other SDXL pipelines would fail on the channel count), or one that hands its
    /// latents to a `refiner` that is an inpainting UNet.
    fn check_unet_inputs(&self, refiner: Option<&SdxlPipeline>, init: Option<&InitImage>) -> Result<()> {
        if self.dir.refiner && init.is_none() {
            return Err(Error::field(
                "data.init_image",
                "this model is an SDXL refiner: as the base model it refines an image (data.init_image, \
                 image-to-image or inpainting); to refine a base model's latents, name it in data.models.refiner",
            ));
        }
        let masked = init.is_some_and(|i| i.mask.is_some());
        if self.unet_input == UnetInput::Inpainting && !masked {
            return Err(Error::field(
                "data.mask_image",
                "this model's UNet is an inpainting UNet (9 input channels: the latents, the mask and the masked \
                 image): it only inpaints, so it needs data.init_image and data.mask_image (white = redraw)",
            ));
        }
        if refiner.is_some_and(|r| r.unet_input == UnetInput::Inpainting) {
            return Err(Error::field(
                "data.models.refiner",
                "the refiner's UNet is an inpainting UNet (9 input channels): a refiner needs a standard UNet",
            ));
        }
        Ok(())
    }

    /// What the run starts from ([`Origin`]), with the VAE encodes it needs (progress stage `ImageEncoding`,
    /// `timings.vae_encode`): noise without `init`; else the init image's posterior for image-to-image and
    /// inpainting, except with an inpainting UNet at strength 1, where diffusers never encodes the image; and with
    /// a mask and an inpainting UNet also the posterior of the masked image ([`inpaint::masked_pixels`]).
    fn origin(
        &self,
        init: Option<&InitImage>,
        params: &GenerateParams,
        latent: (usize, usize),
        ctx: &mut RunContext<'_>,
        timings: &mut StageTimings,
    ) -> Result<Origin> {
        let Some(init) = init else { return Ok(Origin::Noise) };
        self.report(ctx, &params.request_id, Stage::ImageEncoding, 0, 1, 0, params.batch_size)?;
        let t = Instant::now();
        // diffusers' enable_tiling() tiles every encode: the init image's and the masked image's
        let tiling = ctx.vae_tiling.then(|| vae_tiles::Tiling::encode(self.vae.info()));
        let encode = |pixels| init.encoder.moments(pixels, LATENT_CHANNELS, latent, tiling, ctx.cancel);
        let (seed, strength, vae) = (params.seed, params.strength, self.vae.info());
        let origin = match (&init.mask, self.unet_input) {
            (None, _) => Origin::image(encode(init.pixels.clone())?, vae),
            (Some(mask), UnetInput::Latents) => {
                Origin::inpaint(&encode(init.pixels.clone())?, mask, (seed, strength), vae)?
            }
            (Some(mask), UnetInput::Inpainting) => {
                let image = if strength < 1.0 { Some(encode(init.pixels.clone())?) } else { None };
                let masked = encode(inpaint::masked_pixels(&init.pixels, mask))?;
                Origin::inpaint_unet(image.as_ref(), &masked, mask, seed, vae)?
            }
        };
        timings.vae_encode = t.elapsed().as_secs_f64();
        Ok(origin)
    }

    /// The session of a LoRA-patchable graph (`None`: a refiner's missing first text encoder).
    fn session(&self, component: Component) -> Option<Arc<ModelSession>> {
        match component {
            Component::TextEncoder => self.text.sessions().0.cloned(),
            Component::TextEncoder2 => Some(self.text.sessions().1.clone()),
            Component::Unet => Some(self.unet.clone()),
        }
    }

    /// What was rewritten in the UNet and VAE decoder at load ([`crate::runtime::fuse_attention`],
    /// [`crate::runtime::subpixel_upsample`]); `None` when a graph came from the optimized-graph cache.
    pub fn rewrites(&self) -> Option<crate::runtime::session::Rewrites> {
        Some(self.unet.rewrites()? + self.vae.session().rewrites()?)
    }

    /// The VAE encoder of this pipeline's VAE ([`VaeEncoder::graph_beside`] its decoder), loaded by `load` from that
    /// path on first use and kept with the pipeline.
    pub fn vae_encoder(&self, load: impl FnOnce(&Path) -> Result<VaeEncoder>) -> Result<Arc<VaeEncoder>> {
        self.encoder.get_or_try_init(|| load(&VaeEncoder::graph_beside(self.vae.folder())).map(Arc::new)).cloned()
    }

    /// Whether [`Self::vae_encoder`] has loaded the encoder.
    pub fn vae_encoder_loaded(&self) -> bool {
        self.encoder.get().is_some()
    }

    /// The LoRAs merged into this pipeline and the warnings about them.
    pub fn lora_report(&self) -> &LoraReport {
        &self.lora
    }

    /// True when this pipeline and `other` share the session of `component`'s graph (LoRA session reuse).
    pub fn shares_graph(&self, other: &SdxlPipeline, component: Component) -> bool {
        match (self.session(component), other.session(component)) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
            _ => false,
        }
    }

    /// The model folder's configs.
    pub fn model_dir(&self) -> &ModelDir {
        &self.dir
    }

    /// The text encoders (token ids and embeddings; used by parity tests).
    pub fn text_encoders(&self) -> &TextEncoders {
        &self.text
    }

    /// The image size a request gets on this model, checked against what the exported UNet can do: its
    /// width/height; else, with an init image of size `init_image`, that size rounded down to the multiple the UNet
    /// needs (diffusers' img2img keeps the image's size, rounded down to a multiple of 8); else the model's default.
    pub fn image_size(&self, params: &GenerateParams, init_image: Option<(u32, u32)>) -> Result<(u32, u32)> {
        let m = self.dir.size_multiple();
        let (w, h) = match init_image {
            Some((iw, ih)) => {
                if (params.width.is_none() && iw < m) || (params.height.is_none() && ih < m) {
                    return Err(Error::field(
                        "data.init_image",
                        format!(
                            "the image is {iw}×{ih}: without data.dimensions the image's size, rounded down to a \
                             multiple of {m}, is used, so it needs at least {m} pixels per side"
                        ),
                    ));
                }
                (params.width.unwrap_or(iw - iw % m), params.height.unwrap_or(ih - ih % m))
            }
            None => {
                let default = self.dir.default_image_size();
                (params.width.unwrap_or(default), params.height.unwrap_or(default))
            }
        };
        for (field, v) in [("data.dimensions.width", w), ("data.dimensions.height", h)] {
            if v == 0 || v % m != 0 {
                return Err(Error::field(
                    field,
                    format!("{v} is not a positive multiple of {m}, which this model's exported UNet needs"),
                ));
            }
        }
        Ok((w, h))
    }

    /// Encode the prompt and, when guided, the negative prompt (zeros when there is none and the model says
    /// `force_zeros_for_empty_prompt`). A weighted prompt's facts go to `info` unless an earlier stage put its own.
    fn conditioning(
        &self,
        params: &GenerateParams,
        guided: bool,
        cancel: &CancelToken,
        warnings: &mut Vec<String>,
        info: &mut Option<PromptInfo>,
    ) -> Result<(PromptEmbeds, Option<PromptEmbeds>)> {
        if params.prompt_syntax == PromptSyntax::Weighted {
            let (cond, uncond, facts) = self.weighted_conditioning(params, guided, cancel)?;
            info.get_or_insert(facts);
            return Ok((cond, uncond));
        }
        let ids = self.text.tokenize_pair(&params.prompt, params.prompt_2.as_deref().unwrap_or(&params.prompt))?;
        if ids.truncated {
            warnings.push(
                "prompt is longer than 77 tokens and was truncated (as diffusers does; data.prompt_syntax \"weighted\" \
                 encodes it whole)"
                    .into(),
            );
        }
        let cond = self.text.encode(&ids, params.clip_skip, cancel)?;
        if !guided {
            return Ok((cond, None));
        }
        let uncond = match &params.negative_prompt {
            None if self.dir.force_zeros_for_empty_prompt => cond.zeros_like(),
            negative => {
                let negative = negative.as_deref().unwrap_or("");
                let ids = self.text.tokenize_pair(negative, params.negative_prompt_2.as_deref().unwrap_or(negative))?;
                if ids.truncated {
                    warnings.push("negative_prompt is longer than 77 tokens and was truncated".into());
                }
                self.text.encode(&ids, params.clip_skip, cancel)?
            }
        };
        Ok((cond, Some(uncond)))
    }

    /// [`Self::conditioning`] for `data.prompt_syntax: "weighted"`: the four texts parsed with A1111's emphasis
    /// syntax, chunked, weighted and encoded ([`TextEncoders::encode_weighted`]); the prompt and the negative prompt
    /// padded with the empty prompt's chunks to the same number of chunks, so the guidance batch stacks. Without a
    /// negative prompt and with `force_zeros_for_empty_prompt` the negative conditioning is zeros of the prompt's
    /// shape, as diffusers makes it from given `prompt_embeds`.
    fn weighted_conditioning(
        &self,
        params: &GenerateParams,
        guided: bool,
        cancel: &CancelToken,
    ) -> Result<(PromptEmbeds, Option<PromptEmbeds>, PromptInfo)> {
        let parse = |field: &str, text: &str| parse_attention(field, text);
        let tokenize = |fields: [&str; 2], text: &str, text_2: Option<&str>| -> Result<WeightedIds> {
            let pieces = parse(fields[0], text)?;
            let pieces_2 = match text_2 {
                Some(t) => parse(fields[1], t)?,
                None => pieces.clone(),
            };
            let ids = self.text.tokenize_weighted(&pieces, &pieces_2)?;
            // tokenizer_2 reads `text_2` when given (a refiner's only tokenizer reads `text`).
            let field_2 = if text_2.is_some() && ids.chunks_1.is_some() { fields[1] } else { fields[0] };
            let counts = [(fields[0], ids.chunks_1.as_ref()), (field_2, Some(&ids.chunks_2))];
            for (field, chunks) in counts.into_iter().filter_map(|(f, c)| Some((f, c?))) {
                if chunks.ids.len() > prompt_chunks::MAX_CHUNKS {
                    return Err(Error::field(
                        field,
                        format!(
                            "{} tokens make {} chunks of 75; data.prompt_syntax \"weighted\" encodes at most {} \
                             ({} tokens)",
                            chunks.tokens,
                            chunks.ids.len(),
                            prompt_chunks::MAX_CHUNKS,
                            prompt_chunks::MAX_CHUNKS * 75
                        ),
                    ));
                }
            }
            Ok(ids)
        };
        let cond_ids = tokenize(["data.prompt", "data.prompt_2"], &params.prompt, params.prompt_2.as_deref())?;
        let zeros = params.negative_prompt.is_none() && self.dir.force_zeros_for_empty_prompt;
        let negative = match guided && !zeros {
            true => {
                let text = params.negative_prompt.as_deref().unwrap_or("");
                let fields = ["data.negative_prompt", "data.negative_prompt_2"];
                Some(tokenize(fields, text, params.negative_prompt_2.as_deref())?)
            }
            false => None,
        };
        let negative_tokens = negative.as_ref().map(WeightedIds::tokens);
        let chunks = cond_ids.chunk_count().max(negative.as_ref().map_or(0, WeightedIds::chunk_count));
        let empty = self.text.empty_hidden(cancel)?;
        let cond = self.text.encode_weighted(&cond_ids, chunks, &empty, cancel)?;
        let uncond = match negative {
            Some(ids) => self.text.encode_weighted(&ids, chunks, &empty, cancel)?,
            None => cond.zeros_like(),
        };
        let info = PromptInfo {
            syntax: PromptSyntax::Weighted.name().into(),
            tokens: cond_ids.tokens(),
            negative_tokens,
            chunks,
        };
        Ok((cond, guided.then_some(uncond), info))
    }

    /// SDXL's micro-conditioning for an image of `height` × `width`, positive and negative rows: a base model's
    /// `original_size + crops_coords_top_left + target_size` for both (diffusers' `_get_add_time_ids`; the sizes
    /// default to the image's, the crop to (0, 0)); a refiner's `original_size + crops_coords_top_left + score` with
    /// the request's aesthetic scores (diffusers' defaults 6.0 and 2.5) and crop (0, 0) on the negative row (diffusers'
    /// `negative_crops_coords_top_left` default). Sizes are `(height, width)` there.
    fn time_ids(&self, height: u32, width: u32, params: &GenerateParams) -> (Vec<f32>, Vec<f32>) {
        let micro = &params.micro;
        let hw = |size: Option<(u32, u32)>| size.map_or([height as f32, width as f32], |(w, h)| [h as f32, w as f32]);
        let (original, target) = (hw(micro.original_size), hw(micro.target_size));
        let crop = [micro.crops_coords_top_left.0 as f32, micro.crops_coords_top_left.1 as f32];
        if !self.dir.refiner {
            let ids = [original, crop, target].concat();
            return (ids.clone(), ids);
        }
        let (score, negative_score) = params.aesthetic_scores();
        ([&original[..], &crop, &[score]].concat(), [&original[..], &[0.0, 0.0], &[negative_score]].concat())
    }

    /// Generate every image of `params`; with `refiner`, the base denoises the first
    /// `params.refiner_switch_at` of the schedule and the refiner the rest (diffusers' ensemble of experts:
    /// `denoising_end` on the base, `denoising_start` on the refiner, the latents handed over as they are and the
    /// step noise drawn from the same generators), then the refiner's VAE decodes. `controlnets` condition the
    /// base model at every step (its UNet must [`Self::takes_controlnets`]), not the refiner, as diffusers'
    /// ControlNet pipeline with `denoising_end` followed by the refiner does.
    ///
    /// With `init` (image-to-image, diffusers' `StableDiffusionXLImg2ImgPipeline`), the base starts at step
    /// `steps − int(steps × strength)` from the init image's latents ([`encode`]) noised to that level; a refiner
    /// still takes over at `refiner_switch_at` of the whole schedule (diffusers' `denoising_start` ignores
    /// strength). With the init image's mask it inpaints (diffusers' `StableDiffusionXLInpaintPipeline`,
    /// [`inpaint`]): a standard UNet blends after every step, an inpainting UNet (9 channels) takes the mask and the
    /// masked image's latents at every call and needs a mask. A refiner inpaints too, as diffusers' documented
    /// recipe runs it (the inpaint pipeline on the refiner's components with `image=` the base's latents and
    /// `denoising_start`): its standard UNet blends the handed-over latents, noised with fresh noise drawn from the
    /// chunk's generators after the base's draws (`start::handed_over`), into every step; a base that blends keeps
    /// the clean init image's latents after its last evaluation (the blend's last step is the stage's).
    ///
    /// With `hires` (`data.hires`; text-to-image only, no refiner) every batch chunk's latents go through hires
    /// fix's second pass ([`hires`]) before they are decoded at the target size; `controlnets` then condition the
    /// first pass and the run's own units ([`hires::HiresRun::controlnets`], their control images at the target
    /// size) the second.
    pub fn generate(
        &self,
        params: &GenerateParams,
        ctx: &mut RunContext<'_>,
        refiner: Option<&SdxlPipeline>,
        controlnets: &[ControlUnit],
        init: Option<&InitImage>,
        hires: Option<&hires::HiresRun>,
    ) -> Result<PipelineOutput> {
        if hires.is_some() && (refiner.is_some() || init.is_some()) {
            return Err(Error::unsupported("data.hires", "cannot be combined with an init image or a refiner"));
        }
        self.check_controlnets(controlnets)?;
        if let Some(run) = hires {
            self.check_controlnets(&run.controlnets)?;
        }
        self.check_unet_inputs(refiner, init)?;
        let mut warnings = self.dir.warnings.clone();
        let names: Vec<&str> = params.loras.iter().map(|l| l.name.as_str()).collect();
        warnings.extend(self.lora.warnings(&names));
        let (width, height) = self.image_size(params, init.map(InitImage::size))?;
        let stages: Vec<Expert<'_>> = std::iter::once(Expert::new(self, params)?)
            .chain(refiner.map(|r| Expert::new(r, params)).transpose()?)
            .collect();
        if params.refiner_aesthetic_scores.is_some() && !stages.iter().any(|s| s.model.dir.refiner) {
            warnings.push(
                "data.hyperparameters.refiner_aesthetic_score and refiner_negative_aesthetic_score are ignored: no \
                 SDXL refiner runs"
                    .into(),
            );
        }
        // The evaluations each stage runs: all of them, or the base's first part and the refiner's rest. Building
        // the schedulers here also makes option errors come before any work.
        // Image-to-image skips the first `skipped` steps (diffusers' `get_timesteps`: t_start · order evaluations).
        let skipped = match init {
            Some(_) => params.steps - crate::protocol::normalize::img2img_steps(params.steps, params.strength),
            None => 0,
        };
        let mut ranges = Vec::with_capacity(stages.len());
        for (k, stage) in stages.iter().enumerate() {
            let scheduler = stage.scheduler.build(params.steps as usize)?;
            let train = stage.model.dir.scheduler.num_train_timesteps;
            let mut range =
                stage_range(scheduler.as_ref(), train, k, &stages).unwrap_or(0..scheduler.timesteps().len());
            if k == 0 {
                let begin = img2img_begin(skipped, scheduler.as_ref());
                range = begin..range.end.max(begin);
            }
            ranges.push(range);
        }
        if init.is_some() && ranges.len() > 1 && ranges[0].is_empty() {
            warnings.push(format!(
                "the base model got no step: strength {} starts the schedule after refiner_switch_at {}, so the \
                 refiner denoises the noised init image from the switch point",
                params.strength, params.refiner_switch_at
            ));
        }
        if ranges.len() > 1 && ranges[1].is_empty() {
            warnings.push(format!(
                "the refiner got no step: refiner_switch_at {} leaves none of the {} steps to it",
                params.refiner_switch_at, params.steps
            ));
        }
        let guided = params.guidance_scale > 1.0;
        let batch = params.batch_size;
        let mut timings = StageTimings::default();

        self.report(ctx, &params.request_id, Stage::TextEncoding, 0, 1, 0, batch)?;
        let t0 = Instant::now();
        let mut conditions = Vec::with_capacity(stages.len());
        let mut prompt_info = None;
        for stage in &stages {
            conditions.push(stage.model.conditioning(params, guided, ctx.cancel, &mut warnings, &mut prompt_info)?);
        }
        timings.text_encoding = t0.elapsed().as_secs_f64();

        let per_call = if params.batch_parallel { batch as usize } else { 1 };
        let decoder = &stages.last().expect("the base stage").model.vae;
        let scale = self.dir.vae.scale_factor;
        let (lh, lw) = ((height / scale) as usize, (width / scale) as usize);
        timings.denoising_steps = params.steps - skipped;
        // The init image (and masked image) encoded once for the whole batch (diffusers encodes the same image per
        // generator).
        let origin = self.origin(init, params, (lh, lw), ctx, &mut timings)?;
        let mut hires_facts = hires.map(|_| hires::HiresFacts::default());
        let mut images = Vec::with_capacity(batch as usize);
        let mut first = 0usize;
        while first < batch as usize {
            let n = per_call.min(batch as usize - first);
            let seed = params.seed.wrapping_add(first as u64);
            let mut noise = BatchGenerators::new(seed, n);
            let mut latents = None;
            let mut inpainting: Option<Inpainting> = None;
            for ((stage, (cond, uncond)), range) in stages.iter().zip(&conditions).zip(&ranges) {
                let mut scheduler = stage.scheduler.build(params.steps as usize)?;
                if range.start > 0 {
                    scheduler.set_begin_index(range.start);
                }
                let start = match latents.take() {
                    Some(handed_over) => {
                        // A refiner inpaints the handed-over latents with noise drawn after all the base's draws.
                        if let Some(base) = &inpainting {
                            inpainting = Some(start::handed_over(&handed_over, base, &mut noise)?);
                        }
                        handed_over
                    }
                    None => {
                        let shape = [n, LATENT_CHANNELS, lh, lw];
                        let (start, chunk_inpainting) =
                            origin.latents(shape, &mut noise, first == 0, scheduler.as_ref(), range.start)?;
                        inpainting = chunk_inpainting;
                        ctx.progress.on_latents(first as u32, None, start.view());
                        start
                    }
                };
                let (ids, neg_ids) = stage.model.time_ids(height, width, params);
                let cond_n = unet_conditioning(cond, uncond.as_ref(), n, &ids, &neg_ids)?;
                let t1 = Instant::now();
                let mut dctx = DenoiseContext {
                    unet: &stage.model.unet,
                    guidance_scale: params.guidance_scale,
                    guidance_rescale: params.guidance_rescale,
                    guided,
                    cancel: ctx.cancel,
                    progress: &mut *ctx.progress,
                    request_id: &params.request_id,
                    image_index: first as u32,
                    batch_size: batch,
                    started: ctx.started,
                    steps: params.steps - skipped,
                    skipped_steps: skipped,
                    controlnets: if std::ptr::eq(stage.model, self) { controlnets } else { &[] },
                    inpaint: inpainting.as_ref(),
                    // Every stage previews with the decoder of the final decode.
                    preview: params.output.preview.map(|p| preview::Previewer::new(p, decoder, ctx.vae_tiling)),
                    seed,
                };
                let (out, evals) = denoise(start, &cond_n, scheduler.as_mut(), range.clone(), &mut noise, &mut dctx)?;
                timings.denoising += t1.elapsed().as_secs_f64();
                timings.unet_evaluations += evals;
                latents = Some(out);
            }
            let mut latents = latents.expect("at least the base stage ran");
            if let (Some(run), Some(facts)) = (hires, hires_facts.as_mut()) {
                let (cond, uncond) = &conditions[0];
                latents = self.hires_pass(
                    latents,
                    run,
                    params,
                    ctx,
                    &stages[0],
                    (cond, uncond.as_ref()),
                    first,
                    facts,
                    &mut timings,
                )?;
            }

            let t2 = Instant::now();
            crate::runtime::heap::release_free_memory();
            for i in 0..n {
                self.report(ctx, &params.request_id, Stage::Decoding, i as u32, n as u32, (first + i) as u32, batch)?;
                let latent = latents.slice_axis(Axis(0), (i..i + 1).into()).to_owned();
                let seed_i = params.seed.wrapping_add((first + i) as u64);
                images.push(decoder.decode(latent, seed_i, ctx.vae_tiling, ctx.cancel)?);
            }
            timings.vae_decode += t2.elapsed().as_secs_f64();
            first += n;
        }
        Ok(PipelineOutput {
            images,
            timings,
            scheduler: stages[0].scheduler.describe(),
            width: hires.map_or(width, |h| h.width),
            height: hires.map_or(height, |h| h.height),
            warnings,
            loras: self.lora.applied.clone(),
            prompt: prompt_info,
            hires: hires_facts,
        })
    }

    /// Hires fix's second pass over one batch chunk's first-pass `latents` (its first image `first`): the start
    /// ([`Self::hires_start`]) from fresh generators seeded as the chunk's, then image-to-image at the target size
    /// with the base's conditioning (`cond`, `uncond`), scheduler, the target size's time ids and the run's
    /// ControlNet units (windows over the evaluations left after `strength`).
    #[allow(clippy::too_many_arguments)]
    fn hires_pass(
        &self,
        latents: ndarray::ArrayD<f32>,
        run: &hires::HiresRun,
        params: &GenerateParams,
        ctx: &mut RunContext<'_>,
        stage: &Expert<'_>,
        (cond, uncond): (&PromptEmbeds, Option<&PromptEmbeds>),
        first: usize,
        facts: &mut hires::HiresFacts,
        timings: &mut StageTimings,
    ) -> Result<ndarray::ArrayD<f32>> {
        let n = latents.shape()[0];
        let batch = params.batch_size;
        // A1111's hires pass: a new RNG with the same seeds.
        let mut noise = BatchGenerators::new(params.seed.wrapping_add(first as u64), n);
        let mut scheduler = stage.scheduler.build(run.steps as usize)?;
        let denoising_steps = crate::protocol::normalize::img2img_steps(run.steps, run.strength);
        let skipped = run.steps - denoising_steps;
        let len = scheduler.timesteps().len();
        let begin = img2img_begin(skipped, scheduler.as_ref());
        if begin > 0 {
            scheduler.set_begin_index(begin);
        }
        let chunk = (params.seed, first, batch, params.request_id.as_str());
        let start =
            self.hires_start(latents, run, chunk, scheduler.as_ref(), begin, &mut noise, ctx, facts, timings)?;
        ctx.progress.on_latents(first as u32, None, start.view());
        let (ids, neg_ids) = self.time_ids(run.height, run.width, params);
        let cond_n = unet_conditioning(cond, uncond, n, &ids, &neg_ids)?;
        let t = Instant::now();
        let mut dctx = DenoiseContext {
            unet: &self.unet,
            guidance_scale: params.guidance_scale,
            guidance_rescale: params.guidance_rescale,
            guided: params.guidance_scale > 1.0,
            cancel: ctx.cancel,
            progress: &mut *ctx.progress,
            request_id: &params.request_id,
            image_index: first as u32,
            batch_size: batch,
            started: ctx.started,
            steps: denoising_steps,
            skipped_steps: skipped,
            controlnets: &run.controlnets,
            inpaint: None,
            preview: params.output.preview.map(|p| preview::Previewer::new(p, &self.vae, ctx.vae_tiling)),
            seed: params.seed.wrapping_add(first as u64),
        };
        let (out, evals) = denoise(start, &cond_n, scheduler.as_mut(), begin..len, &mut noise, &mut dctx)?;
        timings.denoising += t.elapsed().as_secs_f64();
        timings.unet_evaluations += evals;
        facts.denoising_steps = denoising_steps;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        ctx: &mut RunContext<'_>,
        request_id: &str,
        stage: Stage,
        step: u32,
        total: u32,
        image_index: u32,
        batch: u32,
    ) -> Result<()> {
        ctx.cancel.check()?;
        let event = ProgressEvent {
            stage,
            step,
            total_steps: total,
            image_index,
            batch_size: batch,
            elapsed_seconds: ctx.started.elapsed().as_secs_f64(),
            request_id,
            preview: None,
        };
        if ctx.progress.report(&event) {
            Ok(())
        } else {
            ctx.cancel.cancel();
            Err(Error::Cancelled)
        }
    }
}

/// Latent channels of SDXL's VAE (the UNet's `sample` channels).
const LATENT_CHANNELS: usize = 4;

/// The UNet's conditioning for `n` images: `[uncond × n, cond × n]` when guided, else `cond × n`
/// (diffusers' `torch.cat([negative_prompt_embeds, prompt_embeds])` after `repeat` per image), with the time ids
/// `ids` for the positive rows and `negative_ids` for the negative ones.
pub fn unet_conditioning(
    cond: &PromptEmbeds,
    uncond: Option<&PromptEmbeds>,
    n: usize,
    ids: &[f32],
    negative_ids: &[f32],
) -> Result<UnetConditioning> {
    let halves: Vec<(&PromptEmbeds, &[f32])> =
        uncond.map(|u| (u, negative_ids)).into_iter().chain(std::iter::once((cond, ids))).collect();
    let mut embeds = Vec::new();
    let mut pooled = Vec::new();
    let mut rows = Vec::new();
    for (p, ids) in &halves {
        for _ in 0..n {
            embeds.push(p.embeds.view());
            pooled.push(p.pooled.view());
            rows.extend_from_slice(ids);
        }
    }
    let join = |e: ndarray::ShapeError| Error::Internal(format!("conditioning batch: {e}"));
    let encoder_hidden_states: Array3<f32> = concatenate(Axis(0), &embeds).map_err(join)?;
    let text_embeds: Array2<f32> = concatenate(Axis(0), &pooled).map_err(join)?;
    let time_ids = Array2::from_shape_vec((halves.len() * n, ids.len()), rows).map_err(join)?;
    Ok(UnetConditioning { encoder_hidden_states, text_embeds, time_ids })
}
