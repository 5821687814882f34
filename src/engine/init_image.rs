//! The engine's image-to-image and inpainting inputs (`data.init_image`, `data.mask_image`): the images read
//! before any work, and the VAE encoder of the pipeline that encodes, loaded on the pipeline's first such request
//! and kept with it.

use std::time::Instant;

use super::Engine;
use crate::error::Result;
use crate::image::RgbImage;
use crate::pipeline::encode::{self, InitImage, VaeEncoder};
use crate::pipeline::model_dir::ModelDir;
use crate::pipeline::{inpaint, SdxlPipeline};
use crate::protocol::params::GenerateParams;

/// A request's init image and mask as decoded, before they are sized for the run.
pub(super) struct SourceImages {
    /// `data.init_image`.
    pub image: RgbImage,
    /// `data.mask_image`.
    pub mask: Option<RgbImage>,
}

impl Engine {
    /// The images `params` carries (paths, `data:` URLs or base64), decoded to RGB8; `None` for text-to-image.
    pub(super) fn read_init_images(params: &GenerateParams) -> Result<Option<SourceImages>> {
        let Some(text) = &params.init_image else { return Ok(None) };
        let image = crate::image::source::load(text, "data.init_image")?;
        let mask =
            params.mask_image.as_deref().map(|m| crate::image::source::load(m, "data.mask_image")).transpose()?;
        Ok(Some(SourceImages { image, mask }))
    }

    /// `source` ready for `pipeline` at `width` × `height` (resized and scaled: [`encode::pixels`],
    /// [`inpaint::mask_pixels`]) with the encoder of the pipeline's VAE; also the seconds spent loading that
    /// encoder (0 once it is loaded). Before the encoder loads, idle models are unloaded while memory use plus its
    /// graph would pass the cache's threshold (reported in `warnings`, as for a model load).
    pub(super) fn prepare_init_image(
        &self,
        pipeline: &SdxlPipeline,
        source: &SourceImages,
        (width, height): (u32, u32),
        warnings: &mut Vec<String>,
    ) -> Result<(InitImage, f64)> {
        let started = Instant::now();
        let mut loaded = false;
        let encoder = pipeline.vae_encoder(|path| {
            loaded = true;
            let graph = path.parent().unwrap_or(path);
            let evicted = self.cache.make_memory_room(self.host_bytes(|| ModelDir::folder_bytes(graph)));
            warnings.extend(evicted.iter().map(|m| super::cache::eviction_warning(m)));
            VaeEncoder::load(&self.runtime.env, path, &self.sessions)
        })?;
        let seconds = if loaded { started.elapsed().as_secs_f64() } else { 0.0 };
        let init = InitImage {
            encoder,
            pixels: encode::pixels(&source.image, width, height),
            mask: source.mask.as_ref().map(|m| inpaint::mask_pixels(m, width, height)),
        };
        Ok((init, seconds))
    }
}
