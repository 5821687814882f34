//! The engine's part of hires fix (`data.hires`): the target size checked against the request limits, and what the
//! upscaler needs loaded — the VAE encoder for the pixel upscalers, the upscaler model (resolved as
//! `data.output.upscale.model` is, cached with the other upscalers) — before any work.

use super::Engine;
use crate::error::{Error, Result};
use crate::pipeline::hires::{HiresRun, HiresUpscale};
use crate::pipeline::upscale::{Upscaler, UPSCALER_FILES};
use crate::pipeline::SdxlPipeline;
use crate::protocol::params::{HiresParams, HiresUpscaler};
use crate::protocol::response::HiresInfo;

/// A request's second pass, ready for the pipeline.
pub(super) struct PreparedHires {
    /// The pipeline's input.
    pub run: HiresRun,
    /// Seconds spent loading the VAE encoder and the upscaler model (0 when loaded already).
    pub load_seconds: f64,
}

impl PreparedHires {
    /// `metadata.hires` of every image, for a first pass of `first_pass` (width, height) that ran `facts`.
    pub fn info(
        &self,
        request: &HiresParams,
        first_pass: (u32, u32),
        facts: Option<&crate::pipeline::hires::HiresFacts>,
    ) -> HiresInfo {
        HiresInfo {
            width: self.run.width,
            height: self.run.height,
            first_pass_width: first_pass.0,
            first_pass_height: first_pass.1,
            upscaler: request.upscaler.name().to_owned(),
            strength: self.run.strength,
            steps: self.run.steps,
            denoising_steps: facts.map_or(0, |f| f.denoising_steps),
            model_passes: match self.run.upscale {
                HiresUpscale::Pixels { model: Some(_), .. } => facts.map(|f| f.model_passes),
                _ => None,
            },
            controlnet: (!self.run.controlnets.is_empty()).then(|| request.controlnet.name().to_owned()),
        }
    }
}

impl Engine {
    /// The second pass `hires` asks for after a `width` × `height` first pass of `steps` steps on `pipeline`: its
    /// size (checked against the limits; errors name `data.hires`), its encoder and upscaler model loaded.
    pub(super) fn prepare_hires(
        &self,
        hires: &HiresParams,
        pipeline: &SdxlPipeline,
        (width, height): (u32, u32),
        steps: u32,
        warnings: &mut Vec<String>,
    ) -> Result<PreparedHires> {
        let (tw, th) = hires.target_size((width, height), pipeline.model_dir().size_multiple())?;
        self.limits.check_size(tw, th).map_err(|e| match e {
            Error::InvalidField { message, .. } => {
                Error::field("data.hires", format!("the second pass's size {tw}×{th}: {message}"))
            }
            other => other,
        })?;
        let mut load_seconds = 0.0;
        let upscale = match &hires.upscaler {
            HiresUpscaler::Latent(mode) => HiresUpscale::Latent(*mode),
            HiresUpscaler::Lanczos => {
                let (encoder, seconds) = self.vae_encoder(pipeline, warnings)?;
                load_seconds += seconds;
                HiresUpscale::Pixels { encoder, model: None }
            }
            HiresUpscaler::Model(name) => {
                let path = UPSCALER_FILES.resolve(self.root()?, name, "data.hires.upscaler")?;
                let (upscaler, seconds) =
                    self.upscalers.get_or_load(&path, || Upscaler::load(&self.runtime.env, &path, &self.sessions))?;
                upscaler.passes_to(width, height, (tw, th))?;
                let (encoder, encoder_seconds) = self.vae_encoder(pipeline, warnings)?;
                load_seconds += seconds + encoder_seconds;
                let tiling = self.options.upscale_tiling.unwrap_or_default();
                HiresUpscale::Pixels { encoder, model: Some((upscaler, tiling)) }
            }
        };
        // The second pass's ControlNet units come with the others (`prepare_controlnets`).
        let run = HiresRun {
            width: tw,
            height: th,
            upscale,
            strength: hires.strength,
            steps: hires.steps.unwrap_or(steps),
            controlnets: Vec::new(),
        };
        Ok(PreparedHires { run, load_seconds })
    }
}
