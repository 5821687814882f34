//! Image-to-image's start (`data.init_image`), as diffusers' `StableDiffusionXLImg2ImgPipeline.prepare_latents`
//! does it: the init image resized to the request's size (Pillow's Lanczos, only when the size differs) and scaled
//! to [-1, 1] → `vae_encoder` (the posterior's mean and log-variance; with the engine option `vae_tiling`, in
//! blended tiles as diffusers' `vae.enable_tiling()` does, [`super::vae_tiles`]) → one posterior sample per image,
//! drawn from that image's generator → × the VAE's `scaling_factor` → noised by the scheduler to the level of the
//! first step that runs ([`crate::schedulers::Scheduler::add_noise`], in the pipeline).
//!
//! The encoder is the graph `vae_encoder/model.onnx` beside the decoder that decodes the request: a model folder's
//! own, or a custom VAE's (`models_root/vae/<name>/vae_encoder/model.onnx`). It must output `latent_parameters`
//! (mean ‖ log-variance on the channel axis, as `onnx/export_onnx.py` and optimum export it): a graph that draws its
//! own sample inside cannot reproduce diffusers' seeded sample.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{s, Array4, Axis, Ix4};

use super::model_dir::VaeInfo;
use super::vae_tiles::Tiling;
use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::runtime::tensor::float_value;
use crate::runtime::{CancelToken, ModelSession, SessionConfig};

/// The output holding the posterior's parameters.
const MOMENTS: &str = "latent_parameters";

/// A loaded VAE encoder graph.
#[derive(Debug)]
pub struct VaeEncoder {
    session: Arc<ModelSession>,
}

impl VaeEncoder {
    /// The encoder graph beside the VAE decoder folder `decoder` (`<model>/vae_decoder` → `<model>/vae_encoder/`; a
    /// custom VAE folder `vae/<name>` or `vae/<name>/vae_decoder` → `vae/<name>/vae_encoder/`).
    pub fn graph_beside(decoder: &Path) -> PathBuf {
        let vae = if decoder.file_name().is_some_and(|f| f == "vae_decoder") {
            decoder.parent().unwrap_or(decoder)
        } else {
            decoder
        };
        vae.join("vae_encoder").join("model.onnx")
    }

    /// Load the encoder graph at `path`, checking its input `sample` and its `latent_parameters` output.
    ///
    /// Errors: [`Error::ModelNotFound`] when the file is missing; [`Error::ModelInvalid`] for another output.
    pub fn load(env: &ort::environment::Environment, path: &Path, config: &SessionConfig) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::ModelNotFound {
                path: path.to_path_buf(),
                message: "image-to-image (data.init_image) needs the VAE encoder graph; export it with \
                          onnx/export_onnx.py (its vae_encoder component)"
                    .into(),
            });
        }
        let session = ModelSession::load(env, path, "vae_encoder", config)?;
        session.input("sample")?;
        if !session.outputs().iter().any(|o| o.name == MOMENTS) {
            let names: Vec<&str> = session.outputs().iter().map(|o| o.name.as_str()).collect();
            return Err(Error::model_invalid(
                path,
                format!(
                    "the VAE encoder outputs {names:?}, not `{MOMENTS}` (the posterior's mean and log-variance): a \
                     graph that samples inside cannot give diffusers' seeded sample; re-export it with \
                     onnx/export_onnx.py"
                ),
            ));
        }
        Ok(VaeEncoder { session: Arc::new(session) })
    }

    /// The graph's session.
    pub fn session(&self) -> &Arc<ModelSession> {
        &self.session
    }

    /// The posterior's parameters `[1, 2C, h, w]` (mean, then log-variance) of `pixels` `[1, 3, H, W]` in [-1, 1],
    /// checked against the `channels` latent channels and the `latent` size `(h, w)` the request needs. With
    /// `tiling` ([`Tiling::encode`]; engine option `vae_tiling`), an image larger than one tile in either dimension
    /// is encoded as diffusers' `AutoencoderKL._tiled_encode` does: pixel tiles of `sample_size` with a 25 %
    /// overlap, encoded one at a time, their moments blended where they meet and joined ([`Tiling::run`]).
    pub fn moments(
        &self,
        pixels: Array4<f32>,
        channels: usize,
        latent: (usize, usize),
        tiling: Option<Tiling>,
        cancel: &CancelToken,
    ) -> Result<Array4<f32>> {
        let out = match tiling {
            Some(t) if t.applies(pixels.shape()[2], pixels.shape()[3]) => t
                .run(&pixels, cancel, |tile| Ok(self.run(tile, channels, cancel)?.index_axis_move(Axis(0), 0)))?
                .insert_axis(Axis(0)),
            _ => self.run(pixels, channels, cancel)?,
        };
        let want = [1, 2 * channels, latent.0, latent.1];
        if out.shape() != want {
            return Err(Error::model_invalid(
                self.session.path(),
                format!("the VAE encoder gives {MOMENTS} of shape {:?}, not {want:?}", out.shape()),
            ));
        }
        Ok(out)
    }

    /// One encoder run: `[1, 3, H, W]` → `[1, 2 · channels, h, w]` (h, w not checked).
    fn run(&self, pixels: Array4<f32>, channels: usize, cancel: &CancelToken) -> Result<Array4<f32>> {
        let spec = self.session.input("sample")?;
        let value = float_value(pixels.into_dyn(), spec.elem, "vae_encoder", "sample")?;
        let out = self.session.run(vec![("sample".to_string(), value)], &[MOMENTS], cancel)?.remove(0);
        let shape = out.shape().to_vec();
        if shape.len() != 4 || shape[..2] != [1, 2 * channels] {
            return Err(Error::model_invalid(
                self.session.path(),
                format!("the VAE encoder gives {MOMENTS} of shape {shape:?}, not [1, {}, h, w]", 2 * channels),
            ));
        }
        out.into_dimensionality::<Ix4>().map_err(|e| Error::Internal(format!("encoder output: {e}")))
    }
}

/// A request's init image, ready to encode: the encoder of the VAE that decodes and the image's pixels
/// ([`pixels`]).
#[derive(Debug, Clone)]
pub struct InitImage {
    /// The VAE encoder.
    pub encoder: Arc<VaeEncoder>,
    /// `[1, 3, H, W]` in [-1, 1], at the request's size.
    pub pixels: Array4<f32>,
    /// Inpainting's mask at the request's size (`[H, W]`, 1 = redraw; [`super::inpaint::mask_pixels`]); `None`:
    /// the whole image is redrawn (image-to-image).
    pub mask: Option<ndarray::Array2<f32>>,
}

impl InitImage {
    /// The image's (width, height): the request's.
    pub fn size(&self) -> (u32, u32) {
        (self.pixels.shape()[3] as u32, self.pixels.shape()[2] as u32)
    }
}

/// The init image as the encoder gets it: resized to `width` × `height` with Pillow's Lanczos when its size
/// differs (diffusers' `VaeImageProcessor.resize`), then `2 · (v / 255) − 1` in float32 (`pil_to_numpy`, then
/// `normalize`), as `[1, 3, H, W]`.
pub fn pixels(image: &RgbImage, width: u32, height: u32) -> Array4<f32> {
    let image = crate::image::lanczos::at_size(image, width, height);
    let (w, h) = (width as usize, height as usize);
    Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| 2.0 * (f32::from(image.data[(y * w + x) * 3 + c]) / 255.0) - 1.0)
}

/// The initial latents of `n` images before the scheduler noises them: per image, diffusers'
/// `DiagonalGaussianDistribution.sample` — `mean + exp(0.5 · clamp(logvar, −30, 20)) · ε` with `ε` that image's
/// slice of `noise` (`[n, C, h, w]`, drawn from its generator) — then `scaling_factor · z`, or
/// `(z − latents_mean) · scaling_factor / latents_std` per channel when the VAE config has them. Float32 op by op.
pub fn image_latents(moments: &Array4<f32>, noise: &[f32], n: usize, vae: &VaeInfo) -> Result<Array4<f32>> {
    let c = moments.shape()[1] / 2;
    let (h, w) = (moments.shape()[2], moments.shape()[3]);
    let eps = Array4::from_shape_vec((n, c, h, w), noise.to_vec())
        .map_err(|e| Error::Internal(format!("posterior noise: {e}")))?;
    let mean = moments.slice(s![0..1, ..c, .., ..]);
    let std = moments.slice(s![0..1, c.., .., ..]).mapv(|l| (0.5 * l.clamp(-30.0, 20.0)).exp());
    let mut z = eps;
    for mut item in z.axis_iter_mut(Axis(0)) {
        ndarray::Zip::from(&mut item)
            .and(&mean.index_axis(Axis(0), 0))
            .and(&std.index_axis(Axis(0), 0))
            .for_each(|e, &m, &s| *e = m + s * *e);
    }
    let sf = vae.scaling_factor;
    match &vae.latents_stats {
        None => z.mapv_inplace(|v| sf * v),
        Some((means, stds)) => {
            for (k, mut channel) in z.axis_iter_mut(Axis(1)).enumerate() {
                let (m, s) = (means.get(k).copied().unwrap_or(0.0), stds.get(k).copied().unwrap_or(1.0));
                channel.mapv_inplace(|v| (v - m) * sf / s);
            }
        }
    }
    Ok(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(stats: Option<(Vec<f32>, Vec<f32>)>) -> VaeInfo {
        VaeInfo {
            scaling_factor: 0.5,
            scale_factor: 8,
            latent_channels: Some(1),
            sample_size: 64,
            latents_stats: stats,
        }
    }

    #[test]
    fn the_posterior_sample_is_mean_plus_clamped_std_times_noise_then_scaled() {
        // One channel, 1×2 latents: mean [1, -2], logvar [2 ln 3, 100 (clamped to 20)].
        let moments = Array4::from_shape_vec((1, 2, 1, 2), vec![1.0, -2.0, 2.0 * 3f32.ln(), 100.0]).unwrap();
        let z = image_latents(&moments, &[0.5, 0.0, -1.0, 1e-6], 2, &info(None)).unwrap();
        assert_eq!(z.shape(), [2, 1, 1, 2]);
        let (std0, std1) = ((0.5 * (2.0 * 3f32.ln())).exp(), (0.5 * 20f32).exp());
        let want = [0.5 * (1.0 + std0 * 0.5), 0.5 * -2.0, 0.5 * (1.0 - std0), 0.5 * (-2.0 + std1 * 1e-6)];
        assert_eq!(z.iter().copied().collect::<Vec<_>>(), want);
        let z = image_latents(&moments, &[0.0; 4], 2, &info(Some((vec![1.0], vec![4.0])))).unwrap();
        assert_eq!(z[[1, 0, 0, 1]], (-2.0 - 1.0) * 0.5 / 4.0);
    }

    #[test]
    fn pixels_are_scaled_to_minus_one_one_and_resized_only_when_needed() {
        let image = RgbImage { width: 2, height: 1, seed: 0, data: vec![0, 255, 51, 102, 153, 204] };
        let p = pixels(&image, 2, 1);
        assert_eq!(p.shape(), [1, 3, 1, 2]);
        assert_eq!(p[[0, 0, 0, 0]], -1.0);
        assert_eq!(p[[0, 1, 0, 0]], 1.0);
        assert_eq!(p[[0, 2, 0, 0]], 2.0 * (51.0f32 / 255.0) - 1.0);
        assert_eq!(p[[0, 0, 0, 1]], 2.0 * (102.0f32 / 255.0) - 1.0);
        assert_eq!(pixels(&image, 4, 2).shape(), [1, 3, 2, 4]);
    }

    #[test]
    fn the_encoder_sits_beside_the_decoder() {
        let at = |p: &str| VaeEncoder::graph_beside(Path::new(p));
        assert_eq!(at("/m/tiny/vae_decoder"), Path::new("/m/tiny/vae_encoder/model.onnx"));
        assert_eq!(at("/m/vae/fix"), Path::new("/m/vae/fix/vae_encoder/model.onnx"));
    }
}
