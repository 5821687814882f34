//! A minimal reader and editor for the ONNX protobuf (`onnx.proto`), just enough to merge weights and rewrite
//! graphs at load time: `ModelProto.graph` → `GraphProto.initializer` (`TensorProto`: name, dims, data_type,
//! raw_data / float_data / int32_data / int64_data, external_data), `GraphProto.node` (`NodeProto`: name, op_type,
//! domain, inputs, outputs, int / float / string / ints / tensor attributes) and the graph's output names; the edits are in
//! [`edit`]. Everything else is carried over byte for byte.
//!
//! Field numbers are those of `onnx/onnx.proto` (ModelProto.opset_import = 8, graph = 7; OperatorSetIdProto.domain
//! = 1, version = 2; GraphProto.node = 1, initializer = 5, output = 12, value_info = 13; ValueInfoProto.name = 1;
//! NodeProto.input = 1, output = 2, name = 3, op_type = 4, attribute = 5, domain = 7; AttributeProto.name = 1,
//! f = 2, i = 3, s = 4, t = 5, g = 6, ints = 8, graphs = 11, type = 20; TensorProto.dims = 1, data_type = 2,
//! float_data = 4, int32_data = 5, int64_data = 7, name = 8, raw_data = 9, external_data = 13, data_location = 14;
//! StringStringEntryProto.key = 1, value = 2).

pub mod edit;
pub(crate) mod graph;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `TensorProto.DataType.FLOAT`.
pub const DT_FLOAT: i32 = 1;
/// `TensorProto.DataType.FLOAT16`.
pub const DT_FLOAT16: i32 = 10;
/// `TensorProto.DataType.BFLOAT16`.
pub const DT_BFLOAT16: i32 = 16;
/// `TensorProto.DataType.INT32`.
pub const DT_INT32: i32 = 6;
/// `TensorProto.DataType.INT64`.
pub const DT_INT64: i32 = 7;

/// A place in an external-data file, relative to the folder ONNX Runtime resolves external data against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    /// `location`: a relative path.
    pub location: String,
    /// Byte offset in the file.
    pub offset: u64,
    /// Byte length.
    pub length: u64,
}

/// Where an initializer's values are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorData {
    /// `raw_data`: little-endian bytes at this range of the model bytes.
    Raw(Range<usize>),
    /// Packed `float_data` at this range (or unpacked: then the floats are collected in `Unpacked`).
    PackedF32(Range<usize>),
    /// Values of repeated `float_data` / `int32_data` fields stored one by one (rare), as raw little-endian bytes
    /// in the initializer's own type.
    Unpacked(Vec<u8>),
    /// Packed `int32_data`: int32 values, or float16/bfloat16 bit patterns, one varint per element.
    PackedI32(Range<usize>),
    /// Packed `int64_data`, one varint per element.
    PackedI64(Range<usize>),
    /// External data: file (relative to the model's folder), offset and length in bytes.
    External {
        /// `location`.
        location: String,
        /// `offset` (0 when absent).
        offset: u64,
        /// `length` (`None`: to the end of the file).
        length: Option<u64>,
    },
    /// No values (an empty tensor, or a layout this reader does not know).
    None,
}

/// One `GraphProto.initializer`.
#[derive(Debug, Clone)]
pub struct Initializer {
    /// `name`.
    pub name: String,
    /// `dims`.
    pub dims: Vec<i64>,
    /// `data_type` (see the `DT_*` constants).
    pub data_type: i32,
    /// Where the values are.
    pub data: TensorData,
    /// The byte range of this TensorProto's message (without its tag and length) in the model bytes.
    span: Range<usize>,
}

impl Initializer {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d.max(0) as usize).product()
    }

    /// True when the values live in an external data file.
    pub fn is_external(&self) -> bool {
        matches!(self.data, TensorData::External { .. })
    }
}

/// One `NodeProto.attribute`, with the values of the kinds graph edits read.
#[derive(Debug, Clone, Default)]
pub struct Attribute {
    /// `name`.
    pub name: String,
    /// `i`.
    pub int: Option<i64>,
    /// `f`.
    pub float: Option<f32>,
    /// `ints`.
    pub ints: Vec<i64>,
    /// `s`, as text.
    pub string: Option<String>,
    /// `t` (a `Constant`'s value), indexed like an initializer.
    pub tensor: Option<Initializer>,
    /// True for `g` / `graphs` (control flow bodies, which may read any value of the outer graph).
    pub subgraph: bool,
}

/// One `GraphProto.node`.
#[derive(Debug, Clone)]
pub struct Node {
    /// `name`, e.g. `/down_blocks.1/attentions.0/transformer_blocks.0/attn1/to_q/MatMul`.
    pub name: String,
    /// `op_type`.
    pub op_type: String,
    /// `domain` (empty for the default ONNX domain).
    pub domain: String,
    /// `input` names (empty for an omitted optional input).
    pub inputs: Vec<String>,
    /// `output` names.
    pub outputs: Vec<String>,
    /// `attribute`s.
    pub attributes: Vec<Attribute>,
}

impl Node {
    /// The attribute called `name`.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// The integer attribute `name`, if present.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.attribute(name).and_then(|a| a.int)
    }

    /// True for an op of the default ONNX domain called `op_type`.
    pub fn is(&self, op_type: &str) -> bool {
        self.op_type == op_type && (self.domain.is_empty() || self.domain == "ai.onnx")
    }
}

/// A parsed model: its bytes plus an index of the top-level graph's initializers and nodes.
#[derive(Debug)]
pub struct OnnxModel {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Range of the `graph` field's message in `bytes`.
    graph: Range<usize>,
    /// Initializers in file order.
    pub initializers: Vec<Initializer>,
    /// Nodes in file order.
    pub nodes: Vec<Node>,
    /// The graph's output names.
    pub outputs: Vec<String>,
    /// `opset_import`: (domain, version).
    pub opsets: Vec<(String, i64)>,
    by_name: HashMap<String, usize>,
    /// True when `bytes` are the file at `path` as read ([`OnnxModel::read`]): offsets in them are file offsets.
    is_file: bool,
}

/// A protobuf field: number and value.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8], Range<usize>),
    Fixed32(u32),
}

/// Iterates the fields of one message; positions are absolute offsets in the whole buffer.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], range: Range<usize>) -> Self {
        Fields { buf, pos: range.start, end: range.end }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            if self.pos >= self.end {
                return None;
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// The next field, `Err` on malformed input. The range is that of the whole field (tag included).
    fn next_field(&mut self) -> std::result::Result<Option<(u32, Value<'a>, Range<usize>)>, String> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let start = self.pos;
        let tag = self.varint().ok_or("truncated tag")?;
        let (field, wire) = ((tag >> 3) as u32, tag & 7);
        let value = match wire {
            0 => Value::Varint(self.varint().ok_or("truncated varint")?),
            1 => {
                if self.pos + 8 > self.end {
                    return Err("truncated fixed64".into());
                }
                self.pos += 8;
                Value::Fixed64
            }
            2 => {
                let len = self.varint().ok_or("truncated length")? as usize;
                let s = self.pos;
                if len > self.end - s {
                    return Err(format!("field {field} runs past its message ({len} bytes at {s})"));
                }
                self.pos += len;
                Value::Bytes(&self.buf[s..s + len], s..s + len)
            }
            5 => {
                if self.pos + 4 > self.end {
                    return Err("truncated fixed32".into());
                }
                let v = u32::from_le_bytes(self.buf[self.pos..self.pos + 4].try_into().expect("4 bytes"));
                self.pos += 4;
                Value::Fixed32(v)
            }
            other => return Err(format!("unsupported wire type {other} (field {field})")),
        };
        Ok(Some((field, value, start..self.pos)))
    }
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Packed varints in `b`.
fn packed_varints(buf: &[u8], range: Range<usize>) -> std::result::Result<Vec<u64>, String> {
    let mut f = Fields::new(buf, range);
    let mut out = Vec::new();
    while f.pos < f.end {
        out.push(f.varint().ok_or("truncated packed varint")?);
    }
    Ok(out)
}

fn parse_tensor(buf: &[u8], span: Range<usize>) -> std::result::Result<Initializer, String> {
    let mut f = Fields::new(buf, span.clone());
    let mut t = Initializer { name: String::new(), dims: Vec::new(), data_type: 0, data: TensorData::None, span };
    let mut external: Vec<(String, String)> = Vec::new();
    let mut location_external = false;
    let mut unpacked = Vec::new();
    while let Some((field, value, _)) = f.next_field()? {
        match (field, value) {
            (1, Value::Varint(v)) => t.dims.push(v as i64),
            (1, Value::Bytes(_, r)) => t.dims.extend(packed_varints(buf, r)?.into_iter().map(|v| v as i64)),
            (2, Value::Varint(v)) => t.data_type = v as i32,
            (4, Value::Bytes(_, r)) => t.data = TensorData::PackedF32(r),
            (4, Value::Fixed32(v)) => unpacked.extend_from_slice(&v.to_le_bytes()),
            (5, Value::Bytes(_, r)) => t.data = TensorData::PackedI32(r),
            (5, Value::Varint(v)) if t.data_type == DT_INT32 => unpacked.extend_from_slice(&(v as i32).to_le_bytes()),
            (5, Value::Varint(v)) => unpacked.extend_from_slice(&(v as u16).to_le_bytes()),
            (7, Value::Bytes(_, r)) => t.data = TensorData::PackedI64(r),
            (7, Value::Varint(v)) => unpacked.extend_from_slice(&v.to_le_bytes()),
            (8, Value::Bytes(b, _)) => t.name = utf8(b),
            (9, Value::Bytes(_, r)) => t.data = TensorData::Raw(r),
            (13, Value::Bytes(_, r)) => {
                let mut e = Fields::new(buf, r);
                let (mut k, mut v) = (String::new(), String::new());
                while let Some((ef, ev, _)) = e.next_field()? {
                    match (ef, ev) {
                        (1, Value::Bytes(b, _)) => k = utf8(b),
                        (2, Value::Bytes(b, _)) => v = utf8(b),
                        _ => {}
                    }
                }
                external.push((k, v));
            }
            (14, Value::Varint(v)) => location_external = v == 1,
            _ => {}
        }
    }
    if !unpacked.is_empty() {
        t.data = TensorData::Unpacked(unpacked);
    }
    if location_external {
        let get = |key: &str| external.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let location = get("location").ok_or_else(|| format!("external tensor {} has no location", t.name))?;
        let num = |key: &str| -> std::result::Result<Option<u64>, String> {
            get(key)
                .map(|v| v.parse::<u64>().map_err(|_| format!("bad external {key} {v:?} for {}", t.name)))
                .transpose()
        };
        t.data = TensorData::External { location, offset: num("offset")?.unwrap_or(0), length: num("length")? };
    }
    Ok(t)
}

fn parse_node(buf: &[u8], range: Range<usize>) -> std::result::Result<Node, String> {
    let mut f = Fields::new(buf, range);
    let mut n = Node {
        name: String::new(),
        op_type: String::new(),
        domain: String::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        attributes: Vec::new(),
    };
    while let Some((field, value, _)) = f.next_field()? {
        match (field, value) {
            (1, Value::Bytes(b, _)) => n.inputs.push(utf8(b)),
            (2, Value::Bytes(b, _)) => n.outputs.push(utf8(b)),
            (3, Value::Bytes(b, _)) => n.name = utf8(b),
            (4, Value::Bytes(b, _)) => n.op_type = utf8(b),
            (7, Value::Bytes(b, _)) => n.domain = utf8(b),
            (5, Value::Bytes(_, r)) => n.attributes.push(parse_attribute(buf, r)?),
            _ => {}
        }
    }
    Ok(n)
}

fn parse_attribute(buf: &[u8], range: Range<usize>) -> std::result::Result<Attribute, String> {
    let mut a = Attribute::default();
    let mut f = Fields::new(buf, range);
    while let Some((field, value, _)) = f.next_field()? {
        match (field, value) {
            (1, Value::Bytes(b, _)) => a.name = utf8(b),
            (2, Value::Fixed32(v)) => a.float = Some(f32::from_bits(v)),
            (3, Value::Varint(v)) => a.int = Some(v as i64),
            (4, Value::Bytes(b, _)) => a.string = Some(utf8(b)),
            (5, Value::Bytes(_, r)) => a.tensor = Some(parse_tensor(buf, r)?),
            (6 | 11, _) => a.subgraph = true,
            (8, Value::Varint(v)) => a.ints.push(v as i64),
            (8, Value::Bytes(_, r)) => a.ints.extend(packed_varints(buf, r)?.into_iter().map(|v| v as i64)),
            _ => {}
        }
    }
    Ok(a)
}

/// `ValueInfoProto.name`.
fn value_info_name(buf: &[u8], range: Range<usize>) -> std::result::Result<String, String> {
    let mut f = Fields::new(buf, range);
    while let Some((field, value, _)) = f.next_field()? {
        if let (1, Value::Bytes(b, _)) = (field, value) {
            return Ok(utf8(b));
        }
    }
    Ok(String::new())
}

/// `ModelProto.opset_import` as (domain, version).
fn opset_imports(buf: &[u8]) -> std::result::Result<Vec<(String, i64)>, String> {
    let mut out = Vec::new();
    let mut f = Fields::new(buf, 0..buf.len());
    while let Some((field, value, _)) = f.next_field()? {
        if let (8, Value::Bytes(_, r)) = (field, value) {
            let (mut domain, mut version) = (String::new(), 0i64);
            let mut o = Fields::new(buf, r);
            while let Some((of, ov, _)) = o.next_field()? {
                match (of, ov) {
                    (1, Value::Bytes(b, _)) => domain = utf8(b),
                    (2, Value::Varint(v)) => version = v as i64,
                    _ => {}
                }
            }
            out.push((domain, version));
        }
    }
    Ok(out)
}

/// Appends `v` as a protobuf varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-delimited protobuf field.
pub(crate) fn put_bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Bytes per element of the float types a merge can write.
pub fn float_elem_size(data_type: i32) -> Option<usize> {
    match data_type {
        DT_FLOAT => Some(4),
        DT_FLOAT16 | DT_BFLOAT16 => Some(2),
        _ => None,
    }
}

impl OnnxModel {
    /// Read and index `path` (external data is not read).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::ModelNotFound { path: path.to_path_buf(), message: "graph file missing".into() }
            }
            _ => Error::model_invalid(path, format!("cannot read: {e}")),
        })?;
        Ok(OnnxModel { is_file: true, ..Self::parse(path, bytes)? })
    }

    /// Index model bytes read from `path`.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let bad = |m: String| Error::model_invalid(path, format!("not a valid ONNX model: {m}"));
        let mut graph = None;
        let mut f = Fields::new(&bytes, 0..bytes.len());
        while let Some((field, value, _)) = f.next_field().map_err(bad)? {
            if let (7, Value::Bytes(_, r)) = (field, value) {
                graph = Some(r);
            }
        }
        let graph = graph.ok_or_else(|| bad("no graph".into()))?;
        let opsets = opset_imports(&bytes).map_err(bad)?;
        let mut initializers = Vec::new();
        let mut nodes = Vec::new();
        let mut outputs = Vec::new();
        let mut g = Fields::new(&bytes, graph.clone());
        while let Some((field, value, _)) = g.next_field().map_err(bad)? {
            match (field, value) {
                (1, Value::Bytes(_, r)) => nodes.push(parse_node(&bytes, r).map_err(bad)?),
                (5, Value::Bytes(_, r)) => initializers.push(parse_tensor(&bytes, r).map_err(bad)?),
                (12, Value::Bytes(_, r)) => outputs.push(value_info_name(&bytes, r).map_err(bad)?),
                _ => {}
            }
        }
        let by_name = initializers.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(OnnxModel {
            path: path.to_path_buf(),
            bytes,
            graph,
            initializers,
            nodes,
            outputs,
            opsets,
            by_name,
            is_file: false,
        })
    }

    /// The file this model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The serialized model.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The float type (`DT_FLOAT`, `DT_FLOAT16` or `DT_BFLOAT16`) of most of the weights' elements, if any.
    pub fn weight_float_type(&self) -> Option<i32> {
        let mut elements: HashMap<i32, usize> = HashMap::new();
        for t in self.initializers.iter().filter(|t| float_elem_size(t.data_type).is_some()) {
            *elements.entry(t.data_type).or_default() += t.numel();
        }
        elements.into_iter().max_by_key(|&(_, n)| n).map(|(data_type, _)| data_type)
    }

    /// Index of the initializer called `name`.
    pub fn initializer_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The values of initializer `index` as f32 (float, float16 and bfloat16 initializers), reading external
    /// data from the model's folder.
    pub fn read_f32(&self, index: usize) -> Result<Vec<f32>> {
        Ok(decode_floats(&self.read_raw(index)?, self.initializers[index].data_type))
    }

    /// The values of float initializer `index` as little-endian bytes of its own type (float32, float16 or
    /// bfloat16), reading external data from the model's folder.
    pub fn read_raw(&self, index: usize) -> Result<Vec<u8>> {
        self.raw_of(&self.initializers[index])
    }

    /// The values of a small inline integer tensor (an initializer or a `Constant`'s value; int64 or int32);
    /// `None` for other types and for external data.
    pub fn tensor_ints(&self, t: &Initializer) -> Option<Vec<i64>> {
        let fixed = |b: &[u8], size: usize| -> Vec<i64> {
            b.chunks_exact(size)
                .map(|c| match size {
                    8 => i64::from_le_bytes(c.try_into().expect("8 bytes")),
                    _ => i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))),
                })
                .collect()
        };
        let values = match (&t.data, t.data_type) {
            (TensorData::Raw(r), DT_INT64) => fixed(&self.bytes[r.clone()], 8),
            (TensorData::Raw(r), DT_INT32) => fixed(&self.bytes[r.clone()], 4),
            (TensorData::Unpacked(b), DT_INT64) => fixed(b, 8),
            (TensorData::Unpacked(b), DT_INT32) => fixed(b, 4),
            // Negative values are sign-extended 64-bit varints in both fields.
            (TensorData::PackedI64(r), DT_INT64) | (TensorData::PackedI32(r), DT_INT32) => {
                packed_varints(&self.bytes, r.clone()).ok()?.into_iter().map(|v| v as i64).collect()
            }
            _ => return None,
        };
        (values.len() == t.numel()).then_some(values)
    }

    /// The values of a small inline float tensor (float32, float16 or bfloat16) as f32; `None` for other types
    /// and for external data.
    pub fn tensor_floats(&self, t: &Initializer) -> Option<Vec<f32>> {
        if t.is_external() {
            return None;
        }
        self.raw_of(t).ok().map(|raw| decode_floats(&raw, t.data_type))
    }

    fn raw_of(&self, t: &Initializer) -> Result<Vec<u8>> {
        let bad = |m: String| Error::model_invalid(&self.path, format!("initializer `{}`: {m}", t.name));
        let size = float_elem_size(t.data_type)
            .ok_or_else(|| bad(format!("data type {} is not float32, float16 or bfloat16", t.data_type)))?;
        let n = t.numel();
        let raw: Vec<u8> = match &t.data {
            TensorData::Raw(r) => self.bytes[r.clone()].to_vec(),
            TensorData::PackedF32(r) if t.data_type == DT_FLOAT => self.bytes[r.clone()].to_vec(),
            TensorData::Unpacked(b) => b.clone(),
            TensorData::PackedI32(r) if size == 2 => packed_varints(&self.bytes, r.clone())
                .map_err(bad)?
                .into_iter()
                .flat_map(|v| (v as u16).to_le_bytes())
                .collect(),
            TensorData::External { location, offset, length } => {
                let file = self.external_file(location)?;
                let want = length.unwrap_or((n * size) as u64);
                let mut f = std::fs::File::open(&file)
                    .map_err(|e| Error::model_invalid(&file, format!("external data for `{}`: {e}", t.name)))?;
                f.seek(SeekFrom::Start(*offset)).map_err(|e| Error::model_invalid(&file, e.to_string()))?;
                let mut buf = vec![0u8; want as usize];
                f.read_exact(&mut buf).map_err(|e| {
                    Error::model_invalid(
                        &file,
                        format!("external data for `{}` ({want} bytes at {offset}): {e}", t.name),
                    )
                })?;
                buf
            }
            _ => return Err(bad("no values this reader understands".into())),
        };
        if raw.len() != n * size {
            return Err(bad(format!("{} bytes of data for {n} elements of {size} bytes", raw.len())));
        }
        Ok(raw)
    }

    /// The external data file `location`, which must stay inside the model's folder.
    pub(crate) fn external_file(&self, location: &str) -> Result<PathBuf> {
        let rel = Path::new(location);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(Error::model_invalid(
                &self.path,
                format!("external data location {location:?} leaves the model folder"),
            ));
        }
        Ok(self.path.parent().unwrap_or(Path::new(".")).join(rel))
    }
}

/// Little-endian float32/float16/bfloat16 bytes → f32 (hardware conversions where the CPU has them).
pub fn decode_floats(raw: &[u8], data_type: i32) -> Vec<f32> {
    let mut values = vec![0f32; raw.len() / float_elem_size(data_type).unwrap_or(4)];
    decode_floats_into(raw, data_type, &mut values);
    values
}

/// [`decode_floats`] into `values` (as many as both hold).
pub fn decode_floats_into(raw: &[u8], data_type: i32, values: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    const CHUNK: usize = 64;
    match data_type {
        DT_FLOAT16 => {
            let mut h = [half::f16::ZERO; CHUNK];
            for (bytes, v) in raw.chunks(2 * CHUNK).zip(values.chunks_mut(CHUNK)) {
                let len = v.len().min(bytes.len() / 2);
                for (x, c) in h.iter_mut().zip(bytes.chunks_exact(2)) {
                    *x = half::f16::from_le_bytes([c[0], c[1]]);
                }
                h[..len].convert_to_f32_slice(&mut v[..len]);
            }
        }
        DT_BFLOAT16 => {
            for (v, c) in values.iter_mut().zip(raw.chunks_exact(2)) {
                *v = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            for (v, c) in values.iter_mut().zip(raw.chunks_exact(4)) {
                *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// f32 → little-endian bytes of `data_type` (float32, float16 or bfloat16; round to nearest even).
pub fn encode_floats(values: &[f32], data_type: i32) -> Vec<u8> {
    let mut raw = vec![0u8; values.len() * float_elem_size(data_type).unwrap_or(4)];
    encode_floats_into(values, data_type, &mut raw);
    raw
}

/// [`encode_floats`] over `raw` (as many values as both hold).
pub fn encode_floats_into(values: &[f32], data_type: i32, raw: &mut [u8]) {
    use half::slice::HalfFloatSliceExt;
    const CHUNK: usize = 64;
    match data_type {
        DT_FLOAT16 => {
            let mut h = [half::f16::ZERO; CHUNK];
            for (bytes, v) in raw.chunks_mut(2 * CHUNK).zip(values.chunks(CHUNK)) {
                let len = v.len().min(bytes.len() / 2);
                h[..len].convert_from_f32_slice(&v[..len]);
                for (x, c) in h.iter().zip(bytes.chunks_exact_mut(2)) {
                    c.copy_from_slice(&x.to_le_bytes());
                }
            }
        }
        DT_BFLOAT16 => {
            for (c, v) in raw.chunks_exact_mut(2).zip(values) {
                c.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
        }
        _ => {
            for (c, v) in raw.chunks_exact_mut(4).zip(values) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Fixture models for the tests of the rewrites built on this reader.
#[cfg(test)]
pub(crate) mod test_models {
    use super::edit::Edit;
    use super::OnnxModel;

    /// `tests/fixtures/<path>`, read.
    pub fn read(path: &str) -> OnnxModel {
        OnnxModel::read(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path))
            .unwrap()
    }

    /// How many `op_type` nodes `m` has.
    pub fn count(m: &OnnxModel, op_type: &str) -> usize {
        m.nodes.iter().filter(|n| n.op_type == op_type).count()
    }

    /// `m` with `edit` applied, parsed again.
    pub fn edited(m: &OnnxModel, edit: &Edit) -> OnnxModel {
        OnnxModel::parse(m.path(), m.edited(edit).unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::edit::Edit;
    use super::*;

    fn fixture(p: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p)
    }

    #[test]
    fn indexes_inline_and_external_initializers() {
        let m = OnnxModel::read(&fixture("tiny-sdxl/unet/model.onnx")).unwrap();
        assert_eq!(m.initializers.len(), 428);
        assert_eq!(m.initializers.iter().filter(|t| t.is_external()).count(), 195);
        let i = m.initializer_index("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight").unwrap();
        assert_eq!(m.initializers[i].dims, vec![32, 32]);
        assert_eq!(m.read_f32(i).unwrap().len(), 32 * 32);
        let conv = m.initializer_index("conv_in.weight").unwrap();
        assert!(m.initializers[conv].is_external());
        assert_eq!(m.read_f32(conv).unwrap().len(), 16 * 4 * 3 * 3);
        let te = OnnxModel::read(&fixture("tiny-sdxl-folded/text_encoder/model.onnx")).unwrap();
        let q = te.nodes.iter().find(|n| n.name == "/encoder/layers.0/self_attn/q_proj/MatMul").unwrap();
        assert_eq!(q.op_type, "MatMul");
        assert!(te.initializer_index(&q.inputs[1]).is_some());
    }

    #[test]
    fn patching_round_trips() {
        let m = OnnxModel::read(&fixture("tiny-sdxl/unet/model.onnx")).unwrap();
        // No edit: the same bytes.
        assert_eq!(m.edited(&Edit::default()).unwrap(), m.bytes());
        let inline = m.initializers.iter().position(|t| matches!(t.data, TensorData::Raw(_)) && t.numel() > 8).unwrap();
        let external = m.initializer_index("conv_in.weight").unwrap();
        let mut rep = HashMap::new();
        for i in [inline, external] {
            let v: Vec<f32> = (0..m.initializers[i].numel()).map(|k| k as f32 * 0.5).collect();
            rep.insert(i, encode_floats(&v, DT_FLOAT));
        }
        let bytes = m.edited(&Edit { replace: rep, ..Edit::default() }).unwrap();
        let p = OnnxModel::parse(m.path(), bytes).unwrap();
        assert_eq!(p.initializers.len(), m.initializers.len());
        for i in [inline, external] {
            assert!(!p.initializers[i].is_external());
            assert_eq!(p.initializers[i].dims, m.initializers[i].dims);
            assert_eq!(p.read_f32(i).unwrap()[3], 1.5);
        }
        let other = m.initializer_index("conv_out.weight").unwrap();
        assert_eq!(p.read_f32(other).unwrap(), m.read_f32(other).unwrap());
        assert_eq!(p.nodes.len(), m.nodes.len());
    }

    #[test]
    fn initializers_can_be_moved_to_another_external_file() {
        let m = OnnxModel::read(&fixture("tiny-sdxl/unet/model.onnx")).unwrap();
        let inline = m.initializers.iter().position(|t| matches!(t.data, TensorData::Raw(_)) && t.numel() > 8).unwrap();
        let external = m.initializer_index("conv_in.weight").unwrap();
        let mut moved = HashMap::new();
        for (k, i) in [inline, external].into_iter().enumerate() {
            let at = ExternalRef { location: "merged.bin".into(), offset: 65536 * k as u64, length: 16 };
            moved.insert(i, at);
        }
        let p = OnnxModel::parse(m.path(), m.edited(&Edit { moved, ..Edit::default() }).unwrap()).unwrap();
        for (k, i) in [inline, external].into_iter().enumerate() {
            let want =
                TensorData::External { location: "merged.bin".into(), offset: 65536 * k as u64, length: Some(16) };
            assert_eq!(p.initializers[i].data, want);
            assert_eq!(
                (&p.initializers[i].name, &p.initializers[i].dims),
                (&m.initializers[i].name, &m.initializers[i].dims)
            );
        }
        let other = m.initializer_index("conv_out.weight").unwrap();
        assert_eq!(p.read_f32(other).unwrap(), m.read_f32(other).unwrap());
    }

    #[test]
    fn truncated_models_are_errors() {
        let bytes = std::fs::read(fixture("tiny-sdxl/text_encoder/model.onnx")).unwrap();
        let cut = bytes[..bytes.len() / 2].to_vec();
        let e = OnnxModel::parse(Path::new("x.onnx"), cut).unwrap_err();
        assert!(matches!(e, Error::ModelInvalid { .. }), "{e}");
    }

    #[test]
    fn float_codecs() {
        let v = [1.0f32, -2.5, 0.1];
        assert_eq!(decode_floats(&encode_floats(&v, DT_FLOAT), DT_FLOAT), v);
        assert_eq!(decode_floats(&encode_floats(&v, DT_FLOAT16), DT_FLOAT16)[1], -2.5);
        assert_eq!(decode_floats(&encode_floats(&v, DT_BFLOAT16), DT_BFLOAT16)[0], 1.0);
    }
}
