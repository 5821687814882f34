//! The denoising loop: scale → ControlNets, if any → UNet (CFG batch of 2; an inpainting UNet also gets the mask and
//! masked-image channels) → guidance → scheduler step (→ inpainting's blend with a 4-channel UNet), with progress and
//! cancellation checked at every UNet call. Mirrors the loop in diffusers' `StableDiffusionXLPipeline.__call__` (and
//! `StableDiffusionXLControlNetPipeline.__call__`, `StableDiffusionXLInpaintPipeline.__call__`).

use ndarray::{concatenate, Array2, Array3, ArrayD, Axis, IxDyn};

use super::controlnet::{ControlRun, ControlUnit};
use super::guidance;
use super::inpaint::{self, Inpainting};
use super::preview::{PreviewImage, Previewer};
use super::{Progress, ProgressEvent, Stage};
use crate::error::{Error, Result};
use crate::protocol::params::PreviewSource;
use crate::rng::NoiseSource;
use crate::runtime::controlnet_inputs::{down_input, MID_INPUT};
use crate::runtime::tensor::{float_value, Elem};
use crate::runtime::{BoundGraph, CancelToken, ModelSession};
use crate::schedulers::Scheduler;

/// The UNet's conditioning for one batch, already in CFG order (`[uncond × B, cond × B]` when guided).
#[derive(Debug, Clone)]
pub struct UnetConditioning {
    /// `encoder_hidden_states` `[N, 77, D]`.
    pub encoder_hidden_states: Array3<f32>,
    /// `text_embeds` `[N, P]`.
    pub text_embeds: Array2<f32>,
    /// `time_ids` `[N, 6]` (a refiner: `[N, 5]`).
    pub time_ids: Array2<f32>,
}

/// What the loop needs besides latents.
pub struct DenoiseContext<'a> {
    /// The UNet graph.
    pub unet: &'a ModelSession,
    /// Classifier-free guidance scale; CFG runs only when `guided`.
    pub guidance_scale: f32,
    /// diffusers' `guidance_rescale` ([`super::guidance::rescale`]); 0 = off. Only when `guided`.
    pub guidance_rescale: f32,
    /// Whether the conditioning holds an uncond half.
    pub guided: bool,
    /// Cancellation.
    pub cancel: &'a CancelToken,
    /// Progress sink.
    pub progress: &'a mut dyn Progress,
    /// For progress reports.
    pub request_id: &'a str,
    /// First image index of this batch (progress reports).
    pub image_index: u32,
    /// Images in the request (progress reports).
    pub batch_size: u32,
    /// Request start (progress reports).
    pub started: std::time::Instant,
    /// Steps this run goes through (progress reports count these, not UNet calls): the requested ones, or
    /// image-to-image's `int(steps × strength)`.
    pub steps: u32,
    /// Steps of the schedule image-to-image skips (progress reports count from the first step that runs).
    pub skipped_steps: u32,
    /// ControlNet units adding residuals to every UNet call (the UNet then has their inputs); empty for none.
    pub controlnets: &'a [ControlUnit],
    /// Inpainting: the blend after every step (4-channel UNet) or the mask channels of every UNet call (9-channel
    /// inpainting UNet); `None` for none.
    pub inpaint: Option<&'a Inpainting>,
    /// Live previews (`data.output.preview`) with the reports where one is due; `None`: none, and no preview work.
    pub preview: Option<Previewer<'a>>,
    /// The seed of image `image_index` (image `image_index + k` has `seed + k`): a `vae` preview's image seed.
    pub seed: u64,
}

/// Run the evaluations `range` of `scheduler` (all of them, or a base model's first part and a refiner's rest) on
/// `latents` (the initial noise already multiplied by `init_noise_sigma`, or the latents a base model handed
/// over). Returns the latents and the number of UNet evaluations.
pub fn denoise(
    mut latents: ArrayD<f32>,
    cond: &UnetConditioning,
    scheduler: &mut dyn Scheduler,
    range: std::ops::Range<usize>,
    noise: &mut dyn NoiseSource,
    ctx: &mut DenoiseContext<'_>,
) -> Result<(ArrayD<f32>, u32)> {
    let batch = latents.shape()[0];
    let timesteps = scheduler.timesteps().to_vec();
    let Some(run) = timesteps.get(range.clone()) else {
        return Err(Error::Internal(format!("denoising range {range:?} of {} timesteps", timesteps.len())));
    };
    if run.is_empty() {
        return Ok((latents, 0));
    }
    let mut unet = bind_unet(ctx.unet, cond)?;
    let sample_elem = ctx.unet.input("sample")?.elem;
    let mut control = match ctx.controlnets {
        [] => None,
        units => Some(ControlRun::bind(units, cond, ctx.guided)?),
    };
    let residual_inputs: Vec<String> = match ctx.controlnets.first() {
        Some(unit) => {
            (0..unit.net().down_residuals()).map(down_input).chain(std::iter::once(MID_INPUT.to_string())).collect()
        }
        None => Vec::new(),
    };
    // A 9-channel UNet's mask and masked-image channels, one row per UNet row.
    let mask_channels = match ctx.inpaint {
        Some(Inpainting::Channels(channels)) => Some(channels.rows(if ctx.guided { 2 * batch } else { batch })?),
        _ => None,
    };
    let keep_denoised = ctx.preview.as_ref().is_some_and(|p| p.params().source == PreviewSource::Denoised);
    scheduler.keep_denoised(keep_denoised);
    let mut reported = 0;
    for (i, &t) in timesteps.iter().enumerate().skip(range.start).take(run.len()) {
        ctx.cancel.check()?;
        let scaled = scheduler.scale_model_input(latents.view(), i);
        let sample = if ctx.guided {
            concatenate(Axis(0), &[scaled.view(), scaled.view()])
                .map_err(|e| Error::Internal(format!("CFG batch: {e}")))?
        } else {
            scaled
        };
        let n = sample.shape()[0];
        let last = i + 1 == range.end;
        // The guidance windows count evaluations over the schedule that runs: image-to-image's starts after the
        // skipped steps (diffusers' ControlNet img2img pipeline builds controlnet_keep over its cut list).
        let skipped = ctx.skipped_steps as usize * scheduler.order();
        let window = (i - skipped.min(i), timesteps.len() - skipped.min(timesteps.len()));
        let residuals = match control.as_mut() {
            Some(c) => c.residuals(&sample, t, window, last, ctx.cancel)?,
            None => Vec::new(),
        };
        let sample = match &mask_channels {
            Some(extra) => inpaint::unet_sample(sample, extra)?,
            None => sample,
        };
        let mut changing = vec![
            ("sample".to_string(), float_value(sample, sample_elem, "unet", "sample")?),
            ("timestep".to_string(), timestep_value(ctx.unet, t, n)?),
        ];
        for (name, r) in residual_inputs.iter().zip(residuals) {
            changing.push((name.clone(), float_value(r, ctx.unet.input(name)?.elem, "unet", name)?));
        }
        let out =
            unet.run(changing, last, ctx.cancel)?.pop().ok_or_else(|| Error::Internal("no UNet output".into()))?;
        let noise_pred = match ctx.guided {
            true => guidance::guide(&out, batch, ctx.guidance_scale, ctx.guidance_rescale),
            false => out,
        };
        latents = scheduler.step(noise_pred.view(), i, latents.view(), noise)?;
        if let Some(Inpainting::Blend(blend)) = ctx.inpaint {
            blend.apply(&mut latents, scheduler, i, range.end);
        }
        ctx.progress.on_latents(ctx.image_index, Some(i), latents.view());
        let done = scheduler.completed_steps(i).saturating_sub(ctx.skipped_steps as usize);
        if done != reported {
            reported = done;
            report_step(ctx, done as u32, &*scheduler, &latents)?;
        }
    }
    Ok((latents, run.len() as u32))
}

/// The denoising report of `step`: one report, or with a preview due, one per image of the batch, each with its
/// image's preview (`image_index` tells them apart). A callback that asks to stop cancels the run.
fn report_step(
    ctx: &mut DenoiseContext<'_>,
    step: u32,
    scheduler: &dyn Scheduler,
    latents: &ArrayD<f32>,
) -> Result<()> {
    let (steps, batch_size, started, request_id) = (ctx.steps, ctx.batch_size, ctx.started, ctx.request_id);
    fn event<'e>(
        (step, total_steps, batch_size, request_id): (u32, u32, u32, &'e str),
        started: std::time::Instant,
        image_index: u32,
        preview: Option<PreviewImage<'e>>,
    ) -> ProgressEvent<'e> {
        ProgressEvent {
            stage: Stage::Denoising,
            step,
            total_steps,
            image_index,
            batch_size,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            request_id,
            preview,
        }
    }
    let facts = (step, steps, batch_size, request_id);
    let go_on = match ctx.preview.as_mut().filter(|p| p.due(step, ctx.steps)) {
        None => ctx.progress.report(&event(facts, started, ctx.image_index, None)),
        Some(previewer) => {
            let shown = match previewer.params().source {
                PreviewSource::Noisy => latents.view(),
                PreviewSource::Denoised => scheduler
                    .denoised()
                    .ok_or_else(|| Error::Internal("preview: the scheduler kept no denoised estimate".into()))?,
            };
            ctx.progress.on_preview_latents(ctx.image_index, step, shown.view());
            let mut go_on = true;
            for k in 0..shown.shape()[0] {
                let seed = ctx.seed.wrapping_add(k as u64);
                let image = previewer.render(shown.view(), k, seed, ctx.cancel)?;
                if !ctx.progress.report(&event(facts, started, ctx.image_index + k as u32, Some(image))) {
                    go_on = false;
                    break;
                }
            }
            go_on
        }
    };
    if go_on {
        Ok(())
    } else {
        ctx.cancel.cancel();
        Err(Error::Cancelled)
    }
}

/// The `timestep` input of the UNet or a ControlNet shaped and typed as the graph declares it: a scalar
/// (optimum), `[1]`, or `[N]`.
pub(super) fn timestep_value(graph: &ModelSession, t: f32, n: usize) -> Result<ort::value::DynValue> {
    let spec = graph.input("timestep")?;
    let shape: Vec<usize> = match spec.shape.as_slice() {
        [] => vec![],
        [1] => vec![1],
        [_] => vec![n],
        other => {
            return Err(Error::model_invalid(graph.path(), format!("unsupported timestep input shape {other:?}")));
        }
    };
    let numel = shape.iter().product::<usize>().max(1);
    match spec.elem {
        Elem::F32 | Elem::F16 => {
            let a = ArrayD::from_shape_vec(IxDyn(&shape), vec![t; numel])
                .map_err(|e| Error::Internal(format!("timestep array: {e}")))?;
            float_value(a, spec.elem, graph.stage(), "timestep")
        }
        Elem::I64 => {
            let a = ArrayD::from_shape_vec(IxDyn(&shape), vec![t.round() as i64; numel])
                .map_err(|e| Error::Internal(format!("timestep array: {e}")))?;
            crate::runtime::tensor::ids_value(a, Elem::I64, graph.stage(), "timestep")
        }
        other => Err(Error::model_invalid(graph.path(), format!("unsupported timestep element type {other:?}"))),
    }
}

/// The UNet with the conditioning bound once for the whole loop (copied to the device once on CUDA).
fn bind_unet<'s>(unet: &'s ModelSession, cond: &UnetConditioning) -> Result<BoundGraph<'s>> {
    let input = |name: &str, a: ArrayD<f32>| -> Result<(String, ort::value::DynValue)> {
        let spec = unet.input(name)?;
        Ok((name.to_string(), float_value(a, spec.elem, "unet", name)?))
    };
    let fixed = vec![
        input("encoder_hidden_states", cond.encoder_hidden_states.clone().into_dyn())?,
        input("text_embeds", cond.text_embeds.clone().into_dyn())?,
        input("time_ids", cond.time_ids.clone().into_dyn())?,
    ];
    unet.bind(fixed, &["out_sample"])
}
