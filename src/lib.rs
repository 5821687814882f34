//! sdxlrt: Stable Diffusion XL on ONNX Runtime, loaded in-process by .NET through a C ABI.
//!
//! The data path reads top to bottom, one layer per module:
//!
//! | layer | module | the seed's component it replaces |
//! |---|---|---|
//! | C ABI | [`ffi`] | the JSON/IPC hop to the Python worker |
//! | protocol | [`protocol`] | request transformer, schema validation, response transformer |
//! | engine | [`engine`] | worker router, model manager |
//! | pipeline | [`pipeline`] | the SDXL worker: conditioning, denoising, decode |
//! | math | [`schedulers`], [`rng`] | the scheduler factory, torch's generator |
//! | runtime | [`runtime`], [`tokenizer`] | ONNX Runtime sessions and tensors, CLIP tokenization |
//! | files | [`model_files`] | LoRA and upscaler names → files confined to `models_root` |
//! | output | [`image`] | saving and encoding images |
//!
//! Try it: `scripts/demo.sh` writes `out/demo.png` from the bundled tiny model.
#![warn(missing_docs)]

pub mod engine;
pub mod error;
pub mod ffi;
pub mod image;
pub mod lora;
pub mod model_files;
pub mod pipeline;
pub mod protocol;
pub mod rng;
pub mod runtime;
pub mod schedulers;
pub mod tokenizer;

pub use error::{Error, ErrorCode, Result};
