//! Load-time sub-pixel upsampling: a nearest-neighbour 2× upsample followed by a 3×3 convolution (diffusers'
//! `Upsample2D`, three in the SDXL VAE decoder, two in the UNet) becomes four 2×2 convolutions over the small
//! input, one per output phase, interleaved by `DepthToSpace`.
//!
//! After the upsample every 2×2 block of the big image repeats one input pixel, so each output pixel of the 3×3
//! convolution sees only 2×2 distinct input pixels; which ones, and with which sums of the 3×3 taps, depends only
//! on the output pixel's phase (row and column parity). Per dimension, with taps w₀ w₁ w₂:
//!
//! ```text
//! even output 2y:   w₀·x[y−1] + (w₁+w₂)·x[y]        (2×2 kernel rows [w₀, w₁+w₂], one row of padding before)
//! odd output 2y+1:  (w₀+w₁)·x[y] + w₂·x[y+1]        (2×2 kernel rows [w₀+w₁, w₂], one row of padding after)
//! ```
//!
//! and the 2-D kernels are the products of the row and column cases. Zero padding of the big image is zero
//! padding of the small one, so the borders agree too. The four phase outputs are concatenated along channels in
//! DCR order and `DepthToSpace(2)` interleaves them into the upsampled result. Same function, 16 multiply-adds per
//! input pixel and channel pair instead of 36 (the upsampled image has four times the pixels): the three VAE
//! upsample convolutions are 28 % of the multiply-adds of a 512² SDXL decode, which gets 10–15 % faster on 2 CPU
//! cores (docs/benchmarks.md). The tap sums are formed in f64 and rounded once, so results differ from the
//! exported graph's only by float rounding order (≈1e-6 on a decoded image in [-1, 1]).
//!
//! The match is strict: `Resize` in `nearest` mode whose scales are the constant [1, 1, 2, 2] and whose
//! coordinate and rounding modes map output index i to input i / 2 (PyTorch's export: `asymmetric` + `floor`),
//! read only by a `Conv` with a float32 3×3 initializer weight, pads 1, stride 1, dilation 1, one group; no
//! control-flow subgraphs in the model. Anything else stays as exported.

use std::collections::HashSet;

use super::onnx_proto::edit::{encode_node, encode_tensor, AttributeValue, Edit};
use super::onnx_proto::graph::Graph;
use super::onnx_proto::{encode_floats, Node, OnnxModel, DT_FLOAT};
use crate::error::Result;

/// The output phases (row parity, column parity) in `DepthToSpace`'s DCR channel order.
const PHASES: [(usize, usize); 4] = [(0, 0), (0, 1), (1, 0), (1, 1)];

/// Adds to `edit` the rewrite of every nearest 2× upsample + 3×3 convolution of `model` that matches exactly
/// (see the module) and returns how many were rewritten. Convolutions whose weight is in `keep` (initializers the
/// caller replaces, e.g. merged LoRA weights) stay as exported. Errors only when a matched weight cannot be read.
pub fn plan(model: &OnnxModel, edit: &mut Edit, keep: &HashSet<usize>) -> Result<usize> {
    let graph = Graph::new(model);
    if graph.has_subgraphs() {
        return Ok(0);
    }
    let matches: Vec<Upsample> = model
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| graph.match_upsample(i, n))
        .filter(|u| !keep.contains(&u.weight))
        .collect();
    let mut dropped = HashSet::new();
    let mut kept = HashSet::new();
    let mut reads = Vec::new();
    for u in &matches {
        let (resize, conv) = (&model.nodes[u.resize], &model.nodes[u.conv]);
        let w = model.read_f32(u.weight)?;
        let dims = &model.initializers[u.weight].dims;
        let (cout, cin) = (dims[0], dims[1]);
        let names = Names::new(conv, u.conv);
        let input = resize.inputs[0].as_str();
        let bias = conv.inputs.get(2).map(String::as_str).filter(|b| !b.is_empty());
        let mut nodes = Vec::with_capacity(6);
        for (p, &(py, px)) in PHASES.iter().enumerate() {
            let kernel = phase_kernel(&w, py, px);
            edit.add_initializers.push(encode_tensor(
                &names.weights[p],
                &[cout, cin, 2, 2],
                DT_FLOAT,
                &encode_floats(&kernel, DT_FLOAT),
            ));
            let mut inputs = vec![input, names.weights[p].as_str()];
            inputs.extend(bias);
            let pads = vec![1 - py as i64, 1 - px as i64, py as i64, px as i64];
            let attributes = [
                ("kernel_shape", AttributeValue::Ints(vec![2, 2])),
                ("pads", AttributeValue::Ints(pads)),
                ("strides", AttributeValue::Ints(vec![1, 1])),
                ("dilations", AttributeValue::Ints(vec![1, 1])),
                ("group", AttributeValue::Int(1)),
            ];
            nodes.push(encode_node(&names.convs[p], "", "Conv", &inputs, &[&names.outputs[p]], &attributes));
        }
        let outputs: Vec<&str> = names.outputs.iter().map(String::as_str).collect();
        let concat = [("axis", AttributeValue::Int(1))];
        nodes.push(encode_node(&names.concat, "", "Concat", &outputs, &[&names.phases], &concat));
        let d2s = [("blocksize", AttributeValue::Int(2)), ("mode", AttributeValue::Str("DCR"))];
        nodes.push(encode_node(&names.depth_to_space, "", "DepthToSpace", &[&names.phases], &[&conv.outputs[0]], &d2s));
        edit.insert_nodes.entry(u.conv).or_default().extend(nodes);
        dropped.extend([u.resize, u.conv]);
        kept.insert(conv.outputs[0].as_str());
        reads.push(input);
        reads.extend(bias);
        if graph.readers.get(model.initializers[u.weight].name.as_str()).is_some_and(|r| r.len() == 1) {
            edit.drop_initializers.insert(u.weight);
        }
    }
    // The scales' constants go with the Resize.
    graph.drop_with_inputs(dropped, &reads, &kept, edit);
    Ok(matches.len())
}

/// One matched upsample: node indices of the `Resize` and the `Conv`, and the initializer index of the weight.
struct Upsample {
    resize: usize,
    conv: usize,
    weight: usize,
}

/// Names of what replaces one convolution (node names under the convolution's, value and weight names under
/// its output's and weight's).
struct Names {
    convs: Vec<String>,
    outputs: Vec<String>,
    weights: Vec<String>,
    concat: String,
    phases: String,
    depth_to_space: String,
}

impl Names {
    fn new(conv: &Node, index: usize) -> Self {
        let node = match conv.name.as_str() {
            "" => format!("sdxlrt_subpixel/{index}"),
            name => name.to_string(),
        };
        let (out, weight) = (&conv.outputs[0], &conv.inputs[1]);
        let phase = |base: &str| PHASES.iter().map(|(py, px)| format!("{base}/phase{py}{px}")).collect();
        Names {
            convs: phase(&node),
            outputs: phase(out),
            weights: phase(weight),
            concat: format!("{node}/phases"),
            phases: format!("{out}/phases"),
            depth_to_space: format!("{node}/depth_to_space"),
        }
    }

    /// Every value and initializer name this adds.
    fn values(&self) -> impl Iterator<Item = &str> {
        self.outputs.iter().chain(&self.weights).map(String::as_str).chain([self.phases.as_str()])
    }
}

/// The 2×2 kernel [cout, cin, 2, 2] of output phase (`py`, `px`) from a 3×3 kernel `w` [cout, cin, 3, 3]:
/// each of its taps is the sum of the 3×3 taps that land on the same input pixel (see the module).
fn phase_kernel(w: &[f32], py: usize, px: usize) -> Vec<f32> {
    // The 3×3 taps (per dimension) summed into the 2×2 kernel's first and second tap, for each parity.
    const TAPS: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];
    let mut out = Vec::with_capacity(w.len() / 9 * 4);
    for k in w.chunks_exact(9) {
        for rows in TAPS[py] {
            for cols in TAPS[px] {
                let sum: f64 = rows.iter().flat_map(|&r| cols.iter().map(move |&c| f64::from(k[r * 3 + c]))).sum();
                out.push(sum as f32);
            }
        }
    }
    out
}

/// The input index `Resize` in `nearest` mode reads for output index `x` at scale 2 from an input of `len`
/// pixels, under `coordinate` and `rounding` (ONNX's `coordinate_transformation_mode` and `nearest_mode`);
/// `None` for the modes this rewrite does not take.
fn nearest_source(x: usize, len: usize, coordinate: &str, rounding: &str) -> Option<usize> {
    let x = x as f64;
    let original = match coordinate {
        "asymmetric" => x / 2.0,
        "half_pixel" | "pytorch_half_pixel" => (x + 0.5) / 2.0 - 0.5,
        _ => return None,
    };
    let index = match rounding {
        "floor" => original.floor(),
        "ceil" => original.ceil(),
        "round_prefer_floor" if original.fract().abs() == 0.5 => original.floor(),
        "round_prefer_ceil" if original.fract().abs() == 0.5 => original.ceil(),
        "round_prefer_floor" | "round_prefer_ceil" => original.round(),
        _ => return None,
    };
    Some(index.clamp(0.0, (len - 1) as f64) as usize)
}

impl Graph<'_> {
    /// The upsample + convolution starting at node `i`, if it matches exactly.
    fn match_upsample(&self, i: usize, resize: &Node) -> Option<Upsample> {
        if !resize.is("Resize") || !self.is_nearest_doubling(resize) {
            return None;
        }
        let (conv_i, conv) = self.only_reader(&resize.outputs[0])?;
        if !conv.is("Conv") || conv.inputs[0] != resize.outputs[0] {
            return None;
        }
        let weight = self.model.initializer_index(conv.inputs.get(1)?)?;
        let w = &self.model.initializers[weight];
        let ones = |name: &str| conv.attribute(name).is_none_or(|a| a.ints.iter().all(|&v| v == 1));
        let plain = w.data_type == DT_FLOAT
            && w.dims.len() == 4
            && w.dims[2..] == [3, 3]
            && conv.int("group").unwrap_or(1) == 1
            && ones("strides")
            && ones("dilations")
            && conv.attribute("pads").is_some_and(|a| a.ints == [1, 1, 1, 1])
            && conv.attribute("kernel_shape").is_none_or(|a| a.ints == [3, 3])
            && conv.attribute("auto_pad").and_then(|a| a.string.as_deref()).is_none_or(|p| p == "NOTSET");
        let names = Names::new(conv, conv_i);
        let fresh = names.values().all(|v| !self.is_named(v));
        (plain && fresh).then_some(Upsample { resize: i, conv: conv_i, weight })
    }

    /// True for a `Resize` that doubles the last two dimensions by repeating each pixel.
    fn is_nearest_doubling(&self, resize: &Node) -> bool {
        let opset = self.model.opsets.iter().find(|(d, _)| d.is_empty() || d == "ai.onnx").map_or(0, |o| o.1);
        let string = |name: &str, default: &'static str| {
            resize.attribute(name).map_or(Some(default.to_string()), |a| a.string.clone())
        };
        // Opset 10's Resize is (X, scales) and resizes like `asymmetric` + `floor`; later ones are
        // (X, roi, scales, sizes) with the modes as attributes.
        let (scales, coordinate, rounding) = match opset {
            10 => (resize.inputs.get(1), Some("asymmetric".to_string()), Some("floor".to_string())),
            11.. => {
                let sizes = resize.inputs.get(3).is_some_and(|s| !s.is_empty());
                if sizes || resize.attribute("axes").is_some() {
                    return false;
                }
                (
                    resize.inputs.get(2),
                    string("coordinate_transformation_mode", "half_pixel"),
                    string("nearest_mode", "round_prefer_floor"),
                )
            }
            _ => return false,
        };
        let (Some(coordinate), Some(rounding)) = (coordinate, rounding) else { return false };
        string("mode", "nearest").as_deref() == Some("nearest")
            && scales.and_then(|s| self.floats(s)).is_some_and(|s| s == [1.0, 1.0, 2.0, 2.0])
            && (0..8).all(|x| nearest_source(x, 4, &coordinate, &rounding) == Some(x / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::onnx_proto::test_models::{count, edited, read as model};

    /// Rewrites `path` and parses the result.
    fn rewritten(path: &str) -> (OnnxModel, OnnxModel, usize) {
        let m = model(path);
        let mut edit = Edit::default();
        let n = plan(&m, &mut edit, &HashSet::new()).unwrap();
        let out = edited(&m, &edit);
        (m, out, n)
    }

    #[test]
    fn every_upsample_convolution_of_our_exports_becomes_four_phase_convolutions() {
        // The tiny VAE decoder has four up blocks (three upsample), the tiny UNet two (one upsamples).
        for (path, expected) in [("tiny-sdxl/vae_decoder/model.onnx", 3), ("tiny-sdxl/unet/model.onnx", 1)] {
            let (before, after, n) = rewritten(path);
            assert_eq!((n, count(&before, "Resize")), (expected, expected), "{path}");
            assert_eq!((count(&after, "Resize"), count(&after, "DepthToSpace")), (0, expected), "{path}");
            assert_eq!(count(&after, "Conv"), count(&before, "Conv") + 3 * expected, "{path}");
            // Each 3×3 upsample weight is replaced by four 2×2 ones.
            assert_eq!(after.initializers.len(), before.initializers.len() + 3 * expected, "{path}");
            let phase = after.nodes.iter().find(|n| n.name.ends_with("upsamplers.0/conv/Conv/phase01")).unwrap();
            assert_eq!(phase.attribute("kernel_shape").unwrap().ints, [2, 2], "{path}");
            assert_eq!(phase.attribute("pads").unwrap().ints, [1, 0, 0, 1], "{path}");
            let w = after.initializer_index(&phase.inputs[1]).unwrap();
            assert_eq!(after.initializers[w].dims[2..], [2, 2], "{path}");
        }
    }

    #[test]
    fn phase_kernels_sum_the_taps_that_land_on_the_same_input_pixel() {
        let w: Vec<f32> = (1..=9).map(|v| v as f32).collect(); // rows [1 2 3] [4 5 6] [7 8 9]
        assert_eq!(phase_kernel(&w, 0, 0), [1.0, 2.0 + 3.0, 4.0 + 7.0, 5.0 + 6.0 + 8.0 + 9.0]);
        assert_eq!(phase_kernel(&w, 0, 1), [1.0 + 2.0, 3.0, 4.0 + 5.0 + 7.0 + 8.0, 6.0 + 9.0]);
        assert_eq!(phase_kernel(&w, 1, 0), [1.0 + 4.0, 2.0 + 3.0 + 5.0 + 6.0, 7.0, 8.0 + 9.0]);
        assert_eq!(phase_kernel(&w, 1, 1), [1.0 + 2.0 + 4.0 + 5.0, 3.0 + 6.0, 7.0 + 8.0, 9.0]);
    }

    #[test]
    fn only_resizes_that_repeat_each_pixel_twice_are_taken() {
        assert!((0..8).all(|x| nearest_source(x, 4, "asymmetric", "floor") == Some(x / 2)));
        assert!((0..8).all(|x| nearest_source(x, 4, "half_pixel", "round_prefer_floor") == Some(x / 2)));
        // half_pixel + floor reads the previous pixel for even outputs; align_corners is not a repeat.
        assert_eq!(nearest_source(2, 4, "half_pixel", "floor"), Some(0));
        assert_eq!(nearest_source(2, 4, "align_corners", "floor"), None);

        let m = model("tiny-sdxl/vae_decoder/model.onnx");
        let graph = Graph::new(&m);
        let resize = m.nodes.iter().position(|n| n.is("Resize")).unwrap();
        assert!(graph.match_upsample(resize, &m.nodes[resize]).is_some());
        let with = |attr: &str, value: &str| {
            let mut node = m.nodes[resize].clone();
            node.attributes.iter_mut().find(|a| a.name == attr).unwrap().string = Some(value.to_string());
            graph.match_upsample(resize, &node).is_none()
        };
        assert!(with("mode", "linear"));
        assert!(with("nearest_mode", "ceil"));
        assert!(with("coordinate_transformation_mode", "align_corners"));
        // A weight the caller replaces (a merged LoRA) keeps its convolution as exported.
        let conv = graph.only_reader(&m.nodes[resize].outputs[0]).unwrap().1;
        let keep = HashSet::from([m.initializer_index(&conv.inputs[1]).unwrap()]);
        assert_eq!(plan(&m, &mut Edit::default(), &keep).unwrap(), 2);
    }

    #[test]
    fn graphs_without_the_pattern_are_left_as_they_are() {
        let m = model("tiny-sdxl/text_encoder/model.onnx");
        let mut edit = Edit::default();
        assert_eq!(plan(&m, &mut edit, &HashSet::new()).unwrap(), 0);
        assert!(edit.is_empty());
    }
}
