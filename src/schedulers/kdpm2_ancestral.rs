//! `KDPM2AncestralDiscreteScheduler` ("DPM2 a"): k-diffusion's `sample_dpm_2_ancestral`, the DPM-Solver-2 step of
//! [`super::kdpm2`] towards `σ_down` with fresh noise of size `σ_up` added after the second evaluation (Karras et al.
//! 2022, <https://arxiv.org/abs/2206.00364>).
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_k_dpm_2_ancestral_discrete.py` of diffusers
//! 0.42.1: `__init__`, `set_timesteps`, `scale_model_input`, `state_in_first_order` and `step`. Grid layout as KDPM2:
//! `timesteps = [t0, t_mid0, t1, t_mid1, t2, …]` (`2n − 1` entries). One noise tensor of the model output's shape is
//! drawn after every second evaluation (`n − 1` draws for `n` steps; the lone last evaluation draws none).

use ndarray::{ArrayD, ArrayViewD, Zip};

use super::common::{
    check_step_call, draw_noise, exp_f32, interleave_repeat, k_init_noise_sigma, k_pred_original, k_scale_input,
    ln_f32, sigma_to_t_f32, torch_lerp_f32, two_eval_completed_steps, KClassSpec, KSigmaConfig,
};
use super::kdpm2::check_finite_grid;
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
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
        let tables = self.k.tables();
        let (timesteps, sigmas) = self.k.grid(&tables, num_inference_steps, true)?;
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        let n1 = sigmas.len();
        // sigmas_next = sigmas.roll(-1); sigmas_next[-1] = 0
        let next: Vec<f32> = (0..n1).map(|i| if i + 1 < n1 { sigmas[i + 1] } else { 0.0 }).collect();
        // sigmas_up = (σn² (σ² − σn²) / σ²) ** 0.5; sigmas_down = (σn² − σ_up²) ** 0.5; sigmas_down[-1] = 0
        let up: Vec<f32> =
            sigmas.iter().zip(&next).map(|(&s, &sn)| (sn * sn * (s * s - sn * sn) / (s * s)).sqrt()).collect();
        let mut down: Vec<f32> = next.iter().zip(&up).map(|(&sn, &u)| (sn * sn - u * u).sqrt()).collect();
        down[n1 - 1] = 0.0;
        // sigmas_interpol = sigmas.log().lerp(sigmas_down.log(), 0.5).exp(); sigmas_interpol[-2:] = 0
        let mut interpol: Vec<f32> =
            sigmas.iter().zip(&down).map(|(&s, &d)| exp_f32(torch_lerp_f32(ln_f32(s), ln_f32(d), 0.5))).collect();
        for v in interpol.iter_mut().skip(n1.saturating_sub(2)) {
            *v = 0.0;
        }
        let timesteps_interpol: Vec<f32> = interpol.iter().map(|&s| sigma_to_t_f32(s, &tables.log_sigmas)).collect();
        let timesteps: Vec<f32> = timesteps.into_iter().map(|t| t as f32).collect();
        // timesteps = cat([timesteps[:1], stack((timesteps_interpol[:-2], timesteps[1:])).flatten()])
        let mut grid = vec![timesteps[0]];
        for (ti, t) in timesteps_interpol[..n1 - 2].iter().zip(&timesteps[1..]) {
            grid.push(*ti);
            grid.push(*t);
        }
        let sigmas_all = interleave_repeat(&sigmas, true);
        check_finite_grid(SPEC.class, &grid, &sigmas_all)?;
        let init_noise_sigma = k_init_noise_sigma(&sigmas_all, self.k.spacing);
        Ok(Kdpm2AncestralDiscreteScheduler {
            config: self.clone(),
            timesteps: grid,
            sigmas: sigmas_all,
            sigmas_interpol: interleave_repeat(&interpol, true),
            sigmas_up: interleave_repeat(&up, true),
            sigmas_down: interleave_repeat(&down, true),
            init_noise_sigma,
            stored_sample: None,
            begin_index: None,
        })
    }
}

/// A built KDPM2-ancestral scheduler for one request: the interleaved grids plus the sample saved between two
/// evaluations.
#[derive(Debug, Clone)]
pub struct Kdpm2AncestralDiscreteScheduler {
    config: Kdpm2AncestralConfig,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    init_noise_sigma: f32,
    /// `self.sample`: `Some` between the two evaluations of a step.
    stored_sample: Option<ArrayD<f32>>,
    begin_index: Option<usize>,
}

impl Scheduler for Kdpm2AncestralDiscreteScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// diffusers' interleaved `sigmas` (`2n + 2` entries).
    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn order(&self) -> usize {
        2
    }

    fn scale_model_input(&mut self, sample: ArrayViewD<'_, f32>, index: usize) -> ArrayD<f32> {
        let sigma = if self.stored_sample.is_none() || index == 0 {
            self.sigmas[index]
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
        check_step_call(
            SPEC.class,
            index,
            self.timesteps.len(),
            self.begin_index,
            model_output.shape(),
            sample.shape(),
        )?;
        let first_order = self.stored_sample.is_none();
        if !first_order && index == 0 {
            return Err(Error::Internal("KDPM2AncestralDiscreteScheduler: second evaluation at index 0".into()));
        }
        let (sigma, sigma_interpol, sigma_up, sigma_down) = if first_order {
            // sigma_down = self.sigmas_down[step_index - 1] is unused on the first-order branch.
            (self.sigmas[index], self.sigmas_interpol[index], self.sigmas_up[index], 0.0)
        } else {
            (
                self.sigmas[index - 1],
                self.sigmas_interpol[index - 1],
                self.sigmas_up[index - 1],
                self.sigmas_down[index - 1],
            )
        };
        // gamma = 0: sigma_hat = sigma.
        let sigma_hat = sigma;

        // 1. compute predicted original sample (x_0) from sigma-scaled predicted noise
        let sigma_input = if first_order { sigma_hat } else { sigma_interpol };
        let pred_original =
            k_pred_original(self.config.k.prediction_type, sigma_input, model_output.view(), sample.view());

        match self.stored_sample.take() {
            None => {
                // 2. Convert to an ODE derivative for 1st order: Euler step to the midpoint.
                let dt = sigma_interpol - sigma_hat;
                let mut prev = sample.to_owned();
                Zip::from(&mut prev).and(&pred_original).for_each(|x, &x0| {
                    let derivative = (*x - x0) / sigma_hat;
                    *x += derivative * dt;
                });
                self.stored_sample = Some(sample.to_owned());
                Ok(prev)
            }
            Some(stored) => {
                // 2. 2nd order / KDPM2's method towards σ_down, then the ancestral noise.
                if stored.shape() != sample.shape() {
                    return Err(Error::Internal(
                        "KDPM2AncestralDiscreteScheduler: sample shape changed within a step".into(),
                    ));
                }
                let dt = sigma_down - sigma_hat;
                let mut prev = stored;
                Zip::from(&mut prev).and(&sample).and(&pred_original).for_each(|x, &s, &x0| {
                    let derivative = (s - x0) / sigma_interpol;
                    *x += derivative * dt;
                });
                let eps = draw_noise(noise, model_output.shape())?;
                // `prev` iterates in logical (row-major) order, the noise's order.
                prev.iter_mut().zip(eps).for_each(|(x, e)| *x += e * sigma_up);
                Ok(prev)
            }
        }
    }

    fn set_begin_index(&mut self, begin_index: usize) {
        self.begin_index = Some(begin_index);
    }

    fn completed_steps(&self, index: usize) -> usize {
        two_eval_completed_steps(index, self.timesteps.len())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::super::euler_ancestral::k_goldens::{self, check_over_config, full_loop, test_config};
    use super::super::testutil::{ScriptedNoise, SDXL_JSON};
    use super::super::{resolve, SchedulerConfig};
    use crate::error::ErrorCode;

    const CLASS: &str = "KDPM2AncestralDiscreteScheduler";

    #[test]
    fn matches_diffusers_goldens_for_every_option_set() {
        let r = k_goldens::check_class(CLASS);
        assert!(r.runs >= 12, "{r:?}");
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
            json!({"use_karras_sigmas": true}),
            json!({"use_exponential_sigmas": true}),
            json!({"timestep_spacing": "leading", "steps_offset": 1}),
            json!({"timestep_spacing": "trailing"}),
        ] {
            check_over_config(CLASS, &test_config(extra));
        }
    }

    /// Two UNet evaluations per step: `2n − 1` timesteps, progress in requested steps.
    #[test]
    fn two_evaluations_per_step_and_progress_in_requested_steps() {
        let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        let r = resolve(Some("DPM2 a"), &Map::new(), &model).expect("resolves");
        assert_eq!(r.class_name, CLASS);
        let s = r.build(5).expect("builds");
        assert_eq!((s.order(), s.timesteps().len()), (2, 9));
        let progress: Vec<usize> = (0..9).map(|i| s.completed_steps(i)).collect();
        assert_eq!(progress, vec![0, 1, 1, 2, 2, 3, 3, 4, 5]);
        let one = r.build(1).expect("builds");
        assert_eq!((one.timesteps().len(), one.completed_steps(0)), (1, 1));
        assert!(r.build(0).is_err());
    }

    #[test]
    fn unsupported_options_are_request_errors() {
        let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        let err = resolve(Some(CLASS), &test_config(json!({"use_beta_sigmas": true})), &model).expect_err("beta");
        assert_eq!(err.code(), ErrorCode::Unsupported);
        let err = resolve(Some(CLASS), &test_config(json!({"rescale_betas_zero_snr": true})), &model).expect_err("snr");
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
        let err =
            resolve(Some(CLASS), &test_config(json!({"prediction_type": "original_sample"})), &model).expect_err("os");
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
    }

    #[test]
    fn full_loops_match_diffusers() {
        // The tests seed torch.manual_seed(0) and pass it as the generator.
        let (sum, mean) = full_loop(CLASS, &test_config(json!({})), Some(0), None);
        assert!((sum - 13979.9433).abs() < 1e-2, "sum {sum}");
        assert!((mean - 18.2030).abs() < 5e-3, "mean {mean}");
        let (sum, mean) = full_loop(CLASS, &test_config(json!({"prediction_type": "v_prediction"})), Some(0), None);
        assert!((sum - 331.8133).abs() < 1e-2, "v: sum {sum}");
        assert!((mean - 0.4320).abs() < 1e-3, "v: mean {mean}");
        let (sum, mean) = full_loop(CLASS, &test_config(json!({})), Some(0), Some(8));
        assert!((sum - 93087.3437).abs() < 1e-2, "with noise: sum {sum}");
        assert!((mean - 121.2074).abs() < 5e-3, "with noise: mean {mean}");
    }

    /// diffusers 0.42.1 gives a NaN midpoint timestep for the cosine schedule (fixed later upstream, #14213); a NaN
    /// timestep cannot reach the UNet, so this is a request error.
    #[test]
    fn squaredcos_nan_grid_is_an_error() {
        let r = resolve(
            Some(CLASS),
            &test_config(json!({"beta_schedule": "squaredcos_cap_v2"})),
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

    #[test]
    fn sample_prediction_is_not_implemented_in_diffusers() {
        let err = resolve(Some(CLASS), &test_config(json!({"prediction_type": "sample"})), &SchedulerConfig::default())
            .expect_err("sample");
        assert!(err.to_string().contains("data.scheduler.prediction_type"), "{err}");
    }
}
