//! The latents a run starts from, per batch chunk: seeded noise × `init_noise_sigma` (text-to-image), the init
//! image's latents noised to the first step that runs (image-to-image, diffusers' img2img `prepare_latents`), or
//! those with the mask blend the loop applies after every step (inpainting, diffusers' inpaint `prepare_latents`).
//! The generator draws are diffusers', in its order.

use ndarray::{concatenate, Array2, Array4, ArrayD, Axis, IxDyn};

use super::encode;
use super::inpaint::{self, Blend};
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
    /// Inpainting: the latent mask `[h, w]` and the init image's latents `[1, C, h, w]`, which diffusers' inpaint
    /// pipeline draws once, from the first generator (seed + 0), for the whole batch; `pure_noise` at strength 1
    /// (diffusers' `is_strength_max`: the run starts from noise × `init_noise_sigma`).
    Inpaint { mask: Array2<f32>, image: Array4<f32>, pure_noise: bool },
}

impl Origin {
    /// The origin of a request with `seed` and `strength`: noise without `moments`; with them, image-to-image, or
    /// inpainting with `mask` (at the image's size).
    pub(super) fn new(
        moments: Option<Array4<f32>>,
        mask: Option<&Array2<f32>>,
        (seed, strength): (u64, f64),
        vae: &VaeInfo,
    ) -> Result<Self> {
        let Some(moments) = moments else { return Ok(Origin::Noise) };
        let Some(mask) = mask else { return Ok(Origin::Image { moments, vae: vae.clone() }) };
        let (c, h, w) = (moments.shape()[1] / 2, moments.shape()[2], moments.shape()[3]);
        let first_draw = TorchGenerator::new(seed).randn(c * h * w);
        let image = encode::image_latents(&moments, &first_draw, 1, vae)?;
        Ok(Origin::Inpaint { mask: inpaint::latent_mask(mask, h, w), image, pure_noise: strength == 1.0 })
    }

    /// The starting latents of the chunk `shape` (`[n, C, h, w]`) whose generators are `noise` (`first_chunk`:
    /// it holds the request's first generator), for `scheduler` starting at evaluation `begin`; with inpainting
    /// also the loop's [`Blend`].
    pub(super) fn latents(
        &self,
        shape: [usize; 4],
        noise: &mut BatchGenerators,
        first_chunk: bool,
        scheduler: &dyn Scheduler,
        begin: usize,
    ) -> Result<(ArrayD<f32>, Option<Blend>)> {
        let draw = |noise: &mut BatchGenerators| {
            ArrayD::from_shape_vec(IxDyn(&shape), noise.randn(&shape))
                .map_err(|e| Error::Internal(format!("initial noise: {e}")))
        };
        match self {
            Origin::Noise => Ok((draw(noise)?.mapv(|v| v * scheduler.init_noise_sigma()), None)),
            // img2img: each generator draws its image's posterior sample, then the noise add_noise scales.
            Origin::Image { moments, vae } => {
                let image = encode::image_latents(moments, &noise.randn(&shape), shape[0], vae)?;
                let added = draw(noise)?;
                Ok((scheduler.add_noise(image.into_dyn().view(), added.view(), begin), None))
            }
            // inpaint: the first generator draws the image's posterior sample, every generator its noise, then the
            // first generator the masked image's posterior sample (which a 4-channel UNet does not use).
            Origin::Inpaint { mask, image, pure_noise } => {
                let numel: usize = shape[1..].iter().product();
                let first_generator = |noise: &mut BatchGenerators| {
                    if first_chunk {
                        noise.get_mut(0).map(|g| g.randn(numel));
                    }
                };
                first_generator(noise);
                let added = draw(noise)?;
                first_generator(noise);
                let views = vec![image.view(); shape[0]];
                let image = concatenate(Axis(0), &views)
                    .map_err(|e| Error::Internal(format!("image latents batch: {e}")))?
                    .into_dyn();
                let start = if *pure_noise {
                    added.mapv(|v| v * scheduler.init_noise_sigma())
                } else {
                    scheduler.add_noise(image.view(), added.view(), begin)
                };
                Ok((start, Some(Blend { mask: mask.clone(), image_latents: image, noise: added })))
            }
        }
    }
}
