//! A temporary external-data file for merged weights too large to inline into the in-memory model (protobuf's
//! 2 GiB limit): ONNX Runtime then reads them like any external data, and no host copy outlives the session build.
//!
//! ONNX Runtime resolves every external `location` of a model loaded from memory against one folder and refuses
//! absolute paths, `..` and symlinks leading out of it. So the temporary folder becomes that folder: the model's own
//! data files appear in it as hard links (no copy, no write to the user's files) next to the file of merged weights.
//! The system temp folder is tried first, then the model's folder. Where neither works (a read-only model on another
//! filesystem than the temp folder) or the file cannot be written, the caller falls back to
//! `AddExternalInitializers` (correct, but ort then keeps those host values for the session's life). The file's
//! layout is fixed before any value exists ([`MergedData::reserve`]), so values are written as they are merged.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::onnx_proto::{ExternalRef, OnnxModel, TensorData};

/// Offsets of merged tensors are multiples of this (lets ONNX Runtime map them on every platform).
const ALIGN: u64 = 1 << 16;

/// The temporary folder: hard links to the model's data files plus one file of merged weights. Deleted on drop
/// (on Linux the session keeps what it read or mapped).
#[derive(Debug)]
pub struct MergedData {
    dir: tempfile::TempDir,
    file: String,
}

impl MergedData {
    /// Where the folder is tried, in order, when no parent is given: the system temp folder, then the model's
    /// folder (the parent of the graph's folder; hard links need the model's filesystem, and the temp folder is
    /// often another one: tmpfs, a container's overlay, another drive).
    pub fn default_parents(model: &OnnxModel) -> Vec<std::path::PathBuf> {
        let mut parents = vec![std::env::temp_dir()];
        parents.extend(model.path().parent().and_then(Path::parent).map(Path::to_path_buf));
        parents
    }

    /// A folder under the first of `parents` where it can be made, holding hard links to every external-data file
    /// of `model`; `None` if it can be made nowhere. A folder in the model's own folder is hidden (`.sdxlrt-merged-…`)
    /// and, like any, deleted on drop.
    pub fn create(model: &OnnxModel, parents: &[std::path::PathBuf]) -> Option<MergedData> {
        parents.iter().find_map(|parent| Self::create_in(model, parent))
    }

    fn create_in(model: &OnnxModel, parent: &Path) -> Option<MergedData> {
        let dir = tempfile::Builder::new().prefix(".sdxlrt-merged-").tempdir_in(parent).ok()?;
        let locations: BTreeSet<&str> = model
            .initializers
            .iter()
            .filter_map(|t| match &t.data {
                TensorData::External { location, .. } => Some(location.as_str()),
                _ => None,
            })
            .collect();
        for location in &locations {
            let source = model.external_file(location).ok()?;
            let link = dir.path().join(location);
            std::fs::create_dir_all(link.parent()?).ok()?;
            std::fs::hard_link(&source, &link).ok()?;
        }
        let file = (0..).map(|n| format!("sdxlrt-merged-{n}.bin")).find(|f| !locations.contains(f.as_str()))?;
        Some(MergedData { dir, file })
    }

    /// The folder to give ONNX Runtime as the external-data base.
    pub fn folder(&self) -> &Path {
        self.dir.path()
    }

    /// Lay out values of the given byte lengths (initializer index, length) one after another at aligned offsets
    /// of the merged-weights file, create the file at its full length (sparse until written) and return it with
    /// each value's place; the caller writes each value there.
    pub fn reserve(&self, lengths: &[(usize, u64)]) -> std::io::Result<(std::fs::File, HashMap<usize, ExternalRef>)> {
        let mut offset = 0u64;
        let mut places = HashMap::with_capacity(lengths.len());
        for &(index, length) in lengths {
            offset = offset.next_multiple_of(ALIGN);
            places.insert(index, ExternalRef { location: self.file.clone(), offset, length });
            offset += length;
        }
        let file =
            std::fs::File::options().read(true).write(true).create_new(true).open(self.dir.path().join(&self.file))?;
        file.set_len(offset)?;
        Ok((file, places))
    }
}
