//! `KDPM2AncestralDiscreteScheduler` ("DPM2 a"): k-diffusion's `sample_dpm_2_ancestral`, the DPM-Solver-2 step of
//! [`super::kdpm2`] towards `σ_down` with fresh noise of size `σ_up` added after the second evaluation (Karras et al.
//! 2022, <https://arxiv.org/abs/2206.00364>).
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_k_dpm_2_ancestral_discrete.py` of diffusers
//! 0.42.1: `__init__`, `set_timesteps`, `scale_model_input`, `state_in_first_order` and `step`. Grid layout as KDPM2:
//! `timesteps = [t0, t_mid0, t1, t_mid1, t2, …]` (`2n − 1` entries). One noise tensor of the model output's shape is
//! drawn after every second evaluation (`n − 1` draws for `n` steps; the lone last evaluation draws none).

use ndarray::{ArrayD, ArrayViewD};

use super::common::{
    add_scaled_noise, denoised_methods, interleave_repeat, k_scale_input, sigma_grid_methods, Denoised, KClassSpec,
    KSigmaConfig, SigmaGrid,
};
use super::kdpm2::{check_finite_grid, dpm2_step, interleave_midpoints, log_midpoint, Dpm2Sigmas};
use super::{Scheduler, SchedulerConfig};
use crate::error::Result;
use crate::rng::NoiseSource;

/// The options `KDPM2AncestralDiscreteScheduler` accepts: its diffusers `__init__` arguments (as KDPM2's).
pub(crate) const KEYS: &[&str] = super::kdpm2::KEYS;

const SPEC: KClassSpec = KClassSpec {
    class: "KDPM2AncestralDiscreteScheduler",
    beta_start: 0.00085,
    beta_end: 0.012,
    exp_schedule: false,
    sigma_conversions: true,
    zero_snr: false,
    sample_prediction: false,
};

/// Validated KDPM2-ancestral options, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Kdpm2AncestralConfig {
    k: KSigmaConfig,
}

impl Kdpm2AncestralConfig {
    /// Applies diffusers' class defaults to `c` and rejects what diffusers rejects (`sample` prediction raises
    /// NotImplementedError in its `step`).
    pub(crate) fn new(c: &SchedulerConfig) -> Result<Self> {
        Ok(Kdpm2AncestralConfig { k: KSigmaConfig::parse(c, &SPEC)? })
    }

    /// `KDPM2AncestralDiscreteScheduler(**config).set_timesteps(num_inference_steps)`.
    pub(crate) fn build(&self, num_inference_steps: usize) -> Result<Kdpm2AncestralDiscreteScheduler> {
        let grid = self.k.grid(num_inference_steps, true)?;
        let sigmas = grid.sigmas;
        let n1 = sigmas.len();
        // sigmas_next = sigmas.roll(-1); sigmas_next[-1] = 0
        let next: Vec<f32> = (0..n1).map(|i| if i + 1 < n1 { sigmas[i + 1] } else { 0.0 }).collect();
        // sigmas_up = (σn² (σ² − σn²) / σ²) ** 0.5; sigmas_down = (σn² − σ_up²) ** 0.5; sigmas_down[-1] = 0
        let up: Vec<f32> =
            sigmas.iter().zip(&next).map(|(&s, &sn)| (sn * sn * (s * s - sn * sn) / (s * s)).sqrt()).collect();
        let mut down: Vec<f32> = next.iter().zip(&up).map(|(&sn, &u)| (sn * sn - u * u).sqrt()).collect();
        down[n1 - 1] = 0.0;
        // sigmas_interpol = sigmas.log().lerp(sigmas_down.log(), 0.5).exp(); sigmas_interpol[-2:] = 0
        let mut interpol: Vec<f32> = sigmas.iter().zip(&down).map(|(&s, &d)| log_midpoint(s, d)).collect();
        for v in interpol.iter_mut().skip(n1.saturating_sub(2)) {
            *v = 0.0;
        }
        // timesteps = cat([timesteps[:1], stack((timesteps_interpol[:-2], timesteps[1:])).flatten()])
        let grid_ts = interleave_midpoints(&grid.timesteps, &interpol[..n1 - 2], &grid.tables.log_sigmas);
        let sigmas_all = interleave_repeat(&sigmas, true);
        check_finite_grid(SPEC.class, &grid_ts, &sigmas_all)?;
        Ok(Kdpm2AncestralDiscreteScheduler {
            config: self.clone(),
            grid: SigmaGrid::new(grid_ts, sigmas_all, self.k.spacing),
            sigmas_interpol: interleave_repeat(&interpol, true),
            sigmas_up: interleave_repeat(&up, true),
            sigmas_down: interleave_repeat(&down, true),
            stored_sample: None,
            denoised: Denoised::default(),
        })
    }
}

/// A built KDPM2-ancestral scheduler for one request: the interleaved grids plus the sample saved between two
/// evaluations.
#[derive(Debug, Clone)]
pub struct Kdpm2AncestralDiscreteScheduler {
    config: Kdpm2AncestralConfig,
    grid: SigmaGrid,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    /// `self.sample`: `Some` between the two evaluations of a step.
    stored_sample: Option<ArrayD<f32>>,
    denoised: Denoised,
}

impl Scheduler for Kdpm2AncestralDiscreteScheduler {
    sigma_grid_methods!(2);
    denoised_methods!();

    fn scale_model_input(&mut self, sample: ArrayViewD<'_, f32>, index: usize) -> ArrayD<f32> {
        let sigma = if self.stored_sample.is_none() || index == 0 {
            self.grid.sigmas[index]
        } else {
            self.sigmas_interpol[index - 1]
        };
        k_scale_input(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        self.grid.check_step(SPEC.class, index, model_output.shape(), sample.shape())?;
        let (sigmas, interpol, down) = (&self.grid.sigmas, &self.sigmas_interpol, &self.sigmas_down);
        let (mut prev, second) = dpm2_step(
            &mut self.stored_sample,
            &mut self.denoised,
            SPEC.class,
            self.config.k.prediction_type,
            index,
            |first_order| {
                // gamma = 0: sigma_hat = sigma; sigma_down = self.sigmas_down[step_index - 1] is unused on the
                // first-order branch.
                if first_order {
                    Dpm2Sigmas { sigma_hat: sigmas[index], sigma_interpol: interpol[index], sigma_target: 0.0 }
                } else {
                    Dpm2Sigmas {
                        sigma_hat: sigmas[index - 1],
                        sigma_interpol: interpol[index - 1],
                        sigma_target: down[index - 1],
                    }
                }
            },
            model_output,
            sample,
        )?;
        if second {
            // The ancestral noise after the 2nd-order step towards σ_down.
            add_scaled_noise(&mut prev, noise, self.sigmas_up[index - 1])?;
        }
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::super::testutil::{
        assert_sum_mean, check_goldens, check_k_over_configs, check_k_request_errors, check_two_evaluations, full_loop,
        k_test_config, ScriptedNoise, K_RULES, SDXL_JSON,
    };
    use super::super::{resolve, SchedulerConfig};
    use crate::error::ErrorCode;

    const CLASS: &str = "KDPM2AncestralDiscreteScheduler";

    #[test]
    fn matches_diffusers_goldens_for_every_option_set() {
        let r = check_goldens("k_family", Some(CLASS), &K_RULES);
        assert!(r.runs >= 12, "{r:?}");
    }

    #[test]
    fn check_over_configs() {
        check_k_over_configs(CLASS, &[json!({"use_karras_sigmas": true}), json!({"use_exponential_sigmas": true})]);
    }

    /// Two UNet evaluations per step: `2n − 1` timesteps, progress in requested steps.
    #[test]
    fn two_evaluations_per_step_and_progress_in_requested_steps() {
        check_two_evaluations("DPM2 a", CLASS);
    }

    /// Includes `sample` prediction, NotImplementedError in diffusers.
    #[test]
    fn unsupported_options_are_request_errors() {
        check_k_request_errors(CLASS, false);
    }

    #[test]
    fn full_loops_match_diffusers() {
        // The tests seed torch.manual_seed(0) and pass it as the generator.
        let cases = [
            (json!({}), None, (13979.9433, 18.2030), 5e-3),
            (json!({"prediction_type": "v_prediction"}), None, (331.8133, 0.4320), 1e-3),
            (json!({}), Some(8), (93087.3437, 121.2074), 5e-3),
        ];
        for (extra, t_start, want, mean_tol) in cases {
            let got = full_loop(CLASS, &k_test_config(extra.clone()), Some(0), t_start);
            assert_sum_mean(&extra.to_string(), got, want, mean_tol);
        }
    }

    /// diffusers 0.42.1 gives a NaN midpoint timestep for the cosine schedule (fixed later upstream, #14213); a NaN
    /// timestep cannot reach the UNet, so this is a request error.
    #[test]
    fn squaredcos_nan_grid_is_an_error() {
        let r = resolve(
            Some(CLASS),
            &k_test_config(json!({"beta_schedule": "squaredcos_cap_v2"})),
            &SchedulerConfig::default(),
        )
        .expect("resolves");
        let err = r.build(4).err().expect("NaN grid");
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{err}");
    }

    #[test]
    fn noise_is_drawn_after_every_second_evaluation() {
        let mut s =
            resolve(Some("DPM2 a Karras"), &Map::new(), &SchedulerConfig::from_json(SDXL_JSON).expect("parses"))
                .expect("resolves")
                .build(4)
                .expect("builds");
        let x = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[1, 4, 2, 2]));
        let mut noise = ScriptedNoise::new(vec![vec![0.0; 16]; 3]);
        let mut calls = Vec::new();
        for i in 0..s.timesteps().len() {
            let before = noise.calls;
            s.step(x.view(), i, x.view(), &mut noise).expect("step");
            calls.push(noise.calls - before);
        }
        assert_eq!(calls, vec![0, 1, 0, 1, 0, 1, 0]);
    }
}
