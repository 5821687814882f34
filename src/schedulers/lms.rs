//! `LMSDiscreteScheduler`: the linear multistep method of k-diffusion's `sample_lms` (Karras et al. 2022,
//! <https://arxiv.org/abs/2206.00364>): each step integrates the Lagrange polynomial through the last (up to four)
//! ODE derivatives over `[σ_i, σ_{i+1}]`.
//!
//! Layer: schedulers (pure math). Ports `diffusers/schedulers/scheduling_lms_discrete.py` of diffusers 0.42.1:
//! `__init__`, `set_timesteps`, `scale_model_input`, `get_lms_coefficient` and `step`. diffusers integrates the
//! coefficients with `scipy.integrate.quad(lms_derivative, σ_t, σ_{t+1}, epsrel=1e-4)`; [`quad`] ports QUADPACK's
//! adaptive 21-point Gauss–Kronrod rule (`dqagse`/`dqk21`), and the integrand is evaluated in float32 as diffusers
//! evaluates it on its float32 sigma tensor.

use std::collections::VecDeque;

use ndarray::{ArrayD, ArrayViewD, Zip};

use super::common::{
    denoised_methods, k_derivative, k_pred_original, sigma_grid_methods, Denoised, KClassSpec, KSigmaConfig, SigmaGrid,
    K_SIGMA_KEYS,
};
use super::{Scheduler, SchedulerConfig};
use crate::error::Result;
use crate::rng::NoiseSource;

/// The options `LMSDiscreteScheduler` accepts: its diffusers `__init__` arguments.
pub(crate) const KEYS: &[&str] = K_SIGMA_KEYS;

/// diffusers' defaults for [`KEYS`].
pub(crate) fn defaults() -> serde_json::Map<String, serde_json::Value> {
    SPEC.defaults()
}

const SPEC: KClassSpec = KClassSpec {
    class: "LMSDiscreteScheduler",
    beta_start: 0.0001,
    beta_end: 0.02,
    exp_schedule: false,
    sigma_conversions: true,
    zero_snr: false,
    sample_prediction: true,
};

/// The multistep order diffusers' `step(..., order=4)` uses (the pipelines never pass another).
const LMS_ORDER: usize = 4;

/// Validated LMS options, diffusers defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LmsConfig {
    k: KSigmaConfig,
}

impl LmsConfig {
    /// Applies diffusers' class defaults to `c` and rejects what diffusers rejects.
    pub(crate) fn new(c: &SchedulerConfig) -> Result<Self> {
        Ok(LmsConfig { k: KSigmaConfig::parse(c, &SPEC)? })
    }

    /// `LMSDiscreteScheduler(**config).set_timesteps(num_inference_steps)`.
    pub(crate) fn build(&self, num_inference_steps: usize) -> Result<LmsDiscreteScheduler> {
        let grid = self.k.grid(num_inference_steps, false)?;
        Ok(LmsDiscreteScheduler {
            config: self.clone(),
            grid: SigmaGrid::new(grid.timesteps, grid.sigmas, self.k.spacing),
            derivatives: VecDeque::with_capacity(LMS_ORDER + 1),
            denoised: Denoised::default(),
        })
    }
}

/// A built LMS scheduler for one request: the grid plus the last `LMS_ORDER` (4) derivatives.
#[derive(Debug, Clone)]
pub struct LmsDiscreteScheduler {
    config: LmsConfig,
    grid: SigmaGrid,
    /// `self.derivatives`, oldest first.
    derivatives: VecDeque<ArrayD<f32>>,
    denoised: Denoised,
}

impl LmsDiscreteScheduler {
    /// Ports `get_lms_coefficient(order, t, current_order)`: `∫_{σ_t}^{σ_{t+1}} Π_{k≠j} (τ − σ_{t−k}) / (σ_{t−j} −
    /// σ_{t−k}) dτ`, the integrand in float32 (diffusers' `tau - self.sigmas[t - k]` is a float32 tensor op).
    fn lms_coefficient(&self, order: usize, t: usize, current_order: usize) -> f64 {
        let s = &self.grid.sigmas;
        let integrand = |tau: f64| -> f64 {
            if order <= 1 {
                // The product over no factors stays the Python float 1.0.
                return 1.0;
            }
            let tau = tau as f32;
            let mut prod: Option<f32> = None;
            for k in 0..order {
                if k == current_order {
                    continue;
                }
                let factor = (tau - s[t - k]) / (s[t - current_order] - s[t - k]);
                prod = Some(prod.map_or(factor, |p| p * factor));
            }
            prod.map_or(1.0, f64::from)
        };
        quad(integrand, s[t] as f64, s[t + 1] as f64, 1.49e-8, 1e-4)
    }
}

impl Scheduler for LmsDiscreteScheduler {
    sigma_grid_methods!(1);
    denoised_methods!();

    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        _noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        self.grid.check_step(SPEC.class, index, model_output.shape(), sample.shape())?;
        let sigma = self.grid.sigmas[index];

        // 1. compute predicted original sample (x_0) from sigma-scaled predicted noise
        let pred_original = k_pred_original(self.config.k.prediction_type, sigma, model_output.view(), sample.view());
        self.denoised.record(&pred_original);

        // 2. Convert to an ODE derivative and keep the last `order` of them.
        let derivative = k_derivative(sample.view(), &pred_original, sigma);
        self.derivatives.push_back(derivative);
        if self.derivatives.len() > LMS_ORDER {
            self.derivatives.pop_front();
        }

        // 3. Compute the linear multistep coefficients (order = min(step_index + 1, 4)).
        let order = (index + 1).min(LMS_ORDER);
        let coeffs: Vec<f64> = (0..order).map(|j| self.lms_coefficient(order, index, j)).collect();

        // 4. Compute the previous sample: sample + sum(coeff * derivative for coeff, derivative in
        // zip(lms_coeffs, reversed(self.derivatives))) — each coefficient rounded to float32 as torch does when
        // multiplying a float32 tensor by a Python float, the sum accumulated left to right.
        let mut acc: Option<ArrayD<f32>> = None;
        for (&coeff, derivative) in coeffs.iter().zip(self.derivatives.iter().rev()) {
            let c = coeff as f32;
            acc = Some(match acc {
                None => derivative.mapv(|d| c * d),
                Some(mut a) => {
                    Zip::from(&mut a).and(derivative).for_each(|a, &d| *a += c * d);
                    a
                }
            });
        }
        let mut prev = sample.to_owned();
        if let Some(acc) = acc {
            Zip::from(&mut prev).and(&acc).for_each(|x, &a| *x += a);
        }
        Ok(prev)
    }
}

/// QUADPACK `dqk21` abscissae (Kronrod points, descending; index 1, 3, 5, 7, 9 are the Gauss points).
// QUADPACK's published 33-digit values; Rust rounds them to the nearest f64, as the Fortran `d0` literals do.
#[allow(clippy::excessive_precision)]
const XGK: [f64; 11] = [
    0.995_657_163_025_808_080_735_527_280_689_003,
    0.973_906_528_517_171_720_077_964_012_084_452,
    0.930_157_491_355_708_226_001_207_180_059_508,
    0.865_063_366_688_984_510_732_096_688_423_493,
    0.780_817_726_586_416_897_063_717_578_345_042,
    0.679_409_568_299_024_406_234_327_365_114_874,
    0.562_757_134_668_604_683_339_000_099_272_694,
    0.433_395_394_129_247_190_799_265_943_165_784,
    0.294_392_862_701_460_198_131_126_603_103_866,
    0.148_874_338_981_631_210_884_826_001_129_720,
    0.0,
];
/// QUADPACK `dqk21` Kronrod weights.
// QUADPACK's published 33-digit values; Rust rounds them to the nearest f64, as the Fortran `d0` literals do.
#[allow(clippy::excessive_precision)]
const WGK: [f64; 11] = [
    0.011_694_638_867_371_874_278_064_396_062_192,
    0.032_558_162_307_964_727_478_818_972_459_390,
    0.054_755_896_574_351_996_031_381_300_244_580,
    0.075_039_674_810_919_952_767_043_140_916_190,
    0.093_125_454_583_697_605_535_065_465_083_366,
    0.109_387_158_802_297_641_899_210_590_325_805,
    0.123_491_976_262_065_851_077_589_614_848_735,
    0.134_709_217_311_473_325_928_054_001_771_707,
    0.142_775_938_577_060_080_797_094_273_138_717,
    0.147_739_104_901_338_491_374_841_515_972_068,
    0.149_445_554_002_916_905_664_936_468_389_821,
];
/// QUADPACK `dqk21` Gauss weights (10-point rule).
// QUADPACK's published 33-digit values; Rust rounds them to the nearest f64, as the Fortran `d0` literals do.
#[allow(clippy::excessive_precision)]
const WG: [f64; 5] = [
    0.066_671_344_308_688_137_593_568_809_893_332,
    0.149_451_349_150_580_593_145_776_339_657_697,
    0.219_086_362_515_982_043_995_534_934_228_163,
    0.269_266_719_309_996_355_091_226_921_569_469,
    0.295_524_224_714_752_870_173_892_994_651_338,
];

/// One 21-point Gauss–Kronrod estimate (QUADPACK `dqk21`): `(result, abserr, resabs, resasc)`.
fn qk21(f: &impl Fn(f64) -> f64, a: f64, b: f64) -> (f64, f64, f64, f64) {
    let epmach = f64::EPSILON;
    let uflow = f64::MIN_POSITIVE;
    let centr = 0.5 * (a + b);
    let hlgth = 0.5 * (b - a);
    let dhlgth = hlgth.abs();
    let mut fv1 = [0.0f64; 10];
    let mut fv2 = [0.0f64; 10];
    let mut resg = 0.0;
    let fc = f(centr);
    let mut resk = WGK[10] * fc;
    let mut resabs = resk.abs();
    for (j, &wg) in WG.iter().enumerate() {
        let jtw = 2 * j + 1;
        let absc = hlgth * XGK[jtw];
        let (fval1, fval2) = (f(centr - absc), f(centr + absc));
        fv1[jtw] = fval1;
        fv2[jtw] = fval2;
        let fsum = fval1 + fval2;
        resg += wg * fsum;
        resk += WGK[jtw] * fsum;
        resabs += WGK[jtw] * (fval1.abs() + fval2.abs());
    }
    for j in 0..5 {
        let jtwm1 = 2 * j;
        let absc = hlgth * XGK[jtwm1];
        let (fval1, fval2) = (f(centr - absc), f(centr + absc));
        fv1[jtwm1] = fval1;
        fv2[jtwm1] = fval2;
        let fsum = fval1 + fval2;
        resk += WGK[jtwm1] * fsum;
        resabs += WGK[jtwm1] * (fval1.abs() + fval2.abs());
    }
    let reskh = resk * 0.5;
    let mut resasc = WGK[10] * (fc - reskh).abs();
    for ((&w, &v1), &v2) in WGK.iter().zip(&fv1).zip(&fv2) {
        resasc += w * ((v1 - reskh).abs() + (v2 - reskh).abs());
    }
    let result = resk * hlgth;
    resabs *= dhlgth;
    resasc *= dhlgth;
    let mut abserr = ((resk - resg) * hlgth).abs();
    if resasc != 0.0 && abserr != 0.0 {
        abserr = resasc * (200.0 * abserr / resasc).powf(1.5).min(1.0);
    }
    if resabs > uflow / (50.0 * epmach) {
        abserr = abserr.max((epmach * 50.0) * resabs);
    }
    (result, abserr, resabs, resasc)
}

/// Adaptive Gauss–Kronrod quadrature of `f` over `[a, b]` (the role of `scipy.integrate.quad`, QUADPACK `dqagse`):
/// the first 21-point estimate is returned when its error estimate meets `max(epsabs, epsrel·|result|)` (always the
/// case for LMS's polynomial integrands); otherwise the interval with the largest error is bisected, up to 50
/// intervals (scipy's `limit`). No epsilon-algorithm extrapolation: the integrands here are smooth.
fn quad(f: impl Fn(f64) -> f64, a: f64, b: f64, epsabs: f64, epsrel: f64) -> f64 {
    const LIMIT: usize = 50;
    let (result, abserr, defabs, resabs) = qk21(&f, a, b);
    let errbnd = epsabs.max(epsrel * result.abs());
    let roundoff = abserr <= 100.0 * f64::EPSILON * defabs && abserr > errbnd;
    if roundoff || (abserr <= errbnd && abserr != resabs) || abserr == 0.0 {
        return result;
    }
    // (a, b, result, error) per interval.
    let mut parts = vec![(a, b, result, abserr)];
    while parts.len() < LIMIT {
        let total: f64 = parts.iter().map(|p| p.2).sum();
        let err: f64 = parts.iter().map(|p| p.3).sum();
        if err <= epsabs.max(epsrel * total.abs()) {
            break;
        }
        let worst = parts.iter().enumerate().max_by(|x, y| x.1 .3.total_cmp(&y.1 .3)).map(|(i, _)| i).unwrap_or(0);
        let (a1, b2, _, _) = parts.swap_remove(worst);
        let mid = 0.5 * (a1 + b2);
        let (r1, e1, _, _) = qk21(&f, a1, mid);
        let (r2, e2, _, _) = qk21(&f, mid, b2);
        parts.push((a1, mid, r1, e1));
        parts.push((mid, b2, r2, e2));
    }
    parts.iter().map(|p| p.2).sum()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testutil::{
        assert_sum_mean, check_goldens, check_k_over_configs, full_loop, k_test_config, K_RULES,
    };
    use super::*;

    const CLASS: &str = "LMSDiscreteScheduler";

    #[test]
    fn matches_diffusers_goldens_for_every_option_set() {
        let r = check_goldens("k_family", Some(CLASS), &K_RULES);
        assert!(r.runs >= 14, "{r:?}");
    }

    #[test]
    fn full_loops_match_diffusers() {
        let cases = [
            (json!({}), (1006.388, 1.31)),
            (json!({"prediction_type": "v_prediction"}), (0.0017, 2.2676e-06)),
            (json!({"use_karras_sigmas": true}), (3812.9927, 4.9648)),
        ];
        for (extra, want) in cases {
            assert_sum_mean(
                &extra.to_string(),
                full_loop(CLASS, &k_test_config(extra.clone()), None, None),
                want,
                1e-3,
            );
        }
    }

    #[test]
    fn check_over_configs() {
        check_k_over_configs(
            CLASS,
            &[
                json!({"prediction_type": "sample"}),
                json!({"use_karras_sigmas": true}),
                json!({"use_exponential_sigmas": true}),
            ],
        );
    }

    #[test]
    fn quad_integrates_polynomials_exactly_and_refines_hard_integrands() {
        // ∫_2^0.5 (3τ² − τ) dτ = [τ³ − τ²/2] = (0.125 − 0.125) − (8 − 2) = −6, backwards like LMS (σ decreases).
        let got = quad(|t| 3.0 * t * t - t, 2.0, 0.5, 1.49e-8, 1e-4);
        assert!((got + 6.0).abs() < 1e-13, "{got}");
        // A constant over [σ_t, σ_{t+1}] is the interval length (LMS's first-order coefficient).
        assert!((quad(|_| 1.0, 14.6, 9.5, 1.49e-8, 1e-4) + 5.1).abs() < 1e-13);
        // A sharp peak needs bisection: ∫_0^1 1/(1e-4 + (x − 0.3)²) dx = 100 (atan(70) + atan(30)).
        let exact = 100.0 * (70.0f64.atan() + 30.0f64.atan());
        let got = quad(|x| 1.0 / (1e-4 + (x - 0.3) * (x - 0.3)), 0.0, 1.0, 1.49e-8, 1e-4);
        assert!(((got - exact) / exact).abs() < 1e-4, "{got} vs {exact}");
    }

    #[test]
    fn coefficients_match_the_lagrange_integrals() {
        // Step 3 (order 4) on the SDXL-like grid: the coefficients of a 4-point Adams–Bashforth rule in σ; their sum
        // is the interval length σ_{t+1} − σ_t (the Lagrange basis sums to 1).
        let r =
            super::super::resolve(Some(CLASS), &k_test_config(json!({})), &super::super::SchedulerConfig::default())
                .expect("resolves");
        let s = LmsConfig::new(&r.config).expect("validates").build(10).expect("builds");
        let sum: f64 = (0..4).map(|j| s.lms_coefficient(4, 5, j)).sum();
        let len = f64::from(s.grid.sigmas[6]) - f64::from(s.grid.sigmas[5]);
        assert!(((sum - len) / len).abs() < 1e-6, "{sum} vs {len}");
    }
}
