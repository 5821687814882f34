//! diffusers' "ensemble of experts": the base model denoises the first part of the schedule (`denoising_end`),
//! an SDXL refiner the rest (`denoising_start`), each with its own scheduler built from the request's choice and
//! its own `scheduler_config.json`, the latents and the noise generators handed over as they are.

use super::SdxlPipeline;
use crate::error::Result;
use crate::protocol::params::GenerateParams;
use crate::schedulers::{self, Scheduler};

/// One model of the ensemble of experts (the base, then the refiner) with the scheduler it runs.
pub(super) struct Expert<'a> {
    pub(super) model: &'a SdxlPipeline,
    pub(super) scheduler: schedulers::ResolvedScheduler,
    /// `refiner_switch_at`, when a refiner takes part.
    switch_at: Option<f64>,
}

impl<'a> Expert<'a> {
    /// The request's scheduler resolved against `model`'s own `scheduler_config.json` (as diffusers' refiner has
    /// its own).
    pub(super) fn new(model: &'a SdxlPipeline, params: &GenerateParams) -> Result<Self> {
        let scheduler = schedulers::resolve(
            params.scheduler.as_ref().map(|s| s.name.as_str()),
            params.scheduler.as_ref().map(|s| &s.overrides).unwrap_or(&serde_json::Map::new()),
            &model.model_dir().scheduler,
        )?;
        let switch_at = params.refiner.as_ref().map(|_| params.refiner_switch_at);
        Ok(Expert { model, scheduler, switch_at })
    }
}

/// The first evaluation of `scheduler` that image-to-image runs when it skips `skipped` of its steps: diffusers'
/// `get_timesteps`, `t_start · order`, at most the schedule's length.
pub(super) fn img2img_begin(skipped: u32, scheduler: &dyn Scheduler) -> usize {
    (skipped as usize * scheduler.order()).min(scheduler.timesteps().len())
}

/// The evaluations of `scheduler` that stage `k` of `stages` runs, when a refiner takes part: the base (k = 0)
/// those at or above the cut-off timestep (diffusers' `denoising_end`), the refiner (k = 1) those below it, one more
/// for a second-order scheduler with an even count (`denoising_start`, diffusers' `get_timesteps`). The cut-off is
/// `round(T - switch_at · T)` for `T` training timesteps, rounded half to even as Python's `round`. `None`: a single
/// stage runs everything.
pub(super) fn stage_range(
    scheduler: &dyn Scheduler,
    train_timesteps: Option<usize>,
    k: usize,
    stages: &[Expert<'_>],
) -> Option<std::ops::Range<usize>> {
    let switch_at = stages.get(k)?.switch_at.filter(|_| stages.len() > 1)?;
    let total = train_timesteps.unwrap_or(1000) as f64;
    let cutoff = (total - switch_at * total).round_ties_even();
    let timesteps = scheduler.timesteps();
    let len = timesteps.len();
    if k == 0 {
        Some(0..timesteps.iter().filter(|&&t| f64::from(t) >= cutoff).count())
    } else {
        let mut steps = timesteps.iter().filter(|&&t| f64::from(t) < cutoff).count();
        if scheduler.order() == 2 && steps % 2 == 0 {
            steps += 1;
        }
        Some(len - steps.min(len)..len)
    }
}
