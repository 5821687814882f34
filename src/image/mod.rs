//! Decoded VAE output → RGB8 pixels → PNG/JPEG/WebP bytes (with the generation parameters in them, [`metadata`]) →
//! files written atomically; images read from a request
//! (control images), their Canny edges as OpenCV computes them ([`canny`]) and Pillow's Lanczos resize
//! ([`lanczos`]); the crop and overlay of inpainting only the masked area ([`mask_crop`]); Pillow's Gaussian blur of
//! a mask ([`blur`]).

pub mod blur;
pub mod canny;
pub mod lanczos;
pub mod mask_crop;
pub mod metadata;
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

    /// Encode as `format` (`quality` applies to JPEG), with `text` in it: PNG text chunks in order, or for JPEG and
    /// WebP the first chunk's text as the EXIF `UserComment` ([`metadata`]; EXIF has one comment). The pixels are
    /// encoded the same with or without text.
    ///
    /// Errors: [`Error::Output`] when encoding fails, or when the comment is too long for a JPEG EXIF segment
    /// ([`metadata::MAX_JPEG_EXIF`]; check with [`exif_fits`] first).
    pub fn encode(&self, format: ImageFormat, quality: u8, text: &[metadata::TextChunk<'_>]) -> Result<Vec<u8>> {
        use image::ImageEncoder;
        let mut out = Vec::new();
        let (w, h) = (self.width, self.height);
        let exif = text.first().map(|t| metadata::exif_user_comment(t.text));
        let failed = |e: String| Error::Output {
            path: PathBuf::new(),
            message: format!("{} encoding failed: {e}", format.as_str()),
        };
        let res = match format {
            ImageFormat::Png => return self.encode_png(text).map_err(|e| failed(e.to_string())),
            ImageFormat::Jpeg => {
                let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
                if let Some(exif) = exif {
                    if exif.len() > metadata::MAX_JPEG_EXIF {
                        return Err(failed(format!(
                            "the parameters take {} bytes of EXIF; a JPEG segment holds {}",
                            exif.len(),
                            metadata::MAX_JPEG_EXIF
                        )));
                    }
                    encoder.set_exif_metadata(exif).map_err(|e| failed(e.to_string()))?;
                }
                encoder.write_image(&self.data, w, h, image::ExtendedColorType::Rgb8)
            }
            ImageFormat::Webp => {
                let mut encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
                if let Some(exif) = exif {
                    encoder.set_exif_metadata(exif).map_err(|e| failed(e.to_string()))?;
                }
                encoder.write_image(&self.data, w, h, image::ExtendedColorType::Rgb8)
            }
        };
        res.map_err(|e| failed(e.to_string()))?;
        Ok(out)
    }

    /// PNG through the `png` crate with the settings `image`'s `PngEncoder::new` uses (fast deflate, adaptive
    /// filter), so the image data is the same bytes as before text chunks existed; the text chunks go before it.
    fn encode_png(&self, text: &[metadata::TextChunk<'_>]) -> std::result::Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        encoder.set_filter(png::Filter::Adaptive);
        for chunk in text {
            if metadata::is_latin1(chunk.text) {
                encoder.add_text_chunk(chunk.keyword.to_string(), chunk.text.to_string())?;
            } else {
                encoder.add_itxt_chunk(chunk.keyword.to_string(), chunk.text.to_string())?;
            }
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.data)?;
        writer.finish()?;
        Ok(out)
    }
}

/// Whether `text` fits the metadata `format` carries: a JPEG's EXIF segment is at most 64 KiB (about 32,000
/// characters of comment); PNG and WebP have no practical limit.
pub fn exif_fits(format: ImageFormat, text: &str) -> bool {
    format != ImageFormat::Jpeg || metadata::exif_user_comment(text).len() <= metadata::MAX_JPEG_EXIF
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
