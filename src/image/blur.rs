//! Pillow's Gaussian blur of an 8-bit image, to the byte: the blur diffusers' `VaeImageProcessor.blur` gives an
//! inpainting mask (`data.mask_blur`: `image.filter(ImageFilter.GaussianBlur(radius))`).
//!
//! Pillow 13.0.0 approximates the Gaussian with three passes of an *extended* box filter (a box of whole pixels plus
//! one fractional pixel at each end; Gwosdek et al., "Theoretical foundations of Gaussian convolution by extended
//! box filtering", 2011). This module mirrors, from `src/libImaging/BoxBlur.c`:
//! - `_gaussian_blur_radius`: the box radius for a Gaussian's standard deviation, in `float` with two `double`
//!   steps ([`box_radius`]);
//! - `ImagingHorizontalBoxBlur` / `ImagingLineBoxBlur32`: one pass along a line, with 24-bit fixed-point weights and
//!   the edge pixels repeated outside the image ([`BoxKernel`]);
//! - `ImagingBoxBlur` (called by `ImagingGaussianBlur`): every row three times, then every column three times, each
//!   pass rounded to 8 bits ([`gaussian_blur`]).
//!
//! Channels are blurred independently, so a grey RGB image blurs as its `L` image does.

use super::RgbImage;

/// Box passes per direction: `ImageFilter.GaussianBlur` leaves `Image.gaussian_blur`'s default of 3.
pub const PASSES: u32 = 3;

/// `image` blurred as Pillow's `image.filter(ImageFilter.GaussianBlur(radius))` blurs it: `radius` is the
/// Gaussian's standard deviation in pixels, as the `float` Pillow's C code receives (Python converts its number with
/// `PyArg_ParseTuple("f")`, i.e. rounds a double to the nearest `f32`). `0` returns the image unchanged, as Pillow
/// does; Pillow squares the radius, so a negative one blurs as its absolute value.
pub fn gaussian_blur(image: &RgbImage, radius: f32) -> RgbImage {
    let mut out = image.clone();
    let (width, height) = (image.width as usize, image.height as usize);
    if radius == 0.0 || width == 0 || height == 0 {
        return out;
    }
    let kernel = BoxKernel::new(box_radius(radius, PASSES));
    // Rows first (line l is channel l % 3 of row l / 3), then columns, as ImagingBoxBlur (which transposes).
    blur_lines(&mut out.data, height * 3, width, |l, x| ((l / 3) * width + x) * 3 + l % 3, &kernel);
    blur_lines(&mut out.data, width * 3, height, |l, y| (y * width + l / 3) * 3 + l % 3, &kernel);
    out
}

/// The extended box radius whose `passes` passes approximate a Gaussian of standard deviation `sigma` (Pillow's
/// `_gaussian_blur_radius`, with its `float` / `double` steps): the whole part `l` from the box length
/// `L = √(12σ²/n + 1)` (eq. 7, 11 of the paper) and the fractional part `a` that matches the variance (eq. 14).
pub fn box_radius(sigma: f32, passes: u32) -> f32 {
    let sigma2 = sigma * sigma / passes as f32;
    let length = (12.0 * f64::from(sigma2) + 1.0).sqrt() as f32;
    let l = ((f64::from(length) - 1.0) / 2.0).floor() as f32;
    let a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2) / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// One pass of an extended box filter of radius `r + f` (`r` whole, `0 ≤ f < 1`) in 24-bit fixed point, as
/// `ImagingHorizontalBoxBlur` sets it up: each of the `2r + 1` inner pixels weighs `inner = ⌊2²⁴ / (2(r + f) + 1)⌋`
/// and each of the two outer ones `outer = (2²⁴ − (2r + 1)·inner) / 2`, so the weights sum to 2²⁴ (up to one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxKernel {
    /// `r`: the whole part of the radius.
    radius: usize,
    /// The weight of each inner pixel (Pillow's `ww`).
    inner: u32,
    /// The weight of each of the two outer pixels (Pillow's `fw`).
    outer: u32,
}

impl BoxKernel {
    /// The kernel of box radius `radius` (≥ 0), in `f32` as Pillow computes it.
    pub fn new(radius: f32) -> Self {
        let whole = radius as u32; // C's (int) cast: truncation
        let inner = ((1u32 << 24) as f32 / (radius * 2.0 + 1.0)) as u32;
        let outer = ((1u32 << 24) - (2 * whole + 1) * inner) / 2;
        BoxKernel { radius: whole as usize, inner, outer }
    }

    /// `line` filtered into `out` (same length, ≥ 1): pixels outside the line repeat its first or last one, and
    /// each result is rounded half up from 24-bit fixed point (`ImagingLineBoxBlur32`, one channel).
    fn blur_line(&self, line: &[u8], out: &mut [u8]) {
        let last = line.len() - 1;
        let r = self.radius;
        // Pixel i, or the edge pixel it falls beyond; `i` is offset by r + 1 so that it never goes negative.
        let at = |i: usize| u32::from(line[i.saturating_sub(r + 1).min(last)]);
        // The window sum of pixel -1 (pixels -r-1 ..= r-1): r + 1 copies of the first pixel, the pixels 0 ..= r-1
        // that exist, and copies of the last pixel for those that do not (the radius can pass the line's length).
        let inside = r.min(line.len());
        let mut acc = at(r + 1) * (r as u32 + 1)
            + line[..inside].iter().map(|&v| u32::from(v)).sum::<u32>()
            + at(last + r + 1) * (r - inside) as u32;
        for (x, o) in out.iter_mut().enumerate() {
            // Slide the window to x - r ..= x + r: the pixel leaving is still in `acc`, so this cannot underflow.
            let (leaving, entering) = (at(x), at(x + 2 * r + 1));
            acc = acc + entering - leaving;
            let sum = acc * self.inner + (leaving + at(x + 2 * r + 2)) * self.outer;
            *o = ((sum + (1 << 23)) >> 24) as u8;
        }
    }
}

/// Filters `lines` lines of `len` pixels each ([`PASSES`] passes of `kernel`) in place; pixel `i` of line `l` is the
/// byte `data[index(l, i)]`.
fn blur_lines(data: &mut [u8], lines: usize, len: usize, index: impl Fn(usize, usize) -> usize, kernel: &BoxKernel) {
    let (mut line, mut out) = (vec![0u8; len], vec![0u8; len]);
    for l in 0..lines {
        for (i, v) in line.iter_mut().enumerate() {
            *v = data[index(l, i)];
        }
        for _ in 0..PASSES {
            kernel.blur_line(&line, &mut out);
            std::mem::swap(&mut line, &mut out);
        }
        for (i, v) in line.iter().enumerate() {
            data[index(l, i)] = *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32, pixel: impl Fn(u32, u32, usize) -> u8) -> RgbImage {
        let mut data = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                data.extend((0..3).map(|c| pixel(x, y, c)));
            }
        }
        RgbImage { width, height, seed: 0, data }
    }

    /// Pillow 13.0.0's C code (`_gaussian_blur_radius`, then `ImagingHorizontalBoxBlur`'s `radius`, `ww` and `fw`),
    /// compiled with gcc on x86-64, gives these box radii and weights.
    #[test]
    fn the_box_radius_and_weights_are_pillows() {
        let pillow: [(f32, u32, usize, u32, u32); 6] = [
            (0.5, 0x3d3a_2e8c, 0, 15_379_114, 699_051),
            (1.0, 0x3e80_0001, 0, 11_184_811, 2_796_202),
            (2.0, 0x3fb0_0000, 1, 4_473_924, 1_677_722),
            (4.0, 0x405c_0000, 3, 2_130_440, 932_068),
            (7.3, 0x40d9_0f38, 6, 1_151_789, 901_979),
            (33.0, 0x4201_f83e, 32, 254_258, 125_223),
        ];
        for (sigma, bits, radius, inner, outer) in pillow {
            let r = box_radius(sigma, PASSES);
            assert_eq!(r.to_bits(), bits, "sigma {sigma}: box radius {r}");
            assert_eq!(BoxKernel::new(r), BoxKernel { radius, inner, outer }, "sigma {sigma}");
        }
        assert_eq!(box_radius(0.0, PASSES), 0.0);
        // a box of radius 0 is the identity
        assert_eq!(BoxKernel::new(0.0), BoxKernel { radius: 0, inner: 1 << 24, outer: 0 });
    }

    #[test]
    fn a_flat_image_stays_flat() {
        for radius in [0.5, 1.0, 4.0, 7.3, 40.0] {
            let flat = image(9, 5, |_, _, c| [0, 128, 255][c]);
            assert_eq!(gaussian_blur(&flat, radius), flat, "radius {radius}");
        }
    }

    #[test]
    fn radius_zero_is_the_identity() {
        let noise = image(7, 6, |x, y, c| (x * 37 + y * 101 + c as u32 * 59) as u8);
        assert_eq!(gaussian_blur(&noise, 0.0), noise);
    }

    #[test]
    fn a_symmetric_image_blurs_symmetrically_and_keeps_its_mass_near_the_centre() {
        // a white dot in the middle of a black 15 x 11 image: the result is mirror-symmetric on both axes
        let dot = image(15, 11, |x, y, _| if (x, y) == (7, 5) { 255 } else { 0 });
        let (w, h) = (15usize, 11usize);
        for radius in [0.5, 1.0, 2.0, 3.7] {
            let got = gaussian_blur(&dot, radius);
            let px = |x: usize, y: usize| got.data[(y * w + x) * 3];
            for y in 0..h {
                for x in 0..w {
                    assert_eq!(px(x, y), px(w - 1 - x, y), "radius {radius}: ({x}, {y})");
                    assert_eq!(px(x, y), px(x, h - 1 - y), "radius {radius}: ({x}, {y})");
                    assert!(px(x, y) <= px(7, 5));
                }
            }
            assert!(px(7, 5) < 255 && px(6, 5) > 0, "radius {radius}: the dot spreads");
            assert!(got.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]), "channels stay equal");
        }
    }

    #[test]
    fn a_radius_larger_than_the_image_repeats_the_edges() {
        // with a box far wider than the image every pixel sees mostly the edge pixels, and the result stays flat
        // across a 2-pixel image whose pixels are equal
        let two = image(2, 1, |_, _, _| 200);
        assert_eq!(gaussian_blur(&two, 33.0), two);
        let ramp = image(3, 2, |x, _, _| [0, 100, 200][x as usize]);
        let got = gaussian_blur(&ramp, 33.0);
        let row: Vec<u8> = got.data.chunks(3).take(3).map(|p| p[0]).collect();
        assert!(row[0] <= row[1] && row[1] <= row[2], "{row:?}");
    }
}
