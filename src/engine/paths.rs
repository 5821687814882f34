//! Model names → folders, confined to `models_root`: no absolute paths outside it, no `..`, no symlink escapes.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The folder of model `name` under `root`, or an error naming `field`.
pub fn model_folder(root: &Path, name: &str, field: &str) -> Result<PathBuf> {
    let bad = |message: String| Error::field(field, message);
    if name.trim().is_empty() {
        return Err(bad("the model name is empty".into()));
    }
    let candidate = Path::new(name);
    let joined = if candidate.is_absolute() {
        candidate.to_path_buf()
    } else {
        if candidate.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(bad(format!("`{name}` must be a folder name under models_root, without `..`")));
        }
        root.join(candidate)
    };
    let root_real = root.canonicalize().map_err(|e| Error::InvalidOption {
        field: "models_root".into(),
        message: format!("{}: {e}", root.display()),
    })?;
    let real = joined.canonicalize().map_err(|_| Error::ModelNotFound {
        path: joined.clone(),
        message: format!("no model `{name}` under models_root ({})", root.display()),
    })?;
    if !real.starts_with(&root_real) {
        return Err(bad(format!("`{name}` resolves outside models_root ({})", root_real.display())));
    }
    if !real.is_dir() {
        return Err(Error::ModelNotFound { path: real, message: format!("`{name}` is not a model folder") });
    }
    Ok(real)
}
