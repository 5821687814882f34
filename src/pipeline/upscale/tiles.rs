//! The tile grid of one upscaler pass: pure arithmetic, no ONNX Runtime.
//!
//! An image side longer than [`Tiling::tile`] is cut into `n` interiors of equal size rounded up to a multiple of 8
//! (the last may be shorter), the fewest whose windows — the interior plus [`Tiling::overlap`] pixels of context
//! on each side, clipped to the image — fit in `tile`. With an overlap that is a multiple of 8 (the default) every
//! window edge is then one too, on images whose sides are (SDXL's always are): models that fold pixels into
//! channels first (Real-ESRGAN x2plus / x1: `pixel_unshuffle` by 2 or 4) need even or ×4 sizes. Each window runs through the model alone and only its interior's output is kept, so
//! every output pixel comes from exactly one window. A model whose receptive field reaches at most `overlap`
//! input pixels (zero padding at the image border, as convolutions do) gives the untiled result: Real-ESRGAN's
//! `tile_process` and OnnxStack (512 px tiles, 16 px overlap) work the same way.

use crate::error::{Error, Result};

/// Tile size and context of the upscaler's passes (engine option `upscale_tiling`; absent keys keep the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tiling {
    /// The longest window side fed to the model, context included; sides up to this run whole. Default 512.
    pub tile: u32,
    /// Context pixels on each side of a window's interior (where a neighbour exists). Default 16.
    pub overlap: u32,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling { tile: 512, overlap: 16 }
    }
}

impl Tiling {
    /// Checks that a window can hold an interior of at least 8 pixels besides its context.
    pub fn validate(&self) -> Result<()> {
        if u64::from(self.tile) < 2 * u64::from(self.overlap) + 8 {
            return Err(Error::InvalidOption {
                field: "upscale_tiling".into(),
                message: format!(
                    "tile {} is too small for an overlap of {} (it must be at least 2 × overlap + 8)",
                    self.tile, self.overlap
                ),
            });
        }
        Ok(())
    }

    /// The spans along one side of `len` pixels, in order.
    pub fn spans(&self, len: u32) -> Vec<Span> {
        if len <= self.tile {
            return vec![Span { start: 0, end: len, lo: 0, hi: len }];
        }
        let interior = (self.tile - 2 * self.overlap) / 8 * 8;
        let n = len.div_ceil(interior);
        let step = len.div_ceil(n).next_multiple_of(8);
        (0..n)
            .map(|i| i * step)
            .take_while(|&start| start < len)
            .map(|start| {
                let end = (start + step).min(len);
                Span { start, end, lo: start.saturating_sub(self.overlap), hi: (end + self.overlap).min(len) }
            })
            .collect()
    }

    /// How many windows a `width` × `height` image takes.
    pub fn count(&self, width: u32, height: u32) -> u32 {
        (self.spans(width).len() * self.spans(height).len()) as u32
    }
}

/// One interior `[start, end)` and its window `[lo, hi)` along one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First pixel kept.
    pub start: u32,
    /// One past the last pixel kept.
    pub end: u32,
    /// First pixel fed to the model.
    pub lo: u32,
    /// One past the last pixel fed to the model.
    pub hi: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_sides_run_whole() {
        let t = Tiling::default();
        assert_eq!(t.spans(512), [Span { start: 0, end: 512, lo: 0, hi: 512 }]);
        assert_eq!(t.count(512, 64), 1);
    }

    #[test]
    fn interiors_cover_every_pixel_once_and_windows_fit_the_tile() {
        for (tile, overlap) in [(512, 16), (32, 8), (24, 0), (40, 16)] {
            let t = Tiling { tile, overlap };
            t.validate().unwrap();
            for len in [1, 7, tile, tile + 1, 3 * tile - 5, 1000, 1024] {
                let spans = t.spans(len);
                assert_eq!(spans[0].start, 0);
                assert_eq!(spans.last().unwrap().end, len);
                for w in spans.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "{t:?} {len}");
                }
                for s in &spans {
                    assert!(s.start < s.end && s.hi - s.lo <= tile, "{t:?} {len} {s:?}");
                    assert_eq!(s.lo, s.start.saturating_sub(overlap));
                    assert_eq!(s.hi, (s.end + overlap).min(len));
                }
            }
        }
        // 1024 with 512/16: three interiors of 344, 344, 336 rather than 480, 480, 64, all edges on multiples of 8.
        let spans = Tiling::default().spans(1024);
        assert_eq!(spans.iter().map(|s| s.end - s.start).collect::<Vec<_>>(), [344, 344, 336]);
        assert!(spans.iter().all(|s| s.lo % 8 == 0 && s.hi % 8 == 0 && s.start % 8 == 0));
    }

    #[test]
    fn tiles_without_room_for_an_interior_are_refused() {
        assert!(Tiling { tile: 40, overlap: 16 }.validate().is_ok());
        assert!(Tiling { tile: 39, overlap: 16 }.validate().is_err());
    }
}
