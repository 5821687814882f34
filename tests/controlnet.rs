//! ControlNet (`data.controlnet`): the UNet's load-time residual inputs, parity with diffusers'
//! `StableDiffusionXLControlNetPipeline` on goldens made by onnx/make_controlnet.py from the same tiny weights
//! (latents after every step ≤ 1e-4 + 1e-5·|x|, image within ±1/255), and errors.

use ndarray::{ArrayD, IxDyn};
use sdxlrt::engine::Engine;
use sdxlrt::lora::formats::Component;
use sdxlrt::lora::LoraSet;
use sdxlrt::pipeline::SdxlPipeline;
use sdxlrt::runtime::controlnet_inputs::{down_input, MID_INPUT};
use sdxlrt::runtime::tensor::float_value;
use sdxlrt::runtime::{CancelToken, ModelSession, SessionConfig};

use crate::util::{fixtures, options_json};

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

/// Deterministic values in [-1, 1) of `shape`.
fn filled(shape: &[usize], seed: u32) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let v = (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 8_388_608.0 - 1.0);
    ArrayD::from_shape_vec(IxDyn(shape), v.collect()).unwrap()
}

/// The tiny UNet's skip-connection shapes at a 64×64 image (8×8 latents), batch 2: conv_in, the two resnets and
/// the downsampler of block 0, the two resnets of block 1; then the middle block.
const SKIPS: [[usize; 4]; 7] =
    [[2, 16, 8, 8], [2, 16, 8, 8], [2, 16, 8, 8], [2, 16, 4, 4], [2, 32, 4, 4], [2, 32, 4, 4], [2, 32, 4, 4]];

/// One UNet call on fixed inputs, with `residuals` (name, values) added to them.
fn unet_output(session: &ModelSession, residuals: Vec<(String, ArrayD<f32>)>) -> Vec<f32> {
    let mut inputs = vec![
        ("sample".to_string(), filled(&[2, 4, 8, 8], 1)),
        ("timestep".to_string(), ArrayD::from_elem(IxDyn(&[]), 500.0)),
        ("encoder_hidden_states".to_string(), filled(&[2, 77, 64], 2)),
        ("text_embeds".to_string(), filled(&[2, 32], 3)),
        ("time_ids".to_string(), ndarray::arr2(&[[64.0f32, 64.0, 0.0, 0.0, 64.0, 64.0]; 2]).into_dyn()),
    ];
    inputs.extend(residuals);
    let values = inputs
        .into_iter()
        .map(|(name, a)| {
            let elem = session.input(&name).unwrap().elem;
            let v = float_value(a, elem, "unet", &name).unwrap();
            (name, v)
        })
        .collect();
    session.run(values, &["out_sample"], &CancelToken::new()).unwrap().remove(0).iter().copied().collect()
}

#[test]
fn a_unet_given_controlnet_inputs_is_the_plain_unet_at_zero_residuals_and_moves_with_them() {
    let engine = engine();
    let env = &engine.runtime().env;
    let path = fixtures().join("tiny-sdxl/unet/model.onnx");
    let plain_config = SessionConfig { intra_op_threads: Some(1), ..Default::default() };
    let plain = ModelSession::load(env, &path, "unet", &plain_config).unwrap();
    let config = SessionConfig { controlnet_inputs: true, ..plain_config.clone() };
    let with_inputs = ModelSession::load(env, &path, "unet", &config).unwrap();
    assert_eq!(with_inputs.rewrites().unwrap().residual_inputs, 6);
    let names: Vec<String> = (0..6).map(down_input).chain([MID_INPUT.to_string()]).collect();
    let zeros: Vec<(String, ArrayD<f32>)> =
        names.iter().zip(SKIPS).map(|(n, s)| (n.clone(), ArrayD::zeros(IxDyn(&s)))).collect();
    let reference = unet_output(&plain, Vec::new());
    assert_eq!(unet_output(&with_inputs, zeros.clone()), reference, "zero residuals change nothing, to the bit");
    // Each residual reaches the output (conv_in's skip, the deepest skip, the middle block).
    for k in [0, 5, 6] {
        let mut r = zeros.clone();
        r[k].1 = filled(&SKIPS[k], 7 + k as u32);
        let moved = unet_output(&with_inputs, r);
        let diff = moved.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff > 1e-3, "residual {} moved the output by only {diff}", names[k]);
    }
}

#[test]
fn a_controlnet_variant_shares_the_text_encoders_and_vae_but_not_the_unet() {
    let engine = engine();
    let env = &engine.runtime().env;
    let config = SessionConfig { intra_op_threads: Some(1), ..Default::default() };
    let root = fixtures().join("tiny-sdxl");
    let base = SdxlPipeline::load(env, &root, &config).unwrap();
    assert!(!base.takes_controlnets());
    let cn_config = SessionConfig { controlnet_inputs: true, ..config.clone() };
    let cn = SdxlPipeline::load_variant(env, &root, &cn_config, &LoraSet::empty(), None, Some(&base)).unwrap();
    assert!(cn.takes_controlnets());
    assert!(cn.shares_graph(&base, Component::TextEncoder) && cn.shares_graph(&base, Component::TextEncoder2));
    assert!(!cn.shares_graph(&base, Component::Unet));
    // And back: a plain variant reusing the ControlNet one gets a plain UNet.
    let plain = SdxlPipeline::load_variant(env, &root, &config, &LoraSet::empty(), None, Some(&cn)).unwrap();
    assert!(!plain.takes_controlnets());
}
