//! The Canny edge detector exactly as OpenCV's `cv2.Canny(image, low, high)` computes it on an 8-bit RGB image
//! (the defaults: `apertureSize=3`, `L2gradient=False`), for ControlNet's `preprocessor: "canny"`: diffusers' docs
//! and ONNX Runtime's SDXL demo make a canny ControlNet's control image with `cv2.Canny(np.array(image), 100, 200)`
//! and stack the one channel three times, and [`canny_rgb`] gives those bytes.
//!
//! The steps, as `modules/imgproc/src/canny.cpp` does them, all in integers:
//!
//! 1. **Gradients**: the 3×3 Sobel derivatives `dx` and `dy` of every channel (OpenCV's `Sobel(…, CV_16S, …,
//!    BORDER_REPLICATE)`: the pixels beyond the edge repeat the edge pixel).
//! 2. **Magnitude**: `|dx| + |dy|` (the L1 norm); of the three channels the pixel keeps the one with the largest
//!    magnitude, the first (R, then G, then B) on a tie, with that channel's `dx` and `dy`.
//! 3. **Thresholds**: `floor(low)` and `floor(high)`; a pixel is a candidate when its magnitude is `> floor(low)` and
//!    a strong edge when it is also `> floor(high)`.
//! 4. **Non-maximum suppression**: the gradient direction is binned with the fixed-point tangent of 22.5°
//!    (`TG22 = round(tan(22.5°) · 2¹⁵)`) into horizontal, vertical or one of the diagonals, and a candidate survives
//!    only if it beats its two neighbours across that direction — strictly the one before (left, above) and `>=`
//!    the one after (right, below), strictly both on a diagonal. Neighbours outside the image have magnitude 0.
//! 5. **Hysteresis**: every strong survivor is an edge, and so is every survivor 8-connected to an edge through
//!    survivors. OpenCV avoids pushing a strong pixel whose left neighbour was just pushed or whose upper neighbour
//!    is already an edge; those pixels are reached from their neighbour instead, so the result is the same, and
//!    this module keeps the rule to follow the source step by step.
//!
//! The output is 255 on edges, 0 elsewhere, one byte per pixel ([`canny`]) or the same byte in R, G and B
//! ([`canny_rgb`]). Unlike OpenCV, which swaps `low` and `high` when `low > high`, the request refuses that
//! ([`crate::protocol::controlnet`]); the functions here expect `0 <= low <= high`, finite.
//!
//! Memory is one byte per pixel for the edge map (with a 1-pixel frame) and three rows of gradients, as in OpenCV.

use super::RgbImage;

/// `tan(22.5°)` in the 15-bit fixed point OpenCV's non-maximum suppression uses, rounded to nearest: 13573.
const TG22: i32 = 13573;
/// Bits of fraction in [`TG22`].
const SHIFT: u32 = 15;

/// The state of one pixel in the edge map (OpenCV's `map` values).
const MAYBE: u8 = 0;
/// Not an edge (suppressed, below `low`, or the frame around the image).
const NOT_EDGE: u8 = 1;
/// An edge.
const EDGE: u8 = 2;

/// Canny edges of `image` as OpenCV's `cv2.Canny(image, low, high)` (module docs): an RGB image of the same size
/// whose three channels all hold the edge map, 255 on edges and 0 elsewhere — `np.stack([edges] * 3, axis=2)` as
/// diffusers' docs build a canny control image. The result's `seed` is `image.seed`.
pub fn canny_rgb(image: &RgbImage, low: f64, high: f64) -> RgbImage {
    let edges = canny(image, low, high);
    let data = edges.iter().flat_map(|&v| [v, v, v]).collect();
    RgbImage { width: image.width, height: image.height, seed: image.seed, data }
}

/// Canny edges of `image` as OpenCV's `cv2.Canny(image, low, high)` (module docs): `width * height` bytes, rows
/// top to bottom, 255 on edges and 0 elsewhere. `low` and `high` are finite with `0 <= low <= high`.
pub fn canny(image: &RgbImage, low: f64, high: f64) -> Vec<u8> {
    let (w, h) = (image.width as usize, image.height as usize);
    if w == 0 || h == 0 || image.data.len() != w * h * 3 {
        return vec![0; w * h];
    }
    let (low, high) = (threshold(low), threshold(high));
    let stride = w + 2;
    // The map has a frame of NOT_EDGE one pixel wide, so that the 8 neighbours of any pixel can be looked at.
    let mut map = vec![NOT_EDGE; stride * (h + 2)];
    let mut stack: Vec<usize> = Vec::new();
    let mut rows = Rows::new(image);

    for y in 0..h {
        let (above, row, below) = rows.window(y);
        let mut prev_pushed = false;
        for x in 0..w {
            let at = (y + 1) * stride + x + 1;
            let m = row.mag[x + 1];
            if !(m > low && is_local_maximum(m, x + 1, row.dx[x], row.dy[x], above, &row.mag, below)) {
                prev_pushed = false;
                map[at] = NOT_EDGE;
                continue;
            }
            if !prev_pushed && m > high && map[at - stride] != EDGE {
                map[at] = EDGE;
                stack.push(at);
                prev_pushed = true;
            } else {
                map[at] = MAYBE;
            }
        }
    }

    while let Some(at) = stack.pop() {
        // The frame is NOT_EDGE, so a pixel in the image never reaches outside the map.
        for n in [
            at - 1,
            at + 1,
            at - stride - 1,
            at - stride,
            at - stride + 1,
            at + stride - 1,
            at + stride,
            at + stride + 1,
        ] {
            if map[n] == MAYBE {
                map[n] = EDGE;
                stack.push(n);
            }
        }
    }

    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        let start = (y + 1) * stride + 1;
        out.extend(map[start..start + w].iter().map(|&v| if v == EDGE { 255 } else { 0 }));
    }
    out
}

/// OpenCV's `cvFloor(threshold)` for a threshold the request validated (finite, `>= 0`); values past any
/// magnitude (at most 2040) saturate.
fn threshold(t: f64) -> i32 {
    t.floor().clamp(-1.0, i32::MAX as f64) as i32
}

/// Whether magnitude `m` at column `x` of the padded rows survives non-maximum suppression across the direction
/// of its gradient `(dx, dy)` (module docs, step 4). `above`, `row` and `below` are padded magnitude rows
/// (column `x` is the pixel; the padding columns are 0).
fn is_local_maximum(m: i32, x: usize, dx: i16, dy: i16, above: &[i32], row: &[i32], below: &[i32]) -> bool {
    let (xs, ys) = (i32::from(dx), i32::from(dy));
    let ax = xs.abs();
    let ay = ys.abs() << SHIFT;
    let tg22x = ax * TG22;
    if ay < tg22x {
        // Within 22.5° of horizontal: compare with the left and right neighbours.
        return m > row[x - 1] && m >= row[x + 1];
    }
    let tg67x = tg22x + (ax << (SHIFT + 1));
    if ay > tg67x {
        // Within 22.5° of vertical: compare with the neighbours above and below.
        return m > above[x] && m >= below[x];
    }
    // A diagonal: up-left and down-right when dx and dy have the same sign, else up-right and down-left.
    if (xs ^ ys) < 0 {
        m > above[x + 1] && m > below[x - 1]
    } else {
        m > above[x - 1] && m > below[x + 1]
    }
}

/// One image row's gradients after the channel choice (module docs, steps 1–2).
#[derive(Clone)]
struct Gradients {
    /// `|dx| + |dy|` of the chosen channel, with a 0 column on each side (`w + 2` values).
    mag: Vec<i32>,
    /// `dx` of the chosen channel (`w` values).
    dx: Vec<i16>,
    /// `dy` of the chosen channel (`w` values).
    dy: Vec<i16>,
}

impl Gradients {
    /// A row of zeros: the magnitudes beyond the top and bottom edges.
    fn zeros(w: usize) -> Self {
        Gradients { mag: vec![0; w + 2], dx: vec![0; w], dy: vec![0; w] }
    }
}

/// The three rows of gradients non-maximum suppression looks at, computed as the scan moves down.
struct Rows<'a> {
    image: &'a RgbImage,
    above: Gradients,
    row: Gradients,
    below: Gradients,
}

impl<'a> Rows<'a> {
    fn new(image: &'a RgbImage) -> Self {
        let zeros = Gradients::zeros(image.width as usize);
        let mut rows = Rows { image, above: zeros.clone(), row: zeros.clone(), below: zeros };
        rows.below = gradients(image, 0);
        rows
    }

    /// The padded magnitude rows above and below row `y` and row `y`'s gradients; rows are visited in order.
    fn window(&mut self, y: usize) -> (&[i32], &Gradients, &[i32]) {
        std::mem::swap(&mut self.above, &mut self.row);
        std::mem::swap(&mut self.row, &mut self.below);
        let h = self.image.height as usize;
        self.below = if y + 1 < h { gradients(self.image, y + 1) } else { Gradients::zeros(self.image.width as usize) };
        (&self.above.mag, &self.row, &self.below.mag)
    }
}

/// Row `y`'s Sobel gradients (3×3, edges replicated) in each channel, and per pixel the channel with the largest
/// `|dx| + |dy|` (the first on a tie).
fn gradients(image: &RgbImage, y: usize) -> Gradients {
    let (w, h) = (image.width as usize, image.height as usize);
    let row_at = |r: usize| &image.data[r * w * 3..(r + 1) * w * 3];
    let (up, mid, down) = (row_at(y.saturating_sub(1)), row_at(y), row_at((y + 1).min(h - 1)));
    let mut g = Gradients::zeros(w);
    for x in 0..w {
        let (l, r) = (x.saturating_sub(1), (x + 1).min(w - 1));
        let mut best = (-1, 0, 0);
        for c in 0..3 {
            let p = |row: &[u8], col: usize| i32::from(row[col * 3 + c]);
            let dx = (p(up, r) - p(up, l)) + 2 * (p(mid, r) - p(mid, l)) + (p(down, r) - p(down, l));
            let dy = (p(down, l) + 2 * p(down, x) + p(down, r)) - (p(up, l) + 2 * p(up, x) + p(up, r));
            let mag = dx.abs() + dy.abs();
            if mag > best.0 {
                best = (mag, dx, dy);
            }
        }
        // |dx|, |dy| <= 4 · 255, so both fit in an i16 as OpenCV's CV_16S does.
        g.mag[x + 1] = best.0;
        g.dx[x] = best.1 as i16;
        g.dy[x] = best.2 as i16;
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> RgbImage {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let v = f(x, y);
                data.extend([v, v, v]);
            }
        }
        RgbImage { width: w, height: h, seed: 0, data }
    }

    fn edge_columns(edges: &[u8], w: usize, y: usize) -> Vec<usize> {
        (0..w).filter(|&x| edges[y * w + x] == 255).collect()
    }

    #[test]
    fn a_vertical_step_gives_one_column_of_edges_on_the_steps_left_side() {
        // Columns 0..4 black, 4.. white: |dx| is 1020 at x = 3 and x = 4; the tie goes to the left pixel, which is
        // `>` its left neighbour and `>=` its right one, where the right pixel is not `>` its left one.
        let image = grey(8, 5, |x, _| if x < 4 { 0 } else { 255 });
        let edges = canny(&image, 100.0, 200.0);
        for y in 0..5 {
            assert_eq!(edge_columns(&edges, 8, y), [3], "row {y}");
        }
    }

    #[test]
    fn a_horizontal_step_gives_one_row_of_edges_above_the_step_borders_included() {
        // Rows 2 and 3 tie; row 2 wins (`>` above, `>=` below). The first and last columns are edges too: the
        // replicated border keeps their gradient vertical.
        let image = grey(6, 7, |_, y| if y < 3 { 200 } else { 10 });
        let edges = canny(&image, 100.0, 200.0);
        for y in 0..7 {
            let expected: Vec<usize> = if y == 2 { (0..6).collect() } else { vec![] };
            assert_eq!(edge_columns(&edges, 6, y), expected, "row {y}");
        }
    }

    #[test]
    fn flat_images_and_single_pixels_have_no_edges() {
        for (w, h) in [(1, 1), (1, 9), (9, 1), (5, 4)] {
            let image = grey(w, h, |_, _| 77);
            assert!(canny(&image, 0.0, 0.0).iter().all(|&v| v == 0), "{w}x{h}");
        }
        // The border replicates the edge pixel: a one-pixel-wide image has no horizontal gradient at all.
        let column = grey(1, 6, |_, _| 0);
        assert_eq!(canny(&column, 0.0, 0.0), vec![0; 6]);
    }

    #[test]
    fn weak_pixels_are_edges_only_when_connected_to_a_strong_one() {
        // A vertical step whose contrast drops from 200 to 40 at row 3. With low 100 and high 500 only the top
        // part is strong (|dx| = 800); rows 4..8 (|dx| = 160) are weak, yet kept: they hang from the strong part
        // through the step along row 2 and the diagonal from (4, 3) to (3, 4), 8-connected.
        let image = grey(8, 8, |x, y| {
            if x < 4 {
                0
            } else if y < 3 {
                200
            } else {
                40
            }
        });
        let edges = canny(&image, 100.0, 500.0);
        let rows: Vec<Vec<usize>> = (0..8).map(|y| edge_columns(&edges, 8, y)).collect();
        let want: [&[usize]; 8] = [&[3], &[3], &[4, 5, 6, 7], &[4], &[3], &[3], &[3], &[3]];
        assert_eq!(rows, want.map(<[usize]>::to_vec));
        // ... and the same weak step alone is dropped.
        let weak = grey(8, 8, |x, _| if x < 4 { 0 } else { 40 });
        assert!(canny(&weak, 100.0, 500.0).iter().all(|&v| v == 0));
    }

    #[test]
    fn thresholds_compare_strictly_after_flooring() {
        // |dx| + |dy| = 4 · 50 = 200 on the step: `> 200` fails, `> floor(199.9)` passes.
        let image = grey(6, 3, |x, _| if x < 3 { 0 } else { 50 });
        assert!(canny(&image, 200.0, 200.0).iter().all(|&v| v == 0));
        assert!(canny(&image, 199.9, 199.9).contains(&255));
        assert!(canny(&image, 0.0, 1e12).iter().all(|&v| v == 0));
    }

    #[test]
    fn the_channel_with_the_largest_gradient_decides() {
        // Red steps between x = 2 and 3, blue between y = 2 and 3 with less contrast: the red step is the edge in
        // every row.
        let mut image = grey(7, 7, |_, _| 0);
        for y in 0..7 {
            for x in 0..7 {
                let i = (y * 7 + x) * 3;
                image.data[i] = if x < 3 { 0 } else { 250 };
                image.data[i + 2] = if y < 3 { 0 } else { 100 };
            }
        }
        let edges = canny(&image, 100.0, 200.0);
        for y in 0..7 {
            assert!(edge_columns(&edges, 7, y).contains(&2), "row {y}: {:?}", edge_columns(&edges, 7, y));
        }
        let rgb = canny_rgb(&image, 100.0, 200.0);
        assert_eq!((rgb.width, rgb.height), (7, 7));
        assert!(rgb.data.chunks(3).zip(&edges).all(|(p, &e)| p == [e, e, e]));
    }
}
