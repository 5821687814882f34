//! What the DPM-Solver family (`DPMSolverMultistepScheduler`, `DPMSolverSinglestepScheduler`,
//! `UniPCMultistepScheduler`) shares: option parsing, the timestep/sigma grids, `_sigma_to_alpha_sigma_t`,
//! `convert_model_output`, `_threshold_sample`, the DPM-Solver first/second-order updates, the `model_outputs`
//! history and float32 tensor helpers, each a port of the named diffusers 0.42.1 function.
//!
//! Layer: schedulers (pure math). Scalars are float32 0-dim tensors in diffusers and float32 here, op by op; tensor
//! expressions are evaluated left to right with one rounding per torch op.

use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};

use super::common::{
    check_sigma_bounds, convert_sigmas, exp_f32, ln_f32, np_arange_desc, np_linspace, option_field, parse_choice,
    parse_final_sigmas, parse_prediction_type, parse_sigma_conversion, parse_training, sigmas_to_timesteps,
    BetaSchedule, Denoised, FinalSigmas, PredictionType, SigmaConversion, TimestepSpacing, TrainingTables,
};
use super::SchedulerConfig;
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

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
        let (num_train_timesteps, betas) = parse_training(c, 0.0001, 0.02, false)?;
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
        let conversion = parse_sigma_conversion(c)?;
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
        check_sigma_bounds(c)?;
        let final_sigmas = parse_final_sigmas(c)?;
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

    /// The training tables (`__init__`).
    pub(super) fn tables(&self) -> TrainingTables {
        TrainingTables::new(&self.betas, self.num_train_timesteps, self.rescale_betas_zero_snr)
    }

    /// `_convert_to_karras` / `_convert_to_exponential` of the flipped training sigmas (float64), with the
    /// configured `sigma_min`/`sigma_max` where set.
    pub(super) fn converted_sigmas(&self, tables: &TrainingTables, n: usize) -> Vec<f64> {
        let lo = self.sigma_min.unwrap_or(tables.sigmas[0] as f64);
        let hi = self.sigma_max.unwrap_or(tables.sigmas[tables.sigmas.len() - 1] as f64);
        convert_sigmas(self.conversion, lo, hi, n)
    }

    /// The sigma part of every family `set_timesteps`: the Karras/exponential schedule with `_sigma_to_t` timesteps
    /// (rounded for Karras when `round_karras`; exponential ones are truncated later by the int64 conversion), or
    /// the training sigmas interpolated at `timesteps`. Returns (timesteps, sigmas), float64.
    pub(super) fn timesteps_and_sigmas(
        &self,
        tables: &TrainingTables,
        timesteps: Vec<f64>,
        n: usize,
        round_karras: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        if self.conversion == SigmaConversion::None {
            let sigmas = tables.interp_sigmas(&timesteps);
            return (timesteps, sigmas);
        }
        let sigmas = self.converted_sigmas(tables, n);
        let round = round_karras && self.conversion == SigmaConversion::Karras;
        (sigmas_to_timesteps(&sigmas, &tables.log_sigmas, round), sigmas)
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

    /// `convert_model_output` of one evaluation, its x₀ recorded in `denoised` on the way (previews): the converted
    /// output itself when it is the data prediction (`to_x0`), else `convert_model_output` with x₀ prediction,
    /// computed only when `denoised` keeps estimates (so the ε variants pay nothing without previews).
    pub(super) fn convert_and_record(
        &self,
        denoised: &mut Denoised,
        to_x0: bool,
        model_output: &ArrayViewD<'_, f32>,
        sample: &ArrayD<f32>,
        sigma: f32,
    ) -> ArrayD<f32> {
        let converted = self.convert_model_output(to_x0, model_output, sample, sigma);
        if denoised.wanted() {
            match to_x0 {
                true => denoised.record(&converted),
                false => denoised.record(&self.convert_model_output(true, model_output, sample, sigma)),
            }
        }
        converted
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
fn linspace_timesteps(last: usize, n: usize) -> Vec<f64> {
    let mut ts: Vec<f64> =
        np_linspace(0.0, last as f64 - 1.0, n + 1).into_iter().map(f64::round_ties_even).collect::<Vec<_>>();
    ts.reverse();
    ts.truncate(n);
    ts
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

    /// The (alpha, sigma) of grid position `i` (`_sigma_to_alpha_sigma_t(self.sigmas[i])`) and its lambda.
    pub(super) fn point(&self, i: usize) -> (f32, f32, f32) {
        let (alpha, sigma) = alpha_sigma_t(self.sigmas[i]);
        (alpha, sigma, lambda(alpha, sigma))
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
    let values = super::common::draw_noise(noise, shape)?;
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

/// Parses `algorithm_type` (default `dpmsolver++`; diffusers re-registers `deis` as `dpmsolver++`) and applies
/// diffusers' `__init__` check that `final_sigmas_type="zero"` needs a data-prediction algorithm.
/// `sde_dpmsolver`: whether the class has `sde-dpmsolver` (the singlestep solver does not).
pub(super) fn parse_algorithm(
    c: &SchedulerConfig,
    final_sigmas: FinalSigmas,
    sde_dpmsolver: bool,
) -> Result<Algorithm> {
    let raw = c.algorithm_type.as_deref().unwrap_or("dpmsolver++");
    let mut choices = vec![("dpmsolver", Algorithm::DpmSolver), ("dpmsolver++", Algorithm::DpmSolverPp)];
    if sde_dpmsolver {
        choices.push(("sde-dpmsolver", Algorithm::SdeDpmSolver));
    }
    choices.extend([("sde-dpmsolver++", Algorithm::SdeDpmSolverPp), ("deis", Algorithm::DpmSolverPp)]);
    let algorithm = parse_choice("algorithm_type", raw, &choices)?;
    if final_sigmas == FinalSigmas::Zero && !matches!(raw, "dpmsolver++" | "sde-dpmsolver++") {
        return Err(Error::field(
            option_field("final_sigmas_type"),
            format!("`zero` is not supported with algorithm_type `{raw}`; set final_sigmas_type to `sigma_min`"),
        ));
    }
    Ok(algorithm)
}

/// Parses `lambda_min_clipped` (default -infinity; NaN and +infinity are errors).
pub(super) fn parse_lambda_min_clipped(c: &SchedulerConfig) -> Result<f64> {
    let lambda_min_clipped = c.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY);
    if lambda_min_clipped.is_nan() || lambda_min_clipped == f64::INFINITY {
        return Err(Error::field(
            option_field("lambda_min_clipped"),
            format!("{lambda_min_clipped} is not a finite number or -Infinity"),
        ));
    }
    Ok(lambda_min_clipped)
}

/// The `timestep_spacing` branch of the family's `set_timesteps` (float64 integers): `linspace` and `leading` span
/// `[0, last_timestep)` (`last_timestep = T - clipped_idx`) with `n + 1` points, `trailing` steps by `T / n` down
/// from `last_timestep`.
pub(super) fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    last_timestep: usize,
    n: usize,
    steps_offset: usize,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => linspace_timesteps(last_timestep, n),
        TimestepSpacing::Leading => {
            let step_ratio = last_timestep / (n + 1);
            (1..=n).rev().map(|i| (i * step_ratio + steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let step_ratio = num_train_timesteps as f64 / n as f64;
            np_arange_desc(last_timestep as f64, 0.0, step_ratio)
                .into_iter()
                .map(|v| v.round_ties_even() - 1.0)
                .collect()
        }
    }
}

/// `self.model_outputs`: the converted model outputs of the last `solver_order` steps, oldest first.
#[derive(Debug, Clone)]
pub(super) struct History(Vec<Option<ArrayD<f32>>>);

impl History {
    /// `[None] * solver_order`.
    pub(super) fn new(solver_order: usize) -> Self {
        History(vec![None; solver_order])
    }

    /// `model_outputs[i] = model_outputs[i + 1]` for all but the last, then `model_outputs[-1] = model_output`.
    pub(super) fn push(&mut self, model_output: ArrayD<f32>) {
        self.0.rotate_left(1);
        if let Some(last) = self.0.last_mut() {
            *last = Some(model_output);
        }
    }

    /// `model_outputs[-k]`.
    pub(super) fn get(&self, k: usize) -> Result<&ArrayD<f32>> {
        self.0
            .get(self.0.len().wrapping_sub(k))
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Internal(format!("DPM-Solver history model_outputs[-{k}] is missing")))
    }

    /// Whether `model_outputs[-k]` is set.
    pub(super) fn has(&self, k: usize) -> bool {
        self.get(k).is_ok()
    }
}

/// The [`super::Scheduler`] methods every DPM-family class implements the same way from its `grid` ([`Grid`])
/// field: unscaled inputs (`init_noise_sigma` 1, `scale_model_input` the identity), one evaluation per step.
macro_rules! grid_scheduler_methods {
    () => {
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
        fn scale_model_input(&mut self, sample: ndarray::ArrayViewD<'_, f32>, _index: usize) -> ndarray::ArrayD<f32> {
            sample.to_owned()
        }

        fn set_begin_index(&mut self, begin_index: usize) {
            self.grid.begin_index = Some(begin_index);
        }

        /// `α_t · original + σ_t · noise` with `(α_t, σ_t) = _sigma_to_alpha_sigma_t(sigmas[index])`.
        fn add_noise(
            &self,
            original: ndarray::ArrayViewD<'_, f32>,
            noise: ndarray::ArrayViewD<'_, f32>,
            index: usize,
        ) -> ndarray::ArrayD<f32> {
            let (alpha, sigma) = super::dpm_family::alpha_sigma_t(self.grid.sigmas[index]);
            super::common::noised(original, noise, alpha, sigma)
        }

        fn completed_steps(&self, index: usize) -> usize {
            index + 1
        }
    };
}
pub(super) use grid_scheduler_methods;

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::{threshold_sample, Threshold};

    #[test]
    fn threshold_sample_matches_torch_quantile() {
        // torch: x = arange(-8, 8).float().reshape(1, 1, 4, 4) / 2; DPMSolverMultistepScheduler(thresholding=True,
        // dynamic_thresholding_ratio=0.9, sample_max_value=3.0)._threshold_sample(x): quantile(|x|, 0.9) = 3.5
        // (ranks 13.5 of sorted |x|), clamped to 3.0.
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 4, 4]), (-8..8).map(|v| v as f32 / 2.0).collect()).expect("x");
        let y = threshold_sample(&x, Threshold { ratio: 0.9, max: 3.0 });
        assert_eq!(y[[0, 0, 0, 0]], -1.0);
        assert_eq!(y[[0, 0, 3, 3]], 3.5f32.min(3.0) / 3.0);
        assert_eq!(y[[0, 0, 2, 1]], 0.5 / 3.0);
        // sample_max_value below 1: torch.clamp(min=1, max=0.5) gives 0.5.
        let y = threshold_sample(&x, Threshold { ratio: 0.5, max: 0.5 });
        assert_eq!(y[[0, 0, 0, 0]], -1.0);
        assert_eq!(y[[0, 0, 2, 0]], 0.0);
    }
}
