//! Writing an edited copy of a model: initializers replaced or moved to external data (merged LoRA weights),
//! nodes and initializers left out or added (attention fusion, sub-pixel upsampling), node inputs rewired and graph
//! inputs added (ControlNet residuals), operator sets imported. Every byte not edited is copied as it was.

use std::collections::{HashMap, HashSet};

use super::{put_bytes_field, put_varint, ExternalRef, Fields, OnnxModel, Value};
use crate::error::{Error, Result};

/// The changes [`OnnxModel::edited`] writes. Indices are those of [`OnnxModel::initializers`] and
/// [`OnnxModel::nodes`].
#[derive(Debug, Default)]
pub struct Edit {
    /// Initializers whose values are replaced (little-endian bytes in the initializer's own type and shape),
    /// stored inline as `raw_data`; their external-data fields are dropped.
    pub replace: HashMap<usize, Vec<u8>>,
    /// Initializers turned into external tensors at the given place (`data_location` EXTERNAL, `external_data`
    /// {location, offset, length}), whatever they held before.
    pub moved: HashMap<usize, ExternalRef>,
    /// Nodes left out.
    pub drop_nodes: HashSet<usize>,
    /// Initializers left out (no node reads them any more).
    pub drop_initializers: HashSet<usize>,
    /// Serialized `TensorProto`s ([`encode_tensor`]) added to the graph's initializers.
    pub add_initializers: Vec<Vec<u8>>,
    /// Serialized `NodeProto`s ([`encode_node`]) written just before node `i` (whether or not it is dropped).
    pub insert_nodes: HashMap<usize, Vec<Vec<u8>>>,
    /// `value_info` entries left out, by value name (values no node produces any more).
    pub drop_values: HashSet<String>,
    /// Operator sets the edit needs, (domain, version), imported unless the model already imports the domain.
    pub opsets: Vec<(String, i64)>,
    /// Node inputs read from another value: node index → (input position, new value name).
    pub rewire: HashMap<usize, Vec<(usize, String)>>,
    /// Serialized `ValueInfoProto`s ([`encode_tensor_input`]) added to the graph's inputs, after its own.
    pub add_inputs: Vec<Vec<u8>>,
}

impl Edit {
    /// True when writing it would copy the model unchanged.
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty()
            && self.moved.is_empty()
            && self.drop_nodes.is_empty()
            && self.drop_initializers.is_empty()
            && self.add_initializers.is_empty()
            && self.insert_nodes.is_empty()
            && self.drop_values.is_empty()
            && self.opsets.is_empty()
            && self.rewire.is_empty()
            && self.add_inputs.is_empty()
    }
}

/// An attribute value for [`encode_node`].
#[derive(Debug, Clone)]
pub enum AttributeValue {
    /// `AttributeProto.i` (type INT).
    Int(i64),
    /// `AttributeProto.f` (type FLOAT).
    Float(f32),
    /// `AttributeProto.ints` (type INTS).
    Ints(Vec<i64>),
    /// `AttributeProto.s` (type STRING).
    Str(&'static str),
}

/// A serialized `NodeProto`.
pub fn encode_node(
    name: &str,
    domain: &str,
    op_type: &str,
    inputs: &[&str],
    outputs: &[&str],
    attributes: &[(&str, AttributeValue)],
) -> Vec<u8> {
    let mut node = Vec::new();
    for input in inputs {
        put_bytes_field(&mut node, 1, input.as_bytes());
    }
    for output in outputs {
        put_bytes_field(&mut node, 2, output.as_bytes());
    }
    put_bytes_field(&mut node, 3, name.as_bytes());
    put_bytes_field(&mut node, 4, op_type.as_bytes());
    for (key, value) in attributes {
        let mut a = Vec::new();
        put_bytes_field(&mut a, 1, key.as_bytes());
        let kind = match value {
            AttributeValue::Float(f) => {
                put_varint(&mut a, (2 << 3) | 5);
                a.extend_from_slice(&f.to_le_bytes());
                1 // AttributeType.FLOAT
            }
            AttributeValue::Int(i) => {
                put_varint(&mut a, 3 << 3);
                put_varint(&mut a, *i as u64);
                2 // AttributeType.INT
            }
            AttributeValue::Str(text) => {
                put_bytes_field(&mut a, 4, text.as_bytes());
                3 // AttributeType.STRING
            }
            AttributeValue::Ints(ints) => {
                for &i in ints {
                    put_varint(&mut a, 8 << 3);
                    put_varint(&mut a, i as u64);
                }
                7 // AttributeType.INTS
            }
        };
        put_varint(&mut a, 20 << 3);
        put_varint(&mut a, kind);
        put_bytes_field(&mut node, 5, &a);
    }
    if !domain.is_empty() {
        put_bytes_field(&mut node, 7, domain.as_bytes());
    }
    node
}

/// A serialized `ValueInfoProto` for a graph input `name`: a tensor of `data_type` (a `TensorProto.DataType`) and
/// rank `rank`, every dimension symbolic (`<name>_d<i>`), so any shape of that rank is accepted.
pub fn encode_tensor_input(name: &str, data_type: i32, rank: usize) -> Vec<u8> {
    let mut shape = Vec::new();
    for i in 0..rank {
        let mut dim = Vec::new();
        put_bytes_field(&mut dim, 2, format!("{name}_d{i}").as_bytes());
        put_bytes_field(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    put_varint(&mut tensor, 1 << 3);
    put_varint(&mut tensor, data_type as u64);
    put_bytes_field(&mut tensor, 2, &shape);
    let mut kind = Vec::new();
    put_bytes_field(&mut kind, 1, &tensor);
    let mut info = Vec::new();
    put_bytes_field(&mut info, 1, name.as_bytes());
    put_bytes_field(&mut info, 2, &kind);
    info
}

/// `node` (a serialized `NodeProto`) with the inputs at the given positions renamed; every other field as it was.
fn rewired_node(bytes: &[u8], node: std::ops::Range<usize>, inputs: &[(usize, String)]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(node.len() + 64);
    let mut f = Fields::new(bytes, node);
    let mut position = 0;
    while let Some((field, _, whole)) = f.next_field().map_err(Error::Internal)? {
        if field == 1 {
            match inputs.iter().find(|(p, _)| *p == position) {
                Some((_, name)) => put_bytes_field(&mut out, 1, name.as_bytes()),
                None => out.extend_from_slice(&bytes[whole]),
            }
            position += 1;
        } else {
            out.extend_from_slice(&bytes[whole]);
        }
    }
    Ok(out)
}

/// A serialized `TensorProto` holding `raw` (little-endian values of `data_type`) inline.
pub fn encode_tensor(name: &str, dims: &[i64], data_type: i32, raw: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(raw.len() + name.len() + 32);
    put_tensor_header(&mut msg, name, dims, data_type);
    put_bytes_field(&mut msg, 9, raw);
    msg
}

/// `TensorProto.dims`, `data_type` and `name`.
fn put_tensor_header(msg: &mut Vec<u8>, name: &str, dims: &[i64], data_type: i32) {
    for &d in dims {
        put_varint(msg, 1 << 3);
        put_varint(msg, d as u64);
    }
    put_varint(msg, 2 << 3);
    put_varint(msg, data_type as u64);
    put_bytes_field(msg, 8, name.as_bytes());
}

impl OnnxModel {
    /// The serialized model with `edit` applied.
    pub fn edited(&self, edit: &Edit) -> Result<Vec<u8>> {
        let bad = |m: String| Error::model_invalid(&self.path, m);
        let mut by_start: HashMap<usize, usize> = HashMap::new();
        for &i in edit.replace.keys().chain(edit.moved.keys()) {
            let t = self.initializers.get(i).ok_or_else(|| Error::Internal(format!("no initializer {i}")))?;
            by_start.insert(t.span.start, i);
        }
        let dropped: HashSet<usize> = edit.drop_initializers.iter().map(|&i| self.initializers[i].span.start).collect();
        let mut graph = Vec::with_capacity(self.graph.len() + edit.replace.values().map(Vec::len).sum::<usize>());
        let mut g = Fields::new(&self.bytes, self.graph.clone());
        let mut node_index = 0;
        while let Some((field, value, whole)) = g.next_field().map_err(bad)? {
            match (field, value) {
                (1, node) => {
                    for inserted in edit.insert_nodes.get(&node_index).into_iter().flatten() {
                        put_bytes_field(&mut graph, 1, inserted);
                    }
                    match (edit.drop_nodes.contains(&node_index), edit.rewire.get(&node_index), node) {
                        (true, _, _) => {}
                        (false, Some(inputs), Value::Bytes(_, r)) => {
                            put_bytes_field(&mut graph, 1, &rewired_node(&self.bytes, r, inputs)?)
                        }
                        _ => graph.extend_from_slice(&self.bytes[whole]),
                    }
                    node_index += 1;
                }
                (5, Value::Bytes(_, r)) if dropped.contains(&r.start) => {}
                (5, Value::Bytes(_, r)) if by_start.contains_key(&r.start) => {
                    let i = by_start[&r.start];
                    put_bytes_field(&mut graph, 5, &self.tensor_message(i, edit));
                }
                (13, Value::Bytes(_, r))
                    if !edit.drop_values.is_empty()
                        && edit.drop_values.contains(&super::value_info_name(&self.bytes, r.clone()).map_err(bad)?) => {
                }
                _ => graph.extend_from_slice(&self.bytes[whole]),
            }
        }
        for tensor in &edit.add_initializers {
            put_bytes_field(&mut graph, 5, tensor);
        }
        for input in &edit.add_inputs {
            put_bytes_field(&mut graph, 11, input);
        }
        let imported: HashSet<&str> = self.opsets.iter().map(|(d, _)| d.as_str()).collect();
        let mut out = Vec::with_capacity(self.bytes.len() + graph.len());
        let mut f = Fields::new(&self.bytes, 0..self.bytes.len());
        while let Some((field, _, whole)) = f.next_field().map_err(bad)? {
            if field == 7 {
                put_bytes_field(&mut out, 7, &graph);
            } else {
                out.extend_from_slice(&self.bytes[whole]);
            }
        }
        for (domain, version) in edit.opsets.iter().filter(|(d, _)| !imported.contains(d.as_str())) {
            let mut opset = Vec::new();
            put_bytes_field(&mut opset, 1, domain.as_bytes());
            put_varint(&mut opset, 2 << 3);
            put_varint(&mut opset, *version as u64);
            put_bytes_field(&mut out, 8, &opset);
        }
        Ok(out)
    }

    /// The `TensorProto` of initializer `i` as `edit` changes it (it is in `replace` or `moved`).
    fn tensor_message(&self, i: usize, edit: &Edit) -> Vec<u8> {
        let t = &self.initializers[i];
        let mut msg = Vec::with_capacity(edit.replace.get(&i).map_or(0, Vec::len) + t.name.len() + 96);
        put_tensor_header(&mut msg, &t.name, &t.dims, t.data_type);
        match (edit.replace.get(&i), edit.moved.get(&i)) {
            (Some(bytes), _) => put_bytes_field(&mut msg, 9, bytes),
            (None, Some(at)) => {
                let (offset, length) = (at.offset.to_string(), at.length.to_string());
                for (key, value) in [("location", at.location.as_str()), ("offset", &offset), ("length", &length)] {
                    let mut entry = Vec::new();
                    put_bytes_field(&mut entry, 1, key.as_bytes());
                    put_bytes_field(&mut entry, 2, value.as_bytes());
                    put_bytes_field(&mut msg, 13, &entry);
                }
                put_varint(&mut msg, 14 << 3);
                put_varint(&mut msg, 1); // DataLocation.EXTERNAL
            }
            (None, None) => unreachable!("index from one of the two maps"),
        }
        msg
    }

    /// Every inline `raw_data` initializer of at least `min_bytes`, as an external tensor pointing at its own bytes
    /// inside this model's file (for [`Edit::moved`]). Loaded from memory with the model's folder as the external
    /// data base, the edited model then carries only the graph: ONNX Runtime reads the weights from the file itself
    /// instead of parsing a second in-memory copy of them. Empty for a model not read from its file.
    pub fn inline_as_external(&self, min_bytes: usize) -> HashMap<usize, ExternalRef> {
        let file = self.path.file_name().map(|f| f.to_string_lossy().into_owned());
        let Some(file) = file.filter(|_| self.is_file) else { return HashMap::new() };
        self.initializers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match &t.data {
                super::TensorData::Raw(r) if r.len() >= min_bytes => {
                    Some((i, ExternalRef { location: file.clone(), offset: r.start as u64, length: r.len() as u64 }))
                }
                _ => None,
            })
            .collect()
    }
}
