//! LoRA merged at load time: any number of LoRA files, each with its own UNet and text-encoder weights, added into
//! the ONNX weights when the sessions are built. Nothing on disk is modified.
//!
//! - [`formats`] reads kohya, diffusers/PEFT, LoCon, LoHa and LoKr `.safetensors` files.
//! - [`keymap`] finds the initializer each module patches, by name (our no-fold exports) or through the
//!   consuming node's scope (constant-folded exports with `onnx::MatMul_NNN` weights).
//! - [`merge`] computes ΔW in f32 and adds it in the weight's own dtype.
//! - [`LoraSet::plan_graph`] turns a LoRA set into [`WeightOverrides`] for one graph, which
//!   [`crate::runtime::ModelSession::load_with_overrides`] loads (see there for why in-memory patching).
//!
//! # Where LoRA files are found
//!
//! A request names each LoRA in `data.lora.models[i].name`. [`resolve_path`] maps it to a file:
//! - a plain name or a relative path (`detail`, `styles/ink.safetensors`) → `<models_root>/loras/<name>`, with
//!   `.safetensors` appended unless the name ends with it;
//! - an absolute path → used as is, but only when it lies inside `models_root` (after resolving symlinks).
//!
//! `..` components, files outside `models_root` and missing files are errors naming the field.
//!
//! # Reporting
//!
//! Per LoRA, tensors whose module has no target in the model (or uses an unsupported variant, such as a vector
//! `dora_scale`) are skipped and reported as a warning with the applied/skipped counts. A LoRA with no applicable
//! tensor at all, a missing or unreadable file, a truncated or corrupt file and a ΔW whose shape does not fit its
//! target are errors.

pub mod formats;
pub mod keymap;
pub mod merge;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use self::formats::{Component, LoraFile, Patch};
use self::keymap::{GraphMap, Layout, Target};
use crate::error::{Error, Result};
use crate::model_files::FileKind;
use crate::protocol::params::LoraRequest;
use crate::runtime::onnx_proto::OnnxModel;
use crate::runtime::{Placement, WeightOverrides};

/// The folder under `models_root` that holds LoRA files.
pub const LORA_FOLDER: &str = "loras";

/// One LoRA of a request, with its file resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The name as requested (reported back in the response metadata).
    pub name: String,
    /// The resolved file.
    pub path: PathBuf,
    /// The request field that named it (`data.lora.models[0].name`), for errors.
    pub field: String,
    /// The requested weight.
    pub weight: f32,
    /// Weight for the UNet (the request's `unet_weight`, else `weight`).
    pub unet_weight: f32,
    /// Weight for both text encoders (the request's `text_encoder_weight`, else `weight`).
    pub text_encoder_weight: f32,
}

impl LoraSpec {
    /// The weight that applies to `component`.
    pub fn weight_for(&self, component: Component) -> f32 {
        match component {
            Component::Unet => self.unet_weight,
            _ => self.text_encoder_weight,
        }
    }
}

/// A LoRA spec with its parsed file.
#[derive(Debug, Clone)]
pub struct LoadedLora {
    /// What was asked for.
    pub spec: LoraSpec,
    /// The parsed file (shared by every set that uses it).
    pub file: Arc<LoraFile>,
}

/// The LoRAs of one request, in request order.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    loras: Vec<LoadedLora>,
}

/// Where LoRA files live: `<models_root>/loras/<name>.safetensors` ([`crate::model_files`]).
pub const LORA_FILES: FileKind = FileKind { folder: LORA_FOLDER, extension: "safetensors", what: "LoRA" };

/// `name` → the LoRA file it names under `models_root` (see the module docs), or an error naming `field`.
pub fn resolve_path(models_root: &Path, name: &str, field: &str) -> Result<PathBuf> {
    LORA_FILES.resolve(models_root, name, field)
}

/// A cached file: size, modification time, parsed content, last use.
type CachedFile = (u64, Option<SystemTime>, Arc<LoraFile>, std::time::Instant);

/// How many parsed LoRA files [`LoraFileCache`] keeps (a parsed file holds its tensors as f32).
pub const MAX_CACHED_LORA_FILES: usize = 4;

/// Parsed LoRA files by path, re-read only when a file's size or modification time changes; at most
/// [`MAX_CACHED_LORA_FILES`], least recently used dropped first.
#[derive(Debug, Default)]
pub struct LoraFileCache {
    files: Mutex<HashMap<PathBuf, CachedFile>>,
}

impl LoraFileCache {
    /// The parsed file of `spec`.
    pub fn get(&self, spec: &LoraSpec) -> Result<Arc<LoraFile>> {
        let meta = std::fs::metadata(&spec.path)
            .map_err(|e| Error::field(&spec.field, format!("LoRA file {}: {e}", spec.path.display())))?;
        let stamp = (meta.len(), meta.modified().ok());
        if let Some((len, time, file, used)) = self.files.lock().get_mut(&spec.path) {
            if (*len, *time) == stamp {
                *used = std::time::Instant::now();
                return Ok(file.clone());
            }
        }
        let bytes = std::fs::read(&spec.path)
            .map_err(|e| Error::model_invalid(&spec.path, format!("cannot read the LoRA file: {e}")))?;
        let file = Arc::new(formats::parse(&spec.path, &bytes)?);
        drop(bytes);
        let mut files = self.files.lock();
        files.insert(spec.path.clone(), (stamp.0, stamp.1, file.clone(), std::time::Instant::now()));
        while files.len() > MAX_CACHED_LORA_FILES {
            let oldest = files.iter().min_by_key(|(_, e)| e.3).map(|(p, _)| p.clone());
            match oldest {
                Some(p) => files.remove(&p),
                None => break,
            };
        }
        Ok(file)
    }

    /// Forget every cached file.
    pub fn clear(&self) {
        self.files.lock().clear();
    }
}

/// One initializer to merge: its index, where it maps, and what patches it.
type MergeJob = (usize, Target, Vec<Contribution>);

/// What one module of one LoRA adds to a target: (LoRA index, module index, which of the module's changes).
type Contribution = (usize, usize, Slot);

/// The part of a module a target receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The weight change ([`formats::Module::patch`]).
    Weight,
    /// The bias change ([`formats::Module::bias`]).
    Bias,
}

/// What one graph gets from a LoRA set.
#[derive(Debug)]
pub struct GraphPlan {
    /// Identifies the merged weights: 0 for the base graph (no LoRA applies), else a hash of the files and
    /// weights that contribute. Equal keys mean interchangeable sessions.
    pub key: u64,
    /// The replacements to load with; `None` when `key` is 0.
    pub overrides: Option<WeightOverrides>,
    /// Per LoRA (set order): modules and tensors matched in this graph.
    pub matched: Vec<(usize, usize)>,
}

/// Per-LoRA outcome of a whole pipeline build.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraReport {
    /// The LoRAs applied, in request order.
    pub applied: Vec<AppliedLora>,
}

impl LoraReport {
    /// Warnings for the response: one per LoRA with skipped tensors, naming it by `names` (the current request's
    /// spelling, in set order; a cached pipeline may have been built for a request that named the same files
    /// otherwise) or, where `names` has none, by the name it was built with.
    pub fn warnings(&self, names: &[&str]) -> Vec<String> {
        self.applied
            .iter()
            .enumerate()
            .filter(|(_, a)| a.skipped_tensors > 0)
            .map(|(i, a)| {
                let total = a.applied_tensors + a.skipped_tensors;
                format!(
                    "LoRA `{}`: applied {} of {total} tensors, skipped {} (no matching weight in this model{}{})",
                    names.get(i).copied().unwrap_or(&a.name),
                    a.applied_tensors,
                    a.skipped_tensors,
                    if a.skip_reasons.is_empty() { "" } else { "; e.g. " },
                    a.skip_reasons.join(", ")
                )
            })
            .collect()
    }
}

/// A LoRA as listed in the response metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedLora {
    /// The requested name.
    pub name: String,
    /// The requested weight.
    pub weight: f32,
    /// The UNet weight, when it differs from `weight`.
    pub unet_weight: Option<f32>,
    /// The text-encoder weight, when it differs from `weight`.
    pub text_encoder_weight: Option<f32>,
    /// Tensors of the file that were applied.
    pub applied_tensors: usize,
    /// Tensors of the file that were skipped.
    pub skipped_tensors: usize,
    /// Up to four examples of why (`key: reason`).
    pub skip_reasons: Vec<String>,
}

impl LoraSet {
    /// A set from specs, reading (or reusing from `cache`) each file.
    pub fn load(specs: Vec<LoraSpec>, cache: &LoraFileCache) -> Result<Self> {
        let mut loras = Vec::with_capacity(specs.len());
        for spec in specs {
            let file = cache.get(&spec)?;
            loras.push(LoadedLora { spec, file });
        }
        Ok(LoraSet { loras })
    }

    /// The set with no LoRA.
    pub fn empty() -> Self {
        LoraSet::default()
    }

    /// True when the set has no LoRA.
    pub fn is_empty(&self) -> bool {
        self.loras.is_empty()
    }

    /// The LoRAs in request order.
    pub fn loras(&self) -> &[LoadedLora] {
        &self.loras
    }

    /// A cache key for the whole set: files (path + content hash) and weights, in order. 0 for the empty set.
    pub fn cache_key(&self) -> u64 {
        if self.loras.is_empty() {
            return 0;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for l in &self.loras {
            (&l.spec.path, l.file.content_hash, l.spec.unet_weight.to_bits(), l.spec.text_encoder_weight.to_bits())
                .hash(&mut h);
        }
        h.finish() | 1
    }

    /// Whether any LoRA of the set has modules for `component` (only then is its graph read).
    pub fn touches(&self, component: Component) -> bool {
        self.loras.iter().any(|l| l.file.touches(component))
    }

    /// Match the set against the graph `model` of `component` and, unless `reuse_key` already equals the
    /// result, compute the merged weights (kept in memory or written out as they are made, per `placement`).
    pub fn plan_graph(
        &self,
        model: OnnxModel,
        component: Component,
        reuse_key: Option<u64>,
        placement: &Placement,
    ) -> Result<GraphPlan> {
        let map = GraphMap::build(&model, component);
        let mut matched = vec![(0usize, 0usize); self.loras.len()];
        // target index → contributions
        let mut per_target: BTreeMap<usize, (Target, Vec<Contribution>)> = BTreeMap::new();
        let mut key = std::collections::hash_map::DefaultHasher::new();
        let mut contributes = false;
        for (li, l) in self.loras.iter().enumerate() {
            let w = l.spec.weight_for(component);
            let mut any = false;
            for (mi, m) in l.file.modules.iter().enumerate() {
                if m.component != component || !m.applies() {
                    continue;
                }
                let weight = m.patch.as_ref().and_then(|_| map.resolve(&m.name, component));
                let bias = m.bias.as_ref().and_then(|_| map.resolve_bias(&m.name, component));
                if weight.is_none() && bias.is_none() {
                    continue;
                }
                // The bias change's key is the module's last; the others go with the weight (or, for a module
                // that changes only a bias, with the bias).
                let bias_keys = usize::from(m.bias.is_some());
                matched[li].0 += 1;
                matched[li].1 += if bias.is_some() { bias_keys } else { 0 };
                matched[li].1 += if weight.is_some() || m.patch.is_none() { m.keys.len() - bias_keys } else { 0 };
                // A PEFT DoRA module rescales its channels even at weight 0 (see merge::apply_dora).
                let peft_dora = m.magnitude.as_ref().is_some_and(|d| d.rule == formats::DoraRule::Peft);
                let changes = [(weight, Slot::Weight, w != 0.0 || peft_dora), (bias, Slot::Bias, w != 0.0)];
                for (target, slot, _) in changes.into_iter().filter(|c| c.2) {
                    let Some(target) = target else { continue };
                    any = true;
                    per_target.entry(target.index).or_insert((target, Vec::new())).1.push((li, mi, slot));
                }
            }
            if any {
                contributes = true;
                (li, &l.spec.path, l.file.content_hash, w.to_bits()).hash(&mut key);
            }
        }
        let key = if contributes { key.finish() | 1 } else { 0 };
        if key == 0 || reuse_key == Some(key) {
            return Ok(GraphPlan { key, overrides: None, matched });
        }
        // Merge the targets on every core: each worker takes the next target, merges its LoRA updates into a copy
        // of the weight and hands it to the overrides (which write it out at once when it goes to a file).
        let mut jobs: Vec<MergeJob> =
            per_target.into_iter().map(|(index, (target, contributions))| (index, target, contributions)).collect();
        // Largest weights first, so that the workers finish together.
        jobs.sort_by_key(|(index, _, _)| std::cmp::Reverse(model.initializers[*index].numel()));
        let targets: Vec<usize> = jobs.iter().map(|(index, _, _)| *index).collect();
        let overrides = WeightOverrides::new(model, &targets, placement)?;
        let next = AtomicUsize::new(0);
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len()).max(1);
        let results: Vec<Option<Result<()>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        let Some((index, target, contributions)) = jobs.get(j) else { return Ok(()) };
                        let merged = self.merge_target(overrides.model(), component, *index, *target, contributions);
                        if let Err(e) = merged.and_then(|weight| overrides.put(*index, weight)) {
                            next.store(jobs.len(), Ordering::Relaxed); // the other workers stop too
                            return Err(e);
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().ok()).collect()
        });
        for result in results {
            result.ok_or_else(|| Error::Internal("a LoRA merge worker panicked".into()))??;
        }
        Ok(GraphPlan { key, overrides: Some(overrides), matched })
    }

    /// The new value of initializer `index`: base + Σ weight · scale · ΔW over `contributions`, in the
    /// initializer's dtype.
    fn merge_target(
        &self,
        model: &OnnxModel,
        component: Component,
        index: usize,
        target: Target,
        contributions: &[Contribution],
    ) -> Result<Vec<u8>> {
        let init = &model.initializers[index];
        let dims: Vec<usize> = init.dims.iter().map(|&d| d.max(0) as usize).collect();
        let (out, cols) = match (target.layout, dims.as_slice()) {
            (Layout::Torch, [first, rest @ ..]) => (*first, rest.iter().product::<usize>()),
            (Layout::Transposed, [rows, out]) => (*out, *rows),
            _ => (0, 0),
        };
        let mut terms = Vec::with_capacity(contributions.len());
        for &(li, mi, slot) in contributions {
            let l = &self.loras[li];
            let m = &l.file.modules[mi];
            let patch = match slot {
                Slot::Weight => m.patch.as_ref().expect("only modules with a patch are matched to weights"),
                Slot::Bias => &m.bias.as_ref().expect("only modules with a bias change are matched to biases").patch,
            };
            let shape = merge::delta_shape(patch);
            if shape != (out, cols) || out == 0 {
                return Err(Error::model_invalid(
                    &l.spec.path,
                    format!(
                        "LoRA module {:?} gives a {}x{} update, but {} tensor `{}` has shape {:?} ({out} x {cols} as \
                         [out, in]); is this LoRA for another model?",
                        m.name,
                        shape.0,
                        shape.1,
                        component.folder(),
                        init.name,
                        init.dims
                    ),
                ));
            }
            let alpha_scale = match (slot, &m.patch) {
                (Slot::Weight, _) => merge::alpha_scale(patch, m.alpha),
                (Slot::Bias, Some(weight_patch)) if m.bias.as_ref().is_some_and(|b| b.alpha_scaled) => {
                    merge::alpha_scale(weight_patch, m.alpha)
                }
                (Slot::Bias, _) => 1.0,
            };
            terms.push(merge::DoraTerm {
                patch,
                alpha_scale,
                weight: l.spec.weight_for(component),
                magnitude: m.magnitude.as_ref().filter(|_| slot == Slot::Weight),
            });
        }
        // `read_raw` gives a fresh copy: merged in place, it is the new value (no second buffer, no f32 ΔW).
        let mut weight = model.read_raw(index)?;
        let merged = if terms.iter().any(|t| t.magnitude.is_some()) {
            // Kernel positions per input channel: a convolution's kh · kw (torch layout [out, in, kh, kw]).
            let spatial = match dims.as_slice() {
                [_, _, rest @ ..] if target.layout == Layout::Torch => rest.iter().product(),
                _ => 1,
            };
            merge::apply_dora(&mut weight, init.data_type, out, cols, spatial, target.layout, &terms)
        } else {
            let plain: Vec<(&Patch, f32)> = terms.iter().map(|t| (t.patch, t.weight * t.alpha_scale)).collect();
            merge::apply_in_place(&mut weight, init.data_type, out, cols, target.layout, &plain)
        };
        merged.map_err(|e| Error::model_invalid(model.path(), format!("merging LoRA into `{}`: {e}", init.name)))?;
        Ok(weight)
    }

    /// The report of a pipeline build, from the per-graph matches (summed over graphs, set order). A LoRA with no
    /// applicable tensor is an error naming its request field.
    pub fn report(&self, matched: &[(usize, usize)]) -> Result<LoraReport> {
        let mut report = LoraReport::default();
        for (l, &(_, tensors)) in self.loras.iter().zip(matched) {
            let total = l.file.tensor_count();
            let skipped = total - tensors.min(total);
            if tensors == 0 {
                let example: Vec<String> =
                    l.file.modules.iter().take(3).map(|m| m.keys.first().cloned().unwrap_or_default()).collect();
                return Err(Error::field(
                    &l.spec.field,
                    format!(
                        "no tensor of LoRA {} applies to this model ({total} tensors, e.g. {example:?}); \
                         is it an SDXL LoRA in kohya, diffusers/PEFT, LoCon, LoHa, LoKr or LyCORIS full format?",
                        l.spec.path.display()
                    ),
                ));
            }
            let mut skip_reasons = Vec::new();
            if skipped > 0 {
                let unsupported = l.file.modules.iter().filter_map(|m| m.unsupported.as_ref().map(|u| (m, u)));
                skip_reasons.extend(unsupported.take(2).map(|(m, u)| format!("{}: {u}", m.keys[0])));
                skip_reasons.extend(l.file.unknown_keys.iter().take(2).map(|k| format!("{k}: unknown key")));
            }
            let s = &l.spec;
            report.applied.push(AppliedLora {
                name: s.name.clone(),
                weight: s.weight,
                unet_weight: (s.unet_weight != s.weight).then_some(s.unet_weight),
                text_encoder_weight: (s.text_encoder_weight != s.weight).then_some(s.text_encoder_weight),
                applied_tensors: tensors,
                skipped_tensors: skipped,
                skip_reasons,
            });
        }
        Ok(report)
    }
}

/// The specs of a request's `data.lora.models`, each name resolved under `models_root` ([`resolve_path`]).
pub fn specs_from_requests(models_root: &Path, requests: &[LoraRequest]) -> Result<Vec<LoraSpec>> {
    requests
        .iter()
        .map(|r| {
            Ok(LoraSpec {
                name: r.name.clone(),
                path: resolve_path(models_root, &r.name, &r.field)?,
                field: r.field.clone(),
                weight: r.weight,
                unet_weight: r.unet_weight.unwrap_or(r.weight),
                text_encoder_weight: r.text_encoder_weight.unwrap_or(r.weight),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runtime::onnx_proto::{put_bytes_field as bytes_field, put_varint};

    fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
        put_varint(out, field << 3);
        put_varint(out, v);
    }

    #[test]
    fn fp16_weights_stay_fp16_with_the_delta_accumulated_in_f32() {
        // A folded-export layout: W [in 3, out 2] in float16, consumed by `/blk/lin/MatMul`.
        let w = [0.5f32, -1.0, 0.25, 2.0, 1.5, -0.75];
        let mut tensor = Vec::new();
        varint_field(&mut tensor, 1, 3);
        varint_field(&mut tensor, 1, 2);
        varint_field(&mut tensor, 2, crate::runtime::onnx_proto::DT_FLOAT16 as u64);
        bytes_field(&mut tensor, 8, b"onnx::MatMul_7");
        bytes_field(
            &mut tensor,
            9,
            &crate::runtime::onnx_proto::encode_floats(&w, crate::runtime::onnx_proto::DT_FLOAT16),
        );
        let mut node = Vec::new();
        for (f, s) in [(1, "x"), (1, "onnx::MatMul_7"), (2, "y"), (3, "/blk/lin/MatMul"), (4, "MatMul")] {
            bytes_field(&mut node, f, s.as_bytes());
        }
        let mut graph = Vec::new();
        bytes_field(&mut graph, 1, &node);
        bytes_field(&mut graph, 5, &tensor);
        let mut proto = Vec::new();
        varint_field(&mut proto, 1, 8);
        bytes_field(&mut proto, 7, &graph);
        let model = OnnxModel::parse(Path::new("/nonexistent/model.onnx"), proto).unwrap();

        // ΔW [out 2, in 3] = B [2, 1] · A [1, 3].
        let (a, b) = ([1.0f32, 2.0, 3.0], [0.1f32, -0.2]);
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (ab, bb) = (le(&a), le(&b));
        let views = vec![
            (
                "unet.blk.lin.lora_A.weight",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 3], &ab).unwrap(),
            ),
            (
                "unet.blk.lin.lora_B.weight",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 1], &bb).unwrap(),
            ),
        ];
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), safetensors::tensor::serialize(views, None).unwrap()).unwrap();
        let weight = 0.7f32;
        let spec = LoraSpec {
            name: "t".into(),
            path: file.path().to_path_buf(),
            field: "f".into(),
            weight,
            unet_weight: weight,
            text_encoder_weight: weight,
        };
        let set = LoraSet::load(vec![spec], &LoraFileCache::default()).unwrap();
        let plan = set.plan_graph(model, Component::Unet, None, &Placement::default()).unwrap();
        assert_eq!(plan.matched, vec![(1, 2)]);
        let got = &plan.overrides.unwrap().held_value(0).expect("an inline weight stays in memory");
        assert_eq!(got.len(), 12, "float16 in, float16 out");
        for i in 0..3 {
            for o in 0..2 {
                let want = half::f16::from_f32(w[i * 2 + o] + weight * b[o] * a[i]);
                let k = 2 * (i * 2 + o);
                assert_eq!(half::f16::from_le_bytes([got[k], got[k + 1]]), want, "W[{i}][{o}]");
            }
        }
    }
}
