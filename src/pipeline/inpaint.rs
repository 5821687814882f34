//! Inpainting (`data.mask_image` with `data.init_image`) with a standard 4-channel UNet, as diffusers'
//! `StableDiffusionXLInpaintPipeline` does it: the mask is resized to the request's size (Pillow's Lanczos, only
//! when the size differs), made grey (Pillow's `convert("L")`), scaled to [0, 1] and binarized at 0.5 (white =
//! redraw), then shrunk to the latents' size (torch's nearest `interpolate`). After every scheduler step the
//! latents outside the mask are replaced by the init image's latents noised to the next step's level (the clean
//! latents after the last step), so only the masked part is redrawn ([`Blend`]).

use ndarray::{Array2, ArrayD, ArrayViewD, Axis, Zip};

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

/// What the loop blends in after every step: the latent mask, the init image's latents and the noise that
/// started the run, for the images of one batch chunk.
#[derive(Debug, Clone)]
pub struct Blend {
    /// `[h, w]`, 1 where the image is redrawn.
    pub mask: Array2<f32>,
    /// The init image's latents `[n, C, h, w]` (scaled, not noised).
    pub image_latents: ArrayD<f32>,
    /// The noise the run started with `[n, C, h, w]`.
    pub noise: ArrayD<f32>,
}

impl Blend {
    /// diffusers' step after `scheduler.step` at evaluation `index`: `(1 − mask) · proper + mask · latents`, where
    /// `proper` is the image latents noised to evaluation `index + 1`'s level, or as they are after the last
    /// evaluation. Float32 as torch.
    pub fn apply(&self, latents: &mut ArrayD<f32>, scheduler: &dyn Scheduler, index: usize) {
        if index + 1 < scheduler.timesteps().len() {
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
    fn blending_keeps_the_masked_latents_and_replaces_the_rest() {
        let mut latents = ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 2, 1, 2]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let proper = ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 2, 1, 2]), vec![-1.0, -2.0, -3.0, -4.0]).unwrap();
        let mask = Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap();
        blend(&mut latents, proper.view(), &mask);
        assert_eq!(latents.into_raw_vec_and_offset().0, [1.0, -2.0, 3.0, -4.0]);
    }
}
