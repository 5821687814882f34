//! An index of a model's top-level graph for load-time rewrites ([`crate::runtime::fuse_attention`],
//! [`crate::runtime::subpixel_upsample`]): who produces and who reads each value, the values of small constants,
//! and the removal of nodes a rewrite leaves without readers.

use std::collections::{HashMap, HashSet};

use super::edit::Edit;
use super::{Node, OnnxModel};

/// Who produces and who reads each value of a model's top-level graph.
pub(crate) struct Graph<'m> {
    pub(crate) model: &'m OnnxModel,
    pub(crate) producer: HashMap<&'m str, usize>,
    pub(crate) readers: HashMap<&'m str, Vec<usize>>,
    /// The graph's outputs (a value read from outside).
    pub(crate) outputs: HashSet<&'m str>,
}

impl<'m> Graph<'m> {
    /// Index `model`.
    pub(crate) fn new(model: &'m OnnxModel) -> Self {
        let mut producer = HashMap::new();
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in model.nodes.iter().enumerate() {
            for o in &n.outputs {
                producer.insert(o.as_str(), i);
            }
            for x in n.inputs.iter().filter(|x| !x.is_empty()) {
                readers.entry(x.as_str()).or_default().push(i);
            }
        }
        let outputs = model.outputs.iter().map(String::as_str).collect();
        Graph { model, producer, readers, outputs }
    }

    /// True when a node has a control-flow body (`If`, `Loop`, `Scan`), which may read any value of this graph
    /// without the index seeing it: rewrites leave such models alone.
    pub(crate) fn has_subgraphs(&self) -> bool {
        self.model.nodes.iter().any(|n| n.attributes.iter().any(|a| a.subgraph))
    }

    /// True when some node or the graph's outputs use `value` as a name.
    pub(crate) fn is_named(&self, value: &str) -> bool {
        self.producer.contains_key(value)
            || self.readers.contains_key(value)
            || self.outputs.contains(value)
            || self.model.initializer_index(value).is_some()
    }

    /// How many node inputs read each value; graph outputs count as one more reader.
    pub(crate) fn reader_counts(&self) -> HashMap<&'m str, usize> {
        let mut counts: HashMap<&str, usize> = self.readers.iter().map(|(k, v)| (*k, v.len())).collect();
        for o in &self.outputs {
            *counts.entry(o).or_default() += 1;
        }
        counts
    }

    /// The node producing `value`, with its index.
    pub(crate) fn producer(&self, value: &str) -> Option<(usize, &'m Node)> {
        self.producer.get(value).map(|&i| (i, &self.model.nodes[i]))
    }

    /// The producer of `value` if it is a `op_type` node.
    pub(crate) fn produced_by(&self, value: &str, op_type: &str) -> Option<(usize, &'m Node)> {
        self.producer(value).filter(|(_, n)| n.is(op_type))
    }

    /// The one node reading `value`, when exactly one does and it is not a graph output.
    pub(crate) fn only_reader(&self, value: &str) -> Option<(usize, &'m Node)> {
        match self.readers.get(value).map(Vec::as_slice) {
            Some([i]) if !self.outputs.contains(value) => Some((*i, &self.model.nodes[*i])),
            _ => None,
        }
    }

    /// `value` through any Cast / Identity nodes.
    pub(crate) fn skip_casts<'a>(&'a self, mut value: &'a str) -> &'a str {
        while let Some((_, n)) = self.producer(value).filter(|(_, n)| n.is("Cast") || n.is("Identity")) {
            value = &n.inputs[0];
        }
        value
    }

    /// The values of a constant integer tensor (a Constant or an initializer), through Unsqueeze / Cast /
    /// Identity, which keep the values.
    pub(crate) fn ints(&self, value: &str) -> Option<Vec<i64>> {
        let mut value = value;
        loop {
            match self.producer(value) {
                Some((_, n)) if n.is("Unsqueeze") || n.is("Cast") || n.is("Identity") => value = &n.inputs[0],
                Some((_, n)) if n.is("Constant") => {
                    let a = n.attributes.first()?;
                    return match a.name.as_str() {
                        "value" => self.model.tensor_ints(a.tensor.as_ref()?),
                        "value_int" => a.int.map(|i| vec![i]),
                        "value_ints" => Some(a.ints.clone()),
                        _ => None,
                    };
                }
                Some(_) => return None,
                None => {
                    let i = self.model.initializer_index(value)?;
                    return self.model.tensor_ints(&self.model.initializers[i]);
                }
            }
        }
    }

    /// The values of a constant float tensor: a Constant, an initializer, or a Concat along axis 0 of such
    /// (how PyTorch exports `F.interpolate`'s scales).
    pub(crate) fn floats(&self, value: &str) -> Option<Vec<f32>> {
        match self.producer(value) {
            Some((_, n)) if n.is("Constant") => {
                let a = n.attributes.first()?;
                match a.name.as_str() {
                    "value" => self.model.tensor_floats(a.tensor.as_ref()?),
                    "value_float" => Some(vec![a.float?]),
                    _ => None,
                }
            }
            Some((_, n)) if n.is("Concat") && n.int("axis") == Some(0) => {
                let parts: Option<Vec<Vec<f32>>> = n.inputs.iter().map(|x| self.floats(x)).collect();
                Some(parts?.concat())
            }
            Some(_) => None,
            None => {
                let i = self.model.initializer_index(value)?;
                self.model.tensor_floats(&self.model.initializers[i])
            }
        }
    }

    /// The value of a constant float scalar (a Constant or an initializer).
    pub(crate) fn scalar(&self, value: &str) -> Option<f32> {
        match self.floats(value)?.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }

    /// Adds to `edit` the removal of `dropped` nodes and of every node left without a reader by it, with the
    /// `value_info` of the values they produced. `new_reads` are the values the nodes a rewrite inserts read (they
    /// keep their producers); `kept` are values the inserted nodes produce again under the same name.
    pub(crate) fn drop_with_inputs(
        &self,
        dropped: HashSet<usize>,
        new_reads: &[&str],
        kept: &HashSet<&str>,
        edit: &mut Edit,
    ) {
        let mut dropped = dropped;
        let mut readers = self.reader_counts();
        for input in new_reads {
            *readers.entry(input).or_default() += 1;
        }
        let mut pending: Vec<usize> = dropped.iter().copied().collect();
        while let Some(i) = pending.pop() {
            for input in self.model.nodes[i].inputs.iter().filter(|x| !x.is_empty()) {
                let count = readers.entry(input.as_str()).or_default();
                *count = count.saturating_sub(1);
                let Some(&p) = self.producer.get(input.as_str()) else { continue };
                let outputs = &self.model.nodes[p].outputs;
                let unread = outputs.iter().all(|o| readers.get(o.as_str()).copied().unwrap_or(0) == 0);
                if unread && !outputs.is_empty() && dropped.insert(p) {
                    pending.push(p);
                }
            }
        }
        for &i in &dropped {
            let outputs = self.model.nodes[i].outputs.iter();
            edit.drop_values.extend(outputs.filter(|o| !kept.contains(o.as_str())).cloned());
        }
        edit.drop_nodes.extend(dropped);
    }
}
