//! Inpainting only the masked area (`data.padding_mask_crop`), as diffusers' `padding_mask_crop` does it (A1111's
//! "inpaint area: only masked"): the init image and the mask are cut to the mask's bounding box grown by a padding
//! and to the processing size's aspect ratio ([`crop_region`]), resized to that size ([`fill`]), inpainted there,
//! and the result is put back into the init image through the mask ([`overlay`]), so the reply keeps the init
//! image's size and, where the mask is black, its pixels. Pillow's integer arithmetic throughout (diffusers'
//! `VaeImageProcessor.get_crop_region`, `_resize_and_fill`, `_resize_and_crop`, `apply_overlay`).

use super::lanczos::{self, Filter::Bicubic};
use super::RgbImage;

/// A rectangle of pixels: columns `x1..x2`, rows `y1..y2` (diffusers' `crops_coords`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRegion {
    /// First column.
    pub x1: u32,
    /// First row.
    pub y1: u32,
    /// One past the last column.
    pub x2: u32,
    /// One past the last row.
    pub y2: u32,
}

impl CropRegion {
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.x2 - self.x1
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.y2 - self.y1
    }
}

/// Pillow's `convert("L")` of one RGB pixel: `(R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16` (the identity on grey).
pub fn luma(p: &[u8]) -> u8 {
    ((u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16) as u8
}

/// The region inpainted for `mask` at a processing size of `width` × `height` with `pad` pixels of context:
/// the bounding box of the mask's non-black pixels, grown by `pad` (within the image), then grown on one axis to
/// the processing size's aspect ratio and shifted back inside the image (diffusers' `get_crop_region`, its Python
/// `int()` and `//` included). `None` when the mask is black everywhere.
pub fn crop_region(mask: &RgbImage, width: u32, height: u32, pad: u32) -> Option<CropRegion> {
    let (w, h) = (mask.width as usize, mask.height as usize);
    let marked = |x: usize, y: usize| luma(&mask.data[(y * w + x) * 3..]) != 0;
    let columns: Vec<usize> = (0..w).filter(|&x| (0..h).any(|y| marked(x, y))).collect();
    let rows: Vec<usize> = (0..h).filter(|&y| (0..w).any(|x| marked(x, y))).collect();
    let (&left, &right, &top, &bottom) = (columns.first()?, columns.last()?, rows.first()?, rows.last()?);
    let (pad, w, h) = (i64::from(pad), w as i64, h as i64);
    let (mut x1, mut y1) = ((left as i64 - pad).max(0), (top as i64 - pad).max(0));
    let (mut x2, mut y2) = ((right as i64 + 1 + pad).min(w), (bottom as i64 + 1 + pad).min(h));
    let processing = f64::from(width) / f64::from(height);
    if (x2 - x1) as f64 / (y2 - y1) as f64 > processing {
        let diff = ((x2 - x1) as f64 / processing - (y2 - y1) as f64) as i64;
        grow(&mut y1, &mut y2, diff, h);
    } else {
        let diff = ((y2 - y1) as f64 * processing - (x2 - x1) as f64) as i64;
        grow(&mut x1, &mut x2, diff, w);
    }
    let u = |v: i64| v as u32;
    Some(CropRegion { x1: u(x1), y1: u(y1), x2: u(x2), y2: u(y2) })
}

/// One axis of `get_crop_region`'s step 3: `lo..hi` grown by `diff` (half before, rounded down), shifted back
/// inside `0..size` and clipped to it.
fn grow(lo: &mut i64, hi: &mut i64, diff: i64, size: i64) {
    *lo -= diff.div_euclid(2);
    *hi += diff - diff.div_euclid(2);
    if *hi >= size {
        let over = *hi - size;
        *hi -= over;
        *lo -= over;
    }
    if *lo < 0 {
        *hi -= *lo;
        *lo = 0;
    }
    if *hi >= size {
        *hi = size;
    }
}

/// The part `region` of `image`.
pub fn crop(image: &RgbImage, region: CropRegion) -> RgbImage {
    let (w, rw) = (image.width as usize, region.width() as usize);
    let mut data = Vec::with_capacity(rw * region.height() as usize * 3);
    for y in region.y1..region.y2 {
        let start = (y as usize * w + region.x1 as usize) * 3;
        data.extend_from_slice(&image.data[start..start + rw * 3]);
    }
    RgbImage { width: region.width(), height: region.height(), seed: image.seed, data }
}

/// `image` made `width` × `height` keeping its aspect ratio: Lanczos to fit inside, centred, the bands left empty
/// filled with the outermost rows or columns resampled over a span of zero with Pillow's default bicubic filter
/// (diffusers' `_resize_and_fill`, whose band resizes name no filter).
pub fn fill(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (ratio, src_ratio) = (f64::from(width) / f64::from(height), aspect(image));
    let src_w = if ratio < src_ratio { width } else { image.width * height / image.height };
    let src_h = if ratio >= src_ratio { height } else { image.height * width / image.width };
    let resized = lanczos::at_size(image, src_w, src_h);
    let mut out = black(width, height, image.seed);
    paste(&mut out, &resized, centred(width, src_w), centred(height, src_h));
    let (rw, rh) = (f64::from(resized.width), f64::from(resized.height));
    if ratio < src_ratio {
        let band = (height / 2).saturating_sub(src_h / 2);
        if band > 0 {
            paste(&mut out, &lanczos::resize_box(&resized, [0.0, 0.0, rw, 0.0], width, band, Bicubic), 0, 0);
            let bottom = lanczos::resize_box(&resized, [0.0, rh, rw, rh], width, band, Bicubic);
            paste(&mut out, &bottom, 0, i64::from(band + src_h));
        }
    } else if ratio > src_ratio {
        let band = (width / 2).saturating_sub(src_w / 2);
        if band > 0 {
            paste(&mut out, &lanczos::resize_box(&resized, [0.0, 0.0, 0.0, rh], band, height, Bicubic), 0, 0);
            let right = lanczos::resize_box(&resized, [rw, 0.0, rw, rh], band, height, Bicubic);
            paste(&mut out, &right, i64::from(band + src_w), 0);
        }
    }
    out
}

/// `generated` put back into `original` (the init image, of the mask's size): resized to cover `region` (Lanczos,
/// centred, the excess cut: diffusers' `_resize_and_crop`) on black, then `original` composited over it with
/// alpha `255 − L(mask)`, so black mask pixels keep `original` exactly and white ones take the generated image
/// (diffusers' `apply_overlay`: Pillow's `paste` through the inverted mask into a transparent premultiplied image,
/// its conversion back to straight alpha, and `alpha_composite`).
pub fn overlay(original: &RgbImage, mask: &RgbImage, generated: &RgbImage, region: CropRegion) -> RgbImage {
    let (rw, rh) = (region.width(), region.height());
    let (ratio, src_ratio) = (f64::from(rw) / f64::from(rh), aspect(generated));
    let src_w = if ratio > src_ratio { rw } else { generated.width * rh / generated.height };
    let src_h = if ratio <= src_ratio { rh } else { generated.height * rw / generated.width };
    let resized = lanczos::at_size(generated, src_w, src_h);
    let mut covered = black(rw, rh, generated.seed);
    paste(&mut covered, &resized, centred(rw, src_w), centred(rh, src_h));
    let mut out = black(original.width, original.height, generated.seed);
    paste(&mut out, &covered, i64::from(region.x1), i64::from(region.y1));
    for ((o, p), m) in out.data.chunks_exact_mut(3).zip(original.data.chunks_exact(3)).zip(mask.data.chunks_exact(3)) {
        let alpha = 255 - u32::from(luma(m));
        for (o, &p) in o.iter_mut().zip(p) {
            *o = composite(*o, straight(div255(u32::from(p) * alpha), alpha), alpha);
        }
    }
    out
}

/// Pillow's `DIV255`: `x / 255` rounded, for `x ≤ 255 · 255`.
fn div255(x: u32) -> u32 {
    let t = x + 128;
    ((t >> 8) + t) >> 8
}

/// Pillow's `RGBa` → `RGBA` of one channel `v` with `alpha`: `255 · v / alpha` truncated and clipped, unless
/// alpha is 0 or 255.
fn straight(v: u32, alpha: u32) -> u32 {
    if alpha == 0 || alpha == 255 {
        v
    } else {
        (255 * v / alpha).min(255)
    }
}

/// Pillow's `alpha_composite` of a source channel `src` with `alpha` over an opaque `dst` (7-bit coefficients).
fn composite(dst: u8, src: u32, alpha: u32) -> u8 {
    if alpha == 0 {
        return dst;
    }
    const PRECISION_BITS: u32 = 7;
    let out_a255 = alpha * 255 + 255 * (255 - alpha);
    let coef1 = alpha * 255 * 255 * (1 << PRECISION_BITS) / out_a255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let t = src * coef1 + u32::from(dst) * coef2 + (0x80 << PRECISION_BITS);
    ((((t >> 8) + t) >> 8) >> PRECISION_BITS) as u8
}

fn aspect(image: &RgbImage) -> f64 {
    f64::from(image.width) / f64::from(image.height)
}

/// Where a `part`-long span starts, centred in `whole` (Python's `whole // 2 - part // 2`; negative: cut).
fn centred(whole: u32, part: u32) -> i64 {
    i64::from(whole / 2) - i64::from(part / 2)
}

fn black(width: u32, height: u32, seed: u64) -> RgbImage {
    RgbImage { width, height, seed, data: vec![0; width as usize * height as usize * 3] }
}

/// Pillow's `paste(src, (x, y))` without a mask: `src` copied onto `dst` at `(x, y)`, clipped to `dst`.
fn paste(dst: &mut RgbImage, src: &RgbImage, x: i64, y: i64) {
    let (dw, dh, sw) = (i64::from(dst.width), i64::from(dst.height), src.width as usize);
    let (x0, x1) = (x.max(0), (x + i64::from(src.width)).min(dw));
    if x0 >= x1 {
        return;
    }
    for dy in y.max(0)..(y + i64::from(src.height)).min(dh) {
        let sy = (dy - y) as usize;
        let from = (sy * sw + (x0 - x) as usize) * 3;
        let to = (dy as usize * dst.width as usize + x0 as usize) * 3;
        let n = (x1 - x0) as usize * 3;
        dst.data[to..to + n].copy_from_slice(&src.data[from..from + n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(width: u32, height: u32, marked: &[(u32, u32)]) -> RgbImage {
        let mut image = black(width, height, 0);
        for &(x, y) in marked {
            let i = ((y * width + x) * 3) as usize;
            image.data[i..i + 3].fill(255);
        }
        image
    }

    #[test]
    fn the_region_is_the_masks_box_grown_to_the_processing_aspect_ratio() {
        // a 2 x 2 box at (10, 10) in 40 x 30, pad 1: 4 x 4, then 8 wide for a 2:1 processing size
        let mask = grey(40, 30, &[(10, 10), (11, 11)]);
        assert_eq!(crop_region(&mask, 128, 64, 1), Some(CropRegion { x1: 7, y1: 9, x2: 15, y2: 13 }));
        // grown past the right edge: shifted back inside
        let mask = grey(40, 30, &[(38, 10), (39, 11)]);
        assert_eq!(crop_region(&mask, 128, 64, 0), Some(CropRegion { x1: 36, y1: 10, x2: 40, y2: 12 }));
        assert_eq!(crop_region(&grey(8, 8, &[]), 64, 64, 4), None, "a black mask has no region");
    }

    #[test]
    fn paste_clips_at_every_edge() {
        let mut dst = black(4, 3, 0);
        let src = RgbImage { width: 3, height: 2, seed: 0, data: (1..=18).collect() };
        paste(&mut dst, &src, -1, 2);
        assert_eq!(&dst.data[24..], &[4, 5, 6, 7, 8, 9, 0, 0, 0, 0, 0, 0]);
        assert!(dst.data[..24].iter().all(|&v| v == 0));
    }

    #[test]
    fn the_overlay_keeps_the_original_under_black_and_takes_the_generated_image_under_white() {
        let original = RgbImage { width: 2, height: 1, seed: 0, data: vec![10, 20, 30, 40, 50, 60] };
        let mask = grey(2, 1, &[(1, 0)]);
        let generated = RgbImage { width: 2, height: 1, seed: 0, data: vec![200; 6] };
        let region = CropRegion { x1: 0, y1: 0, x2: 2, y2: 1 };
        assert_eq!(overlay(&original, &mask, &generated, region).data, [10, 20, 30, 200, 200, 200]);
    }
}
