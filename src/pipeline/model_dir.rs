//! A model folder in the optimum/diffusers ONNX layout and the configs the pipeline needs from it, with diffusers'
//! names and defaults (`model_index.json`, `scheduler/scheduler_config.json`, `unet/config.json`,
//! `vae_decoder/config.json`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::schedulers::SchedulerConfig;

/// What the pipeline reads from a model folder's JSON files.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The folder.
    pub root: PathBuf,
    /// `scheduler/scheduler_config.json`.
    pub scheduler: SchedulerConfig,
    /// `model_index.json` `force_zeros_for_empty_prompt` (diffusers default true): with no negative prompt, the
    /// negative embeddings are zeros instead of the encoding of "".
    pub force_zeros_for_empty_prompt: bool,
    /// `unet/config.json` `sample_size` (latent pixels; 128 for SDXL → 1024 px images).
    pub unet_sample_size: u32,
    /// Number of UNet resolution levels (`len(block_out_channels)`): latent sizes must be multiples of
    /// 2^(levels-1), because exported graphs bake in the upsample sizes.
    pub unet_levels: u32,
    /// `vae_decoder/config.json`.
    pub vae: VaeInfo,
    /// `model_index.json` `requires_aesthetics_score`: an SDXL refiner (text_encoder_2 only, 5 time ids with the
    /// aesthetic score): `data.models.refiner`, or alone the base model of image-to-image and inpainting.
    pub refiner: bool,
    /// Notes about defaults used for missing configs.
    pub warnings: Vec<String>,
}

/// What decoding needs from a VAE decoder's `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeInfo {
    /// `scaling_factor` (0.13025 for SDXL): latents are divided by it before decoding.
    pub scaling_factor: f32,
    /// 2^(len(block_out_channels)-1): image pixels per latent pixel (8 for SDXL).
    pub scale_factor: u32,
    /// `latent_channels` (4 for SDXL), when the config gives it.
    pub latent_channels: Option<u32>,
    /// `sample_size`: the image side one tile of a tiled decode covers (1024 for SDXL; diffusers'
    /// `tile_sample_min_size`).
    pub sample_size: u32,
    /// `latents_mean` and `latents_std` (per latent channel), when the config gives both: diffusers then decodes
    /// `latents · std / scaling_factor + mean` instead of `latents / scaling_factor`.
    pub latents_stats: Option<(Vec<f32>, Vec<f32>)>,
}

impl VaeInfo {
    /// Read `folder/config.json` (a `vae_decoder/` folder). With `warnings`, a missing file gives SDXL's values
    /// and a note there; without, it is an error (a custom VAE must say its scaling factor).
    pub fn read(folder: &Path, warnings: Option<&mut Vec<String>>) -> Result<Self> {
        let path = folder.join("config.json");
        let lenient = warnings.is_some();
        let vae: VaeConfig = read_json(&path, !lenient)?.unwrap_or_else(|| {
            if let Some(w) = warnings {
                w.push("vae_decoder/config.json missing: assuming SDXL's scaling_factor 0.13025".into());
            }
            VaeConfig { scaling_factor: Some(0.13025), ..VaeConfig::default() }
        });
        let levels = vae.block_out_channels.as_ref().map_or(4, |b| b.len() as u32).clamp(1, 8);
        let channels = vae.latent_channels.unwrap_or(4) as usize;
        let latents_stats = match (vae.latents_mean, vae.latents_std) {
            (Some(mean), Some(std)) if mean.len() == channels && std.len() == channels => Some((mean, std)),
            (Some(_), Some(_)) => {
                return Err(Error::model_invalid(
                    &path,
                    format!("latents_mean and latents_std must have {channels} values, one per latent channel"),
                ))
            }
            _ => None,
        };
        Ok(VaeInfo {
            scaling_factor: vae.scaling_factor.unwrap_or(0.18215),
            scale_factor: 1 << (levels - 1),
            latent_channels: vae.latent_channels,
            sample_size: first_number(&vae.sample_size).unwrap_or(1024).max(1),
            latents_stats,
        })
    }
}

#[derive(Deserialize, Default)]
struct ModelIndex {
    force_zeros_for_empty_prompt: Option<bool>,
    requires_aesthetics_score: Option<bool>,
}

#[derive(Deserialize, Default)]
struct UnetConfig {
    sample_size: Option<serde_json::Value>,
    block_out_channels: Option<Vec<u32>>,
}

#[derive(Deserialize, Default)]
struct VaeConfig {
    scaling_factor: Option<f32>,
    block_out_channels: Option<Vec<u32>>,
    latent_channels: Option<u32>,
    sample_size: Option<serde_json::Value>,
    latents_mean: Option<Vec<f32>>,
    latents_std: Option<Vec<f32>>,
}

/// A config size given as a number or a list (`[h, w]`): the number, or the list's first.
fn first_number(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|v| v.as_u64()).map(|n| n as u32),
        _ => None,
    }
}

fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path, required: bool) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map(Some).map_err(|e| Error::model_invalid(path, format!("invalid JSON: {e}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::ModelNotFound { path: path.to_path_buf(), message: "required config file missing".into() })
        }
        Err(e) => Err(Error::model_invalid(path, format!("cannot read: {e}"))),
    }
}

impl ModelDir {
    /// Read the configs of the model folder `root`.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::ModelNotFound { path: root.to_path_buf(), message: "model folder missing".into() });
        }
        let mut warnings = Vec::new();
        let index: ModelIndex = read_json(&root.join("model_index.json"), false)?.unwrap_or_default();
        let sched_path = root.join("scheduler/scheduler_config.json");
        let sched_text = std::fs::read_to_string(&sched_path).map_err(|e| Error::ModelNotFound {
            path: sched_path.clone(),
            message: format!("scheduler config unreadable: {e}"),
        })?;
        let scheduler = SchedulerConfig::from_json(&sched_text)
            .map_err(|e| Error::model_invalid(&sched_path, format!("invalid scheduler config: {e}")))?;

        let unet: UnetConfig = read_json(&root.join("unet/config.json"), false)?.unwrap_or_else(|| {
            warnings.push("unet/config.json missing: assuming SDXL's sample_size 128 and 3 levels".into());
            UnetConfig::default()
        });
        let unet_sample_size = first_number(&unet.sample_size).unwrap_or(128);
        let unet_levels = unet.block_out_channels.as_ref().map_or(3, |b| b.len() as u32).max(1);

        let vae = VaeInfo::read(&root.join("vae_decoder"), Some(&mut warnings))?;
        let refiner = index.requires_aesthetics_score == Some(true);
        Ok(ModelDir {
            root: root.to_path_buf(),
            scheduler,
            // diffusers' default is true, but a refiner's own model_index.json says false
            force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt.unwrap_or(true),
            unet_sample_size,
            unet_levels,
            vae,
            refiner,
            warnings,
        })
    }

    /// Path of a component's graph, e.g. `unet/model.onnx`.
    pub fn graph(&self, component: &str) -> PathBuf {
        self.root.join(component).join("model.onnx")
    }

    /// Bytes of the files in the folders of the graphs a pipeline of `root` loads (text encoders, UNet, VAE
    /// decoder: the graphs and their external data): a lower bound of the memory the load takes (on the CPU an
    /// fp16 graph takes about three times its files, ONNX Runtime adding float32 copies of the weights). Missing
    /// folders count 0.
    pub fn graph_bytes(root: &Path) -> u64 {
        ["text_encoder", "text_encoder_2", "unet", "vae_decoder"]
            .iter()
            .map(|f| Self::folder_bytes(&root.join(f)))
            .sum()
    }

    /// Bytes of the files directly in `folder` (a graph and its external data); 0 when it is missing.
    pub fn folder_bytes(folder: &Path) -> u64 {
        std::fs::read_dir(folder)
            .into_iter()
            .flat_map(|entries| entries.filter_map(|e| e.ok()?.metadata().ok()))
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    /// Default image size (both sides) in pixels: `sample_size * vae_scale_factor`.
    pub fn default_image_size(&self) -> u32 {
        self.unet_sample_size * self.vae.scale_factor
    }

    /// Image sides must be multiples of this many pixels for the exported graphs.
    pub fn size_multiple(&self) -> u32 {
        self.vae.scale_factor << (self.unet_levels - 1)
    }
}
