//! Repeated runs of one graph with some inputs fixed (the UNet over a denoising loop), through ONNX Runtime's
//! I/O binding.
//!
//! The fixed inputs (text conditioning, `time_ids`) are converted to the graph's element type and bound once: on
//! CUDA, ORT copies them to the device at bind time and every later run reuses the device copy. Per run only the
//! changing inputs (latents, timestep) are bound; the output comes back to host memory, where the guidance and the
//! scheduler step run. On the CPU execution provider binding is a plain reference, so both devices share this path
//! (and every CPU parity test exercises it). The last run of a loop releases the graph's arena.

use ndarray::ArrayD;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::IoBinding;
use ort::value::DynValue;

use super::cancel::CancelToken;
use super::denormals::FlushDenormals;
use super::session::{explain, ModelSession};
use super::tensor::to_f32;
use crate::error::{Error, Result};

/// A graph bound for repeated runs; see the module docs. Created by [`ModelSession::bind`].
pub struct BoundGraph<'s> {
    graph: &'s ModelSession,
    binding: IoBinding,
    outputs: Vec<String>,
}

impl std::fmt::Debug for BoundGraph<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundGraph").field("graph", &self.graph.path()).field("outputs", &self.outputs).finish()
    }
}

impl ModelSession {
    /// Bind `fixed` inputs once and the outputs `wanted` to host memory, for repeated [`BoundGraph::run`]s.
    pub fn bind(&self, fixed: Vec<(String, DynValue)>, wanted: &[&str]) -> Result<BoundGraph<'_>> {
        for name in wanted {
            self.check_output(name)?;
        }
        let fail = |what: &str, e: ort::Error| Error::Inference {
            stage: self.stage(),
            message: format!("cannot bind {what}: {}", explain(e.to_string())),
        };
        let mut binding = self.with_session(|s| s.create_binding()).map_err(|e| fail("the graph", e))?;
        for (name, value) in &fixed {
            self.input(name)?;
            binding.bind_input(name.as_str(), value).map_err(|e| fail(&format!("input `{name}`"), e))?;
        }
        let host = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
            .map_err(|e| fail("host memory", e))?;
        for name in wanted {
            binding.bind_output_to_device(*name, &host).map_err(|e| fail(&format!("output `{name}`"), e))?;
        }
        Ok(BoundGraph { graph: self, binding, outputs: wanted.iter().map(|n| n.to_string()).collect() })
    }
}

impl BoundGraph<'_> {
    /// Bind `changing` inputs (replacing their previous values), run, and return the outputs as f32, in the order
    /// they were bound. With `last`,
    /// the graph's memory arena gives its free memory back after the call, so the activations of a loop do not
    /// stay reserved through the stages after it (the VAE decode is the memory peak of a run).
    ///
    /// A cancel during the call terminates it and gives `Error::Cancelled`.
    pub fn run(
        &mut self,
        changing: Vec<(String, DynValue)>,
        last: bool,
        cancel: &CancelToken,
    ) -> Result<Vec<ArrayD<f32>>> {
        let stage = self.graph.stage();
        cancel.check()?;
        for (name, value) in &changing {
            // (names were checked once by `bind`'s caller; ORT refuses unknown ones too)
            self.binding.bind_input(name.as_str(), value).map_err(|e| Error::Inference {
                stage,
                message: format!("cannot bind input `{name}`: {}", explain(e.to_string())),
            })?;
        }
        let opts = cancel.begin_run(stage, self.graph.arenas().filter(|_| last))?;
        let binding = &self.binding;
        let wanted = &self.outputs;
        let result = self.graph.with_session(|session| {
            let outputs = {
                let _flush = FlushDenormals::new();
                session.run_binding_with_options(binding, &opts)
            };
            match outputs {
                Ok(outputs) => wanted
                    .iter()
                    .map(|name| match outputs.get(name) {
                        Some(v) => to_f32(v, stage, name),
                        None => Err(Error::Inference { stage, message: format!("no output `{name}`") }),
                    })
                    .collect(),
                Err(e) => Err(Error::Inference { stage, message: explain(e.to_string()) }),
            }
        });
        cancel.end_run();
        match result {
            Err(_) if cancel.is_cancelled() => Err(Error::Cancelled),
            other => other,
        }
    }
}
