//! The JSON protocol our callers already speak (the seed's request and response shapes).
//!
//! Plain data: no ONNX Runtime, no engine. `wire` mirrors the JSON as sent, `normalize` turns it into the
//! validated [`params::GenerateParams`], `response` builds the reply.

pub mod controlnet;
pub mod hires;
pub mod infotext;
pub mod normalize;
pub mod params;
pub mod preview;
pub mod prompt_syntax;
pub mod prompt_tags;
pub mod response;
pub mod upscale;
pub mod wire;
