//! `sdxl_status`: the one numeric result of every ABI call. Values are explicit and never reused; codes are grouped
//! by source in blocks of 100 (ABI misuse, request, model/runtime, output).

use std::ffi::c_char;

use crate::error::{Error, ErrorCode};

/// Result of an sdxlrt ABI call. `SDXL_STATUS_OK` is 0; details of any other value are in `sdxl_last_error()`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum sdxl_status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 100,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = 101,
    /// The engine pointer is not a live engine (already freed, or not from `sdxl_engine_create`).
    InvalidHandle = 102,
    /// sdxlrt panicked; the call was abandoned and the engine is still usable. Please report it.
    Panic = 103,
    /// The request or options text is not valid JSON.
    InvalidJson = 200,
    /// A request field is invalid; the message names the field and the allowed values.
    InvalidRequest = 201,
    /// The request uses a feature this version does not support yet; the message names the field.
    Unsupported = 202,
    /// The request was cancelled (`sdxl_cancel`, the progress callback, or its timeout).
    Cancelled = 203,
    /// An engine option is invalid.
    InvalidOption = 204,
    /// A model folder or file does not exist under `models_root`.
    ModelNotFound = 300,
    /// A model file exists but cannot be used.
    ModelInvalid = 301,
    /// ONNX Runtime could not be found or loaded.
    RuntimeUnavailable = 302,
    /// ONNX Runtime failed while running a graph.
    InferenceFailed = 303,
    /// Writing or encoding an output file failed.
    OutputFailed = 400,
    /// The output file exists and the request did not allow overwriting it.
    OutputExists = 401,
    /// An internal error (a broken invariant). Please report it.
    Internal = 900,
}

impl From<ErrorCode> for sdxl_status {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::InvalidJson => sdxl_status::InvalidJson,
            ErrorCode::InvalidRequest => sdxl_status::InvalidRequest,
            ErrorCode::Unsupported => sdxl_status::Unsupported,
            ErrorCode::InvalidOption => sdxl_status::InvalidOption,
            ErrorCode::ModelNotFound => sdxl_status::ModelNotFound,
            ErrorCode::ModelInvalid => sdxl_status::ModelInvalid,
            ErrorCode::RuntimeUnavailable => sdxl_status::RuntimeUnavailable,
            ErrorCode::Inference => sdxl_status::InferenceFailed,
            ErrorCode::Output => sdxl_status::OutputFailed,
            ErrorCode::OutputExists => sdxl_status::OutputExists,
            ErrorCode::Cancelled => sdxl_status::Cancelled,
            ErrorCode::Internal => sdxl_status::Internal,
        }
    }
}

impl From<&Error> for sdxl_status {
    fn from(err: &Error) -> Self {
        err.code().into()
    }
}

impl sdxl_status {
    /// Every status, for tests and bindings generators.
    pub const ALL: [sdxl_status; 17] = [
        sdxl_status::Ok,
        sdxl_status::NullArgument,
        sdxl_status::InvalidUtf8,
        sdxl_status::InvalidHandle,
        sdxl_status::Panic,
        sdxl_status::InvalidJson,
        sdxl_status::InvalidRequest,
        sdxl_status::Unsupported,
        sdxl_status::Cancelled,
        sdxl_status::InvalidOption,
        sdxl_status::ModelNotFound,
        sdxl_status::ModelInvalid,
        sdxl_status::RuntimeUnavailable,
        sdxl_status::InferenceFailed,
        sdxl_status::OutputFailed,
        sdxl_status::OutputExists,
        sdxl_status::Internal,
    ];

    /// The snake_case name of this status (NUL-terminated, static).
    fn name(self) -> &'static [u8] {
        match self {
            sdxl_status::Ok => b"ok\0",
            sdxl_status::NullArgument => b"null_argument\0",
            sdxl_status::InvalidUtf8 => b"invalid_utf8\0",
            sdxl_status::InvalidHandle => b"invalid_handle\0",
            sdxl_status::Panic => b"panic\0",
            sdxl_status::InvalidJson => b"invalid_json\0",
            sdxl_status::InvalidRequest => b"invalid_request\0",
            sdxl_status::Unsupported => b"unsupported\0",
            sdxl_status::Cancelled => b"cancelled\0",
            sdxl_status::InvalidOption => b"invalid_option\0",
            sdxl_status::ModelNotFound => b"model_not_found\0",
            sdxl_status::ModelInvalid => b"model_invalid\0",
            sdxl_status::RuntimeUnavailable => b"runtime_unavailable\0",
            sdxl_status::InferenceFailed => b"inference_failed\0",
            sdxl_status::OutputFailed => b"output_failed\0",
            sdxl_status::OutputExists => b"output_exists\0",
            sdxl_status::Internal => b"internal\0",
        }
    }
}

/// The name of a status code, e.g. `"invalid_request"`; `"unknown"` for a value that is not a status.
///
/// The returned string is static: never free it.
#[no_mangle]
pub extern "C" fn sdxl_status_str(status: u32) -> *const c_char {
    let name: &'static [u8] = sdxl_status::ALL.iter().find(|s| **s as u32 == status).map_or(b"unknown\0", |s| s.name());
    name.as_ptr().cast()
}
