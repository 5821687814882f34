//! The engine's upscaling step (`data.output.upscale`) and its loaded upscaler models.
//!
//! Upscalers are cached by canonical file path ([`super::file_models`]). They are small next to an SDXL pipeline
//! (Real-ESRGAN x4plus: 64 MB) and are not counted by the pipeline cache's limits.

use std::sync::Arc;

use super::Engine;
use crate::error::Result;
use crate::image::RgbImage;
use crate::pipeline::upscale::{ReportAs, UpscalePlan, Upscaler, MODEL_FIELD, UPSCALER_FILES};
use crate::pipeline::RunContext;
use crate::protocol::params::UpscaleParams;
use crate::protocol::response::UpscaleInfo;

/// An upscaler ready for one request: loaded, and its plan checked against the image size.
#[derive(Debug, Clone)]
pub struct PreparedUpscale {
    upscaler: Arc<Upscaler>,
    /// The request's `data.output.upscale`.
    pub request: UpscaleParams,
    /// How the factor is reached for this request's image size.
    pub plan: UpscalePlan,
    /// Seconds spent loading the upscaler (0 when it was loaded already).
    pub load_seconds: f64,
}

impl PreparedUpscale {
    /// `metadata.upscale` of every image this upscale made.
    pub fn info(&self) -> UpscaleInfo {
        UpscaleInfo {
            model: self.request.model.clone(),
            factor: self.plan.factor,
            model_scale: self.plan.model_scale,
            passes: self.plan.passes,
        }
    }
}

impl Engine {
    /// Resolve, load (or reuse) and check the upscaler `upscale` names for `width` × `height` images, before any
    /// image is generated: a missing or unusable model fails the request at once.
    pub(super) fn prepare_upscale(&self, upscale: &UpscaleParams, width: u32, height: u32) -> Result<PreparedUpscale> {
        let path = UPSCALER_FILES.resolve(self.root()?, &upscale.model, MODEL_FIELD)?;
        let (upscaler, load_seconds) =
            self.upscalers.get_or_load(&path, || Upscaler::load(&self.runtime.env, &path, &self.sessions))?;
        let plan = upscaler.plan(width, height, upscale.factor)?;
        Ok(PreparedUpscale { upscaler, request: upscale.clone(), plan, load_seconds })
    }

    /// Upscale every image of a run with `prepared`, tiled as the engine option `upscale_tiling` says.
    pub(super) fn upscale_images(
        &self,
        prepared: &PreparedUpscale,
        images: Vec<RgbImage>,
        request_id: &str,
        ctx: &mut RunContext<'_>,
    ) -> Result<Vec<RgbImage>> {
        let tiling = self.options.upscale_tiling.unwrap_or_default();
        let batch_size = images.len() as u32;
        let mut out = Vec::with_capacity(images.len());
        for (i, image) in images.into_iter().enumerate() {
            let report = ReportAs { request_id, image_index: i as u32, batch_size };
            out.push(prepared.upscaler.upscale(&image, prepared.request.factor, tiling, ctx, &report)?);
        }
        Ok(out)
    }
}
