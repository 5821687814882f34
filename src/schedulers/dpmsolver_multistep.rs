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
//!
//! The second half of this file holds what the DPM-Solver family (this class, `DPMSolverSinglestepScheduler` and
//! `UniPCMultistepScheduler`) shares: option parsing, the timestep/sigma grids, `_sigma_to_alpha_sigma_t`,
//! `convert_model_output`, `_threshold_sample` and float32 tensor helpers.

use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};

use super::common::{
    exp_f32, exponential_sigmas, karras_sigmas, ln_f32, np_interp_index, np_linspace, option_field, parse_betas,
    parse_choice, parse_prediction_type, parse_spacing, sigma_to_t, BetaSchedule, FinalSigmas, PredictionType,
    SigmaConversion, TimestepSpacing, TrainingTables,
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
    let v = serde_json::json!({
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": null, "solver_order": 2, "prediction_type": "epsilon", "thresholding": false,
        "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint", "lower_order_final": true, "euler_at_final": false, "use_karras_sigmas": false,
        "use_exponential_sigmas": false, "use_beta_sigmas": false, "use_lu_lambdas": false,
        "use_flow_sigmas": false, "flow_shift": 1.0, "final_sigmas_type": "zero", "lambda_min_clipped": "-Infinity",
        "variance_type": null, "timestep_spacing": "linspace", "steps_offset": 0, "rescale_betas_zero_snr": false,
        "use_dynamic_shifting": false, "time_shift_type": "exponential"
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// DPM-Solver's `algorithm_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    /// `dpmsolver`: discretizes the noise-prediction ODE.
    DpmSolver,
    /// `dpmsolver++`: discretizes the data-prediction ODE.
    DpmSolverPp,
    /// `sde-dpmsolver`: the SDE form of `dpmsolver` (noise each step).
    SdeDpmSolver,
    /// `sde-dpmsolver++`: the SDE form of `dpmsolver++` (noise each step).
    SdeDpmSolverPp,
}

impl Algorithm {
    /// Whether the model output is converted to a data (x₀) prediction.
    pub(super) fn predicts_x0(self) -> bool {
        matches!(self, Algorithm::DpmSolverPp | Algorithm::SdeDpmSolverPp)
    }
    /// Whether each step draws noise.
    pub(super) fn is_sde(self) -> bool {
        matches!(self, Algorithm::SdeDpmSolver | Algorithm::SdeDpmSolverPp)
    }
}

/// DPM-Solver's second-order `solver_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SolverType {
    /// `midpoint`.
    Midpoint,
    /// `heun`.
    Heun,
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
        let raw_algorithm = c.algorithm_type.as_deref().unwrap_or("dpmsolver++");
        let algorithm = parse_choice(
            "algorithm_type",
            raw_algorithm,
            &[
                ("dpmsolver", Algorithm::DpmSolver),
                ("dpmsolver++", Algorithm::DpmSolverPp),
                ("sde-dpmsolver", Algorithm::SdeDpmSolver),
                ("sde-dpmsolver++", Algorithm::SdeDpmSolverPp),
                // diffusers re-registers `deis` (a DEISMultistepScheduler config) as dpmsolver++.
                ("deis", Algorithm::DpmSolverPp),
            ],
        )?;
        check_final_sigmas(raw_algorithm, family.final_sigmas)?;
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
        let lambda_min_clipped = c.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY);
        if lambda_min_clipped.is_nan() || lambda_min_clipped == f64::INFINITY {
            return Err(Error::field(
                option_field("lambda_min_clipped"),
                format!("{lambda_min_clipped} is not a finite number or -Infinity"),
            ));
        }
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
        let tables = TrainingTables::new(&f.betas, f.num_train_timesteps, f.rescale_betas_zero_snr);
        let t_count = f.num_train_timesteps;

        // Ports `set_timesteps` (the num_inference_steps path).
        let clipped_idx = clipped_index(&tables.alphas_cumprod, self.lambda_min_clipped);
        let last_timestep = t_count.saturating_sub(clipped_idx);
        let mut timesteps: Vec<f64> = match self.spacing {
            TimestepSpacing::Linspace => linspace_timesteps(last_timestep, n),
            TimestepSpacing::Leading => {
                let step_ratio = last_timestep / (n + 1);
                (1..=n).rev().map(|i| (i * step_ratio + self.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let step_ratio = t_count as f64 / n as f64;
                np_arange_desc(last_timestep as f64, step_ratio)
                    .into_iter()
                    .map(|v| v.round_ties_even() - 1.0)
                    .collect()
            }
        };
        let table: Vec<f64> = tables.sigmas.iter().map(|&s| s as f64).collect();
        let cosine = f.betas == BetaSchedule::SquaredCosCapV2;
        let sigmas: Vec<f64> = if self.use_lu_lambdas {
            // _convert_to_lu on the flipped float32 log-sigmas, rho = 1: a linear ramp in log-sigma, then exp.
            let lambda_min = tables.log_sigmas[0] as f64;
            let lambda_max = tables.log_sigmas[t_count - 1] as f64;
            let sigmas: Vec<f64> = np_linspace(0.0, 1.0, n)
                .into_iter()
                .map(|r| (lambda_max + r * (lambda_min - lambda_max)).exp())
                .collect();
            timesteps = sigmas_to_timesteps(&sigmas, &tables.log_sigmas, !cosine);
            sigmas
        } else if f.conversion != SigmaConversion::None {
            let sigmas = f.converted_sigmas(&tables, n);
            // Karras timesteps are rounded (except for the cosine schedule); exponential ones are truncated by the
            // int64 conversion.
            let round = f.conversion == SigmaConversion::Karras && !cosine;
            timesteps = sigmas_to_timesteps(&sigmas, &tables.log_sigmas, round);
            sigmas
        } else {
            np_interp_index(&timesteps, &table)
        };
        let sigma_last = match f.final_sigmas {
            FinalSigmas::SigmaMin => tables.sigmas[0],
            FinalSigmas::Zero => 0.0,
        };
        let grid = Grid::new(timesteps, sigmas, sigma_last, "DPMSolverMultistepScheduler")?;
        Ok(DpmSolverMultistepScheduler {
            config: self.clone(),
            model_outputs: vec![None; f.solver_order],
            lower_order_nums: 0,
            grid,
        })
    }
}

/// A built `DPMSolverMultistepScheduler` for one request: the grid plus the multistep history.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    config: DpmMultistepConfig,
    grid: Grid,
    /// `self.model_outputs`: the converted outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<ArrayD<f32>>>,
    /// `self.lower_order_nums`: how many steps have run (capped at `solver_order`), for the warm-up.
    lower_order_nums: usize,
}

impl DpmSolverMultistepScheduler {
    /// The (alpha, sigma) of grid position `i` (`_sigma_to_alpha_sigma_t(self.sigmas[i])`) and its lambda.
    fn point(&self, i: usize) -> (f32, f32, f32) {
        let (alpha, sigma) = alpha_sigma_t(self.grid.sigmas[i]);
        (alpha, sigma, lambda(alpha, sigma))
    }

    /// Ports `dpm_solver_first_order_update` (DDIM-like) for step `i`.
    fn first_order(
        &self,
        i: usize,
        m0: &ArrayD<f32>,
        sample: &ArrayD<f32>,
        noise: Option<&ArrayD<f32>>,
    ) -> ArrayD<f32> {
        let (alpha_t, sigma_t, lambda_t) = self.point(i + 1);
        let (alpha_s, sigma_s, lambda_s) = self.point(i);
        let h = lambda_t - lambda_s;
        first_order_update(self.config.algorithm, (alpha_t, sigma_t), (alpha_s, sigma_s), h, m0, sample, noise)
    }

    /// Ports `multistep_dpm_solver_second_order_update` for step `i`.
    fn second_order(&self, i: usize, sample: &ArrayD<f32>, noise: Option<&ArrayD<f32>>) -> Result<ArrayD<f32>> {
        let (alpha_t, sigma_t, lambda_t) = self.point(i + 1);
        let (alpha_s0, sigma_s0, lambda_s0) = self.point(i);
        let (_, _, lambda_s1) = self.point(i - 1);
        let m0 = self.history(1)?;
        let m1 = self.history(2)?;
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
        let (alpha_t, sigma_t, lambda_t) = self.point(i + 1);
        let (alpha_s0, sigma_s0, lambda_s0) = self.point(i);
        let (_, _, lambda_s1) = self.point(i - 1);
        let (_, _, lambda_s2) = self.point(i - 2);
        let (m0, m1, m2) = (self.history(1)?, self.history(2)?, self.history(3)?);
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

    /// `model_outputs[-k]`.
    fn history(&self, k: usize) -> Result<&ArrayD<f32>> {
        let len = self.model_outputs.len();
        self.model_outputs
            .get(len.wrapping_sub(k))
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Internal(format!("DPM-Solver history model_outputs[-{k}] is missing")))
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.grid.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.grid.sigmas
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn order(&self) -> usize {
        1
    }

    /// The identity (DPM-Solver works on unscaled samples).
    fn scale_model_input(&mut self, sample: ArrayViewD<'_, f32>, _index: usize) -> ArrayD<f32> {
        sample.to_owned()
    }

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
        let converted =
            c.family.convert_model_output(c.algorithm.predicts_x0(), &model_output, &sample, self.grid.sigmas[index]);
        self.model_outputs.rotate_left(1);
        if let Some(last) = self.model_outputs.last_mut() {
            *last = Some(converted);
        }
        let noise = if c.algorithm.is_sde() { Some(draw_noise(noise, sample.shape())?) } else { None };

        let prev = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            let m0 = self.history(1)?;
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

    fn set_begin_index(&mut self, begin_index: usize) {
        self.grid.begin_index = Some(begin_index);
    }

    fn completed_steps(&self, index: usize) -> usize {
        index + 1
    }
}

// --- Shared by the DPM-Solver family (DPMSolverMultistep, DPMSolverSinglestep, UniPCMultistep) ---

/// Dynamic thresholding options (`thresholding`, `dynamic_thresholding_ratio`, `sample_max_value`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Threshold {
    ratio: f64,
    max: f64,
}

/// Options every DPM-family class has, parsed with the shared diffusers defaults.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FamilyOptions {
    /// `num_train_timesteps`.
    pub num_train_timesteps: usize,
    /// The training betas.
    pub betas: BetaSchedule,
    /// `rescale_betas_zero_snr` (always false for DPMSolverSinglestep, which has no such option).
    pub rescale_betas_zero_snr: bool,
    /// `prediction_type`.
    pub prediction_type: PredictionType,
    /// `thresholding` with its ratio and ceiling.
    pub thresholding: Option<Threshold>,
    /// `solver_order`.
    pub solver_order: usize,
    /// Karras / exponential sigmas.
    pub conversion: SigmaConversion,
    /// `sigma_min` (a UniPC option; the DPM-Solvers read it from the model config too, via `hasattr`).
    pub sigma_min: Option<f64>,
    /// `sigma_max`, as `sigma_min`.
    pub sigma_max: Option<f64>,
    /// `final_sigmas_type`.
    pub final_sigmas: FinalSigmas,
}

impl FamilyOptions {
    /// Parses the shared options of `class` (diffusers defaults), rejecting the flow-matching and learned-variance
    /// options sdxlrt does not run. `zero_snr`: whether the class has `rescale_betas_zero_snr`.
    pub(super) fn new(c: &SchedulerConfig, class: &str, zero_snr: bool) -> Result<Self> {
        let num_train_timesteps = c.num_train_timesteps.unwrap_or(1000);
        if num_train_timesteps < 2 {
            return Err(Error::field(option_field("num_train_timesteps"), "must be at least 2"));
        }
        let betas = parse_betas(
            c.trained_betas.as_deref(),
            c.beta_schedule.as_deref().unwrap_or("linear"),
            c.beta_start.unwrap_or(0.0001),
            c.beta_end.unwrap_or(0.02),
            num_train_timesteps,
        )?;
        let prediction_type = match c.prediction_type.as_deref().unwrap_or("epsilon") {
            "flow_prediction" => {
                return Err(Error::unsupported(
                    option_field("prediction_type"),
                    "flow_prediction (flow-matching models) is not supported by sdxlrt",
                ))
            }
            // diffusers' DPM-family convert_model_output knows only these three names (not `original_sample`).
            p @ ("epsilon" | "v_prediction" | "sample") => parse_prediction_type(p)?,
            other => {
                return Err(Error::field(
                    option_field("prediction_type"),
                    format!("`{other}` is not one of epsilon, v_prediction, sample for {class}"),
                ))
            }
        };
        let thresholding = if c.thresholding.unwrap_or(false) {
            let ratio = c.dynamic_thresholding_ratio.unwrap_or(0.995);
            if !(0.0..=1.0).contains(&ratio) {
                return Err(Error::field(
                    option_field("dynamic_thresholding_ratio"),
                    format!("{ratio} is not in [0, 1] (a quantile)"),
                ));
            }
            let max = c.sample_max_value.unwrap_or(1.0);
            if !max.is_finite() {
                return Err(Error::field(option_field("sample_max_value"), format!("{max} is not finite")));
            }
            Some(Threshold { ratio, max })
        } else {
            None
        };
        let solver_order = c.solver_order.unwrap_or(2);
        if !(1..=3).contains(&solver_order) {
            return Err(Error::field(option_field("solver_order"), format!("{solver_order} is not 1, 2 or 3")));
        }
        let karras = c.use_karras_sigmas.unwrap_or(false);
        let exponential = c.use_exponential_sigmas.unwrap_or(false);
        let beta = c.use_beta_sigmas.unwrap_or(false);
        if [karras, exponential, beta].iter().filter(|&&b| b).count() > 1 {
            return Err(Error::field(
                option_field("use_karras_sigmas"),
                "only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas can be true",
            ));
        }
        if beta {
            return Err(Error::unsupported(
                option_field("use_beta_sigmas"),
                "beta sigmas need scipy's beta.ppf, which sdxlrt does not reproduce exactly yet",
            ));
        }
        if c.use_flow_sigmas.unwrap_or(false) {
            return Err(Error::unsupported(
                option_field("use_flow_sigmas"),
                "flow-matching sigmas are for flow models, not SDXL; sdxlrt does not support them",
            ));
        }
        if c.use_dynamic_shifting.unwrap_or(false) {
            return Err(Error::unsupported(
                option_field("use_dynamic_shifting"),
                "dynamic shifting needs a per-resolution `mu` (flow models); sdxlrt does not support it",
            ));
        }
        if let Some(t) = c.time_shift_type.as_deref() {
            parse_choice("time_shift_type", t, &[("exponential", ()), ("linear", ())])?;
        }
        for (key, value) in [("sigma_min", c.sigma_min), ("sigma_max", c.sigma_max)] {
            if let Some(v) = value {
                if !(v.is_finite() && v > 0.0) {
                    return Err(Error::field(option_field(key), format!("{v} is not a positive finite number")));
                }
            }
        }
        let conversion = if karras {
            SigmaConversion::Karras
        } else if exponential {
            SigmaConversion::Exponential
        } else {
            SigmaConversion::None
        };
        let final_sigmas = parse_choice(
            "final_sigmas_type",
            c.final_sigmas_type.as_deref().unwrap_or("zero"),
            &[("zero", FinalSigmas::Zero), ("sigma_min", FinalSigmas::SigmaMin)],
        )?;
        Ok(FamilyOptions {
            num_train_timesteps,
            betas,
            rescale_betas_zero_snr: zero_snr && c.rescale_betas_zero_snr.unwrap_or(false),
            prediction_type,
            thresholding,
            solver_order,
            conversion,
            sigma_min: c.sigma_min,
            sigma_max: c.sigma_max,
            final_sigmas,
        })
    }

    /// `_convert_to_karras` / `_convert_to_exponential` of the flipped training sigmas (float64), with the
    /// configured `sigma_min`/`sigma_max` where set.
    pub(super) fn converted_sigmas(&self, tables: &TrainingTables, n: usize) -> Vec<f64> {
        let lo = self.sigma_min.unwrap_or(tables.sigmas[0] as f64);
        let hi = self.sigma_max.unwrap_or(tables.sigmas[tables.sigmas.len() - 1] as f64);
        match self.conversion {
            SigmaConversion::Karras => karras_sigmas(lo, hi, n),
            _ => exponential_sigmas(lo, hi, n),
        }
    }

    /// Ports `convert_model_output` (DPMSolverMultistep/Singlestep; UniPC's is the same with `predict_x0`): the
    /// data prediction x₀ when `to_x0`, else the noise prediction ε, at noise level `sigma`.
    pub(super) fn convert_model_output(
        &self,
        to_x0: bool,
        model_output: &ArrayViewD<'_, f32>,
        sample: &ArrayD<f32>,
        sigma: f32,
    ) -> ArrayD<f32> {
        let (alpha_t, sigma_t) = alpha_sigma_t(sigma);
        let m = model_output;
        if to_x0 {
            let x0 = match self.prediction_type {
                // (sample - sigma_t * model_output) / alpha_t
                PredictionType::Epsilon => zip2v(sample, m, |x, e| (x - sigma_t * e) / alpha_t),
                PredictionType::Sample => m.to_owned(),
                // alpha_t * sample - sigma_t * model_output
                PredictionType::VPrediction => zip2v(sample, m, |x, v| alpha_t * x - sigma_t * v),
            };
            match self.thresholding {
                Some(t) => threshold_sample(&x0, t),
                None => x0,
            }
        } else {
            let eps = match self.prediction_type {
                PredictionType::Epsilon => m.to_owned(),
                // (sample - alpha_t * model_output) / sigma_t
                PredictionType::Sample => zip2v(sample, m, |x, x0| (x - alpha_t * x0) / sigma_t),
                // alpha_t * model_output + sigma_t * sample
                PredictionType::VPrediction => zip2v(sample, m, |x, v| alpha_t * v + sigma_t * x),
            };
            match self.thresholding {
                Some(t) => {
                    let x0 = zip2(sample, &eps, |x, e| (x - sigma_t * e) / alpha_t);
                    let x0 = threshold_sample(&x0, t);
                    zip2(sample, &x0, |x, x0| (x - alpha_t * x0) / sigma_t)
                }
                None => eps,
            }
        }
    }
}

/// Parses DPM-Solver's `solver_type` (diffusers re-registers `logrho`, `bh1` and `bh2` as `midpoint`).
pub(super) fn parse_solver_type(c: &SchedulerConfig) -> Result<SolverType> {
    parse_choice(
        "solver_type",
        c.solver_type.as_deref().unwrap_or("midpoint"),
        &[
            ("midpoint", SolverType::Midpoint),
            ("heun", SolverType::Heun),
            ("logrho", SolverType::Midpoint),
            ("bh1", SolverType::Midpoint),
            ("bh2", SolverType::Midpoint),
        ],
    )
}

/// diffusers' `__init__` check: `final_sigmas_type="zero"` needs a data-prediction algorithm.
pub(super) fn check_final_sigmas(raw_algorithm: &str, final_sigmas: FinalSigmas) -> Result<()> {
    if final_sigmas == FinalSigmas::Zero && !matches!(raw_algorithm, "dpmsolver++" | "sde-dpmsolver++") {
        return Err(Error::field(
            option_field("final_sigmas_type"),
            format!(
                "`zero` is not supported with algorithm_type `{raw_algorithm}`; set final_sigmas_type to `sigma_min`"
            ),
        ));
    }
    Ok(())
}

/// `variance_type`: only `null` (a 4-channel latent UNet). diffusers' `learned`/`learned_range` slice the model
/// output to its first 3 channels (pixel-space models with learned variance), which an SDXL UNet does not have.
pub(super) fn check_variance_type(c: &SchedulerConfig) -> Result<()> {
    match c.variance_type.as_deref() {
        None => Ok(()),
        Some("learned" | "learned_range") => Err(Error::unsupported(
            option_field("variance_type"),
            "learned variance (model outputs with extra variance channels) is not supported by sdxlrt",
        )),
        Some(other) => Err(Error::field(
            option_field("variance_type"),
            format!("`{other}` is not one of learned, learned_range or null"),
        )),
    }
}

/// Rejects a zero step count.
pub(super) fn check_steps(num_inference_steps: usize) -> Result<usize> {
    if num_inference_steps == 0 {
        return Err(Error::field("data.steps", "must be at least 1"));
    }
    Ok(num_inference_steps)
}

/// `torch.searchsorted(torch.flip(self.lambda_t, [0]), lambda_min_clipped)`: how many training steps at the noisy
/// end have `lambda_t < lambda_min_clipped` (float32 tables, as torch builds them).
pub(super) fn clipped_index(alphas_cumprod: &[f32], lambda_min_clipped: f64) -> usize {
    if lambda_min_clipped == f64::NEG_INFINITY {
        return 0;
    }
    let v = lambda_min_clipped as f32;
    let flipped: Vec<f32> = alphas_cumprod
        .iter()
        .rev()
        .map(|&ac| {
            let (alpha, sigma) = (ac.sqrt(), (1.0 - ac).sqrt());
            ln_f32(alpha) - ln_f32(sigma)
        })
        .collect();
    flipped.partition_point(|&l| l < v)
}

/// `np.linspace(0, last - 1, n + 1).round()[::-1][:-1]` (the DPM-family `linspace` spacing), as float64 integers.
pub(super) fn linspace_timesteps(last: usize, n: usize) -> Vec<f64> {
    let mut ts: Vec<f64> =
        np_linspace(0.0, last as f64 - 1.0, n + 1).into_iter().map(f64::round_ties_even).collect::<Vec<_>>();
    ts.reverse();
    ts.truncate(n);
    ts
}

/// `np.arange(start, 0, -step)` in float64 for `step > 0` (numpy's length and fill rule).
pub(super) fn np_arange_desc(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil();
    let len = if len > 0.0 { len as usize } else { 0 };
    let delta = (start + -step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// `np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas])`, optionally `.round()`ed.
pub(super) fn sigmas_to_timesteps(sigmas: &[f64], log_sigmas: &[f32], round: bool) -> Vec<f64> {
    sigmas
        .iter()
        .map(|&s| {
            let t = sigma_to_t(s, log_sigmas);
            if round {
                t.round_ties_even()
            } else {
                t
            }
        })
        .collect()
}

/// The inference grid of a DPM-family scheduler plus the step-order bookkeeping every class needs.
#[derive(Debug, Clone)]
pub(super) struct Grid {
    /// The int64 timesteps diffusers feeds the UNet, as float32.
    pub timesteps: Vec<f32>,
    /// The float32 sigmas, one more than the timesteps.
    pub sigmas: Vec<f32>,
    /// `set_begin_index`.
    pub begin_index: Option<usize>,
    /// The next index `step` expects (None before the first step).
    pub next_index: Option<usize>,
}

impl Grid {
    /// Finishes `set_timesteps`: `sigmas = concatenate([sigmas, [sigma_last]]).astype(float32)` and
    /// `timesteps.to(int64)` (truncation).
    pub(super) fn new(timesteps: Vec<f64>, sigmas: Vec<f64>, sigma_last: f32, class: &str) -> Result<Self> {
        let timesteps: Vec<f32> = timesteps.into_iter().map(|t| t.trunc() as f32).collect();
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(sigma_last);
        if timesteps.is_empty() || timesteps.len() + 1 > sigmas.len() {
            return Err(Error::Internal(format!("{class}: {} timesteps but {} sigmas", timesteps.len(), sigmas.len())));
        }
        Ok(Grid { timesteps, sigmas, begin_index: None, next_index: None })
    }

    /// Checks that step `index` is the next one (history-keeping schedulers must be stepped in order) and that the
    /// shapes agree.
    pub(super) fn check_step(&self, index: usize, output: &[usize], sample: &[usize], class: &str) -> Result<()> {
        if index >= self.timesteps.len() {
            return Err(Error::Internal(format!(
                "{class} step index {index} out of range for {} timesteps",
                self.timesteps.len()
            )));
        }
        let expected = self.next_index.unwrap_or(self.begin_index.unwrap_or(0));
        if index != expected {
            return Err(Error::Internal(format!("{class} step index {index}: expected step {expected} next")));
        }
        if output != sample {
            return Err(Error::Internal(format!(
                "{class} step: model output shape {output:?} differs from sample shape {sample:?}"
            )));
        }
        Ok(())
    }

    /// Records that step `index` ran.
    pub(super) fn advance(&mut self, index: usize) {
        self.next_index = Some(index + 1);
    }
}

/// Ports `_sigma_to_alpha_sigma_t` (non-flow): `alpha_t = 1 / (σ² + 1)^½`, `sigma_t = σ·alpha_t`, float32.
pub(super) fn alpha_sigma_t(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// `torch.log(alpha_t) - torch.log(sigma_t)` (float32; +inf at sigma 0).
pub(super) fn lambda(alpha: f32, sigma: f32) -> f32 {
    ln_f32(alpha) - ln_f32(sigma)
}

/// Ports `dpm_solver_first_order_update` (shared by the multistep and singlestep solvers): `t` is the target
/// (alpha, sigma), `s` the current one, `h = lambda_t - lambda_s`.
pub(super) fn first_order_update(
    algorithm: Algorithm,
    (alpha_t, sigma_t): (f32, f32),
    (alpha_s, sigma_s): (f32, f32),
    h: f32,
    m0: &ArrayD<f32>,
    sample: &ArrayD<f32>,
    noise: Option<&ArrayD<f32>>,
) -> ArrayD<f32> {
    match (algorithm, noise) {
        (Algorithm::SdeDpmSolverPp, Some(noise)) => lincomb(&[
            (sigma_t / sigma_s * exp_f32(-h), sample),
            (alpha_t * (1.0 - exp_f32(-2.0 * h)), m0),
            (sigma_t * (1.0 - exp_f32(-2.0 * h)).sqrt(), noise),
        ]),
        (Algorithm::SdeDpmSolver, Some(noise)) => lincomb(&[
            (alpha_t / alpha_s, sample),
            (-(2.0 * (sigma_t * (exp_f32(h) - 1.0))), m0),
            (sigma_t * (exp_f32(2.0 * h) - 1.0).sqrt(), noise),
        ]),
        (Algorithm::DpmSolver, _) | (Algorithm::SdeDpmSolver, None) => {
            lincomb(&[(alpha_t / alpha_s, sample), (-(sigma_t * (exp_f32(h) - 1.0)), m0)])
        }
        (Algorithm::DpmSolverPp, _) | (Algorithm::SdeDpmSolverPp, None) => {
            lincomb(&[(sigma_t / sigma_s, sample), (-(alpha_t * (exp_f32(-h) - 1.0)), m0)])
        }
    }
}

/// The second-order update shared by `multistep_dpm_solver_second_order_update` (base point s0, `D0 = m0`) and
/// `singlestep_dpm_solver_second_order_update` (base point s1, `D0 = m1`): `t` is the target (alpha, sigma), `b`
/// the base point's, `h = lambda_t - lambda_b`, `(D0, D1)` the divided differences.
pub(super) fn second_order_update(
    (algorithm, solver): (Algorithm, SolverType),
    (alpha_t, sigma_t): (f32, f32),
    (alpha_b, sigma_b): (f32, f32),
    h: f32,
    (d0, d1): (&ArrayD<f32>, &ArrayD<f32>),
    sample: &ArrayD<f32>,
    noise: Option<&ArrayD<f32>>,
) -> Result<ArrayD<f32>> {
    let em1 = exp_f32(-h) - 1.0;
    let ep1 = exp_f32(h) - 1.0;
    let out = match (algorithm, solver) {
        (Algorithm::DpmSolverPp, SolverType::Midpoint) => {
            let c0 = alpha_t * em1;
            lincomb(&[(sigma_t / sigma_b, sample), (-c0, d0), (-(0.5 * c0), d1)])
        }
        (Algorithm::DpmSolverPp, SolverType::Heun) => {
            lincomb(&[(sigma_t / sigma_b, sample), (-(alpha_t * em1), d0), (alpha_t * (em1 / h + 1.0), d1)])
        }
        (Algorithm::DpmSolver, SolverType::Midpoint) => {
            let c0 = sigma_t * ep1;
            lincomb(&[(alpha_t / alpha_b, sample), (-c0, d0), (-(0.5 * c0), d1)])
        }
        (Algorithm::DpmSolver, SolverType::Heun) => {
            lincomb(&[(alpha_t / alpha_b, sample), (-(sigma_t * ep1), d0), (-(sigma_t * (ep1 / h - 1.0)), d1)])
        }
        (Algorithm::SdeDpmSolverPp, solver) => {
            let noise = need_noise(noise)?;
            let e2 = exp_f32(-2.0 * h);
            let c0 = alpha_t * (1.0 - e2);
            let c1 = match solver {
                SolverType::Midpoint => 0.5 * c0,
                SolverType::Heun => alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0),
            };
            lincomb(&[
                (sigma_t / sigma_b * exp_f32(-h), sample),
                (c0, d0),
                (c1, d1),
                (sigma_t * (1.0 - e2).sqrt(), noise),
            ])
        }
        (Algorithm::SdeDpmSolver, solver) => {
            let noise = need_noise(noise)?;
            let c1 = match solver {
                SolverType::Midpoint => sigma_t * ep1,
                SolverType::Heun => 2.0 * (sigma_t * (ep1 / h - 1.0)),
            };
            lincomb(&[
                (alpha_t / alpha_b, sample),
                (-(2.0 * (sigma_t * ep1)), d0),
                (-c1, d1),
                (sigma_t * (exp_f32(2.0 * h) - 1.0).sqrt(), noise),
            ])
        }
    };
    Ok(out)
}

/// The noise an SDE step drew, or an internal error if it is missing.
pub(super) fn need_noise(noise: Option<&ArrayD<f32>>) -> Result<&ArrayD<f32>> {
    noise.ok_or_else(|| Error::Internal("SDE update without noise".into()))
}

/// `randn_tensor(shape, generator=…, dtype=float32)`: one draw of `shape` from the noise source.
pub(super) fn draw_noise(noise: &mut dyn NoiseSource, shape: &[usize]) -> Result<ArrayD<f32>> {
    let values = noise.randn(shape);
    let want: usize = shape.iter().product();
    if values.len() != want {
        return Err(Error::Internal(format!("noise source returned {} values for {want} elements", values.len())));
    }
    ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| Error::Internal(format!("noise shape: {e}")))
}

/// `c0 * x0 + c1 * x1 + …` evaluated like torch: each product rounded to float32, then summed left to right
/// (a subtraction `a - c * x` is the term `(-c, x)`, which is bit-identical).
pub(super) fn lincomb(terms: &[(f32, &ArrayD<f32>)]) -> ArrayD<f32> {
    let Some(((c0, x0), rest)) = terms.split_first() else {
        return ArrayD::zeros(IxDyn(&[]));
    };
    let mut acc = x0.mapv(|x| c0 * x);
    for (c, x) in rest {
        Zip::from(&mut acc).and(*x).for_each(|a, &v| *a += c * v);
    }
    acc
}

/// Element-wise `f(a, b)` of two same-shaped arrays.
pub(super) fn zip2(a: &ArrayD<f32>, b: &ArrayD<f32>, f: impl Fn(f32, f32) -> f32) -> ArrayD<f32> {
    let mut out = a.clone();
    Zip::from(&mut out).and(b).for_each(|o, &y| *o = f(*o, y));
    out
}

/// [`zip2`] with a view as the second operand.
pub(super) fn zip2v(a: &ArrayD<f32>, b: &ArrayViewD<'_, f32>, f: impl Fn(f32, f32) -> f32) -> ArrayD<f32> {
    let mut out = a.clone();
    Zip::from(&mut out).and(b).for_each(|o, &y| *o = f(*o, y));
    out
}

/// Ports `_threshold_sample` (Imagen's dynamic thresholding, arXiv:2205.11487): per batch element,
/// `s = clamp(quantile(|x|, ratio), 1, sample_max_value)`, then `clamp(x, -s, s) / s`, with torch.quantile's
/// linear interpolation in float32.
pub(super) fn threshold_sample(x0: &ArrayD<f32>, t: Threshold) -> ArrayD<f32> {
    let shape = x0.shape().to_vec();
    let batch = shape.first().copied().unwrap_or(1).max(1);
    let flat: Vec<f32> = x0.iter().copied().collect();
    let per = flat.len() / batch;
    let mut out = Vec::with_capacity(flat.len());
    for chunk in flat.chunks(per.max(1)) {
        let mut sorted: Vec<f32> = chunk.iter().map(|v| v.abs()).collect();
        sorted.sort_by(f32::total_cmp);
        // ranks = q * (n - 1) in float32; below = floor, above = ceil, weight = ranks - below.
        let rank = (t.ratio as f32) * (sorted.len() - 1) as f32;
        let below = rank as usize;
        let above = (rank.ceil() as usize).min(sorted.len() - 1);
        let weight = rank - below as f32;
        let (lo, hi) = (sorted[below.min(sorted.len() - 1)], sorted[above]);
        // torch's lerp: small weights interpolate from the start, large ones from the end.
        let q = if weight.abs() < 0.5 { lo + weight * (hi - lo) } else { hi - (hi - lo) * (1.0 - weight) };
        let s = q.max(1.0).min(t.max as f32);
        out.extend(chunk.iter().map(|&v| v.max(-s).min(s) / s));
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).unwrap_or_else(|_| x0.clone())
}

#[cfg(test)]
pub(super) mod tests {
    use ndarray::{ArrayD, IxDyn};
    use serde_json::{json, Map, Value};

    use super::super::testutil::{
        assert_close, dummy_model, dummy_sample_deter, max_abs_diff, Goldens, ScriptedNoise, SDXL_JSON,
    };
    use super::super::{resolve, SchedulerConfig};
    use crate::error::ErrorCode;

    /// Runs one golden run of `dpm_family` through the public API; returns (worst table rel err, worst step rel err,
    /// worst step abs err).
    pub(crate) fn check_golden_run(g: &Goldens, model: &SchedulerConfig, run: &Value) -> (f64, f64, f64) {
        let name = run["run"].as_str().expect("run name");
        let class = run["class"].as_str().expect("class");
        let steps = run["steps"].as_u64().expect("steps") as usize;
        let options = run["options"].as_object().cloned().unwrap_or_default();
        let mut s = resolve(Some(class), &options, model)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .build(steps)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (want_ts, _) = g.tensor(&format!("{name}/timesteps"));
        let (want_sigmas, _) = g.tensor(&format!("{name}/sigmas"));
        let (want_ins, _) = g.tensor(&format!("{name}/init_noise_sigma"));
        assert_eq!(s.timesteps(), &want_ts[..], "{name}: timesteps");
        // Zero-SNR tables go through torch's float32 sqrt (not correctly rounded): ~2e-6 on some sigmas.
        let table_err = assert_close(&format!("{name}: sigmas"), s.sigmas(), &want_sigmas, 1e-5, 1e-9);
        assert_eq!(s.init_noise_sigma(), want_ins[0], "{name}: init_noise_sigma");

        let (sample0, _) = g.tensor(&format!("{name}/sample0"));
        let (prev, _) = g.tensor(&format!("{name}/prev"));
        let draws: Vec<Vec<f32>> = if g.has(&format!("{name}/noise")) {
            g.tensor(&format!("{name}/noise")).0.chunks(64).map(<[f32]>::to_vec).collect()
        } else {
            Vec::new()
        };
        let n_draws = draws.len();
        let drawn: Vec<bool> = run["noise_drawn"].as_array().expect("noise_drawn").iter().map(|b| b == true).collect();
        let mut noise = ScriptedNoise::new(draws);
        let mut sample = ArrayD::from_shape_vec(IxDyn(&[1, 4, 4, 4]), sample0).expect("shape");
        let (mut step_err, mut step_abs) = (0.0f64, 0.0f64);
        for i in 0..s.timesteps().len() {
            let t = s.timesteps()[i];
            let calls_before = noise.calls;
            let x = s.scale_model_input(sample.view(), i);
            assert_eq!(x, sample, "{name}: scale_model_input is the identity");
            let out = x.mapv(|v| v * t / (t + 1.0) + 0.05);
            sample = s.step(out.view(), i, sample.view(), &mut noise).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(noise.calls - calls_before == 1, drawn[i], "{name}: step {i} noise drawn");
            let want = &prev[i * 64..(i + 1) * 64];
            let got: Vec<f32> = sample.iter().copied().collect();
            step_abs = step_abs.max(max_abs_diff(&got, want));
            step_err =
                step_err.max(assert_close(&format!("{name}: step {i} (t={t}) step output"), &got, want, 1e-5, 1e-6));
        }
        assert_eq!(noise.calls, n_draws, "{name}: noise draws");
        (table_err, step_err, step_abs)
    }

    /// Checks every golden run of `class`; returns the number of runs.
    pub(crate) fn check_class_goldens(class: &str) -> usize {
        let g = Goldens::load("dpm_family");
        let model = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        let runs: Vec<Value> =
            g.meta["runs"].as_array().expect("runs").iter().filter(|r| r["class"] == class).cloned().collect();
        let (mut table_err, mut step_err, mut step_abs) = (0.0f64, 0.0f64, 0.0f64);
        for run in &runs {
            let (t, s, a) = check_golden_run(&g, &model, run);
            eprintln!("  {}: max rel err sigmas {t:e}, steps {s:e} (abs {a:e})", run["run"]);
            table_err = table_err.max(t);
            step_err = step_err.max(s);
            step_abs = step_abs.max(a);
        }
        eprintln!(
            "{class} goldens: {} runs, max rel err sigmas {table_err:e}, steps {step_err:e} (max abs {step_abs:e})",
            runs.len()
        );
        runs.len()
    }

    /// diffusers' unit-test full loop (`dummy_sample_deter`, `dummy_model`, 10 steps unless given) through the
    /// public API; `add_noise`: start from `alpha_t * x + sigma_t * noise` at the first step, as `add_noise` does.
    /// Returns (sum |x|, mean |x|).
    pub(crate) fn unit_loop(class: &str, config: &Value, steps: usize, start: usize, add_noise: bool) -> (f64, f64) {
        let overrides: Map<String, Value> = config.as_object().cloned().expect("object");
        let r = resolve(Some(class), &overrides, &SchedulerConfig::default()).expect("resolves");
        let mut s = r.build(steps).expect("builds");
        let mut sample = dummy_sample_deter();
        if add_noise {
            let noise = ArrayD::from_shape_fn(IxDyn(&[4, 3, 8, 8]), |ix| {
                let v = ((ix[1] * 8 + ix[2]) * 8 + ix[3]) * 4 + ix[0];
                (767 - v) as f32 / 768.0
            });
            let (alpha, sigma) = super::alpha_sigma_t(s.sigmas()[start]);
            sample = ndarray::Zip::from(&sample).and(&noise).map_collect(|&x, &e| alpha * x + sigma * e);
        }
        s.set_begin_index(start);
        let mut none = ScriptedNoise::none();
        for i in start..s.timesteps().len() {
            let t = s.timesteps()[i];
            let out = dummy_model(&sample, t);
            sample = s.step(out.view(), i, sample.view(), &mut none).expect("step");
        }
        let sum: f64 = sample.iter().map(|x| x.abs() as f64).sum();
        (sum, sum / sample.len() as f64)
    }

    /// Runs every `unit_loops` entry of the golden sidecar whose name starts with `prefix` and compares with
    /// diffusers' sum/mean (the tolerances of diffusers' tests: 1e-2 on the sum, 1e-3 on the mean).
    pub(crate) fn check_unit_loops(prefix: &str) -> usize {
        let g = Goldens::load("dpm_family");
        let loops = g.meta["unit_loops"].as_object().expect("unit_loops");
        let mut count = 0;
        for (name, l) in loops.iter().filter(|(n, _)| n.starts_with(prefix)) {
            let steps = l["steps"].as_u64().unwrap_or(10) as usize;
            let start = l["start"].as_u64().unwrap_or(0) as usize;
            let add_noise = l["add_noise"].as_bool().unwrap_or(false);
            let (sum, mean) = unit_loop(l["class"].as_str().expect("class"), &l["config"], steps, start, add_noise);
            let (want_sum, want_mean) = (l["sum"].as_f64().expect("sum"), l["mean"].as_f64().expect("mean"));
            assert!((sum - want_sum).abs() < 1e-2, "{name}: sum {sum} want {want_sum}");
            assert!((mean - want_mean).abs() < 1e-3, "{name}: mean {mean} want {want_mean}");
            count += 1;
        }
        count
    }

    /// diffusers' `check_over_configs` / `check_over_forward` / `test_solver_order_and_type` for `class`: each config
    /// (merged over `base`) resolves, survives a JSON round trip (their save_config/from_pretrained) with identical
    /// outputs, and a full dummy-model loop of `steps` stays finite. SDE variants draw from a seeded torch generator.
    pub(crate) fn sweep(class: &str, base: &Value, configs: &[Value], steps: &[usize]) -> usize {
        let mut count = 0;
        for extra in configs {
            let mut overrides = base.as_object().cloned().expect("object");
            overrides.extend(extra.as_object().cloned().expect("object"));
            let direct = resolve(Some(class), &overrides, &SchedulerConfig::default())
                .unwrap_or_else(|e| panic!("{class} {extra}: {e}"));
            let text = serde_json::to_string(&direct.config).expect("serializes");
            let reloaded = resolve(None, &Map::new(), &SchedulerConfig::from_json(&text).expect("reloads"))
                .unwrap_or_else(|e| panic!("{class} {extra} reloaded: {e}"));
            for &n in steps {
                let (mut a, mut b) = (direct.build(n).expect("builds"), reloaded.build(n).expect("builds"));
                assert_eq!(a.timesteps(), b.timesteps(), "{class} {extra}");
                let (mut ga, mut gb) = (crate::rng::TorchGenerator::new(0), crate::rng::TorchGenerator::new(0));
                let (mut xa, mut xb) = (dummy_sample_deter(), dummy_sample_deter());
                for i in 0..a.timesteps().len() {
                    let t = a.timesteps()[i];
                    let out = dummy_model(&xa, t);
                    xa = a.step(out.view(), i, xa.view(), &mut ga).expect("step");
                    xb = b.step(out.view(), i, xb.view(), &mut gb).expect("step");
                    assert!(xa.iter().all(|x| x.is_finite()), "{class} {extra} {n} steps: non-finite at step {i}");
                    assert_eq!(xa, xb, "{class} {extra} {n} steps: step {i}");
                }
                count += 1;
            }
        }
        count
    }

    /// The base config of diffusers' DPM-Solver unit tests (`get_scheduler_config`).
    pub(crate) fn test_base() -> Value {
        json!({"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
               "solver_order": 2, "prediction_type": "epsilon", "thresholding": false, "sample_max_value": 1.0})
    }

    #[test]
    fn dpm_multistep_check_over_configs() {
        const M: &str = "DPMSolverMultistepScheduler";
        let base = test_base();
        let mut configs: Vec<Value> =
            [25, 50, 100, 999, 1000].iter().map(|n| json!({"num_train_timesteps": n})).collect();
        for order in [1, 2, 3] {
            for solver_type in ["midpoint", "heun"] {
                for prediction_type in ["epsilon", "sample", "v_prediction"] {
                    for algorithm in ["dpmsolver", "dpmsolver++", "sde-dpmsolver++"] {
                        configs.push(json!({"solver_order": order, "solver_type": solver_type,
                            "prediction_type": prediction_type, "algorithm_type": algorithm,
                            "final_sigmas_type": "sigma_min"}));
                    }
                    for threshold in [0.5, 1.0, 2.0] {
                        configs.push(json!({"thresholding": true, "prediction_type": prediction_type,
                            "sample_max_value": threshold, "algorithm_type": "dpmsolver++", "solver_order": order,
                            "solver_type": solver_type}));
                    }
                }
                configs.push(json!({"algorithm_type": "sde-dpmsolver", "solver_order": order.min(2),
                    "solver_type": solver_type, "final_sigmas_type": "sigma_min"}));
            }
        }
        for extra in [
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
        ] {
            configs.push(extra);
        }
        assert!(sweep(M, &base, &configs, &[10]) > 100);
        // test_inference_steps: 1 … 1000 steps. At 1000 steps the linspace grid repeats t=500 (np.linspace(0, 999,
        // 1001).round()), so h = 0 there and diffusers' loop turns NaN at step 500; the grid is reproduced as is.
        let r = resolve(Some(M), &base.as_object().cloned().expect("object"), &SchedulerConfig::default()).expect("ok");
        let ts = r.build(1000).expect("builds").timesteps().to_vec();
        assert_eq!((ts.len(), ts[499], ts[500]), (1000, 500.0, 500.0));
        assert_eq!(sweep(M, &base, &[json!({})], &[1, 2, 3, 5, 10, 50, 100, 999]), 8);
    }

    fn sdxl() -> SchedulerConfig {
        SchedulerConfig::from_json(SDXL_JSON).expect("parses")
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn dpm_multistep_matches_diffusers_goldens_for_every_option_set() {
        assert!(check_class_goldens("DPMSolverMultistepScheduler") >= 40);
    }

    #[test]
    fn dpm_multistep_full_loops_match_diffusers_unit_tests() {
        // tests/schedulers/test_scheduler_dpm_multi.py: full_loop no noise / thresholding / v_prediction / Karras /
        // Lu lambdas, values recomputed with diffusers 0.42.1 (the sidecar's unit_loops).
        assert_eq!(check_unit_loops("multi_"), 5);
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

    #[test]
    fn threshold_sample_matches_torch_quantile() {
        // torch: x = arange(-8, 8).float().reshape(1, 1, 4, 4) / 2; DPMSolverMultistepScheduler(thresholding=True,
        // dynamic_thresholding_ratio=0.9, sample_max_value=3.0)._threshold_sample(x): quantile(|x|, 0.9) = 3.5
        // (ranks 13.5 of sorted |x|), clamped to 3.0.
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 4, 4]), (-8..8).map(|v| v as f32 / 2.0).collect()).expect("x");
        let y = super::threshold_sample(&x, super::Threshold { ratio: 0.9, max: 3.0 });
        assert_eq!(y[[0, 0, 0, 0]], -1.0);
        assert_eq!(y[[0, 0, 3, 3]], 3.5f32.min(3.0) / 3.0);
        assert_eq!(y[[0, 0, 2, 1]], 0.5 / 3.0);
        // sample_max_value below 1: torch.clamp(min=1, max=0.5) gives 0.5.
        let y = super::threshold_sample(&x, super::Threshold { ratio: 0.5, max: 0.5 });
        assert_eq!(y[[0, 0, 0, 0]], -1.0);
        assert_eq!(y[[0, 0, 2, 0]], 0.0);
    }
}
