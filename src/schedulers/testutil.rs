//! Test helpers for scheduler tests: diffusers' dummy sample/model, a scripted noise source, golden loading and an
//! `assert_close` that names the step and the worst element.

use std::collections::VecDeque;

use ndarray::{ArrayD, IxDyn};

use crate::rng::NoiseSource;

/// SDXL base 1.0's `scheduler/scheduler_config.json` (written by `onnx/scheduler_goldens.py`).
pub(crate) const SDXL_JSON: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedulers/sdxl_scheduler_config.json"));

/// diffusers `SchedulerCommonTest.dummy_sample_deter`: `arange(4*3*8*8) / 768` reshaped `(3, 8, 8, 4)` and permuted
/// to `(4, 3, 8, 8)` (so element `[b, c, h, w]` is `(((c*8 + h)*8 + w)*4 + b) / 768`).
pub(crate) fn dummy_sample_deter() -> ArrayD<f32> {
    let (b, c, h, w) = (4usize, 3usize, 8usize, 8usize);
    ArrayD::from_shape_fn(IxDyn(&[b, c, h, w]), |ix| {
        let v = ((ix[1] * h + ix[2]) * w + ix[3]) * b + ix[0];
        v as f32 / 768.0
    })
}

/// diffusers `dummy_model`: `sample * t / (t + 1)` in float32.
pub(crate) fn dummy_model(sample: &ArrayD<f32>, t: f32) -> ArrayD<f32> {
    sample.mapv(|x| x * t / (t + 1.0))
}

/// A noise source that hands out prepared tensors in order and records every request.
pub(crate) struct ScriptedNoise {
    queue: VecDeque<Vec<f32>>,
    /// How many times `randn` was called.
    pub calls: usize,
}

impl ScriptedNoise {
    /// Noise to hand out, one entry per `randn` call.
    pub(crate) fn new(draws: Vec<Vec<f32>>) -> Self {
        ScriptedNoise { queue: draws.into(), calls: 0 }
    }
    /// A source that must never be asked (deterministic schedulers).
    pub(crate) fn none() -> Self {
        Self::new(Vec::new())
    }
}

impl NoiseSource for ScriptedNoise {
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        self.calls += 1;
        let want: usize = shape.iter().product();
        let got =
            self.queue.pop_front().unwrap_or_else(|| panic!("unexpected noise draw #{} for {shape:?}", self.calls));
        assert_eq!(got.len(), want, "scripted noise draw #{} has the wrong size", self.calls);
        got
    }
}

/// Asserts `|got - want| <= atol + rtol * |want|` element-wise; on failure prints `what`, the worst element's index,
/// both values and the worst relative error. Returns the worst relative error (against `max(|want|, 1e-3)`).
#[track_caller]
pub(crate) fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f64, atol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length got {} want {}", got.len(), want.len());
    let mut worst: Option<(usize, f64, f64)> = None; // (index, excess over tolerance, rel err)
    let mut max_rel = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        let diff = (g - w).abs();
        // Relative to |want|, floored at 1e-3 so that near-zero elements report their absolute error.
        let rel = diff / w.abs().max(1e-3);
        max_rel = max_rel.max(rel);
        let excess = diff - (atol + rtol * w.abs());
        let excess = if excess.is_nan() { f64::INFINITY } else { excess };
        if excess > 0.0 && worst.is_none_or(|(_, e, _)| excess > e) {
            worst = Some((i, excess, rel));
        }
    }
    if let Some((i, _, rel)) = worst {
        panic!(
            "{what}: element {i}: got {:e} want {:e} (rel err {rel:e}, rtol {rtol:e}, atol {atol:e})",
            got[i], want[i]
        );
    }
    max_rel
}

/// The largest `|got - want|`.
pub(crate) fn max_abs_diff(got: &[f32], want: &[f32]) -> f64 {
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).abs()).fold(0.0, f64::max)
}

/// Goldens written by `onnx/scheduler_goldens.py`: a safetensors file of float32 tensors plus its JSON sidecar.
pub(crate) struct Goldens {
    bytes: Vec<u8>,
    /// The sidecar (`runs`, `model_config`, versions).
    pub meta: serde_json::Value,
}

impl Goldens {
    /// Loads `tests/fixtures/schedulers/<stem>.safetensors` and `<stem>.json`.
    pub(crate) fn load(stem: &str) -> Self {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedulers/");
        let bytes = std::fs::read(format!("{dir}{stem}.safetensors")).expect("golden safetensors present");
        let meta_text = std::fs::read_to_string(format!("{dir}{stem}.json")).expect("golden sidecar present");
        Goldens { bytes, meta: serde_json::from_str(&meta_text).expect("sidecar is JSON") }
    }

    /// Tensor `name` as float32 values and its shape.
    pub(crate) fn tensor(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        let t = st.tensor(name).unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name} dtype");
        let data = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        (data, t.shape().to_vec())
    }

    /// Whether tensor `name` exists.
    pub(crate) fn has(&self, name: &str) -> bool {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        st.names().contains(&name)
    }
}
