//! Management messages through the same `sdxl_generate` entry (`message_type`): `status`, `preload_model`,
//! `unload_model`. Replies use the response envelope (`request_id`, `success`, `data`, `warnings`, `error`,
//! `error_code`) with a message-specific `data`.
//!
//! ```json
//! {"message_type": "status", "request_id": "s1"}
//! {"message_type": "preload_model", "request_id": "p1", "data": {"model_name": "sdxl-base"}}
//! {"message_type": "unload_model", "request_id": "u1", "data": {"model_name": "sdxl-base"}}
//! ```

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The management messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Engine state: loaded models, device, memory, ONNX Runtime.
    Status,
    /// Load a model now so the first request does not pay for it.
    Preload(String),
    /// Release a model's sessions (every cached variant of the model folder), and the upscalers of that name
    /// (`<name>.onnx`).
    Unload(String),
}

/// If `json` is a management message, parse it; `Ok(None)` for anything else (generation requests).
pub fn parse(json: &str) -> Result<Option<(String, Command)>> {
    let Ok(value) = serde_json::from_str::<Value>(json) else { return Ok(None) };
    let Some(kind) = value.get("message_type").and_then(Value::as_str) else { return Ok(None) };
    let id = value.get("request_id").and_then(Value::as_str).unwrap_or("management").to_string();
    let model = || -> Result<String> {
        let data = value.get("data").unwrap_or(&Value::Null);
        data.get("model_name")
            .or_else(|| data.get("models").and_then(|m| m.get("base")))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| Error::field("data.model_name", format!("{kind} needs data.model_name")))
    };
    let command = match kind {
        "status" => Command::Status,
        "preload_model" => Command::Preload(model()?),
        "unload_model" => Command::Unload(model()?),
        _ => return Ok(None),
    };
    Ok(Some((id, command)))
}

/// A successful management reply.
pub fn reply(request_id: &str, data: Value, warnings: Vec<String>) -> String {
    json!({ "request_id": request_id, "success": true, "data": data, "warnings": warnings, "error": null,
            "error_code": null })
    .to_string()
}
