//! Image upscaling after decode (`data.output.upscale`): an ONNX super-resolution model run over tiles, then a
//! Lanczos resize to the exact requested factor, as A1111's `Upscaler.upscale` does (`modules/upscaler.py`).
//!
//! # The model
//!
//! One float (float32 or float16) input `[1, 3, H, W]`, RGB in [0, 1], with dynamic height and width; one output
//! `[1, 3, s·H, s·W]`: the Real-ESRGAN / ESRGAN / SwinIR / OnnxStack convention. The native scale `s` is read from
//! the output of a 32 × 32 probe run when the model loads, and must be a positive integer, equal on both axes and
//! the same on every later run.
//!
//! # One request
//!
//! Per image: `passes` runs of the model (A1111's loop: run, stop once the image is at least `factor` times the
//! generated size; a 1× model runs once), each starting from 8-bit pixels (`u8 / 255` in, output clamped to
//! [0, 1], × 255, rounded half to even), then, when the result is not exactly `factor` × the size, a Lanczos-3
//! resize to it, bit for bit as A1111's PIL `LANCZOS` ([`crate::image::lanczos`]). So factor 4 with a ×2 model is two passes, factor 3 is two
//! passes and a resize down from ×4, factor 1 is one pass and a resize back.
//!
//! Every pass is tiled ([`tiles`]); progress is reported as [`Stage::Upscaling`] after each tile and the cancel
//! token is checked between tiles. No pass may produce more than [`MAX_UPSCALED_PIXELS`] pixels.

pub mod tiles;

use std::path::Path;

use ndarray::{Array4, ArrayD};

use self::tiles::{Span, Tiling};
use super::{ProgressEvent, RunContext, Stage};
use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::model_files::FileKind;
use crate::runtime::tensor::{float_value, Elem};
use crate::runtime::{CancelToken, ModelSession, SessionConfig};

/// Where upscaler models live: `<models_root>/upscalers/<name>.onnx` ([`crate::model_files`]).
pub const UPSCALER_FILES: FileKind = FileKind { folder: "upscalers", extension: "onnx", what: "upscaler" };

/// The request field that names the upscaler, for messages.
pub const MODEL_FIELD: &str = "data.output.upscale.model";

/// The most pixels any pass or the final image may have (8192 × 8192: 192 MiB of RGB8).
pub const MAX_UPSCALED_PIXELS: u64 = 8192 * 8192;

/// The side of the probe image run at load to read the native scale.
const PROBE: usize = 32;

/// A loaded upscaler model and its native scale.
#[derive(Debug)]
pub struct Upscaler {
    session: ModelSession,
    input: String,
    elem: Elem,
    output: String,
    scale: u32,
}

/// What one upscale did to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpscalePlan {
    /// The requested factor.
    pub factor: u32,
    /// The model's native scale.
    pub model_scale: u32,
    /// Model runs per image.
    pub passes: u32,
}

impl Upscaler {
    /// Load the upscaler at `path` with the engine's session settings, check its input and output, and read its
    /// native scale from a probe run.
    pub fn load(env: &ort::environment::Environment, path: &Path, config: &SessionConfig) -> Result<Self> {
        let session = ModelSession::load(env, path, "upscaler", config)?;
        let invalid = |message: String| Error::model_invalid(path, format!("{message} ({MODEL_FIELD})"));
        let [input] = session.inputs() else {
            return Err(invalid(format!(
                "an upscaler takes one input [1, 3, height, width]; this model has {}",
                session.inputs().len()
            )));
        };
        let Some(output) = session.outputs().first() else {
            return Err(invalid("the model has no output".into()));
        };
        let image_like = |shape: &[i64]| shape.len() == 4 && matches!(shape[1], 3 | -1);
        if !matches!(input.elem, Elem::F32 | Elem::F16) || !image_like(&input.shape) {
            return Err(invalid(format!(
                "an upscaler takes a float32 or float16 image [1, 3, height, width]; input `{}` is {:?} {:?}",
                input.name, input.elem, input.shape
            )));
        }
        if input.shape[2] > 0 || input.shape[3] > 0 {
            return Err(invalid(format!(
                "input `{}` has a fixed size {:?}; export the upscaler with dynamic height and width",
                input.name, input.shape
            )));
        }
        let mut upscaler =
            Upscaler { input: input.name.clone(), elem: input.elem, output: output.name.clone(), session, scale: 0 };
        let probe = Array4::<f32>::from_elem((1, 3, PROBE, PROBE), 0.5);
        let out = upscaler.run(probe, &CancelToken::new())?;
        let (oh, ow) = (out.shape()[2], out.shape()[3]);
        if out.shape()[1] != 3 || oh % PROBE != 0 || ow != oh || oh == 0 {
            return Err(invalid(format!(
                "a {PROBE}×{PROBE} image gave an output of shape {:?}; an upscaler must return [1, 3, s·{PROBE}, \
                 s·{PROBE}] for a whole number s",
                out.shape()
            )));
        }
        upscaler.scale = (oh / PROBE) as u32;
        Ok(upscaler)
    }

    /// The model's native scale.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        self.session.path()
    }

    /// How `factor` is reached with this model (see the module docs), checked against [`MAX_UPSCALED_PIXELS`]
    /// for a `width` × `height` image.
    pub fn plan(&self, width: u32, height: u32, factor: u32) -> Result<UpscalePlan> {
        let mut passes = 1u32;
        let mut reached = u64::from(self.scale);
        while self.scale > 1 && reached < u64::from(factor) {
            passes += 1;
            reached *= u64::from(self.scale);
        }
        let pixels = |k: u64| u64::from(width) * k * u64::from(height) * k;
        let largest = pixels(reached).max(pixels(factor.into()));
        if largest > MAX_UPSCALED_PIXELS {
            return Err(Error::field(
                "data.output.upscale.factor",
                format!(
                    "{width}x{height} × {factor} with this ×{} model needs {passes} pass(es) up to {largest} \
                     pixels; at most {MAX_UPSCALED_PIXELS} are allowed (use a smaller factor or image)",
                    self.scale
                ),
            ));
        }
        Ok(UpscalePlan { factor, model_scale: self.scale, passes })
    }

    /// Upscale `image` by `factor` (see the module docs), tiled by `tiling`, reporting progress to `ctx` for
    /// image `image_index` of `batch_size`.
    pub fn upscale(
        &self,
        image: &RgbImage,
        factor: u32,
        tiling: Tiling,
        ctx: &mut RunContext<'_>,
        report: &ReportAs<'_>,
    ) -> Result<RgbImage> {
        tiling.validate()?;
        let plan = self.plan(image.width, image.height, factor)?;
        let total = self.tile_count(image, plan, tiling);
        let mut done = 0u32;
        let mut current = None;
        for _ in 0..plan.passes {
            let from = current.as_ref().unwrap_or(image);
            let mut on_tile = |ctx: &mut RunContext<'_>| -> Result<()> {
                done += 1;
                report.send(ctx, done, total)
            };
            current = Some(self.pass(from, tiling, ctx, &mut on_tile)?);
        }
        let upscaled = current.expect("at least one pass");
        let (w, h) = (image.width * factor, image.height * factor);
        if (upscaled.width, upscaled.height) == (w, h) {
            return Ok(upscaled);
        }
        Ok(crate::image::lanczos::resize(&upscaled, w, h))
    }

    /// Upscale `image` to exactly `width` × `height` for hires fix (`data.hires.upscaler` naming a model), as
    /// A1111's `images.resize_image` with an upscaler does: when the target is larger on some side, passes of the
    /// model (each from 8-bit pixels) until the image is at least the target on both sides (a 1× model runs once),
    /// then one Lanczos resize to the target when the size differs; a target no larger on either side is only
    /// resized. Returns the image and the passes run. Errors name `data.hires.upscaler` when a pass would exceed
    /// [`MAX_UPSCALED_PIXELS`].
    pub fn upscale_to(
        &self,
        image: &RgbImage,
        (width, height): (u32, u32),
        tiling: Tiling,
        ctx: &mut RunContext<'_>,
        report: &ReportAs<'_>,
    ) -> Result<(RgbImage, u32)> {
        tiling.validate()?;
        let passes = self.passes_to(image.width, image.height, (width, height))?;
        let (mut w, mut h, mut total) = (image.width, image.height, 0);
        for _ in 0..passes {
            total += tiling.count(w, h);
            (w, h) = (w * self.scale, h * self.scale);
        }
        let mut done = 0u32;
        let mut current: Option<RgbImage> = None;
        for _ in 0..passes {
            let from = current.as_ref().unwrap_or(image);
            let mut on_tile = |ctx: &mut RunContext<'_>| -> Result<()> {
                done += 1;
                report.send(ctx, done, total)
            };
            current = Some(self.pass(from, tiling, ctx, &mut on_tile)?);
        }
        let upscaled = current.unwrap_or_else(|| image.clone());
        if (upscaled.width, upscaled.height) == (width, height) {
            return Ok((upscaled, passes));
        }
        Ok((crate::image::lanczos::resize(&upscaled, width, height), passes))
    }

    /// The model passes [`Self::upscale_to`] runs from `width` × `height` to `target`, checked against
    /// [`MAX_UPSCALED_PIXELS`].
    pub fn passes_to(&self, width: u32, height: u32, (tw, th): (u32, u32)) -> Result<u32> {
        if tw <= width && th <= height {
            return Ok(0);
        }
        let (mut w, mut h, mut passes) = (u64::from(width), u64::from(height), 0u32);
        loop {
            passes += 1;
            (w, h) = (w * u64::from(self.scale), h * u64::from(self.scale));
            if w * h > MAX_UPSCALED_PIXELS {
                return Err(Error::field(
                    "data.hires.upscaler",
                    format!(
                        "{width}x{height} to {tw}x{th} with this ×{} model passes {w}x{h} pixels; at most \
                         {MAX_UPSCALED_PIXELS} are allowed",
                        self.scale
                    ),
                ));
            }
            if self.scale <= 1 || (w >= u64::from(tw) && h >= u64::from(th)) {
                return Ok(passes);
            }
        }
    }

    /// Windows over every pass of `plan`, for progress.
    fn tile_count(&self, image: &RgbImage, plan: UpscalePlan, tiling: Tiling) -> u32 {
        let (mut w, mut h, mut n) = (image.width, image.height, 0);
        for _ in 0..plan.passes {
            n += tiling.count(w, h);
            (w, h) = (w * self.scale, h * self.scale);
        }
        n
    }

    /// One run of the model over `image`, window by window.
    fn pass(
        &self,
        image: &RgbImage,
        tiling: Tiling,
        ctx: &mut RunContext<'_>,
        on_tile: &mut dyn FnMut(&mut RunContext<'_>) -> Result<()>,
    ) -> Result<RgbImage> {
        let s = self.scale as usize;
        let (w, h) = (image.width as usize, image.height as usize);
        let mut out = RgbImage { width: (w * s) as u32, height: (h * s) as u32, seed: image.seed, data: Vec::new() };
        out.data.resize(w * s * h * s * 3, 0);
        for rows in tiling.spans(image.height) {
            for cols in tiling.spans(image.width) {
                ctx.cancel.check()?;
                let window = self.run(window_input(image, rows, cols), ctx.cancel)?;
                let (wh, ww) = ((rows.hi - rows.lo) as usize, (cols.hi - cols.lo) as usize);
                if window.shape() != [1, 3, wh * s, ww * s] {
                    return Err(Error::model_invalid(
                        self.path(),
                        format!(
                            "a {ww}×{wh} window gave an output of shape {:?}, not ×{s} as on the probe run \
                             ({MODEL_FIELD})",
                            window.shape()
                        ),
                    ));
                }
                keep_interior(&window, rows, cols, s, &mut out);
                on_tile(ctx)?;
            }
        }
        Ok(out)
    }

    /// Run the model once on `[1, 3, h, w]` and return its output as f32.
    fn run(&self, input: Array4<f32>, cancel: &CancelToken) -> Result<ArrayD<f32>> {
        let value = float_value(input.into_dyn(), self.elem, "upscaler", &self.input)?;
        let mut outputs = self.session.run(vec![(self.input.clone(), value)], &[self.output.as_str()], cancel)?;
        let out = outputs.pop().expect("one output asked for");
        if out.ndim() != 4 || out.shape()[0] != 1 {
            return Err(Error::model_invalid(
                self.path(),
                format!(
                    "the output has shape {:?}; an upscaler returns [1, 3, height, width] ({MODEL_FIELD})",
                    out.shape()
                ),
            ));
        }
        Ok(out)
    }
}

/// How upscaling progress is reported: the request and the image it is for.
#[derive(Debug, Clone, Copy)]
pub struct ReportAs<'a> {
    /// The request's id.
    pub request_id: &'a str,
    /// The image of the batch (0-based).
    pub image_index: u32,
    /// Images in the request.
    pub batch_size: u32,
}

impl ReportAs<'_> {
    /// Report `step` of `total` as [`Stage::Upscaling`]; a cancel from the callback or the token stops the run.
    pub fn send(&self, ctx: &mut RunContext<'_>, step: u32, total: u32) -> Result<()> {
        ctx.cancel.check()?;
        let event = ProgressEvent {
            stage: Stage::Upscaling,
            step,
            total_steps: total,
            image_index: self.image_index,
            batch_size: self.batch_size,
            elapsed_seconds: ctx.started.elapsed().as_secs_f64(),
            request_id: self.request_id,
            preview: None,
        };
        if ctx.progress.report(&event) {
            Ok(())
        } else {
            ctx.cancel.cancel();
            Err(Error::Cancelled)
        }
    }
}

/// The window `rows` × `cols` of `image` as the model's input: `[1, 3, h, w]`, `u8 / 255` in float32.
fn window_input(image: &RgbImage, rows: Span, cols: Span) -> Array4<f32> {
    let (h, w) = ((rows.hi - rows.lo) as usize, (cols.hi - cols.lo) as usize);
    let stride = image.width as usize * 3;
    Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| {
        let at = (rows.lo as usize + y) * stride + (cols.lo as usize + x) * 3 + c;
        f32::from(image.data[at]) / 255.0
    })
}

/// Write the interior of one window's output `[1, 3, s·h, s·w]` into `out`: clamped to [0, 1], × 255, rounded
/// half to even (torch's `round`).
fn keep_interior(window: &ArrayD<f32>, rows: Span, cols: Span, s: usize, out: &mut RgbImage) {
    let stride = out.width as usize * 3;
    for y in (rows.start as usize * s)..(rows.end as usize * s) {
        let wy = y - rows.lo as usize * s;
        for x in (cols.start as usize * s)..(cols.end as usize * s) {
            let wx = x - cols.lo as usize * s;
            for c in 0..3 {
                let v = window[[0, c, wy, wx]];
                out.data[y * stride + x * 3 + c] = (v.clamp(0.0, 1.0) * 255.0).round_ties_even() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(width: u32, height: u32) -> RgbImage {
        let data = (0..width * height * 3).map(|i| (i * 7 % 256) as u8).collect();
        RgbImage { width, height, seed: 0, data }
    }

    #[test]
    fn windows_read_u8_over_255_in_planar_order() {
        let image = ramp(5, 4);
        let rows = Span { start: 1, end: 3, lo: 0, hi: 4 };
        let cols = Span { start: 2, end: 4, lo: 1, hi: 5 };
        let input = window_input(&image, rows, cols);
        assert_eq!(input.shape(), [1, 3, 4, 4]);
        // pixel (x=1+3, y=0+2), channel 2
        assert_eq!(input[[0, 2, 2, 3]], f32::from(image.data[(2 * 5 + 4) * 3 + 2]) / 255.0);
    }

    #[test]
    fn interiors_are_clamped_and_rounded_half_to_even() {
        let mut out = RgbImage { width: 4, height: 2, seed: 0, data: vec![7; 24] };
        let values = [-0.5, 0.5 / 255.0, 1.5 / 255.0, 2.0];
        let window = ArrayD::from_shape_fn(vec![1, 3, 2, 4], |d| values[d[3]]);
        let all = Span { start: 0, end: 2, lo: 0, hi: 2 };
        keep_interior(&window, Span { start: 0, end: 1, lo: 0, hi: 1 }, all, 2, &mut out);
        assert_eq!(&out.data[..12], [0, 0, 0, 0, 0, 0, 2, 2, 2, 255, 255, 255]);
        assert_eq!(&out.data[12..], [0, 0, 0, 0, 0, 0, 2, 2, 2, 255, 255, 255]);
    }
}
