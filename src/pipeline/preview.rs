//! Live previews for the progress callback (`data.output.preview`): after a denoising step the pipeline turns
//! either the scheduler's x₀ estimate ([`crate::schedulers::Scheduler::denoised`]) or the latents after the step into
//! an RGB8 picture and hands it to [`super::Progress::report`] with that step's report.
//!
//! Two methods:
//! - `latent2rgb`: ComfyUI's linear projection of SDXL latents (the `latent_rgb_factors` and
//!   `latent_rgb_factors_bias` of class `SDXL` in `comfy/latent_formats.py`, applied as its `Latent2RGBPreviewer` in
//!   `latent_preview.py` does, and mapped to bytes as its `preview_to_image`: `(v + 1) / 2`, clamped to [0, 1],
//!   × 255, truncated to `u8`). One pixel per latent pixel. The factors are for SDXL's VAE; they work on the
//!   latents as the UNet sees them (already × `scaling_factor`), as ComfyUI's sampler callback does.
//! - `vae`: the run's VAE decoder exactly as the final decode calls it (same decoder, tiling and byte conversion),
//!   so the preview after the last step of the last stage equals the returned image. One VAE decode per preview.
//!
//! No preview work or allocation happens when previews are off: the denoising loop holds no [`Previewer`].

use ndarray::{ArrayView3, ArrayViewD, Axis};

use super::decode::VaeDecoder;
use crate::error::{Error, Result};
use crate::protocol::params::{PreviewMethod, PreviewParams};
use crate::runtime::CancelToken;

/// ComfyUI's SDXL `latent_rgb_factors`: row `c` is latent channel `c`'s contribution to (R, G, B).
pub const SDXL_LATENT_RGB_FACTORS: [[f32; 3]; 4] =
    [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]];

/// ComfyUI's SDXL `latent_rgb_factors_bias` (R, G, B).
pub const SDXL_LATENT_RGB_BIAS: [f32; 3] = [0.1084, -0.0175, -0.0011];

/// One preview picture, borrowed for one progress report.
#[derive(Debug, Clone, Copy)]
pub struct PreviewImage<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width × height × 3` bytes, RGB, rows top to bottom, no padding.
    pub rgb: &'a [u8],
}

/// Writes the `latent2rgb` preview of one latent `[4, h, w]` into `out` (resized to `h × w × 3`, reusing its
/// allocation). Per pixel and colour: `Σ_c latent[c] · factors[c][k] + bias[k]` in float32, then
/// `((v + 1) / 2).clamp(0, 1) · 255` truncated to a byte.
///
/// Errors: [`Error::Internal`] unless the latent has 4 channels.
pub fn latent2rgb(latent: ArrayView3<'_, f32>, out: &mut Vec<u8>) -> Result<(u32, u32)> {
    let (c, h, w) = latent.dim();
    if c != SDXL_LATENT_RGB_FACTORS.len() {
        return Err(Error::Internal(format!("latent2rgb preview of {c}-channel latents (SDXL has 4)")));
    }
    out.clear();
    out.reserve(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for k in 0..3 {
                let mut v = 0.0f32;
                for (ch, row) in SDXL_LATENT_RGB_FACTORS.iter().enumerate() {
                    v += latent[[ch, y, x]] * row[k];
                }
                v += SDXL_LATENT_RGB_BIAS[k];
                out.push((((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8);
            }
        }
    }
    Ok((w as u32, h as u32))
}

/// Makes the previews of one denoising loop: when they are due and from which latents.
pub struct Previewer<'a> {
    params: PreviewParams,
    vae: &'a VaeDecoder,
    tiled: bool,
    buffer: Vec<u8>,
}

impl<'a> Previewer<'a> {
    /// Previews as `params` asks, a `vae` preview decoding with `vae` (tiled when the final decode is).
    pub fn new(params: PreviewParams, vae: &'a VaeDecoder, tiled: bool) -> Self {
        Previewer { params, vae, tiled, buffer: Vec::new() }
    }

    /// The request's settings.
    pub fn params(&self) -> &PreviewParams {
        &self.params
    }

    /// Whether the report of `step` (1-based) of `total` gets a preview: every `interval`-th step and the last.
    pub fn due(&self, step: u32, total: u32) -> bool {
        step.is_multiple_of(self.params.interval) || step == total
    }

    /// The preview of image `k` of `latents` (`[N, 4, h, w]`).
    ///
    /// Errors: a failed VAE decode (or cancellation during it), or [`Error::Internal`] for latents of the wrong
    /// shape.
    pub fn render(
        &mut self,
        latents: ArrayViewD<'_, f32>,
        k: usize,
        seed: u64,
        cancel: &CancelToken,
    ) -> Result<PreviewImage<'_>> {
        if latents.ndim() != 4 || k >= latents.shape()[0] {
            return Err(Error::Internal(format!("preview of image {k} of latents {:?}", latents.shape())));
        }
        let (width, height) = match self.params.method {
            PreviewMethod::Latent2Rgb => {
                let one = latents.index_axis(Axis(0), k);
                let one = one
                    .into_dimensionality::<ndarray::Ix3>()
                    .map_err(|e| Error::Internal(format!("preview latents: {e}")))?;
                latent2rgb(one, &mut self.buffer)?
            }
            PreviewMethod::Vae => {
                let one = latents.slice_axis(Axis(0), (k..k + 1).into()).to_owned();
                let image = self.vae.decode(one, seed, self.tiled, cancel)?;
                self.buffer = image.data;
                (image.width, image.height)
            }
        };
        Ok(PreviewImage { width, height, rgb: &self.buffer })
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    #[test]
    fn latent2rgb_projects_each_channel_by_its_factor_row_plus_the_bias() {
        // One pixel per channel set to 1: the preview shows that channel's factor row plus the bias.
        let mut latent = Array3::<f32>::zeros((4, 1, 5));
        for c in 0..4 {
            latent[[c, 0, c]] = 1.0;
        }
        let mut out = Vec::new();
        assert_eq!(latent2rgb(latent.view(), &mut out).unwrap(), (5, 1));
        let byte = |v: f32| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
        for c in 0..4 {
            let want: Vec<u8> = (0..3).map(|k| byte(SDXL_LATENT_RGB_FACTORS[c][k] + SDXL_LATENT_RGB_BIAS[k])).collect();
            assert_eq!(&out[3 * c..3 * c + 3], &want[..], "channel {c}");
        }
        let bias: Vec<u8> = SDXL_LATENT_RGB_BIAS.iter().map(|&b| byte(b)).collect();
        assert_eq!(&out[12..15], &bias[..], "a zero latent shows the bias");
        // Zero latents with bias 0.1084 → (1.1084 / 2) · 255 = 141.3 → 141 (truncated, not rounded).
        assert_eq!(out[12], 141);
    }

    #[test]
    fn latent2rgb_clamps_to_the_byte_range() {
        let latent = Array3::<f32>::from_shape_fn(
            (4, 1, 2),
            |(c, _, x)| if x == 0 { 10.0 } else { -10.0 } * [1.0, 0.0, 0.0, 0.0][c],
        );
        let mut out = Vec::new();
        latent2rgb(latent.view(), &mut out).unwrap();
        assert_eq!(out, vec![255, 255, 255, 0, 0, 0]);
    }

    #[test]
    fn latent2rgb_refuses_other_channel_counts() {
        let mut out = Vec::new();
        assert!(latent2rgb(Array3::<f32>::zeros((16, 2, 2)).view(), &mut out).is_err());
    }
}
