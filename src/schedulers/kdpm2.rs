//! `KDPM2DiscreteScheduler` ("DPM2"): k-diffusion's `sample_dpm_2`, the second-order DPM-Solver-2 step in sigma space
//! (Karras et al. 2022, <https://arxiv.org/abs/2206.00364>; Lu et al. 2022, <https://arxiv.org/abs/2206.00927>):
//! an Euler step to the log-midpoint `σ_mid = (σ_i σ_{i+1})^½`, then the full step with the derivative there.
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_k_dpm_2_discrete.py` of diffusers 0.42.1:
//! `__init__`, `set_timesteps`, `scale_model_input`, `state_in_first_order` and `step`. The grid is diffusers'
//! interleaved one: `timesteps = [t0, t_mid1, t1, t_mid2, t2, …]` (`2n − 1` entries, one per UNet evaluation, the
//! midpoint timesteps from `_sigma_to_t` of the interpolated sigmas), `sigmas = [σ0, σ1, σ1, …, 0, 0, 0]`
//! (`2n + 2`) and `sigmas_interpol` alike.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{
    denoised_methods, exp_f32, interleave_repeat, k_euler_update, k_pred_original, k_scale_input, ln_f32,
    sigma_grid_methods, sigma_to_t_f32, torch_lerp_f32, Denoised, KClassSpec, KSigmaConfig, PredictionType, SigmaGrid,
    K_SIGMA_KEYS,
};
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// The options `KDPM2DiscreteScheduler` accepts: its diffusers `__init__` arguments.
pub(crate) const KEYS: &[&str] = K_SIGMA_KEYS;

/// diffusers' defaults for [`KEYS`] (the same for `KDPM2AncestralDiscreteScheduler`).
pub(crate) fn defaults() -> serde_json::Map<String, serde_json::Value> {
    SPEC.defaults()
}

const SPEC: KClassSpec = KClassSpec {
    class: "KDPM2DiscreteScheduler",
    beta_start: 0.00085,
    beta_end: 0.012,
    exp_schedule: false,
    sigma_conversions: true,
    zero_snr: false,
    sample_prediction: false,
};

/// Rejects a grid with non-finite timesteps or sigmas (diffusers 0.42.1 produces NaN midpoints for some beta
/// schedules; a NaN timestep cannot be fed to the UNet).
pub(crate) fn check_finite_grid(class: &str, timesteps: &[f32], sigmas: &[f32]) -> Result<()> {
    if timesteps.iter().chain(sigmas).all(|v| v.is_finite()) {
        return Ok(());
    }
    Err(Error::field(
        "data.scheduler",
        format!(
            "{class} gives non-finite timesteps or sigmas for this beta schedule and step count in diffusers 0.42.1 \
             (float32 underflow of the interpolated sigmas); choose another beta_schedule or scheduler"
        ),
    ))
}

/// `a.log().lerp(b.log(), 0.5).exp()` on float32 tensors: the log-midpoint of two sigmas (`sigmas_interpol`).
pub(crate) fn log_midpoint(a: f32, b: f32) -> f32 {
    exp_f32(torch_lerp_f32(ln_f32(a), ln_f32(b), 0.5))
}

/// The interleaved timesteps of KDPM2 and KDPM2Ancestral: `cat([timesteps[:1], stack((midpoints,
/// timesteps[1:])).flatten()])`, where the midpoint timesteps are `_sigma_to_t` of `sigmas_interpol` on float32
/// torch scalars (`midpoints` are those sigmas, already sliced as the class slices them).
pub(crate) fn interleave_midpoints(timesteps: &[f32], midpoints: &[f32], log_sigmas: &[f32]) -> Vec<f32> {
    let mut grid = vec![timesteps[0]];
    for (&s, &t) in midpoints.iter().zip(&timesteps[1..]) {
        grid.push(sigma_to_t_f32(s, log_sigmas));
        grid.push(t);
    }
    grid
}

/// The noise levels of one KDPM2 evaluation: `sigma_hat` (= σ, gamma = 0), `sigma_interpol` and the target of the
/// second-order step (σ_{i+1}, or σ_down for the ancestral variant).
pub(crate) struct Dpm2Sigmas {
    /// `sigma_hat`.
    pub sigma_hat: f32,
    /// `sigma_interpol`.
    pub sigma_interpol: f32,
    /// Where the second evaluation steps to (`sigma_next` / `sigma_down`).
    pub sigma_target: f32,
}

/// Ports the shared part of `KDPM2DiscreteScheduler.step` and `KDPM2AncestralDiscreteScheduler.step`: the first
/// evaluation takes an Euler step to the midpoint and saves the sample; the second takes the midpoint derivative over
/// the whole step from the saved sample. `sigmas(first_order)` looks up the evaluation's noise levels. Returns the
/// next sample and whether this was the second (full-step) evaluation; `denoised` records the evaluation's x₀.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dpm2_step(
    stored_sample: &mut Option<ArrayD<f32>>,
    denoised: &mut Denoised,
    class: &str,
    prediction_type: PredictionType,
    index: usize,
    sigmas: impl FnOnce(bool) -> Dpm2Sigmas,
    model_output: ArrayViewD<'_, f32>,
    sample: ArrayViewD<'_, f32>,
) -> Result<(ArrayD<f32>, bool)> {
    let first_order = stored_sample.is_none();
    if !first_order && index == 0 {
        return Err(Error::Internal(format!("{class}: second evaluation at index 0")));
    }
    let Dpm2Sigmas { sigma_hat, sigma_interpol, sigma_target } = sigmas(first_order);

    // 1. compute predicted original sample (x_0) from sigma-scaled predicted noise
    let sigma_input = if first_order { sigma_hat } else { sigma_interpol };
    let pred_original = k_pred_original(prediction_type, sigma_input, model_output, sample.view());
    denoised.record(&pred_original);

    match stored_sample.take() {
        None => {
            // 2. Convert to an ODE derivative for 1st order: Euler step to the midpoint.
            let prev =
                k_euler_update(sample.to_owned(), sample.view(), &pred_original, sigma_hat, sigma_interpol - sigma_hat);
            *stored_sample = Some(sample.to_owned());
            Ok((prev, false))
        }
        Some(stored) => {
            // 2. 2nd order / KDPM2's method: the midpoint derivative over the whole step, from the saved sample.
            if stored.shape() != sample.shape() {
                return Err(Error::Internal(format!("{class}: sample shape changed within a step")));
            }
            let dt = sigma_target - sigma_hat;
            Ok((k_euler_update(stored, sample, &pred_original, sigma_interpol, dt), true))
        }
    }
}

/// Validated KDPM2 options, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Kdpm2Config {
    k: KSigmaConfig,
}

impl Kdpm2Config {
    /// Applies diffusers' class defaults to `c` and rejects what diffusers rejects (`sample` prediction raises
    /// NotImplementedError in its `step`).
    pub(crate) fn new(c: &SchedulerConfig) -> Result<Self> {
        Ok(Kdpm2Config { k: KSigmaConfig::parse(c, &SPEC)? })
    }

    /// `KDPM2DiscreteScheduler(**config).set_timesteps(num_inference_steps)`.
    pub(crate) fn build(&self, num_inference_steps: usize) -> Result<Kdpm2DiscreteScheduler> {
        // Karras timesteps are rounded (`np.array([...]).round()`); exponential ones are not.
        let grid = self.k.grid(num_inference_steps, true)?;
        let sigmas = grid.sigmas;
        // sigmas_interpol = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp() (float32; entry 0 pairs σ0 with
        // the final 0 and is NaN, entry n is 0)
        let n1 = sigmas.len();
        let interpol: Vec<f32> = (0..n1).map(|i| log_midpoint(sigmas[i], sigmas[(i + n1 - 1) % n1])).collect();
        // timesteps = cat([timesteps[:1], stack((timesteps_interpol[1:-1], timesteps[1:])).flatten()])
        let timesteps = interleave_midpoints(&grid.timesteps, &interpol[1..n1 - 1], &grid.tables.log_sigmas);
        let sigmas_all = interleave_repeat(&sigmas, true);
        check_finite_grid(SPEC.class, &timesteps, &sigmas_all)?;
        Ok(Kdpm2DiscreteScheduler {
            config: self.clone(),
            grid: SigmaGrid::new(timesteps, sigmas_all, self.k.spacing),
            sigmas_interpol: interleave_repeat(&interpol, true),
            stored_sample: None,
            denoised: Denoised::default(),
        })
    }
}

/// A built KDPM2 scheduler for one request: the interleaved grids plus the sample saved between two evaluations.
#[derive(Debug, Clone)]
pub struct Kdpm2DiscreteScheduler {
    config: Kdpm2Config,
    grid: SigmaGrid,
    sigmas_interpol: Vec<f32>,
    /// `self.sample`: `Some` between the two evaluations of a step (`state_in_first_order` is `sample is None`).
    stored_sample: Option<ArrayD<f32>>,
    denoised: Denoised,
}

impl Kdpm2DiscreteScheduler {
    /// diffusers' interleaved `sigmas_interpol` (`2n + 2` entries; entry 0 is NaN as in diffusers, never used).
    pub fn sigmas_interpol(&self) -> &[f32] {
        &self.sigmas_interpol
    }
}

impl Scheduler for Kdpm2DiscreteScheduler {
    sigma_grid_methods!(2);
    denoised_methods!();

    fn scale_model_input(&mut self, sample: ArrayViewD<'_, f32>, index: usize) -> ArrayD<f32> {
        let sigma = if self.stored_sample.is_none() { self.grid.sigmas[index] } else { self.sigmas_interpol[index] };
        k_scale_input(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        self.grid.check_step(SPEC.class, index, model_output.shape(), sample.shape())?;
        let (sigmas, interpol) = (&self.grid.sigmas, &self.sigmas_interpol);
        let (prev, _) = dpm2_step(
            &mut self.stored_sample,
            &mut self.denoised,
            SPEC.class,
            self.config.k.prediction_type,
            index,
            |first_order| {
                // gamma = 0: sigma_hat = sigma.
                if first_order {
                    Dpm2Sigmas { sigma_hat: sigmas[index], sigma_interpol: interpol[index + 1], sigma_target: 0.0 }
                } else {
                    Dpm2Sigmas {
                        sigma_hat: sigmas[index - 1],
                        sigma_interpol: interpol[index],
                        sigma_target: sigmas[index],
                    }
                }
            },
            model_output,
            sample,
        )?;
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testutil::{
        assert_sum_mean, check_goldens, check_k_over_configs, check_k_request_errors, check_two_evaluations, full_loop,
        k_test_config, K_RULES,
    };

    const CLASS: &str = "KDPM2DiscreteScheduler";

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
        check_two_evaluations("DPM2", CLASS);
    }

    /// Includes `sample` prediction, NotImplementedError in diffusers.
    #[test]
    fn unsupported_options_are_request_errors() {
        check_k_request_errors(CLASS, false);
    }

    #[test]
    fn full_loops_match_diffusers() {
        let cases = [
            (json!({}), None, (20.4125, 0.0266)),
            (json!({"prediction_type": "v_prediction"}), None, (4.6934e-07, 6.1112e-10)),
            (json!({}), Some(8), (70408.4062, 91.6776)),
        ];
        for (extra, t_start, want) in cases {
            assert_sum_mean(
                &extra.to_string(),
                full_loop(CLASS, &k_test_config(extra.clone()), None, t_start),
                want,
                1e-3,
            );
        }
    }
}
