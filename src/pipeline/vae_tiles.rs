//! diffusers' tiled VAE (`vae.enable_tiling()`), shared by the decode ([`super::decode`]: latent tiles → pixels)
//! and the encode ([`super::encode`]: pixel tiles → the posterior's moments). `AutoencoderKL.tiled_decode` and
//! `_tiled_encode` are one algorithm with the two sides swapped: square input tiles every 3/4 of a tile, each run
//! alone; each output tile's first lines blended linearly with the (already blended) tile above and to the left
//! (`blend_v`, `blend_h`), then its top-left 3/4 of a whole output tile kept and the kept parts joined. The graph's
//! memory is that of one tile; the result differs from an untiled run everywhere (each tile is normalized and
//! attended over alone) and most where tiles meet.

use ndarray::{s, Array3, Array4, Axis};

use super::model_dir::VaeInfo;
use crate::error::{Error, Result};
use crate::runtime::CancelToken;

/// diffusers' `tile_overlap_factor`.
const OVERLAP: f64 = 0.25;

/// One side of the tiled VAE: input tiles of `tile` lines per side, each giving an output tile of `out` lines per
/// side (fewer at the input's bottom and right edges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Input lines per tile side.
    pub tile: usize,
    /// Output lines per side of a whole tile.
    pub out: usize,
}

impl Tiling {
    /// The decode of the VAE `vae`: latent tiles of `tile_latent_min_size` = `sample_size / scale_factor` (128 for
    /// SDXL) → pixel tiles of `tile_sample_min_size` = `sample_size` (1024).
    pub fn decode(vae: &VaeInfo) -> Self {
        let (sample, latent) = Self::sizes(vae);
        Tiling { tile: latent, out: sample }
    }

    /// The encode of the VAE `vae`: pixel tiles of `sample_size` → moment tiles of `sample_size / scale_factor`.
    pub fn encode(vae: &VaeInfo) -> Self {
        let (sample, latent) = Self::sizes(vae);
        Tiling { tile: sample, out: latent }
    }

    /// (`tile_sample_min_size`, `tile_latent_min_size`).
    fn sizes(vae: &VaeInfo) -> (usize, usize) {
        let sample = vae.sample_size.max(1) as usize;
        (sample, (sample / vae.scale_factor.max(1) as usize).max(1))
    }

    /// diffusers tiles only an input larger than one tile in either dimension.
    pub fn applies(&self, height: usize, width: usize) -> bool {
        height > self.tile || width > self.tile
    }

    /// `input` `[1, C, H, W]` through `run` tile by tile (a `[1, C, ≤tile, ≤tile]` slice → `[C', h, w]`), blended
    /// and joined into `[C', H', W']`; `cancel` is checked before each tile.
    pub fn run(
        &self,
        input: &Array4<f32>,
        cancel: &CancelToken,
        mut run: impl FnMut(Array4<f32>) -> Result<Array3<f32>>,
    ) -> Result<Array3<f32>> {
        let stride = ((self.tile as f64 * (1.0 - OVERLAP)) as usize).max(1);
        let blend = (self.out as f64 * OVERLAP) as usize;
        let keep = self.out - blend;
        let (h, w) = (input.shape()[2], input.shape()[3]);
        let mut rows: Vec<Vec<Array3<f32>>> = Vec::new();
        for i in (0..h).step_by(stride) {
            let mut row = Vec::new();
            for j in (0..w).step_by(stride) {
                cancel.check()?;
                let part = input.slice(s![.., .., i..(i + self.tile).min(h), j..(j + self.tile).min(w)]).to_owned();
                row.push(run(part)?);
            }
            rows.push(row);
        }
        for i in 0..rows.len() {
            for j in 0..rows[i].len() {
                let mut t = std::mem::take(&mut rows[i][j]);
                if i > 0 {
                    blend_into(&rows[i - 1][j], &mut t, Axis(1), blend);
                }
                if j > 0 {
                    blend_into(&rows[i][j - 1], &mut t, Axis(2), blend);
                }
                rows[i][j] = t;
            }
        }
        let crop = |t: &Array3<f32>| t.slice(s![.., ..keep.min(t.shape()[1]), ..keep.min(t.shape()[2])]).to_owned();
        let join = |e: ndarray::ShapeError| Error::Internal(format!("joining VAE tiles: {e}"));
        let mut strips = Vec::with_capacity(rows.len());
        for row in &rows {
            let kept: Vec<Array3<f32>> = row.iter().map(crop).collect();
            let views: Vec<_> = kept.iter().map(|t| t.view()).collect();
            strips.push(ndarray::concatenate(Axis(2), &views).map_err(join)?);
        }
        let views: Vec<_> = strips.iter().map(|t| t.view()).collect();
        ndarray::concatenate(Axis(1), &views).map_err(join)
    }
}

/// diffusers' `blend_v` (`axis` 1, rows) / `blend_h` (`axis` 2, columns): the first `extent` lines of `b` (at most
/// as many as either tile has) become `a`'s last lines · (1 − k/extent) + `b`'s · k/extent, in float32 as torch does.
fn blend_into(a: &Array3<f32>, b: &mut Array3<f32>, axis: Axis, extent: usize) {
    let extent = extent.min(a.len_of(axis)).min(b.len_of(axis));
    let base = a.len_of(axis) - extent;
    for k in 0..extent {
        let t = k as f64 / extent as f64;
        let (wa, wb) = ((1.0 - t) as f32, t as f32);
        let from = a.index_axis(axis, base + k);
        let mut to = b.index_axis_mut(axis, k);
        ndarray::Zip::from(&mut to).and(&from).for_each(|y, &x| *y = x * wa + *y * wb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vae(sample_size: u32) -> VaeInfo {
        VaeInfo { scaling_factor: 1.0, scale_factor: 8, latent_channels: Some(4), sample_size, latents_stats: None }
    }

    #[test]
    fn encode_and_decode_swap_diffusers_tile_sizes() {
        assert_eq!(Tiling::decode(&vae(1024)), Tiling { tile: 128, out: 1024 });
        assert_eq!(Tiling::encode(&vae(1024)), Tiling { tile: 1024, out: 128 });
        let t = Tiling::encode(&vae(64));
        assert!(!t.applies(64, 64));
        assert!(t.applies(65, 8) && t.applies(8, 72));
    }

    #[test]
    fn tiles_overlap_blend_and_crop_as_diffusers() {
        // Tiles of 8 every 6 (blend 2, keep 6) over 6 × 14 and 14 × 6: one tile across, three along, at 0, 6
        // and 12 (8, 8 and 2 lines), the k-th giving k everywhere. A tile's first two lines: the (blended) tile
        // before's last two · (1, 1/2) + its own · (0, 1/2); then 6 lines of each kept.
        let want = [1., 1., 1., 1., 1., 1., 1., 1.5, 2., 2., 2., 2., 2., 2.5];
        for (h, w) in [(6, 14), (14, 6)] {
            let mut seen = Vec::new();
            let constant = |t: Array4<f32>| -> Result<Array3<f32>> {
                seen.push((t.shape()[2], t.shape()[3]));
                Ok(Array3::from_elem((1, t.shape()[2], t.shape()[3]), seen.len() as f32))
            };
            let got = Tiling { tile: 8, out: 8 }.run(&Array4::zeros((1, 1, h, w)), &CancelToken::new(), constant);
            let got = got.unwrap();
            assert_eq!(got.shape(), [1, h, w]);
            let line: Vec<f32> =
                if h < w { got.slice(s![0, 3, ..]).to_vec() } else { got.slice(s![0, .., 3]).to_vec() };
            assert_eq!(line, want, "{h} × {w}");
            let cut = if h < w { [(6, 8), (6, 8), (6, 2)] } else { [(8, 6), (8, 6), (2, 6)] };
            assert_eq!(seen, cut);
        }
    }

    #[test]
    fn a_cancelled_run_stops_before_the_next_tile() {
        let cancel = CancelToken::new();
        let mut calls = 0;
        let run = |t: Array4<f32>| -> Result<Array3<f32>> {
            calls += 1;
            cancel.cancel();
            Ok(t.index_axis_move(Axis(0), 0))
        };
        let input = Array4::zeros((1, 1, 16, 16));
        assert!(Tiling { tile: 8, out: 8 }.run(&input, &cancel, run).is_err());
        assert_eq!(calls, 1);
    }
}
