//! `EulerAncestralDiscreteScheduler` ("Euler a"): ancestral sampling with Euler steps, k-diffusion's
//! `sample_euler_ancestral` (Karras et al. 2022, <https://arxiv.org/abs/2206.00364>, with the ancestral split of each
//! step into a deterministic part down to `σ_down` and fresh noise of size `σ_up`).
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_euler_ancestral_discrete.py` of diffusers
//! 0.42.1: `__init__` (tables), `set_timesteps`, `scale_model_input` and `step`. Every step draws one noise tensor
//! of the model output's shape (`randn_tensor(model_output.shape, generator=…)`), the last one included.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{
    add_scaled_noise, denoised_methods, k_euler_update, k_pred_original, sigma_grid_methods, Denoised, KClassSpec,
    KSigmaConfig, SigmaGrid,
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
    SPEC.defaults()
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
        // sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        let grid = self.k.grid(num_inference_steps, false)?;
        Ok(EulerAncestralDiscreteScheduler {
            config: self.clone(),
            grid: SigmaGrid::new(grid.timesteps, grid.sigmas, self.k.spacing),
            denoised: Denoised::default(),
        })
    }
}

/// A built Euler-ancestral scheduler for one request (no history: each step needs only its two sigmas).
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    config: EulerAncestralConfig,
    grid: SigmaGrid,
    denoised: Denoised,
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    sigma_grid_methods!(1);
    denoised_methods!();

    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        self.grid.check_step(SPEC.class, index, model_output.shape(), sample.shape())?;
        let sigma = self.grid.sigmas[index];

        // 1. compute predicted original sample (x_0) from sigma-scaled predicted noise
        let pred_original = k_pred_original(self.config.k.prediction_type, sigma, model_output.view(), sample.view());
        self.denoised.record(&pred_original);

        // The ancestral split (float32 scalars, as the 0-d torch tensors):
        // σ_up = (σ_to² (σ_from² − σ_to²) / σ_from²)^½, σ_down = (σ_to² − σ_up²)^½.
        let sigma_from = sigma;
        let sigma_to = self.grid.sigmas[index + 1];
        let sigma_up =
            (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();

        // 2. Convert to an ODE derivative and take the Euler step to σ_down.
        let dt = sigma_down - sigma;
        let mut prev = k_euler_update(sample.to_owned(), sample, &pred_original, sigma, dt);

        // 3. Add fresh noise of size σ_up (drawn on every step, also when σ_up = 0).
        add_scaled_noise(&mut prev, noise, sigma_up)?;
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::super::resolve;
    use super::super::testutil::{
        assert_sum_mean, check_goldens, check_k_over_configs, full_loop, k_test_config, K_RULES, SDXL_JSON,
    };
    use super::super::SchedulerConfig;
    use crate::error::ErrorCode;

    const CLASS: &str = "EulerAncestralDiscreteScheduler";

    #[test]
    fn matches_diffusers_goldens_for_every_option_set() {
        let r = check_goldens("k_family", Some(CLASS), &K_RULES);
        assert!(r.runs >= 12, "{r:?}");
    }

    /// diffusers `test_full_loop_no_noise` / `_v_prediction` / `_with_noise` (the generator is
    /// `torch.manual_seed(0)`; Euler a always draws).
    #[test]
    fn full_loops_match_diffusers() {
        let cases = [
            (json!({}), None, (152.3192, 0.1983)),
            (json!({"prediction_type": "v_prediction"}), None, (108.4439, 0.1412)),
            (json!({}), Some(8), (56163.0508, 73.1290)),
        ];
        for (extra, t_start, want) in cases {
            assert_sum_mean(
                &extra.to_string(),
                full_loop(CLASS, &k_test_config(extra.clone()), Some(0), t_start),
                want,
                1e-3,
            );
        }
    }

    #[test]
    fn check_over_configs() {
        check_k_over_configs(
            CLASS,
            &[json!({"rescale_betas_zero_snr": true}), json!({"rescale_betas_zero_snr": false})],
        );
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
            resolve(Some("Euler a"), &k_test_config(json!({"prediction_type": "sample"})), &model).expect_err("sample");
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
