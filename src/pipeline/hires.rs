//! Hires fix's second pass (`data.hires`, A1111's `sample_hr_pass`), run per batch chunk after the text-to-image
//! pass: the chunk's latents are brought to the target size — interpolated as latents ([`interpolate`], torch's
//! `F.interpolate(mode, align_corners=False, antialias=False)`), or decoded, upscaled as pixels (Pillow's Lanczos,
//! or an ONNX upscaler model then Lanczos) and encoded again with one posterior sample per image — and an
//! image-to-image pass at that size denoises them, as diffusers' `StableDiffusionXLImg2ImgPipeline` does with
//! `image=` those latents (4 channels: taken as they are) or those images, `strength` and `num_inference_steps`
//! of the second pass, the same prompts, guidance and scheduler, and the target size's micro-conditioning. Its
//! noise comes from fresh generators seeded as the first pass's (A1111 makes a new `ImageRNG` with the same seeds
//! for the hires pass): per image the posterior sample's draw (pixel paths), then `add_noise`'s, then any step
//! noise.
//!
//! With ControlNet units ([`HiresRun::controlnets`]) the second pass is diffusers'
//! `StableDiffusionXLControlNetImg2ImgPipeline` with `height` / `width` the target's: each unit's control image was
//! resized to the target size from the image as sent (the engine's `controlnets.rs`), and its guidance window counts
//! the evaluations the second pass runs after `strength` (that pipeline builds `controlnet_keep` over its cut
//! timestep list), as image-to-image's does ([`mod@super::denoise`]).

use std::sync::Arc;
use std::time::Instant;

use ndarray::{concatenate, Array4, ArrayD, Axis, IxDyn};

use super::controlnet::ControlUnit;
use super::encode::{self, VaeEncoder};
use super::upscale::tiles::Tiling as UpscaleTiling;
use super::upscale::{ReportAs, Upscaler};
use super::{vae_tiles, RunContext, SdxlPipeline, Stage, LATENT_CHANNELS};
use crate::error::{Error, Result};
use crate::protocol::params::LatentInterpolation;
use crate::rng::{BatchGenerators, NoiseSource};

/// A request's second pass, resolved by the engine.
#[derive(Debug, Clone)]
pub struct HiresRun {
    /// The second pass's width in pixels.
    pub width: u32,
    /// The second pass's height in pixels.
    pub height: u32,
    /// How the first pass's latents reach that size.
    pub upscale: HiresUpscale,
    /// The second pass's denoising strength.
    pub strength: f64,
    /// The second pass's `num_inference_steps`.
    pub steps: u32,
    /// The ControlNet units of the second pass, their control images at the target size (empty without
    /// `data.controlnet`; a unit that sits the pass out, `data.hires.controlnet: "first"`, is
    /// [`ControlUnit::is_active`] false).
    pub controlnets: Vec<ControlUnit>,
}

/// How [`HiresRun`] upscales.
#[derive(Debug, Clone)]
pub enum HiresUpscale {
    /// The latents interpolated; no VAE round trip.
    Latent(LatentInterpolation),
    /// Decoded, resized as pixels, encoded by `encoder`: with `model` (an upscaler and its tiling) its passes then a
    /// Lanczos resize to the target as needed, else one Lanczos resize.
    Pixels {
        /// The VAE encoder beside the decoder.
        encoder: Arc<VaeEncoder>,
        /// The upscaler model, if any, and how its passes are tiled.
        model: Option<(Arc<Upscaler>, UpscaleTiling)>,
    },
}

/// What the second passes of a request did, summed over its chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HiresFacts {
    /// Steps the second pass ran per image: `int(steps × strength)`.
    pub denoising_steps: u32,
    /// Upscaler model passes per image (0 without a model).
    pub model_passes: u32,
    /// Seconds spent upscaling (interpolation, or decode + resize/model; the encode counts as VAE encode).
    pub upscale_seconds: f64,
}

/// `latents` `[n, C, h, w]` interpolated to `(out_h, out_w)` as torch's CPU `F.interpolate(latents, size=(out_h,
/// out_w), mode=…, align_corners=False, antialias=False)` computes it in float32: the scale per axis is
/// `in / out`; bilinear reads source position `max(scale · (i + 0.5) − 0.5, 0)`, index `floor` of it (at most
/// `in − 1`, its neighbour clamped to the edge), weights `1 − λ` and `λ`, summed as torch's `Interpolate` does (rows
/// of `w0 · x0 + w1 · x1`, then `h0 · row0 + h1 · row1`); nearest reads `min(floor(i · scale), in − 1)` (exactly
/// `i / 2` at twice the size), nearest-exact `min(floor((i + 0.5) · scale), in − 1)`.
pub fn interpolate(latents: &ArrayD<f32>, (out_h, out_w): (usize, usize), mode: LatentInterpolation) -> ArrayD<f32> {
    let s = latents.shape();
    let (n, c, in_h, in_w) = (s[0], s[1], s[2], s[3]);
    let taps_h = taps(in_h, out_h, mode);
    let taps_w = taps(in_w, out_w, mode);
    let src = latents.as_standard_layout();
    let src = src.as_slice().expect("standard layout");
    let mut out = Vec::with_capacity(n * c * out_h * out_w);
    for plane in src.chunks_exact(in_h * in_w) {
        for &(y0, y1, hy0, hy1) in &taps_h {
            let (row0, row1) = (&plane[y0 * in_w..(y0 + 1) * in_w], &plane[y1 * in_w..(y1 + 1) * in_w]);
            for &(x0, x1, wx0, wx1) in &taps_w {
                let value = match mode {
                    LatentInterpolation::Bilinear => {
                        let top = row0[x0] * wx0 + row0[x1] * wx1;
                        let bottom = row1[x0] * wx0 + row1[x1] * wx1;
                        top * hy0 + bottom * hy1
                    }
                    _ => row0[x0],
                };
                out.push(value);
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[n, c, out_h, out_w]), out).expect("n · c · out_h · out_w values")
}

/// Per output index along one axis: the two source indices and their weights (nearest modes: one index, weight 1).
fn taps(input: usize, output: usize, mode: LatentInterpolation) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    let last = input.saturating_sub(1);
    (0..output)
        .map(|i| match mode {
            LatentInterpolation::Bilinear => {
                let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
                let index = (real.floor() as usize).min(last);
                let lambda = (real - index as f32).clamp(0.0, 1.0);
                let next = if index < last { index + 1 } else { index };
                (index, next, 1.0 - lambda, lambda)
            }
            LatentInterpolation::Nearest => {
                let index = if output == input {
                    i
                } else if output == 2 * input {
                    i >> 1
                } else {
                    ((i as f32 * scale).floor() as usize).min(last)
                };
                (index, index, 1.0, 0.0)
            }
            LatentInterpolation::NearestExact => {
                let index = (((i as f32 + 0.5) * scale).floor() as usize).min(last);
                (index, index, 1.0, 0.0)
            }
        })
        .collect()
}

impl SdxlPipeline {
    /// The starting latents of the second pass for the chunk `latents` (`[n, C, h, w]`, the first pass's result)
    /// whose first image is `first`: the upscaled latents (or images, encoded with a posterior sample drawn from
    /// `noise`) noised by `scheduler` to evaluation `begin` with noise drawn from `noise` (fresh generators). Image
    /// seeds are `seed + first + i`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hires_start(
        &self,
        latents: ArrayD<f32>,
        run: &HiresRun,
        (seed, first, batch, request_id): (u64, usize, u32, &str),
        scheduler: &dyn crate::schedulers::Scheduler,
        begin: usize,
        noise: &mut BatchGenerators,
        ctx: &mut RunContext<'_>,
        facts: &mut HiresFacts,
        timings: &mut super::StageTimings,
    ) -> Result<ArrayD<f32>> {
        let n = latents.shape()[0];
        let scale = self.dir.vae.scale_factor;
        let (lh, lw) = ((run.height / scale) as usize, (run.width / scale) as usize);
        let shape = [n, LATENT_CHANNELS, lh, lw];
        let t = Instant::now();
        let image_latents = match &run.upscale {
            HiresUpscale::Latent(mode) => {
                let out = interpolate(&latents, (lh, lw), *mode);
                facts.upscale_seconds += t.elapsed().as_secs_f64();
                out
            }
            HiresUpscale::Pixels { encoder, model } => {
                let mut moments = Vec::with_capacity(n);
                for i in 0..n {
                    let index = (first + i) as u32;
                    self.report(ctx, request_id, Stage::Decoding, i as u32, n as u32, index, batch)?;
                    let t_decode = Instant::now();
                    let latent = latents.slice_axis(Axis(0), (i..i + 1).into()).to_owned();
                    let seed_i = seed.wrapping_add((first + i) as u64);
                    let image = self.vae.decode(latent, seed_i, ctx.vae_tiling, ctx.cancel)?;
                    timings.vae_decode += t_decode.elapsed().as_secs_f64();
                    let t_up = Instant::now();
                    let upscaled = match model {
                        Some((upscaler, tiling)) => {
                            let report = ReportAs { request_id, image_index: index, batch_size: batch };
                            let (image, passes) =
                                upscaler.upscale_to(&image, (run.width, run.height), *tiling, ctx, &report)?;
                            facts.model_passes = passes;
                            image
                        }
                        None => crate::image::lanczos::resize(&image, run.width, run.height),
                    };
                    facts.upscale_seconds += t_up.elapsed().as_secs_f64();
                    self.report(ctx, request_id, Stage::ImageEncoding, i as u32, n as u32, index, batch)?;
                    let t_encode = Instant::now();
                    let tiling = ctx.vae_tiling.then(|| vae_tiles::Tiling::encode(self.vae.info()));
                    let pixels = encode::pixels(&upscaled, run.width, run.height);
                    moments.push(encoder.moments(pixels, LATENT_CHANNELS, (lh, lw), tiling, ctx.cancel)?);
                    timings.vae_encode += t_encode.elapsed().as_secs_f64();
                }
                // Each generator draws its image's posterior sample first (diffusers' img2img `prepare_latents`).
                let eps = noise.randn(&shape);
                let numel = LATENT_CHANNELS * lh * lw;
                let each = moments
                    .iter()
                    .enumerate()
                    .map(|(i, m)| encode::image_latents(m, &eps[i * numel..(i + 1) * numel], 1, self.vae.info()))
                    .collect::<Result<Vec<Array4<f32>>>>()?;
                let views: Vec<_> = each.iter().map(|a| a.view()).collect();
                concatenate(Axis(0), &views)
                    .map_err(|e| Error::Internal(format!("hires image latents: {e}")))?
                    .into_dyn()
            }
        };
        let added = ArrayD::from_shape_vec(IxDyn(&shape), noise.randn(&shape))
            .map_err(|e| Error::Internal(format!("hires noise: {e}")))?;
        Ok(scheduler.add_noise(image_latents.view(), added.view(), begin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch 2.x (CPU, float32): `F.interpolate(torch.arange(12.).reshape(1, 1, 3, 4) ** 1.5 / 7, size=…,
    /// mode=…, align_corners=False, antialias=False)`.
    fn source() -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(&[1, 1, 3, 4]), (0..12).map(|v| (v as f32).powf(1.5) / 7.0).collect()).unwrap()
    }

    #[test]
    fn bilinear_interpolation_matches_torch() {
        let got = interpolate(&source(), (5, 6), LatentInterpolation::Bilinear);
        let want: [f32; 30] = TORCH_BILINEAR_5X6;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "element {i}: {g} vs torch {w}");
        }
    }

    #[test]
    fn nearest_modes_match_torch() {
        let got: Vec<f32> = interpolate(&source(), (5, 6), LatentInterpolation::Nearest).iter().copied().collect();
        assert_eq!(got, TORCH_NEAREST_5X6.map(|i| source().as_slice().unwrap()[i]));
        let got: Vec<f32> = interpolate(&source(), (5, 6), LatentInterpolation::NearestExact).iter().copied().collect();
        assert_eq!(got, TORCH_NEAREST_EXACT_5X6.map(|i| source().as_slice().unwrap()[i]));
    }

    #[test]
    fn the_same_size_is_the_identity_and_double_size_repeats_for_nearest() {
        let same = interpolate(&source(), (3, 4), LatentInterpolation::Bilinear);
        assert_eq!(same, source());
        let twice = interpolate(&source(), (6, 8), LatentInterpolation::Nearest);
        assert_eq!(twice[[0, 0, 5, 7]], source()[[0, 0, 2, 3]]);
        assert_eq!(twice[[0, 0, 2, 1]], source()[[0, 0, 1, 0]]);
    }

    // torch 2.15.0 CPU; the nearest modes as source indices (interpolating `arange(12)`).
    #[allow(clippy::excessive_precision)] // torch's float32 values as Python prints them (round-trip exact)
    const TORCH_BILINEAR_5X6: [f32; 30] = [
        0.0,
        0.0714285746216774,
        0.18639114499092102,
        0.36052706837654114,
        0.5731842517852783,
        0.7423074841499329,
        0.4571429193019867,
        0.5908669233322144,
        0.7842028141021729,
        1.022649884223938,
        1.2929733991622925,
        1.5036851167678833,
        1.1428571939468384,
        1.37002432346344,
        1.6809200048446655,
        2.015834093093872,
        2.372657060623169,
        2.645751476287842,
        2.3966360092163086,
        2.6748993396759033,
        3.0526938438415527,
        3.450817823410034,
        3.8678765296936035,
        4.185404300689697,
        3.2324881553649902,
        3.5448153018951416,
        3.9672091007232666,
        4.407473564147949,
        4.864688873291016,
        5.211838722229004,
    ];
    const TORCH_NEAREST_5X6: [usize; 30] =
        [0, 0, 1, 2, 2, 3, 0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7, 4, 4, 5, 6, 6, 7, 8, 8, 9, 10, 10, 11];
    const TORCH_NEAREST_EXACT_5X6: [usize; 30] =
        [0, 1, 1, 2, 3, 3, 0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7, 7, 8, 9, 9, 10, 11, 11, 8, 9, 9, 10, 11, 11];
}
