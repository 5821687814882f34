//! VAE decode: latents ÷ the VAE's `scaling_factor` → `vae_decoder` → RGB8, one image at a time (the peak-memory
//! stage). The ONNX graphs here are fp32 or fp16 as exported; diffusers' fp16 upcast applies to torch VAEs only.
//!
//! A decoder comes from a model folder's `vae_decoder/` or, as a custom VAE (`data.models.vae`), from
//! `models_root/vae/<name>/`: the same two files, `model.onnx` and `config.json` (an exported model's
//! `vae_decoder/` folder, copied and renamed; a folder that holds a `vae_decoder/` folder works too).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{s, Array3, Array4, ArrayD, Axis, Ix3, Ix4};

use super::model_dir::{ModelDir, VaeInfo};
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
    /// ([`Self::decode_tiles`]).
    pub fn decode(&self, latent: ArrayD<f32>, seed: u64, tiled: bool, cancel: &CancelToken) -> Result<RgbImage> {
        let latent = self.unscale(latent)?;
        let tile = self.tile_latents();
        let (h, w) = (latent.shape()[2], latent.shape()[3]);
        let chw = if tiled && (h > tile || w > tile) {
            self.decode_tiles(latent, cancel)?
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

    /// Latent pixels per tile side: `sample_size / scale_factor` (diffusers' `tile_latent_min_size`; 128 for SDXL).
    fn tile_latents(&self) -> usize {
        (self.info.sample_size / self.info.scale_factor).max(1) as usize
    }

    /// diffusers' `AutoencoderKL.tiled_decode`: latent tiles of `sample_size / scale_factor` with a 25 % overlap, each
    /// decoded alone; each tile's top and left `sample_size / 4` pixels blended linearly with the (already blended)
    /// tile above and to the left, then its top-left `sample_size · 3/4` pixels kept. The decoder's memory is
    /// that of one tile; the image differs from an untiled decode where tiles meet.
    fn decode_tiles(&self, latent: Array4<f32>, cancel: &CancelToken) -> Result<Array3<f32>> {
        const OVERLAP: f64 = 0.25;
        let tile = self.tile_latents();
        let stride = ((tile as f64 * (1.0 - OVERLAP)) as usize).max(1);
        let sample = self.info.sample_size as usize;
        let blend = (sample as f64 * OVERLAP) as usize;
        let keep = sample - blend;
        let (h, w) = (latent.shape()[2], latent.shape()[3]);
        let mut rows: Vec<Vec<Array3<f32>>> = Vec::new();
        for i in (0..h).step_by(stride) {
            let mut row = Vec::new();
            for j in (0..w).step_by(stride) {
                cancel.check()?;
                let part = latent.slice(s![.., .., i..(i + tile).min(h), j..(j + tile).min(w)]).to_owned();
                row.push(self.run(part, cancel)?);
            }
            rows.push(row);
        }
        for i in 0..rows.len() {
            for j in 0..rows[i].len() {
                let mut t = std::mem::take(&mut rows[i][j]);
                if i > 0 {
                    blend_into(&rows[i - 1][j], &mut t, Axis(1), blend);
                }
                if j > 0 {
                    blend_into(&rows[i][j - 1], &mut t, Axis(2), blend);
                }
                rows[i][j] = t;
            }
        }
        let crop = |t: &Array3<f32>| t.slice(s![.., ..keep.min(t.shape()[1]), ..keep.min(t.shape()[2])]).to_owned();
        let join = |e: ndarray::ShapeError| Error::Internal(format!("joining VAE tiles: {e}"));
        let mut strips = Vec::with_capacity(rows.len());
        for row in &rows {
            let kept: Vec<Array3<f32>> = row.iter().map(crop).collect();
            let views: Vec<_> = kept.iter().map(|t| t.view()).collect();
            strips.push(ndarray::concatenate(Axis(2), &views).map_err(join)?);
        }
        let views: Vec<_> = strips.iter().map(|t| t.view()).collect();
        ndarray::concatenate(Axis(1), &views).map_err(join)
    }
}

/// diffusers' `blend_v` (`axis` 1, rows) / `blend_h` (`axis` 2, columns): the first `extent` lines of `b` (at most
/// as many as either tile has) become `a`'s last lines · (1 − k/extent) + `b`'s · k/extent, in float32 as torch does.
fn blend_into(a: &Array3<f32>, b: &mut Array3<f32>, axis: Axis, extent: usize) {
    let extent = extent.min(a.len_of(axis)).min(b.len_of(axis));
    let base = a.len_of(axis) - extent;
    for k in 0..extent {
        let t = k as f64 / extent as f64;
        let (wa, wb) = ((1.0 - t) as f32, t as f32);
        let from = a.index_axis(axis, base + k);
        let mut to = b.index_axis_mut(axis, k);
        ndarray::Zip::from(&mut to).and(&from).for_each(|y, &x| *y = x * wa + *y * wb);
    }
}
