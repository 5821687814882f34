//! `UniPCMultistepScheduler`: UniPC, a unified predictor-corrector for fast sampling (Zhao et al. 2023,
//! <https://arxiv.org/abs/2302.04867>), A1111's "UniPC".
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_unipc_multistep.py` of diffusers 0.42.1:
//! `__init__` (checks), `set_timesteps` (grid; Karras/exponential schedules take their final `sigma_min` from the
//! converted schedule), `convert_model_output`, `multistep_uni_p_bh_update` (UniP predictor),
//! `multistep_uni_c_bh_update` (UniC corrector, applied to the incoming sample with the previous step's order and
//! model outputs) and `step`. The small linear systems (`torch.linalg.solve`) are solved by LU with partial pivoting
//! in float32, as LAPACK's `sgesv` does. Shared DPM-family pieces live in `dpm_family.rs`.

use ndarray::{ArrayD, ArrayViewD, Zip};

use super::common::{
    check_steps, denoised_methods, option_field, parse_choice, parse_spacing, Denoised, FinalSigmas, SigmaConversion,
    TimestepSpacing,
};
use super::dpm_family::{grid_scheduler_methods, spaced_timesteps, zip2, FamilyOptions, Grid, History};
use super::{Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::NoiseSource;

/// The options `UniPCMultistepScheduler` accepts: its diffusers `__init__` arguments.
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
    "predict_x0",
    "solver_type",
    "lower_order_final",
    "disable_corrector",
    "solver_p",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "use_flow_sigmas",
    "flow_shift",
    "timestep_spacing",
    "steps_offset",
    "final_sigmas_type",
    "rescale_betas_zero_snr",
    "use_dynamic_shifting",
    "time_shift_type",
    "sigma_min",
    "sigma_max",
    "shift_terminal",
];

/// diffusers' defaults for [`KEYS`].
pub(crate) fn defaults() -> serde_json::Map<String, serde_json::Value> {
    super::common::json_object(serde_json::json!({
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
        "trained_betas": null, "solver_order": 2, "prediction_type": "epsilon", "thresholding": false,
        "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "predict_x0": true, "solver_type": "bh2",
        "lower_order_final": true, "disable_corrector": [], "solver_p": null, "use_karras_sigmas": false,
        "use_exponential_sigmas": false, "use_beta_sigmas": false, "use_flow_sigmas": false, "flow_shift": 1.0,
        "timestep_spacing": "linspace", "steps_offset": 0, "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": false, "use_dynamic_shifting": false, "time_shift_type": "exponential",
        "sigma_min": null, "sigma_max": null, "shift_terminal": null
    }))
}

/// UniPC's `solver_type`: the B(h) of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BhType {
    /// `bh1`: B(h) = h (for unconditional sampling / small step counts).
    Bh1,
    /// `bh2`: B(h) = eᵸ − 1 (diffusers' default, recommended with guidance).
    Bh2,
}

/// Validated `UniPCMultistepScheduler` options, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UniPcConfig {
    family: FamilyOptions,
    predict_x0: bool,
    solver_type: BhType,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    spacing: TimestepSpacing,
    steps_offset: usize,
}

impl UniPcConfig {
    /// Applies diffusers' class defaults to `c` and rejects what diffusers rejects (ports the checks of `__init__`),
    /// plus the combinations for which diffusers 0.42.1 returns NaN from the final step.
    pub(crate) fn new(c: &SchedulerConfig) -> Result<Self> {
        let family = FamilyOptions::new(c, "UniPCMultistepScheduler", true)?;
        let solver_type = parse_choice(
            "solver_type",
            c.solver_type.as_deref().unwrap_or("bh2"),
            &[
                ("bh1", BhType::Bh1),
                ("bh2", BhType::Bh2),
                // diffusers re-registers the DPM-Solver solver types as bh2.
                ("midpoint", BhType::Bh2),
                ("heun", BhType::Bh2),
                ("logrho", BhType::Bh2),
            ],
        )?;
        if c.solver_p.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(Error::unsupported(
                option_field("solver_p"),
                "an external predictor scheduler is not supported; only null",
            ));
        }
        if c.shift_terminal.is_some() {
            // diffusers: "`shift_terminal` is only supported when `use_flow_sigmas=True`" (and flow sigmas are not).
            return Err(Error::field(option_field("shift_terminal"), "is only supported with use_flow_sigmas"));
        }
        let predict_x0 = c.predict_x0.unwrap_or(true);
        let lower_order_final = c.lower_order_final.unwrap_or(true);
        if family.final_sigmas == FinalSigmas::Zero {
            // With a final sigma of 0, lambda_t = inf on the last step; diffusers then computes inf * 0 = NaN for
            // these settings (checked with diffusers 0.42.1). Reject them instead of returning a NaN image.
            let culprit = if solver_type == BhType::Bh1 {
                Some(("solver_type", "bh1"))
            } else if !predict_x0 {
                Some(("predict_x0", "false"))
            } else if !lower_order_final && family.solver_order > 1 {
                Some(("lower_order_final", "false"))
            } else {
                None
            };
            if let Some((key, value)) = culprit {
                return Err(Error::field(
                    option_field(key),
                    format!(
                        "{key}={value} with final_sigmas_type `zero` makes diffusers' last UniPC step NaN; set \
                         final_sigmas_type to `sigma_min`"
                    ),
                ));
            }
        }
        Ok(UniPcConfig {
            family,
            predict_x0,
            solver_type,
            lower_order_final,
            disable_corrector: c.disable_corrector.clone().unwrap_or_default(),
            spacing: parse_spacing(c.timestep_spacing.as_deref().unwrap_or("linspace"))?,
            steps_offset: c.steps_offset.unwrap_or(0),
        })
    }

    /// `UniPCMultistepScheduler(**config).set_timesteps(num_inference_steps)`.
    pub(crate) fn build(&self, num_inference_steps: usize) -> Result<UniPcMultistepScheduler> {
        let n = check_steps(num_inference_steps)?;
        let f = &self.family;
        let tables = f.tables();
        let t_count = f.num_train_timesteps;
        let timesteps = spaced_timesteps(self.spacing, t_count, t_count, n, self.steps_offset);
        let (timesteps, sigmas) = f.timesteps_and_sigmas(&tables, timesteps, n, true);
        let sigma_last = match f.final_sigmas {
            // Karras/exponential: sigma_last = sigmas[-1] of the converted schedule.
            FinalSigmas::SigmaMin if f.conversion != SigmaConversion::None => {
                sigmas.last().copied().unwrap_or(0.0) as f32
            }
            other => other.value(&tables),
        };
        let grid = Grid::new(timesteps, sigmas, sigma_last, "UniPCMultistepScheduler")?;
        Ok(UniPcMultistepScheduler {
            config: self.clone(),
            grid,
            model_outputs: History::new(f.solver_order),
            lower_order_nums: 0,
            last_sample: None,
            this_order: 1,
            denoised: Denoised::default(),
        })
    }
}

/// A built `UniPCMultistepScheduler` for one request.
#[derive(Debug, Clone)]
pub struct UniPcMultistepScheduler {
    config: UniPcConfig,
    grid: Grid,
    /// `self.model_outputs` (converted).
    model_outputs: History,
    /// `self.lower_order_nums`.
    lower_order_nums: usize,
    /// `self.last_sample`: the sample the previous predictor started from (the corrector's x).
    last_sample: Option<ArrayD<f32>>,
    /// `self.this_order`: the previous predictor's order (the corrector's order).
    this_order: usize,
    denoised: Denoised,
}

/// `hh`, `h_phi_1`, `B_h`, `R` and `b` of `multistep_uni_{p,c}_bh_update` for `order` given the `rks` (without
/// the trailing 1).
struct Coefficients {
    h_phi_1: f32,
    b_h: f32,
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
}

impl UniPcMultistepScheduler {
    /// The shared coefficient part of both updates (float32 0-dim tensor arithmetic).
    fn coefficients(&self, h: f32, mut rks: Vec<f32>, order: usize) -> Coefficients {
        rks.push(1.0);
        let hh = if self.config.predict_x0 { -h } else { h };
        let h_phi_1 = expm1_f32(hh);
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial_i: u64 = 1;
        let b_h = match self.config.solver_type {
            BhType::Bh1 => hh,
            BhType::Bh2 => expm1_f32(hh),
        };
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            // torch.pow(rks, i - 1): 1, rks, rks² (exact square).
            r.push(rks.iter().map(|&x| powi_f32(x, i - 1)).collect());
            b.push(h_phi_k * factorial_i as f32 / b_h);
            factorial_i *= i as u64 + 1;
            h_phi_k = h_phi_k / hh - (1.0 / factorial_i as f64) as f32;
        }
        Coefficients { h_phi_1, b_h, r, b }
    }

    /// Ports `multistep_uni_p_bh_update` (UniP, the predictor) for step `i` from `x`.
    fn predictor(&self, i: usize, x: &ArrayD<f32>, order: usize) -> Result<ArrayD<f32>> {
        let (alpha_t, sigma_t, lambda_t) = self.grid.point(i + 1);
        let (alpha_s0, sigma_s0, lambda_s0) = self.grid.point(i);
        let h = lambda_t - lambda_s0;
        let m0 = self.model_outputs.get(1)?;
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for k in 1..order {
            let (_, _, lambda_si) = self.grid.point(i - k);
            let mi = self.model_outputs.get(k + 1)?;
            let rk = (lambda_si - lambda_s0) / h;
            rks.push(rk);
            d1s.push(zip2(mi, m0, |a, b| (a - b) / rk));
        }
        let co = self.coefficients(h, rks, order);
        let rhos_p: Vec<f32> = if d1s.is_empty() {
            Vec::new()
        } else if order == 2 {
            vec![0.5]
        } else {
            let k = order - 1;
            let r: Vec<Vec<f32>> = co.r[..k].iter().map(|row| row[..k].to_vec()).collect();
            solve_f32(r, co.b[..k].to_vec())
                .ok_or_else(|| Error::Internal("UniPC predictor: singular system".into()))?
        };
        let (c_x, c_m, c_res) = if self.config.predict_x0 {
            (sigma_t / sigma_s0, alpha_t * co.h_phi_1, alpha_t * co.b_h)
        } else {
            (alpha_t / alpha_s0, sigma_t * co.h_phi_1, sigma_t * co.b_h)
        };
        // x_t_ = c_x * x - c_m * m0; x_t = x_t_ - c_res * einsum(rhos_p, D1s)
        let mut x_t = zip2(x, m0, |x, m| c_x * x - c_m * m);
        if !d1s.is_empty() {
            let pred_res = weighted_sum(&rhos_p, &d1s);
            Zip::from(&mut x_t).and(&pred_res).for_each(|x, &p| *x -= c_res * p);
        }
        Ok(x_t)
    }

    /// Ports `multistep_uni_c_bh_update` (UniC, the corrector) at step `i`: the corrected current sample, from the
    /// previous step's sample and outputs and this step's converted output `model_t` (diffusers' `this_sample` is
    /// not used by the update).
    fn corrector(&self, i: usize, model_t: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let order = self.this_order;
        let x =
            self.last_sample.as_ref().ok_or_else(|| Error::Internal("UniPC corrector without last sample".into()))?;
        let (alpha_t, sigma_t, lambda_t) = self.grid.point(i);
        let (alpha_s0, sigma_s0, lambda_s0) = self.grid.point(i - 1);
        let h = lambda_t - lambda_s0;
        let m0 = self.model_outputs.get(1)?;
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for k in 1..order {
            let (_, _, lambda_si) = self.grid.point(i - (k + 1));
            let mi = self.model_outputs.get(k + 1)?;
            let rk = (lambda_si - lambda_s0) / h;
            rks.push(rk);
            d1s.push(zip2(mi, m0, |a, b| (a - b) / rk));
        }
        let co = self.coefficients(h, rks, order);
        let rhos_c: Vec<f32> = if order == 1 {
            vec![0.5]
        } else {
            solve_f32(co.r, co.b).ok_or_else(|| Error::Internal("UniPC corrector: singular system".into()))?
        };
        let (c_x, c_m, c_res) = if self.config.predict_x0 {
            (sigma_t / sigma_s0, alpha_t * co.h_phi_1, alpha_t * co.b_h)
        } else {
            (alpha_t / alpha_s0, sigma_t * co.h_phi_1, sigma_t * co.b_h)
        };
        let rho_last = rhos_c[rhos_c.len() - 1];
        let mut x_t = zip2(x, m0, |x, m| c_x * x - c_m * m);
        // x_t = x_t_ - c_res * (corr_res + rhos_c[-1] * (model_t - m0))
        let mut corr = zip2(model_t, m0, |mt, m| rho_last * (mt - m));
        if !d1s.is_empty() {
            let corr_res = weighted_sum(&rhos_c[..rhos_c.len() - 1], &d1s);
            Zip::from(&mut corr).and(&corr_res).for_each(|c, &r| *c += r);
        }
        Zip::from(&mut x_t).and(&corr).for_each(|x, &c| *x -= c_res * c);
        Ok(x_t)
    }
}

impl Scheduler for UniPcMultistepScheduler {
    grid_scheduler_methods!();
    denoised_methods!();

    /// Ports `UniPCMultistepScheduler.step` (deterministic: the noise source is never used).
    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        self.grid.check_step(index, model_output.shape(), sample.shape(), "UniPCMultistepScheduler")?;
        let mut sample = sample.to_owned();
        let use_corrector =
            index > 0 && !self.config.disable_corrector.contains(&(index - 1)) && self.last_sample.is_some();
        let (family, sigma) = (&self.config.family, self.grid.sigmas[index]);
        let converted =
            family.convert_and_record(&mut self.denoised, self.config.predict_x0, &model_output, &sample, sigma);
        if use_corrector {
            sample = self.corrector(index, &converted)?;
        }
        self.model_outputs.push(converted);
        let order = self.config.family.solver_order;
        let this_order =
            if self.config.lower_order_final { order.min(self.grid.timesteps.len() - index) } else { order };
        // Warm-up for the multistep method.
        self.this_order = this_order.min(self.lower_order_nums + 1);
        let prev = self.predictor(index, &sample, self.this_order)?;
        self.last_sample = Some(sample);
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.grid.advance(index);
        Ok(prev)
    }
}

/// `torch.expm1` on a float32 0-dim tensor (correctly rounded via f64).
fn expm1_f32(x: f32) -> f32 {
    (x as f64).exp_m1() as f32
}

/// `torch.pow(x, e)` for the small integer exponents UniPC uses (0 → 1, 1 → x, 2 → x·x, …) in float32.
fn powi_f32(x: f32, e: usize) -> f32 {
    match e {
        0 => 1.0,
        1 => x,
        2 => x * x,
        _ => (x as f64).powi(e as i32) as f32,
    }
}

/// `torch.einsum("k,bkc...->bc...", rhos, stack(D1s, dim=1))`: `Σ rhos[k] · D1s[k]`, summed in order.
fn weighted_sum(rhos: &[f32], d1s: &[ArrayD<f32>]) -> ArrayD<f32> {
    let mut acc = d1s[0].mapv(|v| rhos[0] * v);
    for (rho, d) in rhos.iter().zip(d1s).skip(1) {
        Zip::from(&mut acc).and(d).for_each(|a, &v| *a += rho * v);
    }
    acc
}

/// `torch.linalg.solve(a, b)` for a small float32 system: LU with partial pivoting (LAPACK `sgetrf`: first largest
/// pivot, multipliers by the pivot's reciprocal) and the unit-lower / upper triangular solves of `sgetrs`. `None` for
/// a singular matrix.
fn solve_f32(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Option<Vec<f32>> {
    let n = b.len();
    for k in 0..n {
        let p = (k..n).fold(k, |best, i| if a[i][k].abs() > a[best][k].abs() { i } else { best });
        if a[p][k] == 0.0 {
            return None;
        }
        a.swap(k, p);
        b.swap(k, p);
        let inv = 1.0 / a[k][k];
        let (top, bottom) = a.split_at_mut(k + 1);
        let pivot_row = &top[k];
        for row in bottom.iter_mut() {
            row[k] *= inv;
            let l = row[k];
            for (x, &u) in row[k + 1..].iter_mut().zip(&pivot_row[k + 1..]) {
                *x -= l * u;
            }
        }
    }
    // Forward substitution with the unit lower triangle, column by column.
    for k in 0..n {
        if b[k] != 0.0 {
            for i in k + 1..n {
                b[i] -= b[k] * a[i][k];
            }
        }
    }
    // Back substitution with the upper triangle, column by column.
    for k in (0..n).rev() {
        if b[k] != 0.0 {
            b[k] /= a[k][k];
            for i in 0..k {
                b[i] -= b[k] * a[i][k];
            }
        }
    }
    Some(b)
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

    #[test]
    fn unipc_matches_diffusers_goldens_for_every_option_set() {
        assert!(check_goldens("dpm_family", Some("UniPCMultistepScheduler"), &DPM_RULES).runs >= 25);
    }

    #[test]
    fn unipc_full_loops_match_diffusers_unit_tests() {
        // tests/schedulers/test_scheduler_unipc.py: full_loop no noise / Karras / v_prediction / Karras +
        // v_prediction, full_loop_with_noise (add_noise, then t_start = 8); values recomputed with diffusers 0.42.1.
        assert_eq!(check_dpm_unit_loops("unipc_"), 5);
    }

    #[test]
    fn unipc_check_over_configs() {
        const U: &str = "UniPCMultistepScheduler";
        // diffusers' UniPC test config uses final_sigmas_type="sigma_min".
        let mut base = dpm_test_base();
        base["final_sigmas_type"] = json!("sigma_min");
        let variants = [true, false].map(|predict_x0| json!({"predict_x0": predict_x0}));
        let mut configs = solver_configs(&["bh1", "bh2"], &variants, &json!({}));
        for extra in [
            json!({"lower_order_final": true}),
            json!({"lower_order_final": false}),
            json!({"use_karras_sigmas": true}),
            json!({"use_exponential_sigmas": true}),
            json!({"disable_corrector": [0, 1, 5]}),
            json!({"timestep_spacing": "trailing", "rescale_betas_zero_snr": true}),
            json!({"timestep_spacing": "leading", "steps_offset": 1}),
            json!({"final_sigmas_type": "zero"}),
            json!({"final_sigmas_type": "zero", "solver_order": 3, "use_karras_sigmas": true}),
            json!({"solver_type": "midpoint"}),
        ] {
            configs.push(extra);
        }
        assert!(sweep(U, &base, &configs, &[10], 1.0) > 100);
        assert_eq!(sweep(U, &base, &[json!({})], &[1, 2, 3, 5, 10, 50, 100, 999], 1.0), 8);
    }

    #[test]
    fn solve_matches_a_hand_solved_system() {
        // [[1, 1], [-0.5, 1]] x = [1, 0.25] → x = [0.5, 0.5]; pivoting needed for [[0, 1], [1, 0]].
        assert_eq!(solve_f32(vec![vec![1.0, 1.0], vec![-0.5, 1.0]], vec![1.0, 0.25]), Some(vec![0.5, 0.5]));
        assert_eq!(solve_f32(vec![vec![0.0, 1.0], vec![1.0, 0.0]], vec![2.0, 3.0]), Some(vec![3.0, 2.0]));
        assert_eq!(solve_f32(vec![vec![1.0, 1.0], vec![1.0, 1.0]], vec![2.0, 3.0]), None);
    }

    #[test]
    fn unipc_rejects_nan_combinations_and_foreign_options() {
        let sdxl = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        let map = |v: Value| v.as_object().cloned().expect("object");
        for (overrides, field, code) in [
            (json!({"solver_type": "bh1"}), "solver_type", ErrorCode::InvalidRequest),
            (json!({"predict_x0": false}), "predict_x0", ErrorCode::InvalidRequest),
            (json!({"lower_order_final": false}), "lower_order_final", ErrorCode::InvalidRequest),
            (json!({"solver_type": "bh3"}), "solver_type", ErrorCode::InvalidRequest),
            (json!({"shift_terminal": 0.5}), "shift_terminal", ErrorCode::InvalidRequest),
            (json!({"solver_p": {"x": 1}}), "solver_p", ErrorCode::Unsupported),
            (json!({"use_beta_sigmas": true}), "use_beta_sigmas", ErrorCode::Unsupported),
            (json!({"algorithm_type": "dpmsolver++"}), "algorithm_type", ErrorCode::InvalidRequest),
        ] {
            let err = resolve(Some("UniPC"), &map(overrides.clone()), &sdxl).expect_err(&overrides.to_string());
            assert_eq!(err.code(), code, "{overrides}: {err}");
            assert!(format!("{err:?}").contains(field), "{overrides}: {err:?}");
        }
        // With final_sigmas_type sigma_min they are fine (diffusers' own tests use that).
        for overrides in [
            json!({"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
            json!({"predict_x0": false, "final_sigmas_type": "sigma_min"}),
            json!({"lower_order_final": false, "final_sigmas_type": "sigma_min"}),
            json!({"lower_order_final": false, "solver_order": 1}),
        ] {
            assert!(resolve(Some("UniPC"), &map(overrides.clone()), &sdxl).is_ok(), "{overrides}");
        }
        let r = resolve(Some("UniPCMultistepScheduler"), &Map::new(), &sdxl).expect("resolves");
        // SDXL's leading spacing with steps_offset 1: 1000 // 5 = 200.
        assert_eq!(r.build(4).expect("builds").timesteps(), &[801.0, 601.0, 401.0, 201.0]);
    }
}
