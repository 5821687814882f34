//! `DDIMScheduler`: denoising diffusion implicit models (Song et al. 2020, <https://arxiv.org/abs/2010.02502>),
//! eq. 12: from the predicted x₀ and ε, jump to the previous timestep of the grid, with noise of size `η σ_t`.
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_ddim.py` of diffusers 0.42.1: `__init__`,
//! `set_timesteps`, `_get_variance`, `_threshold_sample` and `step`. DDIM works on `alphas_cumprod` indexed by the
//! integer timestep (no sigmas; `scale_model_input` is the identity and `init_noise_sigma` is 1). The `step`
//! argument `eta` (the pipelines' `eta`) is a request option here; `eta > 0` draws one noise tensor of the model
//! output's shape per step (`randn_tensor(model_output.shape, generator=…)`).

use ndarray::{ArrayD, ArrayViewD, Axis, Zip};

use super::common::{
    add_scaled_noise, betas_f32, check_step_call, check_steps, denoised_methods, option_field, parse_prediction_type,
    parse_spacing, parse_training, rescale_zero_terminal_snr, torch_cumprod_f32, BetaSchedule, Denoised,
    PredictionType, TimestepSpacing,
};
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// The options `DDIMScheduler` accepts: its diffusers `__init__` arguments, then the `step()` argument `eta`.
pub(crate) const KEYS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "clip_sample",
    "set_alpha_to_one",
    "steps_offset",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "clip_sample_range",
    "sample_max_value",
    "timestep_spacing",
    "rescale_betas_zero_snr",
    "eta",
];

/// diffusers' defaults for [`KEYS`].
pub(crate) fn defaults() -> serde_json::Map<String, serde_json::Value> {
    super::common::json_object(serde_json::json!({
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": null, "clip_sample": true, "set_alpha_to_one": true, "steps_offset": 0,
        "prediction_type": "epsilon", "thresholding": false, "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0, "sample_max_value": 1.0, "timestep_spacing": "leading",
        "rescale_betas_zero_snr": false, "eta": 0.0
    }))
}

const CLASS: &str = "DDIMScheduler";

/// How the predicted x₀ is bounded (`thresholding` wins over `clip_sample`, as in diffusers' `step`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bound {
    /// Neither.
    None,
    /// `clamp(-clip_sample_range, clip_sample_range)`.
    Clip(f32),
    /// Dynamic thresholding (Imagen, arXiv:2205.11487) with `dynamic_thresholding_ratio` and `sample_max_value`.
    Threshold { ratio: f64, max: f64 },
}

/// Validated DDIM options, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DdimConfig {
    num_train_timesteps: usize,
    betas: BetaSchedule,
    set_alpha_to_one: bool,
    steps_offset: usize,
    prediction_type: PredictionType,
    bound: Bound,
    spacing: TimestepSpacing,
    rescale_betas_zero_snr: bool,
    eta: f64,
}

impl DdimConfig {
    /// Applies diffusers' class defaults to `c` and rejects what diffusers rejects.
    pub(crate) fn new(c: &SchedulerConfig) -> Result<Self> {
        let (num_train_timesteps, betas) = parse_training(c, 0.0001, 0.02, false)?;
        let prediction = c.prediction_type.as_deref().unwrap_or("epsilon");
        let prediction_type = parse_prediction_type(prediction)?;
        if prediction == "original_sample" {
            return Err(Error::field(
                option_field("prediction_type"),
                "DDIMScheduler supports epsilon, sample and v_prediction in diffusers, not `original_sample`",
            ));
        }
        let finite = |key: &str, v: f64| -> Result<f64> {
            if v.is_finite() {
                Ok(v)
            } else {
                Err(Error::field(option_field(key), format!("{v} is not a finite number")))
            }
        };
        let bound = if c.thresholding.unwrap_or(false) {
            let ratio = finite("dynamic_thresholding_ratio", c.dynamic_thresholding_ratio.unwrap_or(0.995))?;
            if !(0.0..=1.0).contains(&ratio) {
                return Err(Error::field(option_field("dynamic_thresholding_ratio"), "must be within [0, 1]"));
            }
            let max = finite("sample_max_value", c.sample_max_value.unwrap_or(1.0))?;
            Bound::Threshold { ratio, max }
        } else if c.clip_sample.unwrap_or(true) {
            Bound::Clip(finite("clip_sample_range", c.clip_sample_range.unwrap_or(1.0))? as f32)
        } else {
            Bound::None
        };
        let eta = c.eta.unwrap_or(0.0);
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(Error::field(option_field("eta"), format!("{eta} is not a finite number >= 0")));
        }
        Ok(DdimConfig {
            num_train_timesteps,
            betas,
            set_alpha_to_one: c.set_alpha_to_one.unwrap_or(true),
            steps_offset: c.steps_offset.unwrap_or(0),
            prediction_type,
            bound,
            spacing: parse_spacing(c.timestep_spacing.as_deref().unwrap_or("leading"))?,
            rescale_betas_zero_snr: c.rescale_betas_zero_snr.unwrap_or(false),
            eta,
        })
    }

    /// `DDIMScheduler(**config).set_timesteps(num_inference_steps)`.
    ///
    /// Errors: 0 steps or more steps than `num_train_timesteps` ([`Error::InvalidField`] `data.steps`), a grid that
    /// leaves the training range (`steps_offset` too large).
    pub(crate) fn build(&self, num_inference_steps: usize) -> Result<DdimScheduler> {
        let t_max = self.num_train_timesteps;
        let n = check_steps(num_inference_steps)?;
        if n > t_max {
            return Err(Error::field(
                "data.steps",
                format!("{n} is more than DDIMScheduler's num_train_timesteps ({t_max})"),
            ));
        }
        // __init__: betas → (rescale) → alphas → cumprod (no 2⁻²⁴ fix-up here, unlike the Euler family).
        let mut betas = betas_f32(&self.betas, t_max);
        if self.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod = torch_cumprod_f32(&alphas);
        let final_alpha_cumprod = if self.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };

        // set_timesteps: int64 timesteps.
        let timesteps: Vec<i64> = match self.spacing {
            TimestepSpacing::Linspace => {
                // np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
                let mut ts: Vec<i64> = super::common::np_linspace(0.0, (t_max - 1) as f64, n)
                    .into_iter()
                    .map(|v| v.round_ties_even() as i64)
                    .collect();
                ts.reverse();
                ts
            }
            TimestepSpacing::Leading => {
                let ratio = t_max / n;
                (0..n).rev().map(|i| (i * ratio + self.steps_offset) as i64).collect()
            }
            // np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1: the same values as the float32 grid.
            TimestepSpacing::Trailing => super::common::spaced_timesteps(TimestepSpacing::Trailing, t_max, n, 0)
                .into_iter()
                .map(|t| t as i64)
                .collect(),
        };
        // diffusers indexes alphas_cumprod[t] with torch semantics (negative = from the end); anything else raises.
        if let Some(&bad) = timesteps.iter().find(|&&t| t >= t_max as i64 || t < -(t_max as i64)) {
            return Err(Error::field(
                option_field("steps_offset"),
                format!("the DDIM grid reaches timestep {bad}, outside the {t_max} training timesteps"),
            ));
        }
        Ok(DdimScheduler {
            config: self.clone(),
            timesteps_f32: timesteps.iter().map(|&t| t as f32).collect(),
            timesteps,
            alphas_cumprod,
            final_alpha_cumprod,
            num_inference_steps: n,
            begin_index: None,
            denoised: Denoised::default(),
        })
    }
}

/// A built DDIM scheduler for one request (no history).
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    config: DdimConfig,
    timesteps: Vec<i64>,
    timesteps_f32: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_inference_steps: usize,
    begin_index: Option<usize>,
    denoised: Denoised,
}

impl DdimScheduler {
    /// `self.alphas_cumprod[t]` with torch's negative indexing (`t` was range-checked at build).
    fn alpha_cumprod(&self, t: i64) -> f32 {
        let len = self.alphas_cumprod.len() as i64;
        self.alphas_cumprod[if t < 0 { (t + len) as usize } else { t as usize }]
    }

    /// Ports `_get_variance(timestep, prev_timestep)`: `(1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)`, float32.
    fn variance(&self, alpha_prod_t: f32, alpha_prod_t_prev: f32) -> f32 {
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        beta_prod_t_prev / beta_prod_t * (1.0 - alpha_prod_t / alpha_prod_t_prev)
    }
}

/// Ports `DDIMScheduler._threshold_sample` (dynamic thresholding, arXiv:2205.11487): per batch item, `s` = the
/// `ratio` quantile of `|x|` (`torch.quantile`, linear interpolation), clamped to `[1, max]`; then `clamp(x, −s, s) /
/// s`. Float32 throughout.
fn threshold_sample(x: &mut ArrayD<f32>, ratio: f64, max: f64) -> Result<()> {
    if x.ndim() < 2 {
        return Err(Error::Internal(format!("DDIM thresholding needs a batch and channel axis, got {:?}", x.shape())));
    }
    for mut item in x.axis_iter_mut(Axis(0)) {
        let mut abs: Vec<f32> = item.iter().map(|v| v.abs()).collect();
        if abs.is_empty() {
            continue;
        }
        // torch.sort puts NaN last; quantile then returns NaN for the row, which total_cmp also yields here.
        abs.sort_by(f32::total_cmp);
        // ranks = q * (n - 1) in float32; below = floor (toType(kLong)), above = ceil; lerp by ranks - below.
        let rank = ratio as f32 * (abs.len() - 1) as f32;
        let below = rank as usize;
        let above = (rank.ceil() as usize).min(abs.len() - 1);
        let weight = rank - below as f32;
        let s = if abs.iter().any(|v| v.is_nan()) {
            f32::NAN
        } else {
            super::common::torch_lerp_f32(abs[below], abs[above], weight)
        };
        // torch.clamp(s, min=1, max=sample_max_value)
        let s = s.max(1.0).min(max as f32);
        item.mapv_inplace(|v| v.max(-s).min(s) / s);
    }
    Ok(())
}

impl Scheduler for DdimScheduler {
    denoised_methods!();

    fn timesteps(&self) -> &[f32] {
        &self.timesteps_f32
    }

    /// DDIM has no sigmas.
    fn sigmas(&self) -> &[f32] {
        &[]
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn order(&self) -> usize {
        1
    }

    /// The identity (DDIM does not scale its input).
    fn scale_model_input(&mut self, sample: ArrayViewD<'_, f32>, _index: usize) -> ArrayD<f32> {
        sample.to_owned()
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        check_step_call(CLASS, index, self.timesteps.len(), self.begin_index, model_output.shape(), sample.shape())?;
        let c = &self.config;
        // 1. get previous step value (= t - T // n)
        let timestep = self.timesteps[index];
        let prev_timestep = timestep - (c.num_train_timesteps / self.num_inference_steps) as i64;

        // 2. compute alphas, betas
        let alpha_prod_t = self.alpha_cumprod(timestep);
        let alpha_prod_t_prev =
            if prev_timestep >= 0 { self.alpha_cumprod(prev_timestep) } else { self.final_alpha_cumprod };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (sqrt_a, sqrt_b) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());

        // 3. compute predicted original sample and epsilon from the model output (formula (12))
        let mut pred_original = model_output.to_owned();
        let mut pred_epsilon = model_output.to_owned();
        match c.prediction_type {
            PredictionType::Epsilon => {
                Zip::from(&mut pred_original).and(&sample).for_each(|p, &x| *p = (x - sqrt_b * *p) / sqrt_a);
            }
            PredictionType::Sample => {
                Zip::from(&mut pred_epsilon).and(&sample).for_each(|e, &x| *e = (x - sqrt_a * *e) / sqrt_b);
            }
            PredictionType::VPrediction => {
                Zip::from(&mut pred_original).and(&sample).for_each(|p, &x| *p = sqrt_a * x - sqrt_b * *p);
                Zip::from(&mut pred_epsilon).and(&sample).for_each(|e, &x| *e = sqrt_a * *e + sqrt_b * x);
            }
        }

        // 4. Clip or threshold "predicted x_0"
        match c.bound {
            Bound::Threshold { ratio, max } => threshold_sample(&mut pred_original, ratio, max)?,
            Bound::Clip(range) => pred_original.mapv_inplace(|x| x.max(-range).min(range)),
            Bound::None => {}
        }
        self.denoised.record(&pred_original);

        // 5. compute variance: "sigma_t(η)" -> see formula (16)
        let variance = self.variance(alpha_prod_t, alpha_prod_t_prev);
        let std_dev_t = (c.eta as f32) * variance.sqrt();

        // 6. compute "direction pointing to x_t" of formula (12)
        let dir_coeff = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let sqrt_a_prev = alpha_prod_t_prev.sqrt();

        // 7. compute x_t without "random noise" of formula (12)
        let mut prev = pred_original;
        Zip::from(&mut prev).and(&pred_epsilon).for_each(|x0, &e| *x0 = sqrt_a_prev * *x0 + dir_coeff * e);

        if c.eta > 0.0 {
            add_scaled_noise(&mut prev, noise, std_dev_t)?;
        }
        Ok(prev)
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    /// `ᾱ_t^½ · original + (1 − ᾱ_t)^½ · noise` at the timestep of evaluation `index`.
    fn add_noise(&self, original: ArrayViewD<'_, f32>, noise: ArrayViewD<'_, f32>, index: usize) -> ArrayD<f32> {
        let a = self.alpha_cumprod(self.timesteps[index]);
        super::common::noised(original, noise, a.sqrt(), (1.0 - a).sqrt())
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
        assert_sum_mean, check_goldens, dummy_model, dummy_noise_deter, dummy_sample_deter, merged, sum_mean, sweep,
        ScriptedNoise, K_RULES, SDXL_JSON,
    };
    use super::super::{resolve, SchedulerConfig};
    use super::*;
    use crate::error::ErrorCode;
    use crate::rng::TorchGenerator;

    /// diffusers `DDIMSchedulerTest.get_scheduler_config`.
    fn base() -> Value {
        json!({"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
               "clip_sample": true})
    }

    fn test_config(extra: Value) -> Map<String, Value> {
        merged(base(), extra)
    }

    fn ddim(overrides: &Map<String, Value>, steps: usize) -> DdimScheduler {
        let r = resolve(Some(CLASS), overrides, &SchedulerConfig::default()).expect("resolves");
        DdimConfig::new(&r.config).expect("validates").build(steps).expect("builds")
    }

    /// diffusers `full_loop` (10 steps, eta 0, no input scaling), optionally cut at `t_start` with
    /// `add_noise(dummy_noise_deter)` (`test_full_loop_with_noise`).
    fn full_loop(extra: Value, t_start: Option<usize>) -> (f64, f64) {
        let mut s = ddim(&test_config(extra), 10);
        let mut sample = dummy_sample_deter();
        let begin = t_start.unwrap_or(0);
        if t_start.is_some() {
            sample = s.add_noise(sample.view(), dummy_noise_deter().view(), begin);
            s.set_begin_index(begin);
        }
        for i in begin..s.timesteps().len() {
            let residual = dummy_model(&sample, s.timesteps()[i]);
            sample = s.step(residual.view(), i, sample.view(), &mut ScriptedNoise::none()).expect("step");
        }
        sum_mean(&sample)
    }

    #[test]
    fn matches_diffusers_goldens_for_every_option_set() {
        let r = check_goldens("k_family", Some(CLASS), &K_RULES);
        assert!(r.runs >= 18, "{r:?}");
    }

    #[test]
    fn full_loops_match_diffusers() {
        let cases = [
            (json!({}), 172.0067, 0.223967),
            (json!({"prediction_type": "v_prediction"}), 52.5302, 0.0684),
            (json!({"set_alpha_to_one": true, "beta_start": 0.01}), 149.8295, 0.1951),
            (json!({"set_alpha_to_one": false, "beta_start": 0.01}), 149.0784, 0.1941),
        ];
        for (extra, want_sum, want_mean) in cases {
            assert_sum_mean(&extra.to_string(), full_loop(extra.clone(), None), (want_sum, want_mean), 1e-3);
        }
        assert_sum_mean("with noise", full_loop(json!({}), Some(8)), (354.5418, 0.4616), 1e-3);
    }

    /// diffusers `test_variance`.
    #[test]
    fn variance_matches_diffusers() {
        let s = ddim(&test_config(json!({})), 10);
        let var = |t: i64, prev: i64| {
            let prev_a = if prev >= 0 { s.alpha_cumprod(prev) } else { s.final_alpha_cumprod };
            s.variance(s.alpha_cumprod(t), prev_a)
        };
        for (t, prev, want) in
            [(0, 0, 0.0), (420, 400, 0.14771), (980, 960, 0.32460), (487, 486, 0.00979), (999, 998, 0.02)]
        {
            assert!((var(t, prev) - want).abs() < 1e-5, "({t}, {prev}): {}", var(t, prev));
        }
    }

    /// diffusers `test_steps_offset`, plus the other spacings.
    #[test]
    fn timesteps_match_diffusers() {
        assert_eq!(ddim(&test_config(json!({"steps_offset": 1})), 5).timesteps(), &[801.0, 601.0, 401.0, 201.0, 1.0]);
        assert_eq!(
            ddim(&test_config(json!({"timestep_spacing": "trailing"})), 5).timesteps(),
            &[999.0, 799.0, 599.0, 399.0, 199.0]
        );
        // np.linspace(0, 999, 4).round() = [0, 333, 666, 999]
        assert_eq!(
            ddim(&test_config(json!({"timestep_spacing": "linspace"})), 4).timesteps(),
            &[999.0, 666.0, 333.0, 0.0]
        );
    }

    #[test]
    fn check_over_configs() {
        let mut configs: Vec<Value> = [100, 500, 1000].iter().map(|n| json!({"num_train_timesteps": n})).collect();
        configs.extend([0, 1].map(|offset| json!({"steps_offset": offset})));
        for (start, end) in [(0.0001, 0.002), (0.001, 0.02), (0.01, 0.2)] {
            configs.push(json!({"beta_start": start, "beta_end": end}));
        }
        configs.extend([
            json!({"beta_schedule": "linear"}),
            json!({"beta_schedule": "squaredcos_cap_v2"}),
            json!({"prediction_type": "epsilon"}),
            json!({"prediction_type": "v_prediction"}),
            json!({"prediction_type": "sample"}),
            json!({"clip_sample": true}),
            json!({"clip_sample": false}),
            json!({"timestep_spacing": "trailing"}),
            json!({"timestep_spacing": "leading"}),
            json!({"rescale_betas_zero_snr": true}),
            json!({"rescale_betas_zero_snr": false}),
            json!({"thresholding": false}),
            json!({"eta": 0.5}),
        ]);
        for threshold in [0.5, 1.0, 2.0] {
            for p in ["epsilon", "v_prediction"] {
                configs.push(json!({"thresholding": true, "prediction_type": p, "sample_max_value": threshold}));
            }
        }
        assert_eq!(sweep(CLASS, &base(), &configs, &[10], 0.1), configs.len());
    }

    #[test]
    fn eta_draws_one_noise_tensor_per_step() {
        let mut s = ddim(&test_config(json!({"eta": 1.0})), 4);
        let x = dummy_sample_deter();
        let mut gen = TorchGenerator::new(0);
        let mut noise = ScriptedNoise::new((0..4).map(|_| gen.randn(x.len())).collect());
        for i in 0..4 {
            s.step(x.view(), i, x.view(), &mut noise).expect("step");
        }
        assert_eq!(noise.calls, 4);
    }

    #[test]
    fn thresholding_clamps_to_the_quantile() {
        // One batch item, 1000 values 0.001 … 1.0 (and one of them 5.0): the 0.995 quantile of |x| lies at rank
        // 994.005 of the sorted values; s is clamped to [1, 1.5].
        let mut v: Vec<f32> = (1..=1000).map(|i| i as f32 / 1000.0 * 3.0).collect();
        v[0] = -5.0;
        let mut x = ArrayD::from_shape_vec(IxDyn(&[1, 1000]), v).expect("shape");
        threshold_sample(&mut x, 0.995, 1.5).expect("thresholds");
        assert_eq!(x[[0, 0]], -1.0);
        assert_eq!(x[[0, 999]], 1.0);
        assert!((x[[0, 99]] - 0.3 / 1.5).abs() < 1e-6, "{}", x[[0, 99]]);
    }

    #[test]
    fn bad_requests_are_errors() {
        let r = resolve(Some("DDIM"), &Map::new(), &SchedulerConfig::from_json(SDXL_JSON).expect("parses"))
            .expect("resolves");
        assert_eq!(r.describe()["options"]["set_alpha_to_one"], json!(false));
        assert!(r.build(0).is_err());
        assert!(r.build(1001).err().expect("too many").to_string().contains("data.steps"));
        for (extra, field) in [
            (json!({"eta": -1.0}), "data.scheduler.eta"),
            (json!({"use_karras_sigmas": true}), "data.scheduler.use_karras_sigmas"),
            (json!({"steps_offset": 500}), "data.scheduler.steps_offset"),
        ] {
            let res = resolve(Some("DDIM"), &test_config(extra.clone()), &SchedulerConfig::default())
                .and_then(|r| r.build(2).map(|_| ()));
            let err = res.expect_err(&extra.to_string());
            assert!(err.to_string().contains(field), "{extra}: {err}");
            assert_eq!(err.code(), ErrorCode::InvalidRequest);
        }
        let err = resolve(Some("DDIM Karras"), &Map::new(), &SchedulerConfig::default()).expect_err("suffix");
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
    }
}
