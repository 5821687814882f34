//! The LoRA file reader: bytes → `lora::formats::parse` (safetensors header, tensor data, key layout), which must
//! never panic: a corrupt or truncated file is an error. Parsing the same bytes twice gives the same outcome (the
//! message may name a different bad tensor: the safetensors crate checks its header in hash-map order).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sdxlrt::lora::formats::{content_hash, parse};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    let first = parse(path, data);
    let again = parse(path, data);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a.tensor_count(), b.tensor_count()),
        (Err(a), Err(b)) => assert_eq!(a.code(), b.code()),
        _ => panic!("parse is not deterministic"),
    }
    if let Err(e) = first {
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(content_hash(data), content_hash(data));
});
