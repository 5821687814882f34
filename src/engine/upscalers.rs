//! The engine's upscaling step (`data.output.upscale`) and its loaded upscaler models.
//!
//! Upscalers are cached by canonical file path, loaded once with the engine's session settings and loaded again
//! only when the file's size or modification time changes. They are small next to an SDXL pipeline (Real-ESRGAN
//! x4plus: 64 MB) and are not counted by the pipeline cache's limits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use super::Engine;
use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::pipeline::upscale::{ReportAs, UpscalePlan, Upscaler, MODEL_FIELD, UPSCALER_FILES};
use crate::pipeline::RunContext;
use crate::protocol::params::UpscaleParams;
use crate::protocol::response::UpscaleInfo;

/// A loaded upscaler and the file state it was loaded from.
type Entry = (u64, Option<SystemTime>, Arc<Upscaler>);

/// Loaded upscalers by canonical path.
#[derive(Debug, Default)]
pub struct UpscalerCache {
    loaded: Mutex<HashMap<PathBuf, Entry>>,
}

impl UpscalerCache {
    /// The upscaler at `path` (canonical), loading it with `load` when it is new or its file changed; also the
    /// seconds spent loading (0 on a hit). Loads are serialized: a second request for the same file waits and
    /// shares the result.
    pub fn get_or_load(&self, path: &Path, load: impl FnOnce() -> Result<Upscaler>) -> Result<(Arc<Upscaler>, f64)> {
        let meta = std::fs::metadata(path).map_err(|e| Error::ModelNotFound {
            path: path.to_path_buf(),
            message: format!("cannot read the upscaler file: {e}"),
        })?;
        let (len, modified) = (meta.len(), meta.modified().ok());
        let mut loaded = self.loaded.lock();
        if let Some((l, m, upscaler)) = loaded.get(path) {
            if (*l, *m) == (len, modified) {
                return Ok((upscaler.clone(), 0.0));
            }
        }
        let started = Instant::now();
        let upscaler = Arc::new(load()?);
        loaded.insert(path.to_path_buf(), (len, modified, upscaler.clone()));
        Ok((upscaler, started.elapsed().as_secs_f64()))
    }

    /// Drop the loaded upscalers named `name` (the file name, with or without `.onnx`); returns how many. A
    /// running request keeps its own reference until it ends.
    pub fn unload(&self, name: &str) -> usize {
        let mut loaded = self.loaded.lock();
        let before = loaded.len();
        let named = |p: &Path| {
            let file = p.file_name().map(|f| f.to_string_lossy()).unwrap_or_default();
            file == name || p.file_stem().is_some_and(|s| s.to_string_lossy() == name)
        };
        loaded.retain(|path, _| !named(path));
        before - loaded.len()
    }

    /// The files of the loaded upscalers, sorted.
    pub fn loaded(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.loaded.lock().keys().cloned().collect();
        paths.sort();
        paths
    }
}

/// An upscaler ready for one request: loaded, and its plan checked against the image size.
#[derive(Debug, Clone)]
pub struct PreparedUpscale {
    upscaler: Arc<Upscaler>,
    /// The request's `data.output.upscale`.
    pub request: UpscaleParams,
    /// How the factor is reached for this request's image size.
    pub plan: UpscalePlan,
    /// Seconds spent loading the upscaler (0 when it was loaded already).
    pub load_seconds: f64,
}

impl PreparedUpscale {
    /// `metadata.upscale` of every image this upscale made.
    pub fn info(&self) -> UpscaleInfo {
        UpscaleInfo {
            model: self.request.model.clone(),
            factor: self.plan.factor,
            model_scale: self.plan.model_scale,
            passes: self.plan.passes,
        }
    }
}

impl Engine {
    /// Resolve, load (or reuse) and check the upscaler `upscale` names for `width` × `height` images, before any
    /// image is generated: a missing or unusable model fails the request at once.
    pub(super) fn prepare_upscale(&self, upscale: &UpscaleParams, width: u32, height: u32) -> Result<PreparedUpscale> {
        let path = UPSCALER_FILES.resolve(self.root()?, &upscale.model, MODEL_FIELD)?;
        let (upscaler, load_seconds) =
            self.upscalers.get_or_load(&path, || Upscaler::load(&self.runtime.env, &path, &self.sessions))?;
        let plan = upscaler.plan(width, height, upscale.factor)?;
        Ok(PreparedUpscale { upscaler, request: upscale.clone(), plan, load_seconds })
    }

    /// Upscale every image of a run with `prepared`, tiled as the engine option `upscale_tiling` says.
    pub(super) fn upscale_images(
        &self,
        prepared: &PreparedUpscale,
        images: Vec<RgbImage>,
        request_id: &str,
        ctx: &mut RunContext<'_>,
    ) -> Result<Vec<RgbImage>> {
        let tiling = self.options.upscale_tiling.unwrap_or_default();
        let batch_size = images.len() as u32;
        let mut out = Vec::with_capacity(images.len());
        for (i, image) in images.into_iter().enumerate() {
            let report = ReportAs { request_id, image_index: i as u32, batch_size };
            out.push(prepared.upscaler.upscale(&image, prepared.request.factor, tiling, ctx, &report)?);
        }
        Ok(out)
    }
}
