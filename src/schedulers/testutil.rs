//! Test scaffolding shared by the scheduler tests: diffusers' dummy sample/noise/model, a scripted noise source,
//! `assert_close` (names the step and the worst element), golden loading and the golden runner every class uses
//! (`tests/fixtures/schedulers/*.safetensors`, written by `onnx/scheduler_goldens*.py`), and the ports of diffusers'
//! `full_loop` / `check_over_configs` unit-test loops.

use std::collections::VecDeque;

use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Map, Value};

use super::{resolve, Scheduler, SchedulerConfig};
use crate::rng::{NoiseSource, TorchGenerator};

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

/// diffusers' `dummy_noise_deter`: [`dummy_sample_deter`]'s values in reverse (`arange(768).flip(-1) / 768`).
pub(crate) fn dummy_noise_deter() -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[4, 3, 8, 8]), |ix| {
        let k = ((ix[1] * 8 + ix[2]) * 8 + ix[3]) * 4 + ix[0];
        (767 - k) as f32 / 768.0
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

/// `base` with the keys of `extra` (a JSON object) set over it, as a request's option map.
pub(crate) fn merged(base: Value, extra: Value) -> Map<String, Value> {
    let mut m = base.as_object().cloned().expect("object");
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    m
}

/// diffusers' `get_scheduler_config` of the Euler and k-family scheduler tests (`num_train_timesteps` 1100, linear
/// betas 0.0001..0.02) plus `extra`.
pub(crate) fn k_test_config(extra: Value) -> Map<String, Value> {
    merged(
        json!({"num_train_timesteps": 1100, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}),
        extra,
    )
}

/// Builds `class` with `overrides` on the class defaults.
pub(crate) fn build(class: &str, overrides: &Map<String, Value>, steps: usize) -> Box<dyn Scheduler> {
    resolve(Some(class), overrides, &SchedulerConfig::default()).expect("resolves").build(steps).expect("builds")
}

/// `sum(|x|)` and `mean(|x|)` in float64.
pub(crate) fn sum_mean(x: &ArrayD<f32>) -> (f64, f64) {
    let sum: f64 = x.iter().map(|v| f64::from(v.abs())).sum();
    (sum, sum / x.len() as f64)
}

/// Asserts diffusers' full-loop checks: `|sum − want_sum| < 1e-2` and `|mean − want_mean| < mean_tol` (1e-3 in most
/// of diffusers' tests).
#[track_caller]
pub(crate) fn assert_sum_mean(what: &str, (sum, mean): (f64, f64), (want_sum, want_mean): (f64, f64), mean_tol: f64) {
    assert!((sum - want_sum).abs() < 1e-2, "{what}: sum {sum} want {want_sum}");
    assert!((mean - want_mean).abs() < mean_tol, "{what}: mean {mean} want {want_mean}");
}

/// diffusers' `test_full_loop_*` of the Euler and k-family tests: 10 steps from `dummy_sample_deter *
/// init_noise_sigma`, noise from `torch.manual_seed(seed)` where the test passes a generator. Like diffusers' tests,
/// it feeds the *scaled* sample to `step` (their quirk, kept so that the sums match). With `t_start`, it is
/// `test_full_loop_with_noise`: the grid is cut at `t_start * order` and `dummy_noise_deter` is added at its first
/// sigma (`add_noise`).
pub(crate) fn full_loop(
    class: &str,
    overrides: &Map<String, Value>,
    seed: Option<u64>,
    t_start: Option<usize>,
) -> (f64, f64) {
    let mut s = build(class, overrides, 10);
    let mut noise: Box<dyn NoiseSource> = match seed {
        Some(seed) => Box::new(TorchGenerator::new(seed)),
        None => Box::new(ScriptedNoise::none()),
    };
    let mut sample = dummy_sample_deter() * s.init_noise_sigma();
    let begin = t_start.map_or(0, |t| t * s.order());
    if t_start.is_some() {
        s.set_begin_index(begin);
        sample = s.add_noise(sample.view(), dummy_noise_deter().view(), begin);
    }
    for i in begin..s.timesteps().len() {
        let t = s.timesteps()[i];
        sample = s.scale_model_input(sample.view(), i);
        let out = dummy_model(&sample, t);
        sample = s.step(out.view(), i, sample.view(), noise.as_mut()).expect("step");
    }
    sum_mean(&sample)
}

/// diffusers' `check_over_configs` / `check_over_forward` / `test_solver_order_and_type` for `class`: each config
/// (merged over `base`) resolves, survives a round trip through its JSON form (their save_config/from_pretrained)
/// with identical outputs, and a full loop of `steps` (from `dummy_sample_deter * init_noise_sigma`, the model
/// `dummy_model(scale_model_input(x), t) * model_scale`, noise from a seeded torch generator) stays finite. Returns
/// the number of (config, step count) pairs run.
pub(crate) fn sweep(class: &str, base: &Value, configs: &[Value], steps: &[usize], model_scale: f32) -> usize {
    let mut count = 0;
    for extra in configs {
        let overrides = merged(base.clone(), extra.clone());
        let direct = resolve(Some(class), &overrides, &SchedulerConfig::default())
            .unwrap_or_else(|e| panic!("{class} {extra}: {e}"));
        let text = serde_json::to_string(&direct.config).expect("serializes");
        let reloaded = resolve(None, &Map::new(), &SchedulerConfig::from_json(&text).expect("reloads"))
            .unwrap_or_else(|e| panic!("{class} {extra} reloaded: {e}"));
        for &n in steps {
            let (mut a, mut b) = (direct.build(n).expect("builds"), reloaded.build(n).expect("builds"));
            assert_eq!(a.timesteps(), b.timesteps(), "{class} {extra}");
            let (mut ga, mut gb) = (TorchGenerator::new(0), TorchGenerator::new(0));
            let mut xa = dummy_sample_deter() * a.init_noise_sigma();
            let mut xb = xa.clone();
            for i in 0..a.timesteps().len() {
                let t = a.timesteps()[i];
                let ia = a.scale_model_input(xa.view(), i);
                let ib = b.scale_model_input(xb.view(), i);
                xa = a.step((dummy_model(&ia, t) * model_scale).view(), i, xa.view(), &mut ga).expect("step");
                xb = b.step((dummy_model(&ib, t) * model_scale).view(), i, xb.view(), &mut gb).expect("step");
                assert!(xa.iter().all(|x| x.is_finite()), "{class} {extra} {n} steps: non-finite at evaluation {i}");
                assert_eq!(xa, xb, "{class} {extra} {n} steps: evaluation {i}");
            }
            count += 1;
        }
    }
    count
}

/// The configs diffusers' k-family tests sweep (`test_timesteps`, `test_betas`, `test_schedules`,
/// `test_prediction_type`, spacing), then the class's own `extra` ones; use with [`k_test_config`]'s base.
pub(crate) fn k_sweep_configs(extra: &[Value]) -> Vec<Value> {
    let mut configs: Vec<Value> = [10, 50, 100, 1000].iter().map(|n| json!({"num_train_timesteps": n})).collect();
    for (start, end) in [(0.00001, 0.0002), (0.0001, 0.002), (0.001, 0.02)] {
        configs.push(json!({"beta_start": start, "beta_end": end}));
    }
    configs.extend([
        json!({"beta_schedule": "linear"}),
        json!({"beta_schedule": "scaled_linear"}),
        json!({"prediction_type": "epsilon"}),
        json!({"prediction_type": "v_prediction"}),
        json!({"timestep_spacing": "leading", "steps_offset": 1}),
        json!({"timestep_spacing": "trailing"}),
    ]);
    configs.extend_from_slice(extra);
    configs
}

/// diffusers' `check_over_configs` for a k-family class: [`sweep`] over [`k_sweep_configs`]`(extra)` on
/// [`k_test_config`], 10 steps, the model output scaled by 0.1.
pub(crate) fn check_k_over_configs(class: &str, extra: &[Value]) {
    let configs = k_sweep_configs(extra);
    assert_eq!(sweep(class, &Value::Object(k_test_config(json!({}))), &configs, &[10], 0.1), configs.len());
}

/// The order × solver type × prediction type grid of diffusers' DPM-family tests (`test_solver_order_and_type`,
/// `test_thresholding`): `num_train_timesteps` 25 … 1000, then for every order 1–3, `solver_type` and prediction
/// type, one config per `variants` entry and one per `sample_max_value` in 0.5, 1, 2 with thresholding (plus
/// `threshold_extra`).
pub(crate) fn solver_configs(solver_types: &[&str], variants: &[Value], threshold_extra: &Value) -> Vec<Value> {
    let mut configs: Vec<Value> = [25, 50, 100, 999, 1000].iter().map(|n| json!({"num_train_timesteps": n})).collect();
    for order in [1, 2, 3] {
        for solver_type in solver_types {
            for prediction_type in ["epsilon", "sample", "v_prediction"] {
                let point =
                    json!({"solver_order": order, "solver_type": solver_type, "prediction_type": prediction_type});
                for v in variants {
                    configs.push(Value::Object(merged(point.clone(), v.clone())));
                }
                for threshold in [0.5, 1.0, 2.0] {
                    let t = merged(point.clone(), json!({"thresholding": true, "sample_max_value": threshold}));
                    configs.push(Value::Object(merged(Value::Object(t), threshold_extra.clone())));
                }
            }
        }
    }
    configs
}

/// The base config of diffusers' DPM-Solver unit tests (`get_scheduler_config`).
pub(crate) fn dpm_test_base() -> Value {
    json!({"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
           "solver_order": 2, "prediction_type": "epsilon", "thresholding": false, "sample_max_value": 1.0})
}

/// diffusers' DPM-family unit-test full loop (`dummy_sample_deter`, `dummy_model`, 10 steps unless given) through
/// the public API; `add_noise`: start from `alpha_t * x + sigma_t * noise` at the first step, as `add_noise` does.
/// Returns (sum |x|, mean |x|).
pub(crate) fn dpm_unit_loop(class: &str, config: &Value, steps: usize, start: usize, add_noise: bool) -> (f64, f64) {
    let overrides: Map<String, Value> = config.as_object().cloned().expect("object");
    let r = resolve(Some(class), &overrides, &SchedulerConfig::default()).expect("resolves");
    let mut s = r.build(steps).expect("builds");
    let mut sample = dummy_sample_deter();
    if add_noise {
        sample = s.add_noise(sample.view(), dummy_noise_deter().view(), start);
    }
    s.set_begin_index(start);
    let mut none = ScriptedNoise::none();
    for i in start..s.timesteps().len() {
        let t = s.timesteps()[i];
        let out = dummy_model(&sample, t);
        sample = s.step(out.view(), i, sample.view(), &mut none).expect("step");
    }
    sum_mean(&sample)
}

/// Runs every `unit_loops` entry of the `dpm_family` golden sidecar whose name starts with `prefix` and compares
/// with diffusers' sum/mean (the tolerances of diffusers' tests: 1e-2 on the sum, 1e-3 on the mean).
pub(crate) fn check_dpm_unit_loops(prefix: &str) -> usize {
    let g = Goldens::load("dpm_family");
    let loops = g.meta["unit_loops"].as_object().expect("unit_loops");
    let mut count = 0;
    for (name, l) in loops.iter().filter(|(n, _)| n.starts_with(prefix)) {
        let steps = l["steps"].as_u64().unwrap_or(10) as usize;
        let start = l["start"].as_u64().unwrap_or(0) as usize;
        let add_noise = l["add_noise"].as_bool().unwrap_or(false);
        let got = dpm_unit_loop(l["class"].as_str().expect("class"), &l["config"], steps, start, add_noise);
        let want = (l["sum"].as_f64().expect("sum"), l["mean"].as_f64().expect("mean"));
        assert_sum_mean(name, got, want, 1e-3);
        count += 1;
    }
    count
}

/// How a golden file is compared (tolerances per file; integer timesteps are always exact).
pub(crate) struct GoldenRules {
    /// `(rtol, atol)` for runs with fractional timesteps; `None`: timesteps must be exact.
    pub fractional_timesteps: Option<(f64, f64)>,
    /// Each evaluation starts from diffusers' own previous output (the golden `prev`) so that every comparison is
    /// per step, the stand-in model runs at diffusers' timestep, and the absolute floor is `1e-6 · max(1,
    /// max|input|)`; otherwise the run chains its own outputs with a floor of 1e-6.
    pub per_step: bool,
    /// `init_noise_sigma` must be bit-exact (else 1e-6 relative).
    pub exact_init_noise_sigma: bool,
}

/// `euler.safetensors` (`onnx/scheduler_goldens.py`): integer timesteps must be bit-identical; fractional ones
/// (Karras/exponential/continuous) are derived through numpy/torch transcendental functions that are not correctly
/// rounded, so 1e-6 relative.
pub(crate) const EULER_RULES: GoldenRules =
    GoldenRules { fractional_timesteps: Some((1e-6, 1e-6)), per_step: false, exact_init_noise_sigma: false };

/// `k_family.safetensors` (`onnx/scheduler_goldens_k.py`). Fractional timesteps (Karras/exponential `_sigma_to_t`,
/// KDPM2 midpoints) go through numpy's float32 `log`, which is not correctly rounded: one ulp of log σ moves t by up
/// to ~2e-6 relative where the training log-sigmas are dense (1e-4 absolute near t = 0, where w is clipped at 0 in
/// diffusers and lands just above it here). Per step: outputs near zero come from cancelling operands of size
/// max|input| (up to ~1e4 at zero terminal SNR, where σ0 = ((1 − 2⁻²⁴)/2⁻²⁴)^½ is 4096 in torch, whose float32 sqrt
/// is not correctly rounded, and 4095.9998 here), and one ulp of an operand is ~1e-7 of it. The scheduler's
/// internal state (Heun/KDPM2 predictor, LMS history) is its own.
pub(crate) const K_RULES: GoldenRules =
    GoldenRules { fractional_timesteps: Some((1e-5, 1e-4)), per_step: true, exact_init_noise_sigma: false };

/// `dpm_family.safetensors` (`onnx/scheduler_goldens_dpm.py`): int64 timesteps and `init_noise_sigma` exact.
pub(crate) const DPM_RULES: GoldenRules =
    GoldenRules { fractional_timesteps: None, per_step: false, exact_init_noise_sigma: true };

/// Worst errors over a class's golden runs.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Runs checked.
    pub runs: usize,
    /// UNet evaluations checked.
    pub evaluations: usize,
    /// Worst relative error of timesteps/sigmas/init_noise_sigma.
    pub table_rel: f64,
    /// Worst relative error (floored at 1e-3) of scale_model_input and step outputs.
    pub step_rel: f64,
    /// Worst absolute error of the step outputs.
    pub step_abs: f64,
    /// Worst error of the per-step tensors as a fraction of the allowed error (1.0 = at the tolerance).
    pub tol_used: f64,
}

/// The largest `|got − want| / (rtol·|want| + atol)`.
fn tolerance_used(got: &[f32], want: &[f32], rtol: f64, atol: f64) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - f64::from(w)).abs() / (rtol * f64::from(w).abs() + atol))
        .fold(0.0, f64::max)
}

/// Replays every run of `tests/fixtures/schedulers/<stem>.safetensors` (those of `class`, or all of them resolved
/// through the model config's class when `None`) through the public API and compares tables and every evaluation
/// (`scale_model_input` where the golden has it, else the identity; step outputs 1e-5 relative), the stand-in model
/// being `x · t / (t + 1) + 0.05`. Returns the worst errors.
pub(crate) fn check_goldens(stem: &str, class: Option<&str>, rules: &GoldenRules) -> Report {
    let g = Goldens::load(stem);
    let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
    let runs: Vec<Value> = g.meta["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| class.is_none_or(|c| r["class"] == c))
        .cloned()
        .collect();
    assert!(!runs.is_empty(), "no golden runs for {class:?} in {stem}");
    let mut report = Report::default();
    for run in &runs {
        check_run(&g, &model, class, run, rules, &mut report);
    }
    eprintln!(
        "{} goldens: {} runs, {} evaluations, max rel err tables {:e}, steps {:e} (max abs {:e}, {:.3} of the \
         tolerance)",
        class.unwrap_or(stem),
        report.runs,
        report.evaluations,
        report.table_rel,
        report.step_rel,
        report.step_abs,
        report.tol_used
    );
    report
}

fn check_run(
    g: &Goldens,
    model: &SchedulerConfig,
    class: Option<&str>,
    run: &Value,
    rules: &GoldenRules,
    report: &mut Report,
) {
    let name = run["run"].as_str().expect("run name");
    let steps = run["steps"].as_u64().expect("steps") as usize;
    let options = run["options"].as_object().cloned().unwrap_or_default();
    let mut s = resolve(class, &options, model)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .build(steps)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (want_ts, _) = g.tensor(&format!("{name}/timesteps"));
    let (want_ins, _) = g.tensor(&format!("{name}/init_noise_sigma"));
    match rules.fractional_timesteps {
        Some((rtol, atol)) if want_ts.iter().any(|t| t.fract() != 0.0) => {
            let e = assert_close(&format!("{name}: timesteps"), s.timesteps(), &want_ts, rtol, atol);
            report.table_rel = report.table_rel.max(e);
        }
        _ => assert_eq!(s.timesteps(), &want_ts[..], "{name}: timesteps"),
    }
    if g.has(&format!("{name}/sigmas")) {
        // Zero-SNR tables go through torch's float32 sqrt (not correctly rounded): ~2e-6 on some sigmas.
        let (want_sigmas, _) = g.tensor(&format!("{name}/sigmas"));
        let e = assert_close(&format!("{name}: sigmas"), s.sigmas(), &want_sigmas, 1e-5, 1e-9);
        report.table_rel = report.table_rel.max(e);
    } else {
        assert!(s.sigmas().is_empty(), "{name}: sigmas");
    }
    if rules.exact_init_noise_sigma {
        assert_eq!(s.init_noise_sigma(), want_ins[0], "{name}: init_noise_sigma");
    } else {
        let e = assert_close(&format!("{name}: init_noise_sigma"), &[s.init_noise_sigma()], &want_ins, 1e-6, 0.0);
        report.table_rel = report.table_rel.max(e);
    }

    let (sample0, _) = g.tensor(&format!("{name}/sample0"));
    let scaled = g.has(&format!("{name}/scaled")).then(|| g.tensor(&format!("{name}/scaled")).0);
    let (prev, _) = g.tensor(&format!("{name}/prev"));
    let draws: Vec<Vec<f32>> = if g.has(&format!("{name}/noise")) {
        g.tensor(&format!("{name}/noise")).0.chunks(64).map(<[f32]>::to_vec).collect()
    } else {
        Vec::new()
    };
    let n_draws = draws.len();
    let drawn: Vec<bool> = run["noise_drawn"].as_array().expect("noise_drawn").iter().map(|b| b == true).collect();
    assert_eq!(drawn.len(), s.timesteps().len(), "{name}: evaluations");
    let mut noise = ScriptedNoise::new(draws);
    let shape = IxDyn(&[1, 4, 4, 4]);
    let mut sample = ArrayD::from_shape_vec(shape.clone(), sample0).expect("shape");
    for i in 0..s.timesteps().len() {
        if rules.per_step && i > 0 {
            sample = ArrayD::from_shape_vec(shape.clone(), prev[(i - 1) * 64..i * 64].to_vec()).expect("shape");
        }
        let atol =
            if rules.per_step { 1e-6 * sample.iter().fold(1.0f64, |m, v| m.max(f64::from(v.abs()))) } else { 1e-6 };
        let t = s.timesteps()[i];
        let calls_before = noise.calls;
        let x = s.scale_model_input(sample.view(), i);
        match &scaled {
            Some(scaled) => {
                let (got, want): (Vec<f32>, _) = (x.iter().copied().collect(), &scaled[i * 64..(i + 1) * 64]);
                let what = format!("{name}: evaluation {i} (t={t}) scale_model_input");
                report.step_rel = report.step_rel.max(assert_close(&what, &got, want, 1e-5, atol));
                report.tol_used = report.tol_used.max(tolerance_used(&got, want, 1e-5, atol));
            }
            None => assert_eq!(x, sample, "{name}: scale_model_input is the identity"),
        }
        // The stand-in model (per step: at diffusers' timestep; fractional ones may differ in the last bits, checked
        // above).
        let tm = if rules.per_step { want_ts[i] } else { t };
        let out = x.mapv(|v| v * tm / (tm + 1.0) + 0.05);
        sample = s.step(out.view(), i, sample.view(), &mut noise).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(noise.calls - calls_before == 1, drawn[i], "{name}: evaluation {i} noise drawn");
        let want = &prev[i * 64..(i + 1) * 64];
        let got: Vec<f32> = sample.iter().copied().collect();
        report.step_abs = report.step_abs.max(max_abs_diff(&got, want));
        report.tol_used = report.tol_used.max(tolerance_used(&got, want, 1e-5, atol));
        let what = format!("{name}: evaluation {i} (t={t}) step output");
        report.step_rel = report.step_rel.max(assert_close(&what, &got, want, 1e-5, atol));
        report.evaluations += 1;
    }
    assert_eq!(noise.calls, n_draws, "{name}: noise draws");
    report.runs += 1;
}

/// The two-evaluation schedulers (Heun, KDPM2, KDPM2 a) through `name`: `2n − 1` timesteps, order 2, progress in
/// requested steps, one step is one evaluation, zero steps an error.
pub(crate) fn check_two_evaluations(name: &str, class: &str) {
    let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
    let r = resolve(Some(name), &Map::new(), &model).expect("resolves");
    assert_eq!(r.class_name, class);
    let s = r.build(5).expect("builds");
    assert_eq!((s.order(), s.timesteps().len()), (2, 9));
    let progress: Vec<usize> = (0..9).map(|i| s.completed_steps(i)).collect();
    assert_eq!(progress, vec![0, 1, 1, 2, 2, 3, 3, 4, 5]);
    let one = r.build(1).expect("builds");
    assert_eq!((one.timesteps().len(), one.completed_steps(0)), (1, 1));
    assert!(r.build(0).is_err());
}

/// What the k-family classes with sigma conversions (LMS excepted) reject: beta sigmas (unsupported), the
/// `rescale_betas_zero_snr` they lack, the legacy `original_sample` prediction and, unless `sample_prediction`,
/// `sample` (NotImplementedError in diffusers' `step`).
pub(crate) fn check_k_request_errors(class: &str, sample_prediction: bool) {
    use crate::error::ErrorCode;
    let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
    let err = resolve(Some(class), &k_test_config(json!({"use_beta_sigmas": true})), &model).expect_err("beta");
    assert_eq!(err.code(), ErrorCode::Unsupported);
    let err = resolve(Some(class), &k_test_config(json!({"rescale_betas_zero_snr": true})), &model).expect_err("snr");
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    let err =
        resolve(Some(class), &k_test_config(json!({"prediction_type": "original_sample"})), &model).expect_err("os");
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    if !sample_prediction {
        let err =
            resolve(Some(class), &k_test_config(json!({"prediction_type": "sample"})), &SchedulerConfig::default())
                .expect_err("sample");
        assert!(err.to_string().contains("data.scheduler.prediction_type"), "{err}");
    }
}
