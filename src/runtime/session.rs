//! `ModelSession`: one ONNX graph, its declared inputs and outputs, and a mutex around the `ort` session
//! (`run` needs `&mut` in ort rc.15; concurrent requests take turns per graph).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{DynValue, Tensor, ValueType};
use parking_lot::Mutex;

use super::cancel::CancelToken;
use super::cuda::CudaOptions;
use super::denormals::FlushDenormals;
use super::host_allocator;
use super::onnx_proto::{self, edit::Edit, OnnxModel};
use super::optimized_cache::OptimizedCache;
use super::overrides::{Parts, WeightOverrides};
use super::tensor::{to_f32, Elem};
use super::{controlnet_inputs, fuse_attention, subpixel_upsample};
use crate::error::{Error, Result};

/// Where graphs run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on this device id, registered with `error_on_failure` (ort would otherwise
    /// fall back to CPU silently).
    Cuda(i32),
}

impl Device {
    /// Parse the engine option: `cpu`, `cuda`, `cuda:N`.
    pub fn parse(text: &str) -> Option<Device> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(0)),
            other => other.strip_prefix("cuda:")?.parse().ok().filter(|n| *n >= 0).map(Device::Cuda),
        }
    }

    /// The execution provider's ONNX Runtime name.
    pub fn execution_provider(self) -> &'static str {
        match self {
            Device::Cpu => "CPUExecutionProvider",
            Device::Cuda(_) => "CUDAExecutionProvider",
        }
    }

    /// A short device name for status and metrics: `CPU`, `CUDA:0`.
    pub fn name(self) -> String {
        match self {
            Device::Cpu => "CPU".into(),
            Device::Cuda(n) => format!("CUDA:{n}"),
        }
    }
}

/// Which graphs use ONNX Runtime's CPU memory arena (engine option `cpu_memory_arena`).
///
/// The arena keeps freed blocks for reuse within a call, so the VAE decoder's large activations are faulted in
/// once per decode instead of once per node (bench model at 512²: decode 13.4–13.8 s with it, 15.7–16.5 s
/// without). After a one-shot call (text encoders, VAE) and after the last denoising step the arena's free memory
/// goes back to the system, so it costs peak RSS only during the decode (+0.3 GB there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ArenaPolicy {
    /// Every graph (default, and ONNX Runtime's).
    #[default]
    All,
    /// The UNet only: the other graphs allocate from the system, large blocks as transparent huge pages
    /// ([`super::host_allocator`]) — the lowest peak, a slower decode.
    UnetOnly,
    /// No graph.
    None,
}

impl ArenaPolicy {
    /// Parse the engine option: `unet_only`, `all`, `none`.
    pub fn parse(text: &str) -> Option<ArenaPolicy> {
        match text {
            "unet_only" => Some(ArenaPolicy::UnetOnly),
            "all" => Some(ArenaPolicy::All),
            "none" => Some(ArenaPolicy::None),
            _ => None,
        }
    }

    fn uses_arena(self, stage: &str) -> bool {
        match self {
            ArenaPolicy::UnetOnly => stage == "unet",
            ArenaPolicy::All => true,
            ArenaPolicy::None => false,
        }
    }
}

/// Session settings shared by every graph of an engine.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Threads inside one operator; `None` lets ONNX Runtime pick (one per physical core).
    pub intra_op_threads: Option<usize>,
    /// The execution provider.
    pub device: Device,
    /// Which graphs use the CPU memory arena (CPU device only).
    pub cpu_arena: ArenaPolicy,
    /// Where optimized graphs are cached (CPU device, graphs loaded from files); `None` optimizes at every load.
    pub optimized_cache: Option<OptimizedCache>,
    /// CUDA execution provider settings (CUDA device only).
    pub cuda: CudaOptions,
    /// Rewrite the attention cores of the UNet and VAE graphs into `MultiHeadAttention` when loading them
    /// ([`super::fuse_attention`]). Default true.
    pub fuse_attention: bool,
    /// Rewrite each nearest 2× upsample + 3×3 convolution of the UNet and VAE graphs into four 2×2 convolutions
    /// when loading them ([`super::subpixel_upsample`]): `None` (default) on the CPU only, `Some(true)` on every
    /// device, `Some(false)` never.
    pub subpixel_upsample: Option<bool>,
    /// Give the UNet graph ControlNet residual inputs when loading it ([`super::controlnet_inputs`]). Off for an
    /// engine's settings; a pipeline that runs ControlNets loads its UNet with a copy of them that sets it.
    pub controlnet_inputs: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            intra_op_threads: None,
            device: Device::Cpu,
            cpu_arena: ArenaPolicy::default(),
            optimized_cache: None,
            cuda: CudaOptions::default(),
            fuse_attention: true,
            subpixel_upsample: None,
            controlnet_inputs: false,
        }
    }
}

impl SessionConfig {
    /// True when `stage`'s graph goes through attention fusion. Not the text encoders: CLIP's attention is masked
    /// (causal), not the pattern fused, so reading them would find nothing.
    fn fuses(&self, stage: &str) -> bool {
        self.fuse_attention && !stage.starts_with("text_encoder")
    }

    /// True when `stage`'s graph goes through the sub-pixel upsample rewrite: the UNet's and VAE's (the text
    /// encoders have no convolutions); by default on the CPU only (on CUDA, cuDNN's own 3×3 algorithms are not yet
    /// measured against it).
    fn upsamples(&self, stage: &str) -> bool {
        self.subpixel_upsample.unwrap_or(self.device == Device::Cpu) && !stage.starts_with("text_encoder")
    }

    /// True when `stage`'s graph gets ControlNet residual inputs: the UNet's, when [`Self::controlnet_inputs`].
    fn adds_residual_inputs(&self, stage: &str) -> bool {
        self.controlnet_inputs && stage == "unet"
    }

    /// True when `model`, the `stage` graph, gets its attention fused: [`Self::fuses`] the stage and, on the CPU,
    /// the graph is float32. ONNX Runtime's CPU `MultiHeadAttention` runs float16 as float16, slower than the
    /// op-by-op graph whose MatMuls it casts to float32 (full-size SDXL fp16 on this CPU, 256², 2 steps: denoise
    /// 11.3 vs 10.5 s and +1.1 GiB peak fused).
    fn fuses_model(&self, stage: &str, model: &OnnxModel) -> bool {
        self.fuses(stage) && (self.device != Device::Cpu || model.weight_float_type() == Some(onnx_proto::DT_FLOAT))
    }

    /// Adds to `edit` the load-time rewrites of `model`, the `stage` graph, under these settings; initializers in
    /// `keep` (replaced by the caller) keep the nodes reading them as exported.
    fn plan_rewrites(
        &self,
        stage: &str,
        model: &OnnxModel,
        edit: &mut Edit,
        keep: &HashSet<usize>,
    ) -> Result<Rewrites> {
        let attention = if self.fuses_model(stage, model) { fuse_attention::plan(model, edit) } else { 0 };
        let upsamples = if self.upsamples(stage) { subpixel_upsample::plan(model, edit, keep)? } else { 0 };
        let mut residual_inputs = 0;
        if self.adds_residual_inputs(stage) {
            let float = model.weight_float_type().unwrap_or(onnx_proto::DT_FLOAT);
            residual_inputs = controlnet_inputs::plan(model, edit, float);
            if residual_inputs == 0 {
                return Err(Error::model_invalid(
                    model.path(),
                    "ControlNet needs the UNet's skip connections, and this graph has none named as torch.onnx \
                     exports them (`/up_blocks.<b>/Concat…`): export the UNet without ONNX Runtime's graph \
                     optimizer (e.g. onnx/export_onnx.py)",
                ));
            }
        }
        Ok(Rewrites { attention, upsamples, residual_inputs })
    }

    /// The optimized-graph cache's name for `stage` under these settings (a rewritten graph is another graph).
    fn cache_stage(&self, stage: &str) -> String {
        let mut name = stage.to_string();
        if self.fuses(stage) {
            name.push_str("+mha");
        }
        if self.upsamples(stage) {
            name.push_str("+subpixel");
        }
        if self.adds_residual_inputs(stage) {
            name.push_str("+controlnet");
        }
        name
    }
}

/// What was rewritten in a graph when it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrites {
    /// Attention cores fused into `MultiHeadAttention` ([`super::fuse_attention`]).
    pub attention: usize,
    /// Upsample convolutions made sub-pixel ([`super::subpixel_upsample`]).
    pub upsamples: usize,
    /// Skip connections given a ControlNet residual input ([`super::controlnet_inputs`]).
    pub residual_inputs: usize,
}

impl Rewrites {
    fn any(self) -> bool {
        self.attention + self.upsamples + self.residual_inputs > 0
    }
}

impl std::ops::Add for Rewrites {
    type Output = Rewrites;
    fn add(self, other: Rewrites) -> Rewrites {
        Rewrites {
            attention: self.attention + other.attention,
            upsamples: self.upsamples + other.upsamples,
            residual_inputs: self.residual_inputs + other.residual_inputs,
        }
    }
}

/// Inline initializers at least this large are read by ONNX Runtime from the model file itself when an edited
/// graph is loaded from memory ([`OnnxModel::inline_as_external`]).
const READ_FROM_FILE_BYTES: usize = 1024;

/// The error for ONNX Runtime refusing the `stage` graph at `path`, rewritten at load as `done` says (then the
/// message says how to load it as exported).
fn refused<'a>(path: &'a Path, stage: &'static str, done: Rewrites) -> impl Fn(ort::Error) -> Error + Copy + 'a {
    let hint = match (done.attention, done.upsamples) {
        (0, 0) => "",
        (_, 0) => " (with its attention fused at load; engine option `fuse_attention: false` loads it as exported)",
        (0, _) => {
            " (with its upsampling made sub-pixel at load; engine option `subpixel_upsample: false` loads it as \
             exported)"
        }
        _ => {
            " (with its attention fused and its upsampling made sub-pixel at load; engine options \
             `fuse_attention: false` and `subpixel_upsample: false` load it as exported)"
        }
    };
    move |e| Error::model_invalid(path, format!("ONNX Runtime cannot load the {stage}{hint}: {e}"))
}

/// What ONNX Runtime builds a session from.
enum Source {
    /// The model file as it is.
    File(PathBuf),
    /// An edited copy of the model, its external data resolved against `folder`.
    Memory { bytes: Vec<u8>, folder: PathBuf },
}

impl Source {
    /// Build the session from this source.
    fn commit(&self, mut builder: SessionBuilder, invalid: impl Fn(ort::Error) -> Error) -> Result<Session> {
        match self {
            Source::File(path) => builder.commit_from_file(path).map_err(invalid),
            Source::Memory { bytes, folder } => builder
                .with_config_entry("session.model_external_initializers_file_folder_path", folder.to_string_lossy())
                .map_err(|e| invalid(e.into()))?
                .commit_from_memory(bytes)
                .map_err(invalid),
        }
    }

    /// The graph at `path` as it will be loaded: rewritten ([`SessionConfig::plan_rewrites`]) when any rewrite
    /// applies, else the file itself. Also returns what was rewritten.
    fn prepare(path: &Path, stage: &str, config: &SessionConfig) -> Result<(Source, Rewrites)> {
        if !config.fuses(stage) && !config.upsamples(stage) && !config.adds_residual_inputs(stage) {
            return Ok((Source::File(path.to_path_buf()), Rewrites::default()));
        }
        let model = OnnxModel::read(path)?;
        let mut edit = Edit::default();
        let done = config.plan_rewrites(stage, &model, &mut edit, &HashSet::new())?;
        if !done.any() {
            return Ok((Source::File(path.to_path_buf()), done));
        }
        edit.moved = model.inline_as_external(READ_FROM_FILE_BYTES);
        let bytes = model.edited(&edit)?;
        let folder = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok((Source::Memory { bytes, folder }, done))
    }
}

/// A declared input or output.
#[derive(Debug, Clone)]
pub struct IoSpec {
    /// Name in the graph.
    pub name: String,
    /// Element type.
    pub elem: Elem,
    /// Declared shape (-1 for dynamic dims; empty for scalars).
    pub shape: Vec<i64>,
}

/// One loaded ONNX graph.
#[derive(Debug)]
pub struct ModelSession {
    stage: &'static str,
    /// The memory arenas this graph allocates from, in `memory.enable_memory_arena_shrinkage` syntax.
    arenas: Option<String>,
    /// What was rewritten at load (`None`: loaded from the optimized-graph cache, which does not record it).
    rewrites: Option<Rewrites>,
    path: PathBuf,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    session: Mutex<Session>,
}

fn builder(
    env: &ort::environment::Environment,
    path: &Path,
    stage: &'static str,
    config: &SessionConfig,
) -> Result<SessionBuilder> {
    let invalid = refused(path, stage, Rewrites::default());
    let mut builder = Session::builder(env).map_err(invalid)?;
    builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| invalid(e.into()))?;
    // ORT's worker threads flush denormals; the calling thread does only inside `FlushDenormals` guards.
    builder = builder.with_config_entry("session.set_denormal_as_zero", "1").map_err(|e| invalid(e.into()))?;
    if let Some(n) = config.intra_op_threads {
        builder = builder.with_intra_threads(n).map_err(|e| invalid(e.into()))?;
    }
    if config.device == Device::Cpu && !config.cpu_arena.uses_arena(stage) {
        let cpu = ort::ep::CPU::default().with_arena_allocator(false).build().error_on_failure();
        builder = builder.with_execution_providers([cpu]).map_err(|e| invalid(e.into()))?;
        if host_allocator::registered() {
            // large blocks as transparent huge pages, each given back when freed (see the module)
            builder = builder.with_env_allocators().map_err(|e| invalid(e.into()))?;
        }
    }
    if let Device::Cuda(id) = config.device {
        let cuda = config.cuda.provider(id)?;
        builder = builder.with_execution_providers([cuda]).map_err(|e| {
            Error::RuntimeUnavailable(format!("the CUDA execution provider (device {id}) failed for the {stage}: {e}"))
        })?;
    }
    Ok(builder)
}

fn specs(outlets: &[ort::value::Outlet]) -> Vec<IoSpec> {
    outlets
        .iter()
        .map(|o| {
            let shape = match o.dtype() {
                ValueType::Tensor { shape, .. } => shape.iter().copied().collect(),
                _ => Vec::new(),
            };
            IoSpec { name: o.name().to_string(), elem: Elem::of(o.dtype()), shape }
        })
        .collect()
}

impl ModelSession {
    /// Load `path` (external data files are resolved beside it). `stage` names the graph in errors. With
    /// [`SessionConfig::fuse_attention`], the UNet's and VAE's attention is fused on the way
    /// ([`super::fuse_attention`]); the file is never changed.
    pub fn load(
        env: &ort::environment::Environment,
        path: &Path,
        stage: &'static str,
        config: &SessionConfig,
    ) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::ModelNotFound { path: path.to_path_buf(), message: format!("{stage} graph missing") });
        }
        // ORT sets FTZ/DAZ on the thread that builds the process's first session: undone when this returns.
        let _flush = FlushDenormals::new();
        if let (Some(cache), Device::Cpu) = (&config.optimized_cache, config.device) {
            return Self::load_cached(env, path, stage, config, cache);
        }
        let (source, done) = Source::prepare(path, stage, config)?;
        let session = source.commit(builder(env, path, stage, config)?, refused(path, stage, done))?;
        Ok(Self::wrap(stage, path, session, config, Some(done)))
    }

    /// True if [`ModelSession::load`] of `path` would load an already-optimized graph from the optimized-graph
    /// cache (CPU device): a light load, with no graph optimization and its memory peak.
    pub fn is_cached(path: &Path, stage: &str, config: &SessionConfig) -> bool {
        match (&config.optimized_cache, config.device) {
            (Some(cache), Device::Cpu) => cache.entry(path, &config.cache_stage(stage)).join("model.onnx").is_file(),
            _ => false,
        }
    }

    /// [`ModelSession::load`] through the optimized-graph cache: load the cached graph with optimizations off, or
    /// optimize the original (fused, as configured) once and save the result for the next load.
    fn load_cached(
        env: &ort::environment::Environment,
        path: &Path,
        stage: &'static str,
        config: &SessionConfig,
        cache: &OptimizedCache,
    ) -> Result<Self> {
        let invalid = refused(path, stage, Rewrites::default());
        let entry = cache.entry(path, &config.cache_stage(stage));
        let cached = entry.join("model.onnx");
        if cached.is_file() {
            let loaded = builder(env, path, stage, config)
                .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Disable).map_err(|e| invalid(e.into())))
                .and_then(|mut b| b.commit_from_file(&cached).map_err(invalid));
            match loaded {
                // What was rewritten is not recorded in the entry.
                Ok(session) => return Ok(Self::wrap(stage, path, session, config, None)),
                // A damaged or foreign entry: drop it and optimize again.
                Err(_) => drop(std::fs::remove_dir_all(&entry)),
            }
        }
        let (source, done) = Source::prepare(path, stage, config)?;
        let tmp = cache.temp_folder()?;
        let saving = [
            ("session.optimized_model_external_initializers_file_name", "model.onnx_data"),
            ("session.optimized_model_external_initializers_min_size_in_bytes", "1024"),
        ];
        let mut b = builder(env, path, stage, config)?
            .with_optimized_model_path(tmp.join("model.onnx"))
            .map_err(|e| invalid(e.into()))?;
        for (key, value) in saving {
            b = b.with_config_entry(key, value).map_err(|e| invalid(e.into()))?;
        }
        let session = source.commit(b, refused(path, stage, done));
        // Publish the entry only when the session was built; losing a race to another engine is fine.
        if session.is_err() || std::fs::rename(&tmp, &entry).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Ok(Self::wrap(stage, path, session?, config, Some(done)))
    }

    /// Load `overrides.model` with some initializers replaced (merged LoRA weights), without touching the files.
    ///
    /// How the new values reach ONNX Runtime, chosen so that no optimization or execution provider can drop them:
    /// - initializers stored inline get their `raw_data` replaced in an in-memory copy of the model, which is
    ///   then loaded from memory, with the model's folder (or the temporary one below) as the base for its
    ///   external data (`session.model_external_initializers_file_folder_path`). ORT sees an ordinary model:
    ///   constant folding of a `Transpose` over the weight (our no-fold exports), prepacking and device placement
    ///   all start from the new values.
    /// - initializers stored as external data were written, as they were merged, to a temporary external-data
    ///   file next to hard links of the model's data files, and that folder becomes the external-data base
    ///   ([`super::merged_data`]); it is deleted once the session is built. Where no such folder can be made they
    ///   are inlined into the copy while it stays under the [`super::overrides::Placement`] budget (protobuf
    ///   refuses messages over 2 GiB) and go through `AddExternalInitializers` past it (ORT checks them by name,
    ///   shape and type, and ort keeps those host values alive with the session).
    ///
    /// `AddInitializer` is never used: ORT silently ignores it when an optimizer rewrites the weight, and for
    /// host values on a CUDA device. With no overrides this is [`ModelSession::load`].
    pub fn load_with_overrides(
        env: &ort::environment::Environment,
        stage: &'static str,
        config: &SessionConfig,
        overrides: WeightOverrides,
    ) -> Result<Self> {
        let _flush = FlushDenormals::new(); // see `load`
        let path = overrides.model().path().to_path_buf();
        if overrides.is_empty() {
            drop(overrides);
            return Self::load(env, &path, stage, config);
        }
        let Parts { model, inline, written, runtime: external, scratch } = overrides.into_parts();
        // Values in the temporary file resolve against its folder (hard links of the model's data files beside
        // it); otherwise the model's own folder is the base.
        let folder = match &scratch {
            Some(s) => s.data.folder().to_path_buf(),
            None => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        };
        let mut edit = Edit { replace: inline, moved: written, ..Edit::default() };
        // Merged weights keep their convolutions as exported (the sub-pixel kernels are made from the file's).
        let keep: HashSet<usize> =
            edit.replace.keys().chain(edit.moved.keys()).copied().chain(external.iter().map(|(i, _)| *i)).collect();
        let done = config.plan_rewrites(stage, &model, &mut edit, &keep)?;
        let patched = model.edited(&edit)?;
        drop(edit);
        let invalid = refused(&path, stage, Rewrites::default());
        let mut builder = builder(env, &path, stage, config)?
            .with_config_entry("session.model_external_initializers_file_folder_path", folder.to_string_lossy())
            .map_err(|e| invalid(e.into()))?;
        // Fallback (no link or file possible): AddExternalInitializers, checked by name, shape and type.
        for (i, bytes) in external {
            let t = &model.initializers[i];
            let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
            // Straight from the little-endian bytes in the weight's own type (no f32 round trip, no f32 copy).
            let value = match t.data_type {
                onnx_proto::DT_FLOAT16 => {
                    Tensor::from_array((dims, le_values(&bytes, half::f16::from_le_bytes))).map(|v| v.into_dyn())
                }
                onnx_proto::DT_BFLOAT16 => {
                    Tensor::from_array((dims, le_values(&bytes, half::bf16::from_le_bytes))).map(|v| v.into_dyn())
                }
                _ => Tensor::from_array((dims, le_values(&bytes, f32::from_le_bytes))).map(|v| v.into_dyn()),
            }
            .map_err(invalid)?;
            drop(bytes);
            builder = builder.with_external_initializer(&t.name, value).map_err(|e| invalid(e.into()))?;
        }
        drop(model);
        let session = builder.commit_from_memory(&patched).map_err(refused(&path, stage, done))?;
        drop(scratch); // ONNX Runtime has read (or mapped) the file; the folder goes now
        Ok(Self::wrap(stage, &path, session, config, Some(done)))
    }

    fn wrap(
        stage: &'static str,
        path: &Path,
        session: Session,
        config: &SessionConfig,
        done: Option<Rewrites>,
    ) -> Self {
        let arenas = match config.device {
            Device::Cpu => config.cpu_arena.uses_arena(stage).then(|| "cpu:0".to_string()),
            Device::Cuda(id) => Some(format!("gpu:{id}")),
        };
        ModelSession {
            arenas,
            rewrites: done,
            stage,
            path: path.to_path_buf(),
            inputs: specs(session.inputs()),
            outputs: specs(session.outputs()),
            session: Mutex::new(session),
        }
    }

    /// What was rewritten in this graph when it was loaded (`None` when it came from the optimized-graph cache,
    /// whose entries do not record it).
    pub fn rewrites(&self) -> Option<Rewrites> {
        self.rewrites
    }

    /// The file this graph was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Declared inputs.
    pub fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }

    /// Declared outputs.
    pub fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }

    /// The input called `name`, or a model error listing the inputs the graph has.
    pub fn input(&self, name: &str) -> Result<&IoSpec> {
        self.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
            let have: Vec<_> = self.inputs.iter().map(|i| i.name.as_str()).collect();
            Error::model_invalid(&self.path, format!("{} has no input `{name}` (inputs: {have:?})", self.stage))
        })
    }

    /// True if the graph has an output called `name`.
    pub fn has_output(&self, name: &str) -> bool {
        self.outputs.iter().any(|o| o.name == name)
    }

    /// A model error listing the outputs the graph has, unless it has `name`.
    pub(super) fn check_output(&self, name: &str) -> Result<()> {
        if self.has_output(name) {
            return Ok(());
        }
        let have: Vec<_> = self.outputs.iter().map(|o| o.name.as_str()).collect();
        Err(Error::model_invalid(&self.path, format!("{} has no output `{name}` (outputs: {have:?})", self.stage)))
    }

    /// The memory arenas this graph allocates from (`cpu:0`, `gpu:N`), if any.
    pub(super) fn arenas(&self) -> Option<&str> {
        self.arenas.as_deref()
    }

    /// The graph's name in errors (`unet`, `vae_decoder`, ...).
    pub fn stage(&self) -> &'static str {
        self.stage
    }

    /// Call `f` with the `ort` session locked (one run at a time per graph).
    pub(super) fn with_session<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        f(&mut self.session.lock())
    }

    /// Run the graph once and return the `wanted` outputs as f32 arrays, in that order. The graph's memory arena
    /// gives its free memory back after the call: one-shot graphs (text encoders, VAE) would otherwise keep their
    /// peak reserved between requests, under the next request's denoising loop (repeated calls go through
    /// [`ModelSession::bind`]).
    ///
    /// A cancel during the call terminates it and gives `Error::Cancelled`.
    pub fn run(
        &self,
        inputs: Vec<(String, DynValue)>,
        wanted: &[&str],
        cancel: &CancelToken,
    ) -> Result<Vec<ArrayD<f32>>> {
        cancel.check()?;
        for name in wanted {
            self.check_output(name)?;
        }
        let opts = cancel.begin_run(self.stage, self.arenas())?;
        let result = {
            let mut session = self.session.lock();
            let outputs = {
                let _flush = FlushDenormals::new();
                session.run_with_options(inputs, &*opts)
            };
            let extracted = match outputs {
                Ok(outputs) => wanted
                    .iter()
                    .map(|name| match outputs.get(name) {
                        Some(v) => to_f32(v, self.stage, name),
                        None => Err(Error::Inference { stage: self.stage, message: format!("no output `{name}`") }),
                    })
                    .collect::<Result<Vec<_>>>(),
                Err(e) => Err(Error::Inference { stage: self.stage, message: explain(e.to_string()) }),
            };
            extracted
        };
        cancel.end_run();
        match result {
            Err(_) if cancel.is_cancelled() => Err(Error::Cancelled),
            other => other,
        }
    }
}

/// Little-endian values of `N` bytes each.
fn le_values<T, const N: usize>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| from(c.try_into().expect("chunks of N bytes"))).collect()
}

/// Add what a user can do to ONNX Runtime's out-of-memory messages.
pub(super) fn explain(message: String) -> String {
    let lower = message.to_ascii_lowercase();
    if lower.contains("failed to allocate") || lower.contains("bad_alloc") || lower.contains("out of memory") {
        format!(
            "out of memory: {message} (use a smaller width/height or batch, or unload other models with \
             `unload_model`)"
        )
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_from_engine_options() {
        assert_eq!(Device::parse("cpu"), Some(Device::Cpu));
        assert_eq!(Device::parse("CUDA"), Some(Device::Cuda(0)));
        assert_eq!(Device::parse("cuda:3"), Some(Device::Cuda(3)));
        assert_eq!(Device::parse("cuda:-1"), None);
        assert_eq!(Device::parse("tpu"), None);
        assert_eq!(Device::Cuda(1).name(), "CUDA:1");
    }

    #[test]
    fn upsampling_is_made_sub_pixel_on_the_cpu_by_default_and_on_cuda_when_asked() {
        let on = |device, option| SessionConfig { device, subpixel_upsample: option, ..Default::default() };
        assert!(on(Device::Cpu, None).upsamples("vae_decoder"));
        assert!(!on(Device::Cuda(0), None).upsamples("unet"));
        assert!(on(Device::Cuda(0), Some(true)).upsamples("unet"));
        assert!(!on(Device::Cpu, Some(false)).upsamples("unet"));
        assert!(!on(Device::Cpu, Some(true)).upsamples("text_encoder_2"));
        // The optimized-graph cache keeps the two graphs apart.
        assert_eq!(on(Device::Cpu, None).cache_stage("unet"), "unet+mha+subpixel");
        assert_eq!(on(Device::Cpu, Some(false)).cache_stage("unet"), "unet+mha");
    }

    #[test]
    fn out_of_memory_errors_say_what_to_do() {
        assert!(
            explain("Failed to allocate memory for requested buffer of size 123".into()).starts_with("out of memory")
        );
        assert_eq!(explain("Concat: mismatched dims".into()), "Concat: mismatched dims");
    }
}
