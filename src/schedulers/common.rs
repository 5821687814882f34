//! Numerics shared by the sigma-based schedulers: training betas, cumulative alphas, timestep spacing, `np.interp`,
//! Karras/exponential sigmas and `_sigma_to_t`, each a port of the named diffusers 0.42.1 function.
//!
//! Layer: schedulers (pure math). Precision follows diffusers exactly: what diffusers computes with numpy float64
//! is computed in `f64`; what it computes as torch float32 tensors is computed in `f32`, op by op in the same
//! order, and converted where diffusers converts. Known, unavoidable last-bit differences: torch's CPU `sqrt`/`exp`
//! and numpy's SIMD float32 `log` are not correctly rounded (they may differ from ours by one ulp), which moves
//! sigmas by ~1e-7 relative; integer-valued timesteps are unaffected.

use crate::error::{Error, Result};

/// How the training betas are built (diffusers `beta_schedule` / `trained_betas`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BetaSchedule {
    /// `torch.linspace(beta_start, beta_end, n, dtype=float32)`.
    Linear { start: f64, end: f64 },
    /// `torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=float32) ** 2` (latent diffusion).
    ScaledLinear { start: f64, end: f64 },
    /// Glide cosine schedule, `betas_for_alpha_bar(n)`.
    SquaredCosCapV2,
    /// `torch.tensor(trained_betas, dtype=float32)`.
    Trained(Vec<f64>),
}

/// What the model predicts (diffusers `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PredictionType {
    /// The noise ε.
    Epsilon,
    /// The velocity v (arXiv:2202.00512, Imagen Video §2.4).
    VPrediction,
    /// The denoised sample x₀ (`sample`, or the legacy `original_sample`).
    Sample,
}

/// How inference timesteps are spread over the training range (Table 2 of arXiv:2305.08891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimestepSpacing {
    /// `np.linspace(0, T-1, n)[::-1]`.
    Linspace,
    /// `arange(n) * (T // n)`, reversed, plus `steps_offset`.
    Leading,
    /// `arange(T, 0, -T/n).round() - 1`.
    Trailing,
}

/// Which noise levels replace the interpolated ones (`use_karras_sigmas` / `use_exponential_sigmas` /
/// `use_beta_sigmas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigmaConversion {
    /// Keep the interpolated sigmas.
    None,
    /// Karras et al. 2022 (arXiv:2206.00364), rho = 7.
    Karras,
    /// Log-uniform between sigma_max and sigma_min.
    Exponential,
}

/// The sigma after the last step (`final_sigmas_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinalSigmas {
    /// 0: the last step lands on the clean sample.
    Zero,
    /// The first training sigma, `((1-ᾱ₀)/ᾱ₀)^½`.
    SigmaMin,
}

/// The JSON path of a scheduler option in a request, for error messages.
pub(crate) fn option_field(key: &str) -> String {
    format!("data.scheduler.{key}")
}

/// Parses a string option against its allowed values, naming both in the error.
pub(crate) fn parse_choice<T: Copy>(key: &str, value: &str, choices: &[(&str, T)]) -> Result<T> {
    choices.iter().find(|(name, _)| *name == value).map(|(_, v)| *v).ok_or_else(|| {
        let allowed: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        Error::field(option_field(key), format!("`{value}` is not one of {}", allowed.join(", ")))
    })
}

/// Parses `prediction_type` (diffusers accepts the legacy `original_sample` as `sample`).
pub(crate) fn parse_prediction_type(value: &str) -> Result<PredictionType> {
    parse_choice(
        "prediction_type",
        value,
        &[
            ("epsilon", PredictionType::Epsilon),
            ("v_prediction", PredictionType::VPrediction),
            ("sample", PredictionType::Sample),
            ("original_sample", PredictionType::Sample),
        ],
    )
}

/// Parses `timestep_spacing`.
pub(crate) fn parse_spacing(value: &str) -> Result<TimestepSpacing> {
    parse_choice(
        "timestep_spacing",
        value,
        &[
            ("linspace", TimestepSpacing::Linspace),
            ("leading", TimestepSpacing::Leading),
            ("trailing", TimestepSpacing::Trailing),
        ],
    )
}

/// A `json!({...})` object literal as a map (the class `defaults()` tables).
pub(crate) fn json_object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// Rejects a zero step count (every `set_timesteps`).
pub(crate) fn check_steps(num_inference_steps: usize) -> Result<usize> {
    if num_inference_steps == 0 {
        return Err(Error::field("data.steps", "must be at least 1"));
    }
    Ok(num_inference_steps)
}

/// The training part of every class's `__init__`: `num_train_timesteps` (at least 2) and the betas from
/// `trained_betas` / `beta_schedule` / `beta_start` / `beta_end`, with the class's default `beta_start`/`beta_end`.
/// `exp_schedule`: the class also accepts `beta_schedule = "exp"` (`betas_for_alpha_bar(alpha_transform_type="exp")`,
/// Heun only).
pub(crate) fn parse_training(
    c: &super::SchedulerConfig,
    beta_start: f64,
    beta_end: f64,
    exp_schedule: bool,
) -> Result<(usize, BetaSchedule)> {
    let num_train_timesteps = c.num_train_timesteps.unwrap_or(1000);
    if num_train_timesteps < 2 {
        return Err(Error::field(option_field("num_train_timesteps"), "must be at least 2"));
    }
    let schedule = c.beta_schedule.as_deref().unwrap_or("linear");
    let betas = if exp_schedule && schedule == "exp" && c.trained_betas.is_none() {
        BetaSchedule::Trained(exp_alpha_bar_betas(num_train_timesteps))
    } else {
        parse_betas(
            c.trained_betas.as_deref(),
            schedule,
            c.beta_start.unwrap_or(beta_start),
            c.beta_end.unwrap_or(beta_end),
            num_train_timesteps,
        )?
    };
    Ok((num_train_timesteps, betas))
}

/// Checks the optional `sigma_min` / `sigma_max` overrides of the Karras/exponential conversions (positive, finite).
pub(crate) fn check_sigma_bounds(c: &super::SchedulerConfig) -> Result<()> {
    for (key, value) in [("sigma_min", c.sigma_min), ("sigma_max", c.sigma_max)] {
        if let Some(v) = value {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::field(option_field(key), format!("{v} is not a positive finite number")));
            }
        }
    }
    Ok(())
}

/// Parses `final_sigmas_type` (default `zero`).
pub(crate) fn parse_final_sigmas(c: &super::SchedulerConfig) -> Result<FinalSigmas> {
    parse_choice(
        "final_sigmas_type",
        c.final_sigmas_type.as_deref().unwrap_or("zero"),
        &[("zero", FinalSigmas::Zero), ("sigma_min", FinalSigmas::SigmaMin)],
    )
}

impl FinalSigmas {
    /// The sigma appended after the last step: 0, or the first training sigma `((1 - ᾱ[0]) / ᾱ[0]) ** 0.5` as a
    /// float32 tensor.
    pub(crate) fn value(self, tables: &TrainingTables) -> f32 {
        match self {
            FinalSigmas::SigmaMin => tables.sigmas[0],
            FinalSigmas::Zero => 0.0,
        }
    }
}

/// Builds the beta schedule from `trained_betas`, `beta_schedule`, `beta_start` and `beta_end`.
pub(crate) fn parse_betas(
    trained: Option<&[f64]>,
    schedule: &str,
    start: f64,
    end: f64,
    num_train_timesteps: usize,
) -> Result<BetaSchedule> {
    if let Some(betas) = trained {
        if betas.len() != num_train_timesteps {
            return Err(Error::field(
                option_field("trained_betas"),
                format!("has {} values but num_train_timesteps is {num_train_timesteps}", betas.len()),
            ));
        }
        return Ok(BetaSchedule::Trained(betas.to_vec()));
    }
    match schedule {
        "linear" => Ok(BetaSchedule::Linear { start, end }),
        "scaled_linear" => Ok(BetaSchedule::ScaledLinear { start, end }),
        "squaredcos_cap_v2" => Ok(BetaSchedule::SquaredCosCapV2),
        other => Err(Error::field(
            option_field("beta_schedule"),
            format!("`{other}` is not one of linear, scaled_linear, squaredcos_cap_v2"),
        )),
    }
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on x86-64 CPUs with AVX2/AVX-512, bit for bit.
///
/// ATen's `linspace_kernel` computes `start + step*i` for the first half and `end - step*(steps-1-i)` for the
/// second, in float, where the compiler fuses each into one FMA; `step = (end - start) / (steps - 1)` in float.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 0 {
        return Vec::new();
    }
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) })
        .collect()
}

/// `np.linspace(start, stop, num)` in float64 (numpy 2.x: `arange(num) * step + start`, last element = stop).
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let delta = stop - start;
    let div = num - 1;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            y.iter_mut().for_each(|v| *v = *v / div as f64 * delta);
        } else {
            y.iter_mut().for_each(|v| *v *= step);
        }
    } else {
        y.iter_mut().for_each(|v| *v *= delta);
    }
    y.iter_mut().for_each(|v| *v += start);
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// The training betas as torch float32, ports diffusers' `__init__` beta branch and `betas_for_alpha_bar` (cosine).
pub(crate) fn betas_f32(schedule: &BetaSchedule, num_train_timesteps: usize) -> Vec<f32> {
    match schedule {
        BetaSchedule::Linear { start, end } => torch_linspace_f32(*start, *end, num_train_timesteps),
        BetaSchedule::ScaledLinear { start, end } => {
            // `torch.linspace(beta_start**0.5, beta_end**0.5, n) ** 2`: Python float sqrt, float32 square.
            torch_linspace_f32(start.powf(0.5), end.powf(0.5), num_train_timesteps).into_iter().map(|b| b * b).collect()
        }
        BetaSchedule::SquaredCosCapV2 => {
            // diffusers.schedulers.scheduling_ddpm.betas_for_alpha_bar(n, max_beta=0.999, "cosine"): Python floats,
            // then torch.tensor(..., dtype=float32).
            let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
            let n = num_train_timesteps as f64;
            (0..num_train_timesteps)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n, (i + 1) as f64 / n);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect()
        }
        BetaSchedule::Trained(betas) => betas.iter().map(|&b| b as f32).collect(),
    }
}

/// `torch.cumprod(x, 0)` for float32 on CPU: the running product is kept in double (`acc_type<float>`), each
/// output rounded to float.
pub(crate) fn torch_cumprod_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// Ports `diffusers.schedulers.scheduling_ddim.rescale_zero_terminal_snr` (arXiv:2305.08891, Algorithm 1), in
/// torch float32.
pub(crate) fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_ab: Vec<f32> = torch_cumprod_f32(&alphas).into_iter().map(f32::sqrt).collect();
    let (first, last) = match (sqrt_ab.first(), sqrt_ab.last()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => return Vec::new(),
    };
    // Shift so the last timestep is zero, then scale so the first is back to its old value.
    let scale = first / (first - last);
    sqrt_ab.iter_mut().for_each(|v| *v = (*v - last) * scale);
    let ab: Vec<f32> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    out.extend(ab.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

/// Training tables shared by the sigma schedulers: float32 `alphas_cumprod` and, derived from it in float32,
/// the ascending training sigmas `((1-ᾱ)/ᾱ)^½` and their logs.
#[derive(Debug, Clone)]
pub(crate) struct TrainingTables {
    /// `self.alphas_cumprod` (float32), index = training timestep. Euler only needs the sigmas; the DDIM and
    /// DPM-Solver ports read this.
    #[allow(dead_code)]
    pub alphas_cumprod: Vec<f32>,
    /// `np.array(((1 - ᾱ) / ᾱ) ** 0.5)` (float32, ascending in t).
    pub sigmas: Vec<f32>,
    /// `np.log(sigmas)` (float32).
    pub log_sigmas: Vec<f32>,
}

impl TrainingTables {
    /// Ports the table part of diffusers' `__init__`: betas → (rescale) → alphas → cumprod (→ ᾱ[-1] = 2⁻²⁴ when
    /// rescaled), then the sigmas `set_timesteps` derives.
    pub(crate) fn new(schedule: &BetaSchedule, num_train_timesteps: usize, rescale_zero_snr: bool) -> Self {
        let mut betas = betas_f32(schedule, num_train_timesteps);
        if rescale_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = torch_cumprod_f32(&alphas);
        if rescale_zero_snr {
            // "Close to 0 without being 0 so first sigma is not inf": FP16's smallest subnormal.
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let sigmas: Vec<f32> = alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        let log_sigmas = sigmas.iter().map(|&s| ln_f32(s)).collect();
        TrainingTables { alphas_cumprod, sigmas, log_sigmas }
    }

    /// `np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)`: the training sigmas (as float64) at fractional
    /// timesteps.
    pub(crate) fn interp_sigmas(&self, timesteps: &[f64]) -> Vec<f64> {
        let table: Vec<f64> = self.sigmas.iter().map(|&s| s as f64).collect();
        np_interp_index(timesteps, &table)
    }
}

/// Correctly rounded float32 natural log (computed in f64, rounded once).
pub(crate) fn ln_f32(x: f32) -> f32 {
    (x as f64).ln() as f32
}

/// Correctly rounded float32 exp (computed in f64, rounded once).
pub(crate) fn exp_f32(x: f32) -> f32 {
    (x as f64).exp() as f32
}

/// The inference timesteps of one spacing as numpy builds them (float32 values), ports the `timestep_spacing`
/// branch of `EulerDiscreteScheduler.set_timesteps`.
pub(crate) fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    steps_offset: usize,
) -> Vec<f32> {
    let t = num_train_timesteps;
    let n = num_inference_steps;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut ts: Vec<f32> = np_linspace(0.0, (t as f64) - 1.0, n).into_iter().map(|v| v as f32).collect();
            ts.reverse();
            ts
        }
        TimestepSpacing::Leading => {
            // step_ratio = T // n; (arange(n) * step_ratio).round()[::-1].astype(float32) + steps_offset
            let ratio = t / n;
            (0..n).rev().map(|i| (i * ratio) as f32 + steps_offset as f32).collect()
        }
        TimestepSpacing::Trailing => {
            // step_ratio = T / n; arange(T, 0, -step_ratio).round().astype(float32) - 1
            let ratio = t as f64 / n as f64;
            np_arange_desc(t as f64, 0.0, ratio).into_iter().map(|v| v.round_ties_even() as f32 - 1.0).collect()
        }
    }
}

/// `np.arange(start, stop, -step)` for float64 with `step > 0` (numpy: `len = ceil((stop - start) / -step)`,
/// values `start + i * -step`).
pub(crate) fn np_arange_desc(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / -step).ceil();
    let len = if len > 0.0 { len as usize } else { 0 };
    // numpy fills arange by repeated addition of delta = (start + step) - start from the first two values.
    let second = start + -step;
    let delta = second - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// `np.interp(x, arange(len(fp)), fp)` in float64 (numpy `arr_interp`), ports the `interpolation_type == "linear"`
/// branch.
pub(crate) fn np_interp_index(x: &[f64], fp: &[f64]) -> Vec<f64> {
    let last = fp.len() - 1;
    x.iter()
        .map(|&xv| {
            if xv.is_nan() {
                return xv;
            }
            if xv < 0.0 {
                return fp[0];
            }
            if xv > last as f64 {
                return fp[last];
            }
            let j = (xv.floor() as usize).min(last);
            if j == last || j as f64 == xv {
                return fp[j];
            }
            let slope = (fp[j + 1] - fp[j]) / 1.0;
            slope * (xv - j as f64) + fp[j]
        })
        .collect()
}

/// Ports `EulerDiscreteScheduler._sigma_to_t`: the fractional training timestep of one sigma, by interpolating
/// `log_sigma` between the two neighbouring training log-sigmas (float64, with the float32 table differences numpy
/// computes).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // low_idx = cumsum(dists >= 0).argmax().clip(max=len-2): the last index with log_sigma >= log_sigmas[i], or 0.
    let low_idx = log_sigmas.iter().rposition(|&ls| log_sigma - ls as f64 >= 0.0).unwrap_or(0);
    let low_idx = low_idx.min(log_sigmas.len().saturating_sub(2));
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    // (low - log_sigma) is float64; (low - high) is a float32 array difference.
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Ports `_convert_to_karras` (k-diffusion `get_sigmas_karras`, rho = 7), float64.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// Ports `_convert_to_exponential`: `exp(linspace(log(sigma_max), log(sigma_min), n))`, float64.
pub(crate) fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), n).into_iter().map(f64::exp).collect()
}

/// The Karras or exponential schedule of `n` sigmas from `sigma_max` down to `sigma_min` (`conversion` is not
/// [`SigmaConversion::None`]; that case is the exponential one, never reached by callers).
pub(crate) fn convert_sigmas(conversion: SigmaConversion, sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    match conversion {
        SigmaConversion::Karras => karras_sigmas(sigma_min, sigma_max, n),
        _ => exponential_sigmas(sigma_min, sigma_max, n),
    }
}

/// `np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas])`, optionally `.round()`ed.
pub(crate) fn sigmas_to_timesteps(sigmas: &[f64], log_sigmas: &[f32], round: bool) -> Vec<f64> {
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

// --- k-diffusion family helpers ---
// Shared by the EulerAncestral, LMS, Heun, KDPM2 and KDPM2Ancestral ports (schedulers-k); DDIM uses the step checks.

/// What one k-diffusion-family class (EulerAncestral, LMS, Heun, KDPM2, KDPM2Ancestral) reads from a config, and its
/// diffusers 0.42.1 `__init__` defaults. Keys a class does not take are ignored, as `from_config` ignores them.
pub(crate) struct KClassSpec {
    /// The diffusers class name, for error messages.
    pub class: &'static str,
    /// Default `beta_start`.
    pub beta_start: f64,
    /// Default `beta_end`.
    pub beta_end: f64,
    /// Accepts `beta_schedule = "exp"` (`betas_for_alpha_bar(alpha_transform_type="exp")`; Heun only).
    pub exp_schedule: bool,
    /// Reads `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas`.
    pub sigma_conversions: bool,
    /// Reads `rescale_betas_zero_snr`.
    pub zero_snr: bool,
    /// `step` implements `prediction_type = "sample"` (diffusers raises NotImplementedError otherwise).
    pub sample_prediction: bool,
}

/// The `__init__` arguments LMS, KDPM2 and KDPM2Ancestral share (diffusers' order); Euler a and Heun list theirs.
pub(crate) const K_SIGMA_KEYS: &[&str] = &[
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

impl KClassSpec {
    /// diffusers' `__init__` defaults of the class's keys: the shared ones (with the class's `beta_start` and
    /// `beta_end`), the sigma-conversion flags when it reads them and `rescale_betas_zero_snr` when it has it.
    pub(crate) fn defaults(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = json_object(serde_json::json!({
            "num_train_timesteps": 1000, "beta_start": self.beta_start, "beta_end": self.beta_end,
            "beta_schedule": "linear", "trained_betas": null, "prediction_type": "epsilon",
            "timestep_spacing": "linspace", "steps_offset": 0
        }));
        if self.sigma_conversions {
            for key in ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"] {
                m.insert(key.into(), false.into());
            }
        }
        if self.zero_snr {
            m.insert("rescale_betas_zero_snr".into(), false.into());
        }
        m
    }
}

/// The validated options shared by the k-diffusion family, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KSigmaConfig {
    /// `num_train_timesteps`.
    pub num_train_timesteps: usize,
    /// The training betas.
    pub betas: BetaSchedule,
    /// `prediction_type`.
    pub prediction_type: PredictionType,
    /// `timestep_spacing`.
    pub spacing: TimestepSpacing,
    /// `steps_offset`.
    pub steps_offset: usize,
    /// Karras / exponential sigmas.
    pub conversion: SigmaConversion,
    /// `rescale_betas_zero_snr`.
    pub rescale_betas_zero_snr: bool,
}

impl KSigmaConfig {
    /// Reads the keys `spec` says the class takes, applies its defaults, and rejects what diffusers rejects (or what
    /// sdxlrt cannot reproduce exactly: beta sigmas need scipy's `beta.ppf`).
    pub(crate) fn parse(c: &super::SchedulerConfig, spec: &KClassSpec) -> Result<Self> {
        let (num_train_timesteps, betas) = parse_training(c, spec.beta_start, spec.beta_end, spec.exp_schedule)?;
        let prediction = c.prediction_type.as_deref().unwrap_or("epsilon");
        let prediction_type = parse_prediction_type(prediction)?;
        // These classes compare against "sample" only; the legacy "original_sample" raises in their `step`.
        if prediction == "original_sample" || (prediction_type == PredictionType::Sample && !spec.sample_prediction) {
            return Err(Error::field(
                option_field("prediction_type"),
                format!("{} supports only epsilon and v_prediction in diffusers, not `{prediction}`", spec.class),
            ));
        }
        let spacing = parse_spacing(c.timestep_spacing.as_deref().unwrap_or("linspace"))?;
        let conversion = if spec.sigma_conversions { parse_sigma_conversion(c)? } else { SigmaConversion::None };
        Ok(KSigmaConfig {
            num_train_timesteps,
            betas,
            prediction_type,
            spacing,
            steps_offset: c.steps_offset.unwrap_or(0),
            conversion,
            rescale_betas_zero_snr: spec.zero_snr && c.rescale_betas_zero_snr.unwrap_or(false),
        })
    }

    /// Ports `__init__` (the training tables) and the grid part every k-diffusion `set_timesteps` shares: spaced
    /// timesteps, `np.interp` sigmas, then the optional Karras/exponential conversion (from the interpolated end
    /// points; these classes have no `sigma_min`/`sigma_max` config) with `_sigma_to_t` timesteps, rounded when
    /// `round_karras` (KDPM2's Karras branch). The timesteps and sigmas are float32, and the final sigma 0 is
    /// appended (`np.concatenate([sigmas, [0.0]]).astype(np.float32)`).
    pub(crate) fn grid(&self, n: usize, round_karras: bool) -> Result<KGrid> {
        let n = check_steps(n)?;
        let tables = TrainingTables::new(&self.betas, self.num_train_timesteps, self.rescale_betas_zero_snr);
        let mut timesteps: Vec<f64> = spaced_timesteps(self.spacing, self.num_train_timesteps, n, self.steps_offset)
            .into_iter()
            .map(f64::from)
            .collect();
        let mut sigmas = tables.interp_sigmas(&timesteps);
        if self.conversion != SigmaConversion::None {
            let (lo, hi) = match (sigmas.last(), sigmas.first()) {
                (Some(&lo), Some(&hi)) => (lo, hi),
                _ => return Err(Error::Internal("empty sigma grid".into())),
            };
            sigmas = convert_sigmas(self.conversion, lo, hi, n);
            let round = round_karras && self.conversion == SigmaConversion::Karras;
            timesteps = sigmas_to_timesteps(&sigmas, &tables.log_sigmas, round);
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        Ok(KGrid { tables, timesteps: timesteps.into_iter().map(|t| t as f32).collect(), sigmas })
    }
}

/// What [`KSigmaConfig::grid`] builds.
pub(crate) struct KGrid {
    /// The training tables.
    pub tables: TrainingTables,
    /// The `n` inference timesteps (float32).
    pub timesteps: Vec<f32>,
    /// The `n` inference sigmas plus the final 0 (float32).
    pub sigmas: Vec<f32>,
}

/// Parses `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas` (at most one; beta sigmas need scipy's
/// `beta.ppf`, which sdxlrt does not reproduce exactly: [`Error::Unsupported`]).
pub(crate) fn parse_sigma_conversion(c: &super::SchedulerConfig) -> Result<SigmaConversion> {
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
    Ok(if karras {
        SigmaConversion::Karras
    } else if exponential {
        SigmaConversion::Exponential
    } else {
        SigmaConversion::None
    })
}

/// Ports `betas_for_alpha_bar(n, alpha_transform_type="exp")`: `ᾱ(t) = exp(-12 t)`, Python floats, capped at 0.999.
pub(crate) fn exp_alpha_bar_betas(num_train_timesteps: usize) -> Vec<f64> {
    let alpha_bar = |t: f64| (t * -12.0).exp();
    let n = num_train_timesteps as f64;
    (0..num_train_timesteps)
        .map(|i| {
            let (t1, t2) = (i as f64 / n, (i + 1) as f64 / n);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
        })
        .collect()
}

/// `init_noise_sigma` of the sigma schedulers: `sigmas.max()` for linspace/trailing spacing, else
/// `(max² + 1) ** 0.5` (float32, NaN-propagating like `torch.max`).
pub(crate) fn k_init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f32 {
    let max =
        sigmas
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, |m, s| if s.is_nan() || m.is_nan() { f32::NAN } else { m.max(s) });
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// Ports `_sigma_to_t` as KDPM2/KDPM2Ancestral call it on their interpolated sigmas: a float32 torch scalar against
/// the float32 torch `log_sigmas`, so every operation is float32 (unlike [`sigma_to_t`], which is numpy float64).
pub(crate) fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f32 {
    // np.maximum(sigma, 1e-10) keeps float32 (NEP 50); NaN propagates.
    let clamped = if sigma.is_nan() { sigma } else { sigma.max(1e-10f32) };
    let log_sigma = ln_f32(clamped);
    let low_idx = log_sigmas.iter().rposition(|&ls| log_sigma - ls >= 0.0).unwrap_or(0);
    let low_idx = low_idx.min(log_sigmas.len().saturating_sub(2));
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = (low - log_sigma) / (low - high);
    let w = if w.is_nan() { w } else { w.clamp(0.0, 1.0) };
    (1.0 - w) * low_idx as f32 + w * high_idx as f32
}

/// `torch.lerp(start, end, weight)` for float32 (ATen `lerp`: `start + w (end - start)` for `|w| < 0.5`, else
/// `end - (end - start)(1 - w)`, evaluated as one FMA like the vectorized kernel).
pub(crate) fn torch_lerp_f32(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        weight.mul_add(end - start, start)
    } else {
        (weight - 1.0).mul_add(end - start, end)
    }
}

/// Repeats the inner entries of a per-step table the way the two-evaluation schedulers interleave it:
/// `cat([x[:1], x[1:].repeat_interleave(2), x[-1:]])` (`keep_last`) or `cat([x[:1], x[1:].repeat_interleave(2)])`.
pub(crate) fn interleave_repeat<T: Copy>(x: &[T], keep_last: bool) -> Vec<T> {
    let mut out = Vec::with_capacity(2 * x.len() + 1);
    if let Some(&first) = x.first() {
        out.push(first);
    }
    for &v in x.iter().skip(1) {
        out.push(v);
        out.push(v);
    }
    if keep_last {
        if let Some(&last) = x.last() {
            out.push(last);
        }
    }
    out
}

/// The inference grid of a sigma scheduler (Euler, Euler a, LMS, Heun, KDPM2, KDPM2 a): what `set_timesteps` leaves
/// (`timesteps`, `sigmas`, `init_noise_sigma`) and what `set_begin_index` sets. The two-evaluation classes keep
/// diffusers' interleaved tables here (`2n − 1` timesteps; `2n` sigmas for Heun, `2n + 2` for KDPM2).
#[derive(Debug, Clone)]
pub(crate) struct SigmaGrid {
    /// One entry per UNet evaluation (float32).
    pub timesteps: Vec<f32>,
    /// The noise levels (float32), ending with the final sigma.
    pub sigmas: Vec<f32>,
    /// `init_noise_sigma` (see [`k_init_noise_sigma`]).
    pub init_noise_sigma: f32,
    /// `set_begin_index` (img2img).
    pub begin_index: Option<usize>,
}

impl SigmaGrid {
    /// The grid with `init_noise_sigma` computed from `sigmas` for `spacing`.
    pub(crate) fn new(timesteps: Vec<f32>, sigmas: Vec<f32>, spacing: TimestepSpacing) -> Self {
        let init_noise_sigma = k_init_noise_sigma(&sigmas, spacing);
        SigmaGrid { timesteps, sigmas, init_noise_sigma, begin_index: None }
    }

    /// [`check_step_call`] for this grid.
    pub(crate) fn check_step(&self, class: &str, index: usize, model_output: &[usize], sample: &[usize]) -> Result<()> {
        check_step_call(class, index, self.timesteps.len(), self.begin_index, model_output, sample)
    }
}

/// The [`super::Scheduler`] methods every sigma scheduler implements the same way from its `grid` ([`SigmaGrid`])
/// field. `1`: one evaluation per step, input scaled by `(σ² + 1)^½` (Euler, Euler a, LMS); `2`: two evaluations per
/// step (Heun, KDPM2, KDPM2 a, which scale their inputs themselves).
macro_rules! sigma_grid_methods {
    (@grid) => {
        fn timesteps(&self) -> &[f32] {
            &self.grid.timesteps
        }

        fn sigmas(&self) -> &[f32] {
            &self.grid.sigmas
        }

        fn init_noise_sigma(&self) -> f32 {
            self.grid.init_noise_sigma
        }

        fn set_begin_index(&mut self, begin_index: usize) {
            self.grid.begin_index = Some(begin_index);
        }

        /// `original + noise · σ` at `sigmas[index]`.
        fn add_noise(
            &self,
            original: ndarray::ArrayViewD<'_, f32>,
            noise: ndarray::ArrayViewD<'_, f32>,
            index: usize,
        ) -> ndarray::ArrayD<f32> {
            super::common::noised(original, noise, 1.0, self.grid.sigmas[index])
        }
    };
    (1) => {
        sigma_grid_methods!(@grid);

        fn order(&self) -> usize {
            1
        }

        fn scale_model_input(&mut self, sample: ndarray::ArrayViewD<'_, f32>, index: usize) -> ndarray::ArrayD<f32> {
            super::common::k_scale_input(sample, self.grid.sigmas[index])
        }

        fn completed_steps(&self, index: usize) -> usize {
            index + 1
        }
    };
    (2) => {
        sigma_grid_methods!(@grid);

        fn order(&self) -> usize {
            2
        }

        fn completed_steps(&self, index: usize) -> usize {
            super::common::two_eval_completed_steps(index, self.grid.timesteps.len())
        }
    };
}
pub(crate) use sigma_grid_methods;

/// The data prediction x₀ of a scheduler's last `step` (diffusers' `pred_original_sample`, or the DPM-Solver family's
/// converted model output), kept for previews only while [`Denoised::keep`] is on: off, `record` does nothing; on,
/// it copies into one buffer reused from step to step. Never feeds back into a step, so no scheduler's numbers move.
#[derive(Debug, Clone, Default)]
pub(crate) struct Denoised {
    keep: bool,
    last: Option<ndarray::ArrayD<f32>>,
}

impl Denoised {
    /// Start (or stop, dropping the buffer) keeping the estimate.
    pub(crate) fn keep(&mut self, on: bool) {
        self.keep = on;
        if !on {
            self.last = None;
        }
    }

    /// Whether estimates are kept (a scheduler that must compute x₀ just for previews asks first).
    pub(crate) fn wanted(&self) -> bool {
        self.keep
    }

    /// Keep `x0` as the last step's estimate when on.
    pub(crate) fn record(&mut self, x0: &ndarray::ArrayD<f32>) {
        if !self.keep {
            return;
        }
        match &mut self.last {
            Some(last) if last.shape() == x0.shape() => last.assign(x0),
            slot => *slot = Some(x0.clone()),
        }
    }

    /// The last recorded estimate.
    pub(crate) fn get(&self) -> Option<ndarray::ArrayViewD<'_, f32>> {
        self.last.as_ref().map(|a| a.view())
    }
}

/// [`super::Scheduler::keep_denoised`] and [`super::Scheduler::denoised`] over a `denoised: Denoised` field.
macro_rules! denoised_methods {
    () => {
        fn keep_denoised(&mut self, keep: bool) {
            self.denoised.keep(keep);
        }

        fn denoised(&self) -> Option<ndarray::ArrayViewD<'_, f32>> {
            self.denoised.get()
        }
    };
}
pub(crate) use denoised_methods;

/// `a · original + b · noise` element by element in float32: every scheduler's `add_noise` (the sigma schedulers'
/// `original + noise · σ` is `a = 1`, the same bits).
pub(crate) fn noised(
    original: ndarray::ArrayViewD<'_, f32>,
    noise: ndarray::ArrayViewD<'_, f32>,
    a: f32,
    b: f32,
) -> ndarray::ArrayD<f32> {
    ndarray::Zip::from(&original).and(&noise).map_collect(|&x, &e| a * x + b * e)
}

/// Checks a `step` call: `index` in range and not before `begin_index`, equal shapes. Errors are
/// [`Error::Internal`] (pipeline bugs, never user input).
pub(crate) fn check_step_call(
    class: &str,
    index: usize,
    len: usize,
    begin_index: Option<usize>,
    model_output: &[usize],
    sample: &[usize],
) -> Result<()> {
    if index >= len {
        return Err(Error::Internal(format!("{class}: step index {index} out of range for {len} timesteps")));
    }
    if let Some(begin) = begin_index {
        if index < begin {
            return Err(Error::Internal(format!("{class}: step index {index} is before begin_index {begin}")));
        }
    }
    if model_output != sample {
        return Err(Error::Internal(format!(
            "{class}: model output shape {model_output:?} differs from sample shape {sample:?}"
        )));
    }
    Ok(())
}

/// `randn_tensor(shape, generator=…)` through the request's noise source, checking the count.
pub(crate) fn draw_noise(noise: &mut dyn crate::rng::NoiseSource, shape: &[usize]) -> Result<Vec<f32>> {
    let want: usize = shape.iter().product();
    let eps = noise.randn(shape);
    if eps.len() != want {
        return Err(Error::Internal(format!("noise source returned {} values for {want} elements", eps.len())));
    }
    Ok(eps)
}

/// `noise = randn_tensor(shape, generator=…); prev_sample = prev_sample + noise * scale` (the ancestral noise of
/// Euler a, KDPM2 a and DDIM with `eta > 0`), float32.
pub(crate) fn add_scaled_noise(
    prev: &mut ndarray::ArrayD<f32>,
    noise: &mut dyn crate::rng::NoiseSource,
    scale: f32,
) -> Result<()> {
    let eps = draw_noise(noise, prev.shape())?;
    // `prev` is a fresh standard-layout array, so its iteration order is the noise's row-major order.
    prev.iter_mut().zip(eps).for_each(|(x, e)| *x += e * scale);
    Ok(())
}

/// "Convert to an ODE derivative": `(sample − x₀) / σ` (float32).
pub(crate) fn k_derivative(
    sample: ndarray::ArrayViewD<'_, f32>,
    pred_original: &ndarray::ArrayD<f32>,
    sigma: f32,
) -> ndarray::ArrayD<f32> {
    let mut derivative = sample.to_owned();
    ndarray::Zip::from(&mut derivative).and(pred_original).for_each(|d, &x0| *d = (*d - x0) / sigma);
    derivative
}

/// Step 2 of the sigma schedulers: "Convert to an ODE derivative" `(sample − x₀) / σ` and take the Euler step
/// `base + derivative · dt` (`base` is the sample itself, or the sample saved at a two-evaluation step's start).
pub(crate) fn k_euler_update(
    mut base: ndarray::ArrayD<f32>,
    sample: ndarray::ArrayViewD<'_, f32>,
    pred_original: &ndarray::ArrayD<f32>,
    sigma: f32,
    dt: f32,
) -> ndarray::ArrayD<f32> {
    ndarray::Zip::from(&mut base).and(&sample).and(pred_original).for_each(|x, &s, &x0| {
        let derivative = (s - x0) / sigma;
        *x += derivative * dt;
    });
    base
}

/// `sample / (σ² + 1) ** 0.5` (float32): `scale_model_input` of the sigma schedulers.
pub(crate) fn k_scale_input(sample: ndarray::ArrayViewD<'_, f32>, sigma: f32) -> ndarray::ArrayD<f32> {
    let denom = (sigma * sigma + 1.0).sqrt();
    sample.mapv(|x| x / denom)
}

/// Step 1 of the sigma schedulers: the predicted original sample x₀ from the model output at noise level `sigma`
/// (`epsilon`: `x − σ ε`; `v_prediction`: `v · (−σ / (σ² + 1)^½) + x / (σ² + 1)`; `sample`: the output), float32.
pub(crate) fn k_pred_original(
    prediction_type: PredictionType,
    sigma: f32,
    model_output: ndarray::ArrayViewD<'_, f32>,
    sample: ndarray::ArrayViewD<'_, f32>,
) -> ndarray::ArrayD<f32> {
    k_pred_original_churned(prediction_type, sigma, sigma, model_output, sample)
}

/// [`k_pred_original`] as `EulerDiscreteScheduler.step` writes it with churn: `epsilon` uses the raised noise level
/// `sigma_hat` (`x − σ̂ ε`), `v_prediction` the grid's `sigma`.
pub(crate) fn k_pred_original_churned(
    prediction_type: PredictionType,
    sigma_hat: f32,
    sigma: f32,
    model_output: ndarray::ArrayViewD<'_, f32>,
    sample: ndarray::ArrayViewD<'_, f32>,
) -> ndarray::ArrayD<f32> {
    match prediction_type {
        PredictionType::Epsilon => {
            let mut p = sample.to_owned();
            ndarray::Zip::from(&mut p).and(&model_output).for_each(|p, &m| *p -= sigma_hat * m);
            p
        }
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            let c_skip_div = sigma * sigma + 1.0;
            let mut p = model_output.to_owned();
            ndarray::Zip::from(&mut p).and(&sample).for_each(|p, &x| *p = *p * c_out + x / c_skip_div);
            p
        }
        PredictionType::Sample => model_output.to_owned(),
    }
}

/// `completed_steps` of the two-evaluation schedulers (Heun, KDPM2, KDPM2Ancestral), whose `timesteps` are
/// `[t0, t1, t1', …]` (`2n − 1` entries): a step completes after every second evaluation, and the last evaluation
/// (a lone first-order step) completes the last step — the evaluations after which diffusers' progress bar ticks.
pub(crate) fn two_eval_completed_steps(index: usize, num_evaluations: usize) -> usize {
    if index + 1 >= num_evaluations {
        num_evaluations.div_ceil(2)
    } else {
        index.div_ceil(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_float32_timesteps() {
        // np.linspace(0, 999, 4, dtype=np.float32)[::-1]
        assert_eq!(spaced_timesteps(TimestepSpacing::Linspace, 1000, 4, 0), vec![999.0, 666.0, 333.0, 0.0]);
        // np.linspace(0, 999, 7) has fractional values: 166.5, 333, 499.5 …
        assert_eq!(
            spaced_timesteps(TimestepSpacing::Linspace, 1000, 7, 0),
            vec![999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0]
        );
    }

    #[test]
    fn leading_and_trailing_spacing_match_table_2() {
        assert_eq!(spaced_timesteps(TimestepSpacing::Leading, 1000, 5, 1), vec![801.0, 601.0, 401.0, 201.0, 1.0]);
        // arange(1000, 0, -333.33).round() - 1 = [999, 666, 332]
        assert_eq!(spaced_timesteps(TimestepSpacing::Trailing, 1000, 3, 0), vec![999.0, 666.0, 332.0]);
        // round() is half-to-even: 1000/8 = 125 → 875, 750, 625, …
        assert_eq!(spaced_timesteps(TimestepSpacing::Trailing, 1000, 8, 0)[1], 874.0);
    }

    #[test]
    fn trailing_spacing_matches_numpy_arange_for_300_step_counts() {
        // numpy: concatenate((arange(1000, 0, -1000/n)).round().astype(float32) - 1 for n in 1..=300); count, sum and
        // sum of squares in float64. numpy's float arange gives n+1 values for some n (61, 103, 121, …) and so does
        // diffusers; we follow.
        let all: Vec<f64> =
            (1..=300).flat_map(|n| spaced_timesteps(TimestepSpacing::Trailing, 1000, n, 0)).map(f64::from).collect();
        assert_eq!(all.len(), 45162);
        assert_eq!(all.iter().sum::<f64>(), 22679866.0);
        assert_eq!(all.iter().map(|v| v * v).sum::<f64>(), 15155691790.0);
        assert_eq!(spaced_timesteps(TimestepSpacing::Trailing, 1000, 61, 0).len(), 62);
    }

    #[test]
    fn interp_clamps_and_hits_knots_exactly() {
        let fp = [1.0, 3.0, 7.0];
        assert_eq!(
            np_interp_index(&[-1.0, 0.0, 0.5, 1.0, 1.25, 2.0, 5.0], &fp),
            vec![1.0, 1.0, 2.0, 3.0, 4.0, 7.0, 7.0]
        );
    }

    #[test]
    fn torch_linspace_endpoints_are_exact() {
        let v = torch_linspace_f32(0.0001, 0.02, 1000);
        assert_eq!(v[0], 0.0001f32);
        assert_eq!(v[999], 0.02f32);
        assert_eq!(torch_linspace_f32(2.0, 3.0, 1), vec![2.0]);
    }

    #[test]
    fn sigma_to_t_inverts_training_sigmas() {
        let tables = TrainingTables::new(&BetaSchedule::ScaledLinear { start: 0.00085, end: 0.012 }, 1000, false);
        for t in [0usize, 1, 500, 998, 999] {
            let got = sigma_to_t(tables.sigmas[t] as f64, &tables.log_sigmas);
            assert!((got - t as f64).abs() < 1e-3, "t={t} got {got}");
        }
        // Below the smallest training sigma clamps to 0, above the largest to T-1.
        assert_eq!(sigma_to_t(1e-6, &tables.log_sigmas), 0.0);
        assert_eq!(sigma_to_t(1e6, &tables.log_sigmas), 999.0);
    }

    #[test]
    fn training_tables_match_torch_bit_for_bit() {
        let g = super::super::testutil::Goldens::load("euler");
        let scaled = BetaSchedule::ScaledLinear { start: 0.00085, end: 0.012 };
        let cases = [
            ("scaled_linear", scaled.clone(), 1000, false),
            ("linear_1100", BetaSchedule::Linear { start: 0.0001, end: 0.02 }, 1100, false),
            ("squaredcos_cap_v2", BetaSchedule::SquaredCosCapV2, 1000, false),
            ("scaled_linear_zero_snr", scaled, 1000, true),
        ];
        for (name, schedule, n, zero_snr) in cases {
            let (want_betas, _) = g.tensor(&format!("tables/{name}/betas"));
            let (want_ac, _) = g.tensor(&format!("tables/{name}/alphas_cumprod"));
            let tables = TrainingTables::new(&schedule, n, zero_snr);
            if zero_snr {
                // Goes through torch's float32 sqrt, which is not correctly rounded (±1 ulp in ~15% of inputs);
                // the ratio ᾱ[t]/ᾱ[t-1] of tiny values near T amplifies that to ~2.5e-4 in the last betas (the
                // same emulation with torch's sqrt values is bit-exact, checked in Python).
                let betas = rescale_zero_terminal_snr(&betas_f32(&schedule, n));
                super::super::testutil::assert_close(name, &betas, &want_betas, 5e-4, 1e-9);
                super::super::testutil::assert_close(name, &tables.alphas_cumprod, &want_ac, 2e-5, 1e-12);
            } else {
                assert_eq!(betas_f32(&schedule, n), want_betas, "{name}: betas");
                assert_eq!(tables.alphas_cumprod, want_ac, "{name}: alphas_cumprod");
            }
        }
    }

    #[test]
    fn karras_and_exponential_hit_both_ends() {
        let k = karras_sigmas(0.03, 14.6, 5);
        assert!((k[0] - 14.6).abs() < 1e-12 && (k[4] - 0.03).abs() < 1e-12, "{k:?}");
        let e = exponential_sigmas(0.03, 14.6, 5);
        assert!((e[0] - 14.6).abs() < 1e-12 && (e[4] - 0.03).abs() < 1e-12, "{e:?}");
    }

    #[test]
    fn rescaled_betas_reach_zero_terminal_snr() {
        let betas = betas_f32(&BetaSchedule::ScaledLinear { start: 0.00085, end: 0.012 }, 1000);
        let rescaled = rescale_zero_terminal_snr(&betas);
        assert_eq!(rescaled.len(), 1000);
        assert_eq!(*rescaled.last().expect("non-empty"), 1.0);
        assert!((rescaled[0] - betas[0]).abs() < 1e-6);
    }
}
