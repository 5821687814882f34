//! Models a request names by file (upscalers, ControlNets), loaded once per file with the engine's session
//! settings and loaded again only when the file's size or modification time changes. They are small next to an
//! SDXL pipeline and are not counted by the pipeline cache's limits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// A loaded model and the file state it was loaded from.
type Entry<T> = (u64, Option<SystemTime>, Arc<T>);

/// Loaded models of one kind by canonical path.
#[derive(Debug)]
pub struct FileModels<T> {
    /// What the models are, in messages (`upscaler`).
    what: &'static str,
    loaded: Mutex<HashMap<PathBuf, Entry<T>>>,
}

impl<T> FileModels<T> {
    /// An empty cache of `what` models.
    pub fn new(what: &'static str) -> Self {
        FileModels { what, loaded: Mutex::new(HashMap::new()) }
    }

    /// The model at `path` (canonical), loading it with `load` when it is new or its file changed; also the
    /// seconds spent loading (0 on a hit). Loads are serialized: a second request for the same file waits and
    /// shares the result.
    pub fn get_or_load(&self, path: &Path, load: impl FnOnce() -> Result<T>) -> Result<(Arc<T>, f64)> {
        let meta = std::fs::metadata(path).map_err(|e| Error::ModelNotFound {
            path: path.to_path_buf(),
            message: format!("cannot read the {} file: {e}", self.what),
        })?;
        let (len, modified) = (meta.len(), meta.modified().ok());
        let mut loaded = self.loaded.lock();
        if let Some((l, m, model)) = loaded.get(path) {
            if (*l, *m) == (len, modified) {
                return Ok((model.clone(), 0.0));
            }
        }
        let started = Instant::now();
        let model = Arc::new(load()?);
        loaded.insert(path.to_path_buf(), (len, modified, model.clone()));
        Ok((model, started.elapsed().as_secs_f64()))
    }

    /// Drop the loaded models named `name` (the file name with or without its extension, or the folder of a
    /// `<name>/model.onnx`); returns how many. A running request keeps its own reference until it ends.
    pub fn unload(&self, name: &str) -> usize {
        let mut loaded = self.loaded.lock();
        let before = loaded.len();
        let named = |p: &Path| {
            let is = |part: Option<&std::ffi::OsStr>| part.is_some_and(|s| s.to_string_lossy() == name);
            let folder = p.file_name().is_some_and(|f| f == "model.onnx") && is(p.parent().and_then(Path::file_name));
            is(p.file_name()) || is(p.file_stem()) || folder
        };
        loaded.retain(|path, _| !named(path));
        before - loaded.len()
    }

    /// The files of the loaded models, sorted.
    pub fn loaded(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.loaded.lock().keys().cloned().collect();
        paths.sort();
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_load_once_per_file_state_and_unload_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("canny")).unwrap();
        let a = dir.path().join("x4.onnx");
        let b = dir.path().join("canny/model.onnx");
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let cache = FileModels::new("thing");
        let mut loads = 0;
        for _ in 0..2 {
            let (m, _) = cache
                .get_or_load(&a, || {
                    loads += 1;
                    Ok(7)
                })
                .unwrap();
            assert_eq!(*m, 7);
        }
        assert_eq!(loads, 1);
        std::fs::write(&a, b"changed").unwrap();
        cache
            .get_or_load(&a, || {
                loads += 1;
                Ok(8)
            })
            .unwrap();
        assert_eq!(loads, 2);
        cache.get_or_load(&b, || Ok(9)).unwrap();
        assert_eq!(cache.loaded(), [b.clone(), a.clone()]);
        assert_eq!(cache.unload("x4"), 1);
        assert_eq!(cache.unload("canny"), 1);
        assert!(cache.loaded().is_empty());
        let missing = cache.get_or_load(&dir.path().join("no.onnx"), || Ok(0));
        assert!(matches!(missing, Err(Error::ModelNotFound { message, .. }) if message.contains("thing file")));
    }
}
