//! VAE decode: latents ÷ the VAE's `scaling_factor` → `vae_decoder` → RGB8, one image at a time (the peak-memory
//! stage). The ONNX graphs here are fp32 or fp16 as exported; diffusers' fp16 upcast applies to torch VAEs only.
//!
//! A decoder comes from a model folder's `vae_decoder/` or, as a custom VAE (`data.models.vae`), from
//! `models_root/vae/<name>/`: the same two files, `model.onnx` and `config.json` (an exported model's
//! `vae_decoder/` folder, copied and renamed; a folder that holds a `vae_decoder/` folder works too).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array3, Array4, ArrayD, Axis, Ix3, Ix4};

use super::model_dir::{ModelDir, VaeInfo};
use super::vae_tiles::Tiling;
use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::runtime::tensor::float_value;
use crate::runtime::{CancelToken, ModelSession, SessionConfig};

/// A loaded VAE decoder graph and the config values decoding needs.
#[derive(Debug, Clone)]
pub struct VaeDecoder {
    session: Arc<ModelSession>,
    info: VaeInfo,
    folder: PathBuf,
}

impl VaeDecoder {
    /// Load the custom VAE decoder in `folder` (`model.onnx` + `config.json`, both required, or a folder holding
    /// `vae_decoder/`).
    pub fn load(env: &ort::environment::Environment, folder: &Path, config: &SessionConfig) -> Result<Self> {
        let graph = Self::graph_in(folder);
        let folder = graph.parent().unwrap_or(folder).to_path_buf();
        let info = VaeInfo::read(&folder, None)?;
        let session = Arc::new(ModelSession::load(env, &graph, "vae_decoder", config)?);
        Self::new(session, info, folder)
    }

    /// The graph file of the decoder in `folder`: `folder/vae_decoder/model.onnx` when that exists, else
    /// `folder/model.onnx`.
    pub fn graph_in(folder: &Path) -> PathBuf {
        let nested = folder.join("vae_decoder").join("model.onnx");
        if nested.is_file() {
            nested
        } else {
            folder.join("model.onnx")
        }
    }

    /// A decoder from an already loaded session (shared between pipelines) and its config values.
    pub fn new(session: Arc<ModelSession>, info: VaeInfo, folder: PathBuf) -> Result<Self> {
        session.input("latent_sample")?;
        Ok(VaeDecoder { session, info, folder })
    }

    /// The graph's session.
    pub fn session(&self) -> &Arc<ModelSession> {
        &self.session
    }

    /// The config values.
    pub fn info(&self) -> &VaeInfo {
        &self.info
    }

    /// The folder it was loaded from.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// A custom VAE must fit the latents of the model `dir`: the same pixels per latent pixel and latent channels
    /// (an error naming `data.models.vae`).
    pub fn check_fits(&self, dir: &ModelDir) -> Result<()> {
        let (got, want) = (&self.info, &dir.vae);
        if got.scale_factor != want.scale_factor {
            return Err(Error::field(
                "data.models.vae",
                format!(
                    "{} maps {} pixels to a latent pixel, the model {} maps {}: not a VAE for this model",
                    self.folder.display(),
                    got.scale_factor,
                    dir.root.display(),
                    want.scale_factor
                ),
            ));
        }
        if let (Some(a), Some(b)) = (got.latent_channels, want.latent_channels.or(Some(4))) {
            if a != b {
                return Err(Error::field(
                    "data.models.vae",
                    format!(
                        "{} decodes {a}-channel latents, the model makes {b}: not a VAE for this model",
                        self.folder.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Decode one latent `[1, C, h, w]` into an image; with `tiled`, as diffusers' `vae.enable_tiling()` does
    /// ([`Tiling::decode`]: latents larger than `sample_size / scale_factor` in tiles of that size, 25 % overlap).
    pub fn decode(&self, latent: ArrayD<f32>, seed: u64, tiled: bool, cancel: &CancelToken) -> Result<RgbImage> {
        let latent = self.unscale(latent)?;
        let tiling = Tiling::decode(&self.info);
        let chw = if tiled && tiling.applies(latent.shape()[2], latent.shape()[3]) {
            tiling.run(&latent, cancel, |tile| self.run(tile, cancel))?
        } else {
            self.run(latent, cancel)?
        };
        Ok(RgbImage::from_vae_output(chw.view(), seed))
    }

    /// diffusers' decoder input: `latents / scaling_factor`, or `latents · std / scaling_factor + mean` per channel
    /// when the config has `latents_mean` / `latents_std`.
    fn unscale(&self, latent: ArrayD<f32>) -> Result<Array4<f32>> {
        let mut z = latent
            .into_dimensionality::<Ix4>()
            .map_err(|e| Error::Internal(format!("latents are not [1, C, h, w]: {e}")))?;
        let sf = self.info.scaling_factor;
        match &self.info.latents_stats {
            None => z.mapv_inplace(|v| v / sf),
            Some((mean, std)) => {
                for (c, mut channel) in z.axis_iter_mut(Axis(1)).enumerate() {
                    let (m, s) = (mean.get(c).copied().unwrap_or(0.0), std.get(c).copied().unwrap_or(1.0));
                    channel.mapv_inplace(|v| v * s / sf + m);
                }
            }
        }
        Ok(z)
    }

    /// One decoder run: `[1, C, h, w]` latents (already unscaled) → `[3, H, W]` in [-1, 1].
    fn run(&self, latent: Array4<f32>, cancel: &CancelToken) -> Result<Array3<f32>> {
        let vae = &self.session;
        let spec = vae.input("latent_sample")?;
        let value = float_value(latent.into_dyn(), spec.elem, "vae_decoder", "latent_sample")?;
        let mut out = vae.run(vec![("latent_sample".to_string(), value)], &["sample"], cancel)?;
        let image = out.remove(0);
        let chw = image
            .index_axis_move(Axis(0), 0)
            .into_dimensionality::<Ix3>()
            .map_err(|e| Error::model_invalid(vae.path(), format!("vae_decoder output is not [1, 3, H, W]: {e}")))?;
        if chw.shape()[0] != 3 {
            return Err(Error::model_invalid(
                vae.path(),
                format!("vae_decoder gives {} channels, not 3", chw.shape()[0]),
            ));
        }
        Ok(chw)
    }
}
