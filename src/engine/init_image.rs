//! The engine's image-to-image and inpainting inputs (`data.init_image`, `data.mask_image`): the images read
//! before any work (the mask blurred by `data.mask_blur`), cut to the mask's area with `data.padding_mask_crop` (and
//! the results put back afterwards), and the VAE encoder of the pipeline that encodes, loaded on the pipeline's
//! first such request and kept with it.

use std::borrow::Cow;
use std::time::Instant;

use super::Engine;
use crate::error::{Error, Result};
use crate::image::blur;
use crate::image::mask_crop::{self, CropRegion};
use crate::image::RgbImage;
use crate::pipeline::encode::{self, InitImage, VaeEncoder};
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::{inpaint, SdxlPipeline};
use crate::protocol::params::GenerateParams;

/// A request's init image and mask as decoded, before they are sized for the run.
pub(super) struct SourceImages {
    /// `data.init_image`.
    pub image: RgbImage,
    /// `data.mask_image`, blurred by `data.mask_blur`.
    pub mask: Option<RgbImage>,
}

impl Engine {
    /// The images `params` carries (paths, `data:` URLs or base64), decoded to RGB8; `None` for text-to-image.
    /// With `data.mask_blur` the mask is blurred here, as decoded ([`blur::gaussian_blur`]), so that everything
    /// after sees the blurred mask, as diffusers' pipeline does when its caller blurs the mask first.
    pub(super) fn read_init_images(params: &GenerateParams) -> Result<Option<SourceImages>> {
        let Some(text) = &params.init_image else { return Ok(None) };
        let image = crate::image::source::load(text, "data.init_image")?;
        let mask =
            params.mask_image.as_deref().map(|m| crate::image::source::load(m, "data.mask_image")).transpose()?.map(
                |mask| match params.mask_blur {
                    // Pillow receives the radius as a C float (Python's `PyArg_ParseTuple("f")` rounds the double).
                    Some(radius) if radius > 0.0 => blur::gaussian_blur(&mask, radius as f32),
                    _ => mask,
                },
            );
        Ok(Some(SourceImages { image, mask }))
    }

    /// `source` ready for `pipeline` at `width` × `height` (resized and scaled: [`encode::pixels`],
    /// [`inpaint::mask_pixels`]; with `data.padding_mask_crop` first cut to the mask's area, [`crop`]) with the
    /// encoder of the pipeline's VAE. Before the encoder loads, idle models are unloaded while memory use plus its
    /// graph would pass the cache's threshold (reported in `warnings`, as for a model load).
    pub(super) fn prepare_init_image(
        &self,
        pipeline: &SdxlPipeline,
        source: &SourceImages,
        (width, height): (u32, u32),
        pad: Option<u32>,
        warnings: &mut Vec<String>,
    ) -> Result<PreparedInit> {
        let region = pad.map(|pad| crop(source, (width, height), pad)).transpose()?;
        let (image, mask) = match region {
            Some(region) => {
                let cut =
                    |image: &RgbImage| Cow::Owned(mask_crop::fill(&mask_crop::crop(image, region), width, height));
                (cut(&source.image), source.mask.as_ref().map(cut))
            }
            None => (Cow::Borrowed(&source.image), source.mask.as_ref().map(Cow::Borrowed)),
        };
        let (encoder, encoder_load_seconds) = self.vae_encoder(pipeline, warnings)?;
        let init = InitImage {
            encoder,
            pixels: encode::pixels(&image, width, height),
            mask: mask.as_ref().map(|m| inpaint::mask_pixels(m, width, height)),
        };
        Ok(PreparedInit { init, region, encoder_load_seconds })
    }
}

impl Engine {
    /// The VAE encoder of `pipeline`'s VAE, loaded on first use (image-to-image, hires fix's pixel upscalers), and
    /// the seconds its load took (0 when it was loaded). Before it loads, idle models are unloaded while memory use
    /// plus its graph would pass the cache's threshold (reported in `warnings`, as for a model load).
    pub(super) fn vae_encoder(
        &self,
        pipeline: &SdxlPipeline,
        warnings: &mut Vec<String>,
    ) -> Result<(std::sync::Arc<VaeEncoder>, f64)> {
        let started = Instant::now();
        let mut loaded = false;
        let encoder = pipeline.vae_encoder(|path| {
            loaded = true;
            let graph = path.parent().unwrap_or(path);
            let evicted = self.cache.make_memory_room(self.host_bytes(|| ModelDir::folder_bytes(graph)));
            warnings.extend(evicted.iter().map(|m| super::cache::eviction_warning(m)));
            VaeEncoder::load(&self.runtime.env, path, &self.sessions)
        })?;
        Ok((encoder, if loaded { started.elapsed().as_secs_f64() } else { 0.0 }))
    }
}

/// An init image ready for the pipeline.
pub(super) struct PreparedInit {
    /// The pipeline's input.
    pub init: InitImage,
    /// With `data.padding_mask_crop`: the region inpainted, which [`put_back`] returns the images to.
    pub region: Option<CropRegion>,
    /// Seconds spent loading the VAE encoder (0 once it is loaded).
    pub encoder_load_seconds: f64,
}

/// The region `data.padding_mask_crop` (`pad`) inpaints in `source` for a `width` × `height` run
/// ([`mask_crop::crop_region`]). Errors name `data.mask_image` when the mask is not the init image's size (the crop
/// and the overlay read both at the same pixels) or masks nothing.
fn crop(source: &SourceImages, (width, height): (u32, u32), pad: u32) -> Result<CropRegion> {
    let Some(mask) = &source.mask else {
        return Err(Error::field("data.padding_mask_crop", "needs data.mask_image"));
    };
    let (image, mask_size) = ((source.image.width, source.image.height), (mask.width, mask.height));
    if mask_size != image {
        return Err(Error::field(
            "data.mask_image",
            format!(
                "is {}×{} but the init image is {}×{}: with data.padding_mask_crop the mask must have the init \
                 image's size, since the area is cut from both and the result is put back through the mask",
                mask_size.0, mask_size.1, image.0, image.1
            ),
        ));
    }
    mask_crop::crop_region(mask, width, height, pad).ok_or_else(|| {
        Error::field("data.mask_image", "is black everywhere: with data.padding_mask_crop there is no area to inpaint")
    })
}

/// `images` (generated for the `region` of `source`) put back into the init image through the mask
/// ([`mask_crop::overlay`]); the images of a run without a region as they are.
pub(super) fn put_back(source: &SourceImages, region: Option<CropRegion>, images: Vec<RgbImage>) -> Vec<RgbImage> {
    match (region, &source.mask) {
        (Some(region), Some(mask)) => {
            images.iter().map(|image| mask_crop::overlay(&source.image, mask, image, region)).collect()
        }
        _ => images,
    }
}
