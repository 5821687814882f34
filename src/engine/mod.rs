//! The engine: process-level state behind one `sdxl_engine*` — the ONNX Runtime, the pipeline cache, running
//! requests — and the request path: parse → (management | pipeline) → outputs → response.

pub mod cache;
pub mod cancel;
pub mod controlnets;
pub mod file_models;
mod hires;
mod init_image;
pub mod manage;
pub mod memory;
pub mod options;
pub mod ort_env;
pub mod outputs;
pub mod paths;
pub mod slots;
pub mod upscalers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use self::cache::{PipelineCache, PipelineKey};
use self::cancel::CancelRegistry;
use self::manage::Command;
use self::memory::PeakTracker;
use self::options::EngineOptions;
use self::ort_env::OrtRuntime;
use self::slots::Slots;
use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::pipeline::{Progress, ProgressEvent, RunContext, SdxlPipeline, Stage};
use crate::protocol::infotext::EmbeddedParameters;
use crate::protocol::normalize::{parse_request, RequestLimits};
use crate::protocol::params::GenerateParams;
use crate::protocol::response::{
    ControlNetInfo, GeneratedImage, ImageMetadata, InitImageInfo, MaskInfo, ModelInfo, ProcessingMetrics, Response,
};
use crate::runtime::optimized_cache::OptimizedCache;
use crate::runtime::{ArenaPolicy, CancelToken, Device, SessionConfig};

/// One engine: create once, generate from many threads.
#[derive(Debug)]
pub struct Engine {
    options: EngineOptions,
    limits: RequestLimits,
    runtime: &'static OrtRuntime,
    sessions: SessionConfig,
    cache: PipelineCache,
    slots: Slots,
    cancels: CancelRegistry,
    warnings: Vec<String>,
    lora_files: crate::lora::LoraFileCache,
    upscalers: file_models::FileModels<crate::pipeline::upscale::Upscaler>,
    controlnets: file_models::FileModels<crate::pipeline::controlnet::ControlNet>,
}

/// The result of one `generate` call.
#[derive(Debug)]
pub struct Outcome {
    /// The JSON reply (always present).
    pub response_json: String,
    /// The failure, if any.
    pub error: Option<Error>,
    /// Raw pixels, when asked for and successful.
    pub images: Vec<RgbImage>,
}

impl Outcome {
    /// The C status of this outcome.
    pub fn status(&self) -> crate::ffi::status::sdxl_status {
        self.error.as_ref().map_or(crate::ffi::status::sdxl_status::Ok, Into::into)
    }
}

/// Wraps the caller's progress to sample memory at every report.
struct Sampling<'a> {
    inner: &'a mut dyn Progress,
    peak: &'a PeakTracker,
}

impl Progress for Sampling<'_> {
    fn report(&mut self, event: &ProgressEvent<'_>) -> bool {
        self.peak.sample();
        self.inner.report(event)
    }
    fn on_latents(&mut self, image_index: u32, step: Option<usize>, latents: ndarray::ArrayViewD<'_, f32>) {
        self.inner.on_latents(image_index, step, latents);
    }
    fn on_preview_latents(&mut self, image_index: u32, step: u32, latents: ndarray::ArrayViewD<'_, f32>) {
        self.inner.on_preview_latents(image_index, step, latents);
    }
}

impl Engine {
    /// Create an engine from its options JSON (`None`: defaults). Loads ONNX Runtime.
    pub fn new(options_json: Option<&str>) -> Result<Self> {
        let options = EngineOptions::from_json(options_json)?;
        let (runtime, warning) = ort_env::runtime(options.onnxruntime_path.as_deref())?;
        let mut warnings: Vec<String> = warning.into_iter().collect();
        let device = choose_device(&options, runtime, &mut warnings)?;
        Ok(Engine {
            limits: options.limits(),
            sessions: SessionConfig {
                intra_op_threads: options.intra_op_threads,
                device,
                cpu_arena: options.cpu_memory_arena.as_deref().and_then(ArenaPolicy::parse).unwrap_or_default(),
                optimized_cache: match &options.optimized_model_cache {
                    Some(dir) => Some(OptimizedCache::new(dir, &runtime.version)?),
                    None => None,
                },
                cuda: options.cuda.clone().unwrap_or_default(),
                fuse_attention: options.fuse_attention.unwrap_or(true),
                subpixel_upsample: options.subpixel_upsample,
                controlnet_inputs: false,
            },
            cache: PipelineCache::new(options.max_cached_models.unwrap_or(3), options.memory_threshold.unwrap_or(0.8)),
            slots: Slots::new(options.max_concurrent_runs.unwrap_or(1)),
            options,
            runtime,
            cancels: CancelRegistry::default(),
            warnings,
            lora_files: Default::default(),
            upscalers: file_models::FileModels::new("upscaler"),
            controlnets: file_models::FileModels::new("ControlNet"),
        })
    }

    /// The loaded ONNX Runtime (path, how it was found, version).
    pub fn runtime(&self) -> &'static OrtRuntime {
        self.runtime
    }

    /// The pipeline cache (for status and tests).
    pub fn cache(&self) -> &PipelineCache {
        &self.cache
    }

    /// Cancel a running (or soon-starting) request.
    pub fn cancel(&self, request_id: &str) {
        self.cancels.cancel(request_id);
    }

    /// Run one request or management message given as JSON. Never panics on bad input; every failure becomes a
    /// reply with `error_code`.
    pub fn generate(&self, request_json: &str, progress: &mut dyn Progress, want_pixels: bool) -> Outcome {
        match manage::parse(request_json) {
            Ok(Some((id, command))) => return self.manage(&id, command),
            Ok(None) => {}
            Err(e) => return failure(Response::request_id_hint(request_json).as_deref(), e, Vec::new()),
        }
        let started = Instant::now();
        let mut warnings = self.warnings.clone();
        let parsed = match parse_request(request_json, &self.limits) {
            Ok(p) => p,
            Err(e) => return failure(Response::request_id_hint(request_json).as_deref(), e, warnings),
        };
        warnings.extend(parsed.warnings);
        let params = parsed.params;
        if !want_pixels && params.output.save_path.is_none() && !params.output.return_image_data {
            let e = Error::field(
                "data.output.return_image_data",
                "false without data.output.save_path would return no image; set a save_path, return_image_data \
                 true, or call sdxl_generate_images for raw pixels",
            );
            return failure(Some(&params.request_id), e, warnings);
        }
        let registration = self.cancels.register(&params.request_id);
        if let Some(secs) = params.timeout_secs {
            registration.token.set_deadline(started + Duration::from_secs_f64(secs));
        }
        // Defense in depth below the ABI's own boundary: a panic in a pipeline stage becomes this request's
        // error reply (with its request_id), and the engine stays usable.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run(&params, progress, &registration.token, started, &mut warnings)
        }))
        .unwrap_or_else(|payload| {
            Err(Error::Internal(format!(
                "a pipeline stage panicked: {}",
                crate::ffi::boundary::panic_message(&*payload)
            )))
        });
        drop(registration);
        match result {
            Ok((response, images)) => Outcome {
                response_json: response.to_json(),
                error: None,
                images: if want_pixels { images } else { Vec::new() },
            },
            Err(e) => failure(Some(&params.request_id), e, warnings),
        }
    }

    fn run(
        &self,
        params: &GenerateParams,
        progress: &mut dyn Progress,
        cancel: &CancelToken,
        started: Instant,
        warnings: &mut Vec<String>,
    ) -> Result<(Response, Vec<RgbImage>)> {
        cancel.check()?;
        let peak = PeakTracker::new(self.sessions.device);
        peak.sample();
        let save_path = match &params.output.save_path {
            Some(p) => Some(outputs::resolve_save_path(p, self.options.output_root.as_deref())?),
            None => None,
        };
        let model_name =
            params.model.clone().or_else(|| self.options.default_model.clone()).ok_or_else(|| {
                Error::field("data.models.base", "no model named and the engine has no default_model")
            })?;
        let mut progress = Sampling { inner: progress, peak: &peak };
        let _slot = self.slots.acquire(params.priority, cancel)?;
        let (pipeline, refiner, model_load_time) =
            self.pipelines(&model_name, params, &mut progress, started, warnings)?;
        let init_source = Self::read_init_images(params)?;
        let source_size = init_source.as_ref().map(|s| (s.image.width, s.image.height));
        // The request may leave the size to the model (or the init image, unless only the mask's area is
        // inpainted): check the limits on the size it will get, before any work.
        let (width, height) =
            pipeline.image_size(params, source_size.filter(|_| params.padding_mask_crop.is_none()))?;
        self.limits.check_size(width, height)?;
        let mut hires = match &params.hires {
            Some(h) => Some(self.prepare_hires(h, &pipeline, (width, height), params.steps, warnings)?),
            None => None,
        };
        // The images leave at the init image's size when the mask's area is inpainted and put back, at the second
        // pass's size with hires fix.
        let (out_w, out_h) = source_size
            .filter(|_| params.padding_mask_crop.is_some())
            .or(hires.as_ref().map(|h| (h.run.width, h.run.height)))
            .unwrap_or((width, height));
        let upscale = params.output.upscale.as_ref().map(|u| self.prepare_upscale(u, out_w, out_h)).transpose()?;
        let prepared = match &init_source {
            Some(source) => {
                Some(self.prepare_init_image(&pipeline, source, (width, height), params.padding_mask_crop, warnings)?)
            }
            None => None,
        };
        // With data.padding_mask_crop the control images are cut to the mask's area as the init image is.
        let crop = prepared.as_ref().and_then(|p| p.region).zip(source_size);
        let hires_size = hires.as_ref().map(|h| (h.run.width, h.run.height));
        let (controlnets, hires_controlnets, controlnet_load_time) =
            self.prepare_controlnets(params, (width, height), crop, hires_size, warnings)?;
        if let Some(h) = hires.as_mut() {
            h.run.controlnets = hires_controlnets;
        }
        let vae_tiling = self.options.vae_tiling.unwrap_or(false);
        let mut ctx = RunContext { progress: &mut progress, cancel, started, vae_tiling };
        let init = prepared.as_ref().map(|p| &p.init);
        let hires_run = hires.as_ref().map(|h| &h.run);
        let mut out = pipeline.generate(params, &mut ctx, refiner.as_deref(), &controlnets, init, hires_run)?;
        let region = prepared.as_ref().and_then(|p| p.region);
        if let Some(source) = &init_source {
            out.images = init_image::put_back(source, region, std::mem::take(&mut out.images));
        }
        let t_upscale = Instant::now();
        if let Some(u) = &upscale {
            out.images = self.upscale_images(u, std::mem::take(&mut out.images), &params.request_id, &mut ctx)?;
        }
        let upscale_time = t_upscale.elapsed().as_secs_f64() + out.hires.as_ref().map_or(0.0, |f| f.upscale_seconds);
        warnings.extend(out.warnings.iter().cloned());

        let t_save = Instant::now();
        outputs::check_outputs_free(save_path.as_deref(), params.output.overwrite, out.images.len())?;
        let total = out.images.len() as u32;
        let mut generated = Vec::with_capacity(out.images.len());
        for (i, image) in out.images.iter().enumerate() {
            cancel.check()?;
            let event = ProgressEvent {
                stage: Stage::Saving,
                step: i as u32,
                total_steps: total,
                image_index: i as u32,
                batch_size: total,
                elapsed_seconds: started.elapsed().as_secs_f64(),
                request_id: &params.request_id,
                preview: None,
            };
            if !progress.report(&event) {
                cancel.cancel();
                return Err(Error::Cancelled);
            }
            let metadata = ImageMetadata {
                seed: image.seed,
                steps: params.steps,
                guidance_scale: params.guidance_scale,
                guidance_rescale: params.rescales_guidance().then_some(params.guidance_rescale),
                clip_skip: (params.clip_skip > 0).then_some(params.clip_skip),
                scheduler: out.scheduler.get("name").and_then(|v| v.as_str()).unwrap_or("unknown").to_string(),
                scheduler_options: out
                    .scheduler
                    .get("options")
                    .and_then(|v| v.as_object())
                    .filter(|m| !m.is_empty())
                    .cloned(),
                model_info: ModelInfo {
                    base_model: Some(model_name.clone()),
                    refiner_model: params.refiner.clone(),
                    vae_model: params.vae.clone(),
                },
                loras: params.loras.iter().map(Into::into).collect(),
                controlnets: params
                    .controlnets
                    .iter()
                    .zip(&controlnets)
                    .enumerate()
                    .map(|(k, (request, unit))| ControlNetInfo {
                        guess_mode: unit.guess_mode(),
                        global_pool_conditions: unit.net().global_pool(),
                        passes: match &hires {
                            Some(h) => [("first", unit), ("second", &h.run.controlnets[k])]
                                .into_iter()
                                .filter(|(_, u)| u.is_active())
                                .map(|(pass, _)| pass.to_owned())
                                .collect(),
                            None => Vec::new(),
                        },
                        ..request.into()
                    })
                    .collect(),
                upscale: upscale.as_ref().map(upscalers::PreparedUpscale::info),
                hires: hires
                    .as_ref()
                    .zip(params.hires.as_ref())
                    .map(|(prepared, request)| prepared.info(request, (width, height), out.hires.as_ref())),
                prompt: out.prompt.clone(),
                init_image: init_source.as_ref().map(|source| InitImageInfo {
                    strength: params.strength,
                    denoising_steps: out.timings.denoising_steps,
                    source_width: source.image.width,
                    source_height: source.image.height,
                    mask_crop: region.map(|r| [r.x1, r.y1, r.x2, r.y2]),
                    mask: prepared.as_ref().and_then(|p| p.init.mask.as_ref()).map(|mask| MaskInfo {
                        blur: params.mask_blur.unwrap_or(0.0),
                        redrawn_fraction: mask.iter().filter(|&&m| m >= 0.5).count() as f64 / mask.len() as f64,
                    }),
                }),
            };
            let wants_bytes = save_path.is_some() || params.output.return_image_data;
            let parameters = (wants_bytes && params.output.embeds_parameters())
                .then(|| EmbeddedParameters::new(params, &metadata, (width, height)));
            let (image_path, image_data) =
                outputs::emit(image, i, &params.output, save_path.as_deref(), parameters.as_ref(), warnings)?;
            generated.push(GeneratedImage {
                image_path,
                image_data,
                format: params.output.format.as_str().into(),
                width: image.width,
                height: image.height,
                metadata,
            });
        }
        peak.sample();
        let t = &out.timings;
        let metrics = ProcessingMetrics {
            total_time: started.elapsed().as_secs_f64(),
            inference_time: t.text_encoding + t.vae_encode + t.denoising + t.vae_decode,
            model_load_time: model_load_time
                + controlnet_load_time
                + prepared.as_ref().map_or(0.0, |p| p.encoder_load_seconds)
                + upscale.as_ref().map_or(0.0, |u| u.load_seconds)
                + hires.as_ref().map_or(0.0, |h| h.load_seconds),
            text_encoding_time: t.text_encoding,
            denoising_time: t.denoising,
            denoising_step_avg: t.denoising
                / f64::from(
                    (t.denoising_steps + out.hires.as_ref().map_or(0, |f| f.denoising_steps)).max(1)
                        * params.batch_size.max(1),
                ),
            vae_decode_time: t.vae_decode,
            vae_encode_time: t.vae_encode,
            encode_save_time: t_save.elapsed().as_secs_f64(),
            upscale_time,
            onnxruntime_time: cancel.onnxruntime_seconds(),
            unet_evaluations: t.unet_evaluations,
            steps: t.denoising_steps,
            device_name: self.sessions.device.name(),
            device_memory_used: memory::device_memory_used(self.sessions.device),
            peak_memory: peak.peak(),
        };
        Ok((Response::success(params.request_id.clone(), generated, metrics, std::mem::take(warnings)), out.images))
    }

    /// The loaded pipeline for the base model `name` — with the request's LoRAs and custom VAE — and, when the
    /// request names one, the refiner (then the custom VAE is the refiner's, since it decodes), loading them (once,
    /// even under concurrent requests) on a miss. Returns them and the seconds spent loading.
    fn pipelines(
        &self,
        name: &str,
        params: &GenerateParams,
        progress: &mut dyn Progress,
        started: Instant,
        warnings: &mut Vec<String>,
    ) -> Result<(Arc<SdxlPipeline>, Option<Arc<SdxlPipeline>>, f64)> {
        let field = if params.model.is_some() { "data.models.base" } else { "default_model" };
        // LoRAs: files under models_root/loras, parsed once per (size, mtime); the cache key gets their hashes
        // and weights, and a new LoRA variant shares the unchanged graphs of a loaded variant of the same model.
        let loras = match &self.options.models_root {
            Some(root) if !params.loras.is_empty() => {
                crate::lora::LoraSet::load(crate::lora::specs_from_requests(root, &params.loras)?, &self.lora_files)?
            }
            _ => crate::lora::LoraSet::empty(),
        };
        let vae = params.vae.as_deref().map(|name| self.vae_folder(name)).transpose()?;
        let event = ProgressEvent {
            stage: Stage::Loading,
            step: 0,
            total_steps: 1,
            image_index: 0,
            batch_size: params.batch_size,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            request_id: &params.request_id,
            preview: None,
        };
        if !progress.report(&event) {
            return Err(Error::Cancelled);
        }
        // With a refiner, the refiner's VAE decodes: the custom VAE goes to it alone (loaded once, not twice).
        let base_vae = if params.refiner.is_some() { None } else { vae.as_deref() };
        let controlnets = !params.controlnets.is_empty();
        let (base, mut seconds) = self.load_model(Role::Base(field), name, &loras, base_vae, controlnets, warnings)?;
        let refiner = match &params.refiner {
            Some(refiner) => {
                let none = crate::lora::LoraSet::empty();
                let (r, s) = self.load_model(Role::Refiner, refiner, &none, vae.as_deref(), false, warnings)?;
                if r.model_dir().vae.scale_factor != base.model_dir().vae.scale_factor {
                    return Err(Error::field(
                        Role::Refiner.field(),
                        format!("`{refiner}` has another latent scale than the base model `{name}`"),
                    ));
                }
                seconds += s;
                Some(r)
            }
            None => None,
        };
        Ok((base, refiner, seconds))
    }

    /// The model `name` for `role`, with `loras` merged, the custom VAE folder `vae` and, with `controlnets`, a
    /// UNet that takes ControlNet residuals, from the cache or loaded (sharing the unchanged graphs of a loaded
    /// variant of the same folder).
    fn load_model(
        &self,
        role: Role,
        name: &str,
        loras: &crate::lora::LoraSet,
        vae: Option<&std::path::Path>,
        controlnets: bool,
        warnings: &mut Vec<String>,
    ) -> Result<(Arc<SdxlPipeline>, f64)> {
        let mut key = self.key(name, role.field())?;
        let mut variant = Vec::new();
        if !loras.is_empty() {
            variant.push(format!("lora:{:016x}", loras.cache_key()));
        }
        if let Some(vae) = vae {
            variant.push(format!("vae:{}", vae.display()));
        }
        if controlnets {
            variant.push("controlnet".into());
        }
        key.variant = variant.join(" ");
        let sessions = SessionConfig { controlnet_inputs: controlnets, ..self.sessions.clone() };
        let (pipeline, outcome) = self.cache.get_or_load(
            &key,
            || self.load_needs(&key),
            || {
                let reuse = if key.variant.is_empty() { None } else { self.cache.find_folder(&key.folder) };
                SdxlPipeline::load_variant(&self.runtime.env, &key.folder, &sessions, loras, vae, reuse.as_deref())
            },
        )?;
        warnings.extend(outcome.evicted.iter().map(|m| cache::eviction_warning(m)));
        role.check(pipeline.model_dir().refiner, name)?;
        Ok((pipeline, outcome.load_seconds))
    }

    /// Host memory a load of `key` takes at least: its graph files on the CPU; on a GPU the weights go to the
    /// device (its memory is not what the cache's threshold watches).
    fn load_needs(&self, key: &PipelineKey) -> u64 {
        self.host_bytes(|| crate::pipeline::model_dir::ModelDir::graph_bytes(&key.folder))
    }

    /// Host memory graphs of `file_bytes` take when loaded: their files on the CPU, 0 on a GPU (see
    /// [`Self::load_needs`]).
    fn host_bytes(&self, file_bytes: impl FnOnce() -> u64) -> u64 {
        match self.sessions.device {
            Device::Cpu => file_bytes(),
            Device::Cuda(_) => 0,
        }
    }

    /// The folder of custom VAE `name`: `models_root/vae/<name>`.
    fn vae_folder(&self, name: &str) -> Result<std::path::PathBuf> {
        let folder = self.root()?.join(VAE_FOLDER);
        if !folder.is_dir() {
            return Err(Error::ModelNotFound {
                path: folder,
                message: format!("no custom VAE `{name}`: models_root has no {VAE_FOLDER}/ folder"),
            });
        }
        paths::model_folder(&folder, name, "data.models.vae")
    }

    fn root(&self) -> Result<&std::path::Path> {
        self.options.models_root.as_deref().ok_or_else(|| Error::InvalidOption {
            field: "models_root".into(),
            message: "the engine was created without models_root, so no model can be loaded".into(),
        })
    }

    fn key(&self, name: &str, field: &str) -> Result<PipelineKey> {
        let folder = paths::model_folder(self.root()?, name, field)?;
        Ok(PipelineKey { folder, name: name.to_string(), variant: String::new() })
    }

    fn manage(&self, id: &str, command: Command) -> Outcome {
        let result = match command {
            Command::Status => Ok(self.status()),
            Command::Preload(name) => self.key(&name, "data.model_name").and_then(|key| {
                let (_, outcome) = self.cache.get_or_load(
                    &key,
                    || self.load_needs(&key),
                    || SdxlPipeline::load(&self.runtime.env, &key.folder, &self.sessions),
                )?;
                Ok(json!({ "model": name, "load_seconds": outcome.load_seconds, "evicted": outcome.evicted,
                           "loaded_models": self.cache.loaded() }))
            }),
            Command::Unload(name) => {
                let before = memory::process_rss();
                let unloaded = self.cache.unload(&name);
                let unloaded_upscalers = self.upscalers.unload(&name);
                let unloaded_controlnets = self.controlnets.unload(&name);
                Ok(json!({ "model": name, "unloaded": unloaded, "unloaded_upscalers": unloaded_upscalers,
                           "unloaded_controlnets": unloaded_controlnets,
                           "process_rss_before": before, "process_rss_after": memory::process_rss(),
                           "loaded_models": self.cache.loaded(), "loaded_upscalers": self.upscalers.loaded(),
                           "loaded_controlnets": self.controlnets.loaded() }))
            }
        };
        match result {
            Ok(data) => Outcome { response_json: manage::reply(id, data, Vec::new()), error: None, images: Vec::new() },
            Err(e) => failure(Some(id), e, Vec::new()),
        }
    }

    /// The `status` reply's data.
    pub fn status(&self) -> serde_json::Value {
        let (total, available) = memory::system_memory().map_or((None, None), |(t, a)| (Some(t), Some(a)));
        let gpu = match self.sessions.device {
            crate::runtime::Device::Cuda(id) => u32::try_from(id).ok().and_then(memory::gpu_memory),
            crate::runtime::Device::Cpu => None,
        };
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "device_name": self.sessions.device.name(),
            "execution_provider": self.sessions.device.execution_provider(),
            "onnxruntime": {
                "version": self.runtime.version,
                "library_path": self.runtime.library_path,
                "found_by": self.runtime.found_by,
            },
            "memory": {
                "process_rss": memory::process_rss(),
                "process_peak_rss": memory::process_peak_rss(),
                "system_total": total,
                "system_available": available,
                "device_total": gpu.map(|(total, _)| total),
                "device_used": gpu.map(|(_, used)| used),
            },
            "loaded_models": self.cache.loaded(),
            "loaded_upscalers": self.upscalers.loaded(),
            "loaded_controlnets": self.controlnets.loaded(),
            "models_root": self.options.models_root,
            "limits": {
                "max_request_bytes": self.limits.max_json_bytes,
                "max_width": self.limits.max_width,
                "max_height": self.limits.max_height,
                "max_pixels": self.limits.max_pixels,
                "max_steps": self.limits.max_steps,
                "max_batch": self.limits.max_batch,
                "max_loras": self.limits.max_loras,
            },
        })
    }
}

/// The device the options ask for, checked against what the loaded ONNX Runtime can do. CUDA without a CUDA
/// execution provider is an error naming the library, unless `allow_cpu_fallback` turns it into a warning.
fn choose_device(options: &EngineOptions, runtime: &OrtRuntime, warnings: &mut Vec<String>) -> Result<Device> {
    let device = options.device.as_deref().and_then(Device::parse).unwrap_or_default();
    if device == Device::Cpu {
        return Ok(device);
    }
    use ort::ep::ExecutionProvider as _;
    let available = ort::ep::CUDA::is_available().unwrap_or(false);
    if available {
        return Ok(device);
    }
    let problem = format!(
        "device {} needs ONNX Runtime's CUDA execution provider, and {} has none (install the onnxruntime-gpu \
         1.31.1 build and point onnxruntime_path at it)",
        device.name(),
        runtime.library_path.display()
    );
    if options.allow_cpu_fallback == Some(true) {
        warnings.push(format!("{problem}; running on CPU because allow_cpu_fallback is set"));
        Ok(Device::Cpu)
    } else {
        Err(Error::RuntimeUnavailable(problem))
    }
}

fn failure(request_id: Option<&str>, error: Error, warnings: Vec<String>) -> Outcome {
    Outcome {
        response_json: Response::failure(request_id, &error, warnings).to_json(),
        error: Some(error),
        images: Vec::new(),
    }
}

/// Custom VAEs (`data.models.vae`) are folders under this folder of `models_root`.
pub const VAE_FOLDER: &str = "vae";

/// What a request uses a model folder as.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// The base model, named by this field (`data.models.base`, or the engine's `default_model`).
    Base(&'static str),
    /// `data.models.refiner`.
    Refiner,
}

impl Role {
    fn field(self) -> &'static str {
        match self {
            Role::Base(field) => field,
            Role::Refiner => "data.models.refiner",
        }
    }

    /// Only a refiner (model_index.json `requires_aesthetics_score`) as the refiner. A refiner may be the base
    /// model too: alone it refines an init image (the pipeline refuses it without one).
    fn check(self, refiner: bool, name: &str) -> Result<()> {
        match (self, refiner) {
            (Role::Refiner, false) => Err(Error::field(
                "data.models.refiner",
                format!("`{name}` is not an SDXL refiner (its model_index.json lacks requires_aesthetics_score: true)"),
            )),
            _ => Ok(()),
        }
    }
}
