//! The one error type of the library, grouped by what the user has to fix.
//!
//! Every variant carries a message a user can act on. [`ErrorCode`] is the stable, machine-readable
//! kind: it becomes the response's `error_code` string and, through `ffi::status`, the C status.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between a request and its pixels.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request or options text is not valid JSON (or not the expected JSON shape).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),

    /// A request field has a value we cannot use; `field` is its JSON path (`data.dimensions.width`).
    #[error("invalid value for `{field}`: {message}")]
    InvalidField {
        /// JSON path of the field (or option name).
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// A request asks for a feature this version does not implement yet.
    #[error("`{field}` is not supported yet: {message}")]
    Unsupported {
        /// JSON path of the field (or option name).
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// An engine option is invalid.
    #[error("invalid engine option `{field}`: {message}")]
    InvalidOption {
        /// JSON path of the field (or option name).
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// A model, tokenizer or config file the request needs does not exist.
    #[error("model not found: {message} ({path})")]
    ModelNotFound {
        /// The file or folder concerned.
        path: PathBuf,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// A model file exists but cannot be used (corrupt, wrong inputs, wrong config).
    #[error("invalid model at {path}: {message}")]
    ModelInvalid {
        /// The file or folder concerned.
        path: PathBuf,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// ONNX Runtime could not be found or loaded.
    #[error("ONNX Runtime unavailable: {0}")]
    RuntimeUnavailable(String),

    /// ONNX Runtime failed while running a graph.
    #[error("inference failed in {stage}: {message}")]
    Inference {
        /// The graph or step that failed.
        stage: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// Writing or encoding the output failed.
    #[error("cannot write output {path}: {message}")]
    Output {
        /// The file or folder concerned.
        path: PathBuf,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// The output file exists and the request did not allow overwriting it.
    #[error("output file {0} already exists (set output.overwrite to true to replace it)")]
    OutputExists(PathBuf),

    /// The run was cancelled by `sdxl_cancel` or by the progress callback.
    #[error("cancelled")]
    Cancelled,

    /// A bug in sdxlrt (a caught panic or a broken invariant). Please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Stable kinds of [`Error`], shared by the JSON `error_code` and the C status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed JSON.
    InvalidJson,
    /// An invalid request field.
    InvalidRequest,
    /// A feature not built yet.
    Unsupported,
    /// An invalid engine option.
    InvalidOption,
    /// A missing model file or folder.
    ModelNotFound,
    /// An unusable model file.
    ModelInvalid,
    /// ONNX Runtime missing.
    RuntimeUnavailable,
    /// ONNX Runtime failed.
    Inference,
    /// Writing the output failed.
    Output,
    /// The output file exists.
    OutputExists,
    /// Cancelled.
    Cancelled,
    /// A bug.
    Internal,
}

impl ErrorCode {
    /// The snake_case name used as `error_code` in JSON responses.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::InvalidOption => "invalid_option",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::ModelInvalid => "model_invalid",
            ErrorCode::RuntimeUnavailable => "runtime_unavailable",
            ErrorCode::Inference => "inference_failed",
            ErrorCode::Output => "output_failed",
            ErrorCode::OutputExists => "output_exists",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
        }
    }
}

impl Error {
    /// The stable kind of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidJson(_) => ErrorCode::InvalidJson,
            Error::InvalidField { .. } => ErrorCode::InvalidRequest,
            Error::Unsupported { .. } => ErrorCode::Unsupported,
            Error::InvalidOption { .. } => ErrorCode::InvalidOption,
            Error::ModelNotFound { .. } => ErrorCode::ModelNotFound,
            Error::ModelInvalid { .. } => ErrorCode::ModelInvalid,
            Error::RuntimeUnavailable(_) => ErrorCode::RuntimeUnavailable,
            Error::Inference { .. } => ErrorCode::Inference,
            Error::Output { .. } => ErrorCode::Output,
            Error::OutputExists(_) => ErrorCode::OutputExists,
            Error::Cancelled => ErrorCode::Cancelled,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Shorthand for [`Error::InvalidField`].
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidField { field: field.into(), message: message.into() }
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Unsupported { field: field.into(), message: message.into() }
    }

    /// Shorthand for [`Error::ModelInvalid`].
    pub fn model_invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::ModelInvalid { path: path.into(), message: message.into() }
    }
}

/// `(field, message)` of an [`Error::InvalidField`] result; panics on anything else (unit tests).
#[cfg(test)]
pub(crate) fn invalid_field<T: std::fmt::Debug>(r: Result<T>) -> (String, String) {
    match r {
        Err(Error::InvalidField { field, message }) => (field, message),
        other => panic!("expected InvalidField, got {other:?}"),
    }
}
