//! `ModelSession`: one ONNX graph, its declared inputs and outputs, and a mutex around the `ort` session
//! (`run` needs `&mut` in ort rc.15; concurrent requests take turns per graph).

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynValue, ValueType};
use parking_lot::Mutex;

use super::cancel::CancelToken;
use super::tensor::{to_f32, Elem};
use crate::error::{Error, Result};

/// Session settings shared by every graph of an engine.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    /// Threads inside one operator; `None` lets ONNX Runtime pick (one per physical core).
    pub intra_op_threads: Option<usize>,
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
    path: PathBuf,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    session: Mutex<Session>,
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
    /// Load `path` (external data files are resolved beside it). `stage` names the graph in errors.
    pub fn load(
        env: &ort::environment::Environment,
        path: &Path,
        stage: &'static str,
        config: &SessionConfig,
    ) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::ModelNotFound { path: path.to_path_buf(), message: format!("{stage} graph missing") });
        }
        let invalid = |e: ort::Error| Error::model_invalid(path, format!("ONNX Runtime cannot load the {stage}: {e}"));
        let mut builder = Session::builder(env).map_err(invalid)?;
        builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| invalid(e.into()))?;
        if let Some(n) = config.intra_op_threads {
            builder = builder.with_intra_threads(n).map_err(|e| invalid(e.into()))?;
        }
        let session = builder.commit_from_file(path).map_err(invalid)?;
        Ok(ModelSession {
            stage,
            path: path.to_path_buf(),
            inputs: specs(session.inputs()),
            outputs: specs(session.outputs()),
            session: Mutex::new(session),
        })
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

    /// Run the graph and return the `wanted` outputs as f32 arrays, in that order.
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
            if !self.has_output(name) {
                let have: Vec<_> = self.outputs.iter().map(|o| o.name.as_str()).collect();
                return Err(Error::model_invalid(
                    &self.path,
                    format!("{} has no output `{name}` (outputs: {have:?})", self.stage),
                ));
            }
        }
        let opts = cancel.begin_run(self.stage)?;
        let result = {
            let mut session = self.session.lock();
            let outputs = session.run_with_options(inputs, &*opts);
            let extracted = match outputs {
                Ok(outputs) => wanted
                    .iter()
                    .map(|name| match outputs.get(name) {
                        Some(v) => to_f32(v, self.stage, name),
                        None => Err(Error::Inference { stage: self.stage, message: format!("no output `{name}`") }),
                    })
                    .collect::<Result<Vec<_>>>(),
                Err(e) => Err(Error::Inference { stage: self.stage, message: e.to_string() }),
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
