//! `KDPM2DiscreteScheduler` ("DPM2"): k-diffusion's `sample_dpm_2`, the second-order DPM-Solver-2 step in sigma space
//! (Karras et al. 2022, <https://arxiv.org/abs/2206.00364>; Lu et al. 2022, <https://arxiv.org/abs/2206.00927>):
//! an Euler step to the log-midpoint `σ_mid = (σ_i σ_{i+1})^½`, then the full step with the derivative there.
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_k_dpm_2_discrete.py` of diffusers 0.42.1:
//! `__init__`, `set_timesteps`, `scale_model_input`, `state_in_first_order` and `step`. The grid is diffusers'
//! interleaved one: `timesteps = [t0, t_mid1, t1, t_mid2, t2, …]` (`2n − 1` entries, one per UNet evaluation, the
//! midpoint timesteps from `_sigma_to_t` of the interpolated sigmas), `sigmas = [σ0, σ1, σ1, …, 0, 0, 0]`
//! (`2n + 2`) and `sigmas_interpol` alike.

use ndarray::{ArrayD, ArrayViewD, Zip};

use super::common::{
    check_step_call, exp_f32, interleave_repeat, k_init_noise_sigma, k_pred_original, k_scale_input, ln_f32,
    sigma_to_t_f32, torch_lerp_f32, two_eval_completed_steps, KClassSpec, KSigmaConfig,
};
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// The options `KDPM2DiscreteScheduler` accepts: its diffusers `__init__` arguments.
pub(crate) const KEYS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
];

/// diffusers' defaults for [`KEYS`] (the same for `KDPM2AncestralDiscreteScheduler`).
pub(crate) fn defaults() -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear",
        "trained_betas": null, "use_karras_sigmas": false, "use_exponential_sigmas": false,
        "use_beta_sigmas": false, "prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
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
        let tables = self.k.tables();
        // Karras timesteps are rounded (`np.array([...]).round()`); exponential ones are not.
        let (timesteps, sigmas) = self.k.grid(&tables, num_inference_steps, true)?;
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        // sigmas_interpol = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp() (float32; entry 0 pairs σ0 with
        // the final 0 and is NaN, entry n is 0)
        let n1 = sigmas.len();
        let interpol: Vec<f32> = (0..n1)
            .map(|i| exp_f32(torch_lerp_f32(ln_f32(sigmas[i]), ln_f32(sigmas[(i + n1 - 1) % n1]), 0.5)))
            .collect();
        // timesteps_interpol = _sigma_to_t(σ_interpol, log_sigmas) on float32 torch scalars.
        let timesteps_interpol: Vec<f32> = interpol.iter().map(|&s| sigma_to_t_f32(s, &tables.log_sigmas)).collect();
        let timesteps: Vec<f32> = timesteps.into_iter().map(|t| t as f32).collect();
        // timesteps = cat([timesteps[:1], stack((timesteps_interpol[1:-1], timesteps[1:])).flatten()])
        let mut grid = vec![timesteps[0]];
        for (ti, t) in timesteps_interpol[1..n1 - 1].iter().zip(&timesteps[1..]) {
            grid.push(*ti);
            grid.push(*t);
        }
        let sigmas_all = interleave_repeat(&sigmas, true);
        let interpol_all = interleave_repeat(&interpol, true);
        check_finite_grid(SPEC.class, &grid, &sigmas_all)?;
        let init_noise_sigma = k_init_noise_sigma(&sigmas_all, self.k.spacing);
        Ok(Kdpm2DiscreteScheduler {
            config: self.clone(),
            timesteps: grid,
            sigmas: sigmas_all,
            sigmas_interpol: interpol_all,
            init_noise_sigma,
            stored_sample: None,
            begin_index: None,
        })
    }
}

/// A built KDPM2 scheduler for one request: the interleaved grids plus the sample saved between two evaluations.
#[derive(Debug, Clone)]
pub struct Kdpm2DiscreteScheduler {
    config: Kdpm2Config,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    init_noise_sigma: f32,
    /// `self.sample`: `Some` between the two evaluations of a step (`state_in_first_order` is `sample is None`).
    stored_sample: Option<ArrayD<f32>>,
    begin_index: Option<usize>,
}

impl Kdpm2DiscreteScheduler {
    /// diffusers' interleaved `sigmas_interpol` (`2n + 2` entries; entry 0 is NaN as in diffusers, never used).
    pub fn sigmas_interpol(&self) -> &[f32] {
        &self.sigmas_interpol
    }
}

impl Scheduler for Kdpm2DiscreteScheduler {
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
        let sigma = if self.stored_sample.is_none() { self.sigmas[index] } else { self.sigmas_interpol[index] };
        k_scale_input(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        _noise: &mut dyn NoiseSource,
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
            return Err(Error::Internal("KDPM2DiscreteScheduler: second evaluation at index 0".into()));
        }
        let (sigma, sigma_interpol, sigma_next) = if first_order {
            (self.sigmas[index], self.sigmas_interpol[index + 1], self.sigmas[index + 1])
        } else {
            (self.sigmas[index - 1], self.sigmas_interpol[index], self.sigmas[index])
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
                // 2. 2nd order / KDPM2's method: the midpoint derivative over the whole step, from the saved sample.
                if stored.shape() != sample.shape() {
                    return Err(Error::Internal("KDPM2DiscreteScheduler: sample shape changed within a step".into()));
                }
                let dt = sigma_next - sigma_hat;
                let mut prev = stored;
                Zip::from(&mut prev).and(&sample).and(&pred_original).for_each(|x, &s, &x0| {
                    let derivative = (s - x0) / sigma_interpol;
                    *x += derivative * dt;
                });
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
    use super::super::testutil::SDXL_JSON;
    use super::super::{resolve, SchedulerConfig};
    use crate::error::ErrorCode;

    const CLASS: &str = "KDPM2DiscreteScheduler";

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
        let r = resolve(Some("DPM2"), &Map::new(), &model).expect("resolves");
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
        let cases =
            [(json!({}), 20.4125, 0.0266), (json!({"prediction_type": "v_prediction"}), 4.6934e-07, 6.1112e-10)];
        for (extra, want_sum, want_mean) in cases {
            let (sum, mean) = full_loop(CLASS, &test_config(extra.clone()), None, None);
            assert!((sum - want_sum).abs() < 1e-2, "{extra}: sum {sum}");
            assert!((mean - want_mean).abs() < 1e-3, "{extra}: mean {mean}");
        }
        let (sum, mean) = full_loop(CLASS, &test_config(json!({})), None, Some(8));
        assert!((sum - 70408.4062).abs() < 1e-2, "with noise: sum {sum}");
        assert!((mean - 91.6776).abs() < 1e-3, "with noise: mean {mean}");
    }

    #[test]
    fn sample_prediction_is_not_implemented_in_diffusers() {
        let err = resolve(Some(CLASS), &test_config(json!({"prediction_type": "sample"})), &SchedulerConfig::default())
            .expect_err("sample");
        assert!(err.to_string().contains("data.scheduler.prediction_type"), "{err}");
    }
}
