//! The latents a run starts from, per batch chunk: seeded noise × `init_noise_sigma` (text-to-image), the init
//! image's latents noised to the first step that runs (image-to-image, diffusers' img2img `prepare_latents`), or
//! inpainting's start (diffusers' inpaint `prepare_latents` and `prepare_mask_latents`) with what the loop inpaints
//! with: the mask blend after every step (a 4-channel UNet) or the mask and masked-image channels of every UNet call
//! (a 9-channel inpainting UNet); and a refiner's inpainting of the latents a base hands over ([`handed_over`]).
//! The generator draws are diffusers', in its order.

use ndarray::{concatenate, Array2, Array4, ArrayD, Axis, IxDyn};

use super::encode;
use super::inpaint::{self, Blend, Inpainting, MaskChannels};
use super::model_dir::VaeInfo;
use crate::error::{Error, Result};
use crate::rng::{BatchGenerators, NoiseSource, TorchGenerator};
use crate::schedulers::Scheduler;

/// What a request starts from, prepared once for all its batch chunks.
pub(super) enum Origin {
    /// Seeded noise.
    Noise,
    /// The init image's posterior `[1, 2C, h, w]` (image-to-image) and the VAE's scaling.
    Image { moments: Array4<f32>, vae: VaeInfo },
    /// Inpainting with a 4-channel UNet: the latent mask `[h, w]` and the init image's latents `[1, C, h, w]`,
    /// which diffusers' inpaint pipeline draws once, from the first generator (seed + 0), for the whole batch;
    /// `pure_noise` at strength 1 (diffusers' `is_strength_max`: the run starts from noise × `init_noise_sigma`).
    Inpaint { mask: Array2<f32>, image: Array4<f32>, pure_noise: bool },
    /// Inpainting with a 9-channel inpainting UNet: the init image's latents `[1, C, h, w]` (`None` at strength 1:
    /// the run starts from noise × `init_noise_sigma` and diffusers never encodes the image) and what the UNet
    /// takes beside the latents; both drawn once, from the first generator.
    InpaintUnet { image: Option<Array4<f32>>, channels: MaskChannels },
}

impl Origin {
    /// Image-to-image from the init image's posterior `moments`.
    pub(super) fn image(moments: Array4<f32>, vae: &VaeInfo) -> Self {
        Origin::Image { moments, vae: vae.clone() }
    }

    /// Inpainting with a 4-channel UNet: the init image's posterior `moments` and the `mask` at the image's size,
    /// for a request with `seed` and `strength`. The first generator's first draw is the image's posterior sample.
    pub(super) fn inpaint(
        moments: &Array4<f32>,
        mask: &Array2<f32>,
        (seed, strength): (u64, f64),
        vae: &VaeInfo,
    ) -> Result<Self> {
        let (c, h, w) = latent_dims(moments);
        let first_draw = TorchGenerator::new(seed).randn(c * h * w);
        let image = encode::image_latents(moments, &first_draw, 1, vae)?;
        Ok(Origin::Inpaint { mask: inpaint::latent_mask(mask, h, w), image, pure_noise: strength == 1.0 })
    }

    /// Inpainting with a 9-channel inpainting UNet: the init image's posterior `moments` (`None` at strength 1),
    /// the masked image's `masked_moments` and the `mask` at the image's size, for a request with `seed`. The first
    /// generator draws the image's posterior sample (when encoded), its noise, then the masked image's sample.
    pub(super) fn inpaint_unet(
        moments: Option<&Array4<f32>>,
        masked_moments: &Array4<f32>,
        mask: &Array2<f32>,
        seed: u64,
        vae: &VaeInfo,
    ) -> Result<Self> {
        let (c, h, w) = latent_dims(masked_moments);
        let mut first = TorchGenerator::new(seed);
        let image = moments.map(|m| encode::image_latents(m, &first.randn(c * h * w), 1, vae)).transpose()?;
        first.randn(c * h * w); // the first image's noise, drawn again with the batch chunk's
        let masked_image_latents = encode::image_latents(masked_moments, &first.randn(c * h * w), 1, vae)?;
        let channels = MaskChannels { mask: inpaint::latent_mask(mask, h, w), masked_image_latents };
        Ok(Origin::InpaintUnet { image, channels })
    }

    /// The starting latents of the chunk `shape` (`[n, C, h, w]`) whose generators are `noise` (`first_chunk`:
    /// it holds the request's first generator), for `scheduler` starting at evaluation `begin`; with inpainting
    /// also what the loop inpaints with.
    pub(super) fn latents(
        &self,
        shape: [usize; 4],
        noise: &mut BatchGenerators,
        first_chunk: bool,
        scheduler: &dyn Scheduler,
        begin: usize,
    ) -> Result<(ArrayD<f32>, Option<Inpainting>)> {
        let pure_noise = |added: &ArrayD<f32>| added.mapv(|v| v * scheduler.init_noise_sigma());
        match self {
            Origin::Noise => Ok((pure_noise(&draw(noise, shape)?), None)),
            // img2img: each generator draws its image's posterior sample, then the noise add_noise scales.
            Origin::Image { moments, vae } => {
                let image = encode::image_latents(moments, &noise.randn(&shape), shape[0], vae)?;
                let added = draw(noise, shape)?;
                Ok((scheduler.add_noise(image.into_dyn().view(), added.view(), begin), None))
            }
            Origin::Inpaint { mask, image, pure_noise: from_noise } => {
                let added = inpaint_noise(noise, shape, first_chunk, true)?;
                let image = repeat(image, shape[0])?;
                let start = match from_noise {
                    true => pure_noise(&added),
                    false => scheduler.add_noise(image.view(), added.view(), begin),
                };
                let blend = Blend { mask: mask.clone(), image_latents: image, noise: added };
                Ok((start, Some(Inpainting::Blend(blend))))
            }
            Origin::InpaintUnet { image, channels } => {
                let added = inpaint_noise(noise, shape, first_chunk, image.is_some())?;
                let start = match image {
                    None => pure_noise(&added),
                    Some(image) => scheduler.add_noise(repeat(image, shape[0])?.view(), added.view(), begin),
                };
                Ok((start, Some(Inpainting::Channels(channels.clone()))))
            }
        }
    }
}

/// How a refiner stage inpaints the latents `handed_over` by the base (either kind of base UNet; the refiner's is a
/// 4-channel UNet), with `inpainting` the base's: diffusers' inpaint pipeline called with `image=` those latents
/// and `denoising_start` takes them as its image latents as they are (no VAE encode, no posterior draw), starts
/// from them (`add_noise=False`), draws fresh noise `randn(shape)` from the chunk's generators (after all of the
/// base's draws) and encodes no masked image (the image is latents). Every refiner step then blends with the
/// handed-over latents noised by that noise ([`Blend`]), with the mask made again from the same mask image.
pub(super) fn handed_over(
    handed_over: &ArrayD<f32>,
    inpainting: &Inpainting,
    noise: &mut BatchGenerators,
) -> Result<Inpainting> {
    let shape: [usize; 4] = handed_over
        .shape()
        .try_into()
        .map_err(|_| Error::Internal(format!("handed-over latents of shape {:?}", handed_over.shape())))?;
    let added = draw(noise, shape)?;
    Ok(Inpainting::Blend(Blend { mask: inpainting.mask().clone(), image_latents: handed_over.clone(), noise: added }))
}

/// `(C, h, w)` of the latents a posterior `[1, 2C, h, w]` gives.
fn latent_dims(moments: &Array4<f32>) -> (usize, usize, usize) {
    (moments.shape()[1] / 2, moments.shape()[2], moments.shape()[3])
}

/// Noise of `shape` from the chunk's generators (one image's slice each).
fn draw(noise: &mut BatchGenerators, shape: [usize; 4]) -> Result<ArrayD<f32>> {
    ArrayD::from_shape_vec(IxDyn(&shape), noise.randn(&shape))
        .map_err(|e| Error::Internal(format!("initial noise: {e}")))
}

/// The inpaint pipeline's draws for one chunk, in diffusers' order: the first generator's image posterior sample
/// (`image_encoded`: when diffusers encodes the init image), every generator's noise, then the first generator's
/// masked-image posterior sample (diffusers draws it for either kind of UNet). The posterior samples were drawn
/// once by [`Origin`]'s constructor, so here they only advance the first generator; returns the noise.
fn inpaint_noise(
    noise: &mut BatchGenerators,
    shape: [usize; 4],
    first_chunk: bool,
    image_encoded: bool,
) -> Result<ArrayD<f32>> {
    let numel: usize = shape[1..].iter().product();
    let skip_first = |noise: &mut BatchGenerators| {
        if first_chunk {
            noise.get_mut(0).map(|g| g.randn(numel));
        }
    };
    if image_encoded {
        skip_first(noise);
    }
    let added = draw(noise, shape)?;
    skip_first(noise);
    Ok(added)
}

/// `image` `[1, C, h, w]` repeated to `n` rows.
fn repeat(image: &Array4<f32>, n: usize) -> Result<ArrayD<f32>> {
    let views = vec![image.view(); n];
    Ok(concatenate(Axis(0), &views).map_err(|e| Error::Internal(format!("image latents batch: {e}")))?.into_dyn())
}
