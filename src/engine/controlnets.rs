//! The engine's ControlNet units (`data.controlnet`): each unit's graph resolved under `models_root`, loaded once
//! per file ([`super::file_models`]), and its control image read and sized for the run, before any image is
//! generated: a missing model or an unreadable image fails the request at once. A unit's `preprocessor` (Canny) runs
//! on its control image as decoded, before anything else (`control_image`). With `data.padding_mask_crop` each
//! control image is cut to the mask's area and "fill"-resized exactly as the init image is (diffusers'
//! `StableDiffusionXLControlNetInpaintPipeline.prepare_control_image` with `crops_coords` and `resize_mode="fill"`).
//! Guess mode is decided here, for all the units at once (`guess_mode`).
//!
//! With hires fix every unit is made twice from the one decoded, preprocessed control image: at the request's size
//! for the first pass and at the target size for the second, each resized from that image (never the second
//! from the first's resized copy), as sd-webui-controlnet's `get_control` makes its `control` and `hr_control` from
//! one `detected_map`; `data.hires.controlnet` lets a unit sit one of the passes out.

use std::sync::Arc;

use super::Engine;
use crate::error::{Error, Result};
use crate::image::canny::canny_rgb;
use crate::image::mask_crop::{self, CropRegion};
use crate::image::RgbImage;
use crate::pipeline::controlnet::{self, ControlNet, ControlUnit};
use crate::protocol::params::{ControlNetRequest, GenerateParams, Preprocessor};

impl Engine {
    /// The units `params` ask for, ready for `width` × `height` images, in guess mode or not ([`guess_mode`]), and
    /// the seconds spent loading graphs. `crop`: with `data.padding_mask_crop`, the region inpainted and the init
    /// image's size ([`crop_control`]). With `hires_size` (hires fix's target) the units are also made for the
    /// second pass, returned second (else empty), and `data.hires.controlnet` decides which pass each set
    /// conditions ([`ControlUnit::set_active`]).
    pub(super) fn prepare_controlnets(
        &self,
        params: &GenerateParams,
        (width, height): (u32, u32),
        crop: Option<(CropRegion, (u32, u32))>,
        hires_size: Option<(u32, u32)>,
        warnings: &mut Vec<String>,
    ) -> Result<(Vec<ControlUnit>, Vec<ControlUnit>, f64)> {
        let requests = &params.controlnets;
        let mut units = Vec::with_capacity(requests.len());
        let mut second = Vec::new();
        let mut seconds = 0.0;
        for request in requests {
            let field = format!("{}.model_path", request.field);
            let path = controlnet::resolve(self.root()?, &request.model, &field)?;
            let (net, s): (Arc<ControlNet>, f64) =
                self.controlnets.get_or_load(&path, || ControlNet::load(&self.runtime.env, &path, &self.sessions))?;
            seconds += s;
            let image_field = format!("{}.control_image", request.field);
            let image = control_image(request, &image_field)?;
            if let Some((tw, th)) = hires_size {
                // hires fix refuses init images, so there is no crop: resized from the image as sent
                second.push(ControlUnit::from_image(net.clone(), request, &image, tw, th));
            }
            let unit = match crop {
                None => ControlUnit::from_image(net, request, &image, width, height),
                Some((region, source)) => {
                    let cut = crop_control(&image, region, source, (width, height), &image_field)?;
                    ControlUnit::from_image(net, request, &cut, width, height)
                }
            };
            units.push(unit);
        }
        let guess = guess_mode(params, &units, warnings);
        units.iter_mut().chain(second.iter_mut()).for_each(|u| u.set_guess_mode(guess));
        if let Some(passes) = params.hires.as_ref().map(|h| h.controlnet) {
            units.iter_mut().for_each(|u| u.set_active(passes.in_first_pass()));
            second.iter_mut().for_each(|u| u.set_active(passes.in_second_pass()));
        }
        Ok((units, second, seconds))
    }
}

/// Whether `units` run in guess mode: `data.controlnet.guess_mode`, or a first unit whose config says
/// `global_pool_conditions`, as diffusers' ControlNet text-to-image and image-to-image pipelines decide
/// (`guess_mode or controlnet.nets[0].config.global_pool_conditions`). Its ControlNet inpaint pipeline has no such
/// line, so with a mask only the request's flag counts, and a warning says so.
fn guess_mode(params: &GenerateParams, units: &[ControlUnit], warnings: &mut Vec<String>) -> bool {
    let pooled_first = units.first().is_some_and(|u| u.net().global_pool());
    if params.controlnet_guess_mode || !pooled_first {
        return params.controlnet_guess_mode;
    }
    if params.mask_image.is_some() {
        warnings.push(format!(
            "{}: this ControlNet has global_pool_conditions, but as in diffusers' ControlNet inpaint pipeline \
             that does not turn guess mode on when inpainting; set data.controlnet.guess_mode to true for it",
            units[0].field()
        ));
        return false;
    }
    true
}

/// The control image `request` sends, decoded, and run through its preprocessor if it names one: with
/// `preprocessor: "canny"` the photo's edges as `cv2.Canny` finds them, stacked to three channels
/// ([`crate::image::canny`]). The preprocessor sees the whole image as sent, before any crop or resize, as in
/// diffusers' docs, where `cv2.Canny` runs on the user's image before the pipeline is called.
fn control_image(request: &ControlNetRequest, field: &str) -> Result<RgbImage> {
    let image = crate::image::source::load(&request.control_image, field)?;
    Ok(match request.preprocessor {
        None => image,
        Some(Preprocessor::Canny { low_threshold, high_threshold }) => canny_rgb(&image, low_threshold, high_threshold),
    })
}

/// `image` cut to `region` and resized to `width` × `height` as the init image is with `data.padding_mask_crop`
/// ([`mask_crop::crop`], [`mask_crop::fill`]). diffusers cuts the control image at the init image's crop
/// coordinates whatever its size; sdxlrt needs it to be the init image's size (`source`), so that those
/// coordinates mean the same pixels, and refuses it otherwise, naming `field`.
fn crop_control(
    image: &RgbImage,
    region: CropRegion,
    source: (u32, u32),
    (width, height): (u32, u32),
    field: &str,
) -> Result<RgbImage> {
    if (image.width, image.height) != source {
        return Err(Error::field(
            field,
            format!(
                "is {}×{} but the init image is {}×{}: with data.padding_mask_crop the control image must have the \
                 init image's size, since the mask's area is cut from it as from the init image",
                image.width, image.height, source.0, source.1
            ),
        ));
    }
    Ok(mask_crop::fill(&mask_crop::crop(image, region), width, height))
}
