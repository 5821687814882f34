//! `HeunDiscreteScheduler`: Heun's second-order method on the probability-flow ODE, Algorithm 2 of Karras et al.
//! 2022 (<https://arxiv.org/abs/2206.00364>) without churn. Two UNet evaluations per step: an Euler predictor to
//! `σ_{i+1}`, then a corrector that averages the two derivatives; the last step is a lone Euler step to σ = 0.
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_heun_discrete.py` of diffusers 0.42.1:
//! `__init__`, `set_timesteps`, `scale_model_input`, `state_in_first_order` and `step`. The grid is diffusers'
//! interleaved one: `timesteps = [t0, t1, t1, …, t_{n−1}, t_{n−1}]` (`2n − 1` entries, one per UNet evaluation) and
//! `sigmas = [σ0, σ1, σ1, …, σ_{n−1}, σ_{n−1}, 0]` (`2n`).

use ndarray::{ArrayD, ArrayViewD, Zip};

use super::common::{
    denoised_methods, interleave_repeat, k_derivative, k_pred_original, k_scale_input, sigma_grid_methods, Denoised,
    KClassSpec, KSigmaConfig, SigmaGrid,
};
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// The options `HeunDiscreteScheduler` accepts: its diffusers `__init__` arguments.
pub(crate) const KEYS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "clip_sample",
    "clip_sample_range",
    "timestep_spacing",
    "steps_offset",
];

/// diffusers' defaults for [`KEYS`].
pub(crate) fn defaults() -> serde_json::Map<String, serde_json::Value> {
    let mut m = SPEC.defaults();
    m.insert("clip_sample".into(), false.into());
    m.insert("clip_sample_range".into(), 1.0.into());
    m
}

const SPEC: KClassSpec = KClassSpec {
    class: "HeunDiscreteScheduler",
    beta_start: 0.00085,
    beta_end: 0.012,
    exp_schedule: true,
    sigma_conversions: true,
    zero_snr: false,
    sample_prediction: true,
};

/// Validated Heun options, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeunConfig {
    k: KSigmaConfig,
    /// `clip_sample_range` when `clip_sample` is on.
    clip: Option<f32>,
}

impl HeunConfig {
    /// Applies diffusers' class defaults to `c` and rejects what diffusers rejects.
    pub(crate) fn new(c: &SchedulerConfig) -> Result<Self> {
        let k = KSigmaConfig::parse(c, &SPEC)?;
        let range = c.clip_sample_range.unwrap_or(1.0);
        if !range.is_finite() {
            return Err(Error::field(
                super::common::option_field("clip_sample_range"),
                format!("{range} is not a finite number"),
            ));
        }
        let clip = if c.clip_sample.unwrap_or(false) { Some(range as f32) } else { None };
        Ok(HeunConfig { k, clip })
    }

    /// `HeunDiscreteScheduler(**config).set_timesteps(num_inference_steps)`.
    pub(crate) fn build(&self, num_inference_steps: usize) -> Result<HeunDiscreteScheduler> {
        let grid = self.k.grid(num_inference_steps, false)?;
        let sigmas = grid.sigmas;
        // self.sigmas = cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        let mut interleaved = interleave_repeat(&sigmas[..sigmas.len() - 1], false);
        interleaved.push(0.0);
        // timesteps = cat([timesteps[:1], timesteps[1:].repeat_interleave(2)]) (float64 → float32)
        let timesteps = interleave_repeat(&grid.timesteps, false);
        Ok(HeunDiscreteScheduler {
            config: self.clone(),
            grid: SigmaGrid::new(timesteps, interleaved, self.k.spacing),
            num_inference_steps,
            first_order: None,
            denoised: Denoised::default(),
        })
    }
}

/// What the predictor (first-order) evaluation leaves for the corrector: `prev_derivative`, `dt`, `sample`.
#[derive(Debug, Clone)]
struct Predictor {
    derivative: ArrayD<f32>,
    dt: f32,
    sample: ArrayD<f32>,
}

/// A built Heun scheduler for one request: the interleaved grid plus the predictor state between two evaluations.
#[derive(Debug, Clone)]
pub struct HeunDiscreteScheduler {
    config: HeunConfig,
    grid: SigmaGrid,
    num_inference_steps: usize,
    /// `Some` between the predictor and the corrector evaluation (`state_in_first_order` is `dt is None`).
    first_order: Option<Predictor>,
    denoised: Denoised,
}

impl HeunDiscreteScheduler {
    /// The number of steps requested (`timesteps().len()` is `2n − 1`).
    pub fn num_inference_steps(&self) -> usize {
        self.num_inference_steps
    }
}

impl Scheduler for HeunDiscreteScheduler {
    sigma_grid_methods!(2);
    denoised_methods!();

    fn scale_model_input(&mut self, sample: ArrayViewD<'_, f32>, index: usize) -> ArrayD<f32> {
        k_scale_input(sample, self.grid.sigmas[index])
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        self.grid.check_step(SPEC.class, index, model_output.shape(), sample.shape())?;
        let first_order = self.first_order.is_none();
        if !first_order && index == 0 {
            return Err(Error::Internal("HeunDiscreteScheduler: corrector evaluation at index 0".into()));
        }
        let (sigma, sigma_next) = if first_order {
            (self.grid.sigmas[index], self.grid.sigmas[index + 1])
        } else {
            (self.grid.sigmas[index - 1], self.grid.sigmas[index])
        };
        // gamma = 0: sigma_hat = sigma * (gamma + 1) = sigma.
        let sigma_hat = sigma;

        // 1. compute predicted original sample (x_0) from sigma-scaled predicted noise
        let sigma_input = if first_order { sigma_hat } else { sigma_next };
        let mut pred_original =
            k_pred_original(self.config.k.prediction_type, sigma_input, model_output.view(), sample.view());
        if let Some(range) = self.config.clip {
            pred_original.mapv_inplace(|x| x.clamp(-range, range));
        }
        self.denoised.record(&pred_original);

        // 2. Convert to an ODE derivative
        match self.first_order.take() {
            None => {
                // 2. Convert to an ODE derivative for 1st order
                let derivative = k_derivative(sample.view(), &pred_original, sigma_hat);
                let dt = sigma_next - sigma_hat;
                let mut prev = sample.to_owned();
                Zip::from(&mut prev).and(&derivative).for_each(|x, &d| *x += d * dt);
                self.first_order = Some(Predictor { derivative, dt, sample: sample.to_owned() });
                Ok(prev)
            }
            Some(p) => {
                // 2. 2nd order / Heun's method: average the predictor's and the corrector's derivatives.
                let Predictor { derivative: prev_derivative, dt, sample: stored } = p;
                if stored.shape() != sample.shape() {
                    return Err(Error::Internal("HeunDiscreteScheduler: sample shape changed within a step".into()));
                }
                let mut derivative = sample.to_owned();
                Zip::from(&mut derivative)
                    .and(&pred_original)
                    .and(&prev_derivative)
                    .for_each(|d, &x0, &pd| *d = (pd + (*d - x0) / sigma_next) / 2.0);
                let mut prev = stored;
                Zip::from(&mut prev).and(&derivative).for_each(|x, &d| *x += d * dt);
                Ok(prev)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testutil::{
        assert_sum_mean, check_goldens, check_k_over_configs, check_k_request_errors, check_two_evaluations, full_loop,
        k_test_config, K_RULES,
    };

    const CLASS: &str = "HeunDiscreteScheduler";

    #[test]
    fn matches_diffusers_goldens_for_every_option_set() {
        let r = check_goldens("k_family", Some(CLASS), &K_RULES);
        assert!(r.runs >= 14, "{r:?}");
    }

    #[test]
    fn check_over_configs() {
        check_k_over_configs(
            CLASS,
            &[
                json!({"use_karras_sigmas": true}),
                json!({"use_exponential_sigmas": true}),
                json!({"prediction_type": "sample"}),
                json!({"clip_sample": true, "clip_sample_range": 0.5}),
                json!({"beta_schedule": "exp"}),
            ],
        );
    }

    /// Two UNet evaluations per step: `2n − 1` timesteps, progress in requested steps.
    #[test]
    fn two_evaluations_per_step_and_progress_in_requested_steps() {
        check_two_evaluations("Heun", CLASS);
    }

    #[test]
    fn unsupported_options_are_request_errors() {
        check_k_request_errors(CLASS, true);
    }

    #[test]
    fn full_loops_match_diffusers() {
        let cases = [
            (json!({}), (0.1233, 0.0002)),
            (json!({"prediction_type": "v_prediction"}), (4.6934e-07, 6.1112e-10)),
            (json!({"use_karras_sigmas": true}), (0.00015, 1.9869554535034695e-07)),
        ];
        for (extra, want) in cases {
            assert_sum_mean(
                &extra.to_string(),
                full_loop(CLASS, &k_test_config(extra.clone()), None, None),
                want,
                1e-3,
            );
        }
    }
}
