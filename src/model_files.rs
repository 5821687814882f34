//! Model file names in a request → files under `models_root`, confined to it: the one rule for every file a
//! request names by itself (LoRA files, upscaler models). Model folders have theirs in `engine::paths`.
//!
//! - a plain name or a relative path (`detail`, `styles/ink.safetensors`) → `<models_root>/<folder>/<name>`, with
//!   `.<extension>` appended unless the name already ends with it (any case);
//! - an absolute path → used as is, but only when it lies inside `models_root` (after resolving symlinks).
//!
//! `..` components, files outside `models_root` (symlinks included) and missing files are errors naming the
//! request field.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Where one kind of model file lives: its folder under `models_root`, its extension, and its name in messages.
#[derive(Debug, Clone, Copy)]
pub struct FileKind {
    /// The folder under `models_root` (`loras`).
    pub folder: &'static str,
    /// The extension added to bare names, without the dot (`safetensors`).
    pub extension: &'static str,
    /// What the file is, in messages (`LoRA`).
    pub what: &'static str,
}

impl FileKind {
    /// `name` → its file under `models_root` (see the module docs), or an error naming `field`.
    pub fn resolve(&self, models_root: &Path, name: &str, field: &str) -> Result<PathBuf> {
        let bad = |m: String| Error::field(field, m);
        if name.trim().is_empty() {
            return Err(bad(format!("the {} name is empty", self.what)));
        }
        let candidate = Path::new(name);
        let root_real = models_root.canonicalize().map_err(|e| Error::InvalidOption {
            field: "models_root".into(),
            message: format!("{}: {e}", models_root.display()),
        })?;
        let joined = if candidate.is_absolute() {
            candidate.to_path_buf()
        } else {
            if candidate.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(bad(format!(
                    "`{name}` must be a file name under models_root/{}, without `..`",
                    self.folder
                )));
            }
            let suffix = format!(".{}", self.extension);
            let has_extension = name.to_ascii_lowercase().ends_with(&suffix);
            models_root.join(self.folder).join(if has_extension { name.to_owned() } else { format!("{name}{suffix}") })
        };
        let real = joined
            .canonicalize()
            .map_err(|_| bad(format!("{} file {} does not exist", self.what, joined.display())))?;
        if !real.starts_with(&root_real) {
            return Err(bad(format!("`{name}` resolves outside models_root ({})", root_real.display())));
        }
        if !real.is_file() {
            return Err(bad(format!("{} is not a file", real.display())));
        }
        Ok(real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: FileKind = FileKind { folder: "things", extension: "onnx", what: "thing" };

    fn message(r: Result<PathBuf>) -> String {
        let (field, message) = crate::error::invalid_field(r);
        assert_eq!(field, "f");
        message
    }

    #[test]
    fn names_get_the_extension_unless_they_end_with_it() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("things/sub")).unwrap();
        for file in ["a.onnx", "b.v2.onnx", "C.ONNX", "sub/d.onnx"] {
            std::fs::write(root.path().join("things").join(file), b"x").unwrap();
        }
        let want = |file: &str| root.path().join("things").join(file).canonicalize().unwrap();
        for (name, file) in [
            ("a", "a.onnx"),
            ("a.onnx", "a.onnx"),
            ("b.v2", "b.v2.onnx"),
            ("C.ONNX", "C.ONNX"),
            ("sub/d", "sub/d.onnx"),
        ] {
            assert_eq!(KIND.resolve(root.path(), name, "f").unwrap(), want(file), "{name}");
        }
        let absolute = want("a.onnx");
        assert_eq!(KIND.resolve(root.path(), absolute.to_str().unwrap(), "f").unwrap(), absolute);
    }

    #[test]
    fn escapes_and_missing_files_are_errors_naming_the_field() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("things/dir.onnx")).unwrap();
        std::fs::write(outside.path().join("o.onnx"), b"x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(outside.path().join("o.onnx"), root.path().join("things/link.onnx")).unwrap();
        assert!(message(KIND.resolve(root.path(), "../x", "f")).contains("without `..`"));
        assert!(message(KIND.resolve(root.path(), " ", "f")).contains("the thing name is empty"));
        assert!(message(KIND.resolve(root.path(), "nope", "f")).contains("thing file"));
        assert!(message(KIND.resolve(root.path(), "dir", "f")).contains("is not a file"));
        let abs = outside.path().join("o.onnx");
        assert!(message(KIND.resolve(root.path(), abs.to_str().unwrap(), "f")).contains("outside models_root"));
        #[cfg(unix)]
        assert!(message(KIND.resolve(root.path(), "link", "f")).contains("outside models_root"));
    }
}
