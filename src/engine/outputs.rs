//! Where images go: `save_path` resolution (confined to `output_root` when the engine has one), numbered names for
//! batches, the no-clobber pre-check, encoding (with the generation parameters, `data.output.embed_parameters`) and
//! base64.

use std::path::{Component, Path, PathBuf};

use base64::Engine as _;

use crate::error::{Error, Result};
use crate::image::metadata::TextChunk;
use crate::image::{exif_fits, write_atomic, RgbImage};
use crate::protocol::infotext::{EmbeddedParameters, PNG_KEY, RECORD_KEY};
use crate::protocol::params::{ImageFormat, OutputParams};

/// The file for image `index` of a batch: `save_path` itself for the first, `<stem>_<index>.<ext>` after.
pub fn batch_path(path: &Path, index: usize) -> PathBuf {
    if index == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}_{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}_{index}"),
    };
    path.with_file_name(name)
}

/// Resolve `save_path` against `output_root`: relative paths go under it; absolute paths must be inside it; `..`
/// and symlinks leading out are refused. Without an `output_root` the path is used as given.
pub fn resolve_save_path(save_path: &Path, output_root: Option<&Path>) -> Result<PathBuf> {
    let field = "data.output.save_path";
    let Some(root) = output_root else { return Ok(save_path.to_path_buf()) };
    if save_path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::field(field, "`..` is not allowed in save_path"));
    }
    let root = root.canonicalize().map_err(|e| Error::InvalidOption {
        field: "output_root".into(),
        message: format!("{}: {e}", root.display()),
    })?;
    let joined = if save_path.is_absolute() { save_path.to_path_buf() } else { root.join(save_path) };
    // The deepest folder that exists decides where symlinks lead.
    let mut existing = joined.parent().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p.to_path_buf(),
            None => break,
        }
    }
    let real = existing.canonicalize().unwrap_or(existing);
    if !real.starts_with(&root) {
        return Err(Error::field(field, format!("{} is outside output_root ({})", joined.display(), root.display())));
    }
    if joined.exists() && joined.canonicalize().is_ok_and(|p| !p.starts_with(&root)) {
        return Err(Error::field(field, format!("{} leads outside output_root", joined.display())));
    }
    Ok(joined)
}

/// Refuse up front when any file of the batch exists and overwriting is off, so no batch is left half-written.
pub fn check_outputs_free(save_path: Option<&Path>, overwrite: bool, count: usize) -> Result<()> {
    if let (Some(path), false) = (save_path, overwrite) {
        for i in 0..count {
            let p = batch_path(path, i);
            if p.exists() {
                return Err(Error::OutputExists(p));
            }
        }
    }
    Ok(())
}

/// Encode image `index` with `parameters` in it (unless `data.output.embed_parameters` is false), write it under
/// `save_path` (if any) and return `(image_path, image_data base64)`.
pub fn emit(
    image: &RgbImage,
    index: usize,
    output: &OutputParams,
    save_path: Option<&Path>,
    parameters: Option<&EmbeddedParameters>,
    warnings: &mut Vec<String>,
) -> Result<(Option<String>, Option<String>)> {
    if save_path.is_none() && !output.return_image_data {
        return Ok((None, None));
    }
    let text = text_chunks(output, parameters, warnings)?;
    let bytes = image.encode(output.format, output.quality, &text)?;
    let mut image_path = None;
    if let Some(path) = save_path {
        let path = batch_path(path, index);
        write_atomic(&path, &bytes, output.overwrite)?;
        image_path = Some(path.to_string_lossy().into_owned());
    }
    let data = output.return_image_data.then(|| base64::engine::general_purpose::STANDARD.encode(&bytes));
    Ok((image_path, data))
}

/// The chunks an image gets: A1111's infotext as `parameters`, then sdxlrt's record (PNG only; JPEG and WebP carry
/// the infotext as their EXIF comment). Parameters too long for a JPEG's EXIF segment are an error naming
/// `data.output.embed_parameters` when the request asked for them, else left out with a warning.
fn text_chunks<'a>(
    output: &OutputParams,
    parameters: Option<&'a EmbeddedParameters>,
    warnings: &mut Vec<String>,
) -> Result<Vec<TextChunk<'a>>> {
    let Some(p) = parameters.filter(|_| output.embeds_parameters()) else { return Ok(Vec::new()) };
    if !exif_fits(output.format, &p.infotext) {
        let why = format!(
            "the generation parameters ({} characters) do not fit a JPEG's 64 KiB EXIF segment; use png or webp",
            p.infotext.chars().count()
        );
        if output.embed_parameters == Some(true) {
            return Err(Error::field("data.output.embed_parameters", why));
        }
        let warning = format!("data.output.embed_parameters: {why}; the image was written without them");
        if !warnings.contains(&warning) {
            warnings.push(warning);
        }
        return Ok(Vec::new());
    }
    let mut chunks = vec![TextChunk { keyword: PNG_KEY, text: &p.infotext }];
    if output.format == ImageFormat::Png && !p.record.is_empty() {
        chunks.push(TextChunk { keyword: RECORD_KEY, text: &p.record });
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_paths_stay_inside_output_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(
            resolve_save_path(Path::new("a/b.png"), Some(r)).unwrap(),
            r.canonicalize().unwrap().join("a/b.png")
        );
        assert!(resolve_save_path(Path::new("../b.png"), Some(r)).is_err());
        assert!(resolve_save_path(Path::new("/etc/passwd"), Some(r)).is_err());
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("link")).unwrap();
        let err = resolve_save_path(Path::new("link/x.png"), Some(r)).unwrap_err();
        assert!(err.to_string().contains("outside output_root"), "{err}");
        let inside = r.canonicalize().unwrap().join("ok.png");
        assert_eq!(resolve_save_path(&inside, Some(r)).unwrap(), inside);
        assert_eq!(resolve_save_path(Path::new("/tmp/x.png"), None).unwrap(), Path::new("/tmp/x.png"));
    }

    #[test]
    fn batch_images_get_numbered_names() {
        assert_eq!(batch_path(Path::new("o/img.png"), 0), Path::new("o/img.png"));
        assert_eq!(batch_path(Path::new("o/img.png"), 2), Path::new("o/img_2.png"));
        assert_eq!(batch_path(Path::new("img"), 1), Path::new("img_1"));
    }
}
