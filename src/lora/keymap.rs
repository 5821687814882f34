//! Which ONNX initializer a LoRA module patches, and in which layout.
//!
//! A graph's targets come from two sources, in this order:
//! 1. **Names.** Our exports (`onnx/export_onnx.py`, no constant folding) and optimum's `--no-constant-folding`
//!    keep every parameter's diffusers/transformers name: initializer `<module>.weight` in torch layout
//!    (`[out, in]`, convolutions `[out, in, kh, kw]`).
//! 2. **Node scopes.** Folded exports (optimum's default) rename Linear weights `onnx::MatMul_NNN` and store them
//!    transposed (`[in, out]`), but the consuming node keeps the module path in its name:
//!    `/down_blocks.1/attentions.0/transformer_blocks.0/attn1/to_q/MatMul` → module
//!    `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`. `MatMul` weights are `[in, out]`; `Gemm`
//!    weights are `[out, in]` with `transB = 1` and `[in, out]` without; `Conv` weights keep torch's layout.
//!
//! Normalization layers (LyCORIS `w_norm` / `b_norm`) are modules too: `<module>.weight` of one dimension, else a
//! `LayerNormalization`'s (or ONNX Runtime `GroupNorm`'s) scale input, or — a folded GroupNorm, exported as
//! InstanceNormalization between Reshapes, then `Mul` by the scale and `Add` of the shift, both folded to
//! `[C, 1, 1]` constants (`onnx::Mul_NNN`) — the constant that `Mul` takes.
//!
//! Biases (for `diff_b` / `b_norm` / `lora_B.bias`) resolve the same two ways: an initializer `<module>.bias`
//! (folded exports keep most of those names), else the `[out]` initializer a module's `Conv`, `Gemm` or norm node
//! takes as its third input, or a folded Linear's or GroupNorm's `Add` (`/…/to_out.0/Add`) takes beside its
//! `MatMul`'s or scale `Mul`'s output.
//!
//! Text-encoder module names are compared without transformers' `text_model.` prefix (folded CLIPTextModel
//! exports drop it from the node scopes).
//!
//! kohya names (`_` for `.`, SGM block names for SDXL UNets) are matched by turning every graph module into its
//! kohya spellings, as A1111's `networks.py` does, instead of guessing where the `_` were dots. The SGM ↔
//! diffusers block map is the inverse of diffusers' `_maybe_map_sgm_blocks_to_diffusers` and
//! `_convert_unet_lora_key` (`loaders/lora_conversion_utils.py`).

use std::collections::HashMap;

use super::formats::{Component, ModuleName};
use crate::runtime::onnx_proto::{Node, OnnxModel};

/// How an initializer stores a module's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// torch layout: `[out, in]` or `[out, in, kh, kw]`.
    Torch,
    /// `[in, out]` (a folded export's MatMul weight).
    Transposed,
}

/// An initializer a module maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Index in [`OnnxModel::initializers`].
    pub index: usize,
    /// Its layout.
    pub layout: Layout,
}

/// The LoRA-addressable modules of one graph.
#[derive(Debug, Clone, Default)]
pub struct GraphMap {
    modules: HashMap<String, Target>,
    /// Module → its bias initializer.
    biases: HashMap<String, usize>,
    kohya: HashMap<String, String>,
}

/// `text_model.encoder…` → `encoder…` for text encoders; unchanged for the UNet.
fn normalize(module: &str, component: Component) -> &str {
    match component {
        Component::Unet => module,
        _ => module.strip_prefix("text_model.").unwrap_or(module),
    }
}

/// The module path of a node name: `/a.0/b/c/MatMul` → `a.0.b.c`.
fn node_scope(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.trim_start_matches('/').split('/').collect();
    if parts.len() < 2 || parts[..parts.len() - 1].iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(parts[..parts.len() - 1].join("."))
}

impl GraphMap {
    /// Index the weights of `model`, a graph of `component`.
    pub fn build(model: &OnnxModel, component: Component) -> Self {
        let (mut modules, mut biases) = (HashMap::new(), HashMap::new());
        let name = |scope: &str| normalize(scope, component).to_string();
        for (index, t) in model.initializers.iter().enumerate() {
            if let Some(m) = t.name.strip_suffix(".weight") {
                if matches!(t.dims.len(), 1 | 2 | 4) {
                    modules.insert(name(m), Target { index, layout: Layout::Torch });
                }
            } else if let Some(m) = t.name.strip_suffix(".bias") {
                if t.dims.len() == 1 {
                    biases.insert(name(m), index);
                }
            }
        }
        for (scope, weight, bias) in consumed_weights(model) {
            if let Some(bias) = bias {
                biases.entry(name(&scope)).or_insert(bias);
            }
            modules.entry(name(&scope)).or_insert(weight);
        }
        for (scope, scale, shift) in folded_affine(model) {
            if let Some(scale) = scale {
                modules.entry(name(&scope)).or_insert(Target { index: scale, layout: Layout::Torch });
            }
            biases.entry(name(&scope)).or_insert(shift);
        }
        biases.retain(|m, _| modules.contains_key(m));
        let mut kohya = HashMap::new();
        let lpb = layers_per_block(&modules);
        for m in modules.keys() {
            match component {
                Component::Unet => {
                    if let Some(sgm) = sgm_name(m, lpb, |i| {
                        modules.keys().any(|k| k.starts_with(&format!("up_blocks.{i}.attentions.")))
                    }) {
                        kohya.entry(sgm.replace('.', "_")).or_insert_with(|| m.clone());
                    }
                    kohya.insert(m.replace('.', "_"), m.clone());
                }
                _ => {
                    kohya.insert(format!("text_model_{}", m.replace('.', "_")), m.clone());
                    kohya.entry(m.replace('.', "_")).or_insert_with(|| m.clone());
                }
            }
        }
        GraphMap { modules, biases, kohya }
    }

    /// Number of addressable modules.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// True when the graph has no addressable module.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The graph's module path of a LoRA module name.
    fn module<'a>(&'a self, name: &'a ModuleName, component: Component) -> Option<&'a str> {
        match name {
            ModuleName::Dotted(m) => Some(normalize(m, component)),
            ModuleName::Flat(f) => self.kohya.get(f.as_str()).map(String::as_str),
        }
    }

    /// The initializer a LoRA module patches, if the graph has it.
    pub fn resolve(&self, name: &ModuleName, component: Component) -> Option<Target> {
        self.module(name, component).and_then(|m| self.modules.get(m)).copied()
    }

    /// The bias initializer (`[out]`) of a LoRA module, if the graph has the module and it has a bias.
    pub fn resolve_bias(&self, name: &ModuleName, component: Component) -> Option<Target> {
        let index = *self.module(name, component).and_then(|m| self.biases.get(m))?;
        Some(Target { index, layout: Layout::Torch })
    }
}

/// A per-channel constant: an initializer `[C]`, or `[C, 1, 1]` as a folded GroupNorm stores it.
fn channel_vector(model: &OnnxModel, name: &str) -> Option<usize> {
    model.initializer_index(name).filter(|&i| match model.initializers[i].dims.as_slice() {
        [c] | [c, 1, 1] => *c > 1,
        _ => false,
    })
}

/// (scope, weight, bias) of every node that takes a module's weight as its second input: `MatMul`, `Gemm`, `Conv`
/// (2-D or 4-D weights) and `LayerNormalization` / `GroupNorm` (a channel vector), with the bias it takes third.
fn consumed_weights(model: &OnnxModel) -> Vec<(String, Target, Option<usize>)> {
    let mut out = Vec::new();
    for node in &model.nodes {
        let (layout, norm) = match node.op_type.as_str() {
            "MatMul" => (Layout::Transposed, false),
            "Gemm" if node.int("transB").unwrap_or(0) != 0 => (Layout::Torch, false),
            "Gemm" => (Layout::Transposed, false),
            "Conv" => (Layout::Torch, false),
            "LayerNormalization" | "GroupNorm" => (Layout::Torch, true),
            _ => continue,
        };
        let (Some(weight), Some(scope)) = (node.inputs.get(1), node_scope(&node.name)) else { continue };
        let index = if norm {
            channel_vector(model, weight)
        } else {
            model.initializer_index(weight).filter(|&i| matches!(model.initializers[i].dims.len(), 2 | 4))
        };
        let Some(index) = index else { continue };
        let bias = node.inputs.get(2).and_then(|b| channel_vector(model, b));
        out.push((scope, Target { index, layout }, bias));
    }
    out
}

/// The two inputs of a binary node, in both orders.
fn both_ways(node: &Node) -> [(&str, &str); 2] {
    let (a, b) = (node.inputs[0].as_str(), node.inputs[1].as_str());
    [(a, b), (b, a)]
}

/// (scope, scale, shift) of the per-channel affine steps of folded exports: a GroupNorm's
/// `Mul(Reshape(InstanceNormalization(…)), scale)` then `Add(…, shift)`, and a Linear's `Add(bias, MatMul output)`
/// (scale `None`), each `Add` in the scope of the node whose output it shifts.
fn folded_affine(model: &OnnxModel) -> Vec<(String, Option<usize>, usize)> {
    let producer: HashMap<&str, &Node> =
        model.nodes.iter().flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n))).collect();
    let made_by = |value: &str, op: &str| producer.get(value).filter(|n| n.is(op)).copied();
    // Output of a MatMul or a GroupNorm scale Mul → (its scope, the scale).
    let mut shifted: HashMap<&str, (String, Option<usize>)> = HashMap::new();
    for node in &model.nodes {
        let (Some(scope), Some(output)) = (node_scope(&node.name), node.outputs.first()) else { continue };
        if node.is("MatMul") {
            shifted.insert(output, (scope, None));
        } else if node.is("Mul") && node.inputs.len() == 2 {
            for (x, scale) in both_ways(node) {
                let normalized =
                    made_by(x, "Reshape").and_then(|r| made_by(r.inputs.first()?, "InstanceNormalization")).is_some();
                if let (Some(index), true) = (channel_vector(model, scale), normalized) {
                    shifted.insert(output, (scope.clone(), Some(index)));
                }
            }
        }
    }
    let mut out = Vec::new();
    for node in model.nodes.iter().filter(|n| n.is("Add") && n.inputs.len() == 2) {
        let Some(scope) = node_scope(&node.name) else { continue };
        for (shift, x) in both_ways(node) {
            let (Some((of, scale)), Some(shift)) = (shifted.get(x), channel_vector(model, shift)) else {
                continue;
            };
            if *of == scope {
                out.push((scope.clone(), *scale, shift));
            }
        }
    }
    out
}

/// `layers_per_block` of a UNet: resnets in `down_blocks.0` (2 for SDXL).
fn layers_per_block(modules: &HashMap<String, Target>) -> usize {
    modules
        .keys()
        .filter_map(|k| k.strip_prefix("down_blocks.0.resnets.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(2, |j| j + 1)
}

/// The SGM/LDM name (kohya's SDXL UNet) of a diffusers UNet module, e.g. `down_blocks.1.attentions.0.proj_in`
/// → `input_blocks.4.1.proj_in` (with 2 layers per block); `None` for modules outside the block structure that
/// have no SGM twin we know.
pub fn sgm_name(module: &str, lpb: usize, up_has_attention: impl Fn(usize) -> bool) -> Option<String> {
    let resnet = |rest: &[&str]| -> String {
        let first = match rest.first().copied() {
            Some("conv1") => "in_layers.2",
            Some("conv2") => "out_layers.3",
            Some("time_emb_proj") => "emb_layers.1",
            Some("conv_shortcut") => "skip_connection",
            Some("norm1") => "in_layers.0",
            Some("norm2") => "out_layers.0",
            Some(other) => other,
            None => "",
        };
        std::iter::once(first).chain(rest.iter().skip(1).copied()).collect::<Vec<_>>().join(".")
    };
    let p: Vec<&str> = module.split('.').collect();
    let num = |s: &str| s.parse::<usize>().ok();
    match p.as_slice() {
        ["down_blocks", i, kind, j, rest @ ..] => {
            let (i, j) = (num(i)?, num(j)?);
            match *kind {
                "attentions" => Some(format!("input_blocks.{}.1.{}", (lpb + 1) * i + j + 1, rest.join("."))),
                "resnets" => Some(format!("input_blocks.{}.0.{}", (lpb + 1) * i + j + 1, resnet(rest))),
                "downsamplers" => Some(format!("input_blocks.{}.0.op", (lpb + 1) * (i + 1))),
                _ => None,
            }
        }
        ["up_blocks", i, kind, j, rest @ ..] => {
            let (i, j) = (num(i)?, num(j)?);
            match *kind {
                "attentions" => Some(format!("output_blocks.{}.1.{}", (lpb + 1) * i + j, rest.join("."))),
                "resnets" => Some(format!("output_blocks.{}.0.{}", (lpb + 1) * i + j, resnet(rest))),
                "upsamplers" => Some(format!(
                    "output_blocks.{}.{}.conv",
                    (lpb + 1) * i + lpb,
                    if up_has_attention(i) { 2 } else { 1 }
                )),
                _ => None,
            }
        }
        ["mid_block", "attentions", "0", rest @ ..] => Some(format!("middle_block.1.{}", rest.join("."))),
        ["mid_block", "resnets", j, rest @ ..] => Some(format!("middle_block.{}.{}", 2 * num(j)?, resnet(rest))),
        ["conv_in"] => Some("input_blocks.0.0".into()),
        ["conv_norm_out"] => Some("out.0".into()),
        ["conv_out"] => Some("out.2".into()),
        ["time_embedding", "linear_1"] => Some("time_embed.0".into()),
        ["time_embedding", "linear_2"] => Some("time_embed.2".into()),
        ["add_embedding", "linear_1"] => Some("label_emb.0.0".into()),
        ["add_embedding", "linear_2"] => Some("label_emb.0.2".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn model(p: &str) -> OnnxModel {
        OnnxModel::read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p)).unwrap()
    }

    #[test]
    fn sgm_names_of_sdxl_blocks() {
        let attn = |_| true;
        let cases = [
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
            ),
            ("down_blocks.2.attentions.1.proj_in", "input_blocks.8.1.proj_in"),
            ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
            ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
            ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
            ("mid_block.attentions.0.proj_out", "middle_block.1.proj_out"),
            ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
            (
                "up_blocks.0.attentions.2.transformer_blocks.9.ff.net.2",
                "output_blocks.2.1.transformer_blocks.9.ff.net.2",
            ),
            ("up_blocks.1.resnets.0.conv2", "output_blocks.3.0.out_layers.3"),
            ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
            ("time_embedding.linear_2", "time_embed.2"),
            ("add_embedding.linear_1", "label_emb.0.0"),
        ];
        for (d, s) in cases {
            assert_eq!(sgm_name(d, 2, attn).as_deref(), Some(s), "{d}");
        }
        assert_eq!(sgm_name("up_blocks.2.upsamplers.0.conv", 2, |_| false).as_deref(), Some("output_blocks.8.1.conv"));
    }

    #[test]
    fn named_and_folded_exports_map_the_same_modules() {
        for comp in [Component::Unet, Component::TextEncoder, Component::TextEncoder2] {
            let named = model(&format!("tiny-sdxl/{}/model.onnx", comp.folder()));
            let folded = model(&format!("tiny-sdxl-folded/{}/model.onnx", comp.folder()));
            let a = GraphMap::build(&named, comp);
            let b = GraphMap::build(&folded, comp);
            let q = match comp {
                Component::Unet => "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                _ => "text_model.encoder.layers.0.self_attn.q_proj",
            };
            let name = ModuleName::Dotted(q.into());
            let ta = a.resolve(&name, comp).unwrap();
            let tb = b.resolve(&name, comp).unwrap();
            assert_eq!(ta.layout, Layout::Torch, "{comp:?}");
            assert_eq!(tb.layout, Layout::Transposed, "{comp:?}");
            // Every module the named export has, the folded export resolves too, to a tensor of the same values.
            for (m, t) in &a.modules {
                let Some(u) = b.modules.get(m) else { panic!("{comp:?}: folded export lacks {m}") };
                let (x, y) = (named.read_f32(t.index).unwrap(), folded.read_f32(u.index).unwrap());
                let dims = &named.initializers[t.index].dims;
                if u.layout == Layout::Transposed {
                    let (o, i) = (dims[0] as usize, dims[1] as usize);
                    assert!((0..o * i).all(|k| x[k] == y[(k % i) * o + k / i]), "{m}");
                } else {
                    assert_eq!(x, y, "{m}");
                }
            }
        }
    }

    #[test]
    fn biases_resolve_by_name_and_else_by_the_node_that_adds_them() {
        for (folder, comp) in
            [("tiny-sdxl-folded/unet", Component::Unet), ("tiny-sdxl/text_encoder", Component::TextEncoder)]
        {
            let named = model(&format!("{folder}/model.onnx"));
            let by_name = GraphMap::build(&named, comp);
            // The same graph with every `.bias` name spelled `_BIAS` (same length, so the protobuf stays valid):
            // only the Conv / Gemm inputs and the folded Linears' Adds can say whose bias each is.
            let mut bytes = named.bytes().to_vec();
            for at in (0..bytes.len() - 4).rev() {
                if &bytes[at..at + 5] == b".bias" {
                    bytes[at..at + 5].copy_from_slice(b"_BIAS");
                }
            }
            let renamed = OnnxModel::parse(named.path(), bytes).unwrap();
            let by_node = GraphMap::build(&renamed, comp);
            assert!(by_name.biases.len() > 20, "{folder}: {} biases", by_name.biases.len());
            assert_eq!(by_node.biases, by_name.biases, "{folder}");
            let m = match comp {
                Component::Unet => "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
                _ => "text_model.encoder.layers.0.self_attn.q_proj",
            };
            let t = by_node.resolve_bias(&ModuleName::Dotted(m.into()), comp).unwrap();
            assert!(renamed.initializers[t.index].name.ends_with("_BIAS"), "{folder}: {m}");
        }
        // Modules without a bias (attention q/k/v in the UNet) have none.
        let unet = GraphMap::build(&model("tiny-sdxl/unet/model.onnx"), Component::Unet);
        let q = ModuleName::Dotted("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q".into());
        assert!(unet.resolve(&q, Component::Unet).is_some() && unet.resolve_bias(&q, Component::Unet).is_none());
        let conv = ModuleName::Flat("input_blocks_1_0_in_layers_2".into());
        assert!(unet.resolve_bias(&conv, Component::Unet).is_some());
    }

    #[test]
    fn norm_layers_resolve_in_named_and_folded_exports() {
        let group = ModuleName::Dotted("down_blocks.0.resnets.0.norm1".into());
        let sgm = ModuleName::Flat("input_blocks_1_0_in_layers_0".into());
        let layer = ModuleName::Dotted("down_blocks.1.attentions.0.transformer_blocks.0.norm1".into());
        for folder in ["tiny-sdxl", "tiny-sdxl-folded"] {
            let m = model(&format!("{folder}/unet/model.onnx"));
            let map = GraphMap::build(&m, Component::Unet);
            for name in [&group, &layer] {
                let (w, b) = (map.resolve(name, Component::Unet).unwrap(), map.resolve_bias(name, Component::Unet));
                let (w, b) = (&m.initializers[w.index], &m.initializers[b.unwrap().index]);
                assert_eq!((w.numel(), b.numel()), (w.dims[0] as usize, b.dims[0] as usize), "{folder}: {name:?}");
            }
            assert_eq!(map.resolve(&sgm, Component::Unet), map.resolve(&group, Component::Unet), "{folder}");
            let w = &m.initializers[map.resolve(&group, Component::Unet).unwrap().index];
            // The folded GroupNorm's scale is a renamed [C, 1, 1] constant, found through its Mul.
            let folded = folder.ends_with("folded");
            assert_eq!((w.dims.len(), w.name.starts_with("onnx::Mul")), if folded { (3, true) } else { (1, false) });
        }
        let te = GraphMap::build(&model("tiny-sdxl-folded/text_encoder/model.onnx"), Component::TextEncoder);
        let flat = ModuleName::Flat("text_model_encoder_layers_0_layer_norm1".into());
        assert!(te.resolve(&flat, Component::TextEncoder).is_some());
        assert!(te.resolve_bias(&flat, Component::TextEncoder).is_some());
    }

    #[test]
    fn kohya_names_resolve_through_sgm_and_flat_spellings() {
        let unet = GraphMap::build(&model("tiny-sdxl/unet/model.onnx"), Component::Unet);
        let te = GraphMap::build(&model("tiny-sdxl-folded/text_encoder/model.onnx"), Component::TextEncoder);
        let flat = |s: &str| ModuleName::Flat(s.into());
        let want = unet.resolve(
            &ModuleName::Dotted("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q".into()),
            Component::Unet,
        );
        assert!(want.is_some());
        assert_eq!(unet.resolve(&flat("input_blocks_4_1_transformer_blocks_0_attn1_to_q"), Component::Unet), want);
        assert_eq!(
            unet.resolve(&flat("down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"), Component::Unet),
            want
        );
        assert!(unet.resolve(&flat("input_blocks_3_0_op"), Component::Unet).is_some());
        assert!(unet.resolve(&flat("output_blocks_2_2_conv"), Component::Unet).is_some());
        assert!(unet.resolve(&flat("input_blocks_1_0_in_layers_2"), Component::Unet).is_some());
        assert!(unet.resolve(&flat("input_blocks_99_1_proj_in"), Component::Unet).is_none());
        assert!(te.resolve(&flat("text_model_encoder_layers_0_mlp_fc1"), Component::TextEncoder).is_some());
    }
}
