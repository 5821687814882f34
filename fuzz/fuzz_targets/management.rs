//! Management messages: bytes → `engine::manage::parse`, which must never panic. A recognised message must come
//! from a JSON object whose `message_type` is one of the management kinds, name a non-empty model where it needs
//! one, and its reply (`manage::reply`) must be valid JSON carrying the request id back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdxlrt::engine::manage::{parse, reply, Command};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else { return };
    let Ok(Some((id, command))) = parse(json) else { return };
    let value: serde_json::Value = serde_json::from_str(json).expect("parse recognised text that is not JSON");
    let kind = value["message_type"].as_str().expect("message_type is a string");
    match &command {
        Command::Status => assert_eq!(kind, "status"),
        Command::Preload(model) => {
            assert_eq!(kind, "preload_model");
            assert!(!model.is_empty());
        }
        Command::Unload(model) => {
            assert_eq!(kind, "unload_model");
            assert!(!model.is_empty());
        }
    }
    let text = reply(&id, serde_json::json!({ "echo": format!("{command:?}") }), vec![id.clone()]);
    let back: serde_json::Value = serde_json::from_str(&text).expect("reply is valid JSON");
    assert_eq!(back["request_id"].as_str(), Some(id.as_str()));
    assert_eq!(back["success"], true);
});
