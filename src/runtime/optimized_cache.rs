//! A per-machine cache of ONNX Runtime-optimized graphs (engine option `optimized_model_cache`).
//!
//! Optimizing a graph at level ALL happens at every session creation and dominates model load time (a bench-size
//! SDXL UNet: 2.2 s; loading the saved optimized graph with optimizations off: 0.7 s, same outputs). The optimized
//! graph is specific to the ONNX Runtime version and the CPU (level ALL picks CPU-specific layouts), so the cache
//! key covers both, plus the model files' names, sizes and modification times. Entries are written to a temporary
//! folder and renamed into place, so concurrent engines never see half an entry; a cached graph ONNX Runtime
//! cannot load is deleted and rebuilt. Never ship these files: they are machine-specific.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The cache folder and what this machine and runtime are.
#[derive(Debug, Clone)]
pub struct OptimizedCache {
    dir: PathBuf,
    machine: u64,
}

impl OptimizedCache {
    /// A cache in `dir` (created if missing) for ONNX Runtime `ort_version` on this CPU.
    pub fn new(dir: &Path, ort_version: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::InvalidOption {
            field: "optimized_model_cache".into(),
            message: format!("cannot create {}: {e}", dir.display()),
        })?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (env!("CARGO_PKG_VERSION"), ort_version, cpu_identity()).hash(&mut h);
        Ok(OptimizedCache { dir: dir.to_path_buf(), machine: h.finish() })
    }

    /// The folder holding the optimized `stage` graph of `model` (it may not exist yet).
    pub fn entry(&self, model: &Path, stage: &str) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.machine, stage, model).hash(&mut h);
        // Every file of the graph's folder: the model and its external data.
        if let Some(folder) = model.parent() {
            let mut files: Vec<_> = std::fs::read_dir(folder).into_iter().flatten().flatten().collect();
            files.sort_by_key(|e| e.file_name());
            for f in files {
                if let Ok(meta) = f.metadata() {
                    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                    (f.file_name(), meta.len(), mtime).hash(&mut h);
                }
            }
        }
        self.dir.join(format!("{stage}-{:016x}", h.finish()))
    }

    /// A fresh temporary folder inside the cache, to write an entry into before renaming it into place.
    pub fn temp_folder(&self) -> Result<PathBuf> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tmp = self.dir.join(format!(".tmp-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(|e| Error::Output { path: tmp.clone(), message: e.to_string() })?;
        Ok(tmp)
    }
}

/// The CPU model and feature flags (`/proc/cpuinfo`, first processor).
fn cpu_identity() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("vendor_id") || l.starts_with("model name") || l.starts_with("flags"))
        .collect::<Vec<_>>()
        .join("\n")
}
