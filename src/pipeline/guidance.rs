//! Classifier-free guidance: the UNet's unconditional and conditional halves combined, and diffusers'
//! `rescale_noise_cfg` (`guidance_rescale`), in float32 operation by operation as torch computes them.

use ndarray::{ArrayD, ArrayViewD, Axis};

/// The guided noise prediction of a UNet output `[uncond × batch, cond × batch, …]`:
/// `uncond + scale · (cond − uncond)` (diffusers' `noise_pred_uncond + guidance_scale * (noise_pred_text -
/// noise_pred_uncond)`), then, when `rescale` > 0, [`rescale`] toward the conditional half's spread.
pub fn guide(out: &ArrayD<f32>, batch: usize, scale: f32, rescale: f32) -> ArrayD<f32> {
    let uncond = out.slice_axis(Axis(0), (0..batch).into());
    let text = out.slice_axis(Axis(0), (batch..2 * batch).into());
    let mut pred = uncond.to_owned();
    ndarray::Zip::from(&mut pred).and(&text).for_each(|u, &c| *u += scale * (c - *u));
    if rescale > 0.0 {
        self::rescale(&mut pred, text, rescale);
    }
    pred
}

/// diffusers' `rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale)`, per image of the batch:
/// `φ · cfg · (std(text) / std(cfg)) + (1 − φ) · cfg`, with torch's unbiased standard deviation over all of an
/// image's elements (accumulated in float64, as torch does for float32 on the CPU, then rounded to float32) and
/// every product and sum rounded to float32 (`φ` and `1 − φ` rounded to float32 first, as torch does with a Python
/// scalar). An image whose guided prediction is constant (std 0) gets torch's infinities and NaNs, as diffusers does.
pub fn rescale(cfg: &mut ArrayD<f32>, text: ArrayViewD<'_, f32>, phi: f32) {
    let keep = (1.0 - f64::from(phi)) as f32;
    for (mut image, text) in cfg.axis_iter_mut(Axis(0)).zip(text.axis_iter(Axis(0))) {
        let ratio = std_f32(text.iter()) / std_f32(image.iter());
        image.mapv_inplace(|x| phi * (x * ratio) + keep * x);
    }
}

/// torch's `Tensor.std()` (Bessel's correction) of float32 values: mean and squared deviations in float64, the
/// result rounded to float32.
fn std_f32<'a>(values: impl Iterator<Item = &'a f32> + Clone) -> f32 {
    let (n, sum) = values.clone().fold((0usize, 0f64), |(n, s), &v| (n + 1, s + f64::from(v)));
    let mean = sum / n as f64;
    let squares: f64 = values.map(|&v| (f64::from(v) - mean).powi(2)).sum();
    (squares / (n as f64 - 1.0)).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, IxDyn};

    #[test]
    fn guidance_without_rescale_is_uncond_plus_scale_times_the_difference() {
        let out = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0, 2.0, 3.0, 0.0]).unwrap();
        assert_eq!(guide(&out, 1, 5.0, 0.0).into_raw_vec_and_offset().0, [11.0, -8.0]);
    }

    #[test]
    fn rescale_one_gives_the_conditional_spread_and_zero_leaves_the_prediction() {
        let text = array![[1.0f32, 3.0, 5.0, 7.0], [0.0, 0.0, 1.0, 1.0]].into_dyn();
        let cfg = array![[2.0f32, 10.0, 18.0, 26.0], [4.0, -4.0, 4.0, -4.0]].into_dyn();
        let mut full = cfg.clone();
        rescale(&mut full, text.view(), 1.0);
        // Per image: the result's std equals the conditional half's; its mean scales with it.
        for (got, text) in full.axis_iter(Axis(0)).zip(text.axis_iter(Axis(0))) {
            assert!((std_f32(got.iter()) - std_f32(text.iter())).abs() < 1e-6, "{got} vs {text}");
        }
        assert_eq!(full.index_axis(Axis(0), 0).iter().copied().collect::<Vec<_>>(), [0.5, 2.5, 4.5, 6.5]);
        let mut none = cfg.clone();
        rescale(&mut none, text.view(), 0.0);
        assert_eq!(none, cfg);
    }

    #[test]
    fn the_standard_deviation_is_unbiased_as_torchs() {
        // torch.tensor([1., 2., 3., 4.]).std() == 1.2909944
        assert_eq!(std_f32([1.0f32, 2.0, 3.0, 4.0].iter()), 1.290_994_4);
    }
}
