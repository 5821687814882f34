//! VAE decode: latents ÷ the model's `scaling_factor` → `vae_decoder` → RGB8, one image at a time (the peak-memory
//! stage). The ONNX graphs here are fp32 or fp16 as exported; diffusers' fp16 upcast applies to torch VAEs only.

use ndarray::{ArrayD, Axis, Ix3};

use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::runtime::tensor::float_value;
use crate::runtime::{CancelToken, ModelSession};

/// Decode one latent `[1, 4, h, w]` into an image.
pub fn decode_one(
    vae: &ModelSession,
    latent: ArrayD<f32>,
    scaling_factor: f32,
    seed: u64,
    cancel: &CancelToken,
) -> Result<RgbImage> {
    let spec = vae.input("latent_sample")?;
    let scaled = latent.mapv(|v| v / scaling_factor);
    let value = float_value(scaled, spec.elem, "vae_decoder", "latent_sample")?;
    let mut out = vae.run(vec![("latent_sample".to_string(), value)], &["sample"], cancel)?;
    let image = out.remove(0);
    let chw = image
        .index_axis_move(Axis(0), 0)
        .into_dimensionality::<Ix3>()
        .map_err(|e| Error::model_invalid(vae.path(), format!("vae_decoder output is not [1, 3, H, W]: {e}")))?;
    if chw.shape()[0] != 3 {
        return Err(Error::model_invalid(vae.path(), format!("vae_decoder gives {} channels, not 3", chw.shape()[0])));
    }
    Ok(RgbImage::from_vae_output(chw.view(), seed))
}
