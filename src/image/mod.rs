//! Decoded VAE output → RGB8 pixels → PNG/JPEG/WebP bytes → files written atomically; images read from a request
//! (control images), their Canny edges as OpenCV computes them ([`canny`]) and Pillow's Lanczos resize
//! ([`lanczos`]); the crop and overlay of inpainting only the masked area ([`mask_crop`]); Pillow's Gaussian blur of
//! a mask ([`blur`]).

pub mod blur;
pub mod canny;
pub mod lanczos;
pub mod mask_crop;
pub mod source;

use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::ArrayView3;

use crate::error::{Error, Result};
use crate::protocol::params::ImageFormat;

/// An 8-bit RGB image, rows top to bottom, no padding.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The seed that produced it.
    pub seed: u64,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Convert one VAE output `[3, H, W]` (about [-1, 1]) exactly as diffusers does:
    /// `((x / 2 + 0.5).clamp(0, 1) * 255).round()` in float32, rounding half to even like numpy.
    pub fn from_vae_output(chw: ArrayView3<'_, f32>, seed: u64) -> Self {
        let (c, h, w) = chw.dim();
        debug_assert_eq!(c, 3);
        let mut data = Vec::with_capacity(h * w * 3);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    data.push(to_u8(chw[[ch, y, x]]));
                }
            }
        }
        RgbImage { width: w as u32, height: h as u32, seed, data }
    }

    /// Encode as `format` (`quality` applies to JPEG).
    pub fn encode(&self, format: ImageFormat, quality: u8) -> Result<Vec<u8>> {
        use image::ImageEncoder;
        let mut out = Vec::new();
        let (w, h) = (self.width, self.height);
        let res = match format {
            ImageFormat::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(
                &self.data,
                w,
                h,
                image::ExtendedColorType::Rgb8,
            ),
            ImageFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).write_image(
                &self.data,
                w,
                h,
                image::ExtendedColorType::Rgb8,
            ),
            ImageFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(
                &self.data,
                w,
                h,
                image::ExtendedColorType::Rgb8,
            ),
        };
        res.map_err(|e| Error::Output {
            path: PathBuf::new(),
            message: format!("{} encoding failed: {e}", format.as_str()),
        })?;
        Ok(out)
    }
}

/// diffusers: `image / 2 + 0.5`, `clamp(0, 1)`, `* 255`, numpy `round` (half to even), `astype(uint8)`.
fn to_u8(v: f32) -> u8 {
    let x = (v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
    x.round_ties_even() as u8
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, flushed, then moved into place.
/// Without `overwrite` an existing file is never replaced (the final step is a hard link, which fails if the name
/// exists). Missing parent folders are created. No partial file is ever left at `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    let out_err = |message: String| Error::Output { path: path.to_path_buf(), message };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| out_err("save_path has no file name".into()))?;
    if !overwrite && path.exists() {
        return Err(Error::OutputExists(path.to_path_buf()));
    }
    std::fs::create_dir_all(&parent).map_err(|e| out_err(format!("cannot create folder {}: {e}", parent.display())))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}-{:x}",
        file_name.to_string_lossy(),
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(out_err(format!("cannot write: {e}")));
    }
    let placed = if overwrite {
        std::fs::rename(&tmp, path)
    } else {
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        linked
    };
    match placed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::OutputExists(path.to_path_buf())),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(out_err(format!("cannot move into place: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_numpy_half_to_even() {
        // 0.5/255 steps: x such that (x/2+0.5)*255 == 0.5 exactly → rounds to 0 like numpy.
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(5.0), 255);
        assert_eq!(to_u8(-3.0), 0);
        assert_eq!(to_u8(0.0), 128); // 127.5 → 128 (even)
    }

    #[test]
    fn write_atomic_never_clobbers_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.png");
        write_atomic(&p, b"one", false).unwrap();
        let err = write_atomic(&p, b"two", false).unwrap_err();
        assert!(matches!(err, Error::OutputExists(_)));
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write_atomic(&p, b"three", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }
}
