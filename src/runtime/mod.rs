//! A thin layer over `ort`: sessions with checked inputs and outputs, tensor conversions, cancellation.
//!
//! Nothing above this module names `ort` types.

pub mod binding;
pub mod cancel;
pub mod controlnet_inputs;
pub mod cuda;
pub mod denormals;
pub mod fuse_attention;
pub mod heap;
pub mod host_allocator;
pub mod merged_data;
pub mod onnx_proto;
pub mod optimized_cache;
pub mod overrides;
pub mod session;
pub mod subpixel_upsample;
pub mod tensor;

pub use binding::BoundGraph;
pub use cancel::CancelToken;
pub use cuda::CudaOptions;
pub use overrides::{Placement, WeightOverrides};
pub use session::{ArenaPolicy, Device, ModelSession, SessionConfig};
