//! Host arrays ↔ ONNX Runtime values, converting to whatever element type a graph declares (f32/f16 floats,
//! i64/i32 token ids), so fp16 exports and old int32 exports work without the pipeline caring.

use half::f16;
use ndarray::ArrayD;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use crate::error::{Error, Result};

/// Element types the pipeline can feed or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// float32
    F32,
    /// float16
    F16,
    /// int64
    I64,
    /// int32
    I32,
    /// anything else (reported, never fed)
    Other,
}

impl Elem {
    /// The element type of a declared tensor, `Other` for non-tensors.
    pub fn of(ty: &ValueType) -> Elem {
        match ty {
            ValueType::Tensor { ty: TensorElementType::Float32, .. } => Elem::F32,
            ValueType::Tensor { ty: TensorElementType::Float16, .. } => Elem::F16,
            ValueType::Tensor { ty: TensorElementType::Int64, .. } => Elem::I64,
            ValueType::Tensor { ty: TensorElementType::Int32, .. } => Elem::I32,
            _ => Elem::Other,
        }
    }
}

fn fail(stage: &'static str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Inference { stage, message: format!("{what}: {e}") }
}

/// A float input converted to the graph's declared element type.
pub fn float_value(data: ArrayD<f32>, want: Elem, stage: &'static str, name: &str) -> Result<DynValue> {
    match want {
        Elem::F32 => Tensor::from_array(data).map(|t| t.into_dyn()).map_err(|e| fail(stage, name, e)),
        Elem::F16 => {
            Tensor::from_array(data.mapv(f16::from_f32)).map(|t| t.into_dyn()).map_err(|e| fail(stage, name, e))
        }
        other => Err(Error::Inference {
            stage,
            message: format!("input `{name}` has element type {other:?}; expected float32 or float16"),
        }),
    }
}

/// Token ids converted to the graph's declared integer type.
pub fn ids_value(ids: ArrayD<i64>, want: Elem, stage: &'static str, name: &str) -> Result<DynValue> {
    match want {
        Elem::I64 => Tensor::from_array(ids).map(|t| t.into_dyn()).map_err(|e| fail(stage, name, e)),
        Elem::I32 => {
            let narrowed = ids.mapv(|v| v as i32);
            Tensor::from_array(narrowed).map(|t| t.into_dyn()).map_err(|e| fail(stage, name, e))
        }
        other => Err(Error::Inference {
            stage,
            message: format!("input `{name}` has element type {other:?}; expected int64 or int32"),
        }),
    }
}

/// A float output as f32.
pub fn to_f32(value: &DynValue, stage: &'static str, name: &str) -> Result<ArrayD<f32>> {
    match Elem::of(value.dtype()) {
        Elem::F32 => value.try_extract_array::<f32>().map(|a| a.to_owned()).map_err(|e| fail(stage, name, e)),
        Elem::F16 => value.try_extract_array::<f16>().map(|a| a.mapv(f16::to_f32)).map_err(|e| fail(stage, name, e)),
        other => Err(Error::Inference {
            stage,
            message: format!("output `{name}` has element type {other:?}; expected float32 or float16"),
        }),
    }
}
