//! `EulerAncestralDiscreteScheduler` ("Euler a"): ancestral sampling with Euler steps, k-diffusion's
//! `sample_euler_ancestral` (Karras et al. 2022, <https://arxiv.org/abs/2206.00364>, with the ancestral split of each
//! step into a deterministic part down to `σ_down` and fresh noise of size `σ_up`).
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_euler_ancestral_discrete.py` of diffusers
//! 0.42.1: `__init__` (tables), `set_timesteps`, `scale_model_input` and `step`. Every step draws one noise tensor
//! of the model output's shape (`randn_tensor(model_output.shape, generator=…)`), the last one included.

use ndarray::{ArrayD, ArrayViewD, Zip};

use super::common::{
    check_step_call, draw_noise, k_init_noise_sigma, k_pred_original, k_scale_input, KClassSpec, KSigmaConfig,
};
use super::{Scheduler, SchedulerConfig};
use crate::error::Result;
use crate::rng::NoiseSource;

/// The options `EulerAncestralDiscreteScheduler` accepts: its diffusers `__init__` arguments.
pub(crate) const KEYS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
];

/// diffusers' defaults for [`KEYS`].
pub(crate) fn defaults() -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": null, "prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0,
        "rescale_betas_zero_snr": false
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

const SPEC: KClassSpec = KClassSpec {
    class: "EulerAncestralDiscreteScheduler",
    beta_start: 0.0001,
    beta_end: 0.02,
    exp_schedule: false,
    sigma_conversions: false,
    zero_snr: true,
    sample_prediction: false,
};

/// Validated Euler-ancestral options, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EulerAncestralConfig {
    k: KSigmaConfig,
}

impl EulerAncestralConfig {
    /// Applies diffusers' class defaults to `c` and rejects what diffusers rejects (`sample` prediction raises
    /// NotImplementedError in its `step`).
    pub(crate) fn new(c: &SchedulerConfig) -> Result<Self> {
        Ok(EulerAncestralConfig { k: KSigmaConfig::parse(c, &SPEC)? })
    }

    /// `EulerAncestralDiscreteScheduler(**config).set_timesteps(num_inference_steps)`.
    pub(crate) fn build(&self, num_inference_steps: usize) -> Result<EulerAncestralDiscreteScheduler> {
        let tables = self.k.tables();
        let (timesteps, sigmas) = self.k.grid(&tables, num_inference_steps, false)?;
        // sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        let init_noise_sigma = k_init_noise_sigma(&sigmas, self.k.spacing);
        Ok(EulerAncestralDiscreteScheduler {
            config: self.clone(),
            timesteps: timesteps.into_iter().map(|t| t as f32).collect(),
            sigmas,
            init_noise_sigma,
            begin_index: None,
        })
    }
}

/// A built Euler-ancestral scheduler for one request (no history: each step needs only its two sigmas).
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    config: EulerAncestralConfig,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    begin_index: Option<usize>,
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn order(&self) -> usize {
        1
    }

    fn scale_model_input(&mut self, sample: ArrayViewD<'_, f32>, index: usize) -> ArrayD<f32> {
        k_scale_input(sample, self.sigmas[index])
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        check_step_call(
            SPEC.class,
            index,
            self.timesteps.len(),
            self.begin_index,
            model_output.shape(),
            sample.shape(),
        )?;
        let sigma = self.sigmas[index];

        // 1. compute predicted original sample (x_0) from sigma-scaled predicted noise
        let pred_original = k_pred_original(self.config.k.prediction_type, sigma, model_output.view(), sample.view());

        // The ancestral split (float32 scalars, as the 0-d torch tensors):
        // σ_up = (σ_to² (σ_from² − σ_to²) / σ_from²)^½, σ_down = (σ_to² − σ_up²)^½.
        let sigma_from = sigma;
        let sigma_to = self.sigmas[index + 1];
        let sigma_up =
            (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();

        // 2. Convert to an ODE derivative and take the Euler step to σ_down.
        let dt = sigma_down - sigma;
        let mut prev = sample.to_owned();
        Zip::from(&mut prev).and(&pred_original).for_each(|x, &x0| {
            let derivative = (*x - x0) / sigma;
            *x += derivative * dt;
        });

        // 3. Add fresh noise of size σ_up (drawn on every step, also when σ_up = 0).
        let eps = draw_noise(noise, model_output.shape())?;
        // `prev` is a fresh standard-layout array, so its iteration order is the noise's row-major order.
        prev.iter_mut().zip(eps).for_each(|(x, e)| *x += e * sigma_up);
        Ok(prev)
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    fn completed_steps(&self, index: usize) -> usize {
        index + 1
    }
}

/// The golden-run checker shared by the k-family and DDIM tests: replays every run of
/// `tests/fixtures/schedulers/k_family.safetensors` (written by `onnx/scheduler_goldens_k.py`) through the public API.
#[cfg(test)]
pub(super) mod k_goldens {
    use ndarray::{ArrayD, IxDyn, Zip};
    use serde_json::{json, Map, Value};

    use super::super::testutil::{
        assert_close, dummy_model, dummy_sample_deter, max_abs_diff, Goldens, ScriptedNoise, SDXL_JSON,
    };
    use super::super::{resolve, Scheduler, SchedulerConfig};
    use crate::rng::{NoiseSource, TorchGenerator};

    /// diffusers' `get_scheduler_config` of the k-family scheduler tests (`num_train_timesteps` 1100, linear betas
    /// 0.0001..0.02) plus `extra`.
    pub(in crate::schedulers) fn test_config(extra: Value) -> Map<String, Value> {
        let mut m =
            json!({"num_train_timesteps": 1100, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"})
                .as_object()
                .cloned()
                .expect("object");
        if let Value::Object(e) = extra {
            m.extend(e);
        }
        m
    }

    /// Builds `class` with `overrides` on the class defaults.
    pub(in crate::schedulers) fn build(
        class: &str,
        overrides: &Map<String, Value>,
        steps: usize,
    ) -> Box<dyn Scheduler> {
        resolve(Some(class), overrides, &SchedulerConfig::default()).expect("resolves").build(steps).expect("builds")
    }

    /// `sum(|x|)` and `mean(|x|)` in float64.
    pub(in crate::schedulers) fn sum_mean(x: &ArrayD<f32>) -> (f64, f64) {
        let sum: f64 = x.iter().map(|v| f64::from(v.abs())).sum();
        (sum, sum / x.len() as f64)
    }

    /// diffusers' `test_full_loop_*` of the k-family tests: 10 steps from `dummy_sample_deter * init_noise_sigma`,
    /// noise from `torch.manual_seed(seed)` where the test passes a generator. Like diffusers' tests, it feeds the
    /// *scaled* sample to `step` (their quirk, kept so that the sums match). With `t_start`, it is
    /// `test_full_loop_with_noise`: the grid is cut at `t_start * order` and `dummy_noise_deter` is added at its
    /// first sigma (`add_noise`).
    pub(in crate::schedulers) fn full_loop(
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
            let sigma = s.sigmas()[begin];
            Zip::from(&mut sample).and(&dummy_noise_deter()).for_each(|x, &n| *x += n * sigma);
        }
        for i in begin..s.timesteps().len() {
            let t = s.timesteps()[i];
            sample = s.scale_model_input(sample.view(), i);
            let out = dummy_model(&sample, t);
            sample = s.step(out.view(), i, sample.view(), noise.as_mut()).expect("step");
        }
        sum_mean(&sample)
    }

    /// diffusers' `dummy_noise_deter`: [`dummy_sample_deter`]'s values in reverse (`arange(768).flip(-1) / 768`).
    pub(in crate::schedulers) fn dummy_noise_deter() -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(&[4, 3, 8, 8]), |ix| {
            let k = ((ix[1] * 8 + ix[2]) * 8 + ix[3]) * 4 + ix[0];
            (767 - k) as f32 / 768.0
        })
    }

    /// diffusers' `check_over_configs`, as the Euler port does it: the config builds, runs three steps with finite
    /// outputs, and gives the same outputs after a round trip through its JSON form.
    pub(in crate::schedulers) fn check_over_config(class: &str, overrides: &Map<String, Value>) {
        let direct = resolve(Some(class), overrides, &SchedulerConfig::default()).expect("resolves");
        let text = serde_json::to_string(&direct.config).expect("serializes");
        let reloaded =
            resolve(None, &Map::new(), &SchedulerConfig::from_json(&text).expect("reloads")).expect("resolves");
        let (mut a, mut b) = (direct.build(10).expect("builds"), reloaded.build(10).expect("builds"));
        assert_eq!(a.timesteps(), b.timesteps(), "{overrides:?}");
        let mut xa = dummy_sample_deter() * a.init_noise_sigma();
        let mut xb = xa.clone();
        let (mut na, mut nb) = (TorchGenerator::new(0), TorchGenerator::new(0));
        for i in 0..3.min(a.timesteps().len()) {
            let t = a.timesteps()[i];
            let ia = a.scale_model_input(xa.view(), i);
            let ib = b.scale_model_input(xb.view(), i);
            xa = a.step((dummy_model(&ia, t) * 0.1f32).view(), i, xa.view(), &mut na).expect("step");
            xb = b.step((dummy_model(&ib, t) * 0.1f32).view(), i, xb.view(), &mut nb).expect("step");
            assert!(xa.iter().all(|x| x.is_finite()), "{overrides:?}: non-finite output at {i}");
            assert_eq!(xa, xb, "{overrides:?}: step {i}");
        }
    }

    /// Worst errors over a class's runs.
    #[derive(Debug, Default)]
    pub(in crate::schedulers) struct Report {
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

    /// Checks every golden run of `class` (tolerance 1e-5 relative + 1e-6 absolute per element and step; integer
    /// timesteps exact) and returns the worst errors.
    pub(in crate::schedulers) fn check_class(class: &str) -> Report {
        let g = Goldens::load("k_family");
        let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        let runs: Vec<Value> =
            g.meta["runs"].as_array().expect("runs").iter().filter(|r| r["class"] == class).cloned().collect();
        assert!(!runs.is_empty(), "no golden runs for {class}");
        let mut report = Report::default();
        for run in &runs {
            check_run(&g, &model, class, run, &mut report);
        }
        eprintln!(
            "{class} goldens: {} runs, {} evaluations, max rel err tables {:e}, steps {:e} (max abs {:e}, {:.3} of \
             the tolerance)",
            report.runs, report.evaluations, report.table_rel, report.step_rel, report.step_abs, report.tol_used
        );
        report
    }

    fn check_run(g: &Goldens, model: &SchedulerConfig, class: &str, run: &Value, report: &mut Report) {
        let name = run["run"].as_str().expect("run name");
        let steps = run["steps"].as_u64().expect("steps") as usize;
        let options = run["options"].as_object().cloned().unwrap_or_default();
        let mut s = resolve(Some(class), &options, model).expect("resolves").build(steps).expect("builds");
        let (want_ts, _) = g.tensor(&format!("{name}/timesteps"));
        let (want_ins, _) = g.tensor(&format!("{name}/init_noise_sigma"));
        if want_ts.iter().all(|t| t.fract() == 0.0) {
            assert_eq!(s.timesteps(), &want_ts[..], "{name}: timesteps");
        } else {
            // Fractional timesteps (Karras/exponential `_sigma_to_t`, KDPM2 midpoints) go through numpy's float32
            // `log`, which is not correctly rounded: one ulp of log σ moves t by up to ~2e-6 relative where the
            // training log-sigmas are dense (1e-4 absolute near t = 0, where w is clipped at 0 in diffusers and
            // lands just above it here).
            let e = assert_close(&format!("{name}: timesteps"), s.timesteps(), &want_ts, 1e-5, 1e-4);
            report.table_rel = report.table_rel.max(e);
        }
        if g.has(&format!("{name}/sigmas")) {
            let (want_sigmas, _) = g.tensor(&format!("{name}/sigmas"));
            let e = assert_close(&format!("{name}: sigmas"), s.sigmas(), &want_sigmas, 1e-5, 1e-9);
            report.table_rel = report.table_rel.max(e);
        } else {
            assert!(s.sigmas().is_empty(), "{name}: sigmas");
        }
        let e = assert_close(&format!("{name}: init_noise_sigma"), &[s.init_noise_sigma()], &want_ins, 1e-6, 0.0);
        report.table_rel = report.table_rel.max(e);

        let (sample0, _) = g.tensor(&format!("{name}/sample0"));
        let (scaled, _) = g.tensor(&format!("{name}/scaled"));
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
        // Each evaluation starts from diffusers' own previous output (the golden `prev`), so that every comparison
        // is per step; the scheduler's internal state (Heun/KDPM2 predictor, LMS history) is its own.
        //
        // Per element: |got − want| ≤ 1e-5·|want| + 1e-6·max(1, max|input|). The floor is relative to the step's
        // operands: outputs near zero come from cancelling operands of size max|input| (up to ~1e4 at zero terminal
        // SNR, where σ0 = ((1 − 2⁻²⁴)/2⁻²⁴)^½ is 4096 in torch, whose float32 sqrt is not correctly rounded, and
        // 4095.9998 here), and one ulp of an operand is ~1e-7 of it.
        for i in 0..s.timesteps().len() {
            let input = if i == 0 { &sample0[..] } else { &prev[(i - 1) * 64..i * 64] };
            let sample = ArrayD::from_shape_vec(IxDyn(&[1, 4, 4, 4]), input.to_vec()).expect("shape");
            let input_max = input.iter().fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
            let t = s.timesteps()[i];
            let calls_before = noise.calls;
            let x = s.scale_model_input(sample.view(), i);
            let got: Vec<f32> = x.iter().copied().collect();
            let e = assert_close(
                &format!("{name}: evaluation {i} (t={t}) scale_model_input"),
                &got,
                &scaled[i * 64..(i + 1) * 64],
                1e-5,
                1e-6 * input_max,
            );
            report.step_rel = report.step_rel.max(e);
            report.tol_used =
                report.tol_used.max(tolerance_used(&got, &scaled[i * 64..(i + 1) * 64], 1e-5, 1e-6 * input_max));
            // The stand-in model at diffusers' timestep (fractional ones may differ in the last bits, checked above).
            let tm = want_ts[i];
            let out = x.mapv(|v| v * tm / (tm + 1.0) + 0.05);
            let next = s.step(out.view(), i, sample.view(), &mut noise).expect("step");
            assert_eq!(noise.calls - calls_before == 1, drawn[i], "{name}: evaluation {i} noise drawn");
            let want = &prev[i * 64..(i + 1) * 64];
            let got: Vec<f32> = next.iter().copied().collect();
            report.step_abs = report.step_abs.max(max_abs_diff(&got, want));
            report.tol_used = report.tol_used.max(tolerance_used(&got, want, 1e-5, 1e-6 * input_max));
            let e = assert_close(
                &format!("{name}: evaluation {i} (t={t}) step output"),
                &got,
                want,
                1e-5,
                1e-6 * input_max,
            );
            report.step_rel = report.step_rel.max(e);
            report.evaluations += 1;
        }
        assert_eq!(noise.calls, n_draws, "{name}: noise draws");
        report.runs += 1;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::super::euler_ancestral::k_goldens::{self, check_over_config, full_loop, test_config};
    use super::super::resolve;
    use super::super::testutil::SDXL_JSON;
    use super::super::SchedulerConfig;
    use crate::error::ErrorCode;

    const CLASS: &str = "EulerAncestralDiscreteScheduler";

    #[test]
    fn matches_diffusers_goldens_for_every_option_set() {
        let r = k_goldens::check_class(CLASS);
        assert!(r.runs >= 12, "{r:?}");
    }

    /// diffusers `test_full_loop_no_noise` (the generator is `torch.manual_seed(0)`; Euler a always draws).
    #[test]
    fn full_loop_matches_diffusers() {
        let (sum, mean) = full_loop(CLASS, &test_config(json!({})), Some(0), None);
        assert!((sum - 152.3192).abs() < 1e-2, "sum {sum}");
        assert!((mean - 0.1983).abs() < 1e-3, "mean {mean}");
    }

    #[test]
    fn full_loop_v_prediction_matches_diffusers() {
        let (sum, mean) = full_loop(CLASS, &test_config(json!({"prediction_type": "v_prediction"})), Some(0), None);
        assert!((sum - 108.4439).abs() < 1e-2, "sum {sum}");
        assert!((mean - 0.1412).abs() < 1e-3, "mean {mean}");
    }

    #[test]
    fn full_loop_with_noise_matches_diffusers() {
        let (sum, mean) = full_loop(CLASS, &test_config(json!({})), Some(0), Some(8));
        assert!((sum - 56163.0508).abs() < 1e-2, "sum {sum}");
        assert!((mean - 73.1290).abs() < 1e-3, "mean {mean}");
    }

    #[test]
    fn check_over_configs() {
        for n in [10, 50, 100, 1000] {
            check_over_config(CLASS, &test_config(json!({"num_train_timesteps": n})));
        }
        for (start, end) in [(0.00001, 0.0002), (0.0001, 0.002), (0.001, 0.02)] {
            check_over_config(CLASS, &test_config(json!({"beta_start": start, "beta_end": end})));
        }
        for extra in [
            json!({"beta_schedule": "linear"}),
            json!({"beta_schedule": "scaled_linear"}),
            json!({"prediction_type": "epsilon"}),
            json!({"prediction_type": "v_prediction"}),
            json!({"rescale_betas_zero_snr": true}),
            json!({"rescale_betas_zero_snr": false}),
            json!({"timestep_spacing": "leading", "steps_offset": 1}),
            json!({"timestep_spacing": "trailing"}),
        ] {
            check_over_config(CLASS, &test_config(extra));
        }
    }

    #[test]
    fn options_diffusers_lacks_are_request_errors() {
        let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        for overrides in [json!({"use_karras_sigmas": true}), json!({"final_sigmas_type": "zero"})] {
            let err = resolve(Some("Euler a"), overrides.as_object().expect("object"), &model).expect_err("key");
            assert_eq!(err.code(), ErrorCode::InvalidRequest, "{err}");
        }
        // "sample" raises NotImplementedError in diffusers' step.
        let err =
            resolve(Some("Euler a"), &test_config(json!({"prediction_type": "sample"})), &model).expect_err("sample");
        assert!(err.to_string().contains("data.scheduler.prediction_type"), "{err}");
        // The Karras suffix names an option Euler a does not have.
        let err = resolve(Some("Euler a Karras"), &Map::new(), &model).expect_err("karras");
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{err}");
    }

    #[test]
    fn sdxl_grid_draws_noise_on_every_step() {
        let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        let r = resolve(Some("Euler a"), &Map::new(), &model).expect("resolves");
        assert_eq!(r.class_name, CLASS);
        let mut s = r.build(5).expect("builds");
        assert_eq!(s.timesteps(), &[801.0, 601.0, 401.0, 201.0, 1.0]);
        assert_eq!((s.order(), s.completed_steps(0), s.completed_steps(4)), (1, 1, 5));
        let x = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[1, 4, 2, 2]));
        let mut noise = super::super::testutil::ScriptedNoise::new(vec![vec![0.0; 16]; 5]);
        for i in 0..5 {
            s.step(x.view(), i, x.view(), &mut noise).expect("step");
        }
        assert_eq!(noise.calls, 5);
    }
}
