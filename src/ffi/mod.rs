//! The C ABI: the only module with `extern "C"`, raw pointers and `catch_unwind`.
//!
//! Conventions (also in the header preamble):
//! - every function returns an `sdxl_status` (or a value documented otherwise) and never unwinds a panic;
//! - out-parameters come last and are written only as documented;
//! - every pointer is checked for NULL; engine handles are checked against the live set;
//! - what sdxlrt allocates, sdxlrt frees: `sdxl_string_free`, `sdxl_image_batch_free`, `sdxl_engine_free`;
//! - the last error message is thread-local: `sdxl_last_error()`.
//!
//! The ABI functions take raw pointers but are safe Rust `fn`s: each checks its pointers (NULL, live-handle set)
//! before use, and C callers see no difference, so clippy's `not_unsafe_ptr_arg_deref` does not apply here.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod args;
pub mod boundary;
pub mod buffers;
pub mod engine;
pub mod handles;
pub mod progress;
pub mod status;

use std::ffi::c_char;

/// The library version, e.g. `"0.1.0"`. Static: never free it.
#[no_mangle]
pub extern "C" fn sdxl_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
