//! Load-time attention fusion: the attention cores of an exported graph become ONNX Runtime's
//! `com.microsoft.MultiHeadAttention`, so any ONNX export of SDXL (ours, optimum's, anyone's made with
//! `torch.onnx.export`) runs on the fused kernels without being exported again.
//!
//! PyTorch exports `F.scaled_dot_product_attention` (diffusers' `AttnProcessor2_0`, the UNet's and the VAE's
//! attention) as the chain below, over [batch, heads, tokens, head_dim] tensors; ONNX Runtime runs it op by op,
//! writing the [batch, heads, tokens, tokens] scores to memory twice. `MultiHeadAttention` takes the projections
//! before the head split and computes the same softmax(Q Kᵀ · scale) V with its fused CPU kernel (and flash /
//! memory-efficient attention on CUDA). Measured: a bench-size SDXL UNet at 512² on 2 CPU cores, about 2 % per step
//! (fewer, larger kernels; CPU time there is mostly Conv and MatMul); on an H100 the same fusion made at export time
//! took a full-size fp16 CFG step from 88 to 59 ms (docs/benchmarks.md). Which graphs go through it is the session
//! loader's choice (`SessionConfig::fuses_model`: not the text encoders; float32 only on the CPU).
//!
//! ```text
//! q3 ─ Reshape[B,-1,H,D] ─ Transpose(0,2,1,3) ─ Mul(s) ─┐
//! k3 ─ Reshape[B,-1,H,D] ─ Transpose(0,2,3,1) ─ Mul(s) ─ MatMul ─ Softmax(-1) ─┐
//! v3 ─ Reshape[B,-1,H,D] ─ Transpose(0,2,1,3) ───────────────────────────────── MatMul ─ Transpose(0,2,1,3)
//!                                                                     ─ Reshape[B,-1,H·D] ─ out
//! ```
//!
//! becomes `out = MultiHeadAttention(q3, k3, v3; num_heads = H, scale)`. The match is strict, so nothing else
//! can change meaning: the same head count in all three reshapes; every intermediate value read only by the
//! next op of the chain; the scale either PyTorch's default, √(1/√D) applied to both sides where D is read from
//! the query's shape (then MultiHeadAttention's default 1/√head_dim), or two constants (then their product);
//! no control-flow subgraphs in the model. Anything else stays as exported. Nodes left without a reader (the
//! head splits and the scale's shape arithmetic) go too.

use std::collections::HashSet;

use super::onnx_proto::edit::{encode_node, AttributeValue, Edit};
use super::onnx_proto::graph::Graph;
use super::onnx_proto::{Node, OnnxModel};

/// ONNX Runtime's contrib operator domain.
const MS_DOMAIN: &str = "com.microsoft";

/// Adds to `edit` the fusion of every attention core of `model` that matches exactly (see the module) and
/// returns how many were fused.
pub fn plan(model: &OnnxModel, edit: &mut Edit) -> usize {
    let graph = Graph::new(model);
    if graph.has_subgraphs() {
        return 0;
    }
    let fused: Vec<Core> = model.nodes.iter().enumerate().filter_map(|(i, node)| graph.match_core(i, node)).collect();
    if fused.is_empty() {
        return 0;
    }
    let mut dropped: HashSet<usize> = HashSet::new();
    let mut reads: Vec<&str> = Vec::new();
    for core in &fused {
        dropped.extend(core.nodes);
        reads.extend([core.query.as_str(), core.key.as_str(), core.value.as_str()]);
        let name = match core.prefix.as_str() {
            "" => format!("sdxlrt_fused/{}/MultiHeadAttention", core.nodes[3]),
            prefix => format!("{prefix}/MultiHeadAttention"),
        };
        let node = encode_node(
            &name,
            MS_DOMAIN,
            "MultiHeadAttention",
            &[&core.query, &core.key, &core.value],
            &[&core.output],
            &core.attributes(),
        );
        edit.insert_nodes.entry(core.nodes[6]).or_default().push(node);
    }
    // Whatever fed only the dropped nodes (head splits, the scale's shape arithmetic) goes with them.
    let produced: HashSet<&str> = fused.iter().map(|c| c.output.as_str()).collect();
    graph.drop_with_inputs(dropped, &reads, &produced, edit);
    edit.opsets.push((MS_DOMAIN.to_string(), 1));
    fused.len()
}

/// One matched attention core.
struct Core {
    /// Node indices: the scores MatMul, the two scale Muls, Softmax, the output MatMul, Transpose, Reshape.
    nodes: [usize; 7],
    query: String,
    key: String,
    value: String,
    output: String,
    heads: i64,
    /// `None`: MultiHeadAttention's default, 1/√head_dim.
    scale: Option<f32>,
    /// The name of the Softmax without its last part (`/…/attn1`; empty for an unnamed Softmax), for the new
    /// node's name.
    prefix: String,
}

impl Core {
    fn attributes(&self) -> Vec<(&'static str, AttributeValue)> {
        let mut a = vec![("num_heads", AttributeValue::Int(self.heads))];
        if let Some(scale) = self.scale {
            a.push(("scale", AttributeValue::Float(scale)));
        }
        a
    }
}

impl<'m> Graph<'m> {
    fn is_transpose(&self, node: &Node, perm: &[i64]) -> bool {
        node.is("Transpose") && node.attribute("perm").is_some_and(|a| a.ints == perm)
    }

    /// The head count of a head-splitting Reshape's target shape [B, -1, H, D]: a constant, or a Concat of four
    /// parts whose third is a constant.
    fn heads(&self, shape: &str) -> Option<i64> {
        let heads = match self.ints(shape) {
            Some(v) if v.len() == 4 => v[2],
            Some(_) => return None,
            None => {
                let (_, concat) = self.produced_by(shape, "Concat")?;
                match (concat.inputs.len(), self.ints(concat.inputs.get(2)?)) {
                    (4, Some(h)) if h.len() == 1 => h[0],
                    _ => return None,
                }
            }
        };
        (heads > 0).then_some(heads)
    }

    /// True for a target shape of three dimensions (a constant of length 3, or a Concat of three one-element parts).
    fn is_rank3_shape(&self, shape: &str) -> bool {
        if let Some(v) = self.ints(shape) {
            return v.len() == 3;
        }
        self.produced_by(shape, "Concat").is_some_and(|(_, c)| {
            c.inputs.len() == 3
                && c.inputs
                    .iter()
                    .all(|x| self.produced_by(x, "Unsqueeze").is_some() || self.ints(x).is_some_and(|v| v.len() == 1))
        })
    }

    /// The projection before a head split: `split` must be `Transpose(perm)` of `Reshape(x, [B,-1,H,D])`.
    /// Returns x, H and the Reshape's output.
    fn head_split(&self, split: &str, perm: &[i64]) -> Option<(&'m str, i64, &'m str)> {
        let (_, t) = self.producer(split).filter(|(_, n)| self.is_transpose(n, perm))?;
        let (_, r) = self.produced_by(&t.inputs[0], "Reshape")?;
        Some((&r.inputs[0], self.heads(r.inputs.get(1)?)?, &r.outputs[0]))
    }

    /// The operands of a scale `Mul`: the side produced by a Transpose (the head split) and the factor.
    fn scaled<'a>(&self, mul: &'a Node) -> Option<(&'a str, &'a str)> {
        let [a, b] = mul.inputs.as_slice() else { return None };
        match (self.produced_by(a, "Transpose"), self.produced_by(b, "Transpose")) {
            (Some(_), None) => Some((a, b)),
            (None, Some(_)) => Some((b, a)),
            _ => None,
        }
    }

    /// The attention scale of factors `fq` (on the query) and `fk` (on the key): `Some(None)` for PyTorch's default
    /// (both √x of one x = 1/√D, D the last dimension of the query's head split `q_split` or `q_heads`),
    /// `Some(Some(s))` for two constants, `None` otherwise.
    fn scale(&self, fq: &str, fk: &str, q_split: &str, q_heads: &str) -> Option<Option<f32>> {
        if let (Some(a), Some(b)) = (self.scalar(fq), self.scalar(fk)) {
            return Some(Some(a * b));
        }
        let (_, sq) = self.produced_by(fq, "Sqrt")?;
        let (_, sk) = self.produced_by(fk, "Sqrt")?;
        if sq.inputs[0] != sk.inputs[0] {
            return None;
        }
        let (_, div) = self.produced_by(self.skip_casts(&sq.inputs[0]), "Div")?;
        if self.scalar(&div.inputs[0]) != Some(1.0) {
            return None;
        }
        let (_, root) = self.produced_by(&div.inputs[1], "Sqrt")?;
        let (_, slice) = self.produced_by(self.skip_casts(&root.inputs[0]), "Slice")?;
        let (_, shape) = self.produced_by(&slice.inputs[0], "Shape")?;
        let last_dim = (shape.inputs[0] == q_split || shape.inputs[0] == q_heads)
            && shape.attributes.is_empty()
            && self.ints(slice.inputs.get(1)?) == Some(vec![-1])
            && self.ints(slice.inputs.get(2)?).is_some_and(|e| e.len() == 1 && e[0] >= i64::from(i32::MAX))
            && slice.inputs.get(3).is_none_or(|a| a.is_empty() || self.ints(a) == Some(vec![0]))
            && slice.inputs.get(4).is_none_or(|s| s.is_empty() || self.ints(s) == Some(vec![1]));
        last_dim.then_some(None)
    }

    /// The attention core whose Softmax is node `i`, if it matches exactly.
    fn match_core(&self, i: usize, softmax: &'m Node) -> Option<Core> {
        let default_opset = self.model.opsets.iter().find(|(d, _)| d.is_empty() || d == "ai.onnx").map(|o| o.1);
        let axis = softmax.int("axis").or_else(|| default_opset.filter(|&v| v >= 13).map(|_| -1));
        if !softmax.is("Softmax") || !matches!(axis, Some(-1 | 3)) {
            return None;
        }
        let (scores_i, scores) = self.produced_by(&softmax.inputs[0], "MatMul")?;
        self.only_reader(&scores.outputs[0])?;
        let (mq_i, mq) = self.produced_by(&scores.inputs[0], "Mul")?;
        let (mk_i, mk) = self.produced_by(&scores.inputs[1], "Mul")?;
        if mq_i == mk_i
            || self.only_reader(&mq.outputs[0])?.0 != scores_i
            || self.only_reader(&mk.outputs[0])?.0 != scores_i
        {
            return None;
        }
        let (q_split, fq) = self.scaled(mq)?;
        let (k_split, fk) = self.scaled(mk)?;
        let (query, heads, q_heads) = self.head_split(q_split, &[0, 2, 1, 3])?;
        let (key, k_heads, _) = self.head_split(k_split, &[0, 2, 3, 1])?;
        let scale = self.scale(fq, fk, q_split, q_heads)?;
        let (out_i, out) = self.only_reader(&softmax.outputs[0]).filter(|(_, n)| n.is("MatMul"))?;
        if out.inputs[0] != softmax.outputs[0] {
            return None;
        }
        let (value, v_heads, _) = self.head_split(&out.inputs[1], &[0, 2, 1, 3])?;
        let (merge_i, merge) =
            self.only_reader(&out.outputs[0]).filter(|(_, n)| self.is_transpose(n, &[0, 2, 1, 3]))?;
        let (join_i, join) = self.only_reader(&merge.outputs[0]).filter(|(_, n)| n.is("Reshape"))?;
        if heads != k_heads || heads != v_heads || !self.is_rank3_shape(join.inputs.get(1)?) {
            return None;
        }
        let prefix = softmax.name.rsplit_once('/').map_or(softmax.name.as_str(), |(p, _)| p).to_string();
        Some(Core {
            nodes: [scores_i, mq_i, mk_i, i, out_i, merge_i, join_i],
            query: query.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            output: join.outputs[0].clone(),
            heads,
            scale,
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::onnx_proto::test_models::{count, edited, read as model};

    /// Fuses `path` and parses the result.
    fn fused(path: &str) -> (OnnxModel, OnnxModel, usize) {
        let m = model(path);
        let mut edit = Edit::default();
        let n = plan(&m, &mut edit);
        let out = edited(&m, &edit);
        (m, out, n)
    }

    #[test]
    fn every_sdpa_attention_of_our_exports_becomes_one_multi_head_attention() {
        for path in ["tiny-sdxl/unet/model.onnx", "tiny-sdxl-folded/unet/model.onnx", "tiny-sdxl-fp16/unet/model.onnx"]
        {
            let (before, after, n) = fused(path);
            assert_eq!((n, count(&before, "Softmax")), (24, 24), "{path}");
            assert_eq!((count(&after, "Softmax"), count(&after, "MultiHeadAttention")), (0, 24), "{path}");
            // The head splits and the scale arithmetic went with the cores; the projections stayed.
            assert_eq!(count(&after, "Transpose"), count(&before, "Transpose") - 24 * 4, "{path}");
            assert_eq!(count(&after, "Sqrt"), 0, "{path}");
            assert_eq!(after.initializers.len(), before.initializers.len(), "{path}");
            assert!(after.opsets.contains(&(MS_DOMAIN.to_string(), 1)), "{path}");
            let mha = after.nodes.iter().find(|n| n.op_type == "MultiHeadAttention").unwrap();
            assert_eq!(mha.domain, MS_DOMAIN);
            assert_eq!(
                mha.int("num_heads"),
                Some(4),
                "{path}: tiny-sdxl's first attention (down_blocks.1) has 4 heads"
            );
            assert!(mha.attribute("scale").is_none(), "{path}: PyTorch's default scale is MultiHeadAttention's");
            assert!(mha.inputs[0].ends_with("to_q/MatMul_output_0"), "{path}: {:?}", mha.inputs);
        }
        let (_, vae, n) = fused("tiny-sdxl/vae_decoder/model.onnx");
        assert_eq!((n, count(&vae, "MultiHeadAttention")), (1, 1));
        assert_eq!(vae.nodes.iter().find(|n| n.op_type == "MultiHeadAttention").unwrap().int("num_heads"), Some(1));
    }

    #[test]
    fn graphs_without_the_pattern_are_left_as_they_are() {
        // CLIP's attention adds a causal mask before the softmax; the fused export has no Softmax left.
        for path in ["tiny-sdxl/text_encoder/model.onnx", "tiny-sdxl-fused-unet/unet/model.onnx"] {
            let m = model(path);
            let mut edit = Edit::default();
            assert_eq!(plan(&m, &mut edit), 0, "{path}");
            assert!(edit.is_empty(), "{path}");
        }
    }

    #[test]
    fn a_core_whose_scores_are_read_elsewhere_is_not_fused() {
        let m = model("tiny-sdxl/unet/model.onnx");
        let graph = Graph::new(&m);
        let cores: Vec<usize> = (0..m.nodes.len()).filter(|&i| graph.match_core(i, &m.nodes[i]).is_some()).collect();
        assert_eq!(cores.len(), 24);
        // Pretend the first core's scores are also a graph output: that core no longer matches, the rest do.
        let softmax = &m.nodes[cores[0]];
        let mut graph = Graph::new(&m);
        graph.outputs.insert(&softmax.inputs[0]);
        assert!(graph.match_core(cores[0], softmax).is_none());
        assert!(cores[1..].iter().all(|&i| graph.match_core(i, &m.nodes[i]).is_some()));
        // And a Softmax over another axis never matches.
        let mut other_axis = softmax.clone();
        other_axis.attributes.iter_mut().find(|a| a.name == "axis").unwrap().int = Some(1);
        assert!(Graph::new(&m).match_core(cores[0], &other_axis).is_none());
    }
}
