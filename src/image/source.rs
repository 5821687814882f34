//! Images a request carries (ControlNet control images): a file path, a `data:image/…;base64,` URL or bare base64
//! data, decoded to RGB8 as Pillow's `convert("RGB")` does for the usual modes (grey replicated, alpha dropped).

use std::path::Path;

use base64::Engine as _;

use super::RgbImage;
use crate::error::{Error, Result};

/// Largest decoded image accepted, in pixels (8192²): a bigger one is refused before its pixels are allocated.
pub const MAX_SOURCE_PIXELS: u64 = 8192 * 8192;

/// The image `text` names or holds (see the module), or an error naming `field`.
///
/// A `data:` URL is decoded as such; otherwise an existing file at `text` is read; otherwise `text` must be
/// base64 image data. Paths are the host process's own (the request comes from the application that loaded the
/// library, with its rights).
pub fn load(text: &str, field: &str) -> Result<RgbImage> {
    let bad = |m: String| Error::field(field, m);
    let text = text.trim();
    let bytes = if let Some(rest) = text.strip_prefix("data:") {
        let (header, data) = rest.split_once(',').ok_or_else(|| bad("a data: URL without a `,`".into()))?;
        if !header.ends_with(";base64") {
            return Err(bad(format!("data: URL `data:{header},…` is not base64 (needs `;base64`)")));
        }
        decode_base64(data).ok_or_else(|| bad("the data: URL's base64 payload does not decode".into()))?
    } else if Path::new(text).is_file() {
        std::fs::read(text).map_err(|e| bad(format!("cannot read {text}: {e}")))?
    } else {
        decode_base64(text).ok_or_else(|| {
            let shown: String = text.chars().take(60).collect();
            bad(format!("`{shown}` is neither an existing image file nor base64 image data"))
        })?
    };
    decode(&bytes).map_err(bad)
}

/// Base64 in the standard or URL-safe alphabet, padded or not, whitespace (line breaks) ignored.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return None;
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(&compact).ok())
}

/// Encoded PNG / JPEG / WebP bytes → RGB8.
fn decode(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    if reader.format().is_none() {
        return Err("not a PNG, JPEG or WebP image".into());
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_SOURCE_PIXELS * 8);
    let mut decoder = reader.into_decoder().map_err(|e| format!("cannot decode the image: {e}"))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    if u64::from(w) * u64::from(h) > MAX_SOURCE_PIXELS || w == 0 || h == 0 {
        return Err(format!("the image is {w}×{h}; at most {MAX_SOURCE_PIXELS} pixels are accepted"));
    }
    image::ImageDecoder::set_limits(&mut decoder, limits).map_err(|e| format!("cannot decode the image: {e}"))?;
    let decoded = image::DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode the image: {e}"))?;
    let rgb = decoded.to_rgb8();
    Ok(RgbImage { width: rgb.width(), height: rgb.height(), seed: 0, data: rgb.into_raw() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, channels: u8) -> Vec<u8> {
        let raw: Vec<u8> = (0..width * height * u32::from(channels)).map(|i| (i * 7 % 251) as u8).collect();
        let color = match channels {
            1 => image::ExtendedColorType::L8,
            3 => image::ExtendedColorType::Rgb8,
            _ => image::ExtendedColorType::Rgba8,
        };
        let mut out = Vec::new();
        image::ImageEncoder::write_image(image::codecs::png::PngEncoder::new(&mut out), &raw, width, height, color)
            .unwrap();
        out
    }

    fn message(r: Result<RgbImage>) -> String {
        let (field, message) = crate::error::invalid_field(r);
        assert_eq!(field, "f");
        message
    }

    #[test]
    fn files_data_urls_and_bare_base64_give_the_same_pixels() {
        let bytes = png(5, 3, 3);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.png");
        std::fs::write(&file, &bytes).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let from_file = load(file.to_str().unwrap(), "f").unwrap();
        assert_eq!((from_file.width, from_file.height), (5, 3));
        assert_eq!(from_file.data[..6], [0, 7, 14, 21, 28, 35]);
        for text in [format!("data:image/png;base64,{b64}"), b64.clone(), format!("{}\n{}", &b64[..8], &b64[8..])] {
            assert_eq!(load(&text, "f").unwrap(), from_file, "{text}");
        }
    }

    #[test]
    fn grey_is_replicated_and_alpha_dropped() {
        let grey = decode(&png(2, 1, 1)).unwrap();
        assert_eq!(grey.data, [0, 0, 0, 7, 7, 7]);
        let rgba = decode(&png(2, 1, 4)).unwrap();
        assert_eq!(rgba.data, [0, 7, 14, 28, 35, 42]);
    }

    #[test]
    fn bad_sources_are_errors_naming_the_field() {
        assert!(message(load("/no/such/file.png", "f")).contains("neither an existing image file"));
        assert!(message(load("data:image/png,abc", "f")).contains("not base64"));
        assert!(message(load("data:image/png;base64", "f")).contains("without a `,`"));
        assert!(message(load("data:image/png;base64,@@@", "f")).contains("does not decode"));
        let not_image = base64::engine::general_purpose::STANDARD.encode(b"hello world, not an image");
        assert!(message(load(&not_image, "f")).contains("not a PNG"));
        let truncated = base64::engine::general_purpose::STANDARD.encode(&png(8, 8, 3)[..60]);
        assert!(message(load(&truncated, "f")).contains("cannot"));
    }
}
