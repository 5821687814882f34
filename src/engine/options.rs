//! Engine options: the JSON object given to `sdxl_engine_create`. Unknown keys are an error (they are ours, so a
//! typo should not pass silently).

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::protocol::normalize::RequestLimits;

/// Parsed engine options. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineOptions {
    /// Folder whose sub-folders are models in the ONNX layout; request model names resolve only inside it.
    pub models_root: Option<PathBuf>,
    /// Model used when a request names none.
    pub default_model: Option<String>,
    /// Absolute path of `libonnxruntime.so*` (first in the search order).
    pub onnxruntime_path: Option<PathBuf>,
    /// Threads per operator for every session (default: ONNX Runtime's choice, one per physical core).
    pub intra_op_threads: Option<usize>,
    /// Largest request JSON in bytes (default 1 MiB).
    pub max_request_bytes: Option<usize>,
    /// Largest image width (default 4096).
    pub max_width: Option<u32>,
    /// Largest image height (default 4096).
    pub max_height: Option<u32>,
    /// Largest width × height (default 4096²).
    pub max_pixels: Option<u64>,
    /// Largest step count (default 500).
    pub max_steps: Option<u32>,
    /// Largest batch (default 16).
    pub max_batch: Option<u32>,
    /// Most LoRA models per request (default 8).
    pub max_loras: Option<u32>,
    /// Pipelines kept loaded (default 3, as the seed's ModelManager); least recently used evicted first.
    pub max_cached_models: Option<usize>,
    /// System memory use (0..1) above which idle models are evicted before another loads (default 0.8).
    pub memory_threshold: Option<f64>,
    /// Requests that run their pipeline at once; others queue (default 1: one CPU run already uses every core).
    pub max_concurrent_runs: Option<usize>,
    /// When set, `save_path` must lie inside this folder (relative paths resolve under it).
    pub output_root: Option<PathBuf>,
    /// Where graphs run: `cpu` (default), `cuda` or `cuda:N`. CUDA is registered with `error_on_failure`.
    pub device: Option<String>,
    /// Which graphs use ONNX Runtime's CPU memory arena: `all` (default; each one-shot graph's arena is emptied
    /// after its call), `unet_only` (the VAE decode allocates from the system: −0.3 GB peak RSS, +10–15 % decode
    /// time), `none`.
    pub cpu_memory_arena: Option<String>,
    /// A folder for ONNX Runtime-optimized graphs of this machine (created if missing): later loads of the same
    /// model skip graph optimization. Off by default; never ship its files (they are CPU-specific).
    pub optimized_model_cache: Option<PathBuf>,
    /// CUDA execution provider settings (`conv_algo_search`, `conv_max_workspace`, `arena_extend_strategy`,
    /// `memory_limit_mb`, `prefer_nhwc`); only with `device` cuda.
    pub cuda: Option<crate::runtime::CudaOptions>,
    /// Fuse the UNet's and VAE's attention into ONNX Runtime's `MultiHeadAttention` when loading them (default
    /// true): any `torch.onnx.export` of SDXL then runs on fused attention kernels (CUDA: every graph; CPU: float32
    /// graphs) without being exported again. The model files are never changed. `false` runs the graphs exactly as
    /// exported.
    pub fuse_attention: Option<bool>,
    /// Load each nearest 2× upsample + 3×3 convolution of the UNet and VAE (diffusers' `Upsample2D`) as four 2×2
    /// convolutions over the small image, one per output phase: the same function with 16 instead of 36
    /// multiply-adds per pixel, 10–15 % off a 512² VAE decode on the CPU. Default: on the CPU (float32 weights),
    /// not on CUDA (not yet measured there); `true` also on CUDA, `false` never. The model files are never
    /// changed.
    pub subpixel_upsample: Option<bool>,
    /// With `device` cuda: run on CPU (with a warning) when this ONNX Runtime has no CUDA execution provider,
    /// instead of failing. Default false: never a silent fallback.
    pub allow_cpu_fallback: Option<bool>,
    /// The upscaler's tiles (`data.output.upscale`): `{"tile": 512, "overlap": 16}`, the longest window side fed to
    /// the model and the context pixels around each window's kept part. Smaller tiles bound memory further.
    pub upscale_tiling: Option<crate::pipeline::upscale::tiles::Tiling>,
    /// Decode images, and encode init images (image-to-image, inpainting), larger than the VAE's `sample_size`
    /// (1024 for SDXL) in either dimension in tiles, as diffusers' `vae.enable_tiling()` does: overlapping tiles run
    /// one at a time and blended (the decoder's pixels; the encoder's moments), so the graph's memory stays that of
    /// one 1024² tile at any size; the result differs from an untiled run, most where tiles meet. Default false.
    pub vae_tiling: Option<bool>,
}

impl EngineOptions {
    /// Parse the options JSON; `None` or blank text gives the defaults.
    pub fn from_json(text: Option<&str>) -> Result<Self> {
        let Some(text) = text.filter(|t| !t.trim().is_empty()) else { return Ok(Self::default()) };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::InvalidJson(format!("engine options: {e}")))?;
        let options: EngineOptions = serde_json::from_value(value)
            .map_err(|e| Error::InvalidOption { field: "options".into(), message: e.to_string() })?;
        for (field, value) in [
            ("max_steps", options.max_steps.map(u64::from)),
            ("max_batch", options.max_batch.map(u64::from)),
            ("max_width", options.max_width.map(u64::from)),
            ("max_height", options.max_height.map(u64::from)),
            ("max_pixels", options.max_pixels),
            ("max_request_bytes", options.max_request_bytes.map(|b| b as u64)),
        ] {
            if value == Some(0) {
                return Err(Error::InvalidOption {
                    field: field.into(),
                    message: "must be ≥ 1 (0 would refuse every request)".into(),
                });
            }
        }
        if options.intra_op_threads == Some(0) {
            return Err(Error::InvalidOption { field: "intra_op_threads".into(), message: "must be ≥ 1".into() });
        }
        if options.max_cached_models == Some(0) {
            return Err(Error::InvalidOption { field: "max_cached_models".into(), message: "must be ≥ 1".into() });
        }
        if options.max_concurrent_runs == Some(0) {
            return Err(Error::InvalidOption { field: "max_concurrent_runs".into(), message: "must be ≥ 1".into() });
        }
        if let Some(t) = options.memory_threshold {
            if !(t > 0.0 && t <= 1.0) {
                return Err(Error::InvalidOption {
                    field: "memory_threshold".into(),
                    message: format!("{t} is not in (0, 1]"),
                });
            }
        }
        if let Some(a) = &options.cpu_memory_arena {
            if crate::runtime::ArenaPolicy::parse(a).is_none() {
                return Err(Error::InvalidOption {
                    field: "cpu_memory_arena".into(),
                    message: format!("{a:?} is not one of unet_only, all, none"),
                });
            }
        }
        if let Some(d) = &options.device {
            if crate::runtime::Device::parse(d).is_none() {
                return Err(Error::InvalidOption {
                    field: "device".into(),
                    message: format!("{d:?} is not one of cpu, cuda, cuda:N"),
                });
            }
        }
        if let Some(cuda) = &options.cuda {
            let on_cuda = options
                .device
                .as_deref()
                .and_then(crate::runtime::Device::parse)
                .is_some_and(|d| d != crate::runtime::Device::Cpu);
            if !on_cuda {
                return Err(Error::InvalidOption {
                    field: "cuda".into(),
                    message: "CUDA settings need `device` \"cuda\" or \"cuda:N\"".into(),
                });
            }
            cuda.validate()?;
        }
        if let Some(tiling) = &options.upscale_tiling {
            tiling.validate()?;
        }
        if let Some(root) = &options.output_root {
            if !root.is_dir() {
                return Err(Error::InvalidOption {
                    field: "output_root".into(),
                    message: format!("{} is not a folder", root.display()),
                });
            }
        }
        if let Some(root) = &options.models_root {
            if !root.is_dir() {
                return Err(Error::InvalidOption {
                    field: "models_root".into(),
                    message: format!("{} is not a folder", root.display()),
                });
            }
        }
        if let Some(p) = &options.onnxruntime_path {
            if !p.is_absolute() {
                return Err(Error::InvalidOption {
                    field: "onnxruntime_path".into(),
                    message: format!("{} must be an absolute path", p.display()),
                });
            }
        }
        Ok(options)
    }

    /// The request limits these options set.
    pub fn limits(&self) -> RequestLimits {
        let d = RequestLimits::default();
        RequestLimits {
            max_json_bytes: self.max_request_bytes.unwrap_or(d.max_json_bytes),
            max_width: self.max_width.unwrap_or(d.max_width),
            max_height: self.max_height.unwrap_or(d.max_height),
            max_pixels: self.max_pixels.unwrap_or(d.max_pixels),
            max_steps: self.max_steps.unwrap_or(d.max_steps),
            max_batch: self.max_batch.unwrap_or(d.max_batch),
            max_loras: self.max_loras.unwrap_or(d.max_loras),
        }
    }
}
