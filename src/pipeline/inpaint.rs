//! Inpainting (`data.mask_image` with `data.init_image`), as diffusers' `StableDiffusionXLInpaintPipeline` does it:
//! the mask is resized to the request's size (Pillow's Lanczos, only when the size differs), made grey (Pillow's
//! `convert("L")`), scaled to [0, 1] and binarized at 0.5 (white = redraw), then shrunk to the latents' size
//! (torch's nearest `interpolate`). Then, by the UNet's `sample` channels ([`Inpainting`]):
//!
//! - a standard 4-channel UNet: after every scheduler step the latents outside the mask are replaced by the init
//!   image's latents noised to the next step's level (the clean latents after the last step), so only the masked
//!   part is redrawn ([`Blend`]);
//! - a 9-channel inpainting UNet (diffusers/stable-diffusion-xl-1.0-inpainting-0.1's kind): every UNet call takes
//!   the mask and the latents of the masked image ([`masked_pixels`]) beside the latents ([`MaskChannels`]); no
//!   blend.

use ndarray::{concatenate, Array2, Array4, ArrayD, ArrayViewD, Axis, Zip};

use crate::error::{Error, Result};

use crate::image::RgbImage;
use crate::schedulers::Scheduler;

/// The mask at `width` × `height` as diffusers' mask processor makes it: `[H, W]` of 0 (keep) and 1 (redraw).
/// The order is Pillow's there: resize (Lanczos, in the image's own colours, only when the size differs), then grey
/// (`convert("L")`: `(R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16`, the identity on a grey image), then `/ 255` and
/// `< 0.5 → 0, else 1`.
pub fn mask_pixels(mask: &RgbImage, width: u32, height: u32) -> Array2<f32> {
    let image = crate::image::lanczos::at_size(mask, width, height);
    let w = width as usize;
    Array2::from_shape_fn((height as usize, w), |(y, x)| {
        let l = crate::image::mask_crop::luma(&image.data[(y * w + x) * 3..]);
        if f32::from(l) / 255.0 < 0.5 {
            0.0
        } else {
            1.0
        }
    })
}

/// `mask` shrunk to `h` × `w` latents as torch's `interpolate(mode="nearest")`: source index
/// `floor(dst · (in / out))` with the scale in float32.
pub fn latent_mask(mask: &Array2<f32>, h: usize, w: usize) -> Array2<f32> {
    let (in_h, in_w) = mask.dim();
    let index = |dst: usize, input: usize, output: usize| {
        let scale = input as f32 / output as f32;
        ((dst as f32 * scale).floor() as usize).min(input - 1)
    };
    Array2::from_shape_fn((h, w), |(y, x)| mask[[index(y, in_h, h), index(x, in_w, w)]])
}

/// What a UNet's `sample` input takes, read from its channel count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnetInput {
    /// The latents only (4 channels): a standard UNet; it inpaints with the [`Blend`].
    Latents,
    /// The latents, the mask and the masked image's latents (4 + 1 + 4 = 9 channels): an inpainting UNet.
    Inpainting,
}

impl UnetInput {
    /// The kind of the UNet graph at `path` whose `sample` input declares `channels` channels (-1: a dynamic
    /// dimension, taken as the latents only). Another count is [`Error::ModelInvalid`], as diffusers' inpaint
    /// pipeline refuses it ("should have either 4 or 9 input channels").
    pub fn from_channels(channels: i64, path: &std::path::Path) -> Result<Self> {
        const LATENTS: i64 = super::LATENT_CHANNELS as i64;
        match channels {
            -1 | LATENTS => Ok(UnetInput::Latents),
            c if c == 2 * LATENTS + 1 => Ok(UnetInput::Inpainting),
            c => Err(Error::model_invalid(
                path,
                format!(
                    "the UNet's sample input has {c} channels: a UNet takes {LATENTS} (the latents) or {} (an inpainting \
                     UNet: the latents, the mask and the masked image's latents)",
                    2 * LATENTS + 1
                ),
            )),
        }
    }
}

/// The init image with the part to redraw blanked, as the 9-channel UNet's masked image: diffusers'
/// `init_image * (mask < 0.5)` on `pixels` `[1, 3, H, W]` in [-1, 1] and the `[H, W]` `mask` (1 = redraw), in
/// float32 (so −0.0 where a blanked pixel was negative, as torch gives).
pub fn masked_pixels(pixels: &Array4<f32>, mask: &Array2<f32>) -> Array4<f32> {
    let keep = mask.mapv(|m| if m < 0.5 { 1.0 } else { 0.0 });
    pixels * &keep
}

/// How the denoising loop inpaints, by the UNet's kind.
#[derive(Debug, Clone)]
pub enum Inpainting {
    /// A standard 4-channel UNet: the latents outside the mask are replaced after every step.
    Blend(Blend),
    /// A 9-channel inpainting UNet: it takes the mask and the masked image's latents at every call.
    Channels(MaskChannels),
}

impl Inpainting {
    /// The latent mask `[h, w]` (1 where the image is redrawn).
    pub fn mask(&self) -> &Array2<f32> {
        match self {
            Inpainting::Blend(blend) => &blend.mask,
            Inpainting::Channels(channels) => &channels.mask,
        }
    }
}

/// What a 9-channel inpainting UNet takes beside the latents: the latent mask and the masked image's latents,
/// the same for every image of the request (diffusers encodes the masked image once, with the first generator).
#[derive(Debug, Clone)]
pub struct MaskChannels {
    /// `[h, w]`, 1 where the image is redrawn.
    pub mask: Array2<f32>,
    /// The masked image's latents `[1, C, h, w]` (scaled).
    pub masked_image_latents: Array4<f32>,
}

impl MaskChannels {
    /// The UNet's extra channels for a batch of `rows` (CFG's two halves included): `[rows, 1 + C, h, w]`, every
    /// row the mask then the masked image's latents (diffusers repeats both per image and doubles them for CFG).
    pub fn rows(&self, rows: usize) -> Result<Array4<f32>> {
        let mask = self.mask.view().insert_axis(Axis(0)).insert_axis(Axis(0));
        let row = concatenate(Axis(1), &[mask, self.masked_image_latents.view()])
            .map_err(|e| Error::Internal(format!("mask channels: {e}")))?;
        concatenate(Axis(0), &vec![row.view(); rows]).map_err(|e| Error::Internal(format!("mask channels: {e}")))
    }
}

/// diffusers' 9-channel UNet input: `torch.cat([latent_model_input, mask, masked_image_latents], dim=1)`, with
/// `extra` from [`MaskChannels::rows`] for the rows of `sample` (the scaled latents, CFG-doubled).
pub fn unet_sample(sample: ArrayD<f32>, extra: &Array4<f32>) -> Result<ArrayD<f32>> {
    concatenate(Axis(1), &[sample.view(), extra.view().into_dyn()])
        .map_err(|e| Error::Internal(format!("inpainting UNet sample {:?} + {:?}: {e}", sample.shape(), extra.shape())))
}

/// What the loop blends in after every step: the latent mask, the latents the unmasked part is kept at and the
/// noise that brings them to each step's level, for the images of one batch chunk.
///
/// The base stage keeps the init image's latents and blends with the noise its run started from. A refiner stage
/// (diffusers' inpaint pipeline called with `image=` the base's latents and `denoising_start`) keeps the latents the
/// base handed over, as they are, and blends with fresh noise it draws from the same generators
/// (`start::handed_over`).
#[derive(Debug, Clone)]
pub struct Blend {
    /// `[h, w]`, 1 where the image is redrawn.
    pub mask: Array2<f32>,
    /// The latents kept outside the mask `[n, C, h, w]` (scaled, not noised): the init image's, or a refiner's
    /// handed-over latents.
    pub image_latents: ArrayD<f32>,
    /// The noise `image_latents` are noised with `[n, C, h, w]`.
    pub noise: ArrayD<f32>,
}

impl Blend {
    /// diffusers' step after `scheduler.step` at evaluation `index` of a stage that runs the evaluations up to
    /// `end` (exclusive): `(1 − mask) · proper + mask · latents`, where `proper` is the image latents noised to
    /// evaluation `index + 1`'s level, or as they are after the stage's last evaluation. diffusers tests
    /// `i < len(timesteps) - 1` against the timesteps the call runs, which `denoising_end` truncates: a base that
    /// hands over to a refiner keeps the clean image latents after its last evaluation, not noised ones. Float32 as
    /// torch.
    pub fn apply(&self, latents: &mut ArrayD<f32>, scheduler: &dyn Scheduler, index: usize, end: usize) {
        if index + 1 < end.min(scheduler.timesteps().len()) {
            let proper = scheduler.add_noise(self.image_latents.view(), self.noise.view(), index + 1);
            blend(latents, proper.view(), &self.mask);
        } else {
            blend(latents, self.image_latents.view(), &self.mask);
        }
    }
}

/// `latents = (1 − mask) · proper + mask · latents`, the `[h, w]` mask broadcast over batch and channels.
fn blend(latents: &mut ArrayD<f32>, proper: ArrayViewD<'_, f32>, mask: &Array2<f32>) {
    for (mut item, kept) in latents.axis_iter_mut(Axis(0)).zip(proper.axis_iter(Axis(0))) {
        for (mut channel, kept) in item.axis_iter_mut(Axis(0)).zip(kept.axis_iter(Axis(0))) {
            Zip::from(&mut channel).and(&kept).and(mask.view().into_dyn()).for_each(|l, &p, &m| {
                *l = (1.0 - m) * p + m * *l;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_made_grey_as_pillow_and_binarized_at_one_half() {
        // Pillow's L of (127,127,127) is 127 (< 0.5 → keep), of (128,128,128) 128; red is 76, green 150.
        let data = [[127u8, 127, 127], [128, 128, 128], [255, 0, 0], [0, 255, 0]].concat();
        let mask = RgbImage { width: 4, height: 1, seed: 0, data };
        assert_eq!(mask_pixels(&mask, 4, 1).into_raw_vec_and_offset().0, [0.0, 1.0, 0.0, 1.0]);
        assert_eq!(mask_pixels(&mask, 8, 2).dim(), (2, 8));
    }

    #[test]
    fn the_latent_mask_takes_the_nearest_pixel_as_torch() {
        let mask = Array2::from_shape_fn((4, 6), |(y, x)| (y * 6 + x) as f32);
        // 4 → 2 rows: 0, 2; 6 → 4 columns: scale 1.5 → 0, 1, 3, 4.
        let got = latent_mask(&mask, 2, 4);
        assert_eq!(got.into_raw_vec_and_offset().0, [0.0, 1.0, 3.0, 4.0, 12.0, 13.0, 15.0, 16.0]);
    }

    #[test]
    fn a_unet_takes_4_or_9_channels_and_any_other_count_is_an_invalid_model() {
        let path = std::path::Path::new("/m/unet/model.onnx");
        assert_eq!(UnetInput::from_channels(4, path).unwrap(), UnetInput::Latents);
        assert_eq!(UnetInput::from_channels(-1, path).unwrap(), UnetInput::Latents);
        assert_eq!(UnetInput::from_channels(9, path).unwrap(), UnetInput::Inpainting);
        for channels in [0, 5, 8, 13] {
            let err = UnetInput::from_channels(channels, path).unwrap_err();
            assert!(matches!(err, Error::ModelInvalid { .. }), "{channels}: {err:?}");
            assert!(err.to_string().contains(&format!("{channels} channels")), "{err}");
            assert!(err.to_string().contains("or 9 (an inpainting UNet"), "one sentence, no gap: {err}");
        }
    }

    #[test]
    fn the_masked_image_blanks_the_redrawn_pixels_with_torchs_signed_zero() {
        let pixels = Array4::from_shape_vec((1, 2, 1, 2), vec![0.5, -0.5, -0.25, 1.0]).unwrap();
        let mask = Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap();
        let masked = masked_pixels(&pixels, &mask);
        assert_eq!(masked.iter().copied().collect::<Vec<_>>(), [0.0, -0.5, 0.0, 1.0]);
        assert!(masked[[0, 1, 0, 0]].is_sign_negative(), "-0.25 × 0 is -0.0 in torch");
    }

    #[test]
    fn the_inpainting_unet_gets_latents_then_mask_then_masked_image_latents() {
        let channels = MaskChannels {
            mask: Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap(),
            masked_image_latents: Array4::from_shape_vec((1, 2, 1, 2), vec![3.0, 4.0, 5.0, 6.0]).unwrap(),
        };
        let extra = channels.rows(2).unwrap();
        assert_eq!(extra.shape(), [2, 3, 1, 2]);
        let sample = ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 1, 1, 2]), vec![7.0, 8.0, 9.0, 10.0]).unwrap();
        let got = unet_sample(sample, &extra).unwrap();
        assert_eq!(got.shape(), [2, 4, 1, 2]);
        let want = [7.0, 8.0, 1.0, 0.0, 3.0, 4.0, 5.0, 6.0, 9.0, 10.0, 1.0, 0.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(got.iter().copied().collect::<Vec<_>>(), want);
    }

    #[test]
    fn the_blend_keeps_clean_image_latents_after_the_last_evaluation_of_its_stage_not_of_the_schedule() {
        // SDXL's Euler grid at 5 steps: 801, 601, 401, 201, 1. A base handing over after evaluation 2
        // (denoising_end) ends its stage at 3: diffusers' `i < len(timesteps) - 1` is tested against the truncated
        // list, so evaluation 2 blends the clean image latents, evaluation 1 those noised to evaluation 2's level.
        let json =
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedulers/sdxl_scheduler_config.json"));
        let config = crate::schedulers::SchedulerConfig::from_json(json).unwrap();
        let scheduler = crate::schedulers::resolve(None, &serde_json::Map::new(), &config).unwrap().build(5).unwrap();
        let shape = ndarray::IxDyn(&[1, 1, 1, 2]);
        let blend = Blend {
            mask: Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap(),
            image_latents: ArrayD::from_elem(shape.clone(), 0.5),
            noise: ArrayD::from_elem(shape.clone(), 1.0),
        };
        let blended = |index: usize, end: usize| {
            let mut latents = ArrayD::from_elem(shape.clone(), 7.0);
            blend.apply(&mut latents, scheduler.as_ref(), index, end);
            latents.into_raw_vec_and_offset().0
        };
        let noised =
            |index: usize| scheduler.add_noise(blend.image_latents.view(), blend.noise.view(), index)[[0, 0, 0, 1]];
        assert_eq!(blended(2, 3), [7.0, 0.5], "the base's last evaluation keeps the clean latents");
        assert_eq!(blended(1, 3), [7.0, noised(2)], "earlier ones the latents noised to the next level");
        assert!(noised(3) != 0.5 && noised(2) != noised(3), "the levels differ: {} {}", noised(2), noised(3));
        assert_eq!(blended(2, 5), [7.0, noised(3)], "inside the schedule of a single stage");
        assert_eq!(blended(4, 5), [7.0, 0.5], "the schedule's last evaluation");
    }

    #[test]
    fn blending_keeps_the_masked_latents_and_replaces_the_rest() {
        let mut latents = ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 2, 1, 2]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let proper = ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 2, 1, 2]), vec![-1.0, -2.0, -3.0, -4.0]).unwrap();
        let mask = Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap();
        blend(&mut latents, proper.view(), &mask);
        assert_eq!(latents.into_raw_vec_and_offset().0, [1.0, -2.0, 3.0, -4.0]);
    }
}
