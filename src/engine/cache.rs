//! Loaded pipelines (the seed's ModelManager): at most `max_cached_models`, least-recently-used evicted first, and
//! evicted early, before another model loads, while system memory use plus what that model's graph files need would
//! pass `memory_threshold` (so a second full-size model, or a LoRA variant of one, does not load beside the first
//! into memory the machine does not have). A pipeline in use by
//! a running request is never evicted under it (running requests hold their own reference; eviction skips them).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::memory;
use crate::error::Result;
use crate::pipeline::SdxlPipeline;

/// What identifies one loaded pipeline: the model folder plus anything that changes its weights (LoRA set).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    /// The model folder (canonical path).
    pub folder: PathBuf,
    /// The model name as requested.
    pub name: String,
    /// A signature of weight changes (empty for the plain model).
    pub variant: String,
}

#[derive(Debug)]
struct Entry {
    key: PipelineKey,
    pipeline: Arc<SdxlPipeline>,
    last_used: Instant,
    load_seconds: f64,
}

/// One row of `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedModel {
    /// Model name.
    pub name: String,
    /// Model folder.
    pub path: String,
    /// Weight-change signature (LoRA set), empty for the plain model.
    pub variant: String,
    /// Whether a running request uses it.
    pub in_use: bool,
    /// Seconds since a request last used it.
    pub idle_seconds: f64,
    /// Seconds it took to load.
    pub load_seconds: f64,
    /// Attention cores of the UNet and VAE fused into `MultiHeadAttention` at load (engine option
    /// `fuse_attention`); null when its graphs came from the optimized-graph cache.
    pub fused_attention: Option<usize>,
    /// Upsample convolutions of the UNet and VAE made sub-pixel at load (engine option `subpixel_upsample`);
    /// null when its graphs came from the optimized-graph cache.
    pub subpixel_upsamples: Option<usize>,
    /// Whether its VAE encoder is loaded (on the first image-to-image or inpainting request; kept with the model).
    pub vae_encoder: bool,
}

/// The cache.
#[derive(Debug)]
pub struct PipelineCache {
    entries: Mutex<Vec<Entry>>,
    load_lock: Mutex<()>,
    max_models: usize,
    memory_threshold: f64,
}

/// How a `get_or_load` went.
#[derive(Debug, Clone, Default)]
pub struct CacheOutcome {
    /// Seconds spent loading (0 on a hit).
    pub load_seconds: f64,
    /// Models evicted to make room.
    pub evicted: Vec<String>,
}

impl PipelineCache {
    /// A cache holding at most `max_models` pipelines, evicting early above `memory_threshold` (0..1) system
    /// memory use.
    pub fn new(max_models: usize, memory_threshold: f64) -> Self {
        PipelineCache {
            entries: Mutex::new(Vec::new()),
            load_lock: Mutex::new(()),
            max_models: max_models.max(1),
            memory_threshold,
        }
    }

    fn hit(&self, key: &PipelineKey) -> Option<Arc<SdxlPipeline>> {
        let mut entries = self.entries.lock();
        let e = entries.iter_mut().find(|e| &e.key == key)?;
        e.last_used = Instant::now();
        Some(e.pipeline.clone())
    }

    /// The pipeline for `key`, loading it with `load` (once, even under concurrent requests) on a miss. `needs`
    /// gives, on a miss, a lower bound of the system memory the load takes (bytes; 0 where it does not take host
    /// memory): idle pipelines are evicted first while the memory in use plus that would pass the threshold.
    pub fn get_or_load(
        &self,
        key: &PipelineKey,
        needs: impl FnOnce() -> u64,
        load: impl FnOnce() -> Result<SdxlPipeline>,
    ) -> Result<(Arc<SdxlPipeline>, CacheOutcome)> {
        if let Some(p) = self.hit(key) {
            return Ok((p, CacheOutcome::default()));
        }
        let _loading = self.load_lock.lock();
        if let Some(p) = self.hit(key) {
            return Ok((p, CacheOutcome::default()));
        }
        let mut outcome = CacheOutcome { evicted: self.make_room(needs(), true), ..Default::default() };
        let started = Instant::now();
        let pipeline = Arc::new(load()?);
        outcome.load_seconds = started.elapsed().as_secs_f64();
        self.entries.lock().push(Entry {
            key: key.clone(),
            pipeline: pipeline.clone(),
            last_used: Instant::now(),
            load_seconds: outcome.load_seconds,
        });
        Ok((pipeline, outcome))
    }

    /// Evict least-recently-used idle pipelines while memory use plus `needs` bytes is above the threshold, before
    /// a loaded pipeline loads another graph of its own (the VAE encoder on its first image-to-image request). The
    /// pipeline that loads is in use, so it stays. Returns the evicted models' names.
    pub fn make_memory_room(&self, needs: u64) -> Vec<String> {
        self.make_room(needs, false)
    }

    /// Evict least-recently-used idle pipelines while memory use plus `needs` bytes is above the threshold or, for
    /// a `new_entry`, while the cache is full.
    fn make_room(&self, needs: u64, new_entry: bool) -> Vec<String> {
        let mut evicted = Vec::new();
        loop {
            let mut entries = self.entries.lock();
            let full = new_entry && entries.len() >= self.max_models;
            let pressed = memory::system_memory()
                .is_some_and(|(total, available)| over_threshold(total, available, needs, self.memory_threshold));
            if !(full || pressed) {
                break;
            }
            let victim = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| Arc::strong_count(&e.pipeline) == 1)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            match victim {
                Some(i) => {
                    let e = entries.remove(i);
                    drop(entries);
                    evicted.push(e.key.name.clone());
                    drop(e);
                }
                None => break,
            }
        }
        evicted
    }

    /// Drop every cached pipeline of model `name` (all LoRA variants). Running requests finish on their own
    /// reference; the sessions are released when the last one ends. Returns how many were dropped.
    pub fn unload(&self, name: &str) -> usize {
        let removed: Vec<Entry> = {
            let mut entries = self.entries.lock();
            let (gone, kept) = std::mem::take(&mut *entries).into_iter().partition(|e| e.key.name == name);
            *entries = kept;
            gone
        };
        removed.len()
    }

    /// A loaded pipeline of the model folder `folder` (the plain model first, else any LoRA variant): a new LoRA
    /// variant shares the sessions of the graphs its LoRAs leave unchanged.
    pub fn find_folder(&self, folder: &std::path::Path) -> Option<Arc<SdxlPipeline>> {
        let entries = self.entries.lock();
        entries
            .iter()
            .filter(|e| e.key.folder == folder)
            .min_by_key(|e| !e.key.variant.is_empty())
            .map(|e| e.pipeline.clone())
    }

    /// What is loaded, most recently used first.
    pub fn loaded(&self) -> Vec<LoadedModel> {
        let entries = self.entries.lock();
        let mut rows: Vec<_> = entries
            .iter()
            .map(|e| LoadedModel {
                name: e.key.name.clone(),
                path: e.key.folder.to_string_lossy().into_owned(),
                variant: e.key.variant.clone(),
                in_use: Arc::strong_count(&e.pipeline) > 1,
                idle_seconds: e.last_used.elapsed().as_secs_f64(),
                load_seconds: e.load_seconds,
                fused_attention: e.pipeline.rewrites().map(|r| r.attention),
                subpixel_upsamples: e.pipeline.rewrites().map(|r| r.upsamples),
                vae_encoder: e.pipeline.vae_encoder_loaded(),
            })
            .collect();
        rows.sort_by(|a, b| a.idle_seconds.total_cmp(&b.idle_seconds));
        rows
    }
}

/// The reply's warning for a model the cache evicted to make room.
pub fn eviction_warning(model: &str) -> String {
    format!("unloaded model {model} to make room")
}

/// Whether taking `needs` more bytes would bring system memory use (of `total`, `available` free) above
/// `threshold` (a fraction).
fn over_threshold(total: u64, available: u64, needs: u64, threshold: f64) -> bool {
    total > 0 && 1.0 - available.saturating_sub(needs) as f64 / total as f64 > threshold
}

#[cfg(test)]
mod tests {
    use super::over_threshold;

    const GB: u64 = 1 << 30;

    #[test]
    fn a_model_that_would_pass_the_threshold_makes_room_first() {
        // 24 GB machine, 12 GB in use: a 6.9 GB model fits under 0.8, a second full-size fp16 UNet does not.
        assert!(!over_threshold(24 * GB, 12 * GB, 0, 0.8));
        assert!(!over_threshold(24 * GB, 12 * GB, 7 * GB, 0.8));
        assert!(over_threshold(24 * GB, 12 * GB, 8 * GB, 0.8));
        assert!(over_threshold(24 * GB, 2 * GB, 0, 0.8), "already above");
        assert!(over_threshold(24 * GB, 2 * GB, 40 * GB, 0.8), "more than is free");
        assert!(!over_threshold(0, 0, GB, 0.8), "no reading: no eviction");
    }
}
