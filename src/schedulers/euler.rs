//! `EulerDiscreteScheduler`: Euler's method on the probability-flow ODE in sigma space, Algorithm 2 of Karras et al.
//! 2022 (<https://arxiv.org/abs/2206.00364>), with the optional "churn" noise of that algorithm.
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_euler_discrete.py` of diffusers 0.42.1:
//! `__init__` (tables), `set_timesteps` (grid), `scale_model_input` and `step`. The step index is the position in
//! [`Scheduler::timesteps`], as diffusers' `_step_index`; no float timestep is ever looked up.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{
    check_sigma_bounds, check_steps, convert_sigmas, draw_noise, exp_f32, k_euler_update, k_pred_original_churned,
    ln_f32, option_field, parse_choice, parse_final_sigmas, parse_prediction_type, parse_sigma_conversion,
    parse_spacing, parse_training, sigmas_to_timesteps, spaced_timesteps, torch_linspace_f32, BetaSchedule,
    FinalSigmas, PredictionType, SigmaConversion, SigmaGrid, TimestepSpacing, TrainingTables,
};
use super::common::{denoised_methods, sigma_grid_methods, Denoised};
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
    super::common::json_object(serde_json::json!({
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": null, "prediction_type": "epsilon", "interpolation_type": "linear",
        "use_karras_sigmas": false, "use_exponential_sigmas": false, "use_beta_sigmas": false,
        "sigma_min": null, "sigma_max": null, "timestep_spacing": "linspace", "timestep_type": "discrete",
        "steps_offset": 0, "rescale_betas_zero_snr": false, "final_sigmas_type": "zero",
        "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": "Infinity", "s_noise": 1.0
    }))
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
        let (num_train_timesteps, betas) = parse_training(c, 0.0001, 0.02, false)?;
        let prediction_type = parse_prediction_type(c.prediction_type.as_deref().unwrap_or("epsilon"))?;
        let log_linear = parse_choice(
            "interpolation_type",
            c.interpolation_type.as_deref().unwrap_or("linear"),
            &[("linear", false), ("log_linear", true)],
        )?;
        let conversion = parse_sigma_conversion(c)?;
        check_sigma_bounds(c)?;
        let spacing = parse_spacing(c.timestep_spacing.as_deref().unwrap_or("linspace"))?;
        let continuous = parse_choice(
            "timestep_type",
            c.timestep_type.as_deref().unwrap_or("discrete"),
            &[("discrete", false), ("continuous", true)],
        )?;
        let final_sigmas = parse_final_sigmas(c)?;
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
        let n = check_steps(num_inference_steps)?;
        let tables = TrainingTables::new(&self.betas, self.num_train_timesteps, self.rescale_betas_zero_snr);

        // Ports `set_timesteps` (the num_inference_steps path).
        let mut timesteps: Vec<f64> = spaced_timesteps(self.spacing, self.num_train_timesteps, n, self.steps_offset)
            .into_iter()
            .map(f64::from)
            .collect();
        let mut sigmas: Vec<f64> = if self.log_linear {
            // torch.linspace(np.log(sigmas[-1]), np.log(sigmas[0]), n + 1).exp(): float32 throughout.
            let (first, last) = (tables.log_sigmas[0], tables.log_sigmas[tables.log_sigmas.len() - 1]);
            torch_linspace_f32(last as f64, first as f64, n + 1).into_iter().map(|x| exp_f32(x) as f64).collect()
        } else {
            tables.interp_sigmas(&timesteps)
        };
        if self.conversion != SigmaConversion::None {
            let (lo, hi) = match (sigmas.last(), sigmas.first()) {
                (Some(&lo), Some(&hi)) => (lo, hi),
                _ => return Err(Error::Internal("Euler: empty sigma grid".into())),
            };
            sigmas = convert_sigmas(self.conversion, self.sigma_min.unwrap_or(lo), self.sigma_max.unwrap_or(hi), n);
            timesteps = sigmas_to_timesteps(&sigmas, &tables.log_sigmas, false);
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(self.final_sigmas.value(&tables));

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
        Ok(EulerDiscreteScheduler {
            config: self.clone(),
            grid: SigmaGrid::new(timesteps, sigmas, self.spacing),
            denoised: Denoised::default(),
        })
    }
}

/// A built Euler scheduler for one request: its grid and nothing else (Euler keeps no history).
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    config: EulerConfig,
    grid: SigmaGrid,
    denoised: Denoised,
}

impl Scheduler for EulerDiscreteScheduler {
    sigma_grid_methods!(1);
    denoised_methods!();

    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        self.grid.check_step("EulerDiscreteScheduler", index, model_output.shape(), sample.shape())?;
        let c = &self.config;
        let sigma = self.grid.sigmas[index];
        let sigma_next = self.grid.sigmas[index + 1];

        // gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0 (Python
        // floats; the comparison is a float32 tensor comparison).
        let in_range = (c.s_tmin as f32) <= sigma && sigma <= (c.s_tmax as f32);
        let gamma =
            if in_range { (c.s_churn / (self.grid.sigmas.len() - 1) as f64).min(2f64.sqrt() - 1.0) } else { 0.0 };
        let sigma_hat = sigma * ((gamma + 1.0) as f32);

        let mut sample = sample.to_owned();
        if gamma > 0.0 {
            // Karras Algorithm 2, line 6: x̂ = x + ε·(σ̂² − σ²)^½ with ε ~ N(0, s_noise²).
            let eps = draw_noise(noise, model_output.shape())?;
            let s_noise = c.s_noise as f32;
            let scale = (sigma_hat * sigma_hat - sigma * sigma).sqrt();
            // `sample` is a fresh standard-layout array, so its logical order is the noise's row-major order.
            sample.iter_mut().zip(eps).for_each(|(x, e)| *x += (e * s_noise) * scale);
        }

        // 1. compute predicted original sample (x_0) from sigma-scaled predicted noise
        let pred_original = k_pred_original_churned(c.prediction_type, sigma_hat, sigma, model_output, sample.view());
        self.denoised.record(&pred_original);

        // 2. Convert to an ODE derivative, then take the Euler step dt = σ_{i+1} − σ̂.
        let dt = sigma_next - sigma_hat;
        Ok(k_euler_update(sample.clone(), sample.view(), &pred_original, sigma_hat, dt))
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use serde_json::{json, Map, Value};

    use super::super::testutil::{
        assert_sum_mean, build, check_goldens, full_loop, k_test_config, sweep, ScriptedNoise, EULER_RULES, SDXL_JSON,
    };
    use super::super::{resolve, SchedulerConfig};

    const CLASS: &str = "EulerDiscreteScheduler";

    #[test]
    fn euler_full_loop_matches_diffusers_dummy_model() {
        assert_sum_mean("default", full_loop(CLASS, &k_test_config(json!({})), None, None), (10.0807, 0.0131), 1e-3);
    }

    #[test]
    fn euler_full_loop_v_prediction_matches_diffusers() {
        let got = full_loop(CLASS, &k_test_config(json!({"prediction_type": "v_prediction"})), None, None);
        assert_sum_mean("v_prediction", got, (0.0002, 2.2676e-06), 1e-3);
    }

    #[test]
    fn euler_full_loop_karras_sigmas_matches_diffusers() {
        let got = full_loop(CLASS, &k_test_config(json!({"use_karras_sigmas": true})), None, None);
        assert_sum_mean("karras", got, (124.52299499511719, 0.16213932633399963), 1e-3);
    }

    #[test]
    fn check_over_configs_timesteps_betas_schedules_prediction_types() {
        let mut configs: Vec<Value> = [10, 50, 100, 1000].iter().map(|n| json!({"num_train_timesteps": n})).collect();
        for (start, end) in [(0.00001, 0.0002), (0.0001, 0.002), (0.001, 0.02)] {
            configs.push(json!({"beta_start": start, "beta_end": end}));
        }
        configs.extend(["linear", "scaled_linear", "squaredcos_cap_v2"].map(|b| json!({"beta_schedule": b})));
        configs.extend(["epsilon", "v_prediction", "sample"].map(|p| json!({"prediction_type": p})));
        configs.extend(["linspace", "leading", "trailing"].map(|s| json!({"timestep_spacing": s, "steps_offset": 1})));
        configs.extend([
            json!({"use_karras_sigmas": true}),
            json!({"use_exponential_sigmas": true}),
            json!({"interpolation_type": "log_linear"}),
            json!({"rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}),
            json!({"final_sigmas_type": "sigma_min"}),
            json!({"timestep_type": "continuous", "prediction_type": "v_prediction"}),
        ]);
        let base = Value::Object(k_test_config(json!({})));
        assert_eq!(sweep(CLASS, &base, &configs, &[10], 0.1), configs.len());
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
        let mut s = build(CLASS, &Map::new(), 4);
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

    #[test]
    fn euler_matches_diffusers_goldens_for_every_option_set() {
        let r = check_goldens("euler", None, &EULER_RULES);
        assert!(r.runs >= 30, "expected the full golden set: {r:?}");
    }
}
