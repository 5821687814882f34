//! Replacement values for some initializers of a parsed model (merged LoRA weights), collected while they are
//! computed, for [`super::ModelSession::load_with_overrides`].
//!
//! Where each value goes is decided before the first one exists. A replacement for an initializer stored as
//! external data goes to a temporary external-data file ([`super::merged_data`]) and is written the moment it is
//! [`put`](WeightOverrides::put), not kept: the session then loads it like the model's own external data, and the
//! merge holds no merged weight in memory (full-size fp16 SDXL UNet: 4.7 GB of them). Inlining those values into
//! the in-memory model instead costs them three times over while ONNX Runtime parses it (the patched model, ORT's
//! copy of it, its tensors: bench model +1.8 GiB peak RSS; full size does not fit in 24 GB), so that is only the
//! fallback where no temporary folder can be made (neither in the temp folder nor in the model's folder: a read-only
//! model on another filesystem than the temp folder), up to a size budget, and `AddExternalInitializers` past it.
//! Replacements for initializers stored inline are inlined.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use parking_lot::Mutex;

use super::merged_data::MergedData;
use super::onnx_proto::{self, ExternalRef, OnnxModel};
use crate::error::{Error, Result};

/// Default [`Placement::max_inline_bytes`]: 1.75 GiB, clear of protobuf's 2 GiB limit.
pub const DEFAULT_MAX_INLINE_BYTES: u64 = 7 << 28;

/// Where replacement values may go.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Where no temporary file can be made: the largest in-memory model (bytes) to build by inlining replacements
    /// of external-data initializers; the rest go through `AddExternalInitializers`.
    pub max_inline_bytes: u64,
    /// Where the temporary file's folder is made (`None`: the system temp folder, else the model's folder; see
    /// [`MergedData::default_parents`]).
    pub scratch_parent: Option<PathBuf>,
}

impl Default for Placement {
    fn default() -> Self {
        Placement { max_inline_bytes: DEFAULT_MAX_INLINE_BYTES, scratch_parent: None }
    }
}

/// Where one replacement goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    /// Into the in-memory model's `raw_data`.
    Inline,
    /// Into the temporary file, at this place.
    File(ExternalRef),
    /// No temporary file and past the inline budget (or the file's write failed): held for
    /// `AddExternalInitializers`.
    Runtime,
}

/// The temporary folder and its file of merged weights.
#[derive(Debug)]
pub(super) struct Scratch {
    pub(super) data: MergedData,
    file: Mutex<std::fs::File>,
}

/// A parsed model and the replacement values for some of its initializers.
#[derive(Debug)]
pub struct WeightOverrides {
    pub(super) model: OnnxModel,
    destinations: HashMap<usize, Destination>,
    /// Values kept in memory (inline, or for `AddExternalInitializers`), by initializer index.
    held: Mutex<HashMap<usize, Vec<u8>>>,
    /// Values already in the temporary file.
    written: Mutex<HashMap<usize, ExternalRef>>,
    pub(super) scratch: Option<Scratch>,
}

/// What [`WeightOverrides`] hands to the session build.
pub(super) struct Parts {
    pub(super) model: OnnxModel,
    /// Replacements for the in-memory model's `raw_data`.
    pub(super) inline: HashMap<usize, Vec<u8>>,
    /// Replacements in the temporary file.
    pub(super) written: HashMap<usize, ExternalRef>,
    /// Replacements for `AddExternalInitializers`.
    pub(super) runtime: Vec<(usize, Vec<u8>)>,
    pub(super) scratch: Option<Scratch>,
}

impl WeightOverrides {
    /// Prepare to replace the initializers `targets` (indices into `model.initializers`). External-data
    /// initializers get a place in a temporary external-data file made under `placement.scratch_parent`; where
    /// that folder cannot be made they are inlined, in index order, while the serialized model stays under
    /// `placement.max_inline_bytes`, and held for `AddExternalInitializers` past it. Initializers stored inline are
    /// always inlined.
    pub fn new(model: OnnxModel, targets: &[usize], placement: &Placement) -> Result<WeightOverrides> {
        let mut targets = targets.to_vec();
        targets.sort_unstable();
        targets.dedup();
        let mut destinations = HashMap::with_capacity(targets.len());
        let mut external = Vec::new();
        for &i in &targets {
            let t = model.initializers.get(i).ok_or_else(|| Error::Internal(format!("no initializer {i}")))?;
            if t.is_external() {
                external.push((i, value_bytes(&model, t)? as u64));
            } else {
                destinations.insert(i, Destination::Inline);
            }
        }
        let scratch = match external.is_empty() {
            true => None,
            false => {
                let parents = match &placement.scratch_parent {
                    Some(parent) => vec![parent.clone()],
                    None => MergedData::default_parents(&model),
                };
                MergedData::create(&model, &parents)
                    .and_then(|data| data.reserve(&external).ok().map(|(file, places)| (data, file, places)))
            }
        };
        let scratch = match scratch {
            Some((data, file, places)) => {
                destinations.extend(places.into_iter().map(|(i, place)| (i, Destination::File(place))));
                Some(Scratch { data, file: Mutex::new(file) })
            }
            None => {
                let mut size = model.bytes().len() as u64;
                for &(i, length) in &external {
                    let name = model.initializers[i].name.len() as u64;
                    if size + length + 1024 > placement.max_inline_bytes {
                        destinations.insert(i, Destination::Runtime);
                    } else {
                        size += length + name + 32;
                        destinations.insert(i, Destination::Inline);
                    }
                }
                None
            }
        };
        Ok(WeightOverrides {
            model,
            destinations,
            held: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            scratch,
        })
    }

    /// The model whose initializers are replaced.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// Set the new value of initializer `index` (one of the `targets`): little-endian bytes in the initializer's
    /// own type and shape. A value bound for the temporary file is written now and dropped; if that write fails
    /// it is held for `AddExternalInitializers` instead. Safe to call from several threads.
    pub fn put(&self, index: usize, bytes: Vec<u8>) -> Result<()> {
        let t = self.model.initializers.get(index).ok_or_else(|| Error::Internal(format!("no initializer {index}")))?;
        if bytes.len() != value_bytes(&self.model, t)? {
            return Err(Error::Internal(format!(
                "override for `{}` has {} bytes; the initializer needs {} elements of type {}",
                t.name,
                bytes.len(),
                t.numel(),
                t.data_type
            )));
        }
        match (self.destinations.get(&index), &self.scratch) {
            (None, _) => Err(Error::Internal(format!("`{}` was not planned for replacement", t.name))),
            (Some(Destination::File(place)), Some(scratch)) => {
                let wrote = {
                    let mut file = scratch.file.lock();
                    file.seek(SeekFrom::Start(place.offset)).and_then(|_| file.write_all(&bytes))
                };
                if wrote.is_ok() {
                    self.written.lock().insert(index, place.clone());
                } else {
                    // Disk full or similar: this value takes the AddExternalInitializers route.
                    self.held.lock().insert(index, bytes);
                }
                Ok(())
            }
            (Some(_), _) => {
                self.held.lock().insert(index, bytes);
                Ok(())
            }
        }
    }

    /// How many replacement values went to the temporary file so far.
    pub fn written_to_file(&self) -> usize {
        self.written.lock().len()
    }

    /// How many replacement values are set.
    pub fn len(&self) -> usize {
        self.held.lock().len() + self.written.lock().len()
    }

    /// No replacement value is set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value set for `index`, if it is held in memory (inline or for `AddExternalInitializers`).
    pub fn held_value(&self, index: usize) -> Option<Vec<u8>> {
        self.held.lock().get(&index).cloned()
    }

    /// Split into what the session build needs.
    pub(super) fn into_parts(self) -> Parts {
        let WeightOverrides { model, destinations, held, written, scratch } = self;
        let mut inline = HashMap::new();
        let mut runtime = Vec::new();
        for (i, bytes) in held.into_inner() {
            if destinations.get(&i) == Some(&Destination::Inline) {
                inline.insert(i, bytes);
            } else {
                runtime.push((i, bytes));
            }
        }
        runtime.sort_unstable_by_key(|(i, _)| *i);
        Parts { model, inline, written: written.into_inner(), runtime, scratch }
    }
}

/// The byte length of initializer `t`'s value: float32, float16 or bfloat16 only (e.g. a quantized weight cannot
/// take a LoRA: a model error).
fn value_bytes(model: &OnnxModel, t: &onnx_proto::Initializer) -> Result<usize> {
    match onnx_proto::float_elem_size(t.data_type) {
        Some(elem) if elem > 0 => Ok(t.numel() * elem),
        _ => Err(Error::model_invalid(
            model.path(),
            format!(
                "`{}` has ONNX element type {}; a LoRA can only change float32, float16 or bfloat16 weights",
                t.name, t.data_type
            ),
        )),
    }
}
