//! The engine: process-level state behind one `sdxl_engine*` — the ONNX Runtime, loaded pipelines, running
//! requests — and the request path parse → pipeline → outputs → response.

pub mod cancel;
pub mod options;
pub mod ort_env;
pub mod paths;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use parking_lot::Mutex;

use self::cancel::CancelRegistry;
use self::options::EngineOptions;
use self::ort_env::OrtRuntime;
use crate::error::{Error, Result};
use crate::image::{write_atomic, RgbImage};
use crate::pipeline::{PipelineOutput, Progress, ProgressEvent, RunContext, SdxlPipeline, Stage};
use crate::protocol::normalize::{parse_request, RequestLimits};
use crate::protocol::params::GenerateParams;
use crate::protocol::response::{GeneratedImage, ImageMetadata, ModelInfo, ProcessingMetrics, Response};
use crate::runtime::SessionConfig;

/// One engine: create once, generate from many threads.
#[derive(Debug)]
pub struct Engine {
    options: EngineOptions,
    limits: RequestLimits,
    runtime: &'static OrtRuntime,
    sessions: SessionConfig,
    pipelines: Mutex<HashMap<std::path::PathBuf, Arc<SdxlPipeline>>>,
    load_lock: Mutex<()>,
    cancels: CancelRegistry,
    warnings: Vec<String>,
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

impl Engine {
    /// Create an engine from its options JSON (`None`: defaults). Loads ONNX Runtime.
    pub fn new(options_json: Option<&str>) -> Result<Self> {
        let options = EngineOptions::from_json(options_json)?;
        let (runtime, warning) = ort_env::runtime(options.onnxruntime_path.as_deref())?;
        Ok(Engine {
            limits: options.limits(),
            sessions: SessionConfig { intra_op_threads: options.intra_op_threads },
            options,
            runtime,
            pipelines: Mutex::new(HashMap::new()),
            load_lock: Mutex::new(()),
            cancels: CancelRegistry::default(),
            warnings: warning.into_iter().collect(),
        })
    }

    /// The loaded ONNX Runtime (path, how it was found, version).
    pub fn runtime(&self) -> &'static OrtRuntime {
        self.runtime
    }

    /// Cancel a running (or soon-starting) request.
    pub fn cancel(&self, request_id: &str) {
        self.cancels.cancel(request_id);
    }

    /// Run one request given as JSON. Never panics on bad input; every failure becomes a reply with `error_code`.
    pub fn generate(&self, request_json: &str, progress: &mut dyn Progress, want_pixels: bool) -> Outcome {
        let started = Instant::now();
        let mut warnings = self.warnings.clone();
        let parsed = match parse_request(request_json, &self.limits) {
            Ok(p) => p,
            Err(e) => {
                let id = Response::request_id_hint(request_json);
                return failure(id.as_deref(), e, warnings);
            }
        };
        warnings.extend(parsed.warnings);
        let params = parsed.params;
        let registration = self.cancels.register(&params.request_id);
        if let Some(secs) = params.timeout_secs {
            registration.token.set_deadline(started + Duration::from_secs_f64(secs));
        }
        let result = self.run(&params, progress, &registration.token, started, &mut warnings);
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
        cancel: &crate::runtime::CancelToken,
        started: Instant,
        warnings: &mut Vec<String>,
    ) -> Result<(Response, Vec<RgbImage>)> {
        cancel.check()?;
        let model_name =
            params.model.clone().or_else(|| self.options.default_model.clone()).ok_or_else(|| {
                Error::field("data.models.base", "no model named and the engine has no default_model")
            })?;
        let pipeline = self.pipeline(&model_name, params, progress, started)?;
        let mut ctx = RunContext { progress, cancel, started };
        let out = pipeline.generate(params, &mut ctx)?;
        warnings.extend(out.warnings.iter().cloned());
        self.limits.check_size(out.width, out.height)?;

        let t_save = Instant::now();
        check_outputs_free(params, out.images.len())?;
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
            };
            if !ctx.progress.report(&event) {
                cancel.cancel();
                return Err(Error::Cancelled);
            }
            generated.push(self.output_image(params, &out, image, i, &model_name)?);
        }
        let encode_save_time = t_save.elapsed().as_secs_f64();
        let t = &out.timings;
        let metrics = ProcessingMetrics {
            total_time: started.elapsed().as_secs_f64(),
            inference_time: t.text_encoding + t.denoising + t.vae_decode,
            text_encoding_time: t.text_encoding,
            denoising_time: t.denoising,
            denoising_step_avg: t.denoising / f64::from(params.steps.max(1) * params.batch_size.max(1)),
            vae_decode_time: t.vae_decode,
            encode_save_time,
            unet_evaluations: t.unet_evaluations,
            steps: params.steps,
            device_name: "CPU".into(),
            device_memory_used: None,
            peak_memory: None,
        };
        let images = out.images;
        Ok((Response::success(params.request_id.clone(), generated, metrics, std::mem::take(warnings)), images))
    }

    fn output_image(
        &self,
        params: &GenerateParams,
        out: &PipelineOutput,
        image: &RgbImage,
        index: usize,
        model_name: &str,
    ) -> Result<GeneratedImage> {
        let o = &params.output;
        let needs_bytes = o.save_path.is_some() || o.return_image_data;
        let bytes = if needs_bytes { Some(image.encode(o.format, o.quality)?) } else { None };
        let mut image_path = None;
        if let (Some(path), Some(bytes)) = (&o.save_path, &bytes) {
            let path = batch_path(path, index);
            write_atomic(&path, bytes, o.overwrite)?;
            image_path = Some(path.to_string_lossy().into_owned());
        }
        let image_data = match (&bytes, o.return_image_data) {
            (Some(b), true) => Some(base64::engine::general_purpose::STANDARD.encode(b)),
            _ => None,
        };
        let sched = &out.scheduler;
        Ok(GeneratedImage {
            image_path,
            image_data,
            format: o.format.as_str().into(),
            width: image.width,
            height: image.height,
            metadata: ImageMetadata {
                seed: image.seed,
                steps: params.steps,
                guidance_scale: params.guidance_scale,
                scheduler: sched.get("name").and_then(|v| v.as_str()).unwrap_or("unknown").to_string(),
                scheduler_options: sched.get("options").and_then(|v| v.as_object()).filter(|m| !m.is_empty()).cloned(),
                model_info: ModelInfo {
                    base_model: Some(model_name.to_string()),
                    refiner_model: None,
                    vae_model: None,
                },
            },
        })
    }

    /// The loaded pipeline for `name`, loading it (once, even under concurrent requests) if needed.
    fn pipeline(
        &self,
        name: &str,
        params: &GenerateParams,
        progress: &mut dyn Progress,
        started: Instant,
    ) -> Result<Arc<SdxlPipeline>> {
        let root = self.options.models_root.as_ref().ok_or_else(|| Error::InvalidOption {
            field: "models_root".into(),
            message: "the engine was created without models_root, so no model can be loaded".into(),
        })?;
        let field = if params.model.is_some() { "data.models.base" } else { "default_model" };
        let folder = paths::model_folder(root, name, field)?;
        if let Some(p) = self.pipelines.lock().get(&folder) {
            return Ok(p.clone());
        }
        let _loading = self.load_lock.lock();
        if let Some(p) = self.pipelines.lock().get(&folder) {
            return Ok(p.clone());
        }
        let event = ProgressEvent {
            stage: Stage::Loading,
            step: 0,
            total_steps: 1,
            image_index: 0,
            batch_size: params.batch_size,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            request_id: &params.request_id,
        };
        if !progress.report(&event) {
            return Err(Error::Cancelled);
        }
        let pipeline = Arc::new(SdxlPipeline::load(&self.runtime.env, &folder, &self.sessions)?);
        self.pipelines.lock().insert(folder, pipeline.clone());
        Ok(pipeline)
    }
}

/// `save_path` for image `index` of a batch: the path itself for the first, `<stem>_<index>.<ext>` after.
fn batch_path(path: &std::path::Path, index: usize) -> std::path::PathBuf {
    if index == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}_{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}_{index}"),
    };
    path.with_file_name(name)
}

/// Refuse up front when any file of the batch exists and overwriting is off, so no batch is left half-written.
fn check_outputs_free(params: &GenerateParams, count: usize) -> Result<()> {
    if let (Some(path), false) = (&params.output.save_path, params.output.overwrite) {
        for i in 0..count {
            let p = batch_path(path, i);
            if p.exists() {
                return Err(Error::OutputExists(p));
            }
        }
    }
    Ok(())
}

fn failure(request_id: Option<&str>, error: Error, warnings: Vec<String>) -> Outcome {
    Outcome {
        response_json: Response::failure(request_id, &error, warnings).to_json(),
        error: Some(error),
        images: Vec::new(),
    }
}
