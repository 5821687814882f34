//! The engine's image-to-image input (`data.init_image`): the image read before any work, and the VAE encoder of
//! the pipeline that encodes it, loaded on the pipeline's first image-to-image request and kept with it.

use std::time::Instant;

use super::Engine;
use crate::error::Result;
use crate::image::RgbImage;
use crate::pipeline::encode::{self, InitImage, VaeEncoder};
use crate::pipeline::SdxlPipeline;

/// The request field of the init image.
pub(super) const FIELD: &str = "data.init_image";

impl Engine {
    /// The init image `text` names or holds (a path, a `data:` URL or base64), decoded to RGB8.
    pub(super) fn read_init_image(text: &str) -> Result<RgbImage> {
        crate::image::source::load(text, FIELD)
    }

    /// `image` ready for `pipeline` at `width` × `height`: resized and scaled ([`encode::pixels`]) with the encoder
    /// of the pipeline's VAE; also the seconds spent loading that encoder (0 once it is loaded).
    pub(super) fn prepare_init_image(
        &self,
        pipeline: &SdxlPipeline,
        image: &RgbImage,
        width: u32,
        height: u32,
    ) -> Result<(InitImage, f64)> {
        let started = Instant::now();
        let mut loaded = false;
        let encoder = pipeline.vae_encoder(|path| {
            loaded = true;
            VaeEncoder::load(&self.runtime.env, path, &self.sessions)
        })?;
        let seconds = if loaded { started.elapsed().as_secs_f64() } else { 0.0 };
        Ok((InitImage { encoder, pixels: encode::pixels(image, width, height) }, seconds))
    }
}
