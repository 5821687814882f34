//! `DPMSolverSinglestepScheduler`: the singlestep DPM-Solver / DPM-Solver++ (Lu et al. 2022,
//! <https://arxiv.org/abs/2206.00927>, <https://arxiv.org/abs/2211.01095>): each order-k step is split into k UNet
//! evaluations from one base sample. A1111's "DPM++ SDE" in diffusers' scheduler table.
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_dpmsolver_singlestep.py` of diffusers
//! 0.42.1: `__init__` (checks), `get_order_list`, `set_timesteps` (linspace grid only: this class has no
//! `timestep_spacing`, `steps_offset` or `rescale_betas_zero_snr`), `convert_model_output`,
//! `singlestep_dpm_solver_{second,third}_order_update` and `step` (the `order_list`, the base `self.sample` taken at
//! each group's first-order evaluation). Shared pieces live in `dpm_family.rs`.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{check_steps, denoised_methods, exp_f32, option_field, Denoised, FinalSigmas, TimestepSpacing};
use super::dpm_family::{
    check_variance_type, clipped_index, draw_noise, first_order_update, grid_scheduler_methods, lincomb, need_noise,
    parse_algorithm, parse_lambda_min_clipped, parse_solver_type, second_order_update, spaced_timesteps, zip2,
    Algorithm, FamilyOptions, Grid, History, SolverType,
};
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// The options `DPMSolverSinglestepScheduler` accepts: its diffusers `__init__` arguments.
pub(crate) const KEYS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "solver_order",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "algorithm_type",
    "solver_type",
    "lower_order_final",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_flow_sigmas",
    "flow_shift",
    "final_sigmas_type",
    "lambda_min_clipped",
    "variance_type",
    "use_dynamic_shifting",
    "time_shift_type",
];

/// diffusers' defaults for [`KEYS`].
pub(crate) fn defaults() -> serde_json::Map<String, serde_json::Value> {
    super::common::json_object(serde_json::json!({
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": null, "solver_order": 2, "prediction_type": "epsilon", "thresholding": false,
        "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint", "lower_order_final": false, "use_karras_sigmas": false,
        "use_exponential_sigmas": false, "use_beta_sigmas": false, "use_flow_sigmas": false, "flow_shift": 1.0,
        "final_sigmas_type": "zero", "lambda_min_clipped": "-Infinity", "variance_type": null,
        "use_dynamic_shifting": false, "time_shift_type": "exponential"
    }))
}

/// Validated `DPMSolverSinglestepScheduler` options, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DpmSinglestepConfig {
    family: FamilyOptions,
    algorithm: Algorithm,
    solver_type: SolverType,
    lower_order_final: bool,
    lambda_min_clipped: f64,
}

impl DpmSinglestepConfig {
    /// Applies diffusers' class defaults to `c` and rejects what diffusers rejects (ports the checks of `__init__`).
    /// Keys of other classes in the model config (`timestep_spacing`, `steps_offset`, `rescale_betas_zero_snr`) are
    /// ignored, as diffusers ignores them.
    pub(crate) fn new(c: &SchedulerConfig) -> Result<Self> {
        const CLASS: &str = "DPMSolverSinglestepScheduler";
        let family = FamilyOptions::new(c, CLASS, false)?;
        let algorithm = parse_algorithm(c, family.final_sigmas, false)?;
        check_variance_type(c)?;
        if algorithm == Algorithm::DpmSolver && family.thresholding.is_some() {
            // convert_model_output indexes `self.alpha_t[timestep]` with timestep=None there, which fails.
            return Err(Error::unsupported(
                option_field("thresholding"),
                "diffusers 0.42.1 fails on thresholding with algorithm_type `dpmsolver` in this scheduler; use \
                 `dpmsolver++`",
            ));
        }
        let lambda_min_clipped = parse_lambda_min_clipped(c)?;
        Ok(DpmSinglestepConfig {
            family,
            algorithm,
            solver_type: parse_solver_type(c)?,
            lower_order_final: c.lower_order_final.unwrap_or(false),
            lambda_min_clipped,
        })
    }

    /// Ports `get_order_list(steps)` with the `lower_order_final` that `set_timesteps` forces on (uneven step counts,
    /// or `final_sigmas_type="zero"`).
    fn order_list(&self, steps: usize) -> Vec<usize> {
        let order = self.family.solver_order;
        let zero = self.family.final_sigmas == FinalSigmas::Zero;
        let lower_order_final = self.lower_order_final || !steps.is_multiple_of(order) || zero;
        let mut orders: Vec<usize> = if lower_order_final {
            match order {
                3 => {
                    let mut o = [1, 2, 3].repeat(steps / 3);
                    match steps % 3 {
                        0 => {
                            o.truncate(o.len() - 3);
                            o.extend([1, 2, 1]);
                        }
                        1 => o.push(1),
                        _ => o.extend([1, 2]),
                    }
                    o
                }
                2 => {
                    let mut o = [1, 2].repeat(steps / 2);
                    if steps.is_multiple_of(2) {
                        o.truncate(o.len() - 2);
                        o.extend([1, 1]);
                    } else {
                        o.push(1);
                    }
                    o
                }
                _ => vec![1; steps],
            }
        } else {
            match order {
                3 => [1, 2, 3].repeat(steps / 3),
                2 => [1, 2].repeat(steps / 2),
                _ => vec![1; steps],
            }
        };
        if zero {
            if let Some(last) = orders.last_mut() {
                *last = 1;
            }
        }
        orders
    }

    /// `DPMSolverSinglestepScheduler(**config).set_timesteps(num_inference_steps)`.
    pub(crate) fn build(&self, num_inference_steps: usize) -> Result<DpmSolverSinglestepScheduler> {
        let n = check_steps(num_inference_steps)?;
        let f = &self.family;
        let tables = f.tables();
        let clipped_idx = clipped_index(&tables.alphas_cumprod, self.lambda_min_clipped);
        let last_timestep = f.num_train_timesteps.saturating_sub(clipped_idx);
        let timesteps = spaced_timesteps(TimestepSpacing::Linspace, f.num_train_timesteps, last_timestep, n, 0);
        let (timesteps, sigmas) = f.timesteps_and_sigmas(&tables, timesteps, n, true);
        let sigma_last = f.final_sigmas.value(&tables);
        let grid = Grid::new(timesteps, sigmas, sigma_last, "DPMSolverSinglestepScheduler")?;
        let order_list = self.order_list(n);
        if order_list.len() != grid.timesteps.len() {
            return Err(Error::Internal(format!(
                "DPMSolverSinglestepScheduler: order list of {} for {} timesteps",
                order_list.len(),
                grid.timesteps.len()
            )));
        }
        Ok(DpmSolverSinglestepScheduler {
            config: self.clone(),
            grid,
            order_list,
            model_outputs: History::new(f.solver_order),
            base_sample: None,
            denoised: Denoised::default(),
        })
    }
}

/// A built `DPMSolverSinglestepScheduler` for one request.
#[derive(Debug, Clone)]
pub struct DpmSolverSinglestepScheduler {
    config: DpmSinglestepConfig,
    grid: Grid,
    /// `self.order_list`: the order of the update after each evaluation.
    order_list: Vec<usize>,
    /// `self.model_outputs`.
    model_outputs: History,
    /// `self.sample`: the base sample of the current singlestep group.
    base_sample: Option<ArrayD<f32>>,
    denoised: Denoised,
}

impl DpmSolverSinglestepScheduler {
    /// Ports `singlestep_dpm_solver_second_order_update` for evaluation `i` from the group's base sample.
    fn second_order(&self, i: usize, sample: &ArrayD<f32>, noise: Option<&ArrayD<f32>>) -> Result<ArrayD<f32>> {
        let (alpha_t, sigma_t, lambda_t) = self.grid.point(i + 1);
        let (_, _, lambda_s0) = self.grid.point(i);
        let (alpha_s1, sigma_s1, lambda_s1) = self.grid.point(i - 1);
        let (m0, m1) = (self.model_outputs.get(1)?, self.model_outputs.get(2)?);
        let (h, h_0) = (lambda_t - lambda_s1, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        // D0, D1 = m1, (1.0 / r0) * (m0 - m1)
        let inv_r0 = 1.0 / r0;
        let d1 = zip2(m0, m1, |a, b| inv_r0 * (a - b));
        second_order_update(
            (self.config.algorithm, self.config.solver_type),
            (alpha_t, sigma_t),
            (alpha_s1, sigma_s1),
            h,
            (m1, &d1),
            sample,
            noise,
        )
    }

    /// Ports `singlestep_dpm_solver_third_order_update` for evaluation `i` from the group's base sample.
    fn third_order(&self, i: usize, sample: &ArrayD<f32>, noise: Option<&ArrayD<f32>>) -> Result<ArrayD<f32>> {
        let (alpha_t, sigma_t, lambda_t) = self.grid.point(i + 1);
        let (_, _, lambda_s0) = self.grid.point(i);
        let (_, _, lambda_s1) = self.grid.point(i - 1);
        let (alpha_s2, sigma_s2, lambda_s2) = self.grid.point(i - 2);
        let (m0, m1, m2) = (self.model_outputs.get(1)?, self.model_outputs.get(2)?, self.model_outputs.get(3)?);
        let (h, h_0, h_1) = (lambda_t - lambda_s2, lambda_s0 - lambda_s2, lambda_s1 - lambda_s2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d0 = m2;
        let (inv_r1, inv_r0) = (1.0 / r1, 1.0 / r0);
        let d1_0 = zip2(m1, m2, |a, b| inv_r1 * (a - b));
        let d1_1 = zip2(m0, m2, |a, b| inv_r0 * (a - b));
        // D1 = (r0 * D1_0 - r1 * D1_1) / (r0 - r1); D2 = 2.0 * (D1_1 - D1_0) / (r0 - r1)
        let dr = r0 - r1;
        let d1 = zip2(&d1_0, &d1_1, |a, b| (r0 * a - r1 * b) / dr);
        let d2 = zip2(&d1_0, &d1_1, |a, b| 2.0 * (b - a) / dr);
        let heun = self.config.solver_type == SolverType::Heun;
        let out = match self.config.algorithm {
            Algorithm::DpmSolverPp => {
                let em1 = exp_f32(-h) - 1.0;
                let c1 = alpha_t * (em1 / h + 1.0);
                if heun {
                    lincomb(&[
                        (sigma_t / sigma_s2, sample),
                        (-(alpha_t * em1), d0),
                        (c1, &d1),
                        (-(alpha_t * ((exp_f32(-h) - 1.0 + h) / (h * h) - 0.5)), &d2),
                    ])
                } else {
                    lincomb(&[(sigma_t / sigma_s2, sample), (-(alpha_t * em1), d0), (c1, &d1_1)])
                }
            }
            Algorithm::DpmSolver => {
                let ep1 = exp_f32(h) - 1.0;
                let c1 = -(sigma_t * (ep1 / h - 1.0));
                if heun {
                    lincomb(&[
                        (alpha_t / alpha_s2, sample),
                        (-(sigma_t * ep1), d0),
                        (c1, &d1),
                        (-(sigma_t * ((exp_f32(h) - 1.0 - h) / (h * h) - 0.5)), &d2),
                    ])
                } else {
                    lincomb(&[(alpha_t / alpha_s2, sample), (-(sigma_t * ep1), d0), (c1, &d1_1)])
                }
            }
            Algorithm::SdeDpmSolverPp => {
                let noise = need_noise(noise)?;
                let e2 = exp_f32(-2.0 * h);
                let m2h = -2.0 * h;
                let c0 = alpha_t * (1.0 - e2);
                let c1 = alpha_t * ((1.0 - e2) / m2h + 1.0);
                let cn = sigma_t * (1.0 - e2).sqrt();
                let cs = sigma_t / sigma_s2 * exp_f32(-h);
                if heun {
                    lincomb(&[
                        (cs, sample),
                        (c0, d0),
                        (c1, &d1),
                        (alpha_t * ((1.0 - e2 + m2h) / (m2h * m2h) - 0.5), &d2),
                        (cn, noise),
                    ])
                } else {
                    lincomb(&[(cs, sample), (c0, d0), (c1, &d1_1), (cn, noise)])
                }
            }
            Algorithm::SdeDpmSolver => {
                return Err(Error::Internal("DPMSolverSinglestepScheduler has no sde-dpmsolver".into()));
            }
        };
        Ok(out)
    }
}

impl Scheduler for DpmSolverSinglestepScheduler {
    grid_scheduler_methods!();
    denoised_methods!();

    /// Ports `DPMSolverSinglestepScheduler.step`.
    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        self.grid.check_step(index, model_output.shape(), sample.shape(), "DPMSolverSinglestepScheduler")?;
        let c = &self.config;
        let sample = sample.to_owned();
        let sigma = self.grid.sigmas[index];
        let converted =
            c.family.convert_and_record(&mut self.denoised, c.algorithm.predicts_x0(), &model_output, &sample, sigma);
        self.model_outputs.push(converted);
        let noise = if c.algorithm.is_sde() { Some(draw_noise(noise, sample.shape())?) } else { None };

        // order = self.order_list[step_index]; lowered while model_outputs[-order] is None (e.g. after begin_index).
        let mut order = self.order_list[index];
        while order > 1 && !self.model_outputs.has(order) {
            order -= 1;
        }
        if order == 1 {
            self.base_sample = Some(sample);
        }
        let base = self
            .base_sample
            .as_ref()
            .ok_or_else(|| Error::Internal("DPMSolverSinglestepScheduler: no base sample".into()))?;
        let prev = match order {
            1 => {
                let (alpha_t, sigma_t, lambda_t) = self.grid.point(index + 1);
                let (alpha_s, sigma_s, lambda_s) = self.grid.point(index);
                first_order_update(
                    c.algorithm,
                    (alpha_t, sigma_t),
                    (alpha_s, sigma_s),
                    lambda_t - lambda_s,
                    self.model_outputs.get(1)?,
                    base,
                    noise.as_ref(),
                )
            }
            2 => self.second_order(index, base, noise.as_ref())?,
            _ => self.third_order(index, base, noise.as_ref())?,
        };
        self.grid.advance(index);
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use super::super::testutil::{
        check_dpm_unit_loops, check_goldens, dpm_test_base, solver_configs, sweep, DPM_RULES, SDXL_JSON,
    };
    use super::super::{resolve, SchedulerConfig};
    use super::*;
    use crate::error::ErrorCode;

    fn config(v: Value) -> DpmSinglestepConfig {
        let c: SchedulerConfig = serde_json::from_value(v).expect("config");
        DpmSinglestepConfig::new(&c).expect("valid")
    }

    #[test]
    fn dpm_singlestep_matches_diffusers_goldens_for_every_option_set() {
        assert!(check_goldens("dpm_family", Some("DPMSolverSinglestepScheduler"), &DPM_RULES).runs >= 25);
    }

    #[test]
    fn dpm_singlestep_full_loops_match_diffusers_unit_tests() {
        // tests/schedulers/test_scheduler_dpm_single.py: full_loop no noise / v_prediction, full_uneven_loop (starts
        // at timesteps[3]), values recomputed with diffusers 0.42.1.
        assert_eq!(check_dpm_unit_loops("single_"), 3);
    }

    #[test]
    fn dpm_singlestep_check_over_configs() {
        const S: &str = "DPMSolverSinglestepScheduler";
        let base = dpm_test_base();
        let algorithms = ["dpmsolver", "dpmsolver++", "sde-dpmsolver++"]
            .map(|a| json!({"algorithm_type": a, "final_sigmas_type": "sigma_min"}));
        let mut configs = solver_configs(&["midpoint", "heun"], &algorithms, &json!({"algorithm_type": "dpmsolver++"}));
        for extra in [
            json!({"lower_order_final": true}),
            json!({"lower_order_final": false}),
            json!({"lower_order_final": false, "final_sigmas_type": "sigma_min", "solver_order": 3}),
            json!({"use_karras_sigmas": true}),
            json!({"use_exponential_sigmas": true}),
            json!({"lambda_min_clipped": "-Infinity"}),
            json!({"lambda_min_clipped": -5.1}),
            json!({"variance_type": null}),
        ] {
            configs.push(extra);
        }
        assert!(sweep(S, &base, &configs, &[10, 11], 1.0) > 100);
        assert_eq!(sweep(S, &base, &[json!({})], &[1, 2, 3, 5, 10, 50, 100, 999], 1.0), 8);
    }

    #[test]
    fn order_list_matches_get_order_list() {
        // diffusers get_order_list after set_timesteps' lower_order_final adjustments.
        let zero2 = config(json!({}));
        assert_eq!(zero2.order_list(1), vec![1]);
        assert_eq!(zero2.order_list(4), vec![1, 2, 1, 1]);
        assert_eq!(zero2.order_list(5), vec![1, 2, 1, 2, 1]);
        let zero3 = config(json!({"solver_order": 3}));
        assert_eq!(zero3.order_list(3), vec![1, 2, 1]);
        assert_eq!(zero3.order_list(7), vec![1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(zero3.order_list(8), vec![1, 2, 3, 1, 2, 3, 1, 1]);
        let min3 = config(json!({"solver_order": 3, "final_sigmas_type": "sigma_min"}));
        assert_eq!(min3.order_list(6), vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(min3.order_list(7), vec![1, 2, 3, 1, 2, 3, 1]);
        let min2_lof = config(json!({"final_sigmas_type": "sigma_min", "lower_order_final": true}));
        assert_eq!(min2_lof.order_list(4), vec![1, 2, 1, 1]);
    }

    #[test]
    fn dpm_singlestep_rejects_what_diffusers_rejects() {
        let sdxl = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        let map = |v: Value| v.as_object().cloned().expect("object");
        // The SDXL config's own timestep_spacing/steps_offset are ignored (diffusers ignores them too)...
        let r = resolve(Some("DPM++ SDE"), &Map::new(), &sdxl).expect("resolves");
        assert_eq!(r.build(4).expect("builds").timesteps(), &[999.0, 749.0, 500.0, 250.0]);
        // ...but a request cannot set options the class does not have.
        for key in ["timestep_spacing", "steps_offset", "rescale_betas_zero_snr", "euler_at_final", "use_lu_lambdas"] {
            let err = resolve(Some("DPM++ SDE"), &map(json!({ key: Value::Null })), &sdxl).expect_err(key);
            assert_eq!(err.code(), ErrorCode::InvalidRequest, "{key}: {err}");
            assert!(format!("{err:?}").contains(key), "{key}: {err:?}");
        }
        for (overrides, code) in [
            (json!({"algorithm_type": "sde-dpmsolver"}), ErrorCode::InvalidRequest),
            (json!({"algorithm_type": "dpmsolver"}), ErrorCode::InvalidRequest),
            (json!({"solver_order": 4}), ErrorCode::InvalidRequest),
            (
                json!({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "thresholding": true}),
                ErrorCode::Unsupported,
            ),
            (json!({"variance_type": "learned"}), ErrorCode::Unsupported),
        ] {
            let err = resolve(Some("DPM++ SDE"), &map(overrides.clone()), &sdxl).expect_err(&overrides.to_string());
            assert_eq!(err.code(), code, "{overrides}: {err}");
        }
    }
}
