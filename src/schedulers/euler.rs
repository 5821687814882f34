//! `EulerDiscreteScheduler`: Euler's method on the probability-flow ODE in sigma space, Algorithm 2 of Karras et al.
//! 2022 (<https://arxiv.org/abs/2206.00364>), with the optional "churn" noise of that algorithm.
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_euler_discrete.py` of diffusers 0.42.1:
//! `__init__` (tables), `set_timesteps` (grid), `scale_model_input` and `step`. The step index is the position in
//! [`Scheduler::timesteps`], as diffusers' `_step_index`; no float timestep is ever looked up.

use ndarray::{ArrayD, ArrayViewD, Zip};

use super::common::{
    exponential_sigmas, karras_sigmas, ln_f32, np_interp_index, option_field, parse_betas, parse_choice,
    parse_prediction_type, parse_spacing, sigma_to_t, spaced_timesteps, torch_linspace_f32, BetaSchedule, FinalSigmas,
    PredictionType, SigmaConversion, TimestepSpacing, TrainingTables,
};
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// The options `EulerDiscreteScheduler` accepts: its diffusers `__init__` arguments, then the `step()` arguments
/// `s_churn`, `s_tmin`, `s_tmax`, `s_noise`.
pub(crate) const KEYS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "interpolation_type",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "sigma_min",
    "sigma_max",
    "timestep_spacing",
    "timestep_type",
    "steps_offset",
    "rescale_betas_zero_snr",
    "final_sigmas_type",
    "s_churn",
    "s_tmin",
    "s_tmax",
    "s_noise",
];

/// diffusers' defaults for [`KEYS`] (JSON; `null` for `None`, `s_tmax`'s +infinity written as `"Infinity"`).
pub(crate) fn defaults() -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": null, "prediction_type": "epsilon", "interpolation_type": "linear",
        "use_karras_sigmas": false, "use_exponential_sigmas": false, "use_beta_sigmas": false,
        "sigma_min": null, "sigma_max": null, "timestep_spacing": "linspace", "timestep_type": "discrete",
        "steps_offset": 0, "rescale_betas_zero_snr": false, "final_sigmas_type": "zero",
        "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": "Infinity", "s_noise": 1.0
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// Validated Euler options, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EulerConfig {
    num_train_timesteps: usize,
    betas: BetaSchedule,
    prediction_type: PredictionType,
    log_linear: bool,
    conversion: SigmaConversion,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    spacing: TimestepSpacing,
    continuous: bool,
    steps_offset: usize,
    rescale_betas_zero_snr: bool,
    final_sigmas: FinalSigmas,
    s_churn: f64,
    s_tmin: f64,
    s_tmax: f64,
    s_noise: f64,
}

impl EulerConfig {
    /// Applies diffusers' class defaults to `c` and rejects what diffusers rejects (or what we cannot do exactly).
    pub(crate) fn new(c: &SchedulerConfig) -> Result<Self> {
        let num_train_timesteps = c.num_train_timesteps.unwrap_or(1000);
        if num_train_timesteps < 2 {
            return Err(Error::field(option_field("num_train_timesteps"), "must be at least 2"));
        }
        let betas = parse_betas(
            c.trained_betas.as_deref(),
            c.beta_schedule.as_deref().unwrap_or("linear"),
            c.beta_start.unwrap_or(0.0001),
            c.beta_end.unwrap_or(0.02),
            num_train_timesteps,
        )?;
        let prediction_type = parse_prediction_type(c.prediction_type.as_deref().unwrap_or("epsilon"))?;
        let log_linear = parse_choice(
            "interpolation_type",
            c.interpolation_type.as_deref().unwrap_or("linear"),
            &[("linear", false), ("log_linear", true)],
        )?;
        let karras = c.use_karras_sigmas.unwrap_or(false);
        let exponential = c.use_exponential_sigmas.unwrap_or(false);
        let beta = c.use_beta_sigmas.unwrap_or(false);
        if [karras, exponential, beta].iter().filter(|&&b| b).count() > 1 {
            return Err(Error::field(
                option_field("use_karras_sigmas"),
                "only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be true",
            ));
        }
        if beta {
            return Err(Error::unsupported(
                option_field("use_beta_sigmas"),
                "beta sigmas need scipy's beta.ppf, which sdxlrt does not reproduce exactly yet",
            ));
        }
        let conversion = if karras {
            SigmaConversion::Karras
        } else if exponential {
            SigmaConversion::Exponential
        } else {
            SigmaConversion::None
        };
        for (key, value) in [("sigma_min", c.sigma_min), ("sigma_max", c.sigma_max)] {
            if let Some(v) = value {
                if !(v.is_finite() && v > 0.0) {
                    return Err(Error::field(option_field(key), format!("{v} is not a positive finite number")));
                }
            }
        }
        let spacing = parse_spacing(c.timestep_spacing.as_deref().unwrap_or("linspace"))?;
        let continuous = parse_choice(
            "timestep_type",
            c.timestep_type.as_deref().unwrap_or("discrete"),
            &[("discrete", false), ("continuous", true)],
        )?;
        let final_sigmas = parse_choice(
            "final_sigmas_type",
            c.final_sigmas_type.as_deref().unwrap_or("zero"),
            &[("zero", FinalSigmas::Zero), ("sigma_min", FinalSigmas::SigmaMin)],
        )?;
        let s_churn = c.s_churn.unwrap_or(0.0);
        let s_tmin = c.s_tmin.unwrap_or(0.0);
        let s_tmax = c.s_tmax.unwrap_or(f64::INFINITY);
        let s_noise = c.s_noise.unwrap_or(1.0);
        for (key, v) in [("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::field(option_field(key), format!("{v} is not a finite number >= 0")));
            }
        }
        if s_tmax.is_nan() || s_tmax < 0.0 {
            return Err(Error::field(option_field("s_tmax"), format!("{s_tmax} is not a number >= 0")));
        }
        Ok(EulerConfig {
            num_train_timesteps,
            betas,
            prediction_type,
            log_linear,
            conversion,
            sigma_min: c.sigma_min,
            sigma_max: c.sigma_max,
            spacing,
            continuous,
            steps_offset: c.steps_offset.unwrap_or(0),
            rescale_betas_zero_snr: c.rescale_betas_zero_snr.unwrap_or(false),
            final_sigmas,
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
        })
    }

    /// `EulerDiscreteScheduler(**config).set_timesteps(num_inference_steps)`.
    pub(crate) fn build(&self, num_inference_steps: usize) -> Result<EulerDiscreteScheduler> {
        if num_inference_steps == 0 {
            return Err(Error::field("data.steps", "must be at least 1"));
        }
        let n = num_inference_steps;
        let tables = TrainingTables::new(&self.betas, self.num_train_timesteps, self.rescale_betas_zero_snr);

        // Ports `set_timesteps` (the num_inference_steps path).
        let mut timesteps: Vec<f64> = spaced_timesteps(self.spacing, self.num_train_timesteps, n, self.steps_offset)
            .into_iter()
            .map(f64::from)
            .collect();
        let table: Vec<f64> = tables.sigmas.iter().map(|&s| s as f64).collect();
        let mut sigmas: Vec<f64> = if self.log_linear {
            // torch.linspace(np.log(sigmas[-1]), np.log(sigmas[0]), n + 1).exp(): float32 throughout.
            let (first, last) = (tables.log_sigmas[0], tables.log_sigmas[tables.log_sigmas.len() - 1]);
            torch_linspace_f32(last as f64, first as f64, n + 1)
                .into_iter()
                .map(|x| super::common::exp_f32(x) as f64)
                .collect()
        } else {
            np_interp_index(&timesteps, &table)
        };
        if self.conversion != SigmaConversion::None {
            let (lo, hi) = match (sigmas.last(), sigmas.first()) {
                (Some(&lo), Some(&hi)) => (lo, hi),
                _ => return Err(Error::Internal("Euler: empty sigma grid".into())),
            };
            let sigma_min = self.sigma_min.unwrap_or(lo);
            let sigma_max = self.sigma_max.unwrap_or(hi);
            sigmas = match self.conversion {
                SigmaConversion::Karras => karras_sigmas(sigma_min, sigma_max, n),
                _ => exponential_sigmas(sigma_min, sigma_max, n),
            };
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &tables.log_sigmas)).collect();
        }
        let sigma_last = match self.final_sigmas {
            // ((1 - ᾱ[0]) / ᾱ[0]) ** 0.5 as a float32 tensor.
            FinalSigmas::SigmaMin => tables.sigmas[0],
            FinalSigmas::Zero => 0.0,
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(sigma_last);

        let timesteps: Vec<f32> = if self.continuous && self.prediction_type == PredictionType::VPrediction {
            // torch.Tensor([0.25 * sigma.log() for sigma in sigmas[:-1]]), float32.
            sigmas[..sigmas.len() - 1].iter().map(|&s| 0.25f32 * ln_f32(s)).collect()
        } else {
            timesteps.into_iter().map(|t| t as f32).collect()
        };
        if timesteps.len() + 1 > sigmas.len() {
            return Err(Error::Internal(format!(
                "Euler: {} timesteps but only {} sigmas for {n} steps",
                timesteps.len(),
                sigmas.len()
            )));
        }

        // init_noise_sigma: max(sigmas), or (max² + 1)^½ unless the spacing is linspace/trailing (float32).
        let max_sigma = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let init_noise_sigma = match self.spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(EulerDiscreteScheduler { config: self.clone(), timesteps, sigmas, init_noise_sigma, begin_index: None })
    }
}

/// A built Euler scheduler for one request: its grid and nothing else (Euler keeps no history).
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    config: EulerConfig,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    begin_index: Option<usize>,
}

impl EulerDiscreteScheduler {
    fn check_index(&self, index: usize) -> Result<()> {
        if index >= self.timesteps.len() {
            return Err(Error::Internal(format!(
                "Euler step index {index} out of range for {} timesteps",
                self.timesteps.len()
            )));
        }
        if let Some(begin) = self.begin_index {
            if index < begin {
                return Err(Error::Internal(format!("Euler step index {index} is before begin_index {begin}")));
            }
        }
        Ok(())
    }
}

impl Scheduler for EulerDiscreteScheduler {
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

    /// `sample / (σ² + 1)^½` (float32).
    fn scale_model_input(&mut self, sample: ArrayViewD<'_, f32>, index: usize) -> ArrayD<f32> {
        let sigma = self.sigmas[index];
        let denom = (sigma * sigma + 1.0).sqrt();
        sample.mapv(|x| x / denom)
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        self.check_index(index)?;
        if model_output.shape() != sample.shape() {
            return Err(Error::Internal(format!(
                "Euler step: model output shape {:?} differs from sample shape {:?}",
                model_output.shape(),
                sample.shape()
            )));
        }
        let c = &self.config;
        let sigma = self.sigmas[index];
        let sigma_next = self.sigmas[index + 1];

        // gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0 (Python
        // floats; the comparison is a float32 tensor comparison).
        let in_range = (c.s_tmin as f32) <= sigma && sigma <= (c.s_tmax as f32);
        let gamma = if in_range { (c.s_churn / (self.sigmas.len() - 1) as f64).min(2f64.sqrt() - 1.0) } else { 0.0 };
        let sigma_hat = sigma * ((gamma + 1.0) as f32);

        let mut sample = sample.to_owned();
        if gamma > 0.0 {
            // Karras Algorithm 2, line 6: x̂ = x + ε·(σ̂² − σ²)^½ with ε ~ N(0, s_noise²).
            let eps = noise.randn(model_output.shape());
            if eps.len() != model_output.len() {
                return Err(Error::Internal(format!(
                    "noise source returned {} values for {} elements",
                    eps.len(),
                    model_output.len()
                )));
            }
            let s_noise = c.s_noise as f32;
            let scale = (sigma_hat * sigma_hat - sigma * sigma).sqrt();
            // `sample` is a fresh standard-layout array, so its logical order is the noise's row-major order.
            sample.iter_mut().zip(eps).for_each(|(x, e)| *x += (e * s_noise) * scale);
        }

        // 1. compute predicted original sample (x_0) from sigma-scaled predicted noise
        let pred_original = match c.prediction_type {
            PredictionType::Sample => model_output.to_owned(),
            PredictionType::Epsilon => {
                let mut p = sample.clone();
                Zip::from(&mut p).and(&model_output).for_each(|p, &m| *p -= sigma_hat * m);
                p
            }
            PredictionType::VPrediction => {
                // denoised = model_output * c_out + input * c_skip
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                let c_skip_div = sigma * sigma + 1.0;
                let mut p = model_output.to_owned();
                Zip::from(&mut p).and(&sample).for_each(|p, &x| *p = *p * c_out + x / c_skip_div);
                p
            }
        };

        // 2. Convert to an ODE derivative, then take the Euler step dt = σ_{i+1} − σ̂.
        let dt = sigma_next - sigma_hat;
        let mut prev = sample;
        Zip::from(&mut prev).and(&pred_original).for_each(|x, &x0| {
            let derivative = (*x - x0) / sigma_hat;
            *x += derivative * dt;
        });
        Ok(prev)
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    fn completed_steps(&self, index: usize) -> usize {
        index + 1
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use serde_json::{json, Map, Value};

    use super::super::testutil::{
        assert_close, dummy_model, dummy_sample_deter, max_abs_diff, Goldens, ScriptedNoise, SDXL_JSON,
    };
    use super::super::{resolve, Scheduler, SchedulerConfig};

    /// diffusers `EulerDiscreteSchedulerTest.get_scheduler_config`.
    fn test_config(extra: Value) -> Map<String, Value> {
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

    fn build(overrides: &Map<String, Value>, steps: usize) -> Box<dyn Scheduler> {
        resolve(Some("EulerDiscreteScheduler"), overrides, &SchedulerConfig::default())
            .expect("resolves")
            .build(steps)
            .expect("builds")
    }

    /// diffusers' `test_full_loop_*`: note that the tests feed the *scaled* sample to `step` (their quirk, kept so
    /// that the sums match).
    fn full_loop(overrides: &Map<String, Value>) -> (f64, f64) {
        let mut s = build(overrides, 10);
        let mut sample = dummy_sample_deter() * s.init_noise_sigma();
        for i in 0..s.timesteps().len() {
            let t = s.timesteps()[i];
            sample = s.scale_model_input(sample.view(), i);
            let out = dummy_model(&sample, t);
            sample = s.step(out.view(), i, sample.view(), &mut ScriptedNoise::none()).expect("step");
        }
        let sum: f64 = sample.iter().map(|x| x.abs() as f64).sum();
        (sum, sum / sample.len() as f64)
    }

    #[test]
    fn euler_full_loop_matches_diffusers_dummy_model() {
        let (sum, mean) = full_loop(&test_config(json!({})));
        assert!((sum - 10.0807).abs() < 1e-2, "sum {sum}");
        assert!((mean - 0.0131).abs() < 1e-3, "mean {mean}");
    }

    #[test]
    fn euler_full_loop_v_prediction_matches_diffusers() {
        let (sum, mean) = full_loop(&test_config(json!({"prediction_type": "v_prediction"})));
        assert!((sum - 0.0002).abs() < 1e-2, "sum {sum}");
        assert!((mean - 2.2676e-06).abs() < 1e-3, "mean {mean}");
    }

    #[test]
    fn euler_full_loop_karras_sigmas_matches_diffusers() {
        let (sum, mean) = full_loop(&test_config(json!({"use_karras_sigmas": true})));
        assert!((sum - 124.52299499511719).abs() < 1e-2, "sum {sum}");
        assert!((mean - 0.16213932633399963).abs() < 1e-3, "mean {mean}");
    }

    /// diffusers' `check_over_configs`: each config builds, runs, and gives the same outputs after a round trip
    /// through its JSON form (their save_config/from_pretrained check).
    fn check_over_config(extra: Value) {
        let overrides = test_config(extra.clone());
        let direct =
            resolve(Some("EulerDiscreteScheduler"), &overrides, &SchedulerConfig::default()).expect("resolves");
        let text = serde_json::to_string(&direct.config).expect("serializes");
        let reloaded =
            resolve(None, &Map::new(), &SchedulerConfig::from_json(&text).expect("reloads")).expect("resolves");
        let (mut a, mut b) = (direct.build(10).expect("builds"), reloaded.build(10).expect("builds"));
        assert_eq!(a.timesteps(), b.timesteps(), "{extra}");
        let sample = dummy_sample_deter();
        for i in [0usize, 5, 9] {
            let t = a.timesteps()[i];
            let out = dummy_model(&sample, t) * 0.1f32;
            let xa = a.step(out.view(), i, sample.view(), &mut ScriptedNoise::none()).expect("step");
            let xb = b.step(out.view(), i, sample.view(), &mut ScriptedNoise::none()).expect("step");
            assert!(xa.iter().all(|x| x.is_finite()), "{extra}: non-finite output at {i}");
            assert_eq!(xa, xb, "{extra}: step {i}");
        }
    }

    #[test]
    fn check_over_configs_timesteps_betas_schedules_prediction_types() {
        for n in [10, 50, 100, 1000] {
            check_over_config(json!({"num_train_timesteps": n}));
        }
        for (start, end) in [(0.00001, 0.0002), (0.0001, 0.002), (0.001, 0.02)] {
            check_over_config(json!({"beta_start": start, "beta_end": end}));
        }
        for schedule in ["linear", "scaled_linear", "squaredcos_cap_v2"] {
            check_over_config(json!({"beta_schedule": schedule}));
        }
        for p in ["epsilon", "v_prediction", "sample"] {
            check_over_config(json!({"prediction_type": p}));
        }
        for spacing in ["linspace", "leading", "trailing"] {
            check_over_config(json!({"timestep_spacing": spacing, "steps_offset": 1}));
        }
        for extra in [
            json!({"use_karras_sigmas": true}),
            json!({"use_exponential_sigmas": true}),
            json!({"interpolation_type": "log_linear"}),
            json!({"rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}),
            json!({"final_sigmas_type": "sigma_min"}),
            json!({"timestep_type": "continuous", "prediction_type": "v_prediction"}),
        ] {
            check_over_config(extra);
        }
    }

    #[test]
    fn sdxl_grid_is_leading_with_offset() {
        let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        let s = resolve(None, &Map::new(), &model).expect("resolves").build(5).expect("builds");
        assert_eq!(s.timesteps(), &[801.0, 601.0, 401.0, 201.0, 1.0]);
        assert_eq!(s.sigmas().len(), 6);
        assert_eq!(s.sigmas()[5], 0.0);
        // diffusers 0.42.1 gives 5.2309089 for this grid (leading: (σmax² + 1)^½).
        assert!((s.init_noise_sigma() - 5.230_909).abs() < 1e-5, "{}", s.init_noise_sigma());
        assert_eq!(s.order(), 1);
        assert_eq!(s.completed_steps(0), 1);
        assert_eq!(s.completed_steps(4), 5);
    }

    #[test]
    fn step_rejects_bad_index_shape_and_begin_index() {
        let mut s = build(&Map::new(), 4);
        let x = ArrayD::<f32>::zeros(IxDyn(&[1, 4, 2, 2]));
        let y = ArrayD::<f32>::zeros(IxDyn(&[1, 4, 2, 3]));
        let none = &mut ScriptedNoise::none();
        assert!(s.step(x.view(), 4, x.view(), none).is_err());
        assert!(s.step(y.view(), 0, x.view(), none).is_err());
        s.set_begin_index(2);
        assert!(s.step(x.view(), 1, x.view(), none).is_err());
        assert!(s.step(x.view(), 2, x.view(), none).is_ok());
    }

    #[test]
    fn zero_steps_is_a_field_error() {
        let r = resolve(Some("Euler"), &Map::new(), &SchedulerConfig::default()).expect("resolves");
        let err = r.build(0).err().expect("fails");
        assert!(err.to_string().contains("data.steps"), "{err}");
    }

    /// Runs one golden run through the public API and compares everything; returns the worst relative errors
    /// (tables, per-step tensors).
    fn check_golden_run(g: &Goldens, model: &SchedulerConfig, run: &Value) -> (f64, f64, f64) {
        let name = run["run"].as_str().expect("run name");
        let steps = run["steps"].as_u64().expect("steps") as usize;
        let options = run["options"].as_object().cloned().unwrap_or_default();
        let mut s = resolve(None, &options, model).expect("resolves").build(steps).expect("builds");
        let (want_ts, _) = g.tensor(&format!("{name}/timesteps"));
        let (want_sigmas, _) = g.tensor(&format!("{name}/sigmas"));
        let (want_ins, _) = g.tensor(&format!("{name}/init_noise_sigma"));
        let mut table_err = 0.0f64;
        // Integer timesteps must be bit-identical; fractional ones (Karras/exponential/continuous) are derived
        // through numpy/torch transcendental functions that are not correctly rounded, so allow 1e-6 relative.
        if want_ts.iter().all(|t| t.fract() == 0.0) {
            assert_eq!(s.timesteps(), &want_ts[..], "{name}: timesteps");
        } else {
            table_err = table_err.max(assert_close(&format!("{name}: timesteps"), s.timesteps(), &want_ts, 1e-6, 1e-6));
        }
        table_err = table_err.max(assert_close(&format!("{name}: sigmas"), s.sigmas(), &want_sigmas, 1e-5, 1e-9));
        table_err = table_err.max(assert_close(
            &format!("{name}: init_noise_sigma"),
            &[s.init_noise_sigma()],
            &want_ins,
            1e-6,
            0.0,
        ));

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
        let mut noise = ScriptedNoise::new(draws);
        let mut sample = ArrayD::from_shape_vec(IxDyn(&[1, 4, 4, 4]), sample0).expect("shape");
        let (mut step_err, mut step_abs) = (0.0f64, 0.0f64);
        for i in 0..s.timesteps().len() {
            let t = s.timesteps()[i];
            let calls_before = noise.calls;
            let x = s.scale_model_input(sample.view(), i);
            let want = &scaled[i * 64..(i + 1) * 64];
            let got: Vec<f32> = x.iter().copied().collect();
            step_err = step_err.max(assert_close(
                &format!("{name}: step {i} (t={t}) scale_model_input"),
                &got,
                want,
                1e-5,
                1e-6,
            ));
            let out = x.mapv(|v| v * t / (t + 1.0) + 0.05);
            sample = s.step(out.view(), i, sample.view(), &mut noise).expect("step");
            assert_eq!(noise.calls - calls_before == 1, drawn[i], "{name}: step {i} noise drawn");
            let want = &prev[i * 64..(i + 1) * 64];
            let got: Vec<f32> = sample.iter().copied().collect();
            step_abs = step_abs.max(max_abs_diff(&got, want));
            step_err =
                step_err.max(assert_close(&format!("{name}: step {i} (t={t}) step output"), &got, want, 1e-5, 1e-6));
        }
        assert_eq!(noise.calls, n_draws, "{name}: noise draws");
        (table_err, step_err, step_abs)
    }

    #[test]
    fn euler_matches_diffusers_goldens_for_every_option_set() {
        let g = Goldens::load("euler");
        let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        let runs = g.meta["runs"].as_array().expect("runs").clone();
        assert!(runs.len() >= 30, "expected the full golden set");
        let (mut table_err, mut step_err, mut step_abs) = (0.0f64, 0.0f64, 0.0f64);
        for run in &runs {
            let (t, s, a) = check_golden_run(&g, &model, run);
            step_abs = step_abs.max(a);
            if t > 0.0 || s > 0.0 {
                eprintln!("  {}: max rel err tables {t:e}, steps {s:e}", run["run"]);
            }
            table_err = table_err.max(t);
            step_err = step_err.max(s);
        }
        eprintln!(
            "euler goldens: {} runs, max rel err tables {table_err:e}, steps {step_err:e} (max abs {step_abs:e})",
            runs.len()
        );
    }
}
