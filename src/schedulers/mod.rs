//! Diffusion schedulers, ported from diffusers 0.42.1: pure math, no ONNX Runtime and no I/O.
//!
//! Layer: schedulers (below the pipeline). A request names a scheduler (a diffusers class such as
//! `EulerDiscreteScheduler`, or an A1111/ComfyUI name such as "Euler" or "DPM++ 2M Karras") plus option overrides;
//! [`resolve`] merges that with the model's `scheduler/scheduler_config.json` ([`SchedulerConfig`]) the way
//! diffusers' `from_config` does, and [`ResolvedScheduler::build`] makes a fresh stateful [`Scheduler`] per request.
//! The pipeline drives every scheduler the same way:
//!
//! ```text
//! let resolved = schedulers::resolve(request_name, &overrides, &model_config)?;
//! let mut s = resolved.build(steps)?;
//! latents *= s.init_noise_sigma();             // img2img: s.add_noise(image_latents, noise, begin)
//! for i in begin..s.timesteps().len() {
//!     let x = s.scale_model_input(latents.view(), i);
//!     let eps = unet(x, s.timesteps()[i]);           // CFG etc. in the pipeline
//!     latents = s.step(eps.view(), i, latents.view(), &mut noise)?;
//!     progress(s.completed_steps(i));
//! }
//! ```
//!
//! Numerics: tables are built like diffusers builds them (numpy float64 where diffusers uses numpy, torch float32
//! where it uses torch tensors; see `common.rs`), and each step runs in float32 op by op like torch. Parity with
//! diffusers is tested against goldens written by `onnx/scheduler_goldens.py` (`tests/fixtures/schedulers/`).
//!
//! One file per class behind the same [`Scheduler`] trait, all ten implemented. Goldens:
//! `onnx/scheduler_goldens.py` (Euler) and `onnx/scheduler_goldens_k.py` (Euler a, DDIM, LMS, Heun, KDPM2, KDPM2 a).
//! The DPM-Solver family (DPM++ multistep/singlestep, UniPC) has `onnx/scheduler_goldens_dpm.py`.
//!
//! Shared code lives once: `common.rs` (training tables, spacing, `np.interp`, Karras/exponential sigmas,
//! `_sigma_to_t`, option parsing and the sigma schedulers' grid and step pieces), `dpm_family.rs` (the DPM-Solver/UniPC
//! options, grids, `convert_model_output`, updates and history) and, for tests, `testutil.rs` (golden loading and the
//! golden runner, diffusers' dummy model/sample, scripted noise, the unit-test loops and config sweeps).

mod common;
mod config;
mod ddim;
mod dpm_family;
mod dpmsolver_multistep;
mod dpmsolver_singlestep;
mod euler;
mod euler_ancestral;
mod heun;
mod kdpm2;
mod kdpm2_ancestral;
mod lms;
mod names;
#[cfg(test)]
mod testutil;
mod unipc;

use ndarray::{ArrayD, ArrayViewD};

pub use config::SchedulerConfig;
pub use ddim::DdimScheduler;
pub use dpmsolver_multistep::DpmSolverMultistepScheduler;
pub use dpmsolver_singlestep::DpmSolverSinglestepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;
pub use heun::HeunDiscreteScheduler;
pub use kdpm2::Kdpm2DiscreteScheduler;
pub use kdpm2_ancestral::Kdpm2AncestralDiscreteScheduler;
pub use lms::LmsDiscreteScheduler;
pub use names::{resolve, ResolvedScheduler, SchedulerClass};
pub use unipc::UniPcMultistepScheduler;

use crate::error::Result;
use crate::rng::NoiseSource;

/// One scheduler built for one request: the timestep grid plus whatever per-step state the method needs.
///
/// `index` is always a position in [`Scheduler::timesteps`] (diffusers' `_step_index`), one per UNet evaluation;
/// calls must come in increasing `index` order starting at 0, or at the `begin_index` set for img2img.
pub trait Scheduler: Send {
    /// One entry per UNet evaluation: the exact float32 timesteps diffusers feeds the UNet.
    fn timesteps(&self) -> &[f32];
    /// The noise levels (float32, one more than the steps for sigma schedulers); empty where the scheduler has none.
    fn sigmas(&self) -> &[f32];
    /// The standard deviation to scale the initial Gaussian noise by (`init_noise_sigma`).
    fn init_noise_sigma(&self) -> f32;
    /// The solver order diffusers reports (`scheduler.order`; 2 for Heun/KDPM2, which evaluate twice per step).
    fn order(&self) -> usize;
    /// Scales the UNet input for evaluation `index` (diffusers' `scale_model_input`).
    ///
    /// Panics if `index` is not below `timesteps().len()` (a pipeline bug, never user input).
    fn scale_model_input(&mut self, sample: ArrayViewD<'_, f32>, index: usize) -> ArrayD<f32>;
    /// One solver step after evaluation `index`: returns the next sample (diffusers' `prev_sample`). Stochastic
    /// schedulers draw their noise from `noise` only, in diffusers' order.
    ///
    /// Errors: [`crate::Error::Internal`] for an out-of-range `index`, mismatched shapes or a short noise source.
    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>>;
    /// Sets the first evaluation index (img2img, diffusers' `set_begin_index(t_start * order)`); calls before it
    /// are errors.
    fn set_begin_index(&mut self, begin_index: usize);
    /// Noises `original` to the level of evaluation `index` (diffusers' `add_noise` at the begin index, which is
    /// how img2img starts): `x + σ·ε` for the sigma schedulers, `α_t·x + σ_t·ε` for the DPM-Solver family,
    /// `ᾱ_t^½·x + (1 − ᾱ_t)^½·ε` for DDIM; float32 op by op as torch.
    ///
    /// Panics if `index` is not below `timesteps().len()` or the shapes differ (pipeline bugs, never user input).
    fn add_noise(&self, original: ArrayViewD<'_, f32>, noise: ArrayViewD<'_, f32>, index: usize) -> ArrayD<f32>;
    /// Which user-visible step (1-based) has completed after evaluation `index` (Heun/KDPM2 call the UNet twice per
    /// step).
    fn completed_steps(&self, index: usize) -> usize;
    /// Start keeping the data prediction x₀ of every [`Scheduler::step`] for [`Scheduler::denoised`] (previews);
    /// off by default, and then no step copies anything. Never changes a step's result.
    fn keep_denoised(&mut self, keep: bool);
    /// The x₀ estimate of the last [`Scheduler::step`] while [`Scheduler::keep_denoised`] is on, else `None`:
    /// diffusers' `pred_original_sample` of that call where its step output has one (Euler, Euler a, DDIM, LMS,
    /// Heun, KDPM2, KDPM2 a; for the two-evaluation ones, the evaluation just run: a completed Heun step reports its
    /// corrector's x₀ at the step's end sigma), and the DPM-Solver family's data prediction of the model output
    /// (`convert_model_output` with x₀ prediction, the value those schedulers keep in `model_outputs` for the
    /// `dpmsolver++`/`predict_x0` variants; computed from ε the same way for the others), which diffusers computes
    /// but does not return.
    fn denoised(&self) -> Option<ArrayViewD<'_, f32>>;
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use super::testutil::{build, dummy_model, dummy_sample_deter, k_test_config};
    use super::SchedulerClass;
    use crate::rng::TorchGenerator;

    /// Runs a 6-step loop of `class` with `overrides`, keeping x₀ or not; returns the samples and the x₀ after every
    /// step.
    fn run(class: &str, overrides: &Map<String, Value>, keep: bool) -> (Vec<Vec<f32>>, Vec<Option<Vec<f32>>>) {
        let mut s = build(class, overrides, 6);
        s.keep_denoised(keep);
        let mut noise = TorchGenerator::new(3);
        let mut sample = dummy_sample_deter() * s.init_noise_sigma();
        let (mut samples, mut x0s) = (Vec::new(), Vec::new());
        for i in 0..s.timesteps().len() {
            let scaled = s.scale_model_input(sample.view(), i);
            let out = dummy_model(&scaled, s.timesteps()[i]);
            sample = s.step(out.view(), i, sample.view(), &mut noise).expect("step");
            samples.push(sample.iter().copied().collect());
            x0s.push(s.denoised().map(|d| d.iter().copied().collect()));
        }
        (samples, x0s)
    }

    #[test]
    fn keeping_the_denoised_estimate_changes_no_step_and_is_off_by_default() {
        let variants = [
            json!({}),
            json!({"algorithm_type": "dpmsolver"}),
            json!({"algorithm_type": "sde-dpmsolver++"}),
            json!({"predict_x0": false}),
            json!({"prediction_type": "v_prediction"}),
        ];
        for class in SchedulerClass::ALL.map(SchedulerClass::class_name) {
            for extra in &variants {
                let overrides = k_test_config(extra.clone());
                if super::resolve(Some(class), &overrides, &super::SchedulerConfig::default()).is_err() {
                    continue; // an option this class does not take
                }
                let (plain, none) = run(class, &overrides, false);
                let (kept, x0s) = run(class, &overrides, true);
                assert_eq!(plain, kept, "{class} {extra}: samples must not move");
                assert!(none.iter().all(Option::is_none), "{class} {extra}: nothing kept by default");
                for (i, x0) in x0s.iter().enumerate() {
                    let x0 = x0.as_ref().unwrap_or_else(|| panic!("{class} {extra}: no x0 after evaluation {i}"));
                    assert_eq!(x0.len(), plain[i].len());
                    assert!(x0.iter().all(|v| v.is_finite()), "{class} {extra}: x0 {i}");
                }
                // The estimate follows the steps (a stale buffer would repeat).
                assert_ne!(x0s[0], x0s[1], "{class} {extra}");
            }
        }
    }

    /// For an ε model the x₀ estimate is `x − σ·ε` (sigma schedulers) — what every k-diffusion previewer shows.
    #[test]
    fn eulers_estimate_is_the_sample_minus_sigma_times_the_noise_prediction() {
        let mut s = build("EulerDiscreteScheduler", &k_test_config(json!({})), 4);
        s.keep_denoised(true);
        let sample = dummy_sample_deter() * s.init_noise_sigma();
        let eps = dummy_model(&s.scale_model_input(sample.view(), 0), s.timesteps()[0]);
        s.step(eps.view(), 0, sample.view(), &mut TorchGenerator::new(0)).unwrap();
        let sigma = s.sigmas()[0];
        let want: Vec<f32> = sample.iter().zip(eps.iter()).map(|(&x, &e)| x - sigma * e).collect();
        let got: Vec<f32> = s.denoised().unwrap().iter().copied().collect();
        assert_eq!(got, want);
    }
}
