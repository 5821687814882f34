//! Load-time ControlNet inputs for a UNet graph: the graph gets one input per skip connection
//! (`down_block_additional_residual_<i>`) and one for the middle block (`mid_block_additional_residual`), each
//! added where diffusers' `UNet2DConditionModel.forward` adds `down_block_additional_residuals` and
//! `mid_block_additional_residual`: a skip connection's residual on the way into the up block's concatenation
//! only (the down path continues with the value as it was), the middle block's on its output, for every reader.
//! Any UNet exported by `torch.onnx` (ours, optimum's, folded or not) can then take a ControlNet without a second
//! export; the file is not touched.
//!
//! How the places are found: every resnet of an up block starts with `torch.cat([hidden_states,
//! res_hidden_states], dim=1)`, exported as a two-input `Concat` node named `/up_blocks.<b>/Concat` or
//! `/up_blocks.<b>/Concat_<k>` (in call order). The skip connections are those nodes' second inputs, consumed from
//! the last down residual to the first, so the j-th concatenation (block, then call order) takes residual
//! `n - 1 - j`. The first concatenation's first input is the middle block's output. A graph without such nodes
//! (renamed by an optimizer) is refused by the caller.

use super::onnx_proto::edit::{encode_node, encode_tensor_input, Edit};
use super::onnx_proto::graph::Graph;
use super::onnx_proto::OnnxModel;

/// The graph inputs of the skip connections are this followed by their index.
pub const DOWN_INPUT_PREFIX: &str = "down_block_additional_residual_";

/// The graph input of skip connection `i` (diffusers' order: `conv_in` first).
pub fn down_input(i: usize) -> String {
    format!("{DOWN_INPUT_PREFIX}{i}")
}

/// The graph input of the middle block's residual.
pub const MID_INPUT: &str = "mid_block_additional_residual";

/// The skip-connection concatenations of `model` in call order (see the module docs), as node indices.
fn skip_concats(model: &OnnxModel) -> Vec<usize> {
    let mut found: Vec<((u64, u64), usize)> = model
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.is("Concat") && n.inputs.len() == 2 && matches!(n.int("axis"), Some(1) | Some(-3)))
        .filter_map(|(i, n)| {
            let rest = n.name.strip_prefix("/up_blocks.")?;
            let (block, op) = rest.split_once('/')?;
            let call = match op.strip_prefix("Concat")? {
                "" => 0,
                k => k.strip_prefix('_')?.parse().ok()?,
            };
            Some(((block.parse().ok()?, call), i))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, i)| i).collect()
}

/// Adds the residual inputs to `edit` (see the module docs); returns how many skip connections got one (0: the
/// graph has no recognizable up-block concatenation, or control flow, and `edit` is unchanged). The inputs take
/// `data_type`, the UNet's float type.
pub fn plan(model: &OnnxModel, edit: &mut Edit, data_type: i32) -> usize {
    let graph = Graph::new(model);
    let concats = skip_concats(model);
    if graph.has_subgraphs() || concats.is_empty() {
        return 0;
    }
    let n = concats.len();
    for (j, &c) in concats.iter().enumerate() {
        let node = &model.nodes[c];
        let input = down_input(n - 1 - j);
        let sum = format!("{input}/sum");
        let add = encode_node(&format!("{input}/Add"), "", "Add", &[&node.inputs[1], &input], &[&sum], &[]);
        edit.insert_nodes.entry(c).or_default().push(add);
        edit.rewire.entry(c).or_default().push((1, sum));
        edit.add_inputs.push(encode_tensor_input(&input, data_type, 4));
    }
    // The middle block's output, for every reader (the first up block, and any shape computation).
    let mid = &model.nodes[concats[0]].inputs[0];
    let sum = format!("{MID_INPUT}/sum");
    let readers = graph.readers.get(mid.as_str()).cloned().unwrap_or_default();
    let first = readers.iter().copied().min().unwrap_or(concats[0]);
    let add = encode_node(&format!("{MID_INPUT}/Add"), "", "Add", &[mid, MID_INPUT], &[&sum], &[]);
    edit.insert_nodes.entry(first).or_default().push(add);
    for r in readers {
        let positions = model.nodes[r].inputs.iter().enumerate().filter(|(_, x)| *x == mid).map(|(p, _)| p);
        for p in positions.collect::<Vec<_>>() {
            edit.rewire.entry(r).or_default().push((p, sum.clone()));
        }
    }
    edit.add_inputs.push(encode_tensor_input(MID_INPUT, data_type, 4));
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::onnx_proto::test_models as testutil;
    use crate::runtime::onnx_proto::DT_FLOAT;

    #[test]
    fn every_skip_connection_and_the_middle_block_get_an_input_of_our_tiny_unet() {
        let model = testutil::read("tiny-sdxl/unet/model.onnx");
        let names: Vec<&str> = skip_concats(&model).iter().map(|&i| model.nodes[i].name.as_str()).collect();
        assert_eq!(
            names,
            [
                "/up_blocks.0/Concat",
                "/up_blocks.0/Concat_1",
                "/up_blocks.0/Concat_2",
                "/up_blocks.1/Concat",
                "/up_blocks.1/Concat_1",
                "/up_blocks.1/Concat_2"
            ]
        );
        let mut edit = Edit::default();
        assert_eq!(plan(&model, &mut edit, DT_FLOAT), 6);
        let edited = testutil::edited(&model, &edit);
        // The last skip concatenation reads conv_in's output plus residual 0; the first, residual 5.
        let by_name = |name: &str| edited.nodes.iter().find(|n| n.name == name).unwrap().clone();
        assert_eq!(by_name("/up_blocks.1/Concat_2").inputs[1], "down_block_additional_residual_0/sum");
        assert_eq!(by_name("/up_blocks.0/Concat").inputs[1], "down_block_additional_residual_5/sum");
        assert_eq!(by_name("/up_blocks.0/Concat").inputs[0], "mid_block_additional_residual/sum");
        let add = by_name("down_block_additional_residual_0/Add");
        assert_eq!(add.inputs, [by_name("/conv_in/Conv").outputs[0].as_str(), "down_block_additional_residual_0"]);
        // The down path still reads the value without the residual.
        let conv_out = by_name("/conv_in/Conv").outputs[0].clone();
        assert!(edited.nodes.iter().any(|n| n.name.starts_with("/down_blocks.0/") && n.inputs.contains(&conv_out)));
        // Nothing reads the middle block's output directly any more, except the Add.
        let mid = by_name("mid_block_additional_residual/Add").inputs[0].clone();
        let readers: Vec<&str> =
            edited.nodes.iter().filter(|n| n.inputs.contains(&mid)).map(|n| n.name.as_str()).collect();
        assert_eq!(readers, ["mid_block_additional_residual/Add"]);
    }

    #[test]
    fn graphs_without_up_block_concatenations_are_left_alone() {
        let model = testutil::read("tiny-sdxl/vae_decoder/model.onnx");
        let mut edit = Edit::default();
        assert_eq!(plan(&model, &mut edit, DT_FLOAT), 0);
        assert!(edit.is_empty());
    }
}
