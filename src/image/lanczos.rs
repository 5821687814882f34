//! Lanczos-3 resize of RGB8 images exactly as Pillow's `Image.resize(size, Image.LANCZOS)` does it, since A1111
//! finishes its upscales with that call (and Pillow's default bicubic filter, for [`resize_box`]'s callers that
//! mirror a `resize` without a filter): Pillow's `src/libImaging/Resample.c` (13.0.0, as pinned in
//! `onnx/requirements.txt`; (`precompute_coeffs`,
//! `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc` / `Vertical_8bpc`).
//!
//! Per axis, each output pixel `i` centred at `(i + 0.5) · scale` in the input takes the inputs within
//! `3 · max(scale, 1)` of it, weighted by `sinc(x) · sinc(x / 3)` at `x = (j - center + 0.5) / max(scale, 1)` and
//! normalized to sum 1; the weights become fixed point with 22 fraction bits. The horizontal pass runs first and
//! is clipped to 8 bits, then the vertical pass reads that 8-bit image: the clipping in between is why a float
//! Lanczos differs from Pillow by up to 4/255 near black and white edges.

use crate::image::RgbImage;

/// Pillow's `PRECISION_BITS` for 8-bit images: `32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;
/// Pillow's Lanczos support (`LANCZOS` filter: `{lanczos_filter, 3.0}`).
const SUPPORT: f64 = 3.0;

/// A Pillow resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.LANCZOS`: `sinc(x) · sinc(x / 3)`, support 3.
    Lanczos,
    /// `Image.BICUBIC` (what `resize` uses when no filter is named): the cubic convolution with `a = −0.5`,
    /// support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Lanczos => SUPPORT,
            Filter::Bicubic => 2.0,
        }
    }

    /// Pillow's `lanczos_filter` / `bicubic_filter`.
    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Lanczos => lanczos(x),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// `image` at `width` × `height`: itself when it has that size (Pillow's `resize` returns a copy then), else
/// [`resize`]d. How diffusers' image processors size control images, init images and masks.
pub fn at_size(image: &RgbImage, width: u32, height: u32) -> std::borrow::Cow<'_, RgbImage> {
    if (image.width, image.height) == (width, height) {
        std::borrow::Cow::Borrowed(image)
    } else {
        std::borrow::Cow::Owned(resize(image, width, height))
    }
}

/// `image` resized to `width` × `height` as Pillow's LANCZOS resize does (an axis whose size does not change
/// is not resampled, as in Pillow).
pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let whole = [0.0, 0.0, f64::from(image.width), f64::from(image.height)];
    resize_box(image, whole, width, height, Filter::Lanczos)
}

/// The part `[x0, y0, x1, y1]` of `image` (pixel edges; an empty span is allowed, as in Pillow) resized to `width`
/// × `height` as Pillow's `resize((width, height), filter, box=…)` does: each axis is resampled unless its output
/// size equals the input's and the box spans all of it (Pillow's `need_horizontal` / `need_vertical`).
pub fn resize_box(image: &RgbImage, [x0, y0, x1, y1]: [f64; 4], width: u32, height: u32, filter: Filter) -> RgbImage {
    let (w, h) = (image.width as usize, image.height as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let mut data = image.data.clone();
    let mut cols = w;
    if out_w != w || x0 != 0.0 || x1 != w as f64 {
        let taps = coefficients(w, (x0, x1), out_w, filter);
        // output (y, x) reads input row y, columns first.. of x's taps
        data = pass(&data, h, out_w, |y, x| (&taps[x], y * w, 1));
        cols = out_w;
    }
    if out_h != h || y0 != 0.0 || y1 != h as f64 {
        let taps = coefficients(h, (y0, y1), out_h, filter);
        // output (y, x) reads input column x, rows first.. of y's taps
        data = pass(&data, out_h, cols, |y, x| (&taps[y], x, cols));
    }
    RgbImage { width, height, seed: image.seed, data }
}

/// One output pixel's taps: the first input index and its fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the span `in0..in1` of `in_size` inputs → `out_size`.
fn coefficients(in_size: usize, (in0, in1): (f64, f64), out_size: usize, filter: Filter) -> Vec<Taps> {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|i| {
            let center = in0 + (i as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (lo..hi).map(|j| filter.weight((j as f64 - center + 0.5) / filterscale)).collect();
            let sum: f64 = raw.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let weights = raw
                .iter()
                .map(|&k| {
                    let k = if sum != 0.0 { k / sum } else { k };
                    if k < 0.0 {
                        (-0.5 + k * one) as i32
                    } else {
                        (0.5 + k * one) as i32
                    }
                })
                .collect();
            Taps { first: lo, weights }
        })
        .collect()
}

/// Pillow's `lanczos_filter`: `sinc(x) · sinc(x / 3)` on [-3, 3), 0 elsewhere.
fn lanczos(x: f64) -> f64 {
    if (-SUPPORT..SUPPORT).contains(&x) {
        sinc(x) * sinc(x / SUPPORT)
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Pillow's `clip8`: the rounded fixed-point sum as a byte.
fn clip8(acc: i64) -> u8 {
    if acc >= 1i64 << (PRECISION_BITS + 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// One resampling pass into a `rows` × `cols` RGB8 image: `taps(y, x)` gives output `(y, x)`'s taps, the input
/// pixel index of tap position 0 and the pixel stride between tap positions.
fn pass<'t>(src: &[u8], rows: usize, cols: usize, taps: impl Fn(usize, usize) -> (&'t Taps, usize, usize)) -> Vec<u8> {
    let mut out = vec![0u8; rows * cols * 3];
    for y in 0..rows {
        for x in 0..cols {
            let (t, base, stride) = taps(y, x);
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (k, &weight) in t.weights.iter().enumerate() {
                let p = (base + (t.first + k) * stride) * 3;
                for (c, a) in acc.iter_mut().enumerate() {
                    *a += i64::from(src[p + c]) * i64::from(weight);
                }
            }
            for (c, a) in acc.iter().enumerate() {
                out[(y * cols + x) * 3 + c] = clip8(*a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (from, to) in [(160, 120), (24, 72), (7, 5), (5, 7)] {
            for t in coefficients(from, (0.0, from as f64), to, Filter::Lanczos) {
                let sum: i64 = t.weights.iter().map(|&w| i64::from(w)).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i64, "{from}->{to}: {sum}");
            }
        }
    }

    #[test]
    fn flat_images_stay_flat_and_sizes_are_exact() {
        let flat = RgbImage { width: 6, height: 4, seed: 3, data: vec![200; 6 * 4 * 3] };
        for (w, h) in [(9, 6), (3, 2), (6, 8), (12, 4)] {
            let r = resize(&flat, w, h);
            assert_eq!((r.width, r.height, r.seed, r.data.len()), (w, h, 3, (w * h * 3) as usize));
            assert!(r.data.iter().all(|&v| v == 200), "{w}x{h}");
        }
    }
}
