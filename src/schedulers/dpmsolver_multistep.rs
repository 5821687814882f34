//! `DPMSolverMultistepScheduler`: the multistep DPM-Solver (Lu et al. 2022, <https://arxiv.org/abs/2206.00927>) and
//! DPM-Solver++ (<https://arxiv.org/abs/2211.01095>), with their SDE variants. A1111's "DPM++ 2M", "DPM++ 2M Karras",
//! "DPM++ 2M SDE" and "DPM++ 2M SDE Karras".
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_dpmsolver_multistep.py` of diffusers 0.42.1:
//! `__init__` (tables and option checks), `set_timesteps` (grid), `convert_model_output`,
//! `dpm_solver_first_order_update`, `multistep_dpm_solver_second_order_update`,
//! `multistep_dpm_solver_third_order_update` and `step` (the `model_outputs` ring buffer, `lower_order_nums` and the
//! lower-order rules on the final steps). The scalars of each update are float32 0-dim tensors in diffusers and are
//! float32 here, op by op; tensor expressions are evaluated left to right with one rounding per torch op.
//! Shared DPM-family pieces live in `dpm_family.rs`.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{
    check_steps, denoised_methods, exp_f32, np_linspace, option_field, parse_spacing, sigmas_to_timesteps,
    BetaSchedule, Denoised, FinalSigmas, SigmaConversion, TimestepSpacing,
};
use super::dpm_family::{
    check_variance_type, clipped_index, draw_noise, first_order_update, grid_scheduler_methods, lincomb, need_noise,
    parse_algorithm, parse_lambda_min_clipped, parse_solver_type, second_order_update, spaced_timesteps, zip2,
    Algorithm, FamilyOptions, Grid, History, SolverType,
};
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// The options `DPMSolverMultistepScheduler` accepts: its diffusers `__init__` arguments.
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
    "euler_at_final",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_lu_lambdas",
    "use_flow_sigmas",
    "flow_shift",
    "final_sigmas_type",
    "lambda_min_clipped",
    "variance_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
    "use_dynamic_shifting",
    "time_shift_type",
];

/// diffusers' defaults for [`KEYS`] (JSON; `null` for `None`, `lambda_min_clipped`'s -infinity as `"-Infinity"`).
pub(crate) fn defaults() -> serde_json::Map<String, serde_json::Value> {
    super::common::json_object(serde_json::json!({
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": null, "solver_order": 2, "prediction_type": "epsilon", "thresholding": false,
        "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint", "lower_order_final": true, "euler_at_final": false, "use_karras_sigmas": false,
        "use_exponential_sigmas": false, "use_beta_sigmas": false, "use_lu_lambdas": false,
        "use_flow_sigmas": false, "flow_shift": 1.0, "final_sigmas_type": "zero", "lambda_min_clipped": "-Infinity",
        "variance_type": null, "timestep_spacing": "linspace", "steps_offset": 0, "rescale_betas_zero_snr": false,
        "use_dynamic_shifting": false, "time_shift_type": "exponential"
    }))
}

/// Validated `DPMSolverMultistepScheduler` options, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DpmMultistepConfig {
    family: FamilyOptions,
    algorithm: Algorithm,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    use_lu_lambdas: bool,
    lambda_min_clipped: f64,
    spacing: TimestepSpacing,
    steps_offset: usize,
}

impl DpmMultistepConfig {
    /// Applies diffusers' class defaults to `c` and rejects what diffusers rejects (ports the checks of `__init__`).
    pub(crate) fn new(c: &SchedulerConfig) -> Result<Self> {
        const CLASS: &str = "DPMSolverMultistepScheduler";
        let family = FamilyOptions::new(c, CLASS, true)?;
        let algorithm = parse_algorithm(c, family.final_sigmas, true)?;
        check_variance_type(c)?;
        let solver_type = parse_solver_type(c)?;
        if algorithm == Algorithm::SdeDpmSolver && family.solver_order == 3 {
            // multistep_dpm_solver_third_order_update has no sde-dpmsolver branch (diffusers fails at step 3).
            return Err(Error::field(
                option_field("solver_order"),
                "3 is not available with algorithm_type `sde-dpmsolver` (diffusers has no third-order update for it); \
                 use solver_order 1 or 2, or algorithm_type `sde-dpmsolver++`",
            ));
        }
        let use_lu_lambdas = c.use_lu_lambdas.unwrap_or(false);
        if use_lu_lambdas && family.conversion != SigmaConversion::None {
            // set_timesteps checks Karras first, then Lu lambdas, then exponential: only one is used. Reject the
            // combination rather than silently dropping one.
            return Err(Error::field(
                option_field("use_lu_lambdas"),
                "cannot be combined with use_karras_sigmas or use_exponential_sigmas",
            ));
        }
        let lambda_min_clipped = parse_lambda_min_clipped(c)?;
        Ok(DpmMultistepConfig {
            family,
            algorithm,
            solver_type,
            lower_order_final: c.lower_order_final.unwrap_or(true),
            euler_at_final: c.euler_at_final.unwrap_or(false),
            use_lu_lambdas,
            lambda_min_clipped,
            spacing: parse_spacing(c.timestep_spacing.as_deref().unwrap_or("linspace"))?,
            steps_offset: c.steps_offset.unwrap_or(0),
        })
    }

    /// `DPMSolverMultistepScheduler(**config).set_timesteps(num_inference_steps)`.
    pub(crate) fn build(&self, num_inference_steps: usize) -> Result<DpmSolverMultistepScheduler> {
        let n = check_steps(num_inference_steps)?;
        let f = &self.family;
        let tables = f.tables();
        let t_count = f.num_train_timesteps;

        // Ports `set_timesteps` (the num_inference_steps path).
        let clipped_idx = clipped_index(&tables.alphas_cumprod, self.lambda_min_clipped);
        let last_timestep = t_count.saturating_sub(clipped_idx);
        let timesteps = spaced_timesteps(self.spacing, t_count, last_timestep, n, self.steps_offset);
        let cosine = f.betas == BetaSchedule::SquaredCosCapV2;
        let (timesteps, sigmas) = if self.use_lu_lambdas {
            // _convert_to_lu on the flipped float32 log-sigmas, rho = 1: a linear ramp in log-sigma, then exp.
            let lambda_min = tables.log_sigmas[0] as f64;
            let lambda_max = tables.log_sigmas[t_count - 1] as f64;
            let sigmas: Vec<f64> = np_linspace(0.0, 1.0, n)
                .into_iter()
                .map(|r| (lambda_max + r * (lambda_min - lambda_max)).exp())
                .collect();
            (sigmas_to_timesteps(&sigmas, &tables.log_sigmas, !cosine), sigmas)
        } else {
            // Karras timesteps are rounded (except for the cosine schedule).
            f.timesteps_and_sigmas(&tables, timesteps, n, !cosine)
        };
        let sigma_last = f.final_sigmas.value(&tables);
        let grid = Grid::new(timesteps, sigmas, sigma_last, "DPMSolverMultistepScheduler")?;
        Ok(DpmSolverMultistepScheduler {
            config: self.clone(),
            model_outputs: History::new(f.solver_order),
            lower_order_nums: 0,
            grid,
            denoised: Denoised::default(),
        })
    }
}

/// A built `DPMSolverMultistepScheduler` for one request: the grid plus the multistep history.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    config: DpmMultistepConfig,
    grid: Grid,
    /// `self.model_outputs`: the converted outputs of the last `solver_order` steps.
    model_outputs: History,
    /// `self.lower_order_nums`: how many steps have run (capped at `solver_order`), for the warm-up.
    lower_order_nums: usize,
    denoised: Denoised,
}

impl DpmSolverMultistepScheduler {
    /// Ports `dpm_solver_first_order_update` (DDIM-like) for step `i`.
    fn first_order(
        &self,
        i: usize,
        m0: &ArrayD<f32>,
        sample: &ArrayD<f32>,
        noise: Option<&ArrayD<f32>>,
    ) -> ArrayD<f32> {
        let (alpha_t, sigma_t, lambda_t) = self.grid.point(i + 1);
        let (alpha_s, sigma_s, lambda_s) = self.grid.point(i);
        let h = lambda_t - lambda_s;
        first_order_update(self.config.algorithm, (alpha_t, sigma_t), (alpha_s, sigma_s), h, m0, sample, noise)
    }

    /// Ports `multistep_dpm_solver_second_order_update` for step `i`.
    fn second_order(&self, i: usize, sample: &ArrayD<f32>, noise: Option<&ArrayD<f32>>) -> Result<ArrayD<f32>> {
        let (alpha_t, sigma_t, lambda_t) = self.grid.point(i + 1);
        let (alpha_s0, sigma_s0, lambda_s0) = self.grid.point(i);
        let (_, _, lambda_s1) = self.grid.point(i - 1);
        let m0 = self.model_outputs.get(1)?;
        let m1 = self.model_outputs.get(2)?;
        let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        // D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        let inv_r0 = 1.0 / r0;
        let d1 = zip2(m0, m1, |a, b| inv_r0 * (a - b));
        second_order_update(
            (self.config.algorithm, self.config.solver_type),
            (alpha_t, sigma_t),
            (alpha_s0, sigma_s0),
            h,
            (m0, &d1),
            sample,
            noise,
        )
    }

    /// Ports `multistep_dpm_solver_third_order_update` for step `i`.
    fn third_order(&self, i: usize, sample: &ArrayD<f32>, noise: Option<&ArrayD<f32>>) -> Result<ArrayD<f32>> {
        let (alpha_t, sigma_t, lambda_t) = self.grid.point(i + 1);
        let (alpha_s0, sigma_s0, lambda_s0) = self.grid.point(i);
        let (_, _, lambda_s1) = self.grid.point(i - 1);
        let (_, _, lambda_s2) = self.grid.point(i - 2);
        let (m0, m1, m2) = (self.model_outputs.get(1)?, self.model_outputs.get(2)?, self.model_outputs.get(3)?);
        let (h, h_0, h_1) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d0 = m0;
        let (inv_r0, inv_r1) = (1.0 / r0, 1.0 / r1);
        let d1_0 = zip2(m0, m1, |a, b| inv_r0 * (a - b));
        let d1_1 = zip2(m1, m2, |a, b| inv_r1 * (a - b));
        // D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1); D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
        let k1 = r0 / (r0 + r1);
        let k2 = 1.0 / (r0 + r1);
        let d1 = zip2(&d1_0, &d1_1, |a, b| a + k1 * (a - b));
        let d2 = zip2(&d1_0, &d1_1, |a, b| k2 * (a - b));
        let out = match self.config.algorithm {
            Algorithm::DpmSolverPp => {
                let em1 = exp_f32(-h) - 1.0;
                lincomb(&[
                    (sigma_t / sigma_s0, sample),
                    (-(alpha_t * em1), d0),
                    (alpha_t * (em1 / h + 1.0), &d1),
                    (-(alpha_t * ((exp_f32(-h) - 1.0 + h) / (h * h) - 0.5)), &d2),
                ])
            }
            Algorithm::DpmSolver => {
                let ep1 = exp_f32(h) - 1.0;
                lincomb(&[
                    (alpha_t / alpha_s0, sample),
                    (-(sigma_t * ep1), d0),
                    (-(sigma_t * (ep1 / h - 1.0)), &d1),
                    (-(sigma_t * ((exp_f32(h) - 1.0 - h) / (h * h) - 0.5)), &d2),
                ])
            }
            Algorithm::SdeDpmSolverPp => {
                let noise = need_noise(noise)?;
                let e2 = exp_f32(-2.0 * h);
                let two_h = 2.0 * h;
                lincomb(&[
                    (sigma_t / sigma_s0 * exp_f32(-h), sample),
                    (alpha_t * (1.0 - e2), d0),
                    (alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0), &d1),
                    (alpha_t * ((1.0 - e2 - 2.0 * h) / (two_h * two_h) - 0.5), &d2),
                    (sigma_t * (1.0 - e2).sqrt(), noise),
                ])
            }
            // Rejected in DpmMultistepConfig::new.
            Algorithm::SdeDpmSolver => {
                return Err(Error::Internal("sde-dpmsolver has no third-order update".into()));
            }
        };
        Ok(out)
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    grid_scheduler_methods!();
    denoised_methods!();

    /// Ports `DPMSolverMultistepScheduler.step`.
    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        self.grid.check_step(index, model_output.shape(), sample.shape(), "DPMSolverMultistepScheduler")?;
        let c = &self.config;
        let n = self.grid.timesteps.len();
        let order = c.family.solver_order;
        let lower_order_final = index == n - 1
            && (c.euler_at_final || (c.lower_order_final && n < 15) || c.family.final_sigmas == FinalSigmas::Zero);
        let lower_order_second = index + 2 == n && c.lower_order_final && n < 15;

        let sample = sample.to_owned();
        let sigma = self.grid.sigmas[index];
        let converted =
            c.family.convert_and_record(&mut self.denoised, c.algorithm.predicts_x0(), &model_output, &sample, sigma);
        self.model_outputs.push(converted);
        let noise = if c.algorithm.is_sde() { Some(draw_noise(noise, sample.shape())?) } else { None };

        let prev = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            let m0 = self.model_outputs.get(1)?;
            self.first_order(index, m0, &sample, noise.as_ref())
        } else if order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(index, &sample, noise.as_ref())?
        } else {
            self.third_order(index, &sample, noise.as_ref())?
        };
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.grid.advance(index);
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use serde_json::{json, Map, Value};

    use super::super::testutil::{
        check_dpm_unit_loops, check_goldens, dpm_test_base, dummy_model, solver_configs, sweep, ScriptedNoise,
        DPM_RULES, SDXL_JSON,
    };
    use super::super::{resolve, SchedulerConfig};
    use crate::error::ErrorCode;

    const M: &str = "DPMSolverMultistepScheduler";

    #[test]
    fn dpm_multistep_check_over_configs() {
        let base = dpm_test_base();
        let algorithms = ["dpmsolver", "dpmsolver++", "sde-dpmsolver++"]
            .map(|a| json!({"algorithm_type": a, "final_sigmas_type": "sigma_min"}));
        let mut configs = solver_configs(&["midpoint", "heun"], &algorithms, &json!({"algorithm_type": "dpmsolver++"}));
        for order in [1, 2] {
            for solver_type in ["midpoint", "heun"] {
                configs.push(json!({"algorithm_type": "sde-dpmsolver", "solver_order": order,
                    "solver_type": solver_type, "final_sigmas_type": "sigma_min"}));
            }
        }
        configs.extend([
            json!({"lower_order_final": true}),
            json!({"lower_order_final": false}),
            json!({"euler_at_final": true}),
            json!({"use_karras_sigmas": true}),
            json!({"use_exponential_sigmas": true}),
            json!({"use_lu_lambdas": true}),
            json!({"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}),
            json!({"timestep_spacing": "trailing", "rescale_betas_zero_snr": true}),
            json!({"timestep_spacing": "leading", "steps_offset": 1}),
            json!({"variance_type": null}),
            json!({"algorithm_type": "deis", "final_sigmas_type": "sigma_min"}),
            json!({"solver_type": "bh2"}),
        ]);
        assert!(sweep(M, &base, &configs, &[10], 1.0) > 100);
        // test_inference_steps: 1 … 1000 steps. At 1000 steps the linspace grid repeats t=500 (np.linspace(0, 999,
        // 1001).round()), so h = 0 there and diffusers' loop turns NaN at step 500; the grid is reproduced as is.
        let r = resolve(Some(M), &base.as_object().cloned().expect("object"), &SchedulerConfig::default()).expect("ok");
        let ts = r.build(1000).expect("builds").timesteps().to_vec();
        assert_eq!((ts.len(), ts[499], ts[500]), (1000, 500.0, 500.0));
        assert_eq!(sweep(M, &base, &[json!({})], &[1, 2, 3, 5, 10, 50, 100, 999], 1.0), 8);
    }

    fn sdxl() -> SchedulerConfig {
        SchedulerConfig::from_json(SDXL_JSON).expect("parses")
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn dpm_multistep_matches_diffusers_goldens_for_every_option_set() {
        assert!(check_goldens("dpm_family", Some(M), &DPM_RULES).runs >= 40);
    }

    #[test]
    fn dpm_multistep_full_loops_match_diffusers_unit_tests() {
        // tests/schedulers/test_scheduler_dpm_multi.py: full_loop no noise / thresholding / v_prediction / Karras /
        // Lu lambdas, values recomputed with diffusers 0.42.1 (the sidecar's unit_loops).
        assert_eq!(check_dpm_unit_loops("multi_"), 5);
    }

    #[test]
    fn dpm_multistep_options_diffusers_rejects_are_errors_naming_the_option() {
        let cases = [
            (json!({"algorithm_type": "dpmsolver"}), "data.scheduler.final_sigmas_type"),
            (json!({"algorithm_type": "sde-dpmsolver"}), "data.scheduler.final_sigmas_type"),
            (json!({"algorithm_type": "deis"}), "data.scheduler.final_sigmas_type"),
            (json!({"algorithm_type": "dpm"}), "data.scheduler.algorithm_type"),
            (json!({"solver_type": "bh3"}), "data.scheduler.solver_type"),
            (json!({"solver_order": 4}), "data.scheduler.solver_order"),
            (json!({"solver_order": 0}), "data.scheduler.solver_order"),
            (
                json!({"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3}),
                "data.scheduler.solver_order",
            ),
            (json!({"use_karras_sigmas": true, "use_lu_lambdas": true}), "data.scheduler.use_lu_lambdas"),
            (json!({"use_karras_sigmas": true, "use_exponential_sigmas": true}), "data.scheduler.use_karras_sigmas"),
            (json!({"prediction_type": "original_sample"}), "data.scheduler.prediction_type"),
            (json!({"timestep_spacing": "middle"}), "data.scheduler.timestep_spacing"),
            (
                json!({"dynamic_thresholding_ratio": 1.5, "thresholding": true}),
                "data.scheduler.dynamic_thresholding_ratio",
            ),
        ];
        for (overrides, field) in cases {
            let err = resolve(Some("DPM++ 2M"), &map(overrides.clone()), &sdxl()).expect_err(&overrides.to_string());
            assert_eq!(err.code(), ErrorCode::InvalidRequest, "{overrides}: {err}");
            assert!(err.to_string().contains(field) || format!("{err:?}").contains(field), "{overrides}: {err:?}");
        }
        for (overrides, field) in [
            (json!({"use_beta_sigmas": true}), "use_beta_sigmas"),
            (json!({"use_flow_sigmas": true}), "use_flow_sigmas"),
            (json!({"prediction_type": "flow_prediction"}), "prediction_type"),
            (json!({"use_dynamic_shifting": true}), "use_dynamic_shifting"),
            (json!({"variance_type": "learned_range"}), "variance_type"),
        ] {
            let err = resolve(Some("DPM++ 2M"), &map(overrides.clone()), &sdxl()).expect_err(&overrides.to_string());
            assert_eq!(err.code(), ErrorCode::Unsupported, "{overrides}: {err}");
            assert!(format!("{err:?}").contains(field), "{overrides}: {err:?}");
        }
    }

    #[test]
    fn a1111_names_map_to_the_diffusers_table() {
        let cases = [
            ("DPM++ 2M", "DPMSolverMultistepScheduler", "dpmsolver++", false),
            ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", "dpmsolver++", true),
            ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", "sde-dpmsolver++", false),
            ("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", "sde-dpmsolver++", true),
            ("dpmpp_2m_sde karras", "DPMSolverMultistepScheduler", "sde-dpmsolver++", true),
            ("DPM++ SDE", "DPMSolverSinglestepScheduler", "dpmsolver++", false),
            ("DPM++ SDE Karras", "DPMSolverSinglestepScheduler", "dpmsolver++", true),
        ];
        for (name, class, algorithm, karras) in cases {
            let r = resolve(Some(name), &Map::new(), &sdxl()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.class_name, class, "{name}");
            assert_eq!(r.config.algorithm_type.as_deref().unwrap_or("dpmsolver++"), algorithm, "{name}");
            assert_eq!(r.config.use_karras_sigmas.unwrap_or(false), karras, "{name}");
            let d = r.describe();
            assert_eq!(d["name"], class, "{name}");
            if karras {
                assert_eq!(d["options"]["use_karras_sigmas"], json!(true), "{name}: {d}");
            }
        }
        let r = resolve(Some("UniPC"), &Map::new(), &sdxl()).expect("resolves");
        assert_eq!(r.class_name, "UniPCMultistepScheduler");
    }

    #[test]
    fn sdxl_dpmpp_2m_grid_and_state_machine() {
        let r = resolve(Some("DPM++ 2M"), &Map::new(), &sdxl()).expect("resolves");
        // The SDXL config's timestep_spacing "leading" and steps_offset 1 carry over: (n + 1) divides the range.
        let mut s = r.build(4).expect("builds");
        assert_eq!(s.timesteps(), &[801.0, 601.0, 401.0, 201.0]);
        assert_eq!(s.sigmas().len(), 5);
        assert_eq!(s.sigmas()[4], 0.0);
        assert_eq!((s.init_noise_sigma(), s.order(), s.completed_steps(3)), (1.0, 1, 4));
        let x = ArrayD::<f32>::ones(IxDyn(&[1, 4, 2, 2]));
        let y = ArrayD::<f32>::ones(IxDyn(&[1, 4, 2, 3]));
        let none = &mut ScriptedNoise::none();
        // Out of order, out of range and mismatched shapes are internal errors, not panics.
        assert!(s.step(x.view(), 1, x.view(), none).is_err());
        assert!(s.step(x.view(), 4, x.view(), none).is_err());
        assert!(s.step(y.view(), 0, x.view(), none).is_err());
        assert!(s.step(x.view(), 0, x.view(), none).is_ok());
        assert!(s.step(x.view(), 0, x.view(), none).is_err());
        assert!(s.step(x.view(), 1, x.view(), none).is_ok());
        // img2img: begin at 2.
        let mut s = r.build(4).expect("builds");
        s.set_begin_index(2);
        assert!(s.step(x.view(), 0, x.view(), none).is_err());
        assert!(s.step(x.view(), 2, x.view(), none).is_ok());
        assert!(s.step(x.view(), 3, x.view(), none).is_ok());
        assert!(r.build(0).is_err());
    }

    #[test]
    fn sde_variant_draws_one_noise_tensor_per_step() {
        let r = resolve(Some("DPM++ 2M SDE Karras"), &Map::new(), &sdxl()).expect("resolves");
        let mut s = r.build(3).expect("builds");
        let mut noise = ScriptedNoise::new(vec![vec![0.5; 16]; 3]);
        let mut x = ArrayD::<f32>::ones(IxDyn(&[1, 4, 2, 2]));
        for i in 0..3 {
            let out = dummy_model(&x, s.timesteps()[i]);
            x = s.step(out.view(), i, x.view(), &mut noise).expect("step");
        }
        assert_eq!(noise.calls, 3);
        // A short noise source is an error, not a panic.
        let mut s = r.build(3).expect("builds");
        struct Short;
        impl crate::rng::NoiseSource for Short {
            fn randn(&mut self, _shape: &[usize]) -> Vec<f32> {
                vec![0.0; 3]
            }
        }
        assert!(s.step(x.view(), 0, x.view(), &mut Short).is_err());
    }
}
